//! Pooling over spatial dims: max, average, Lp, global forms, unpooling and RoI pooling.

use super::infer::*;
use crate::{DType, Dim, TypeInfo};

/// How a windowed op pads when its padding is not given explicitly (ONNX `auto_pad`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoPad {
    /// Use the explicit `pads`.
    NotSet,
    /// Pad so that `out = ceil(in / stride)`, the odd extra cell at the end.
    SameUpper,
    /// Pad so that `out = ceil(in / stride)`, the odd extra cell at the beginning.
    SameLower,
    /// No padding.
    Valid,
}

/// The window geometry shared by MaxPool, AveragePool and LpPool.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolWindow {
    /// Window size per spatial dim.
    pub kernel_shape: Vec<usize>,
    /// Step between windows per spatial dim.
    pub strides: Vec<usize>,
    /// Explicit padding in ONNX order: the begin of every spatial dim, then the ends.
    /// Used only when `auto_pad` is [`AutoPad::NotSet`].
    pub pads: Vec<usize>,
    /// Automatic padding.
    pub auto_pad: AutoPad,
    /// Spacing between window cells per spatial dim.
    pub dilations: Vec<usize>,
    /// Whether the output size rounds up instead of down.
    pub ceil_mode: bool,
}

/// Where one spatial dim's windows lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowDim {
    /// The input size.
    pub input: usize,
    /// The number of windows (the output size).
    pub output: usize,
    /// Padding before the input.
    pub pad_begin: usize,
    /// Padding after the input.
    pub pad_end: usize,
    /// Window size.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Spacing between window cells.
    pub dilation: usize,
}

impl PoolWindow {
    /// The number of spatial dims.
    pub fn rank(&self) -> usize {
        self.kernel_shape.len()
    }

    /// Resolves the windows of spatial dim `i` for an input of size `input`.
    pub fn dim(&self, i: usize, input: usize) -> Result<WindowDim, String> {
        let (Some(&kernel), Some(&stride), Some(&dilation)) =
            (self.kernel_shape.get(i), self.strides.get(i), self.dilations.get(i))
        else {
            return Err(format!("spatial dim {i} is beyond the {}-d window", self.rank()));
        };
        if kernel == 0 || stride == 0 || dilation == 0 {
            return Err("kernel_shape, strides and dilations must be positive".into());
        }
        let span = (kernel - 1) * dilation + 1;
        let (output, pad_begin, pad_end) = match self.auto_pad {
            AutoPad::SameUpper | AutoPad::SameLower => {
                let output = input.div_ceil(stride);
                let total = ((output.max(1) - 1) * stride + span).saturating_sub(input);
                let small = total / 2;
                let big = total - small;
                if self.auto_pad == AutoPad::SameUpper {
                    (output, small, big)
                } else {
                    (output, big, small)
                }
            }
            AutoPad::Valid | AutoPad::NotSet => {
                let (pb, pe) = if self.auto_pad == AutoPad::Valid {
                    (0, 0)
                } else {
                    (self.pads.get(i).copied().unwrap_or(0), self.pads.get(i + self.rank()).copied().unwrap_or(0))
                };
                let padded = input + pb + pe;
                if padded < span {
                    return Err(format!(
                        "the window spans {span} cells but spatial dim {i} has only {padded} with padding"
                    ));
                }
                let mut output =
                    if self.ceil_mode { (padded - span).div_ceil(stride) + 1 } else { (padded - span) / stride + 1 };
                // A window that would start in the end padding is dropped.
                if self.ceil_mode && (output - 1) * stride >= input + pb {
                    output -= 1;
                }
                (output, pb, pe)
            }
        };
        Ok(WindowDim { input, output, pad_begin, pad_end, kernel, stride, dilation })
    }

    /// Resolves every spatial dim of an input whose spatial sizes are `spatial`.
    pub fn dims(&self, spatial: &[usize]) -> Result<Vec<WindowDim>, String> {
        if spatial.len() != self.rank() {
            return Err(format!("input has {} spatial dims but kernel_shape has {}", spatial.len(), self.rank()));
        }
        spatial.iter().enumerate().map(|(i, &n)| self.dim(i, n)).collect()
    }
}

/// Pooling over the spatial dims of an `[N, C, D1, ..., Dk]` tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum PoolOp {
    /// The maximum of each window; the optional second output holds the flat index of the
    /// maximum in the input.
    MaxPool {
        /// The window geometry.
        window: PoolWindow,
        /// Whether indices are computed column-major (ONNX `storage_order` = 1).
        column_major: bool,
    },
    /// The mean of each window.
    AveragePool {
        /// The window geometry.
        window: PoolWindow,
        /// Whether padding cells count in the divisor.
        count_include_pad: bool,
    },
    /// The p-norm of each window.
    LpPool {
        /// The window geometry.
        window: PoolWindow,
        /// The norm's exponent.
        p: f32,
    },
    /// The mean over all spatial dims.
    GlobalAveragePool,
    /// The maximum over all spatial dims.
    GlobalMaxPool,
    /// The p-norm over all spatial dims.
    GlobalLpPool {
        /// The norm's exponent.
        p: f32,
    },
    /// Scatters values back to the positions given by MaxPool's indices; the optional third
    /// input fixes the output shape.
    MaxUnpool {
        /// Window size per spatial dim.
        kernel_shape: Vec<usize>,
        /// Step between windows per spatial dim.
        strides: Vec<usize>,
        /// Padding: begins of every spatial dim, then ends.
        pads: Vec<usize>,
    },
    /// Max pooling of regions of interest (`[batch, x1, y1, x2, y2]` rows) to a fixed grid.
    MaxRoiPool {
        /// Output height and width.
        pooled_shape: [usize; 2],
        /// Scale from RoI coordinates to input coordinates.
        spatial_scale: f32,
    },
}

