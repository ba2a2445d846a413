//! CPU kernels for the signal family: DFT, STFT, window functions, MelWeightMatrix.
//!
//! Transforms compute in f64 and cast back to the input's type. A transform of a power of two
//! length is a radix-2 FFT; any other length is a direct DFT with an exact twiddle table.

use super::common::{expect_float, input, opt_input};
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::signal::WindowFunction;
use kiln_ir::ops::SignalOp;
use kiln_ir::{DType, Tensor};
use std::f64::consts::PI;

pub(super) fn eval(op: &SignalOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let _ = num_outputs;
    let out = match op {
        SignalOp::DFT { inverse, onesided, axis } => dft(inputs, *inverse, *onesided, *axis)?,
        SignalOp::STFT { onesided } => stft(inputs, *onesided)?,
        SignalOp::Window { function, periodic, output_datatype } => {
            let size = scalar_int(inputs, 0, "size")?.ok_or_else(|| OpError::new("input 0 (size) is missing"))?;
            if size < 0 {
                bail!("size must not be negative, found {size}");
            }
            Tensor::from_vec(vec![size as usize], window(*function, size as usize, *periodic))?.cast(*output_datatype)
        }
        SignalOp::MelWeightMatrix { output_datatype } => mel_weight_matrix(inputs)?.cast(*output_datatype),
    };
    Ok(vec![out])
}

/// The value of a scalar (or one-element) integer input, if present.
fn scalar_int(inputs: &[Option<&Tensor>], i: usize, what: &str) -> Result<Option<i64>, OpError> {
    let Some(t) = opt_input(inputs, i) else { return Ok(None) };
    if !t.dtype().is_int() || t.len() != 1 {
        bail!("{what} must be an integer scalar, found {} of shape {:?}", t.dtype(), t.shape());
    }
    Ok(t.to_i64_vec().first().copied())
}

/// The value of a scalar float input.
fn scalar_f64(inputs: &[Option<&Tensor>], i: usize, what: &str) -> Result<f64, OpError> {
    let t = input(inputs, i)?;
    if t.len() != 1 {
        bail!("{what} must be a scalar, found shape {:?}", t.shape());
    }
    Ok(t.to_f64_vec()[0])
}

/// Reads `[.., 1]` (real) or `[.., 2]` (complex) values as complex numbers.
fn complex_values(x: &Tensor, what: &str) -> Result<Vec<(f64, f64)>, OpError> {
    expect_float(x, what)?;
    let v = x.to_f64_vec();
    match x.shape().last() {
        Some(1) => Ok(v.into_iter().map(|re| (re, 0.0)).collect()),
        Some(2) => Ok(v.chunks_exact(2).map(|c| (c[0], c[1])).collect()),
        _ => bail!("{what} must end in an axis of 1 (real) or 2 (complex) values, found shape {:?}", x.shape()),
    }
}

fn complex_tensor(mut shape: Vec<usize>, v: Vec<(f64, f64)>, dtype: DType) -> Result<Tensor, OpError> {
    shape.push(2);
    let flat: Vec<f64> = v.into_iter().flat_map(|(re, im)| [re, im]).collect();
    Ok(Tensor::from_vec(shape, flat)?.cast(dtype))
}

fn dft(inputs: &[Option<&Tensor>], inverse: bool, onesided: bool, axis_attr: Option<i64>) -> Result<Tensor, OpError> {
    let x = input(inputs, 0)?;
    let dtype = x.dtype();
    let values = complex_values(x, "input")?;
    let shape = x.shape();
    let rank = shape.len();
    if rank < 2 {
        bail!("input must have a signal axis and a complex axis, found shape {shape:?}");
    }
    let axis = match axis_attr {
        Some(a) => a,
        None => scalar_int(inputs, 2, "axis")?.unwrap_or(-2),
    };
    // The trailing complex axis cannot be transformed.
    let signal_rank = rank as i64 - 1;
    if axis < -(signal_rank + 1) || axis >= signal_rank || axis == -1 {
        bail!("axis {axis} is out of range for input of shape {shape:?} (the last axis holds the complex parts)");
    }
    let axis = axis.rem_euclid(rank as i64) as usize;
    let n = match scalar_int(inputs, 1, "dft_length")? {
        Some(n) if n < 1 => bail!("dft_length must be positive, found {n}"),
        Some(n) => n as usize,
        None => shape[axis],
    };
    if n == 0 {
        bail!("cannot transform an empty axis");
    }
    let kept = if onesided { n / 2 + 1 } else { n };
    let len = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..rank - 1].iter().product();
    let plan = Fft::new(n, inverse);
    let mut out = vec![(0.0, 0.0); outer * kept * inner];
    let mut buf = vec![(0.0, 0.0); n];
    for o in 0..outer {
        for i in 0..inner {
            // Zero-pad or truncate the sequence to the transform length.
            for (k, b) in buf.iter_mut().enumerate() {
                *b = if k < len { values[(o * len + k) * inner + i] } else { (0.0, 0.0) };
            }
            plan.run(&mut buf);
            for (k, &b) in buf.iter().take(kept).enumerate() {
                out[(o * kept + k) * inner + i] = b;
            }
        }
    }
    let mut out_shape = shape[..rank - 1].to_vec();
    out_shape[axis] = kept;
    complex_tensor(out_shape, out, dtype)
}

