//! The launch planner on small graphs: which steps, kernels, launch configurations and
//! cuBLASLt epilogues it chooses, as a golden file, and that it names every node it cannot
//! lower. The generated kernels of the plan are compiled with NVRTC where it is present.

use kiln_cuda::nvrtc::Nvrtc;
use kiln_cuda::plan::{plan, Arg, BufferKind, ConvActivation, ConvStep, GemmEpilogue, Plan, StepKind};
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
use kiln_ir::ops::layout::{LayoutOp, PadMode};
use kiln_ir::ops::linalg::{ConvAttrs, ConvTransposeAttrs, LinalgOp};
use kiln_ir::ops::norm::NormOp;
use kiln_ir::ops::pool::{AutoPad, PoolOp, PoolWindow};
use kiln_ir::ops::reduce::{ReduceOp, Reducer};
use kiln_ir::ops::spatial::{
    AspectRatioPolicy, CoordTransform, NearestMode, ResizeAttrs, ResizeInputs, ResizeMode, SpatialOp,
};
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
    // Rows of 64 and 16 halves fit one warp: the warp-per-row kernels.
    assert_eq!(names[0], "layernorm_warp_f16");
    assert!(names[1].starts_with("epilogue_") && names[2].starts_with("fused_") && names[3].starts_with("epilogue_"));
    assert_eq!(names[4], "softmax_warp_f16");
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
    let t = node(&mut g, "hard", Op::Layout(LayoutOp::NonZero), &[Some(x)], TypeInfo::known(DType::F32, &[2, 3]));
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
    assert!(err.contains("hard (NonZero): the launch planner does not lower NonZero yet"), "{err}");
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
            "gather_rows_u16",
            "attention_mma_w1_d64_f16",
            "transpose2d_u16",
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

// ---------------------------------------------------------------------------------------------
// Row kernels: the warp-per-row path where a row fits one warp's registers

/// The kernel name and launch configuration of the one kernel step of a one-node graph.
fn row_kernel(o: Op, dtype: DType, shape: &[usize], params: &[usize]) -> (String, (u32, u32, u32), (u32, u32, u32)) {
    let mut g = Graph::new("row");
    let x = g.add_input("x", TypeInfo::known(dtype, shape));
    let mut ins = vec![Some(x)];
    for (i, &n) in params.iter().enumerate() {
        let t = Tensor::from_vec(vec![n], vec![1.0f32; n]).unwrap().cast(dtype);
        ins.push(Some(g.add_const(format!("p{i}"), t)));
    }
    let y = node(&mut g, "y", o, &ins, TypeInfo::known(dtype, shape));
    g.add_output("y", y);
    let p = plan(&g).unwrap();
    let ks: Vec<_> =
        p.steps.iter().filter_map(|s| if let StepKind::Kernel(k) = &s.kind { Some(k.clone()) } else { None }).collect();
    assert_eq!(ks.len(), 1, "{ks:?}");
    (ks[0].kernel.clone(), ks[0].config.grid, ks[0].config.block)
}

#[test]
fn rows_that_fit_a_warp_take_the_warp_per_row_kernels() {
    let ln = Op::Norm(NormOp::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: 1 });
    let rms = Op::Norm(NormOp::RMSNormalization { axis: -1, epsilon: 1e-6, stash_type: 1 });
    let sm = Op::Norm(NormOp::Softmax { axis: -1, coerce_2d: false });
    let lsm = Op::Norm(NormOp::LogSoftmax { axis: -1, coerce_2d: false });
    // BERT-base: 4096 rows of 768 halves, 8 rows (warps) per block.
    assert_eq!(
        row_kernel(ln.clone(), DType::F16, &[4096, 768], &[768, 768]),
        ("layernorm_warp_f16".into(), (512, 1, 1), (256, 1, 1))
    );
    assert_eq!(row_kernel(rms.clone(), DType::F16, &[4096, 768], &[768]).0, "rmsnorm_warp_f16");
    assert_eq!(row_kernel(sm.clone(), DType::F16, &[4096, 768], &[]).0, "softmax_warp_f16");
    assert_eq!(row_kernel(lsm.clone(), DType::F32, &[9, 128], &[]).0, "logsoftmax_warp_f32");
    // The largest row that fits: 32 lanes of 8 16-byte vectors, 4096 bytes.
    assert_eq!(row_kernel(ln.clone(), DType::F16, &[3, 2048], &[2048, 2048]).0, "layernorm_warp_f16");
    assert_eq!(row_kernel(ln.clone(), DType::F32, &[3, 1024], &[1024]).0, "layernorm_warp_f32");
    // One vector past it, rows that are not whole vectors, long rows: one block per row.
    assert_eq!(row_kernel(ln.clone(), DType::F16, &[3, 2056], &[2056, 2056]).0, "layernorm_f16");
    assert_eq!(row_kernel(ln.clone(), DType::F32, &[3, 1028], &[1028]).0, "layernorm_f32");
    assert_eq!(row_kernel(ln.clone(), DType::F16, &[3, 783], &[783, 783]).0, "layernorm_f16");
    assert_eq!(
        row_kernel(ln, DType::F16, &[2, 100000], &[100000, 100000]),
        ("layernorm_f16".into(), (2, 1, 1), (256, 1, 1))
    );
    assert_eq!(row_kernel(rms, DType::F16, &[4, 50], &[50]).0, "rmsnorm_f16");
    assert_eq!(row_kernel(sm, DType::F16, &[4, 4100], &[]).0, "softmax_f16");
    // Softmax over a middle axis reads strided rows: one block per row.
    let mid = Op::Norm(NormOp::Softmax { axis: 1, coerce_2d: false });
    assert_eq!(row_kernel(mid, DType::F16, &[2, 64, 8], &[]).0, "softmax_f16");
}

// ---------------------------------------------------------------------------------------------
// Convolutions, pooling and data movement

fn conv_attrs(pads: &[usize], auto_pad: AutoPad, group: usize) -> ConvAttrs {
    ConvAttrs { kernel_shape: vec![], strides: vec![], dilations: vec![], pads: pads.to_vec(), auto_pad, group }
}

