//! The launch planner on small graphs: which steps, kernels, launch configurations and
//! cuBLASLt epilogues it chooses, as a golden file, and that it names every node it cannot
//! lower. The generated kernels of the plan are compiled with NVRTC where it is present.

use kiln_cuda::nvrtc::Nvrtc;
use kiln_cuda::plan::{plan, BufferKind, GemmEpilogue, Plan, StepKind};
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
use kiln_ir::ops::layout::LayoutOp;
use kiln_ir::ops::linalg::LinalgOp;
use kiln_ir::ops::norm::NormOp;
use kiln_ir::ops::reduce::{ReduceOp, Reducer};
use kiln_ir::ops::{ElementwiseOp, Expr, ExprNode, FusedOp};
use kiln_ir::{DType, Graph, Op, Tensor, TypeInfo, Value, ValueInfo};

fn op(op: ElementwiseOp, args: &[usize]) -> ExprNode {
    ExprNode::Op { op, args: args.to_vec() }
}

fn f16(shape: &[usize]) -> TypeInfo {
    TypeInfo::known(DType::F16, shape)
}

fn konst(g: &mut Graph, name: &str, shape: &[usize]) -> Value {
    let n: usize = shape.iter().product();
    let t = Tensor::from_vec(shape.to_vec(), (0..n).map(|i| (i % 7) as f32 * 0.1).collect::<Vec<f32>>()).unwrap();
    g.add_const(name, t.cast(DType::F16))
}

fn node(g: &mut Graph, name: &str, o: Op, ins: &[Option<Value>], ty: TypeInfo) -> Value {
    let id = g.add_node(name, o, ins, vec![ValueInfo::tensor(name, ty)]);
    Value { node: id, slot: 0 }
}

/// A transformer-ish block: linear + bias + ReLU, LayerNorm, linear whose erf-GELU epilogue
/// cuBLASLt cannot fuse, SiLU, a Gemm with a broadcast C, Softmax.
fn block() -> Graph {
    let mut g = Graph::new("block");
    let x = g.add_input("x", f16(&[4, 50]));
    let (w1, b1) = (konst(&mut g, "w1", &[50, 64]), konst(&mut g, "b1", &[64]));
    let relu_bias = Expr {
        nodes: vec![
            ExprNode::Input(0),
            ExprNode::Input(1),
            op(ElementwiseOp::Binary(BinaryOp::Add), &[0, 1]),
            op(ElementwiseOp::Unary(UnaryOp::Relu), &[2]),
        ],
    };
    let ep = Op::Fused(FusedOp::Epilogue { base: LinalgOp::MatMul, base_inputs: 2, expr: relu_bias });
    let h1 = node(&mut g, "fc1", ep, &[Some(x), Some(w1), Some(b1)], f16(&[4, 64]));
    let (s, b) = (konst(&mut g, "ln_scale", &[64]), konst(&mut g, "ln_bias", &[64]));
    let ln = Op::Norm(NormOp::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: 1 });
    let h2 = node(&mut g, "ln", ln, &[Some(h1), Some(s), Some(b)], f16(&[4, 64]));
    let (w2, b2) = (konst(&mut g, "w2", &[64, 64]), konst(&mut g, "b2", &[64]));
    let gelu_res = Expr {
        nodes: vec![
            ExprNode::Input(0),
            ExprNode::Input(1),
            op(ElementwiseOp::Binary(BinaryOp::Add), &[0, 1]),
            op(ElementwiseOp::Unary(UnaryOp::Gelu { tanh: false }), &[2]),
            ExprNode::Input(2),
            op(ElementwiseOp::Binary(BinaryOp::Add), &[3, 4]),
        ],
    };
    let ep = Op::Fused(FusedOp::Epilogue { base: LinalgOp::MatMul, base_inputs: 2, expr: gelu_res });
    let h3 = node(&mut g, "fc2", ep, &[Some(h2), Some(w2), Some(b2), Some(h2)], f16(&[4, 64]));
    let silu = Expr {
        nodes: vec![
            ExprNode::Input(0),
            op(ElementwiseOp::Unary(UnaryOp::Sigmoid), &[0]),
            op(ElementwiseOp::Binary(BinaryOp::Mul), &[0, 1]),
        ],
    };
    let h4 = node(&mut g, "silu", Op::Fused(FusedOp::Elementwise(silu)), &[Some(h3)], f16(&[4, 64]));
    let (w3, c3) = (konst(&mut g, "w3", &[16, 64]), konst(&mut g, "c3", &[4, 1]));
    let gemm = Op::Linalg(LinalgOp::Gemm { alpha: 1.0, beta: 0.5, trans_a: false, trans_b: true });
    let h5 = node(&mut g, "gemm", gemm, &[Some(h4), Some(w3), Some(c3)], f16(&[4, 16]));
    let sm =
        node(&mut g, "softmax", Op::Norm(NormOp::Softmax { axis: -1, coerce_2d: false }), &[Some(h5)], f16(&[4, 16]));
    g.add_output("y", sm);
    g
}

