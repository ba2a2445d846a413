//! Pooling over spatial dims: max, average, Lp, global forms.

use super::infer::*;
use crate::TypeInfo;

/// Convolutions and pooling over spatial dims.
#[derive(Clone, Debug, PartialEq)]
pub enum PoolOp {
    /// Global average pooling
    GlobalAveragePool,
}

impl PoolOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            PoolOp::GlobalAveragePool => "GlobalAveragePool",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = (inputs, first_dtype(inputs));
        Ok(vec![TypeInfo::unknown(); num_outputs])
    }
}
