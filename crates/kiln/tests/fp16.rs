//! FP16 builds on the CPU reference: each model's FP16 build against its FP32 ONNX graph on
//! fresh seeded random inputs (cosine similarity at least 0.999, relative L2 error at most
//! 1e-2), per-layer FP32 overrides, and the count of saturated values.

use kiln::ir::{DType, Graph, Op, Tensor, TypeInfo, Value, ValueInfo};
use kiln::{BuildOptions, FloatPrecision};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

const MIN_COSINE: f64 = 0.999;
const MAX_REL_L2: f64 = 1e-2;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/models").join(name)
}

/// The ONNX suite's light models, fetched by `cargo xtask fetch-data` into the cache. Missing
/// data fails under CI (which fetches it first) and skips, saying so, elsewhere.
fn light_model(name: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kiln"));
    let p = cache.join("onnx-1.19.1/onnx/backend/test/data/light").join(format!("{name}.onnx"));
    if p.exists() {
        return Some(p);
    }
    assert!(std::env::var_os("CI").is_none(), "{} is missing: CI must run `cargo xtask fetch-data` first", p.display());
    eprintln!("skipping: {} is missing (run `cargo xtask fetch-data`)", p.display());
    None
}

fn fp16_options(keep_fp32: &[&str]) -> BuildOptions {
    BuildOptions {
        precision: FloatPrecision::Fp16,
        overrides: keep_fp32.iter().map(|n| (n.to_string(), kiln::quant::Precision::Fp32)).collect(),
        ..Default::default()
    }
}

/// How many values of `g` (constants included) have each float type.
fn float_values(g: &Graph) -> HashMap<DType, usize> {
    let mut out = HashMap::new();
    for id in g.node_ids() {
        for o in &g.node(id).outputs {
            if let Some(d) = o.ty.dtype.filter(|d| d.is_float()) {
                *out.entry(d).or_default() += 1;
            }
        }
    }
    out
}

/// A light model with seeded random weights in place of its constant ones.
///
/// The suite's light models replace every weight by `ConstantOfShape(0.02)`, so each
/// convolution multiplies its activations by about `0.02 * fan_in` (up to 90) and by the middle
/// of the network they are far beyond f16's range (65504) already in FP32: an FP16 build of
/// them overflows, as TensorRT's would, and every class ties in the FP32 output. Weights drawn
/// He-uniform (variance `2 / fan_in`), biases small and BatchNorm statistics near one keep
/// activations of order one, so the comparison measures FP16 rounding, not overflow.
fn reweighted(path: &Path) -> Graph {
    let mut g = kiln::load(path).unwrap().graph;
    kiln::optimize_with(&mut g, &kiln::OptimizeOptions { fuse: false, ..Default::default() }).unwrap();
    // Constant folding leaves the largest weights (fc6 of AlexNet) as ConstantOfShape.
    let ids: Vec<_> = g.node_ids().collect();
    for &id in &ids {
        let Op::Layout(kiln::ir::ops::LayoutOp::ConstantOfShape { value }) = &g.node(id).op else { continue };
        let Some(shape) = g.node(id).outputs[0].ty.concrete_shape() else { continue };
        let n: usize = shape.iter().product();
        let filled = Tensor::from_vec(shape, vec![value.to_f64_vec()[0]; n]).unwrap().cast(value.dtype());
        g.set_input(id, 0, None);
        let node = g.node_mut(id);
        node.num_inputs = 0;
        node.op = Op::Const(filled);
    }
    let mut rng = kiln::random::Rng::new(7);
    for id in ids {
        let Op::Const(t) = &g.node(id).op else { continue };
        if t.dtype() != DType::F32 {
            continue;
        }
        let shape = t.shape().to_vec();
        let n = t.len();
        let users = g.users(Value { node: id, slot: 0 });
        let role = users.iter().map(|&(u, slot)| (g.node(u).op.name(), slot)).next();
        let draw: Box<dyn Fn(&mut kiln::random::Rng) -> f64> = match role {
            Some(("Conv" | "Gemm" | "MatMul", 1)) if shape.len() >= 2 => {
                let a = (6.0 / (n / shape[0]).max(1) as f64).sqrt();
                Box::new(move |r| (r.uniform() * 2.0 - 1.0) * a)
            }
            Some(("Conv" | "Gemm", 2)) => Box::new(|r| (r.uniform() * 2.0 - 1.0) * 0.1),
            // Scales below one keep ShuffleNet's 13 residual sums from saturating its softmax.
            Some(("BatchNormalization", 1)) => Box::new(|r| 0.3 + 0.6 * r.uniform()),
            Some(("BatchNormalization", 3 | 4)) => Box::new(|r| 0.5 + r.uniform()),
            Some(("BatchNormalization", 2)) => Box::new(|r| (r.uniform() * 2.0 - 1.0) * 0.1),
            _ => continue,
        };
        let v: Vec<f32> = (0..n).map(|_| draw(&mut rng) as f32).collect();
        g.node_mut(id).op = Op::Const(Tensor::from_vec(shape, v).unwrap());
    }
    g
}

