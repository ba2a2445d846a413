//! Importers for pointwise ops: math, comparisons, logic, activations, casts.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::ElementwiseOp;
use kiln_ir::Op;

pub(super) fn register(reg: &mut Registry) {
    reg.insert("Relu", relu);
}

fn relu(_cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Elementwise(ElementwiseOp::Relu))
}
