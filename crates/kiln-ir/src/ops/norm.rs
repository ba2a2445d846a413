//! Normalizations (batch, instance, layer, group, RMS, LRN, Lp, mean-variance) and the softmax
//! family.

use super::infer::*;
use crate::{DType, Dim, TypeInfo};

/// Normalizations (batch, instance, layer, group, RMS, LRN, Lp, mean-variance) and the softmax
/// family.
#[derive(Clone, Debug, PartialEq)]
pub enum NormOp {
    /// Per-channel normalization of `[N, C, ...]` with given (inference) or batch (training)
    /// statistics; inputs X, scale, B, input_mean, input_var.
    BatchNormalization {
        /// Added to the variance.
        epsilon: f32,
        /// Weight of the running statistics when updating them in training mode.
        momentum: f32,
        /// Whether statistics come from the batch and outputs 1 and 2 are the updated running
        /// mean and variance.
        training_mode: bool,
    },
    /// Normalization of each `[n, c]` plane; inputs X, scale, B.
    InstanceNormalization {
        /// Added to the variance.
        epsilon: f32,
    },
    /// Normalization over the dims from `axis` on; inputs X, Scale, optional B; optional outputs
    /// Mean and InvStdDev.
    LayerNormalization {
        /// The first normalized dim (may be negative).
        axis: i64,
        /// Added to the variance.
        epsilon: f32,
        /// The ONNX type code of the statistics (1 is f32).
        stash_type: i64,
    },
    /// Normalization over groups of channels; inputs X, scale, bias (one per group in opset 18,
    /// one per channel from opset 21; the kernel tells them apart by length).
    GroupNormalization {
        /// Number of channel groups.
        num_groups: usize,
        /// Added to the variance.
        epsilon: f32,
        /// The ONNX type code of the statistics (1 is f32).
        stash_type: i64,
    },
    /// Division by the root mean square over the dims from `axis` on; inputs X, scale.
    RMSNormalization {
        /// The first normalized dim (may be negative).
        axis: i64,
        /// Added to the mean square.
        epsilon: f32,
        /// The ONNX type code of the statistics (1 is f32).
        stash_type: i64,
    },
    /// Local response normalization across channels.
    LRN {
        /// Scale of the sum of squares.
        alpha: f32,
        /// Exponent.
        beta: f32,
        /// Offset.
        bias: f32,
        /// Number of channels summed over.
        size: usize,
    },
    /// Division by the p-norm along one axis.
    LpNormalization {
        /// The axis (may be negative).
        axis: i64,
        /// The norm: 1 or 2.
        p: i64,
    },
    /// `(x - mean) / sqrt(var)` over the given axes.
    MeanVarianceNormalization {
        /// The axes the statistics are taken over (may be negative).
        axes: Vec<i64>,
    },
    /// `exp(x) / sum(exp(x))`.
    Softmax {
        /// The axis (may be negative).
        axis: i64,
        /// Before opset 13: the op works on the input flattened to 2-D at `axis`, that is over
        /// all dims from `axis` on.
        coerce_2d: bool,
    },
    /// `log(softmax(x))`.
    LogSoftmax {
        /// The axis (may be negative).
        axis: i64,
        /// Before opset 13: over all dims from `axis` on.
        coerce_2d: bool,
    },
    /// 1 at the first maximum, 0 elsewhere.
    Hardmax {
        /// The axis (may be negative).
        axis: i64,
        /// Before opset 13: over all dims from `axis` on.
        coerce_2d: bool,
    },
}

impl NormOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            NormOp::BatchNormalization { .. } => "BatchNormalization",
            NormOp::InstanceNormalization { .. } => "InstanceNormalization",
            NormOp::LayerNormalization { .. } => "LayerNormalization",
            NormOp::GroupNormalization { .. } => "GroupNormalization",
            NormOp::RMSNormalization { .. } => "RMSNormalization",
            NormOp::LRN { .. } => "LRN",
            NormOp::LpNormalization { .. } => "LpNormalization",
            NormOp::MeanVarianceNormalization { .. } => "MeanVarianceNormalization",
            NormOp::Softmax { .. } => "Softmax",
            NormOp::LogSoftmax { .. } => "LogSoftmax",
            NormOp::Hardmax { .. } => "Hardmax",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let x = input_ty(inputs, 0);
        let rank = x.rank();
        // Every op here keeps the shape; checking the axis catches a wrong rank early.
        match self {
            NormOp::LayerNormalization { axis, .. }
            | NormOp::RMSNormalization { axis, .. }
            | NormOp::LpNormalization { axis, .. }
            | NormOp::Softmax { axis, .. }
            | NormOp::LogSoftmax { axis, .. }
            | NormOp::Hardmax { axis, .. } => {
                if let Some(r) = rank {
                    normalize_axis(*axis, r)?;
                }
            }
            NormOp::BatchNormalization { .. }
            | NormOp::InstanceNormalization { .. }
            | NormOp::GroupNormalization { .. }
            | NormOp::LRN { .. } => {
                if let Some(r) = rank.filter(|&r| r < 2) {
                    return Err(format!("{} needs an input of rank 2 or more, found rank {r}", self.name()));
                }
            }
            NormOp::MeanVarianceNormalization { .. } => {}
        }
        let mut out = vec![x.clone()];
        match self {
            NormOp::BatchNormalization { training_mode: true, .. } => {
                let c = x.shape.as_ref().map(|s| vec![s[1].clone()]);
                for i in [3, 4] {
                    let ty = input_ty(inputs, i);
                    out.push(TypeInfo { dtype: ty.dtype.or(x.dtype), shape: c.clone() });
                }
            }
            NormOp::LayerNormalization { axis, stash_type, .. } => {
                let shape = match &x.shape {
                    Some(s) => {
                        let a = normalize_axis(*axis, s.len())?;
                        Some(s.iter().enumerate().map(|(i, d)| if i < a { d.clone() } else { Dim::Known(1) }).collect())
                    }
                    None => None,
                };
                let dtype = stash_dtype(*stash_type).or(x.dtype);
                out.push(TypeInfo { dtype, shape: shape.clone() });
                out.push(TypeInfo { dtype, shape });
            }
            _ => {}
        }
        out.truncate(num_outputs.max(1));
        Ok(out)
    }
}

/// The element type an ONNX `stash_type` code names, for the types the norms compute in.
pub fn stash_dtype(code: i64) -> Option<DType> {
    match code {
        1 => Some(DType::F32),
        10 => Some(DType::F16),
        11 => Some(DType::F64),
        16 => Some(DType::BF16),
        _ => None,
    }
}