/// Builds `model` in FP16 for the given inputs' shapes, checks that the build computes in FP16
/// behind an FP32 signature, and measures every output against the FP32 graph on the given
/// inputs and seeded random values for the others.
fn check(model: &Path, given: HashMap<String, Tensor>, seed: u64) -> Vec<kiln::compare::Metrics> {
    check_graph(model, kiln::load(model).unwrap().graph, given, seed)
}

fn check_graph(
    model: &Path,
    mut reference: Graph,
    mut given: HashMap<String, Tensor>,
    seed: u64,
) -> Vec<kiln::compare::Metrics> {
    let shapes: HashMap<String, Vec<usize>> = given.iter().map(|(n, t)| (n.clone(), t.shape().to_vec())).collect();
    kiln::specialize(&mut reference, &shapes).unwrap();
    let built = kiln::build(reference.clone(), &BuildOptions { shapes, ..fp16_options(&[]) }).unwrap();
    let report = built.fp16.as_ref().unwrap();
    let g = &built.graph;
    let floats = float_values(g);
    assert!(report.fp16_nodes > 0 && floats.get(&DType::F16).copied().unwrap_or(0) > 0, "{report:?}");
    assert_eq!(report.saturated_values(), 0, "{:?}", report.saturated);
    for &i in &g.inputs {
        let ty = &g.node(i).outputs[0].ty;
        assert_ne!(ty.dtype, Some(DType::F16), "input {} keeps its type", g.node(i).outputs[0].name);
    }
    for (o, r) in g.outputs.iter().zip(&reference.outputs) {
        assert_eq!(g.value_info(o.value).ty.dtype, Some(DType::F32), "output {} stays f32 ({})", o.name, r.name);
    }
    // Every f32 value left is the signature's or a cast's; weights are f16 but those of the
    // nodes kept in f32 (the early layers of a deep network).
    let kept: HashSet<&str> = report.kept.iter().map(|k| k.node.as_str()).collect();
    for id in g.node_ids() {
        if let Op::Const(t) = &g.node(id).op {
            let readers = g.users(Value { node: id, slot: 0 });
            let for_kept = !readers.is_empty() && readers.iter().all(|&(r, _)| kept.contains(g.node(r).name.as_str()));
            assert!(t.dtype() != DType::F32 || for_kept, "constant {} is still f32", g.node(id).name);
        }
    }
    let inputs = kiln::random::graph_inputs(&reference, &mut given, seed).unwrap();
    let want = kiln::run_cpu(&reference, &inputs).unwrap();
    let (outs, _) = kiln::compare::compare(&reference, g, &[inputs], false, None).unwrap();
    let name = model.file_stem().unwrap().to_string_lossy();
    for (m, w) in outs.iter().zip(&want) {
        let v = w.to_f64_vec();
        let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(hi > lo, "{name}: the reference output {} is constant ({lo}), which would prove nothing", m.name);
        let saturated = lo >= 0.0 && hi > 0.99 && hi <= 1.0;
        assert!(!saturated, "{name}: the reference softmax {} is one-hot, which would prove little", m.name);
        println!(
            "{name}: output {} in [{lo:.3e}, {hi:.3e}]: cosine {:.6} rel L2 {:.3e} max rel {:.3e} ({} nodes in fp16, {} kept in fp32)",
            m.name,
            m.cosine,
            m.rel_l2,
            m.max_rel,
            report.fp16_nodes,
            report.kept.len()
        );
        assert!(m.cosine >= MIN_COSINE && m.rel_l2 <= MAX_REL_L2, "{name}: {m:?}");
    }
    outs
}

