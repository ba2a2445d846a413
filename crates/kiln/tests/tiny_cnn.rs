//! End to end on the committed fixture: import, optimize, run on the CPU, compare with the
//! output of onnx's reference evaluator (tests/models/make_models.py).

use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/models").join(name)
}

fn check(optimize: bool) {
    let mut m = kiln::load(&fixture("tiny_cnn.onnx")).unwrap();
    if optimize {
        kiln::optimize(&mut m.graph).unwrap();
    }
    let x = kiln::npy::read(&fixture("tiny_cnn.input.x.npy")).unwrap();
    let want = kiln::npy::read(&fixture("tiny_cnn.expected.probs.npy")).unwrap();
    let got = kiln::run_cpu(&m.graph, &[x]).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].shape(), want.shape());
    for (a, b) in got[0].to_f64_vec().iter().zip(want.to_f64_vec()) {
        assert!((a - b).abs() <= 1e-6 + 1e-5 * b.abs(), "{a} vs {b}");
    }
}

#[test]
fn matches_the_reference_unoptimized() {
    check(false);
}

#[test]
fn matches_the_reference_optimized() {
    check(true);
}

#[test]
fn optimization_infers_every_shape() {
    let mut m = kiln::load(&fixture("tiny_cnn.onnx")).unwrap();
    kiln::optimize(&mut m.graph).unwrap();
    let g = &m.graph;
    for id in g.node_ids() {
        for o in &g.node(id).outputs {
            assert!(o.ty.concrete_shape().is_some(), "{} has type {}", o.name, o.ty);
        }
    }
}

#[test]
fn batchnorm_folds_into_the_conv() {
    let mut m = kiln::load(&fixture("tiny_cnn.onnx")).unwrap();
    assert_eq!(m.graph.op_counts().get("BatchNormalization"), Some(&1));
    let done = kiln::optimize(&mut m.graph).unwrap();
    let fusion = done.fusion.unwrap();
    assert!(fusion.rules_fired.iter().any(|(r, n)| r == "conv-bn" && *n > 0), "{fusion}");
    let counts = m.graph.op_counts();
    assert_eq!(counts.get("BatchNormalization"), None);
    // conv1 + BN + Relu, and conv2 + residual Add + Relu, are one node each.
    assert_eq!(counts.get("ConvEpilogue"), Some(&2), "{fusion}");
    assert_eq!(counts.get("Conv"), None);
}
