//! Importers for control flow: If, Loop, Scan.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::ControlOp;
use kiln_ir::Op;

pub(super) fn register(reg: &mut Registry) {
    reg.insert("If", if_);
}

fn if_(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Control(ControlOp::If {
        then_branch: Box::new(cx.get_graph("then_branch")?),
        else_branch: Box::new(cx.get_graph("else_branch")?),
    }))
}