/// The one place the planner is called on the block.
fn check_block() -> Plan {
    let p = plan(&block()).unwrap();
    insta::assert_snapshot!("block_plan", p.to_string());
    p
}

#[test]
fn block_plan_fuses_what_cublaslt_can() {
    let p = check_block();
    let gemms: Vec<&GemmEpilogue> =
        p.steps.iter().filter_map(|s| if let StepKind::Gemm(g) = &s.kind { Some(&g.epilogue) } else { None }).collect();
    assert_eq!(gemms.len(), 3);
    assert!(matches!(gemms[0], GemmEpilogue::ReluBias(_)), "{gemms:?}");
    // erf-GELU is not cuBLASLt's tanh GELU: a plain GEMM, then one generated kernel for bias,
    // GELU and residual together.
    assert_eq!(gemms[1], &GemmEpilogue::None);
    // Gemm's C of [4, 1] with beta 0.5 is neither a full C nor a bias: a generated kernel too.
    assert_eq!(gemms[2], &GemmEpilogue::None);
    let names: Vec<String> = p
        .steps
        .iter()
        .filter_map(|s| if let StepKind::Kernel(k) = &s.kind { Some(k.kernel.clone()) } else { None })
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(names[0], "layernorm_f16");
    assert!(names[1].starts_with("epilogue_") && names[2].starts_with("fused_") && names[3].starts_with("epilogue_"));
    assert_eq!(names[4], "softmax_f16");
    assert_eq!(p.outputs.len(), 1);
    // The accumulator of fc2 dies at its epilogue.
    let acc = p.buffers.iter().position(|b| b.name == "fc2.acc").unwrap();
    assert_eq!(p.buffers[acc].last_use, Some(3));
}

#[test]
fn generated_kernels_of_the_plan_compile() {
    let p = check_block();
    let nv = match Nvrtc::locate() {
        Ok(n) => n.with_cache_dir(None),
        Err(e) if std::env::var_os("CI").is_some_and(|v| v == "true") => panic!("CI=true and {e}"),
        Err(e) => return eprintln!("skipped: {e}"),
    };
    assert_eq!(p.generated.len(), 3);
    for k in &p.generated {
        for arch in ["sm_80", "sm_90"] {
            let c = nv.compile(&k.name, &k.source, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(c.has_kernel(&k.name));
        }
    }
}

#[test]
fn unsupported_nodes_are_all_named() {
    let mut g = Graph::new("bad");
    let x = g.add_input("x", TypeInfo::known(DType::F32, &[2, 3]));
    let t = node(
        &mut g,
        "hard",
        Op::Norm(NormOp::Hardmax { axis: 0, coerce_2d: false }),
        &[Some(x)],
        TypeInfo::known(DType::F32, &[2, 3]),
    );
    let n = node(
        &mut g,
        "not",
        Op::Elementwise(ElementwiseOp::Unary(UnaryOp::BitwiseNot)),
        &[Some(x)],
        TypeInfo::known(DType::F32, &[2, 3]),
    );
    g.add_output("t", t);
    g.add_output("n", n);
    let err = plan(&g).unwrap_err().to_string();
    assert!(err.starts_with("2 node(s) have no CUDA lowering"), "{err}");
    assert!(err.contains("hard (Hardmax): the launch planner does not lower Hardmax yet"), "{err}");
    assert!(err.contains("not (BitwiseNot): BitwiseNot on f32 has no CUDA lowering"), "{err}");

    // A dynamic shape is named too.
    let mut g = Graph::new("dynamic");
    let x = g.add_input("x", TypeInfo::of_dtype(DType::F32));
    let r = node(
        &mut g,
        "relu",
        Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu)),
        &[Some(x)],
        TypeInfo::of_dtype(DType::F32),
    );
    g.add_output("r", r);
    let err = plan(&g).unwrap_err().to_string();
    assert!(err.contains("has no static type"), "{err}");
}

