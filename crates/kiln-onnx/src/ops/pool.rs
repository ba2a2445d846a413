//! Importers for the pool family.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::pool::{AutoPad, PoolWindow};
use kiln_ir::ops::PoolOp;
use kiln_ir::Op;

pub(super) fn register(reg: &mut Registry) {
    reg.insert("MaxPool", max_pool);
    reg.insert("AveragePool", average_pool);
    reg.insert("LpPool", lp_pool);
    reg.insert("GlobalAveragePool", global_average_pool);
    reg.insert("GlobalMaxPool", global_max_pool);
    reg.insert("GlobalLpPool", global_lp_pool);
    reg.insert("MaxUnpool", max_unpool);
    reg.insert("MaxRoiPool", max_roi_pool);
}

fn max_pool(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let column_major = cx.bool_or("storage_order", false)?;
    Ok(Op::Pool(PoolOp::MaxPool { window: window(cx)?, column_major }))
}

fn average_pool(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let count_include_pad = cx.bool_or("count_include_pad", false)?;
    Ok(Op::Pool(PoolOp::AveragePool { window: window(cx)?, count_include_pad }))
}

fn lp_pool(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Pool(PoolOp::LpPool { window: window(cx)?, p: lp_exponent(cx)? }))
}

fn global_average_pool(_cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Pool(PoolOp::GlobalAveragePool))
}

fn global_max_pool(_cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Pool(PoolOp::GlobalMaxPool))
}

fn global_lp_pool(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Pool(PoolOp::GlobalLpPool { p: lp_exponent(cx)? }))
}

fn max_unpool(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let kernel_shape = kernel_shape(cx)?;
    let r = kernel_shape.len();
    let strides = sizes(cx, "strides", r, 1, 1)?;
    let pads = sizes(cx, "pads", 2 * r, 0, 0)?;
    Ok(Op::Pool(PoolOp::MaxUnpool { kernel_shape, strides, pads }))
}

fn max_roi_pool(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let shape =
        cx.get_ints("pooled_shape")?.ok_or_else(|| cx.attr_error("pooled_shape", "required attribute is missing"))?;
    let pooled_shape = match shape[..] {
        [h, w] if h > 0 && w > 0 => [h as usize, w as usize],
        _ => return Err(cx.attr_error("pooled_shape", format!("expected two positive sizes, found {shape:?}"))),
    };
    let spatial_scale = cx.f32_or("spatial_scale", 1.0)?;
    Ok(Op::Pool(PoolOp::MaxRoiPool { pooled_shape, spatial_scale }))
}

/// The `p` of the Lp pools: a float in opset 1, an integer since.
fn lp_exponent(cx: &NodeCtx<'_>) -> Result<f32, ImportError> {
    let p = if cx.opset() < 2 { cx.f32_or("p", 2.0)? } else { cx.i64_or("p", 2)? as f32 };
    // NaN is not positive either.
    if p.is_nan() || p <= 0.0 {
        return Err(cx.attr_error("p", format!("expected a positive exponent, found {p}")));
    }
    Ok(p)
}

fn kernel_shape(cx: &NodeCtx<'_>) -> Result<Vec<usize>, ImportError> {
    let k =
        cx.get_ints("kernel_shape")?.ok_or_else(|| cx.attr_error("kernel_shape", "required attribute is missing"))?;
    if k.is_empty() || k.iter().any(|&d| d <= 0) {
        return Err(cx.attr_error("kernel_shape", format!("expected positive sizes, found {k:?}")));
    }
    Ok(k.into_iter().map(|d| d as usize).collect())
}

/// A list attribute of `len` sizes, each at least `min`, defaulting to `default` everywhere.
fn sizes(cx: &NodeCtx<'_>, name: &str, len: usize, min: i64, default: usize) -> Result<Vec<usize>, ImportError> {
    match cx.get_ints(name)? {
        None => Ok(vec![default; len]),
        Some(v) if v.is_empty() => Ok(vec![default; len]),
        Some(v) => {
            if v.len() != len || v.iter().any(|&d| d < min) {
                return Err(cx.attr_error(name, format!("expected {len} values of at least {min}, found {v:?}")));
            }
            Ok(v.into_iter().map(|d| d as usize).collect())
        }
    }
}

fn window(cx: &NodeCtx<'_>) -> Result<PoolWindow, ImportError> {
    let kernel_shape = kernel_shape(cx)?;
    let r = kernel_shape.len();
    let auto_pad = match cx.string_or("auto_pad", "NOTSET")?.as_str() {
        "NOTSET" | "" => AutoPad::NotSet,
        "SAME_UPPER" => AutoPad::SameUpper,
        "SAME_LOWER" => AutoPad::SameLower,
        "VALID" => AutoPad::Valid,
        other => {
            return Err(
                cx.attr_error("auto_pad", format!("expected NOTSET, SAME_UPPER, SAME_LOWER or VALID, found {other}"))
            )
        }
    };
    Ok(PoolWindow {
        strides: sizes(cx, "strides", r, 1, 1)?,
        pads: sizes(cx, "pads", 2 * r, 0, 0)?,
        dilations: sizes(cx, "dilations", r, 1, 1)?,
        ceil_mode: cx.bool_or("ceil_mode", false)?,
        kernel_shape,
        auto_pad,
    })
}