#[test]
fn tiny_cnn() {
    check(&fixture("tiny_cnn.onnx"), HashMap::new(), 1);
}

#[test]
fn bert_layer() {
    // Random activations of the fixture's shape, under the fixture's attention mask.
    let x = kiln::npy::read(&fixture("bert_layer.input.x.npy")).unwrap();
    let x = kiln::random::random_tensor(DType::F32, x.shape(), &mut kiln::random::Rng::new(2));
    let mask = kiln::npy::read(&fixture("bert_layer.input.mask.npy")).unwrap();
    check(&fixture("bert_layer.onnx"), HashMap::from([("x".to_string(), x), ("mask".to_string(), mask)]), 2);
}

macro_rules! light {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            if let Some(p) = light_model(stringify!($name)) {
                check_graph(&p, reweighted(&p), HashMap::new(), 3);
            }
        }
    )*};
}

light!(
    light_bvlc_alexnet,
    light_densenet121,
    light_inception_v1,
    light_inception_v2,
    light_resnet50,
    light_shufflenet,
    light_squeezenet,
    light_vgg19,
    light_zfnet512
);

#[test]
fn an_fp32_override_keeps_that_node_and_only_it_in_fp32() {
    let path = fixture("tiny_cnn.onnx");
    let plain = kiln::build(kiln::load(&path).unwrap().graph, &fp16_options(&[])).unwrap();
    // The first convolution, whatever fusion made of it.
    let m = kiln::load(&path).unwrap();
    let conv = m.graph.node_ids().map(|id| m.graph.node(id)).find(|n| n.op.name() == "Conv").unwrap().name.clone();
    let built = kiln::build(kiln::load(&path).unwrap().graph, &fp16_options(&[&conv])).unwrap();
    let report = built.fp16.as_ref().unwrap();
    assert!(report.unknown_overrides.is_empty(), "{report:?}");
    assert_eq!(report.kept.len(), 1, "{report:?}");
    assert_eq!(report.kept[0].reason, kiln::ir::passes::KeepReason::Override(conv.clone()));
    assert_eq!(report.fp16_nodes + 1, plain.fp16.as_ref().unwrap().fp16_nodes);
    let g = &built.graph;
    let id = g.node_ids().find(|&id| g.node(id).name == report.kept[0].node).unwrap();
    let n = g.node(id);
    assert!(n.name == conv || n.covers.contains(&conv), "{} covers {:?}", n.name, n.covers);
    assert_eq!(n.outputs[0].ty.dtype, Some(DType::F32), "{} computes in f32", n.name);
    for v in g.inputs_of(id).into_iter().flatten() {
        let ty = &g.value_info(v).ty;
        assert_ne!(ty.dtype, Some(DType::F16), "{} reads {} as {ty}", n.name, g.value_info(v).name);
    }
    // Its neighbours still compute in f16.
    let readers: HashSet<_> = g.users(Value { node: id, slot: 0 }).into_iter().map(|(r, _)| r).collect();
    for r in readers {
        let op = &g.node(r).op;
        assert!(matches!(op, Op::Elementwise(_)), "a cast to f16 reads the kept node, not {}", op.name());
        assert_eq!(g.node(r).outputs[0].ty.dtype, Some(DType::F16));
    }
    let inputs = kiln::random::graph_inputs(&built.graph, &mut HashMap::new(), 4).unwrap();
    let reference = kiln::load(&path).unwrap().graph;
    let (outs, _) = kiln::compare::compare(&reference, g, &[inputs], false, None).unwrap();
    assert!(outs.iter().all(|m| m.cosine >= MIN_COSINE && m.rel_l2 <= MAX_REL_L2), "{outs:?}");
}

