//! Data movement and shape queries: reshape, transpose, slice, gather, scatter, pad, resize.

use super::infer::*;
use crate::TypeInfo;

/// Data movement and shape queries: reshape, transpose, slice, gather, scatter, pad, resize.
#[derive(Clone, Debug, PartialEq)]
pub enum LayoutOp {
    /// copy
    Identity,
}

impl LayoutOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            LayoutOp::Identity => "Identity",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = (inputs, first_dtype(inputs));
        Ok(vec![TypeInfo::unknown(); num_outputs])
    }
}

impl LayoutOp {
    /// Whether output 0 always equals input 0 (Identity, Dropout at inference).
    pub fn is_identity(&self) -> bool {
        matches!(self, LayoutOp::Identity)
    }

    /// Whether the op only reinterprets the shape (Reshape, Flatten, Squeeze, Unsqueeze),
    /// so that it is a no-op when the output shape equals the input shape.
    pub fn is_reshape_like(&self) -> bool {
        false
    }
}
