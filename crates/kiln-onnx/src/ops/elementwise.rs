//! Importers for pointwise ops: math, comparisons, logic, activations, casts.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp, VariadicOp};
use kiln_ir::ops::ElementwiseOp;
use kiln_ir::Op;

pub(super) fn register(reg: &mut Registry) {
    reg.insert("Abs", |_| Ok(unary(UnaryOp::Abs)));
    reg.insert("Neg", |_| Ok(unary(UnaryOp::Neg)));
    reg.insert("Exp", |_| Ok(unary(UnaryOp::Exp)));
    reg.insert("Log", |_| Ok(unary(UnaryOp::Log)));
    reg.insert("Sqrt", |_| Ok(unary(UnaryOp::Sqrt)));
    reg.insert("Reciprocal", |_| Ok(unary(UnaryOp::Reciprocal)));
    reg.insert("Floor", |_| Ok(unary(UnaryOp::Floor)));
    reg.insert("Ceil", |_| Ok(unary(UnaryOp::Ceil)));
    reg.insert("Round", |_| Ok(unary(UnaryOp::Round)));
    reg.insert("Sign", |_| Ok(unary(UnaryOp::Sign)));
    reg.insert("Erf", |_| Ok(unary(UnaryOp::Erf)));
    reg.insert("Sin", |_| Ok(unary(UnaryOp::Sin)));
    reg.insert("Cos", |_| Ok(unary(UnaryOp::Cos)));
    reg.insert("Tan", |_| Ok(unary(UnaryOp::Tan)));
    reg.insert("Asin", |_| Ok(unary(UnaryOp::Asin)));
    reg.insert("Acos", |_| Ok(unary(UnaryOp::Acos)));
    reg.insert("Atan", |_| Ok(unary(UnaryOp::Atan)));
    reg.insert("Sinh", |_| Ok(unary(UnaryOp::Sinh)));
    reg.insert("Cosh", |_| Ok(unary(UnaryOp::Cosh)));
    reg.insert("Asinh", |_| Ok(unary(UnaryOp::Asinh)));
    reg.insert("Acosh", |_| Ok(unary(UnaryOp::Acosh)));
    reg.insert("Atanh", |_| Ok(unary(UnaryOp::Atanh)));
    reg.insert("Tanh", |_| Ok(unary(UnaryOp::Tanh)));
    reg.insert("Not", |_| Ok(unary(UnaryOp::Not)));
    reg.insert("BitwiseNot", |_| Ok(unary(UnaryOp::BitwiseNot)));
    reg.insert("IsNaN", |_| Ok(unary(UnaryOp::IsNaN)));
    reg.insert("IsInf", is_inf);
    reg.insert("Relu", |_| Ok(unary(UnaryOp::Relu)));
    reg.insert("LeakyRelu", |cx| Ok(unary(UnaryOp::LeakyRelu { alpha: cx.f32_or("alpha", 0.01)? })));
    reg.insert("Elu", |cx| Ok(unary(UnaryOp::Elu { alpha: cx.f32_or("alpha", 1.0)? })));
    reg.insert("Selu", selu);
    reg.insert("Celu", |cx| Ok(unary(UnaryOp::Celu { alpha: cx.f32_or("alpha", 1.0)? })));
    reg.insert("Sigmoid", |_| Ok(unary(UnaryOp::Sigmoid)));
    reg.insert("HardSigmoid", hard_sigmoid);
    reg.insert("HardSwish", |_| Ok(unary(UnaryOp::HardSwish)));
    reg.insert("Softplus", |_| Ok(unary(UnaryOp::Softplus)));
    reg.insert("Softsign", |_| Ok(unary(UnaryOp::Softsign)));
    reg.insert("ThresholdedRelu", |cx| Ok(unary(UnaryOp::ThresholdedRelu { alpha: cx.f32_or("alpha", 1.0)? })));
    reg.insert("Gelu", gelu);
    reg.insert("Mish", |_| Ok(unary(UnaryOp::Mish)));
    reg.insert("Shrink", shrink);
    reg.insert("Swish", |cx| Ok(unary(UnaryOp::Swish { alpha: cx.f32_or("alpha", 1.0)? })));
    reg.insert("Add", |cx| arith(cx, BinaryOp::Add));
    reg.insert("Sub", |cx| arith(cx, BinaryOp::Sub));
    reg.insert("Mul", |cx| arith(cx, BinaryOp::Mul));
    reg.insert("Div", |cx| arith(cx, BinaryOp::Div));
    reg.insert("Pow", |cx| arith(cx, BinaryOp::Pow));
    reg.insert("Mod", |cx| Ok(binary(BinaryOp::Mod { fmod: cx.bool_or("fmod", false)? })));
    reg.insert("BitShift", bit_shift);
    reg.insert("BitwiseAnd", |_| Ok(binary(BinaryOp::BitwiseAnd)));
    reg.insert("BitwiseOr", |_| Ok(binary(BinaryOp::BitwiseOr)));
    reg.insert("BitwiseXor", |_| Ok(binary(BinaryOp::BitwiseXor)));
    reg.insert("And", |cx| arith(cx, BinaryOp::And));
    reg.insert("Or", |cx| arith(cx, BinaryOp::Or));
    reg.insert("Xor", |cx| arith(cx, BinaryOp::Xor));
    reg.insert("Equal", |cx| arith(cx, BinaryOp::Equal));
    reg.insert("Less", |cx| arith(cx, BinaryOp::Less));
    reg.insert("LessOrEqual", |_| Ok(binary(BinaryOp::LessOrEqual)));
    reg.insert("Greater", |cx| arith(cx, BinaryOp::Greater));
    reg.insert("GreaterOrEqual", |_| Ok(binary(BinaryOp::GreaterOrEqual)));
    reg.insert("PRelu", prelu);
    reg.insert("Max", |_| Ok(variadic(VariadicOp::Max)));
    reg.insert("Min", |_| Ok(variadic(VariadicOp::Min)));
    reg.insert("Sum", |_| Ok(variadic(VariadicOp::Sum)));
    reg.insert("Mean", |_| Ok(variadic(VariadicOp::Mean)));
    reg.insert("Where", |_| Ok(Op::Elementwise(ElementwiseOp::Where)));
    reg.insert("Clip", clip);
    reg.insert("Cast", cast);
    reg.insert("CastLike", cast_like);
}