/// A ResNet-ish and MobileNet-ish stem: a Conv with its bias, a residual and ReLU (all
/// cuDNN's), a depthwise Conv whose SAME_UPPER padding is asymmetric under stride 2 with a
/// Clip (ReLU6) epilogue, a 1-D and a 3-D Conv.
fn convs() -> Graph {
    let mut g = Graph::new("convs");
    let x = g.add_input("x", f16(&[1, 8, 8, 8]));
    let (w, b) = (konst(&mut g, "w", &[8, 8, 3, 3]), konst(&mut g, "b", &[8]));
    let res = Expr {
        nodes: vec![
            ExprNode::Input(0),
            ExprNode::Input(1),
            op(ElementwiseOp::Binary(BinaryOp::Add), &[0, 1]),
            op(ElementwiseOp::Unary(UnaryOp::Relu), &[2]),
        ],
    };
    let base = LinalgOp::Conv(conv_attrs(&[1, 1, 1, 1], AutoPad::NotSet, 1));
    let ep = Op::Fused(FusedOp::Epilogue { base, base_inputs: 3, expr: res });
    let h = node(&mut g, "conv1", ep, &[Some(x), Some(w), Some(b), Some(x)], f16(&[1, 8, 8, 8]));
    let dw = konst(&mut g, "dw", &[8, 1, 3, 3]);
    let mut same = conv_attrs(&[], AutoPad::SameUpper, 8);
    same.strides = vec![2, 2];
    let relu6 = Expr::op(ElementwiseOp::Clip { min: Some(0.0), max: Some(6.0) }, 1);
    let ep = Op::Fused(FusedOp::Epilogue { base: LinalgOp::Conv(same), base_inputs: 2, expr: relu6 });
    let d = node(&mut g, "dwconv", ep, &[Some(h), Some(dw)], f16(&[1, 8, 4, 4]));
    g.add_output("d", d);
    let x1 = g.add_input("x1", f16(&[2, 4, 50]));
    let w1 = konst(&mut g, "w1", &[6, 4, 5]);
    let c1 = Op::Linalg(LinalgOp::Conv(conv_attrs(&[2, 2], AutoPad::NotSet, 1)));
    let y1 = node(&mut g, "conv1d", c1, &[Some(x1), Some(w1)], f16(&[2, 6, 50]));
    g.add_output("y1", y1);
    let x3 = g.add_input("x3", f16(&[1, 2, 3, 5, 5]));
    let w3 = konst(&mut g, "w3", &[4, 2, 1, 3, 3]);
    let c3 = Op::Linalg(LinalgOp::Conv(conv_attrs(&[], AutoPad::Valid, 1)));
    let y3 = node(&mut g, "conv3d", c3, &[Some(x3), Some(w3)], f16(&[1, 4, 3, 3, 3]));
    g.add_output("y3", y3);
    g
}

#[test]
fn convs_fuse_what_cudnn_can_and_pad_asymmetric_inputs() {
    let p = plan(&convs()).unwrap();
    insta::assert_snapshot!("convs_plan", p.to_string());
    let convs: Vec<&ConvStep> =
        p.steps.iter().filter_map(|s| if let StepKind::Conv(c) = &s.kind { Some(c) } else { None }).collect();
    assert_eq!(convs.len(), 3);
    let id = |name: &str| p.buffers.iter().position(|b| b.name == name).unwrap();
    // The 2-D convolution in f16 runs channels-last, the others do not.
    let layouts: Vec<bool> = convs.iter().map(|c| c.channels_last).collect();
    assert_eq!(layouts, [true, false, false]);
    // Bias, residual and ReLU all go to cuDNN; the residual is read NHWC too.
    let c = convs[0];
    assert_eq!((c.bias, c.z, c.activation), (Some(id("b")), Some(id("x.nhwc")), ConvActivation::Relu));
    assert_eq!((c.pads.clone(), c.y), (vec![1, 1], id("conv1.nhwc")));
    assert_eq!(p.buffers[c.w].shape, [8, 3, 3, 8], "the filter is stored OHWI");
    // The depthwise convolution is a generated direct kernel: SAME_UPPER with stride 2 over 8
    // (0 cells before, 1 after) needs no pad step, and its Clip is fused. Its filter is
    // stored [kh, kw, c].
    let kernels: Vec<(&str, &str, &[Arg])> = p
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Kernel(k) => Some((s.node.as_str(), k.kernel.as_str(), k.args.as_slice())),
            _ => None,
        })
        .collect();
    let names: Vec<(&str, &str)> = kernels.iter().map(|(n, k, _)| (*n, *k)).collect();
    // The input goes NHWC once; the output comes back to NCHW once, for the graph output.
    assert_eq!(
        names,
        [("x", "transpose_narrow_u16"), ("dwconv", "dwconv2d_nhwc_v8_f16"), ("dwconv", "transpose_narrow_u16")]
    );
    let [Arg::Buffer(x), Arg::Buffer(w), Arg::Null, Arg::Buffer(y), Arg::Struct(f)] = kernels[1].2 else {
        panic!("{:?}", kernels[1].2)
    };
    assert_eq!((*x, *y), (id("conv1.nhwc"), id("dwconv.nhwc")));
    assert_eq!(p.buffers[*w].shape, [1, 3, 3, 8]);
    // pads before: 0, 0; activation 2 (clamp) to [0, 6].
    let ints: Vec<i64> = f.iter().map(|v| if let kiln_cuda::plan::Field::I64(i) = v { *i } else { -1 }).collect();
    assert_eq!(ints[12..15], [0, 0, 2]);
    assert_eq!((f64::from_bits(ints[15] as u64), f64::from_bits(ints[16] as u64)), (0.0, 6.0));
    // 1-D and 3-D shapes are recorded as they are.
    assert_eq!((convs[1].x_shape.len(), convs[1].pads.clone()), (3, vec![2]));
    assert_eq!((convs[2].w_shape.clone(), convs[2].y_shape.clone()), (vec![4, 2, 1, 3, 3], vec![1, 4, 3, 3, 3]));
}

