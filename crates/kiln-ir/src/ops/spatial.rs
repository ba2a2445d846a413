//! Image-space resampling and detection: Resize (and the deprecated Upsample), GridSample,
//! AffineGrid, RoiAlign, NonMaxSuppression and Col2Im.

use super::infer::*;
use crate::{DType, Dim, TypeInfo};

/// How Resize interpolates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// The nearest input pixel, chosen by [`NearestMode`].
    Nearest,
    /// Linear in each resized axis (bilinear, trilinear).
    Linear,
    /// Cubic convolution in each resized axis, with coefficient `cubic_coeff_a`.
    Cubic,
}

/// How Resize maps an output coordinate back to an input coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordTransform {
    /// `(x + 0.5) / scale - 0.5`.
    HalfPixel,
    /// Like half_pixel, centred when the output size was rounded.
    HalfPixelSymmetric,
    /// half_pixel, except that an output of length 1 maps to 0.
    PytorchHalfPixel,
    /// `x * (in - 1) / (out - 1)`.
    AlignCorners,
    /// `x / scale`.
    Asymmetric,
    /// Samples the region of interest, with `extrapolation_value` outside the input.
    TfCropAndResize,
}

/// How nearest-mode Resize rounds an input coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NearestMode {
    /// Round half down.
    RoundPreferFloor,
    /// Round half up.
    RoundPreferCeil,
    /// Round down.
    Floor,
    /// Round up.
    Ceil,
}

/// How Resize with `sizes` treats the aspect ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AspectRatioPolicy {
    /// Each axis takes its own size.
    Stretch,
    /// One scale for all axes, the smallest, so that no axis exceeds its size.
    NotLarger,
    /// One scale for all axes, the largest, so that no axis falls short of its size.
    NotSmaller,
}

/// Where Resize finds its scales and sizes.
#[derive(Clone, Debug, PartialEq)]
pub enum ResizeInputs {
    /// Opset 11 and later: `X, roi, scales, sizes`, all but `X` optional.
    RoiScalesSizes,
    /// Resize 10 and Upsample 9: `X, scales`.
    Scales,
    /// Upsample 7: the scales are an attribute.
    Attr(Vec<f32>),
}

/// The attributes of Resize, with defaults resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ResizeAttrs {
    /// Interpolation.
    pub mode: ResizeMode,
    /// Output to input coordinate mapping.
    pub coordinate_transformation_mode: CoordTransform,
    /// Rounding in nearest mode.
    pub nearest_mode: NearestMode,
    /// The `A` of cubic convolution.
    pub cubic_coeff_a: f32,
    /// Whether weights of taps outside the input are dropped and the rest renormalized.
    pub exclude_outside: bool,
    /// The value of samples outside the input for tf_crop_and_resize.
    pub extrapolation_value: f32,
    /// Whether downsampling widens the filter to avoid aliasing (linear and cubic only).
    pub antialias: bool,
    /// The axes that `roi`, `scales` and `sizes` refer to (may be negative); all when `None`.
    pub axes: Option<Vec<i64>>,
    /// The aspect ratio policy with `sizes`.
    pub keep_aspect_ratio_policy: AspectRatioPolicy,
    /// Which input form the node uses.
    pub inputs: ResizeInputs,
}

/// How GridSample interpolates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GridSampleMode {
    /// Linear in each axis (opset 16 `bilinear`).
    Linear,
    /// The nearest pixel.
    Nearest,
    /// Cubic convolution with `A = -0.75` (opset 16 `bicubic`).
    Cubic,
}

/// What GridSample reads outside the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GridPadding {
    /// Zeros.
    Zeros,
    /// The nearest border value.
    Border,
    /// The input mirrored at its borders.
    Reflection,
}

