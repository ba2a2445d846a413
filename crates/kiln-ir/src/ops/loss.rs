//! Loss functions: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.
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

/// Loss functions: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.
#[derive(Clone, Debug, PartialEq)]
pub enum LossOp {
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

impl LossOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            LossOp::Resize(_) => "Resize",
            LossOp::GridSample { .. } => "GridSample",
            LossOp::AffineGrid { .. } => "AffineGrid",
            LossOp::RoiAlign { .. } => "RoiAlign",
            LossOp::NonMaxSuppression { .. } => "NonMaxSuppression",
            LossOp::Col2Im { .. } => "Col2Im",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = num_outputs;
        let x = input_ty(inputs, 0);
        let unknown_dims = |n: usize| Some(vec![Dim::Unknown; n]);
        let out = match self {
            LossOp::Resize(a) => TypeInfo { dtype: x.dtype, shape: resize_shape(a, &x, inputs) },
            LossOp::GridSample { .. } => {
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
            LossOp::AffineGrid { .. } => {
                let shape = input_value(inputs, 1).map(|size| {
                    let s: Vec<i64> = size.to_i64_vec();
                    let mut out: Vec<Dim> =
                        s.iter().take(1).chain(s.iter().skip(2)).map(|&d| Dim::Known(d.max(0) as usize)).collect();
                    out.push(Dim::Known(s.len().saturating_sub(2)));
                    out
                });
                TypeInfo { dtype: x.dtype, shape }
            }
            LossOp::RoiAlign { output_height, output_width, .. } => {
                let rois = input_ty(inputs, 1);
                let r = rois.shape.as_ref().and_then(|s| s.first().cloned()).unwrap_or(Dim::Unknown);
                let c = x.shape.as_ref().and_then(|s| s.get(1).cloned()).unwrap_or(Dim::Unknown);
                TypeInfo {
                    dtype: x.dtype,
                    shape: Some(vec![r, c, Dim::Known(*output_height), Dim::Known(*output_width)]),
                }
            }
            LossOp::NonMaxSuppression { .. } => {
                TypeInfo { dtype: Some(DType::I64), shape: Some(vec![Dim::Unknown, Dim::Known(3)]) }
            }
            LossOp::Col2Im { .. } => {
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