/// MobileNetV2's depthwise layers in f16 (3x3, stride 1 or 2, pad 1, bias and ReLU6 fused)
/// take the 16-byte vector kernel, one thread per 8 channels of 4 output columns; 50
/// channels (not a multiple of 8) and a dilated filter take the one-element-per-thread kernel.
#[test]
fn mobilenet_depthwise_layers_take_the_vector_kernel() {
    let relu6 = Expr::op(ElementwiseOp::Clip { min: Some(0.0), max: Some(6.0) }, 1);
    // (channels, input size, stride, dilation, kernel, threads: n * oh * ceil(ow / 4) * c / 8
    // for the vector kernel, one per output element for the other)
    let cases = [
        (32, 112, 1, 1, "dwconv2d_nhwc_v8_f16", 32 * 112 * 28 * 4),
        (144, 56, 2, 1, "dwconv2d_nhwc_v8_f16", 32 * 28 * 7 * 18),
        (960, 7, 1, 1, "dwconv2d_nhwc_v8_f16", 32 * 7 * 2 * 120),
        (50, 14, 1, 1, "dwconv2d_nhwc_f16", 32 * 14 * 14 * 50),
        (32, 14, 1, 2, "dwconv2d_nhwc_f16", 32 * 14 * 14 * 32),
    ];
    for (c, hw, stride, dil, kernel, threads) in cases {
        let grid = (threads as usize).div_ceil(256);
        let mut g = Graph::new("mobilenet_dw");
        let x = g.add_input("x", f16(&[32, c, hw, hw]));
        let (w, b) = (konst(&mut g, "w", &[c, 1, 3, 3]), konst(&mut g, "b", &[c]));
        let mut attrs = conv_attrs(&[dil; 4], AutoPad::NotSet, c);
        attrs.strides = vec![stride, stride];
        attrs.dilations = vec![dil, dil];
        let ep = Op::Fused(FusedOp::Epilogue { base: LinalgOp::Conv(attrs), base_inputs: 3, expr: relu6.clone() });
        let o = hw / stride;
        let y = node(&mut g, "dw", ep, &[Some(x), Some(w), Some(b)], f16(&[32, c, o, o]));
        g.add_output("y", y);
        let p = plan(&g).unwrap();
        let steps: Vec<_> = p
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                StepKind::Kernel(k) if s.node == "dw" && k.kernel.starts_with("dwconv") => Some(k),
                _ => None,
            })
            .collect();
        let [k] = steps.as_slice() else { panic!("{p}") };
        assert_eq!((k.kernel.as_str(), k.config.grid.0, k.config.block.0), (kernel, grid as u32, 256), "{c} channels");
        // Bias and ReLU6 are the kernel's: [x, w, bias, y, args], activation 2 (clamp).
        let [Arg::Buffer(_), Arg::Buffer(_), Arg::Buffer(bias), Arg::Buffer(_), Arg::Struct(f)] = k.args.as_slice()
        else {
            panic!("{:?}", k.args)
        };
        assert_eq!(p.buffers[*bias].name, "b");
        assert_eq!(f[14], kiln_cuda::plan::Field::I64(2));
    }
}

/// Pooling, Slice with negative steps, Pad, Split, Expand, Tile, Resize, Where and Cast.
fn data_ops() -> Graph {
    let mut g = Graph::new("data");
    let x = g.add_input("x", f16(&[2, 3, 9, 9]));
    let window = |k: usize, s: usize, p: usize, ceil_mode: bool| PoolWindow {
        kernel_shape: vec![k, k],
        strides: vec![s, s],
        pads: vec![p; 4],
        auto_pad: AutoPad::NotSet,
        dilations: vec![1, 1],
        ceil_mode,
    };
    let mp = Op::Pool(PoolOp::MaxPool { window: window(3, 2, 1, false), column_major: false });
    let m = node(&mut g, "maxpool", mp, &[Some(x)], f16(&[2, 3, 5, 5]));
    let ap = Op::Pool(PoolOp::AveragePool { window: window(2, 2, 0, true), count_include_pad: false });
    let a = node(&mut g, "avgpool", ap, &[Some(m)], f16(&[2, 3, 3, 3]));
    let gp = node(&mut g, "gap", Op::Pool(PoolOp::GlobalAveragePool), &[Some(a)], f16(&[2, 3, 1, 1]));
    g.add_output("gap", gp);
    let ints =
        |g: &mut Graph, name: &str, v: &[i64]| g.add_const(name, Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap());
    let (st, en, ax, sp) = (
        ints(&mut g, "st", &[-1, 1]),
        ints(&mut g, "en", &[i64::MIN, 8]),
        ints(&mut g, "ax", &[2, 3]),
        ints(&mut g, "sp", &[-2, 3]),
    );
    let sl = node(
        &mut g,
        "slice",
        Op::Layout(LayoutOp::Slice { attrs: None }),
        &[Some(x), Some(st), Some(en), Some(ax), Some(sp)],
        f16(&[2, 3, 5, 3]),
    );
    let pads = ints(&mut g, "pads", &[0, 0, 1, 2, 0, 0, 2, 1]);
    let pad = Op::Layout(LayoutOp::Pad { mode: PadMode::Reflect, pads: None, value: 0.0 });
    let pd = node(&mut g, "pad", pad, &[Some(sl), Some(pads)], f16(&[2, 3, 8, 6]));
    let split = Op::Layout(LayoutOp::Split { axis: 1, split: Some(vec![1, 2]) });
    let sid = g.add_node(
        "split",
        split,
        &[Some(pd)],
        vec![ValueInfo::tensor("s0", f16(&[2, 1, 8, 6])), ValueInfo::tensor("s1", f16(&[2, 2, 8, 6]))],
    );
    g.add_output("s0", Value { node: sid, slot: 0 });
    let shape = ints(&mut g, "shape", &[2, 2, 8, 6]);
    let s1 = Value { node: sid, slot: 1 };
    let ex = node(&mut g, "expand", Op::Layout(LayoutOp::Expand), &[Some(s1), Some(shape)], f16(&[2, 2, 8, 6]));
    let reps = ints(&mut g, "reps", &[1, 1, 1, 2]);
    let tl = node(&mut g, "tile", Op::Layout(LayoutOp::Tile), &[Some(ex), Some(reps)], f16(&[2, 2, 8, 12]));
    let scales = g.add_const("scales", Tensor::from_vec(vec![4], vec![1.0f32, 1.0, 2.0, 0.5]).unwrap());
    let resize = ResizeAttrs {
        mode: ResizeMode::Linear,
        coordinate_transformation_mode: CoordTransform::HalfPixel,
        nearest_mode: NearestMode::RoundPreferFloor,
        cubic_coeff_a: -0.75,
        exclude_outside: false,
        extrapolation_value: 0.0,
        antialias: false,
        axes: None,
        keep_aspect_ratio_policy: AspectRatioPolicy::Stretch,
        inputs: ResizeInputs::RoiScalesSizes,
    };
    let rs = node(
        &mut g,
        "resize",
        Op::Spatial(SpatialOp::Resize(resize)),
        &[Some(tl), None, Some(scales)],
        f16(&[2, 2, 16, 6]),
    );
    let f32v = node(
        &mut g,
        "cast",
        Op::Elementwise(ElementwiseOp::Cast { to: DType::F32, saturate: true }),
        &[Some(rs)],
        TypeInfo::known(DType::F32, &[2, 2, 16, 6]),
    );
    let cond = g.add_input("cond", TypeInfo::known(DType::Bool, &[16, 1]));
    let zero = g.add_const("zero", Tensor::scalar(0f32));
    let wh = node(
        &mut g,
        "where",
        Op::Elementwise(ElementwiseOp::Where),
        &[Some(cond), Some(f32v), Some(zero)],
        TypeInfo::known(DType::F32, &[2, 2, 16, 6]),
    );
    g.add_output("where", wh);
    g
}

