//! CPU kernels for the pool family.

use crate::{bail, OpResult};
use kiln_ir::ops::PoolOp;
use kiln_ir::Tensor;

pub(super) fn eval(op: &PoolOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let _ = (inputs, num_outputs);
    bail!("{} is not implemented on the CPU", op.name())
}
