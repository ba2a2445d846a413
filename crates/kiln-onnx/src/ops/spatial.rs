//! Importers for the spatial family: Resize, Upsample, GridSample, AffineGrid, RoiAlign,
//! NonMaxSuppression, Col2Im.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::spatial::{
    AspectRatioPolicy, CoordTransform, GridPadding, GridSampleMode, NearestMode, ResizeAttrs, ResizeInputs, ResizeMode,
};
use kiln_ir::ops::SpatialOp;
use kiln_ir::Op;

pub(super) fn register(reg: &mut Registry) {
    reg.insert("Resize", resize);
    reg.insert("Upsample", upsample);
    reg.insert("GridSample", grid_sample);
    reg.insert("AffineGrid", affine_grid);
    reg.insert("RoiAlign", roi_align);
    reg.insert("NonMaxSuppression", nms);
    reg.insert("Col2Im", col2im);
}

fn resize_mode(cx: &NodeCtx<'_>) -> Result<ResizeMode, ImportError> {
    match cx.string_or("mode", "nearest")?.as_str() {
        "nearest" => Ok(ResizeMode::Nearest),
        "linear" | "bilinear" | "trilinear" => Ok(ResizeMode::Linear),
        "cubic" if cx.op_type() == "Resize" && cx.opset() >= 11 => Ok(ResizeMode::Cubic),
        m => Err(cx.attr_error("mode", format!("expected nearest, linear or cubic, found {m}"))),
    }
}

/// The attributes of the pre-opset-11 forms, which sample asymmetrically and round down.
fn legacy_resize(cx: &NodeCtx<'_>, inputs: ResizeInputs) -> Result<ResizeAttrs, ImportError> {
    Ok(ResizeAttrs {
        mode: resize_mode(cx)?,
        coordinate_transformation_mode: CoordTransform::Asymmetric,
        nearest_mode: NearestMode::Floor,
        cubic_coeff_a: -0.75,
        exclude_outside: false,
        extrapolation_value: 0.0,
        antialias: false,
        axes: None,
        keep_aspect_ratio_policy: AspectRatioPolicy::Stretch,
        inputs,
    })
}

fn resize(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    if cx.opset() < 11 {
        return Ok(Op::Spatial(SpatialOp::Resize(legacy_resize(cx, ResizeInputs::Scales)?)));
    }
    let coordinate_transformation_mode = match cx.string_or("coordinate_transformation_mode", "half_pixel")?.as_str() {
        "half_pixel" => CoordTransform::HalfPixel,
        "half_pixel_symmetric" => CoordTransform::HalfPixelSymmetric,
        "pytorch_half_pixel" => CoordTransform::PytorchHalfPixel,
        "align_corners" => CoordTransform::AlignCorners,
        "asymmetric" => CoordTransform::Asymmetric,
        "tf_crop_and_resize" => CoordTransform::TfCropAndResize,
        m => {
            return Err(cx.attr_error(
                "coordinate_transformation_mode",
                format!(
                    "expected half_pixel, half_pixel_symmetric, pytorch_half_pixel, align_corners, asymmetric or tf_crop_and_resize, found {m}"
                ),
            ))
        }
    };
    let nearest_mode = match cx.string_or("nearest_mode", "round_prefer_floor")?.as_str() {
        "round_prefer_floor" => NearestMode::RoundPreferFloor,
        "round_prefer_ceil" => NearestMode::RoundPreferCeil,
        "floor" => NearestMode::Floor,
        "ceil" => NearestMode::Ceil,
        m => {
            return Err(cx.attr_error(
                "nearest_mode",
                format!("expected round_prefer_floor, round_prefer_ceil, floor or ceil, found {m}"),
            ))
        }
    };
    let keep_aspect_ratio_policy = match cx.string_or("keep_aspect_ratio_policy", "stretch")?.as_str() {
        "stretch" => AspectRatioPolicy::Stretch,
        "not_larger" => AspectRatioPolicy::NotLarger,
        "not_smaller" => AspectRatioPolicy::NotSmaller,
        m => {
            return Err(cx.attr_error(
                "keep_aspect_ratio_policy",
                format!("expected stretch, not_larger or not_smaller, found {m}"),
            ))
        }
    };
    let mode = resize_mode(cx)?;
    let antialias = cx.bool_or("antialias", false)?;
    if antialias && mode == ResizeMode::Nearest {
        return Err(cx.attr_error("antialias", "antialiasing applies to linear and cubic modes only, not nearest"));
    }
    Ok(Op::Spatial(SpatialOp::Resize(ResizeAttrs {
        mode,
        coordinate_transformation_mode,
        nearest_mode,
        cubic_coeff_a: cx.f32_or("cubic_coeff_a", -0.75)?,
        exclude_outside: cx.bool_or("exclude_outside", false)?,
        extrapolation_value: cx.f32_or("extrapolation_value", 0.0)?,
        antialias,
        axes: cx.get_ints("axes")?,
        keep_aspect_ratio_policy,
        inputs: ResizeInputs::RoiScalesSizes,
    })))
}

