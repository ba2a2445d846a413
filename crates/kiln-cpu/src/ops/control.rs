//! CPU execution of control flow: runs the subgraphs with the executor.

use super::common::input;
use crate::{bail, run_graph, OpResult};
use kiln_ir::ops::ControlOp;
use kiln_ir::Tensor;

pub(super) fn eval(op: &ControlOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let _ = num_outputs;
    match op {
        ControlOp::If { then_branch, else_branch } => {
            let cond = input(inputs, 0)?;
            let Some(&c) = cond.cast(kiln_ir::DType::Bool).as_slice::<bool>()?.first() else {
                bail!("condition is empty")
            };
            let branch = if c { then_branch } else { else_branch };
            let captured: Vec<Tensor> = inputs[1..].iter().map(|t| t.cloned().unwrap_or_else(|| Tensor::scalar(0f32))).collect();
            Ok(run_graph(branch, &captured[..branch.inputs.len().min(captured.len())])?)
        }
    }
}
