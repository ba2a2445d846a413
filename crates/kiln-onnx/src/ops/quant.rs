//! Importers for the quant family.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::QuantOp;
use kiln_ir::{DType, Op};

pub(super) fn register(reg: &mut Registry) {
    reg.insert("QuantizeLinear", quantize_linear);
    reg.insert("DequantizeLinear", dequantize_linear);
    reg.insert("DynamicQuantizeLinear", |_| Ok(Op::Quant(QuantOp::DynamicQuantizeLinear)));
}

/// `saturate` only affects float8 outputs.
fn quantize_linear(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let saturate = cx.bool_or("saturate", true)?;
    // The division is done in f32 (f64 for f64 inputs) whatever `precision` asks.
    if let Some(p) = cx.get_i64("precision")? {
        if p != 0 && p != 1 {
            return Err(cx.attr_error("precision", format!("only FLOAT is supported, found {}", type_name(p))));
        }
    }
    let output_dtype = output_dtype(cx)?;
    if let Some(d) = output_dtype {
        if !is_quant_type(d) {
            return Err(cx.attr_error(
                "output_dtype",
                format!("expected a 4-, 8- or 16-bit integer, a float8 type or float4e2m1, found {d}"),
            ));
        }
    }
    let (axis, block_size) = (cx.i64_or("axis", 1)?, block_size(cx)?);
    Ok(Op::Quant(QuantOp::QuantizeLinear { axis, block_size, output_dtype, saturate }))
}

/// The types QuantizeLinear can produce and DequantizeLinear can read.
fn is_quant_type(d: DType) -> bool {
    matches!(d, DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::I4 | DType::U4 | DType::F4E2M1)
        || matches!(d, DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ)
}

fn dequantize_linear(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let output_dtype = output_dtype(cx)?;
    if let Some(d) = output_dtype {
        if !d.is_float() || d.is_low_precision_float() {
            return Err(
                cx.attr_error("output_dtype", format!("expected float, float16, bfloat16 or double, found {d}"))
            );
        }
    }
    Ok(Op::Quant(QuantOp::DequantizeLinear { axis: cx.i64_or("axis", 1)?, block_size: block_size(cx)?, output_dtype }))
}

fn block_size(cx: &NodeCtx<'_>) -> Result<usize, ImportError> {
    let b = cx.i64_or("block_size", 0)?;
    usize::try_from(b).map_err(|_| cx.attr_error("block_size", format!("expected a non-negative value, found {b}")))
}

/// The `output_dtype` attribute; 0 (UNDEFINED) means absent.
fn output_dtype(cx: &NodeCtx<'_>) -> Result<Option<DType>, ImportError> {
    match cx.i64_or("output_dtype", 0)? {
        0 => Ok(None),
        code => i32::try_from(code)
            .ok()
            .and_then(crate::tensor::dtype_from_onnx)
            .map(Some)
            .ok_or_else(|| cx.attr_error("output_dtype", format!("{} is not supported", type_name(code)))),
    }
}

fn type_name(code: i64) -> String {
    i32::try_from(code).map(crate::tensor::onnx_dtype_name).unwrap_or_else(|_| format!("unknown data type {code}"))
}
