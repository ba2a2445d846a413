//! Importers for data movement, shape queries and tensor creation.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::layout::{DepthToSpaceMode, PadMode, ScatterReduction, SliceAttrs};
use kiln_ir::ops::LayoutOp;
use kiln_ir::{DType, Op, Tensor};

pub(super) fn register(reg: &mut Registry) {
    reg.insert("Constant", constant);
    reg.insert("Identity", identity);
    reg.insert("Dropout", dropout);
    reg.insert("Reshape", reshape);
    reg.insert("Flatten", flatten);
    reg.insert("Squeeze", squeeze);
    reg.insert("Unsqueeze", unsqueeze);
    reg.insert("Transpose", transpose);
    reg.insert("Concat", concat);
    reg.insert("Split", split);
    reg.insert("Slice", slice);
    reg.insert("Gather", gather);
    reg.insert("GatherElements", gather_elements);
    reg.insert("GatherND", gather_nd);
    reg.insert("ScatterND", scatter_nd);
    reg.insert("ScatterElements", scatter_elements);
    reg.insert("Scatter", scatter_elements);
    reg.insert("Pad", pad);
    reg.insert("Tile", tile);
    reg.insert("Expand", expand);
    reg.insert("Shape", shape);
    reg.insert("Size", size);
    reg.insert("ConstantOfShape", constant_of_shape);
    reg.insert("Range", range);
    reg.insert("DepthToSpace", depth_to_space);
    reg.insert("SpaceToDepth", space_to_depth);
    reg.insert("Trilu", trilu);
    reg.insert("OneHot", one_hot);
    reg.insert("NonZero", non_zero);
    reg.insert("Compress", compress);
    reg.insert("ReverseSequence", reverse_sequence);
    reg.insert("EyeLike", eye_like);
    reg.insert("Unique", unique);
    reg.insert("CenterCropPad", center_crop_pad);
}

fn layout(op: LayoutOp) -> Result<Op, ImportError> {
    Ok(Op::Layout(op))
}

fn constant(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    for name in ["value_string", "value_strings"] {
        cx.reject_attr(name, "string tensors are not supported")?;
    }
    cx.reject_attr("sparse_value", "sparse tensors are not supported")?;
    let t = if let Some(t) = cx.get_tensor("value")? {
        t
    } else if let Some(v) = cx.get_f32("value_float")? {
        Tensor::scalar(v)
    } else if let Some(v) = cx.get_floats("value_floats")? {
        Tensor::from_vec(vec![v.len()], v).map_err(|e| cx.attr_error("value_floats", e.to_string()))?
    } else if let Some(v) = cx.get_i64("value_int")? {
        Tensor::scalar(v)
    } else if let Some(v) = cx.get_ints("value_ints")? {
        Tensor::from_vec(vec![v.len()], v).map_err(|e| cx.attr_error("value_ints", e.to_string()))?
    } else {
        return Err(cx.error("no value attribute (value, value_float, value_floats, value_int, value_ints)"));
    };
    Ok(Op::Const(t))
}

fn identity(_cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::Identity)
}

/// Kiln runs models for inference, so Dropout passes its input through. Before opset 7 the
/// `is_test` attribute selected training, but exporters left it at 0 in inference models,
/// so it is ignored as other runtimes do.
fn dropout(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    if cx.opset() >= 12 && cx.has_input(2) {
        let training = match cx.const_input(2) {
            Some(t) => t.to_i64_vec().first().is_some_and(|&v| v != 0),
            None => {
                return Err(cx.error(
                    "training_mode (input 2) is not a constant: training mode is not supported, only inference",
                ))
            }
        };
        // Training with ratio 0 drops nothing, so it is still the identity.
        let zero_ratio = cx.const_input(1).is_some_and(|t| t.to_f64_vec().first() == Some(&0.0));
        if training && !zero_ratio {
            return Err(cx.error("training_mode is true; only inference (training_mode false) is supported"));
        }
    }
    layout(LayoutOp::Dropout)
}

fn reshape(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let shape = if cx.opset() < 5 {
        Some(cx.get_ints("shape")?.ok_or_else(|| cx.attr_error("shape", "required attribute is missing"))?)
    } else {
        None
    };
    layout(LayoutOp::Reshape { shape, allowzero: cx.bool_or("allowzero", false)? })
}

fn flatten(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::Flatten { axis: cx.i64_or("axis", 1)? })
}

fn squeeze(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let axes = if cx.opset() < 13 { cx.get_ints("axes")? } else { None };
    layout(LayoutOp::Squeeze { axes })
}

fn unsqueeze(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let axes = if cx.opset() < 13 {
        Some(cx.get_ints("axes")?.ok_or_else(|| cx.attr_error("axes", "required attribute is missing"))?)
    } else {
        None
    };
    layout(LayoutOp::Unsqueeze { axes })
}

fn transpose(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::Transpose { perm: cx.get_ints("perm")? })
}

fn concat(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let axis = if cx.opset() < 4 { cx.i64_or("axis", 1)? } else { cx.req_i64("axis")? };
    layout(LayoutOp::Concat { axis })
}

fn split(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let split = if cx.opset() < 13 { cx.get_ints("split")? } else { None };
    if let Some(n) = cx.get_i64("num_outputs")? {
        if n < 1 || n as usize != cx.num_outputs() {
            return Err(cx.attr_error("num_outputs", format!("is {n} but the node has {} outputs", cx.num_outputs())));
        }
        if cx.has_input(1) {
            return Err(cx.attr_error("num_outputs", "must not be given together with the split input"));
        }
    }
    if let Some(s) = &split {
        if s.len() != cx.num_outputs() || s.iter().any(|&v| v < 0) {
            return Err(
                cx.attr_error("split", format!("{s:?} does not give one size per output ({})", cx.num_outputs()))
            );
        }
    }
    layout(LayoutOp::Split { axis: cx.i64_or("axis", 0)?, split })
}

