//! Quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear.
//!
//! Scales and zero points are inputs: a scalar (per tensor), a vector along `axis` (per axis),
//! or, with `block_size > 0`, a tensor of the input's rank whose `axis` dim counts blocks.

use super::infer::*;
use crate::{DType, TypeInfo};

/// Quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantOp {
    /// saturate(round_half_even(x / scale) + zero_point)
    QuantizeLinear {
        /// The axis of per-axis and blocked quantization (may be negative).
        axis: i64,
        /// Elements per block along `axis`; 0 for per-tensor or per-axis quantization.
        block_size: usize,
        /// The output type when no zero point is given (`output_dtype`); u8 when `None`.
        output_dtype: Option<DType>,
        /// ONNX `saturate`, for float8 outputs: out-of-range values clamp to the largest finite
        /// value instead of becoming Inf or NaN.
        saturate: bool,
    },
    /// (x - zero_point) · scale
    DequantizeLinear {
        /// The axis of per-axis and blocked quantization (may be negative).
        axis: i64,
        /// Elements per block along `axis`; 0 for per-tensor or per-axis quantization.
        block_size: usize,
        /// The output type (`output_dtype`); the scale's type when `None`.
        output_dtype: Option<DType>,
    },
    /// Quantizes to u8 with a scale and zero point computed from the input's range; outputs
    /// (y, y_scale, y_zero_point).
    DynamicQuantizeLinear,
}

impl QuantOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            QuantOp::QuantizeLinear { .. } => "QuantizeLinear",
            QuantOp::DequantizeLinear { .. } => "DequantizeLinear",
            QuantOp::DynamicQuantizeLinear => "DynamicQuantizeLinear",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = num_outputs;
        let x = input_ty(inputs, 0);
        Ok(match self {
            QuantOp::QuantizeLinear { output_dtype, .. } => {
                let zp = inputs.get(2).and_then(|i| i.as_ref()).map(|i| i.ty.dtype);
                let dtype = match zp {
                    Some(d) => d,
                    None => Some(output_dtype.unwrap_or(DType::U8)),
                };
                vec![TypeInfo { dtype, shape: x.shape }]
            }
            QuantOp::DequantizeLinear { output_dtype, .. } => {
                let dtype = output_dtype.or(input_ty(inputs, 1).dtype);
                vec![TypeInfo { dtype, shape: x.shape }]
            }
            QuantOp::DynamicQuantizeLinear => vec![
                TypeInfo { dtype: Some(DType::U8), shape: x.shape },
                TypeInfo { dtype: x.dtype, shape: Some(vec![]) },
                TypeInfo::known(DType::U8, &[]),
            ],
        })
    }
}
