//! Signal processing: DFT, STFT, window functions, MelWeightMatrix.
//!
//! Complex values are stored as a trailing axis of length 2 (real, imaginary); a real signal
//! may instead have a trailing axis of length 1.

use super::infer::*;
use crate::{DType, Dim, TypeInfo};

/// The window functions, which share one signature: a scalar `size` in, `[size]` out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowFunction {
    /// `sin^2(pi n / N)`.
    Hann,
    /// `25/46 - 21/46 cos(2 pi n / N)`.
    Hamming,
    /// `0.42 - 0.5 cos(2 pi n / N) + 0.08 cos(4 pi n / N)`.
    Blackman,
}

/// Signal processing: DFT, STFT, window functions, MelWeightMatrix.
#[derive(Clone, Debug, PartialEq)]
pub enum SignalOp {
    /// Discrete Fourier transform along one axis of `input [.., 1 or 2]`, with inputs
    /// `input, dft_length, axis` (`axis` is an input from opset 20 on).
    DFT {
        /// The inverse transform (scaled by `1 / dft_length`).
        inverse: bool,
        /// Only the first `dft_length / 2 + 1` frequencies are output.
        onesided: bool,
        /// The axis, where the model's opset has it as an attribute; `None` means input 2
        /// (default -2).
        axis: Option<i64>,
    },
    /// Short-time Fourier transform of `signal [batch, length, 1 or 2]` with inputs
    /// `signal, frame_step, window, frame_length`; output `[batch, frames, bins, 2]`.
    STFT {
        /// Only the first `frame_length / 2 + 1` frequencies are output.
        onesided: bool,
    },
    /// A window function of the length given by its scalar input.
    Window {
        /// Which function.
        function: WindowFunction,
        /// Periodic (`N` is the size) rather than symmetric (`N` is the size minus one).
        periodic: bool,
        /// The output element type.
        output_datatype: DType,
    },
    /// The matrix `[dft_length / 2 + 1, num_mel_bins]` that maps a spectrum onto mel bands;
    /// inputs `num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz`.
    MelWeightMatrix {
        /// The output element type.
        output_datatype: DType,
    },
}

impl SignalOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            SignalOp::DFT { .. } => "DFT",
            SignalOp::STFT { .. } => "STFT",
            SignalOp::Window { function: WindowFunction::Hann, .. } => "HannWindow",
            SignalOp::Window { function: WindowFunction::Hamming, .. } => "HammingWindow",
            SignalOp::Window { function: WindowFunction::Blackman, .. } => "BlackmanWindow",
            SignalOp::MelWeightMatrix { .. } => "MelWeightMatrix",
        }
    }

    /// The type rule: output types from input types, with sizes where the inputs that set
    /// them are constant.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = num_outputs;
        let x = input_ty(inputs, 0);
        let scalar = |i: usize| input_value(inputs, i).and_then(|t| t.to_i64_vec().first().copied());
        let present = |i: usize| inputs.get(i).is_some_and(Option::is_some);
        let size = |v: Option<i64>| v.map_or(Dim::Unknown, |n| Dim::Known(n.max(0) as usize));
        let out = match self {
            SignalOp::DFT { onesided, axis, .. } => {
                let shape = x.shape.as_ref().map(|s| {
                    let mut out = s.clone();
                    let axis = axis.or_else(|| if present(2) { scalar(2) } else { Some(-2) });
                    if let Some(last) = out.last_mut() {
                        *last = Dim::Known(2);
                    }
                    if let Some(a) = axis.and_then(|a| normalize_axis(a, s.len()).ok()) {
                        let n = if present(1) { scalar(1).map(|n| n.max(0) as usize) } else { s[a].known() };
                        out[a] = match n {
                            Some(n) if *onesided => Dim::Known(n / 2 + 1),
                            Some(n) => Dim::Known(n),
                            None => Dim::Unknown,
                        };
                    }
                    out
                });
                TypeInfo { dtype: x.dtype, shape }
            }
            SignalOp::STFT { .. } => {
                let batch = x.shape.as_ref().and_then(|s| s.first().cloned()).unwrap_or(Dim::Unknown);
                TypeInfo { dtype: x.dtype, shape: Some(vec![batch, Dim::Unknown, Dim::Unknown, Dim::Known(2)]) }
            }
            SignalOp::Window { output_datatype, .. } => {
                TypeInfo { dtype: Some(*output_datatype), shape: Some(vec![size(scalar(0))]) }
            }
            SignalOp::MelWeightMatrix { output_datatype } => TypeInfo {
                dtype: Some(*output_datatype),
                shape: Some(vec![size(scalar(1).map(|n| n / 2 + 1)), size(scalar(0))]),
            },
        };
        Ok(vec![out])
    }
}
