//! Graph structure, verification, the text dump and the pass manager.

use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
use kiln_ir::ops::{ElementwiseOp, LayoutOp};
use kiln_ir::passes::{
    ConstFold, DeadCodeElimination, Evaluator, InferTypes, Pass, PassContext, PassManager, RemoveNoops,
};
use kiln_ir::{DType, Graph, IrError, Op, Tensor, TypeInfo, Value, ValueInfo};

fn add() -> Op {
    Op::Elementwise(ElementwiseOp::Binary(BinaryOp::Add))
}

fn relu() -> Op {
    Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu))
}

fn out(name: &str) -> Vec<ValueInfo> {
    vec![ValueInfo::named(name)]
}

/// x -> relu -> (+ c) -> y, plus a dead branch and an identity.
fn sample() -> (Graph, Value) {
    let mut g = Graph::new("sample");
    let x = g.add_input("x", TypeInfo::known(DType::F32, &[2, 3]));
    let c = g.add_const("c", Tensor::from_vec(vec![3], vec![1.0f32, 2.0, 3.0]).unwrap());
    let r = g.add_node("relu", relu(), &[Some(x)], out("r"));
    let r = Value { node: r, slot: 0 };
    let id = g.add_node("id", Op::Layout(LayoutOp::Identity), &[Some(r)], out("r2"));
    let s = g.add_node("sum", add(), &[Some(Value { node: id, slot: 0 }), Some(c)], out("s"));
    let dead = g.add_node("dead", relu(), &[Some(c)], out("unused"));
    let _ = dead;
    let s = Value { node: s, slot: 0 };
    g.add_output("y", s);
    (g, x)
}

#[test]
fn topo_order_puts_producers_first() {
    let (g, _) = sample();
    let order = g.topo_order().unwrap();
    let pos = |name: &str| order.iter().position(|&n| g.node(n).name == name).unwrap();
    assert!(pos("x") < pos("relu") && pos("relu") < pos("id") && pos("id") < pos("sum"));
    assert!(pos("c") < pos("sum"));
}

#[test]
fn verify_accepts_a_good_graph() {
    let (g, _) = sample();
    g.verify().unwrap();
}

#[test]
fn verify_rejects_a_cycle() {
    let mut g = Graph::new("cyclic");
    let a = g.add_node("a", relu(), &[None], out("a"));
    let b = g.add_node("b", relu(), &[Some(Value { node: a, slot: 0 })], out("b"));
    g.set_input(a, 0, Some(Value { node: b, slot: 0 }));
    assert!(matches!(g.verify(), Err(IrError::Cycle { .. })));
}

#[test]
fn verify_rejects_duplicate_names_and_bad_slots() {
    let mut g = Graph::new("dup");
    let x = g.add_input("x", TypeInfo::unknown());
    g.add_node("n", relu(), &[Some(x)], out("x"));
    let e = g.verify().unwrap_err().to_string();
    assert!(e.contains("'x' is defined twice"), "{e}");

    let mut g = Graph::new("slot");
    let x = g.add_input("x", TypeInfo::unknown());
    g.add_node("n", relu(), &[Some(Value { node: x.node, slot: 3 })], out("y"));
    let e = g.verify().unwrap_err().to_string();
    assert!(e.contains("reads output 3"), "{e}");
}

#[test]
fn verify_rejects_a_const_whose_type_lies() {
    let mut g = Graph::new("lie");
    let c = g.add_const("c", Tensor::from_vec(vec![2], vec![1.0f32, 2.0]).unwrap());
    g.node_mut(c.node).outputs[0].ty = TypeInfo::known(DType::F32, &[3]);
    let e = g.verify().unwrap_err().to_string();
    assert!(e.contains("declared f32[3]"), "{e}");
}

#[test]
fn dump_is_stable() {
    let (g, _) = sample();
    insta::assert_snapshot!(g.dump());
}

#[test]
fn dce_removes_unreachable_nodes() {
    let (mut g, _) = sample();
    assert!(DeadCodeElimination.run(&mut g, &PassContext::default()).unwrap());
    assert!(g.find_value("unused").is_none());
    assert!(g.find_value("s").is_some());
    g.verify().unwrap();
}

#[test]
fn noop_removal_bypasses_identity() {
    let (mut g, _) = sample();
    assert!(RemoveNoops.run(&mut g, &PassContext::default()).unwrap());
    assert_eq!(g.op_counts().get("Identity"), None);
    let sum = g.node_ids().find(|&n| g.node(n).name == "sum").unwrap();
    let src = g.inputs_of(sum)[0].unwrap();
    assert_eq!(g.node(src.node).name, "relu");
}

/// Evaluates Add and Relu on f32, enough to test folding without an executor.
struct TinyEval;

impl Evaluator for TinyEval {
    fn eval(&self, op: &Op, inputs: &[Option<&Tensor>], _n: usize) -> Result<Vec<Tensor>, String> {
        let a = inputs[0].unwrap().as_slice::<f32>().map_err(|e| e.to_string())?;
        let shape = inputs[0].unwrap().shape().to_vec();
        let v: Vec<f32> = match op.name() {
            "Relu" => a.iter().map(|x| x.max(0.0)).collect(),
            "Add" => {
                let b = inputs[1].unwrap().as_slice::<f32>().map_err(|e| e.to_string())?;
                a.iter().zip(b).map(|(x, y)| x + y).collect()
            }
            other => return Err(format!("{other} is not supported by the test evaluator")),
        };
        Ok(vec![Tensor::from_vec(shape, v).unwrap()])
    }
}