/// Image-space resampling and detection ops.
#[derive(Clone, Debug, PartialEq)]
pub enum SpatialOp {
    /// Resize, and Upsample mapped onto it.
    Resize(ResizeAttrs),
    /// Samples `X [N, C, D..]` at the normalized coordinates of `grid [N, D_out.., r]`.
    GridSample {
        /// Interpolation.
        mode: GridSampleMode,
        /// Values outside the input.
        padding_mode: GridPadding,
        /// Whether -1 and 1 are the centres of the corner pixels (else their outer edges).
        align_corners: bool,
    },
    /// Builds the sampling grid of an affine transform `theta [N, r, r+1]` for an output of
    /// size `size` (input 1).
    AffineGrid {
        /// As for GridSample.
        align_corners: bool,
    },
    /// Pools each region of interest (`rois [R, 4]`, `batch_indices [R]`) of `X` into a fixed
    /// grid by bilinear sampling.
    RoiAlign {
        /// Max pooling of the samples (else average).
        max: bool,
        /// Rows of the pooled grid.
        output_height: usize,
        /// Columns of the pooled grid.
        output_width: usize,
        /// Samples per bin and axis; 0 means adaptive (`ceil(roi size / bins)`).
        sampling_ratio: usize,
        /// Multiplies the roi coordinates into input pixels.
        spatial_scale: f32,
        /// Whether roi coordinates are shifted by half a pixel (`coordinate_transformation_mode`
        /// `half_pixel`, the opset 16 default) rather than used as given (`output_half_pixel`).
        half_pixel: bool,
    },
    /// Greedy non-maximum suppression per batch and class; inputs
    /// `boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold`.
    NonMaxSuppression {
        /// Whether boxes are `[x_center, y_center, width, height]` (else two corners).
        center_point_box: bool,
    },
    /// Rearranges columns `[N, C * prod(block), L]` back into an image (inputs 1 and 2 are the
    /// image and block shapes), summing overlaps.
    Col2Im {
        /// Dilation per spatial axis; all 1 when empty.
        dilations: Vec<usize>,
        /// Padding, begins then ends; all 0 when empty.
        pads: Vec<usize>,
        /// Stride per spatial axis; all 1 when empty.
        strides: Vec<usize>,
    },
}

impl SpatialOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            SpatialOp::Resize(_) => "Resize",
            SpatialOp::GridSample { .. } => "GridSample",
            SpatialOp::AffineGrid { .. } => "AffineGrid",
            SpatialOp::RoiAlign { .. } => "RoiAlign",
            SpatialOp::NonMaxSuppression { .. } => "NonMaxSuppression",
            SpatialOp::Col2Im { .. } => "Col2Im",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = num_outputs;
        let x = input_ty(inputs, 0);
        let unknown_dims = |n: usize| Some(vec![Dim::Unknown; n]);
        let out = match self {
            SpatialOp::Resize(a) => TypeInfo { dtype: x.dtype, shape: resize_shape(a, &x, inputs) },
            SpatialOp::GridSample { .. } => {
                let grid = input_ty(inputs, 1);
                let shape = match (&x.shape, &grid.shape) {
                    (Some(xs), Some(gs)) if xs.len() >= 2 && gs.len() == xs.len() => {
                        let mut s = vec![xs[0].clone(), xs[1].clone()];
                        s.extend(gs[1..gs.len() - 1].iter().cloned());
                        Some(s)
                    }
                    (Some(xs), _) => unknown_dims(xs.len()),
                    _ => None,
                };
                TypeInfo { dtype: x.dtype, shape }
            }
            SpatialOp::AffineGrid { .. } => {
                let shape = input_value(inputs, 1).map(|size| {
                    let s: Vec<i64> = size.to_i64_vec();
                    let mut out: Vec<Dim> =
                        s.iter().take(1).chain(s.iter().skip(2)).map(|&d| Dim::Known(d.max(0) as usize)).collect();
                    out.push(Dim::Known(s.len().saturating_sub(2)));
                    out
                });
                TypeInfo { dtype: x.dtype, shape }
            }
            SpatialOp::RoiAlign { output_height, output_width, .. } => {
                let rois = input_ty(inputs, 1);
                let r = rois.shape.as_ref().and_then(|s| s.first().cloned()).unwrap_or(Dim::Unknown);
                let c = x.shape.as_ref().and_then(|s| s.get(1).cloned()).unwrap_or(Dim::Unknown);
                TypeInfo {
                    dtype: x.dtype,
                    shape: Some(vec![r, c, Dim::Known(*output_height), Dim::Known(*output_width)]),
                }
            }
            SpatialOp::NonMaxSuppression { .. } => {
                TypeInfo { dtype: Some(DType::I64), shape: Some(vec![Dim::Unknown, Dim::Known(3)]) }
            }
            SpatialOp::Col2Im { .. } => {
                let rank = input_ty(inputs, 1).shape.and_then(|s| s.first().and_then(Dim::known));
                TypeInfo { dtype: x.dtype, shape: rank.and_then(|r| unknown_dims(r + 2)) }
            }
        };
        Ok(vec![out])
    }
}

