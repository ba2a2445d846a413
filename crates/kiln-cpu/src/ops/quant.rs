//! CPU kernels for the quant family.

use crate::{bail, OpResult};
use kiln_ir::ops::QuantOp;
use kiln_ir::Tensor;

pub(super) fn eval(op: &QuantOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let _ = (inputs, num_outputs);
    bail!("{} is not implemented on the CPU", op.name())
}
