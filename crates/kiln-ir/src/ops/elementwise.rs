//! Pointwise ops: math, comparisons, logic, activations, casts.

use super::infer::*;
use crate::TypeInfo;

/// Pointwise ops: math, comparisons, logic, activations, casts.
#[derive(Clone, Debug, PartialEq)]
pub enum ElementwiseOp {
    /// max(x, 0)
    Relu,
}

impl ElementwiseOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            ElementwiseOp::Relu => "Relu",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = (inputs, first_dtype(inputs));
        Ok(vec![TypeInfo::unknown(); num_outputs])
    }
}

impl ElementwiseOp {
    /// Whether the op is deterministic and side-effect free (random ops are not).
    pub fn is_pure(&self) -> bool {
        true
    }
}

impl ElementwiseOp {
    /// Whether the op is a Cast, which is a no-op when the input already has the target type.
    pub fn is_noop_cast(&self) -> bool {
        false
    }
}