#[test]
fn const_fold_replaces_constant_subgraphs_and_keeps_names() {
    let mut g = Graph::new("fold");
    let x = g.add_input("x", TypeInfo::known(DType::F32, &[2]));
    let c = g.add_const("c", Tensor::from_vec(vec![2], vec![-1.0f32, 2.0]).unwrap());
    let r = g.add_node("relu_c", relu(), &[Some(c)], out("rc"));
    let s = g.add_node("sum", add(), &[Some(x), Some(Value { node: r, slot: 0 })], out("s"));
    let ro = g.add_node("relu_out", relu(), &[Some(Value { node: r, slot: 0 })], out("ro"));
    g.add_output("s", Value { node: s, slot: 0 });
    g.add_output("ro", Value { node: ro, slot: 0 });
    let cx = PassContext { evaluator: Some(&TinyEval), max_folded_bytes: 0 };
    assert!(ConstFold.run(&mut g, &cx).unwrap());
    g.verify().unwrap();
    // relu_c and relu_out folded into constants under their value names; sum still reads x.
    let rc = g.find_value("rc").unwrap();
    assert!(matches!(&g.node(rc.node).op, Op::Const(t) if t.as_slice::<f32>().unwrap() == [0.0, 2.0]));
    let ro = g.outputs[1].value;
    assert_eq!(g.value_info(ro).name, "ro");
    assert!(matches!(g.node(ro.node).op, Op::Const(_)));
    let sum = g.node_ids().find(|&n| g.node(n).name == "sum").unwrap();
    assert_eq!(g.inputs_of(sum), vec![Some(x), Some(rc)]);
}

#[test]
fn pipeline_can_stop_after_n_passes_and_names_a_failing_pass() {
    let (mut g, _) = sample();
    let reports =
        PassManager::default_pipeline().stop_after(2).always_verify(true).run(&mut g, &PassContext::default()).unwrap();
    assert_eq!(reports.iter().map(|r| r.pass).collect::<Vec<_>>(), vec!["infer-types", "remove-noops"]);
    // DCE did not run, so the dead node is still there.
    assert!(g.find_value("unused").is_some());

    /// A pass that breaks the graph, to check the manager's verification.
    struct Vandal;
    impl Pass for Vandal {
        fn name(&self) -> &'static str {
            "vandal"
        }
        fn run(&self, g: &mut Graph, _cx: &PassContext<'_>) -> Result<bool, IrError> {
            let x = g.inputs[0];
            g.node_mut(x).op = relu();
            Ok(true)
        }
    }
    let (mut g, _) = sample();
    let e = PassManager::new(vec![Box::new(InferTypes), Box::new(Vandal)])
        .always_verify(true)
        .run(&mut g, &PassContext::default())
        .unwrap_err();
    assert!(matches!(e, IrError::Pass { pass: "vandal", .. }), "{e}");
}

#[test]
fn type_inference_fills_shapes_and_reports_contradictions() {
    let (mut g, _) = sample();
    InferTypes.run(&mut g, &PassContext::default()).unwrap();
    let s = g.find_value("s").unwrap();
    assert_eq!(g.value_info(s).ty, TypeInfo::known(DType::F32, &[2, 3]));

    let mut g = Graph::new("bad");
    let x = g.add_input("x", TypeInfo::known(DType::F32, &[2, 3]));
    let y = g.add_input("y", TypeInfo::known(DType::F32, &[4]));
    g.add_node("sum", add(), &[Some(x), Some(y)], out("s"));
    let e = InferTypes.run(&mut g, &PassContext::default()).unwrap_err().to_string();
    assert!(e.contains("'sum'") && e.contains("Add"), "{e}");
}

#[test]
fn shapes_of_known_values_become_constants() {
    let mut g = Graph::new("shapes");
    let x = g.add_input("x", TypeInfo::known(DType::F32, &[2, 3, 4]));
    let r = g.add_node("relu", relu(), &[Some(x)], out("r"));
    let s = g.add_node(
        "shape",
        Op::Layout(LayoutOp::Shape { start: 1, end: None }),
        &[Some(Value { node: r, slot: 0 })],
        out("s"),
    );
    let n = g.add_node("size", Op::Layout(LayoutOp::Size), &[Some(Value { node: r, slot: 0 })], out("n"));
    g.add_output("s", Value { node: s, slot: 0 });
    g.add_output("n", Value { node: n, slot: 0 });
    // Type inference first: the shape of `r` is only known once Relu's rule has run.
    PassManager::default_pipeline().always_verify(true).run(&mut g, &PassContext::default()).unwrap();
    let consts: Vec<Tensor> = g
        .outputs
        .iter()
        .map(|o| match &g.node(o.value.node).op {
            Op::Const(t) => t.clone(),
            op => panic!("output {} is still a {}", o.name, op.name()),
        })
        .collect();
    assert_eq!(consts[0], Tensor::from_vec(vec![2], vec![3i64, 4]).unwrap());
    assert_eq!(consts[1], Tensor::scalar(24i64));
    assert_eq!(g.value_info(g.outputs[0].value).name, "s");
}
