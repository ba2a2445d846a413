//! CPU kernels for the signal family.

use crate::{bail, OpResult};
use kiln_ir::ops::SignalOp;
use kiln_ir::Tensor;

pub(super) fn eval(op: &SignalOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let _ = (inputs, num_outputs);
    bail!("{} is not implemented on the CPU", op.name())
}
