//! Control flow: If, Loop and Scan, each carrying subgraphs.
//!
//! Subgraphs never read outer values by name: the importer turns every outer value a body
//! reads into an extra input of the control node, which the body sees as an extra graph input
//! after its formal ones.

use super::infer::*;
use crate::{Graph, TypeInfo};

/// Control flow ops.
#[derive(Clone, Debug)]
pub enum ControlOp {
    /// Runs one branch on a boolean condition (input 0); inputs 1.. are captured outer values,
    /// passed to both branches as their graph inputs.
    If {
        /// Taken when the condition is true.
        then_branch: Box<Graph>,
        /// Taken otherwise.
        else_branch: Box<Graph>,
    },
}

impl ControlOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            ControlOp::If { .. } => "If",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = (inputs, first_dtype(inputs));
        Ok(vec![TypeInfo::unknown(); num_outputs])
    }

    /// The subgraphs carried.
    pub fn subgraphs(&self) -> Vec<&Graph> {
        match self {
            ControlOp::If { then_branch, else_branch } => vec![then_branch, else_branch],
        }
    }
}