fn upsample(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let inputs = if cx.opset() < 9 {
        ResizeInputs::Attr(
            cx.get_floats("scales")?.ok_or_else(|| cx.attr_error("scales", "required attribute is missing"))?,
        )
    } else {
        ResizeInputs::Scales
    };
    Ok(Op::Spatial(SpatialOp::Resize(legacy_resize(cx, inputs)?)))
}

fn align_corners(cx: &NodeCtx<'_>) -> Result<bool, ImportError> {
    cx.bool_or("align_corners", false)
}

fn grid_sample(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let mode = match cx.string_or("mode", if cx.opset() >= 20 { "linear" } else { "bilinear" })?.as_str() {
        "linear" | "bilinear" => GridSampleMode::Linear,
        "nearest" => GridSampleMode::Nearest,
        "cubic" | "bicubic" => GridSampleMode::Cubic,
        m => return Err(cx.attr_error("mode", format!("expected linear, nearest or cubic, found {m}"))),
    };
    let padding_mode = match cx.string_or("padding_mode", "zeros")?.as_str() {
        "zeros" => GridPadding::Zeros,
        "border" => GridPadding::Border,
        "reflection" => GridPadding::Reflection,
        m => return Err(cx.attr_error("padding_mode", format!("expected zeros, border or reflection, found {m}"))),
    };
    Ok(Op::Spatial(SpatialOp::GridSample { mode, padding_mode, align_corners: align_corners(cx)? }))
}

fn affine_grid(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Spatial(SpatialOp::AffineGrid { align_corners: align_corners(cx)? }))
}

fn roi_align(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let max = match cx.string_or("mode", "avg")?.as_str() {
        "avg" => false,
        "max" => true,
        m => return Err(cx.attr_error("mode", format!("expected avg or max, found {m}"))),
    };
    // Opset 16 added the attribute, and changed the default to half_pixel.
    let default_ctm = if cx.opset() >= 16 { "half_pixel" } else { "output_half_pixel" };
    let half_pixel = match cx.string_or("coordinate_transformation_mode", default_ctm)?.as_str() {
        "half_pixel" => true,
        "output_half_pixel" => false,
        m => {
            return Err(cx.attr_error(
                "coordinate_transformation_mode",
                format!("expected half_pixel or output_half_pixel, found {m}"),
            ))
        }
    };
    let positive = |name: &str, default: i64| -> Result<usize, ImportError> {
        match cx.i64_or(name, default)? {
            v if v >= 0 => Ok(v as usize),
            v => Err(cx.attr_error(name, format!("expected a non-negative value, found {v}"))),
        }
    };
    Ok(Op::Spatial(SpatialOp::RoiAlign {
        max,
        output_height: positive("output_height", 1)?,
        output_width: positive("output_width", 1)?,
        sampling_ratio: positive("sampling_ratio", 0)?,
        spatial_scale: cx.f32_or("spatial_scale", 1.0)?,
        half_pixel,
    }))
}

fn nms(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Spatial(SpatialOp::NonMaxSuppression { center_point_box: cx.bool_or("center_point_box", false)? }))
}

fn col2im(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    let list = |name: &str, min: i64| -> Result<Vec<usize>, ImportError> {
        let v = cx.get_ints(name)?.unwrap_or_default();
        v.iter()
            .map(|&x| {
                if x >= min {
                    Ok(x as usize)
                } else {
                    Err(cx.attr_error(name, format!("expected values of at least {min}, found {x}")))
                }
            })
            .collect()
    };
    Ok(Op::Spatial(SpatialOp::Col2Im {
        dilations: list("dilations", 1)?,
        pads: list("pads", 0)?,
        strides: list("strides", 1)?,
    }))
}
