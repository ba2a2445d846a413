//! Fusion on whole models: asserts that the fusions happened (what is left, and what each fused
//! node covers), not only that the numbers still match.

use kiln::ir::ops::FusedOp;
use kiln::ir::{Graph, Op, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

fn rel_error(a: &[Tensor], b: &[Tensor]) -> f64 {
    let mut worst: f64 = 0.0;
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x.to_f64_vec(), y.to_f64_vec());
        let scale = x.iter().map(|v| v.abs()).fold(1e-6, f64::max);
        for (p, q) in x.iter().zip(&y) {
            worst = worst.max((p - q).abs() / scale);
        }
    }
    worst
}

fn launching(g: &Graph) -> usize {
    kiln::fuse::launching_nodes(g)
}

#[test]
fn light_resnet50_fuses_batchnorm_relu_and_residuals_into_the_convolutions() {
    let Some(path) = light_model("light_resnet50") else { return };
    let m = kiln::load(&path).unwrap();
    let mut plain = m.graph.clone();
    kiln::optimize_with(&mut plain, &kiln::OptimizeOptions { fuse: false, ..Default::default() }).unwrap();
    let mut fused = m.graph.clone();
    let report = kiln::optimize(&mut fused).unwrap().fusion.unwrap();
    let counts = fused.op_counts();
    println!("{report}");

    assert_eq!(counts.get("BatchNormalization"), None, "{report}");
    assert_eq!(counts.get("Relu"), None, "every Relu rides in an epilogue: {report}");
    assert_eq!(counts.get("Add"), None, "every residual Add rides in an epilogue: {report}");
    // The four downsampling shortcuts stay bare convolutions: the residual Add rides in the
    // epilogue of the other branch's last convolution, and a shortcut has no Relu of its own.
    assert_eq!(counts.get("Conv"), Some(&4), "{report}");
    // 53 convolutions, max pool, global average pool and the classifier.
    let compute_before = launching(&plain);
    let after = launching(&fused);
    assert!(compute_before >= 110, "{compute_before}");
    assert!(after <= 57, "{after} nodes launch work: {report}");
    // Every residual Add sits in an epilogue with its Relu, after the Add.
    let mut residual = 0;
    for id in fused.node_ids() {
        let n = fused.node(id);
        if let Op::Fused(FusedOp::Epilogue { expr, .. }) = &n.op {
            assert!(n.covers.len() >= 2, "{} covers {:?}: an epilogue covers its matrix op and more", n.name, n.covers);
            let e = expr.to_string();
            if (e.contains('+') || e.contains("Sum(")) && e.contains("Relu") {
                residual += 1;
                assert!(e.starts_with("Relu("), "the Relu comes after the residual Add: {e}");
            }
        }
    }
    assert_eq!(residual, 16, "ResNet-50 has 16 residual blocks");

    let inputs: Vec<Tensor> = fused
        .inputs
        .iter()
        .map(|&i| {
            let s = fused.node(i).outputs[0].ty.concrete_shape().unwrap();
            let n: usize = s.iter().product();
            Tensor::from_vec(s, (0..n).map(|k| (k % 255) as f32 / 255.0).collect::<Vec<f32>>()).unwrap()
        })
        .collect();
    let a = kiln::run_cpu(&plain, &inputs).unwrap();
    let b = kiln::run_cpu(&fused, &inputs).unwrap();
    let err = rel_error(&a, &b);
    assert!(err < 1e-4, "relative error {err}");
}

#[test]
fn bert_layer_is_seven_launching_nodes() {
    let m = kiln::load(&fixture("bert_layer.onnx")).unwrap();
    let mut g = m.graph.clone();
    let shapes: HashMap<String, Vec<usize>> =
        [("x".to_string(), vec![2, 8, 32]), ("mask".to_string(), vec![2, 1, 1, 8])].into_iter().collect();
    kiln::specialize(&mut g, &shapes).unwrap();
    let report = kiln::optimize(&mut g).unwrap().fusion.unwrap();
    println!("{report}");
    let counts = g.op_counts();
    // QKV projection, attention, output projection with residual, LayerNorm, FFN up with
    // GELU, FFN down with residual, LayerNorm.
    assert_eq!(counts.get("MatMulEpilogue"), Some(&4), "{report}");
    assert_eq!(counts.get("PackedAttention"), Some(&1), "{report}");
    assert_eq!(counts.get("LayerNormalization"), Some(&2), "{report}");
    assert!(launching(&g) <= 8, "{} launching nodes: {report}", launching(&g));
    assert_eq!(launching(&g), 7, "{report}");
    // The GELU (erf form) and the residuals ride in epilogues.
    let epilogues: Vec<String> = g
        .node_ids()
        .filter_map(|id| match &g.node(id).op {
            Op::Fused(FusedOp::Epilogue { expr, .. }) => Some(expr.to_string()),
            _ => None,
        })
        .collect();
    assert!(epilogues.iter().any(|e| e.contains("Erf")), "{epilogues:?}");

    let x = kiln::npy::read(&fixture("bert_layer.input.x.npy")).unwrap();
    let mask = kiln::npy::read(&fixture("bert_layer.input.mask.npy")).unwrap();
    let want = kiln::npy::read(&fixture("bert_layer.expected.y.npy")).unwrap();
    let got = kiln::run_cpu(&g, &[x, mask]).unwrap();
    let err = rel_error(&[want], &got);
    assert!(err < 1e-4, "relative error {err}");
}
