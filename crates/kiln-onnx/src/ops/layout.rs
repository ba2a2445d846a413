//! Importers for data movement and shape queries.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::LayoutOp;
use kiln_ir::Op;

pub(super) fn register(reg: &mut Registry) {
    reg.insert("Identity", identity);
}

fn identity(_cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Layout(LayoutOp::Identity))
}
