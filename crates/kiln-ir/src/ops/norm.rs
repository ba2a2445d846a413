//! Normalizations (batch, instance, layer, group, LRN, Lp) and the softmax family.

use super::infer::*;
use crate::TypeInfo;

/// Normalizations (batch, instance, layer, group, LRN, Lp) and the softmax family.
#[derive(Clone, Debug, PartialEq)]
pub enum NormOp {
    /// softmax along an axis
    Softmax { axis: i64 },
}

impl NormOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            NormOp::Softmax { .. } => "Softmax",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = (inputs, first_dtype(inputs));
        Ok(vec![TypeInfo::unknown(); num_outputs])
    }
}
