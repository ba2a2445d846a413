//! Recurrent layers: RNN, GRU, LSTM.
//!
//! The three share their inputs (`X, W, R, B, sequence_lens, initial_h`, plus `initial_c` and
//! `P` for LSTM), their direction and layout handling, and their activation functions, which
//! [`RecurrentAttrs`] gathers; each variant adds what is particular to its cell.

use super::infer::*;
use crate::{Dim, TypeInfo};

/// Which way a recurrent layer walks the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RnnDirection {
    /// First step to last.
    Forward,
    /// Last step to first.
    Reverse,
    /// Both, with separate weights; outputs stack the two along the direction axis.
    Bidirectional,
}

impl RnnDirection {
    /// How many directions the weights and outputs hold.
    pub fn count(self) -> usize {
        match self {
            RnnDirection::Bidirectional => 2,
            _ => 1,
        }
    }
}

/// An activation function of a recurrent cell, with its parameters resolved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RnnActivation {
    /// `max(0, x)`.
    Relu,
    /// `tanh(x)`.
    Tanh,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `alpha * x + beta`.
    Affine {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// `x` if positive, else `alpha * x`.
    LeakyRelu {
        /// Negative slope.
        alpha: f32,
    },
    /// `x` if above `alpha`, else 0.
    ThresholdedRelu {
        /// Threshold.
        alpha: f32,
    },
    /// `alpha * tanh(beta * x)`.
    ScaledTanh {
        /// Output scale.
        alpha: f32,
        /// Input scale.
        beta: f32,
    },
    /// `clamp(alpha * x + beta, 0, 1)`.
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// `x` if positive, else `alpha * (exp(x) - 1)`.
    Elu {
        /// Negative scale.
        alpha: f32,
    },
    /// `x / (1 + |x|)`.
    Softsign,
    /// `ln(1 + exp(x))`.
    Softplus,
}

impl RnnActivation {
    /// Applies the function.
    pub fn apply(self, x: f64) -> f64 {
        match self {
            RnnActivation::Relu => x.max(0.0),
            RnnActivation::Tanh => x.tanh(),
            RnnActivation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            RnnActivation::Affine { alpha, beta } => alpha as f64 * x + beta as f64,
            RnnActivation::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha as f64 * x
                }
            }
            RnnActivation::ThresholdedRelu { alpha } => {
                if x > alpha as f64 {
                    x
                } else {
                    0.0
                }
            }
            RnnActivation::ScaledTanh { alpha, beta } => alpha as f64 * (beta as f64 * x).tanh(),
            RnnActivation::HardSigmoid { alpha, beta } => (alpha as f64 * x + beta as f64).clamp(0.0, 1.0),
            RnnActivation::Elu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha as f64 * (x.exp() - 1.0)
                }
            }
            RnnActivation::Softsign => x / (1.0 + x.abs()),
            RnnActivation::Softplus => x.exp().ln_1p(),
        }
    }
}

/// The attributes every recurrent layer has.
#[derive(Clone, Debug, PartialEq)]
pub struct RecurrentAttrs {
    /// The size of the hidden state, if the model states it (otherwise taken from `R`).
    pub hidden_size: Option<usize>,
    /// Which way the sequence is walked.
    pub direction: RnnDirection,
    /// The cell's activation functions, per direction in order (`f, g, h` for LSTM, `f, g` for
    /// GRU, `f` for RNN), so `direction.count()` times as many as the cell uses.
    pub activations: Vec<RnnActivation>,
    /// Gate pre-activations are clamped to `[-clip, clip]` where given.
    pub clip: Option<f32>,
    /// Whether inputs and outputs put the batch first (`layout = 1`) instead of the sequence.
    pub batch_first: bool,
}

/// Recurrent layers: RNN, GRU, LSTM.
#[derive(Clone, Debug, PartialEq)]
pub enum RnnOp {
    /// The Elman cell: `H = f(X W^T + H R^T + b)`.
    Rnn(RecurrentAttrs),
    /// The gated recurrent unit, gates in `z, r, h` order.
    Gru {
        /// Shared attributes.
        attrs: RecurrentAttrs,
        /// Whether the reset gate applies after the recurrent product (`linear_before_reset`).
        linear_before_reset: bool,
    },
    /// Long short-term memory, gates in `i, o, f, c` order.
    Lstm {
        /// Shared attributes.
        attrs: RecurrentAttrs,
        /// Whether the input gate is coupled to the forget gate (`i = 1 - f`).
        input_forget: bool,
    },
}

impl RnnOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            RnnOp::Rnn(_) => "RNN",
            RnnOp::Gru { .. } => "GRU",
            RnnOp::Lstm { .. } => "LSTM",
        }
    }

    /// The shared attributes.
    pub fn attrs(&self) -> &RecurrentAttrs {
        match self {
            RnnOp::Rnn(a) | RnnOp::Gru { attrs: a, .. } | RnnOp::Lstm { attrs: a, .. } => a,
        }
    }

    /// The type rule: `Y` is `[seq, dirs, batch, hidden]`, `Y_h` and `Y_c` are
    /// `[dirs, batch, hidden]` (batch first with `layout = 1`), all of `X`'s type.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let a = self.attrs();
        let x = input_ty(inputs, 0);
        let r = input_ty(inputs, 2);
        let dtype = x.dtype.or(first_dtype(inputs));
        let hidden = match (a.hidden_size, r.shape.as_ref().and_then(|s| s.get(2))) {
            (Some(h), _) => Dim::Known(h),
            (None, Some(d)) => d.clone(),
            (None, None) => Dim::Unknown,
        };
        let dirs = Dim::Known(a.direction.count());
        let (seq, batch) = match &x.shape {
            Some(s) if s.len() == 3 => {
                if a.batch_first {
                    (s[1].clone(), s[0].clone())
                } else {
                    (s[0].clone(), s[1].clone())
                }
            }
            Some(s) => return Err(format!("X must have rank 3, found rank {}", s.len())),
            None => (Dim::Unknown, Dim::Unknown),
        };
        let y = if a.batch_first {
            vec![batch.clone(), seq, dirs.clone(), hidden.clone()]
        } else {
            vec![seq, dirs.clone(), batch.clone(), hidden.clone()]
        };
        let state = if a.batch_first { vec![batch, dirs, hidden] } else { vec![dirs, batch, hidden] };
        let mut out = vec![TypeInfo { dtype, shape: Some(y) }];
        out.extend((1..num_outputs).map(|_| TypeInfo { dtype, shape: Some(state.clone()) }));
        Ok(out)
    }
}