fn stft(inputs: &[Option<&Tensor>], onesided: bool) -> Result<Tensor, OpError> {
    let x = input(inputs, 0)?;
    let dtype = x.dtype();
    let values = complex_values(x, "signal")?;
    let &[batch, len, _] = x.shape() else {
        bail!("signal must have shape [batch, length, 1 or 2], found {:?}", x.shape());
    };
    let step = scalar_int(inputs, 1, "frame_step")?.ok_or_else(|| OpError::new("input 1 (frame_step) is missing"))?;
    if step < 1 {
        bail!("frame_step must be positive, found {step}");
    }
    let window = match opt_input(inputs, 2) {
        Some(w) => {
            expect_float(w, "window")?;
            if w.rank() != 1 {
                bail!("window must be 1-D, found shape {:?}", w.shape());
            }
            Some(w.to_f64_vec())
        }
        None => None,
    };
    let frame_length = match scalar_int(inputs, 3, "frame_length")? {
        Some(n) if n < 1 => bail!("frame_length must be positive, found {n}"),
        Some(n) => n as usize,
        None => window.as_ref().map_or(len, Vec::len),
    };
    // A frame takes as many samples as the window has (zeros past the end of the signal) and
    // is transformed at `frame_length`, as the reference does when the two differ.
    let window = window.unwrap_or_else(|| vec![1.0; frame_length]);
    if len < frame_length {
        bail!("signal of length {len} is shorter than a frame of {frame_length}");
    }
    let frames = 1 + (len - frame_length) / step as usize;
    let bins = if onesided { frame_length / 2 + 1 } else { frame_length };
    let plan = Fft::new(frame_length, false);
    let mut out = Vec::with_capacity(batch * frames * bins);
    let mut buf = vec![(0.0, 0.0); frame_length];
    for b in 0..batch {
        let signal = &values[b * len..(b + 1) * len];
        for f in 0..frames {
            let start = f * step as usize;
            buf.iter_mut().for_each(|v| *v = (0.0, 0.0));
            for (k, (v, &w)) in buf.iter_mut().zip(&window).enumerate() {
                if let Some(&(re, im)) = signal.get(start + k) {
                    *v = (re * w, im * w);
                }
            }
            plan.run(&mut buf);
            out.extend_from_slice(&buf[..bins]);
        }
    }
    complex_tensor(vec![batch, frames, bins], out, dtype)
}

/// A planned transform of one length: the twiddle factors `exp(-+2 pi i k / n)`.
struct Fft {
    n: usize,
    inverse: bool,
    twiddles: Vec<(f64, f64)>,
}

impl Fft {
    fn new(n: usize, inverse: bool) -> Fft {
        let sign = if inverse { 1.0 } else { -1.0 };
        let twiddles = (0..n)
            .map(|k| {
                let a = sign * 2.0 * PI * k as f64 / n as f64;
                (a.cos(), a.sin())
            })
            .collect();
        Fft { n, inverse, twiddles }
    }

    /// Transforms `buf` (of length `n`) in place; the inverse is scaled by `1 / n`.
    fn run(&self, buf: &mut [(f64, f64)]) {
        let n = self.n;
        if n.is_power_of_two() {
            self.radix2(buf);
        } else {
            let input = buf.to_vec();
            for (k, out) in buf.iter_mut().enumerate() {
                *out = input
                    .iter()
                    .enumerate()
                    .fold((0.0, 0.0), |acc, (j, &x)| add(acc, mul(x, self.twiddles[(k * j) % n])));
            }
        }
        if self.inverse {
            let s = 1.0 / n as f64;
            buf.iter_mut().for_each(|v| *v = (v.0 * s, v.1 * s));
        }
    }

