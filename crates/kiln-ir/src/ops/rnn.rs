//! Recurrent layers: RNN, GRU, LSTM.

use super::infer::*;
use crate::TypeInfo;

/// Recurrent layers: RNN, GRU, LSTM.
#[derive(Clone, Debug, PartialEq)]
pub enum RnnOp {
    /// placeholder until recurrent layers land
    Lstm { hidden_size: usize },
}

impl RnnOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            RnnOp::Lstm { .. } => "LSTM",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = (inputs, first_dtype(inputs));
        Ok(vec![TypeInfo::unknown(); num_outputs])
    }
}