impl PoolOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            PoolOp::MaxPool { .. } => "MaxPool",
            PoolOp::AveragePool { .. } => "AveragePool",
            PoolOp::LpPool { .. } => "LpPool",
            PoolOp::GlobalAveragePool => "GlobalAveragePool",
            PoolOp::GlobalMaxPool => "GlobalMaxPool",
            PoolOp::GlobalLpPool { .. } => "GlobalLpPool",
            PoolOp::MaxUnpool { .. } => "MaxUnpool",
            PoolOp::MaxRoiPool { .. } => "MaxRoiPool",
        }
    }

    /// The window geometry, for the windowed pools.
    pub fn window(&self) -> Option<&PoolWindow> {
        match self {
            PoolOp::MaxPool { window, .. } | PoolOp::AveragePool { window, .. } | PoolOp::LpPool { window, .. } => {
                Some(window)
            }
            _ => None,
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let x = input_ty(inputs, 0);
        let dtype = x.dtype;
        let shape = match &x.shape {
            None => None,
            Some(s) => {
                if s.len() < 2 {
                    return Err(format!("{} needs an input of rank 2 or more, found rank {}", self.name(), s.len()));
                }
                Some(self.infer_shape(s, inputs)?)
            }
        };
        let mut out = vec![TypeInfo { dtype, shape: shape.clone() }];
        if num_outputs > 1 {
            out.push(TypeInfo { dtype: Some(DType::I64), shape });
        }
        Ok(out)
    }

    fn infer_shape(&self, s: &[Dim], inputs: &[Option<InferInput<'_>>]) -> Result<Vec<Dim>, String> {
        let spatial = &s[2..];
        let mut out = s[..2].to_vec();
        match self {
            PoolOp::MaxPool { window, .. } | PoolOp::AveragePool { window, .. } | PoolOp::LpPool { window, .. } => {
                if spatial.len() != window.rank() {
                    return Err(format!(
                        "input has {} spatial dims but kernel_shape has {}",
                        spatial.len(),
                        window.rank()
                    ));
                }
                for (i, d) in spatial.iter().enumerate() {
                    out.push(match d.known() {
                        Some(n) => Dim::Known(window.dim(i, n)?.output),
                        None => Dim::Unknown,
                    });
                }
            }
            PoolOp::GlobalAveragePool | PoolOp::GlobalMaxPool | PoolOp::GlobalLpPool { .. } => {
                out.extend(spatial.iter().map(|_| Dim::Known(1)));
            }
            PoolOp::MaxUnpool { kernel_shape, strides, pads } => {
                if inputs.get(2).is_some_and(|i| i.is_some()) {
                    return Ok(match input_value(inputs, 2) {
                        Some(v) => v.to_i64_vec().into_iter().map(|d| Dim::Known(d.max(0) as usize)).collect(),
                        None => vec![Dim::Unknown; s.len()],
                    });
                }
                if spatial.len() != kernel_shape.len() {
                    return Err(format!(
                        "input has {} spatial dims but kernel_shape has {}",
                        spatial.len(),
                        kernel_shape.len()
                    ));
                }
                let r = kernel_shape.len();
                for (i, d) in spatial.iter().enumerate() {
                    out.push(match d.known() {
                        Some(n) => Dim::Known(unpool_size(n, kernel_shape[i], strides[i], pads[i], pads[i + r])?),
                        None => Dim::Unknown,
                    });
                }
            }
            PoolOp::MaxRoiPool { pooled_shape, .. } => {
                let rois = input_ty(inputs, 1);
                let n = rois.shape.as_ref().and_then(|r| r.first().cloned()).unwrap_or(Dim::Unknown);
                out = vec![n, s[1].clone(), Dim::Known(pooled_shape[0]), Dim::Known(pooled_shape[1])];
            }
        }
        Ok(out)
    }
}

/// The default output size of MaxUnpool along one spatial dim.
pub fn unpool_size(
    input: usize,
    kernel: usize,
    stride: usize,
    pad_begin: usize,
    pad_end: usize,
) -> Result<usize, String> {
    (input.max(1) - 1)
        .checked_mul(stride)
        .and_then(|v| v.checked_add(kernel))
        .and_then(|v| v.checked_sub(pad_begin + pad_end))
        .ok_or_else(|| format!("MaxUnpool output size is negative for input size {input}"))
}