#[test]
fn pooling_and_data_ops_are_kernels() {
    let p = plan(&data_ops()).unwrap();
    insta::assert_snapshot!("data_plan", p.to_string());
    let kernels: Vec<&str> = p
        .steps
        .iter()
        .filter_map(|s| if let StepKind::Kernel(k) = &s.kind { Some(k.kernel.as_str()) } else { None })
        .collect();
    assert_eq!(kernels.len(), p.steps.len());
    assert_eq!(
        kernels[..10],
        [
            "maxpool2d_f16",
            "avgpool2d_f16",
            "globalavgpool_f16",
            "permute_u16",
            "pad_u16",
            "copy_rows_u16",
            "copy_rows_u16",
            "permute_u16",
            "permute_u16",
            "resize_linear_f16"
        ]
    );
    assert!(kernels[10].starts_with("fused_") && kernels[11].starts_with("fused_"), "{kernels:?}");
    // The slice starts at the last row and walks back by two, every third column from 1.
    let StepKind::Kernel(k) = &p.steps[3].kind else { unreachable!() };
    assert_eq!(k.args[5], Arg::I64(8 * 9 + 1));
}

#[test]
fn matmul_broadcasts_batch_dims_and_vectors() {
    let mut g = Graph::new("bmm");
    let a = g.add_input("a", f16(&[1, 3, 5, 8]));
    let b = g.add_input("b", f16(&[2, 3, 8, 4]));
    let y = node(&mut g, "mm", Op::Linalg(LinalgOp::MatMul), &[Some(a), Some(b)], f16(&[2, 3, 5, 4]));
    g.add_output("y", y);
    let v = g.add_input("v", f16(&[4]));
    let yv = node(&mut g, "mv", Op::Linalg(LinalgOp::MatMul), &[Some(b), Some(v)], f16(&[2, 3, 8]));
    g.add_output("yv", yv);
    let p = plan(&g).unwrap();
    let StepKind::Kernel(k) = &p.steps[0].kind else { panic!("{p}") };
    assert_eq!(k.kernel, "permute_u16");
    let bc = p.buffers.iter().position(|b| b.name == "mm.a_broadcast").unwrap();
    assert_eq!(p.buffers[bc].shape, vec![2, 3, 5, 8]);
    let StepKind::Gemm(mm) = &p.steps[1].kind else { panic!("{p}") };
    assert_eq!((mm.a, mm.batch, mm.batch_strides, mm.m, mm.n, mm.k), (bc, 6, [40, 32, 20], 5, 4, 8));
    let StepKind::Gemm(mv) = &p.steps[2].kind else { panic!("{p}") };
    assert_eq!((mv.batch, mv.batch_strides, mv.m, mv.n, mv.k), (6, [32, 0, 8], 8, 1, 4));
}

#[test]
fn conv_transpose_and_max_pool_indices_are_direct_kernels() {
    let mut g = Graph::new("direct");
    let x = g.add_input("x", TypeInfo::known(DType::F32, &[1, 2, 4, 4]));
    let w = g.add_const("w", Tensor::from_vec(vec![2, 2, 1, 1], vec![1f32; 4]).unwrap());
    let ct = ConvTransposeAttrs {
        kernel_shape: vec![],
        strides: vec![],
        dilations: vec![],
        pads: vec![],
        output_padding: vec![],
        output_shape: None,
        auto_pad: AutoPad::NotSet,
        group: 1,
    };
    let t = node(
        &mut g,
        "deconv",
        Op::Linalg(LinalgOp::ConvTranspose(ct)),
        &[Some(x), Some(w)],
        TypeInfo::known(DType::F32, &[1, 2, 4, 4]),
    );
    g.add_output("t", t);
    let window = PoolWindow {
        kernel_shape: vec![2, 2],
        strides: vec![2, 2],
        pads: vec![0; 4],
        auto_pad: AutoPad::NotSet,
        dilations: vec![1, 1],
        ceil_mode: false,
    };
    let id = g.add_node(
        "mp",
        Op::Pool(PoolOp::MaxPool { window, column_major: false }),
        &[Some(x)],
        vec![
            ValueInfo::tensor("mp", TypeInfo::known(DType::F32, &[1, 2, 2, 2])),
            ValueInfo::tensor("mp_idx", TypeInfo::known(DType::I64, &[1, 2, 2, 2])),
        ],
    );
    g.add_output("mp_idx", Value { node: id, slot: 1 });
    let p = plan(&g).unwrap();
    let kernels: Vec<(&str, &[Arg])> = p
        .steps
        .iter()
        .map(|s| match &s.kind {
            StepKind::Kernel(k) => (k.kernel.as_str(), &k.args[..]),
            other => panic!("not a kernel: {other:?}"),
        })
        .collect();
    assert_eq!(kernels.len(), 2, "{p}");
    assert_eq!(kernels[0].0, "conv_transpose_f32");
    assert_eq!(kernels[1].0, "maxpool3d_f32");
    // MaxPool writes its values to a temp and its indices to the graph output.
    let idx = p.outputs[1];
    assert!(matches!(kernels[1].1[2], Arg::Buffer(b) if b == idx), "{p}");
}