#[test]
fn values_beyond_the_f16_range_saturate_and_are_counted() {
    // y = x * w + b with two weights and one bias beyond ±65504, and one infinity, which f16
    // holds and which therefore does not count.
    let mut g = Graph::new("saturate");
    let ty = TypeInfo::known(DType::F32, &[5]);
    let x = g.add_input("x", ty.clone());
    let w = g.add_const("w", Tensor::from_vec(vec![5], vec![1e6f32, -7e4, 1.0, 0.5, 2.0]).unwrap());
    let b = g.add_const("b", Tensor::from_vec(vec![5], vec![0f32, 0.0, -1e9, f32::INFINITY, 1e-9]).unwrap());
    let ew = |op| Op::Elementwise(kiln::ir::ops::ElementwiseOp::Binary(op));
    use kiln::ir::ops::elementwise::BinaryOp;
    let mul = g.add_node("mul", ew(BinaryOp::Mul), &[Some(x), Some(w)], vec![ValueInfo::tensor("m", ty.clone())]);
    let add = g.add_node(
        "add",
        ew(BinaryOp::Add),
        &[Some(Value { node: mul, slot: 0 }), Some(b)],
        vec![ValueInfo::tensor("y", ty)],
    );
    g.add_output("y", Value { node: add, slot: 0 });
    let built = kiln::build(g, &fp16_options(&[])).unwrap();
    let report = built.fp16.unwrap();
    assert_eq!(report.saturated_values(), 3, "{:?}", report.saturated);
    let mut names: Vec<&str> = report.saturated.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["b", "w"]);
    let x = Tensor::from_vec(vec![5], vec![1f32, 1.0, 1.0, 1.0, 1.0]).unwrap();
    let y = kiln::run_cpu(&built.graph, &[x]).unwrap().remove(0);
    assert_eq!(y.dtype(), DType::F32);
    // -65504 + 1 rounds back to -65504 in f16; 1e-9 underflows to zero, which is fine.
    assert_eq!(y.to_f64_vec(), vec![65504.0, -65504.0, -65504.0, f64::INFINITY, 2.0]);
}

/// Splitting the early weights into f16 halves changes the graph, not what it computes: in
/// FP32 the split ResNet-50 gives the unsplit one's output to within the rounding of `lo`.
#[test]
fn split_weights_compute_what_the_weights_computed() {
    let Some(p) = light_model("light_resnet50") else { return };
    let mut g = reweighted(&p);
    let shapes = HashMap::from([("gpu_0/data_0".to_string(), vec![1, 3, 224, 224])]);
    kiln::specialize(&mut g, &shapes).unwrap();
    let built = kiln::build(g, &BuildOptions { shapes, ..Default::default() }).unwrap();
    let mut split = built.graph.clone();
    let order = split.topo_order().unwrap();
    let names = kiln::ir::passes::split_weights(&mut split, &order[..order.len() / 8]).unwrap();
    assert!(names.len() >= 4, "the first sixth of the nodes holds several convolutions: {names:?}");
    split.verify().unwrap();
    let x = kiln::random::random_tensor(DType::F32, &[1, 3, 224, 224], &mut kiln::random::Rng::new(5));
    let want = kiln::run_cpu(&built.graph, std::slice::from_ref(&x)).unwrap();
    let got = kiln::run_cpu(&split, &[x]).unwrap();
    let m = kiln::compare::metrics("prob", &want[0], &got[0]).unwrap();
    assert!(m.rel_l2 < 1e-5, "{} split convolutions changed the output by {:.2e}", names.len(), m.rel_l2);
}
