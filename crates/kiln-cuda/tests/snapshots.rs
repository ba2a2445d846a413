//! Golden files of the CUDA source NVRTC is given: every kernel family, and the generated code
//! of a few expressions. Bless changes with `INSTA_UPDATE=always` or `cargo insta review`
//! after reading the diff.

use kiln_cuda::codegen::{
    elementwise_kernel, epilogue_kernel, igemm_kernel, ElementwiseKernel, EpiRead, IgLoad, IgemmBlock,
};
use kiln_cuda::kernels::KernelFamily;
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
use kiln_ir::ops::{ElementwiseOp, Expr, ExprNode};
use kiln_ir::DType;

fn op(op: ElementwiseOp, args: &[usize]) -> ExprNode {
    ExprNode::Op { op, args: args.to_vec() }
}

/// The one place that renders a generated kernel for a snapshot.
fn render(k: &ElementwiseKernel) -> String {
    format!("// kernel {} inputs {:?} output {} vec {}\n{}", k.name, k.inputs, k.output, k.vec, k.generated)
}

#[test]
fn family_sources() {
    for fam in KernelFamily::ALL {
        let header =
            format!("// family {}: {} kernels\n// {}\n", fam.name(), fam.kernels().len(), fam.kernels().join(" "));
        insta::assert_snapshot!(format!("family_{}", fam.name()), format!("{header}{}", fam.source()));
    }
}

fn silu() -> Expr {
    Expr {
        nodes: vec![
            ExprNode::Input(0),
            op(ElementwiseOp::Unary(UnaryOp::Sigmoid), &[0]),
            op(ElementwiseOp::Binary(BinaryOp::Mul), &[0, 1]),
        ],
    }
}

#[test]
fn silu_f32_and_f16() {
    insta::assert_snapshot!("silu_f32", render(&elementwise_kernel(&silu(), &[DType::F32]).unwrap()));
    insta::assert_snapshot!("silu_f16", render(&elementwise_kernel(&silu(), &[DType::F16]).unwrap()));
}

#[test]
fn gelu_erf_form() {
    // 0.5 * x * (1 + erf(x / sqrt(2))) as the ONNX exporter writes it, before any rewrite.
    let e = Expr {
        nodes: vec![
            ExprNode::Input(0),
            ExprNode::Scalar { value: std::f64::consts::SQRT_2, dtype: DType::F16 },
            op(ElementwiseOp::Binary(BinaryOp::Div), &[0, 1]),
            op(ElementwiseOp::Unary(UnaryOp::Erf), &[2]),
            ExprNode::Scalar { value: 1.0, dtype: DType::F16 },
            op(ElementwiseOp::Binary(BinaryOp::Add), &[3, 4]),
            op(ElementwiseOp::Binary(BinaryOp::Mul), &[0, 5]),
            ExprNode::Scalar { value: 0.5, dtype: DType::F16 },
            op(ElementwiseOp::Binary(BinaryOp::Mul), &[6, 7]),
        ],
    };
    insta::assert_snapshot!("gelu_erf_f16", render(&elementwise_kernel(&e, &[DType::F16]).unwrap()));
    let g = Expr::op(ElementwiseOp::Unary(UnaryOp::Gelu { tanh: false }), 1);
    insta::assert_snapshot!("gelu_op_f32", render(&elementwise_kernel(&g, &[DType::F32]).unwrap()));
}

#[test]
fn bias_residual_relu_epilogue() {
    // relu(acc + bias) + residual, with acc in f32 from the GEMM and f16 bias and residual.
    let e = Expr {
        nodes: vec![
            ExprNode::Input(0),
            ExprNode::Input(1),
            op(ElementwiseOp::Cast { to: DType::F16, saturate: true }, &[0]),
            op(ElementwiseOp::Binary(BinaryOp::Add), &[2, 1]),
            op(ElementwiseOp::Unary(UnaryOp::Relu), &[3]),
            ExprNode::Input(2),
            op(ElementwiseOp::Binary(BinaryOp::Add), &[4, 5]),
        ],
    };
    let k = epilogue_kernel(&e, DType::F32, &[DType::F16, DType::F16]).unwrap();
    assert!(k.name.starts_with("epilogue_") && k.name.ends_with("_f16"), "{}", k.name);
    insta::assert_snapshot!("bias_residual_relu_epilogue", render(&k));
}

#[test]
fn int8_implicit_gemm() {
    // An INT8 convolution's epilogue: dequantize, add a per-channel bias in f16, ReLU, and
    // quantize for the next layer (scale 0.05) to i8.
    let e = Expr {
        nodes: vec![
            ExprNode::Input(0),
            op(ElementwiseOp::Cast { to: DType::F32, saturate: false }, &[0]),
            ExprNode::Input(1),
            op(ElementwiseOp::Binary(BinaryOp::Mul), &[1, 2]),
            ExprNode::Input(2),
            op(ElementwiseOp::Cast { to: DType::F32, saturate: false }, &[4]),
            op(ElementwiseOp::Binary(BinaryOp::Add), &[3, 5]),
            op(ElementwiseOp::Unary(UnaryOp::Relu), &[6]),
            ExprNode::Scalar { value: 0.05, dtype: DType::F32 },
            op(ElementwiseOp::Binary(BinaryOp::Div), &[7, 8]),
            op(ElementwiseOp::Unary(UnaryOp::Round), &[9]),
            op(ElementwiseOp::Clip { min: Some(-128.0), max: Some(127.0) }, &[10]),
            op(ElementwiseOp::Cast { to: DType::I8, saturate: false }, &[11]),
        ],
    };
    let k = igemm_kernel(
        &e,
        &[(DType::F32, EpiRead::Channels), (DType::F16, EpiRead::Dense)],
        IgemmBlock::new(128, 64, IgLoad::Conv),
        true,
    )
    .unwrap();
    assert!(k.name.starts_with("igemm128w64_") && k.name.ends_with("_i8"), "{}", k.name);
    insta::assert_snapshot!("int8_implicit_gemm", render(&k));
    // The template as NVRTC gets it, once.
    insta::assert_snapshot!("int8_implicit_gemm_source", k.source);
}