    /// Iterative decimation-in-time radix-2 FFT.
    fn radix2(&self, buf: &mut [(f64, f64)]) {
        let n = self.n;
        let bits = n.trailing_zeros();
        if bits == 0 {
            return;
        }
        for i in 0..n {
            let j = i.reverse_bits() >> (usize::BITS - bits);
            if i < j {
                buf.swap(i, j);
            }
        }
        let mut size = 2;
        while size <= n {
            let half = size / 2;
            let stride = n / size;
            for start in (0..n).step_by(size) {
                for k in 0..half {
                    let t = mul(buf[start + k + half], self.twiddles[k * stride]);
                    let u = buf[start + k];
                    buf[start + k] = add(u, t);
                    buf[start + k + half] = (u.0 - t.0, u.1 - t.1);
                }
            }
            size *= 2;
        }
    }
}

fn mul(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0)
}

fn add(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    (a.0 + b.0, a.1 + b.1)
}

/// The window of `size` samples; `N` is the size when periodic, the size minus one otherwise.
fn window(function: WindowFunction, size: usize, periodic: bool) -> Vec<f64> {
    let n = if periodic { size } else { size.saturating_sub(1) };
    if n == 0 {
        // A symmetric window of one sample would divide by zero; it is 1, as in PyTorch.
        return vec![1.0; size];
    }
    (0..size)
        .map(|i| {
            let x = 2.0 * PI * i as f64 / n as f64;
            match function {
                WindowFunction::Hann => 0.5 - 0.5 * x.cos(),
                WindowFunction::Hamming => 25.0 / 46.0 - 21.0 / 46.0 * x.cos(),
                WindowFunction::Blackman => 0.42 - 0.5 * x.cos() + 0.08 * (2.0 * x).cos(),
            }
        })
        .collect()
}