#[test]
fn index_ops_check_indices_at_run_time_and_need_constant_counts() {
    use kiln_ir::ops::layout::ScatterReduction;
    // ScatterElements: a copy of the data, then one scatter launch with an error flag.
    let mut g = Graph::new("scatter");
    let x = g.add_input("x", TypeInfo::known(DType::F32, &[4, 3]));
    let i = g.add_input("i", TypeInfo::known(DType::I32, &[2, 3]));
    let u = g.add_input("u", TypeInfo::known(DType::F32, &[2, 3]));
    let op = Op::Layout(LayoutOp::ScatterElements { axis: 0, reduction: ScatterReduction::Add });
    let y = node(&mut g, "sc", op, &[Some(x), Some(i), Some(u)], TypeInfo::known(DType::F32, &[4, 3]));
    g.add_output("y", y);
    let p = plan(&g).unwrap();
    let kernels: Vec<&str> = p
        .steps
        .iter()
        .filter_map(|s| if let StepKind::Kernel(k) = &s.kind { Some(k.kernel.as_str()) } else { None })
        .collect();
    // The i32 indices are cast to i64 by a generated kernel first.
    assert_eq!(kernels.len(), 3, "{p}");
    assert_eq!(&kernels[1..], ["permute_u32", "scatter_elements_f32"], "{p}");
    assert_eq!(p.error_flags.len(), 1);
    assert_eq!(p.error_flags[0].1, "ScatterElements sc: an index is outside [-4, 4)");

    // TopK's k decides the output's shape, so one computed at run time is refused.
    let mut g = Graph::new("topk");
    let x = g.add_input("x", TypeInfo::known(DType::F32, &[2, 5]));
    let k = g.add_input("k", TypeInfo::known(DType::I64, &[1]));
    let op = Op::Reduce(ReduceOp::TopK { axis: -1, largest: true, sorted: true, k: None });
    let y = node(&mut g, "top", op, &[Some(x), Some(k)], TypeInfo::known(DType::F32, &[2, 3]));
    g.add_output("y", y);
    let err = plan(&g).unwrap_err().to_string();
    assert!(err.contains("top (TopK): input 1 is computed at run time; the kernel needs it constant"), "{err}");
}

/// A quantized convolution as the `qdq` fusion rules leave it: ConvInteger with its
/// dequantization, bias and ReLU in the epilogue. The integer kernel writes an i32
/// accumulator, and a generated kernel applies the epilogue (compiled where NVRTC is present).
#[test]
fn integer_convolution_epilogues_accumulate_in_i32_then_run_the_epilogue() {
    let mut g = Graph::new("qconv");
    // Five input channels: neither a multiple of 16 nor narrow (at most 4), so not the INT8
    // implicit GEMM.
    let x = g.add_input("xq", TypeInfo::known(DType::I8, &[1, 5, 5, 5]));
    let wv: Vec<i8> = (0..6 * 5 * 9).map(|i| (i % 11) as i8 - 5).collect();
    let w = g.add_const("wq", Tensor::from_vec(vec![6, 5, 3, 3], wv).unwrap());
    let scale = g.add_const("scale", Tensor::from_vec(vec![1, 6, 1, 1], vec![0.01f32; 6]).unwrap());
    let bias = g.add_const("bias", Tensor::from_vec(vec![1, 6, 1, 1], vec![0.5f32; 6]).unwrap());
    let expr = Expr {
        nodes: vec![
            ExprNode::Input(0),
            op(ElementwiseOp::Cast { to: DType::F32, saturate: false }, &[0]),
            ExprNode::Input(1),
            op(ElementwiseOp::Binary(BinaryOp::Mul), &[1, 2]),
            ExprNode::Input(2),
            op(ElementwiseOp::Binary(BinaryOp::Add), &[3, 4]),
            op(ElementwiseOp::Unary(UnaryOp::Relu), &[5]),
        ],
    };
    let base = LinalgOp::ConvInteger(conv_attrs(&[1, 1, 1, 1], AutoPad::NotSet, 1));
    // ConvInteger's inputs: x, w and the absent zero points (symmetric).
    let ep = Op::Fused(FusedOp::Epilogue { base, base_inputs: 4, expr });
    let ins = [Some(x), Some(w), None, None, Some(scale), Some(bias)];
    let y = node(&mut g, "qconv", ep, &ins, TypeInfo::known(DType::F32, &[1, 6, 5, 5]));
    g.add_output("y", y);
    let p = plan(&g).unwrap();
    let kernels: Vec<(&str, &[Arg])> = p
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Kernel(k) => Some((k.kernel.as_str(), k.args.as_slice())),
            _ => None,
        })
        .collect();
    assert_eq!(kernels.len(), 2, "{p}");
    assert_eq!(kernels[0].0, "conv_integer_tc_i8_i8");
    let acc = p.buffers.iter().position(|b| b.name == "qconv.acc").unwrap();
    assert_eq!((p.buffers[acc].dtype, p.buffers[acc].shape.clone()), (DType::I32, vec![1, 6, 5, 5]));
    assert!(kernels[0].1.contains(&Arg::Buffer(acc)), "the integer kernel writes the accumulator");
    assert!(kernels[1].0.starts_with("epilogue"), "{}", kernels[1].0);
    let nv = match Nvrtc::locate() {
        Ok(n) => n.with_cache_dir(None),
        Err(e) if std::env::var_os("CI").is_some_and(|v| v == "true") => panic!("CI=true and {e}"),
        Err(e) => return eprintln!("skipped: {e}"),
    };
    for k in &p.generated {
        let c = nv.compile(&k.name, &k.source, "sm_90").unwrap_or_else(|e| panic!("{e}"));
        assert!(c.has_kernel(&k.name));
    }
}

