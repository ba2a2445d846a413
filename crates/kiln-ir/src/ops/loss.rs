//! Loss functions: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.

use super::infer::*;
use crate::{Dim, TypeInfo};

/// How a loss reduces its per-element values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReduction {
    /// No reduction: one loss per target element.
    None,
    /// The sum of the weighted losses.
    Sum,
    /// The sum of the weighted losses divided by the sum of the weights of the targets that
    /// are not ignored (by their count when there are no weights).
    Mean,
}

/// Loss functions: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.
///
/// Both take `input [N, C, d1..dk]` (log-probabilities, or scores for the softmax form),
/// `target [N, d1..dk]` of class indices and an optional per-class `weight [C]`.
#[derive(Clone, Debug, PartialEq)]
pub enum LossOp {
    /// `loss[n, d] = -input[n, target[n, d], d] * weight[target[n, d]]`, then reduced.
    NegativeLogLikelihoodLoss {
        /// The reduction.
        reduction: LossReduction,
        /// A target value that contributes nothing (neither loss nor weight).
        ignore_index: Option<i64>,
    },
    /// NegativeLogLikelihoodLoss of the log-softmax of the scores along axis 1; the optional
    /// second output is that log-softmax.
    SoftmaxCrossEntropyLoss {
        /// The reduction.
        reduction: LossReduction,
        /// A target value that contributes nothing (neither loss nor weight).
        ignore_index: Option<i64>,
    },
}

impl LossOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            LossOp::NegativeLogLikelihoodLoss { .. } => "NegativeLogLikelihoodLoss",
            LossOp::SoftmaxCrossEntropyLoss { .. } => "SoftmaxCrossEntropyLoss",
        }
    }

    /// The reduction of either loss.
    pub fn reduction(&self) -> LossReduction {
        match self {
            LossOp::NegativeLogLikelihoodLoss { reduction, .. } | LossOp::SoftmaxCrossEntropyLoss { reduction, .. } => {
                *reduction
            }
        }
    }

    /// The type rule: the loss has the input's type and the target's shape (a scalar when
    /// reduced); the log-probabilities have the input's type and shape.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let x = input_ty(inputs, 0);
        let target = input_ty(inputs, 1);
        if let (Some(xs), Some(ts)) = (&x.shape, &target.shape) {
            if xs.len() < 2 || ts.len() + 1 != xs.len() {
                return Err(format!("input of rank {} needs a target of rank {}", xs.len(), xs.len().max(2) - 1));
            }
        }
        let shape: Option<Vec<Dim>> = match self.reduction() {
            LossReduction::None => target.shape.clone(),
            LossReduction::Sum | LossReduction::Mean => Some(vec![]),
        };
        let mut out = vec![TypeInfo { dtype: x.dtype, shape }];
        if num_outputs > 1 {
            out.push(x);
        }
        Ok(out)
    }
}