/// Triangular filters between mel-spaced edges, on the bins of a one-sided spectrum; the bin
/// arithmetic (`num_mel_bins + 2` steps, floored bin indices) follows the ONNX reference.
fn mel_weight_matrix(inputs: &[Option<&Tensor>]) -> Result<Tensor, OpError> {
    let int = |i: usize, what: &str| -> Result<i64, OpError> {
        scalar_int(inputs, i, what)?.ok_or_else(|| OpError::new(format!("input {i} ({what}) is missing")))
    };
    let mel_bins = int(0, "num_mel_bins")?;
    let dft_length = int(1, "dft_length")?;
    let sample_rate = int(2, "sample_rate")?;
    if mel_bins < 1 || dft_length < 1 || sample_rate < 1 {
        bail!("num_mel_bins, dft_length and sample_rate must be positive, found {mel_bins}, {dft_length} and {sample_rate}");
    }
    let lower = scalar_f64(inputs, 3, "lower_edge_hertz")?;
    let upper = scalar_f64(inputs, 4, "upper_edge_hertz")?;
    let mel = |hz: f64| 2595.0 * (1.0 + hz / 700.0).log10();
    let (low_mel, high_mel) = (mel(lower), mel(upper));
    let step = (high_mel - low_mel) / (mel_bins + 2) as f64;
    let edges: Vec<i64> = (0..mel_bins + 2)
        .map(|i| {
            let hz = 700.0 * (10f64.powf((i as f64 * step + low_mel) / 2595.0) - 1.0);
            ((dft_length + 1) as f64 * hz).div_euclid(sample_rate as f64) as i64
        })
        .collect();
    let (rows, cols) = (dft_length as usize / 2 + 1, mel_bins as usize);
    // The last edge only bounds a range from above, so it may be one past the last bin.
    let last = edges.len() - 1;
    if let Some((_, e)) = edges.iter().enumerate().find(|&(k, &e)| e < 0 || e as usize >= rows + usize::from(k == last))
    {
        bail!("a filter edge falls on bin {e}, outside the {rows} bins of the spectrum");
    }
    let mut out = vec![0.0; rows * cols];
    for (i, e) in edges.windows(3).enumerate() {
        let (left, center, right) = (e[0] as usize, e[1] as usize, e[2] as usize);
        if center == left {
            out[center * cols + i] = 1.0;
        } else {
            for j in left..=center {
                out[j * cols + i] = (j - left) as f64 / (center - left) as f64;
            }
        }
        for j in center..right {
            out[j * cols + i] = (right - j) as f64 / (right - center) as f64;
        }
    }
    Ok(Tensor::from_vec(vec![rows, cols], out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    /// Runs the kernel and compares the output: shape and type exactly, values within 1e-4.
    fn check(op: SignalOp, inputs: &[Option<Tensor>], expected: Tensor) {
        let ins: Vec<Option<&Tensor>> = inputs.iter().map(Option::as_ref).collect();
        let out = eval(&op, &ins, 1).unwrap();
        assert_eq!((out[0].dtype(), out[0].shape()), (expected.dtype(), expected.shape()), "{out:?} vs {expected:?}");
        for (a, b) in out[0].to_f64_vec().iter().zip(expected.to_f64_vec()) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{out:?} vs {expected:?}");
        }
    }

    /// The textbook DFT of complex values, for comparison.
    fn naive_dft(x: &[(f64, f64)], n: usize, inverse: bool) -> Vec<(f64, f64)> {
        let sign = if inverse { 1.0 } else { -1.0 };
        let scale = if inverse { 1.0 / n as f64 } else { 1.0 };
        (0..n)
            .map(|k| {
                let mut acc = (0.0, 0.0);
                for (j, &(re, im)) in x.iter().enumerate().take(n) {
                    let a = sign * 2.0 * PI * (k * j) as f64 / n as f64;
                    acc.0 += re * a.cos() - im * a.sin();
                    acc.1 += re * a.sin() + im * a.cos();
                }
                (acc.0 * scale, acc.1 * scale)
            })
            .collect()
    }

    #[test]
    fn fft_matches_the_direct_dft_for_odd_and_power_of_two_lengths() {
        for (n, inverse) in [(1, false), (3, false), (8, false), (16, true), (50, true)] {
            let x: Vec<(f64, f64)> = (0..n).map(|i| (((i * 7) % 5) as f64 - 2.0, (i % 3) as f64)).collect();
            let mut buf = x.clone();
            Fft::new(n, inverse).run(&mut buf);
            for (a, b) in buf.iter().zip(naive_dft(&x, n, inverse)) {
                assert!((a.0 - b.0).abs() < 1e-9 && (a.1 - b.1).abs() < 1e-9, "n={n}: {a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn dft_of_a_middle_axis_padded_and_onesided() {
        // Real input [2, 3, 2, 1], transformed along axis 1 at length 4, keeping 3 bins.
        let x: Vec<f32> = (0..12).map(|i| (i * i % 7) as f32).collect();
        let mut want = vec![0f32; 2 * 3 * 2 * 2];
        for o in 0..2 {
            for i in 0..2 {
                let seq: Vec<(f64, f64)> = (0..3).map(|k| (x[(o * 3 + k) * 2 + i] as f64, 0.0)).collect();
                for (k, v) in naive_dft(&seq, 4, false).into_iter().take(3).enumerate() {
                    want[((o * 3 + k) * 2 + i) * 2] = v.0 as f32;
                    want[((o * 3 + k) * 2 + i) * 2 + 1] = v.1 as f32;
                }
            }
        }
        let op = SignalOp::DFT { inverse: false, onesided: true, axis: None };
        let length = Tensor::scalar(4i64);
        let axis = Tensor::scalar(-3i64);
        check(op, &[Some(f(&[2, 3, 2, 1], x)), Some(length), Some(axis)], f(&[2, 3, 2, 2], want));
    }

    #[test]
    fn dft_rejects_the_complex_axis() {
        let x = f(&[4, 2], vec![0.0; 8]);
        let op = SignalOp::DFT { inverse: false, onesided: false, axis: Some(-1) };
        let err = eval(&op, &[Some(&x)], 1).unwrap_err();
        assert!(err.0.contains("out of range"), "{err}");
    }

    #[test]
    fn symmetric_hann_window_ends_at_zero() {
        let op = SignalOp::Window { function: WindowFunction::Hann, periodic: false, output_datatype: DType::F32 };
        check(op, &[Some(Tensor::scalar(5i32))], f(&[5], vec![0.0, 0.5, 1.0, 0.5, 0.0]));
    }

    #[test]
    fn stft_frames_are_windowed_and_onesided() {
        // One frame every 2 samples of 4: frames [0..4] and [2..6] of a length-6 signal.
        let x: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let window = [0.0, 1.0, 1.0, 0.0];
        let mut want = vec![];
        for start in [0, 2] {
            let seq: Vec<(f64, f64)> = (0..4).map(|k| (x[start + k] as f64 * window[k], 0.0)).collect();
            for v in naive_dft(&seq, 4, false).into_iter().take(3) {
                want.extend([v.0 as f32, v.1 as f32]);
            }
        }
        let w = f(&[4], window.iter().map(|&v| v as f32).collect());
        let op = SignalOp::STFT { onesided: true };
        check(op, &[Some(f(&[1, 6, 1], x)), Some(Tensor::scalar(2i64)), Some(w)], f(&[1, 2, 3, 2], want));
    }
}