/// A graph of one ConvInteger (or, with `quantized`, QLinearConv to i8) of an input `x` of
/// `xt` by a constant weight of `wt` (or an input where `w_const` is false), with the given
/// constant zero points (x's, w's) and `group` groups, pads 1 on both spatial dims.
fn integer_conv(
    xt: DType,
    wt: DType,
    x_shape: &[usize],
    w_shape: &[usize],
    w_const: bool,
    zero_points: Option<[Tensor; 2]>,
    group: usize,
    quantized: bool,
) -> Graph {
    let mut g = Graph::new("convi");
    let x = g.add_input("x", TypeInfo::known(xt, x_shape));
    let len: usize = w_shape.iter().product();
    let w = if w_const {
        let t = Tensor::from_vec(w_shape.to_vec(), (0..len).map(|i| (i % 11) as f32 - 5.0).collect::<Vec<f32>>());
        g.add_const("w", t.unwrap().cast(wt))
    } else {
        g.add_input("w", TypeInfo::known(wt, w_shape))
    };
    let [x_zp, w_zp] = match zero_points {
        Some([zx, zw]) => [Some(g.add_const("x_zp", zx)), Some(g.add_const("w_zp", zw))],
        None => [None, None],
    };
    let pads = vec![1; 2 * (x_shape.len() - 2)];
    let attrs = conv_attrs(&pads, AutoPad::NotSet, group);
    let mut out = vec![x_shape[0], w_shape[0]];
    out.extend(&x_shape[2..]);
    let y = if quantized {
        let scale = |g: &mut Graph, name: &str| Some(g.add_const(name, Tensor::scalar(0.5f32)));
        let (xs, ws, ys) = (scale(&mut g, "xs"), scale(&mut g, "ws"), scale(&mut g, "ys"));
        let y_zp = Some(g.add_const("y_zp", Tensor::scalar(0i8)));
        let ins = [Some(x), xs, x_zp, Some(w), ws, w_zp, ys, y_zp];
        node(&mut g, "conv", Op::Linalg(LinalgOp::QLinearConv(attrs)), &ins, TypeInfo::known(DType::I8, &out))
    } else {
        let ins = [Some(x), Some(w), x_zp, w_zp];
        node(&mut g, "conv", Op::Linalg(LinalgOp::ConvInteger(attrs)), &ins, TypeInfo::known(DType::I32, &out))
    };
    g.add_output("y", y);
    g
}

#[test]
fn int8_convolutions_take_the_tensor_core_kernel_where_they_can() {
    let kernel = |g: &Graph| {
        let p = plan(g).unwrap();
        let (gemms, kernels) = gemms_and_kernels(&p);
        assert!(gemms.is_empty(), "{p}");
        let [k] = kernels[..] else { panic!("{p}") };
        k.to_string()
    };
    let (x, w) = (&[2, 20, 9, 9][..], &[70, 20, 3, 3][..]);
    let zeros = || Some([Tensor::scalar(0i8), Tensor::from_vec(vec![70], vec![0i8; 70]).unwrap()]);
    // i8 by i8, one group, zero points absent or constant zeros, the weight constant or not,
    // 2-D and 1-D: the tensor cores, with the arguments the kernel reads.
    for zero_points in [None, zeros()] {
        for w_const in [true, false] {
            let g = integer_conv(DType::I8, DType::I8, x, w, w_const, zero_points.clone(), 1, false);
            assert_eq!(kernel(&g), "conv_integer_tc_i8_i8");
            let g = integer_conv(DType::I8, DType::I8, x, w, w_const, zero_points.clone(), 1, true);
            assert_eq!(kernel(&g), "qlinear_conv_tc_i8_i8_i8");
        }
    }
    let g = integer_conv(DType::I8, DType::I8, &[2, 20, 50], &[70, 20, 3], true, None, 1, false);
    assert_eq!(kernel(&g), "conv_integer_tc_i8_i8");
    let p = plan(&integer_conv(DType::I8, DType::I8, x, w, true, None, 1, false)).unwrap();
    let StepKind::Kernel(k) = &p.steps.iter().find(|s| matches!(s.kind, StepKind::Kernel(_))).unwrap().kind else {
        unreachable!()
    };
    // 2 x 9 x 9 = 162 positions in 2 blocks of 128, 70 channels in 2 of 64.
    assert_eq!((k.config.grid, k.config.block), ((2, 2, 1), (256, 1, 1)), "{p}");
    assert_eq!(k.args.len(), 4, "x, w, y and the shape: {p}");
    assert!(matches!(k.args[3], Arg::Struct(_)), "{p}");
    // The rest keeps the direct kernels: u8 on either side, groups, a zero point that is not
    // zero, or one computed at run time.
    assert_eq!(kernel(&integer_conv(DType::U8, DType::I8, x, w, true, None, 1, false)), "conv_integer_u8_i8");
    assert_eq!(kernel(&integer_conv(DType::I8, DType::U8, x, w, true, None, 1, false)), "conv_integer_i8_u8");
    let grouped = integer_conv(DType::I8, DType::I8, x, &[70, 10, 3, 3], true, None, 2, false);
    assert_eq!(kernel(&grouped), "conv_integer_i8_i8");
    let three = Some([Tensor::scalar(0i8), Tensor::scalar(3i8)]);
    assert_eq!(kernel(&integer_conv(DType::I8, DType::I8, x, w, true, three.clone(), 1, false)), "conv_integer_i8_i8");
    assert_eq!(kernel(&integer_conv(DType::I8, DType::I8, x, w, true, three, 1, true)), "qlinear_conv_i8_i8_i8");
    let mut g = Graph::new("convi");
    let xv = g.add_input("x", TypeInfo::known(DType::I8, x));
    let wv = g.add_const("w", Tensor::from_vec(w.to_vec(), vec![1i8; 70 * 180]).unwrap());
    let zp = g.add_input("x_zp", TypeInfo::known(DType::I8, &[]));
    let op = Op::Linalg(LinalgOp::ConvInteger(conv_attrs(&[1, 1, 1, 1], AutoPad::NotSet, 1)));
    let y = node(&mut g, "conv", op, &[Some(xv), Some(wv), Some(zp)], TypeInfo::known(DType::I32, &[2, 70, 9, 9]));
    g.add_output("y", y);
    assert_eq!(kernel(&g), "conv_integer_i8_i8");
}