fn unary(u: UnaryOp) -> Op {
    Op::Elementwise(ElementwiseOp::Unary(u))
}

fn binary(b: BinaryOp) -> Op {
    Op::Elementwise(ElementwiseOp::Binary(b))
}

fn variadic(v: VariadicOp) -> Op {
    Op::Elementwise(ElementwiseOp::Variadic(v))
}

/// Binary ops that had explicit broadcasting before opset 7: `broadcast = 1` with an `axis`
/// aligns the second input at that axis instead of at the trailing dims, which numpy
/// broadcasting does not express.
fn arith(cx: &NodeCtx<'_>, b: BinaryOp) -> Result<Op, ImportError> {
    if cx.opset() < 7 && cx.i64_or("broadcast", 0)? == 1 {
        if let Some(axis) = cx.get_i64("axis")? {
            return Ok(Op::Elementwise(ElementwiseOp::LegacyBinary { op: b, axis }));
        }
    }
    Ok(binary(b))
}

/// Before opset 7 the slope lines up with the channel axis (1), not the trailing dims.
fn prelu(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    if cx.opset() < 7 {
        return Ok(Op::Elementwise(ElementwiseOp::LegacyBinary { op: BinaryOp::PRelu, axis: 1 }));
    }
    Ok(binary(BinaryOp::PRelu))
}

fn is_inf(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(unary(UnaryOp::IsInf {
        detect_negative: cx.bool_or("detect_negative", true)?,
        detect_positive: cx.bool_or("detect_positive", true)?,
    }))
}

fn selu(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(unary(UnaryOp::Selu { alpha: cx.f32_or("alpha", 1.673_263_2)?, gamma: cx.f32_or("gamma", 1.050_701)? }))
}

fn hard_sigmoid(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(unary(UnaryOp::HardSigmoid { alpha: cx.f32_or("alpha", 0.2)?, beta: cx.f32_or("beta", 0.5)? }))
}

fn gelu(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let tanh = match cx.string_or("approximate", "none")?.as_str() {
        "none" => false,
        "tanh" => true,
        s => return Err(cx.attr_error("approximate", format!("expected none or tanh, found {s}"))),
    };
    Ok(unary(UnaryOp::Gelu { tanh }))
}

fn shrink(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(unary(UnaryOp::Shrink { bias: cx.f32_or("bias", 0.0)?, lambd: cx.f32_or("lambd", 0.5)? }))
}

fn bit_shift(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let left = match cx.get_string("direction")?.as_deref() {
        Some("LEFT") => true,
        Some("RIGHT") => false,
        Some(s) => return Err(cx.attr_error("direction", format!("expected LEFT or RIGHT, found {s}"))),
        None => return Err(cx.attr_error("direction", "required attribute is missing")),
    };
    Ok(binary(BinaryOp::BitShift { left }))
}

/// Before opset 11 the bounds are attributes; from 11 on they are optional inputs, which the
/// kernel reads.
fn clip(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let (min, max) = if cx.opset() < 11 { (cx.get_f32("min")?, cx.get_f32("max")?) } else { (None, None) };
    Ok(Op::Elementwise(ElementwiseOp::Clip { min, max }))
}

/// `saturate` only changes casts to the float8 and E8M0 types; `round_mode` only changes casts
/// to E8M0, and Kiln implements its default, `up`.
fn cast(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let saturate = cast_attrs(cx)?;
    let code = cx.req_i64("to")?;
    let to = i32::try_from(code)
        .ok()
        .and_then(crate::tensor::dtype_from_onnx)
        .ok_or_else(|| cx.attr_error("to", format!("casting to {} is not supported", type_name(code))))?;
    Ok(Op::Elementwise(ElementwiseOp::Cast { to, saturate }))
}

fn cast_like(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let saturate = cast_attrs(cx)?;
    Ok(Op::Elementwise(ElementwiseOp::CastLike { saturate }))
}

/// The `saturate` attribute, after checking that `round_mode` is one Kiln implements.
fn cast_attrs(cx: &NodeCtx<'_>) -> Result<bool, ImportError> {
    let mode = cx.string_or("round_mode", "up")?;
    if mode != "up" {
        return Err(cx.attr_error("round_mode", format!("only 'up' is supported, found '{mode}'")));
    }
    cx.bool_or("saturate", true)
}

fn type_name(code: i64) -> String {
    i32::try_from(code).map(crate::tensor::onnx_dtype_name).unwrap_or_else(|_| format!("unknown data type {code}"))
}