/// The output shape of Resize where the scales or sizes are constant; otherwise the rank.
fn resize_shape(a: &ResizeAttrs, x: &TypeInfo, inputs: &[Option<InferInput<'_>>]) -> Option<Vec<Dim>> {
    let shape = x.shape.clone()?;
    let r = shape.len();
    let unknown = Some(vec![Dim::Unknown; r]);
    let axes: Vec<usize> = match &a.axes {
        Some(v) => match v.iter().map(|&d| normalize_axis(d, r)).collect::<Result<Vec<_>, _>>() {
            Ok(axes) => axes,
            Err(_) => return unknown,
        },
        None => (0..r).collect(),
    };
    let non_empty = |i: usize| input_value(inputs, i).filter(|t| !t.is_empty());
    let scales: Option<Vec<f64>> = match &a.inputs {
        ResizeInputs::RoiScalesSizes => {
            if let Some(sizes) = non_empty(3) {
                let sizes = sizes.to_i64_vec();
                if sizes.len() != axes.len() || a.keep_aspect_ratio_policy != AspectRatioPolicy::Stretch {
                    return unknown;
                }
                let mut out = shape;
                for (&d, &s) in axes.iter().zip(&sizes) {
                    out[d] = Dim::Known(s.max(0) as usize);
                }
                return Some(out);
            }
            non_empty(2).map(|t| t.to_f64_vec())
        }
        ResizeInputs::Scales => non_empty(1).map(|t| t.to_f64_vec()),
        ResizeInputs::Attr(v) => Some(v.iter().map(|&s| s as f64).collect()),
    };
    match scales {
        Some(scales) if scales.len() == axes.len() => {
            let mut out = shape;
            for (&d, &s) in axes.iter().zip(&scales) {
                out[d] = match out[d].known() {
                    Some(n) if s > 0.0 => Dim::Known((s * n as f64) as usize),
                    _ => Dim::Unknown,
                };
            }
            Some(out)
        }
        _ => unknown,
    }
}

// -------------------------------------------------------------------------------------------
// Resize's sampling, shared by the CPU reference and the CUDA planner's tap tables.

/// The input taps (index, weight) of output index `o` along one axis, or `None` where the
/// sample falls outside the input in tf_crop_and_resize mode.
pub fn resize_taps(
    a: &ResizeAttrs,
    o: usize,
    in_len: usize,
    out_len: usize,
    scale: f64,
    roi: (f64, f64),
) -> Option<Vec<(usize, f64)>> {
    let xo = o as f64;
    let inw = in_len as f64;
    // The reference uses the unrounded output length here.
    let outw = scale * inw;
    let x = match a.coordinate_transformation_mode {
        CoordTransform::AlignCorners => {
            if outw == 1.0 {
                0.0
            } else {
                xo * (inw - 1.0) / (outw - 1.0)
            }
        }
        CoordTransform::Asymmetric => xo / scale,
        CoordTransform::TfCropAndResize => {
            let (s, e) = roi;
            let x = if outw == 1.0 { (e - s) * (inw - 1.0) / 2.0 } else { xo * (e - s) * (inw - 1.0) / (outw - 1.0) }
                + s * (inw - 1.0);
            if x < 0.0 || x > inw - 1.0 {
                return None;
            }
            x
        }
        CoordTransform::PytorchHalfPixel => {
            if outw == 1.0 {
                -0.5
            } else {
                (xo + 0.5) / scale - 0.5
            }
        }
        CoordTransform::HalfPixel => (xo + 0.5) / scale - 0.5,
        CoordTransform::HalfPixelSymmetric => {
            let adjustment = out_len as f64 / outw;
            let offset = inw / 2.0 * (1.0 - adjustment);
            offset + (xo + 0.5) / scale - 0.5
        }
    };
    let floor = x.floor();
    // The ratio is in (0, 1]: an integral coordinate counts as the right end of its interval.
    let ratio = if x == floor { 1.0 } else { x - floor };
    let mut coeffs = match a.mode {
        ResizeMode::Nearest => {
            let right = if ratio == 1.0 {
                true
            } else {
                match a.nearest_mode {
                    NearestMode::RoundPreferFloor => ratio > 0.5,
                    NearestMode::RoundPreferCeil => ratio >= 0.5,
                    NearestMode::Floor => false,
                    NearestMode::Ceil => true,
                }
            };
            if right {
                vec![0.0, 1.0]
            } else {
                vec![1.0, 0.0]
            }
        }
        ResizeMode::Linear if a.antialias => {
            let s = scale.min(1.0);
            let start = (-1.0 / s).floor() as i64 + 1;
            let footprint = 2 - 2 * start;
            let c: Vec<f64> =
                (start..start + footprint).map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0)).collect();
            normalized(c)
        }
        ResizeMode::Linear => vec![1.0 - ratio, ratio],
        ResizeMode::Cubic if a.antialias => {
            let s = scale.min(1.0);
            let aa = a.cubic_coeff_a as f64;
            let start = (-2.0 / s).floor() as i64 + 1;
            let end = 2 - start;
            let c: Vec<f64> = (start..end).map(|i| cubic_kernel(s * (i as f64 - ratio), aa)).collect();
            normalized(c)
        }
        ResizeMode::Cubic => {
            let aa = a.cubic_coeff_a as f64;
            vec![
                cubic_kernel(ratio + 1.0, aa),
                cubic_kernel(ratio, aa),
                cubic_kernel(1.0 - ratio, aa),
                cubic_kernel(2.0 - ratio, aa),
            ]
        }
    };
    // The reference picks the n indices nearest to x (ties to the smaller) in the input padded
    // by n/2 edge copies on each side; they form a window starting at ceil(x) - n/2, slid to
    // stay inside the padded range.
    let n = coeffs.len() as i64;
    let pad = (n + 1) / 2;
    let len = in_len as i64;
    let start = (x.ceil() as i64 - n / 2).clamp(-pad, (len + pad - n).max(-pad));
    let idx: Vec<i64> = (start..start + n).collect();
    if a.exclude_outside {
        for (c, &i) in coeffs.iter_mut().zip(&idx) {
            if i < 0 || i >= len {
                *c = 0.0;
            }
        }
        coeffs = normalized(coeffs);
    }
    Some(idx.iter().zip(coeffs).map(|(&i, c)| (i.clamp(0, (len - 1).max(0)) as usize, c)).collect())
}

/// Keys' cubic convolution kernel with parameter `a`.
pub fn cubic_kernel(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

fn normalized(c: Vec<f64>) -> Vec<f64> {
    let s: f64 = c.iter().sum();
    c.into_iter().map(|v| v / s).collect()
}
