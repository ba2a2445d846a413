//! Comparing a built graph with the FP32 reference, output by output and layer by layer, in the
//! spirit of Polygraphy: where does the error come from, and which layer should stay in FP16?

use crate::Error;
use kiln_ir::{DType, Graph, Op, Tensor, Value};
use std::collections::{HashMap, HashSet};

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
    /// Relative L2 error: `|got - want| / |want|` (the absolute L2 error when `want` is zero).
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

/// The float values both graphs compute under the same name (graph inputs and constants left
/// out), in the reference's topological order, with their ops in the reference.
fn shared_values(reference: &Graph, built: &Graph) -> Result<Vec<(String, String, Value, Value)>, Error> {
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
            let float = o.ty.dtype.is_some_and(|d| d.is_float());
            if let (true, Some(&b)) = (float, in_built.get(&o.name)) {
                if seen.insert(o.name.clone()) {
                    out.push((o.name.clone(), n.op.name().to_string(), Value { node: id, slot }, b));
                }
            }
        }
    }
    Ok(out)
}

/// Runs both graphs on the CPU reference over the same inputs and measures every output, and,
/// with `per_layer`, every intermediate value that survives optimization under its name.
/// Returns the outputs' metrics and the layers' (in the reference's order).
pub fn compare(
    reference: &Graph,
    built: &Graph,
    batches: &[Vec<Tensor>],
    per_layer: bool,
) -> Result<(Vec<Metrics>, Vec<(String, Metrics)>), Error> {
    compare_with(reference, built, batches, per_layer, &mut |g, inputs| crate::run_cpu(g, inputs))
}

/// [`compare`], running the built graph with `run_built` (the GPU, for example) instead of
/// the CPU reference; it is called once per batch with the same graph (the built graph, plus
/// the compared layers as outputs).
pub fn compare_with(
    reference: &Graph,
    built: &Graph,
    batches: &[Vec<Tensor>],
    per_layer: bool,
    run_built: &mut dyn FnMut(&Graph, &[Tensor]) -> Result<Vec<Tensor>, Error>,
) -> Result<(Vec<Metrics>, Vec<(String, Metrics)>), Error> {
    // The imported graph's intermediate types may be unknown until inferred.
    let mut typed = reference.clone();
    kiln_ir::passes::PassManager::new(vec![Box::new(kiln_ir::passes::InferTypes)])
        .run(&mut typed, &kiln_ir::passes::PassContext::default())?;
    let shared = if per_layer { shared_values(&typed, built)? } else { vec![] };
    let (mut r, mut b) = (reference.clone(), built.clone());
    for (name, _, rv, bv) in &shared {
        r.add_output(format!("__cmp__{name}"), *rv);
        b.add_output(format!("__cmp__{name}"), *bv);
    }
    let outs = reference.outputs.len();
    let mut acc: Vec<Vec<(Tensor, Tensor)>> = vec![vec![]; outs + shared.len()];
    for inputs in batches {
        let want = crate::run_cpu(&r, inputs)?;
        let got = run_built(&b, inputs)?;
        for (i, (w, g)) in want.into_iter().zip(got).enumerate() {
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
    for (j, (name, op, _, _)) in shared.iter().enumerate() {
        // Arg-max agreement means something for a classifier's output only.
        let m = Metrics { top1: None, ..join(&acc[outs + j], name)? };
        layers.push((op.clone(), m));
    }
    Ok((out_metrics, layers))
}
