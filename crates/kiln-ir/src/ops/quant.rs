//! Quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear.

use super::infer::*;
use crate::TypeInfo;

/// Quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantOp {
    /// x / scale + zero_point, saturated
    QuantizeLinear { axis: i64 },
}

impl QuantOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            QuantOp::QuantizeLinear { .. } => "QuantizeLinear",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = (inputs, first_dtype(inputs));
        Ok(vec![TypeInfo::unknown(); num_outputs])
    }
}
