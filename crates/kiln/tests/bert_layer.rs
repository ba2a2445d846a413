//! A BERT encoder layer as torch.onnx.export writes it (tests/models/make_models.py): runs on the
//! CPU against onnx's reference evaluator, and with input shapes fixed, every shape in the graph
//! becomes static because the Shape/Gather/Concat arithmetic folds away.

use kiln::ir::Op;
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/models").join(name)
}

fn check(specialized: bool) -> kiln::ir::Graph {
    let mut m = kiln::load(&fixture("bert_layer.onnx")).unwrap();
    let x = kiln::npy::read(&fixture("bert_layer.input.x.npy")).unwrap();
    let mask = kiln::npy::read(&fixture("bert_layer.input.mask.npy")).unwrap();
    if specialized {
        let shapes =
            HashMap::from([("x".to_string(), x.shape().to_vec()), ("mask".to_string(), mask.shape().to_vec())]);
        kiln::specialize(&mut m.graph, &shapes).unwrap();
    }
    kiln::optimize(&mut m.graph).unwrap();
    let want = kiln::npy::read(&fixture("bert_layer.expected.y.npy")).unwrap();
    let got = kiln::run_cpu(&m.graph, &[x, mask]).unwrap();
    assert_eq!(got[0].shape(), want.shape());
    for (a, b) in got[0].to_f64_vec().iter().zip(want.to_f64_vec()) {
        assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "{a} vs {b}");
    }
    m.graph
}

#[test]
fn matches_the_reference_with_symbolic_shapes() {
    let g = check(false);
    // With symbolic batch and sequence, the head-splitting shape arithmetic must stay.
    assert!(g.op_counts().contains_key("Shape"));
}

#[test]
fn fixed_shapes_make_every_shape_static() {
    let g = check(true);
    let counts = g.op_counts();
    for op in ["Shape", "Gather", "Unsqueeze", "Concat", "Slice"] {
        assert_eq!(counts.get(op), None, "{op} should have folded away: {counts:?}");
    }
    for id in g.node_ids() {
        if matches!(g.node(id).op, Op::Input | Op::Const(_)) {
            continue;
        }
        for o in &g.node(id).outputs {
            assert!(o.ty.concrete_shape().is_some(), "{} ({}) has type {}", o.name, g.node(id).name, o.ty);
        }
    }
}

#[test]
fn a_shape_that_does_not_fit_is_refused() {
    let mut m = kiln::load(&fixture("bert_layer.onnx")).unwrap();
    let shapes = HashMap::from([("x".to_string(), vec![2, 8, 31])]);
    let e = kiln::specialize(&mut m.graph, &shapes).unwrap_err().to_string();
    assert!(e.contains("input 'x'") && e.contains("does not fit"), "{e}");
}
