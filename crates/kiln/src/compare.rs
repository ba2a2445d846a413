//! Comparing a built graph with the FP32 reference, output by output and layer by layer, in the
//! spirit of Polygraphy: where does the error come from, and which layer should stay in FP16?

use crate::Error;
use kiln_ir::{DType, Graph, Op, Tensor, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// How far one tensor is from its reference.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// The value's name.
    pub name: String,
    /// Largest absolute difference.
    pub max_abs: f64,
    /// Largest absolute difference over the reference's largest magnitude.
    pub max_rel: f64,
    /// Cosine similarity of the two as flat vectors (1 when both are zero).
    pub cosine: f64,
    /// The L2 norm of the difference over the reference's L2 norm (the difference's norm when
    /// the reference is zero).
    pub rel_l2: f64,
    /// For a classifier output (`[batch, classes]`), the share of rows whose arg-max agrees.
    pub top1: Option<f64>,
}

/// The metrics of `got` against `want`.
pub fn metrics(name: &str, want: &Tensor, got: &Tensor) -> Result<Metrics, Error> {
    if want.shape() != got.shape() {
        return Err(Error::Shape {
            input: name.to_string(),
            msg: format!("the reference has shape {:?}, the build {:?}", want.shape(), got.shape()),
        });
    }
    let (a, b) = (want.to_f64_vec(), got.to_f64_vec());
    let mut max_abs: f64 = 0.0;
    let (mut dot, mut na, mut nb, mut nd) = (0.0, 0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(&b) {
        max_abs = max_abs.max((x - y).abs());
        nd += (x - y) * (x - y);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let scale = a.iter().fold(0f64, |m, x| m.max(x.abs()));
    let cosine = if na == 0.0 && nb == 0.0 { 1.0 } else { dot / (na.sqrt() * nb.sqrt()).max(f64::MIN_POSITIVE) };
    let top1 = match want.shape() {
        [rows, classes] if *classes > 1 && want.dtype().is_float() => {
            let argmax = |v: &[f64]| (0..*classes).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap_or(0);
            let agree = (0..*rows)
                .filter(|r| argmax(&a[r * classes..(r + 1) * classes]) == argmax(&b[r * classes..(r + 1) * classes]))
                .count();
            Some(agree as f64 / (*rows).max(1) as f64)
        }
        _ => None,
    };
    Ok(Metrics {
        name: name.to_string(),
        max_abs,
        max_rel: if scale > 0.0 { max_abs / scale } else { max_abs },
        cosine,
        rel_l2: if na > 0.0 { (nd / na).sqrt() } else { nd.sqrt() },
        top1,
    })
}

/// A value both graphs compute: its name, its op in the reference, its value in each graph,
/// and the scale that dequantizes the build's value where the build has it as integers.
struct Shared {
    name: String,
    op: String,
    reference: Value,
    built: Value,
    scale: Option<f32>,
}

/// An i8 tensor times `scale`, as f64.
fn dequantize(t: &Tensor, scale: f32) -> Result<Tensor, Error> {
    let v: Vec<f64> = t.to_f64_vec().into_iter().map(|x| x * scale as f64).collect();
    Tensor::from_vec(t.shape().to_vec(), v).map_err(|e| Error::Shape { input: "dequantize".into(), msg: e.to_string() })
}

/// The float values both graphs compute under the same name (graph inputs and constants left
/// out), in the reference's topological order, with their ops in the reference; and, for a
/// value the build has only as the quantizer's `NAME.int8` (i8, with a scale in `scales`),
/// that one, to be dequantized.
fn shared_values(reference: &Graph, built: &Graph, scales: &BTreeMap<String, f32>) -> Result<Vec<Shared>, Error> {
    let mut in_built: HashMap<String, Value> = HashMap::new();
    for id in built.node_ids() {
        let n = built.node(id);
        if matches!(n.op, Op::Input | Op::Const(_)) {
            continue;
        }
        for (slot, o) in n.outputs.iter().enumerate() {
            if !o.name.is_empty() {
                in_built.insert(o.name.clone(), Value { node: id, slot });
            }
        }
    }
    let mut out = vec![];
    let mut seen = HashSet::new();
    for id in reference.topo_order()? {
        let n = reference.node(id);
        if matches!(n.op, Op::Input | Op::Const(_)) {
            continue;
        }
        for (slot, o) in n.outputs.iter().enumerate() {
            if !o.ty.dtype.is_some_and(|d| d.is_float()) || seen.contains(&o.name) {
                continue;
            }
            let (built_value, scale) = match in_built.get(&o.name) {
                Some(&b) => (b, None),
                None => {
                    let int8 = in_built.get(&format!("{}.int8", o.name)).copied();
                    let int8 = int8.filter(|&b| built.value_info(b).ty.dtype == Some(DType::I8));
                    match (int8, scales.get(&o.name)) {
                        (Some(b), Some(&s)) => (b, Some(s)),
                        _ => continue,
                    }
                }
            };
            seen.insert(o.name.clone());
            out.push(Shared {
                name: o.name.clone(),
                op: n.op.name().to_string(),
                reference: Value { node: id, slot },
                built: built_value,
                scale,
            });
        }
    }
    Ok(out)
}

/// Runs both graphs on the CPU reference over the same inputs and measures every output, and,
/// with `per_layer`, every intermediate value that survives optimization under its name.
/// Returns the outputs' metrics and the layers' (in the reference's order).
///
/// `int8_scales` (an INT8 build's calibration scales, by tensor name) lets the layers include
/// the activations that became integers: where the build has no float value `X` but the
/// quantizer's `X.int8`, that is compared dequantized (times X's scale; the zero point is 0).
pub fn compare(
    reference: &Graph,
    built: &Graph,
    batches: &[Vec<Tensor>],
    per_layer: bool,
    int8_scales: Option<&BTreeMap<String, f32>>,
) -> Result<(Vec<Metrics>, Vec<(String, Metrics)>), Error> {
    compare_with(reference, built, batches, per_layer, int8_scales, &mut |g, inputs| crate::run_cpu(g, inputs))
}

/// [`compare`], running the built graph with `run_built` (the GPU, for example) instead of
/// the CPU reference; it is called once per batch with the same graph (the built graph, plus
/// the compared layers as outputs).
pub fn compare_with(
    reference: &Graph,
    built: &Graph,
    batches: &[Vec<Tensor>],
    per_layer: bool,
    int8_scales: Option<&BTreeMap<String, f32>>,
    run_built: &mut dyn FnMut(&Graph, &[Tensor]) -> Result<Vec<Tensor>, Error>,
) -> Result<(Vec<Metrics>, Vec<(String, Metrics)>), Error> {
    // The imported graph's intermediate types may be unknown until inferred.
    let mut typed = reference.clone();
    kiln_ir::passes::PassManager::new(vec![Box::new(kiln_ir::passes::InferTypes)])
        .run(&mut typed, &kiln_ir::passes::PassContext::default())?;
    let empty = BTreeMap::new();
    let shared = if per_layer { shared_values(&typed, built, int8_scales.unwrap_or(&empty))? } else { vec![] };
    let (mut r, mut b) = (reference.clone(), built.clone());
    for Shared { name, reference: rv, built: bv, .. } in &shared {
        r.add_output(format!("__cmp__{name}"), *rv);
        b.add_output(format!("__cmp__{name}"), *bv);
    }
    let outs = reference.outputs.len();
    let mut acc: Vec<Vec<(Tensor, Tensor)>> = vec![vec![]; outs + shared.len()];
    for inputs in batches {
        let want = crate::run_cpu(&r, inputs)?;
        let got = run_built(&b, inputs)?;
        for (i, (w, mut g)) in want.into_iter().zip(got).enumerate() {
            if let Some(scale) = i.checked_sub(outs).and_then(|j| shared[j].scale) {
                g = dequantize(&g, scale)?;
            }
            acc[i].push((w, g));
        }
    }
    // Batches are measured as one: concatenated along a new leading view.
    let join = |pairs: &[(Tensor, Tensor)], name: &str| -> Result<Metrics, Error> {
        let cat = |f: &dyn Fn(&(Tensor, Tensor)) -> &Tensor| -> Result<Tensor, Error> {
            if pairs.len() == 1 {
                return Ok(f(&pairs[0]).cast(DType::F64));
            }
            let mut v = vec![];
            let mut shape = f(&pairs[0]).shape().to_vec();
            for p in pairs {
                v.extend(f(p).to_f64_vec());
            }
            match shape.first_mut() {
                Some(d) => *d *= pairs.len(),
                None => shape = vec![pairs.len()],
            }
            Tensor::from_vec(shape, v).map_err(|e| Error::Shape { input: name.to_string(), msg: e.to_string() })
        };
        metrics(name, &cat(&|p| &p.0)?, &cat(&|p| &p.1)?)
    };
    let mut out_metrics = vec![];
    for (i, o) in reference.outputs.iter().enumerate() {
        out_metrics.push(join(&acc[i], &o.name)?);
    }
    let mut layers = vec![];
    for (j, Shared { name, op, scale, .. }) in shared.iter().enumerate() {
        // Arg-max agreement means something for a classifier's output only.
        let m = Metrics { top1: None, ..join(&acc[outs + j], name)? };
        layers.push((if scale.is_some() { format!("{op} (int8)") } else { op.clone() }, m));
    }
    Ok((out_metrics, layers))
}
