//! Importers for the norm family.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::NormOp;
use kiln_ir::Op;

pub(super) fn register(reg: &mut Registry) {
    reg.insert("BatchNormalization", batch_normalization);
    reg.insert("InstanceNormalization", instance_normalization);
    reg.insert("LayerNormalization", layer_normalization);
    reg.insert("GroupNormalization", group_normalization);
    reg.insert("RMSNormalization", rms_normalization);
    reg.insert("LRN", lrn);
    reg.insert("LpNormalization", lp_normalization);
    reg.insert("MeanVarianceNormalization", mean_variance_normalization);
    reg.insert("Softmax", softmax);
    reg.insert("LogSoftmax", log_softmax);
    reg.insert("Hardmax", hardmax);
}

fn batch_normalization(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    if cx.opset() < 9 && cx.i64_or("spatial", 1)? != 1 {
        return Err(cx.attr_error("spatial", "only spatial=1 (per-channel statistics) is supported"));
    }
    let training_mode = if cx.opset() >= 14 { cx.bool_or("training_mode", false)? } else { false };
    Ok(Op::Norm(NormOp::BatchNormalization {
        epsilon: cx.f32_or("epsilon", 1e-5)?,
        momentum: cx.f32_or("momentum", 0.9)?,
        training_mode,
    }))
}

fn instance_normalization(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Norm(NormOp::InstanceNormalization { epsilon: cx.f32_or("epsilon", 1e-5)? }))
}

fn stash_type(cx: &NodeCtx<'_>) -> Result<i64, ImportError> {
    let code = cx.i64_or("stash_type", 1)?;
    match kiln_ir::ops::norm::stash_dtype(code) {
        Some(_) => Ok(code),
        None => Err(cx.attr_error("stash_type", format!("expected a float type code (1, 10, 11 or 16), found {code}"))),
    }
}

fn layer_normalization(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Norm(NormOp::LayerNormalization {
        axis: cx.i64_or("axis", -1)?,
        epsilon: cx.f32_or("epsilon", 1e-5)?,
        stash_type: stash_type(cx)?,
    }))
}

fn group_normalization(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let num_groups = cx.req_i64("num_groups")?;
    if num_groups <= 0 {
        return Err(cx.attr_error("num_groups", format!("expected a positive count, found {num_groups}")));
    }
    Ok(Op::Norm(NormOp::GroupNormalization {
        num_groups: num_groups as usize,
        epsilon: cx.f32_or("epsilon", 1e-5)?,
        stash_type: stash_type(cx)?,
    }))
}

fn rms_normalization(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Norm(NormOp::RMSNormalization {
        axis: cx.i64_or("axis", -1)?,
        epsilon: cx.f32_or("epsilon", 1e-5)?,
        stash_type: stash_type(cx)?,
    }))
}

fn lrn(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let size = cx.req_i64("size")?;
    if size <= 0 {
        return Err(cx.attr_error("size", format!("expected a positive size, found {size}")));
    }
    Ok(Op::Norm(NormOp::LRN {
        alpha: cx.f32_or("alpha", 1e-4)?,
        beta: cx.f32_or("beta", 0.75)?,
        bias: cx.f32_or("bias", 1.0)?,
        size: size as usize,
    }))
}

fn lp_normalization(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let p = cx.i64_or("p", 2)?;
    if p != 1 && p != 2 {
        return Err(cx.attr_error("p", format!("expected 1 or 2, found {p}")));
    }
    Ok(Op::Norm(NormOp::LpNormalization { axis: cx.i64_or("axis", -1)?, p }))
}

fn mean_variance_normalization(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let axes = cx.get_ints("axes")?.unwrap_or_else(|| vec![0, 2, 3]);
    Ok(Op::Norm(NormOp::MeanVarianceNormalization { axes }))
}

/// The axis of the softmax family and whether it works on the input flattened to 2-D there,
/// as it did before opset 13.
fn softmax_axis(cx: &NodeCtx<'_>) -> Result<(i64, bool), ImportError> {
    if cx.opset() < 13 {
        Ok((cx.i64_or("axis", 1)?, true))
    } else {
        Ok((cx.i64_or("axis", -1)?, false))
    }
}

fn softmax(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let (axis, coerce_2d) = softmax_axis(cx)?;
    Ok(Op::Norm(NormOp::Softmax { axis, coerce_2d }))
}

fn log_softmax(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let (axis, coerce_2d) = softmax_axis(cx)?;
    Ok(Op::Norm(NormOp::LogSoftmax { axis, coerce_2d }))
}

fn hardmax(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let (axis, coerce_2d) = softmax_axis(cx)?;
    Ok(Op::Norm(NormOp::Hardmax { axis, coerce_2d }))
}