fn slice(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    if cx.opset() >= 10 {
        return layout(LayoutOp::Slice { attrs: None });
    }
    let starts = cx.get_ints("starts")?.ok_or_else(|| cx.attr_error("starts", "required attribute is missing"))?;
    let ends = cx.get_ints("ends")?.ok_or_else(|| cx.attr_error("ends", "required attribute is missing"))?;
    let axes = cx.get_ints("axes")?;
    if ends.len() != starts.len() || axes.as_ref().is_some_and(|a| a.len() != starts.len()) {
        return Err(cx.attr_error("ends", "starts, ends and axes must have the same length"));
    }
    layout(LayoutOp::Slice { attrs: Some(SliceAttrs { starts, ends, axes }) })
}

fn gather(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::Gather { axis: cx.i64_or("axis", 0)? })
}

fn gather_elements(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::GatherElements { axis: cx.i64_or("axis", 0)? })
}

fn gather_nd(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let b = cx.i64_or("batch_dims", 0)?;
    if b < 0 {
        return Err(cx.attr_error("batch_dims", format!("must not be negative, found {b}")));
    }
    layout(LayoutOp::GatherND { batch_dims: b as usize })
}

fn reduction(cx: &NodeCtx<'_>) -> Result<ScatterReduction, ImportError> {
    Ok(match cx.string_or("reduction", "none")?.as_str() {
        "none" => ScatterReduction::None,
        "add" => ScatterReduction::Add,
        "mul" => ScatterReduction::Mul,
        "max" => ScatterReduction::Max,
        "min" => ScatterReduction::Min,
        other => return Err(cx.attr_error("reduction", format!("expected none, add, mul, max or min, found {other}"))),
    })
}

fn scatter_nd(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::ScatterND { reduction: reduction(cx)? })
}

fn scatter_elements(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::ScatterElements { axis: cx.i64_or("axis", 0)?, reduction: reduction(cx)? })
}

fn pad(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let mode = match cx.string_or("mode", "constant")?.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" => PadMode::Wrap,
        other => return Err(cx.attr_error("mode", format!("expected constant, reflect, edge or wrap, found {other}"))),
    };
    if cx.opset() >= 11 {
        return layout(LayoutOp::Pad { mode, pads: None, value: 0.0 });
    }
    // Opset 1 called the attribute `paddings`.
    let pads = match cx.get_ints("pads")? {
        Some(p) => p,
        None => cx.get_ints("paddings")?.ok_or_else(|| cx.attr_error("pads", "required attribute is missing"))?,
    };
    layout(LayoutOp::Pad { mode, pads: Some(pads), value: cx.f32_or("value", 0.0)? })
}

fn tile(_cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::Tile)
}

fn expand(_cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::Expand)
}

fn shape(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::Shape { start: cx.i64_or("start", 0)?, end: cx.get_i64("end")? })
}

fn size(_cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::Size)
}

fn constant_of_shape(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let value = match cx.get_tensor("value")? {
        Some(t) if t.len() == 1 => t,
        Some(t) => return Err(cx.attr_error("value", format!("must hold one element, found {}", t.len()))),
        None => Tensor::scalar(0f32),
    };
    layout(LayoutOp::ConstantOfShape { value })
}

fn range(_cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::Range)
}

fn blocksize(cx: &NodeCtx<'_>) -> Result<usize, ImportError> {
    match cx.req_i64("blocksize")? {
        b if b >= 1 => Ok(b as usize),
        b => Err(cx.attr_error("blocksize", format!("must be positive, found {b}"))),
    }
}

fn depth_to_space(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let mode = match cx.string_or("mode", "DCR")?.as_str() {
        "DCR" => DepthToSpaceMode::Dcr,
        "CRD" => DepthToSpaceMode::Crd,
        other => return Err(cx.attr_error("mode", format!("expected DCR or CRD, found {other}"))),
    };
    layout(LayoutOp::DepthToSpace { blocksize: blocksize(cx)?, mode })
}

fn space_to_depth(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::SpaceToDepth { blocksize: blocksize(cx)? })
}

fn trilu(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::Trilu { upper: cx.bool_or("upper", true)? })
}

fn one_hot(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::OneHot { axis: cx.i64_or("axis", -1)? })
}

fn non_zero(_cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::NonZero)
}

fn compress(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::Compress { axis: cx.get_i64("axis")? })
}

fn reverse_sequence(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let batch_axis = cx.i64_or("batch_axis", 1)?;
    let time_axis = cx.i64_or("time_axis", 0)?;
    match (batch_axis, time_axis) {
        (0, 1) | (1, 0) => {
            layout(LayoutOp::ReverseSequence { batch_axis: batch_axis as usize, time_axis: time_axis as usize })
        }
        _ => Err(cx.attr_error(
            "batch_axis",
            format!("batch_axis and time_axis must be 0 and 1 in some order, found {batch_axis} and {time_axis}"),
        )),
    }
}

fn eye_like(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let dtype: Option<DType> = cx.get_dtype("dtype")?;
    layout(LayoutOp::EyeLike { dtype, k: cx.i64_or("k", 0)? })
}

fn unique(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::Unique { axis: cx.get_i64("axis")?, sorted: cx.bool_or("sorted", true)? })
}

fn center_crop_pad(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    layout(LayoutOp::CenterCropPad { axes: cx.get_ints("axes")? })
}
