//! Importers for sequences and optionals.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::SequenceOp;
use kiln_ir::{DType, Op};

pub(super) fn register(reg: &mut Registry) {
    reg.insert("SequenceEmpty", sequence_empty);
    reg.insert("SequenceConstruct", |_| Ok(Op::Sequence(SequenceOp::SequenceConstruct)));
    reg.insert("SequenceInsert", |_| Ok(Op::Sequence(SequenceOp::SequenceInsert)));
    reg.insert("SequenceAt", |_| Ok(Op::Sequence(SequenceOp::SequenceAt)));
    reg.insert("SequenceErase", |_| Ok(Op::Sequence(SequenceOp::SequenceErase)));
    reg.insert("SequenceLength", |_| Ok(Op::Sequence(SequenceOp::SequenceLength)));
    reg.insert("SplitToSequence", split_to_sequence);
    reg.insert("ConcatFromSequence", concat_from_sequence);
    reg.insert("SequenceMap", sequence_map);
    reg.insert("Optional", |_| Ok(Op::Sequence(SequenceOp::Optional)));
    reg.insert("OptionalHasElement", |_| Ok(Op::Sequence(SequenceOp::OptionalHasElement)));
    reg.insert("OptionalGetElement", |_| Ok(Op::Sequence(SequenceOp::OptionalGetElement)));
}

fn sequence_empty(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let dtype = cx.get_dtype("dtype")?.unwrap_or(DType::F32);
    Ok(Op::Sequence(SequenceOp::SequenceEmpty { dtype }))
}

fn split_to_sequence(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Sequence(SequenceOp::SplitToSequence {
        axis: cx.i64_or("axis", 0)?,
        keepdims: cx.bool_or("keepdims", true)?,
    }))
}

fn concat_from_sequence(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let axis = cx.get_i64("axis")?.ok_or_else(|| cx.attr_error("axis", "required attribute is missing"))?;
    Ok(Op::Sequence(SequenceOp::ConcatFromSequence { axis, new_axis: cx.bool_or("new_axis", false)? }))
}

fn sequence_map(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let body = cx.get_graph("body")?;
    Ok(Op::Sequence(SequenceOp::SequenceMap { body: Box::new(body), num_formal_inputs: cx.num_inputs() }))
}