/// A graph of one MatMulInteger of input `a` (`[.., m, k]` of `at`) by `b` (a constant
/// `[k, n]` of `bt` when `b_const`, else an input of shape `b_shape`), with the given constant
/// zero points.
fn matmul_integer(
    at: DType,
    a_shape: &[usize],
    bt: DType,
    b_shape: &[usize],
    b_const: bool,
    zero_points: Option<[Tensor; 2]>,
) -> Graph {
    let mut g = Graph::new("mmi");
    let a = g.add_input("a", TypeInfo::known(at, a_shape));
    let len: usize = b_shape.iter().product();
    let b = if b_const {
        let t = Tensor::from_vec(b_shape.to_vec(), (0..len).map(|i| (i % 11) as f32 - 5.0).collect::<Vec<f32>>());
        g.add_const("w", t.unwrap().cast(bt))
    } else {
        g.add_input("b", TypeInfo::known(bt, b_shape))
    };
    let mut ins = vec![Some(a), Some(b)];
    if let Some([za, zb]) = zero_points {
        ins.extend([Some(g.add_const("a_zp", za)), Some(g.add_const("b_zp", zb))]);
    }
    let (m, n) = (a_shape[a_shape.len() - 2], b_shape[b_shape.len() - 1]);
    let batch =
        if a_shape.len() > b_shape.len() { &a_shape[..a_shape.len() - 2] } else { &b_shape[..b_shape.len() - 2] };
    let mut out = batch.to_vec();
    out.extend([m, n]);
    let y = node(&mut g, "mm", Op::Linalg(LinalgOp::MatMulInteger), &ins, TypeInfo::known(DType::I32, &out));
    g.add_output("y", y);
    g
}

/// The GEMM steps and kernel names of a plan.
fn gemms_and_kernels(p: &Plan) -> (Vec<&kiln_cuda::plan::GemmStep>, Vec<&str>) {
    let gemms = p.steps.iter().filter_map(|s| if let StepKind::Gemm(g) = &s.kind { Some(g) } else { None }).collect();
    let kernels = p
        .steps
        .iter()
        .filter_map(|s| if let StepKind::Kernel(k) = &s.kind { Some(k.kernel.as_str()) } else { None })
        .collect();
    (gemms, kernels)
}

#[test]
fn int8_matmuls_with_dims_of_four_run_on_cublaslt_int8() {
    let zeros = || Some([Tensor::scalar(0i8), Tensor::from_vec(vec![16], vec![0i8; 16]).unwrap()]);
    for zero_points in [None, zeros()] {
        // A linear layer over [batch, seq, hidden] with a constant weight: one GEMM on i8 in,
        // i32 out, of the weight transposed once at plan time (in place: the GEMM is its only
        // reader); batches of A packed, the weight shared, so the runtime folds them.
        let g = matmul_integer(DType::I8, &[2, 50, 32], DType::I8, &[32, 16], true, zero_points);
        let p = plan(&g).unwrap();
        let (gemms, kernels) = gemms_and_kernels(&p);
        assert!(kernels.is_empty(), "{p}");
        let [gm] = gemms[..] else { panic!("{p}") };
        assert_eq!((gm.dtype, gm.out_dtype, gm.trans_a, gm.trans_b), (DType::I8, DType::I32, false, true));
        assert_eq!((gm.m, gm.n, gm.k, gm.batch, gm.batch_strides), (50, 16, 32, 2, [50 * 32, 0, 50 * 16]));
        assert_eq!((gm.alpha, gm.beta, gm.c, &gm.epilogue), (1.0, 0.0, None, &GemmEpilogue::None));
        let w = &p.buffers[gm.b];
        assert_eq!((w.name.as_str(), w.dtype, w.shape.as_slice()), ("w", DType::I8, &[16, 32][..]));
        let BufferKind::Const(t) = &w.kind else { panic!("{p}") };
        let v = t.to_f64_vec();
        // w[i][j] = (i * 16 + j) % 11 - 5, stored at [j][i].
        for (i, j) in [(0, 0), (3, 7), (31, 15)] {
            assert_eq!(v[j * 32 + i], ((i * 16 + j) % 11) as f64 - 5.0, "w[{i}][{j}]");
        }
        assert!(p.to_string().contains("gemm i8->i32"), "{p}");
    }
    // Two computed operands (attention's products): B is transposed into a temp first.
    let g = matmul_integer(DType::I8, &[2, 3, 5, 8], DType::I8, &[2, 3, 8, 4], false, None);
    let p = plan(&g).unwrap();
    let (gemms, kernels) = gemms_and_kernels(&p);
    assert_eq!(kernels, ["transpose_narrow_u8"], "{p}");
    let [gm] = gemms[..] else { panic!("{p}") };
    assert_eq!((gm.m, gm.n, gm.k, gm.batch, gm.batch_strides), (5, 4, 8, 6, [40, 32, 20]));
    assert_eq!(p.buffers[gm.b].shape, [2, 3, 4, 8]);
}

#[test]
fn int8_matmuls_cublaslt_cannot_run_keep_the_direct_kernel() {
    let direct = |g: &Graph, kernel: &str| {
        let p = plan(g).unwrap();
        let (gemms, kernels) = gemms_and_kernels(&p);
        assert!(gemms.is_empty(), "{p}");
        assert_eq!(kernels, [kernel], "{p}");
    };
    // u8 operands (the IMMA kernels take i8 only).
    direct(&matmul_integer(DType::U8, &[50, 32], DType::I8, &[32, 16], true, None), "matmul_integer_u8_i8");
    direct(&matmul_integer(DType::I8, &[50, 32], DType::U8, &[32, 16], true, None), "matmul_integer_i8_u8");
    // n or k not a multiple of 4 (a classifier of 10 classes).
    direct(&matmul_integer(DType::I8, &[50, 64], DType::I8, &[64, 10], true, None), "matmul_integer_i8_i8");
    direct(&matmul_integer(DType::I8, &[50, 30], DType::I8, &[30, 16], true, None), "matmul_integer_i8_i8");
    // A zero point that is not zero.
    let zp = Some([Tensor::scalar(0i8), Tensor::scalar(3i8)]);
    direct(&matmul_integer(DType::I8, &[50, 32], DType::I8, &[32, 16], true, zp), "matmul_integer_i8_i8");
    // A B-vector: n is 1.
    let g = matmul_integer(DType::I8, &[3, 50, 32], DType::I8, &[32, 1], true, None);
    direct(&g, "matmul_integer_i8_i8");
}