/// An encoder's attention half: embedding gather, QKV projection, packed attention with a
/// key-padding mask, a reshape (a view), a transpose, a mean over the hidden dim, an ArgMax
/// and a concat.
fn encoder() -> Graph {
    let mut g = Graph::new("encoder");
    let ids = g.add_input("ids", TypeInfo::known(DType::I64, &[2, 50]));
    let mask = g.add_input("mask", f16(&[2, 1, 1, 50]));
    let table = konst(&mut g, "table", &[1000, 192]);
    let x =
        node(&mut g, "embed", Op::Layout(LayoutOp::Gather { axis: 0 }), &[Some(table), Some(ids)], f16(&[2, 50, 192]));
    let (w, b) = (konst(&mut g, "w_qkv", &[192, 576]), konst(&mut g, "b_qkv", &[576]));
    let bias =
        Expr { nodes: vec![ExprNode::Input(0), ExprNode::Input(1), op(ElementwiseOp::Binary(BinaryOp::Add), &[0, 1])] };
    let ep = Op::Fused(FusedOp::Epilogue { base: LinalgOp::MatMul, base_inputs: 2, expr: bias });
    let qkv = node(&mut g, "qkv", ep, &[Some(x), Some(w), Some(b)], f16(&[2, 50, 576]));
    let att = Op::Fused(FusedOp::PackedAttention { num_heads: 3, scale: 0.125 });
    let a = node(&mut g, "attention", att, &[Some(qkv), Some(mask)], f16(&[2, 50, 192]));
    let flat = Op::Layout(LayoutOp::Reshape { shape: Some(vec![100, 192]), allowzero: false });
    let f = node(&mut g, "flat", flat, &[Some(a)], f16(&[100, 192]));
    let t = node(&mut g, "t", Op::Layout(LayoutOp::Transpose { perm: None }), &[Some(f)], f16(&[192, 100]));
    let mean_op =
        ReduceOp::Reduce { reducer: Reducer::Mean, axes: Some(vec![-1]), keepdims: true, noop_with_empty_axes: false };
    let mean = node(&mut g, "mean", Op::Reduce(mean_op), &[Some(f)], f16(&[100, 1]));
    let arg = ReduceOp::ArgMax { axis: 1, keepdims: false, select_last_index: false };
    let best = node(&mut g, "best", Op::Reduce(arg), &[Some(t)], TypeInfo::known(DType::I64, &[192]));
    let cat = node(&mut g, "cat", Op::Layout(LayoutOp::Concat { axis: 1 }), &[Some(f), Some(mean)], f16(&[100, 193]));
    g.add_output("cat", cat);
    g.add_output("best", best);
    g.add_output("flat", f);
    g
}

#[test]
fn encoder_plan_reads_packed_qkv_in_place() {
    let p = plan(&encoder()).unwrap();
    insta::assert_snapshot!("encoder_plan", p.to_string());
    let kernels: Vec<&str> = p
        .steps
        .iter()
        .filter_map(|s| if let StepKind::Kernel(k) = &s.kind { Some(k.kernel.as_str()) } else { None })
        .collect();
    assert_eq!(
        kernels,
        [
            "gather_u16",
            "attention_d64_f16",
            "permute_u16",
            "reduce_mean_f16",
            "argmax_f16",
            "copy_rows_u16",
            "copy_rows_u16"
        ]
    );
    // The reshape is a view of the attention output, which stays alive as the memory of a
    // graph output and until the concat that reads the view.
    let flat = p.buffers.iter().position(|b| b.name == "flat").unwrap();
    let att = p.buffers.iter().position(|b| b.name == "attention").unwrap();
    assert_eq!(p.buffers[flat].kind, BufferKind::View(att));
    assert!(p.buffers[att].output);
    let first_copy = p.steps.iter().position(|s| s.node == "cat").unwrap();
    assert_eq!(p.buffers[att].last_use, Some(first_copy));
}
