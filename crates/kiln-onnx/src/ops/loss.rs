//! Importers for the loss family.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::loss::LossReduction;
use kiln_ir::ops::LossOp;
use kiln_ir::Op;

pub(super) fn register(reg: &mut Registry) {
    reg.insert("NegativeLogLikelihoodLoss", negative_log_likelihood_loss);
    reg.insert("SoftmaxCrossEntropyLoss", softmax_cross_entropy_loss);
}

fn reduction(cx: &NodeCtx<'_>) -> Result<LossReduction, ImportError> {
    match cx.string_or("reduction", "mean")?.as_str() {
        "none" => Ok(LossReduction::None),
        "sum" => Ok(LossReduction::Sum),
        "mean" => Ok(LossReduction::Mean),
        other => Err(cx.attr_error("reduction", format!("expected none, sum or mean, found {other}"))),
    }
}

fn negative_log_likelihood_loss(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Loss(LossOp::NegativeLogLikelihoodLoss {
        reduction: reduction(cx)?,
        ignore_index: cx.get_i64("ignore_index")?,
    }))
}

fn softmax_cross_entropy_loss(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Loss(LossOp::SoftmaxCrossEntropyLoss {
        reduction: reduction(cx)?,
        ignore_index: cx.get_i64("ignore_index")?,
    }))
}