/// A MatMulInteger epilogue node over an i8 `[4, k]` input and a constant `[k, 8]` weight
/// that a plain MatMulInteger reads too.
fn integer_matmul_epilogue(k: usize) -> Graph {
    let mut g = Graph::new("qlinear");
    let x = g.add_input("x", TypeInfo::known(DType::I8, &[4, k]));
    let w = g.add_const("w", Tensor::from_vec(vec![k, 8], vec![1i8; k * 8]).unwrap());
    let scale = g.add_const("scale", Tensor::from_vec(vec![8], vec![0.5f32; 8]).unwrap());
    let bias = g.add_const("bias", Tensor::from_vec(vec![8], vec![1.0f32; 8]).unwrap());
    let dequant = Expr {
        nodes: vec![
            ExprNode::Input(0),
            op(ElementwiseOp::Cast { to: DType::F32, saturate: true }, &[0]),
            ExprNode::Input(1),
            op(ElementwiseOp::Binary(BinaryOp::Mul), &[1, 2]),
            ExprNode::Input(2),
            op(ElementwiseOp::Binary(BinaryOp::Add), &[3, 4]),
        ],
    };
    let ep = Op::Fused(FusedOp::Epilogue { base: LinalgOp::MatMulInteger, base_inputs: 4, expr: dequant });
    let ins = [Some(x), Some(w), None, None, Some(scale), Some(bias)];
    let y = node(&mut g, "fc", ep, &ins, TypeInfo::known(DType::F32, &[4, 8]));
    g.add_output("y", y);
    let y2 = node(
        &mut g,
        "again",
        Op::Linalg(LinalgOp::MatMulInteger),
        &[Some(x), Some(w)],
        TypeInfo::known(DType::I32, &[4, 8]),
    );
    g.add_output("y2", y2);
    g
}

#[test]
fn integer_matmul_epilogues_accumulate_in_i32_then_dequantize() {
    // k = 36 is a multiple of 4 (cuBLASLt) but not of 16 (the implicit GEMM): the GEMM into an
    // i32 accumulator, then cast, scale and bias in one generated kernel. The weight has a
    // second reader, so the GEMM gets a transposed copy.
    let p = plan(&integer_matmul_epilogue(36)).unwrap();
    let (gemms, kernels) = gemms_and_kernels(&p);
    assert_eq!(gemms.len(), 2, "{p}");
    let acc = &p.buffers[gemms[0].d];
    assert_eq!((acc.name.as_str(), acc.dtype), ("fc.acc", DType::I32));
    assert_eq!(p.buffers[gemms[0].b].name, "w.nk", "{p}");
    assert_eq!(gemms[1].b, gemms[0].b, "one transposed copy for both readers: {p}");
    assert_eq!(kernels.len(), 1, "{p}");
    assert!(kernels[0].starts_with("epilogue_"), "{p}");
}

#[test]
fn integer_matmul_epilogues_run_the_implicit_gemm() {
    // k = 32: one INT8 implicit-GEMM kernel with the epilogue in registers, no accumulator; it
    // reads the same transposed weight as the other reader's cuBLASLt GEMM.
    let p = plan(&integer_matmul_epilogue(32)).unwrap();
    let (gemms, kernels) = gemms_and_kernels(&p);
    assert_eq!((gemms.len(), kernels.len()), (1, 1), "{p}");
    // A matrix product: the plain-product loader ("d").
    assert!(kernels[0].starts_with("igemm64w32d_") && kernels[0].ends_with("_f32"), "{p}");
    assert!(p.buffers.iter().all(|b| !b.name.ends_with(".acc")), "{p}");
    assert_eq!(p.buffers[gemms[0].b].name, "w.nk", "{p}");
    let nv = match Nvrtc::locate() {
        Ok(n) => n.with_cache_dir(None),
        Err(e) if std::env::var_os("CI").is_some_and(|v| v == "true") => panic!("CI=true and {e}"),
        Err(e) => return eprintln!("skipped: {e}"),
    };
    for k in &p.generated {
        let c = nv.compile(&k.name, &k.source, "sm_80").unwrap_or_else(|e| panic!("{e}"));
        assert!(c.has_kernel(&k.name));
    }
}

/// A LayerNorm whose output is quantized for the next product and read as it is by a residual
/// (a BERT layer's, in INT8): one kernel writes both, the quantize runs no step of its own. A
/// quantize clipping to another range is not taken.
#[test]
fn layernorms_write_the_quantized_copy_their_readers_need() {
    let graph = |lo: f32| {
        let mut g = Graph::new("ln_quantize");
        let x = g.add_input("x", f16(&[4, 64]));
        let (s, b) = (konst(&mut g, "ln_scale", &[64]), konst(&mut g, "ln_bias", &[64]));
        let ln = Op::Norm(NormOp::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: 1 });
        let h = node(&mut g, "ln", ln, &[Some(x), Some(s), Some(b)], f16(&[4, 64]));
        let quantize = Expr {
            nodes: vec![
                ExprNode::Input(0),
                op(ElementwiseOp::Cast { to: DType::F32, saturate: true }, &[0]),
                ExprNode::Scalar { value: 0.05, dtype: DType::F32 },
                op(ElementwiseOp::Binary(BinaryOp::Div), &[1, 2]),
                op(ElementwiseOp::Unary(UnaryOp::Round), &[3]),
                op(ElementwiseOp::Clip { min: Some(lo), max: Some(127.0) }, &[4]),
                op(ElementwiseOp::Cast { to: DType::I8, saturate: true }, &[5]),
            ],
        };
        let q = node(
            &mut g,
            "q",
            Op::Fused(FusedOp::Elementwise(quantize)),
            &[Some(h)],
            TypeInfo::known(DType::I8, &[4, 64]),
        );
        g.add_output("q", q);
        g.add_output("h", h);
        g
    };
    let kernels = |p: &Plan| -> Vec<String> {
        p.steps
            .iter()
            .filter_map(|s| if let StepKind::Kernel(k) = &s.kind { Some(k.kernel.clone()) } else { None })
            .collect()
    };
    let p = plan(&graph(-128.0)).unwrap();
    assert_eq!(kernels(&p), ["layernorm_warp_q_f16"], "{p}");
    let StepKind::Kernel(k) = &p.steps[0].kind else { unreachable!() };
    let q = p.buffers.iter().position(|b| b.name == "q").unwrap();
    assert!(k.args.iter().any(|a| matches!(a, Arg::Buffer(b) if *b == q)), "{p}");
    assert!(k.args.iter().any(|a| matches!(a, Arg::F32(c) if *c == 0.05)), "{p}");
    let other = plan(&graph(-127.0)).unwrap();
    assert_eq!(kernels(&other).len(), 2, "{other}");
    assert_eq!(kernels(&other)[0], "layernorm_warp_f16");
}
