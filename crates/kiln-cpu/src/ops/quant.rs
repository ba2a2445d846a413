//! CPU kernels for the quant family: linear quantization per tensor, per axis and per block.

use super::common::{axis, input, opt_input, to_f32};
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::QuantOp;
use kiln_ir::{DType, Elem, Tensor};

pub(super) fn eval(op: &QuantOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let _ = num_outputs;
    match *op {
        QuantOp::QuantizeLinear { axis, block_size, output_dtype, saturate } => {
            let (x, scale, zp) = (input(inputs, 0)?, input(inputs, 1)?, opt_input(inputs, 2));
            Ok(vec![quantize(x, scale, zp, axis, block_size, output_dtype, saturate)?])
        }
        QuantOp::DequantizeLinear { axis, block_size, output_dtype } => {
            let (x, scale, zp) = (input(inputs, 0)?, input(inputs, 1)?, opt_input(inputs, 2));
            Ok(vec![dequantize(x, scale, zp, axis, block_size, output_dtype)?])
        }
        QuantOp::DynamicQuantizeLinear => dynamic_quantize(input(inputs, 0)?),
    }
}

/// A run of `len` consecutive input elements starting at `start` whose scales start at
/// `scale` and advance by `step` (0 or 1) per element.
struct Run {
    start: usize,
    len: usize,
    scale: usize,
    step: usize,
}

/// How the elements of an input of shape `x` map to the elements of a scale of shape `s`.
fn scale_runs(x: &[usize], s: &[usize], axis_attr: i64, block_size: usize) -> Result<Vec<Run>, OpError> {
    let n: usize = x.iter().product();
    let sn: usize = s.iter().product();
    if sn == 1 {
        return Ok(vec![Run { start: 0, len: n, scale: 0, step: 0 }]);
    }
    let a = axis(axis_attr, x.len())?;
    let dim = x[a];
    let inner: usize = x[a + 1..].iter().product();
    let outer: usize = x[..a].iter().product();
    let mut runs = Vec::with_capacity(outer * dim);
    if block_size == 0 {
        if s.len() != 1 || s[0] != dim {
            bail!("per-axis scale must have shape [{dim}] for input shape {x:?} and axis {axis_attr}, found {s:?}");
        }
        for o in 0..outer {
            for i in 0..dim {
                runs.push(Run { start: (o * dim + i) * inner, len: inner, scale: i, step: 0 });
            }
        }
    } else {
        let blocks = dim.div_ceil(block_size);
        let ok = s.len() == x.len()
            && s.iter().zip(x).enumerate().all(|(d, (&p, &q))| if d == a { p == blocks } else { p == q });
        if !ok {
            bail!("blocked scale must have shape {x:?} with {blocks} blocks at axis {a}, found {s:?}");
        }
        for o in 0..outer {
            for i in 0..dim {
                let scale = (o * blocks + i / block_size) * inner;
                runs.push(Run { start: (o * dim + i) * inner, len: inner, scale, step: 1 });
            }
        }
    }
    Ok(runs)
}

/// The zero points as i64, checked to have the scale's shape; zeros when absent.
fn zero_points(zp: Option<&Tensor>, scale: &Tensor) -> Result<Vec<i64>, OpError> {
    match zp {
        None => Ok(vec![0; scale.len()]),
        Some(z) if z.len() == scale.len() && (z.shape() == scale.shape() || z.len() == 1) => Ok(z.to_i64_vec()),
        Some(z) => bail!("zero point shape {:?} does not match scale shape {:?}", z.shape(), scale.shape()),
    }
}

fn quantize(
    x: &Tensor,
    scale: &Tensor,
    zp: Option<&Tensor>,
    axis: i64,
    block_size: usize,
    output_dtype: Option<DType>,
    saturate: bool,
) -> Result<Tensor, OpError> {
    if !x.dtype().is_float() || !scale.dtype().is_float() {
        bail!("QuantizeLinear: expected float input and scale, found {} and {}", x.dtype(), scale.dtype());
    }
    let to = match (zp, output_dtype) {
        (Some(z), Some(d)) if z.dtype() != d => bail!("zero point type {} differs from output_dtype {d}", z.dtype()),
        (Some(z), _) => z.dtype(),
        (None, d) => d.unwrap_or(DType::U8),
    };
    let runs = scale_runs(x.shape(), scale.shape(), axis, block_size)?;
    if to.is_low_precision_float() {
        return quantize_float(x, scale, zp, &runs, to, saturate);
    }
    let (lo, hi) = match to {
        DType::U8 => (0, 255),
        DType::I8 => (-128, 127),
        DType::U16 => (0, 65535),
        DType::I16 => (-32768, 32767),
        DType::U4 => (0, 15),
        DType::I4 => (-8, 7),
        d => bail!("QuantizeLinear: output type {d} is not supported"),
    };
    let zps = zero_points(zp, scale)?;
    // The reference divides in the input's precision: f64 for f64, f32 otherwise.
    let q: Vec<f64> = if x.dtype() == DType::F64 {
        let (xv, sv) = (x.to_f64_vec(), scale.to_f64_vec());
        quantize_runs(&runs, &xv, &sv, &zps, lo, hi)
    } else {
        let (xv, sv) = (to_f32(x), to_f32(scale));
        quantize_runs(&runs, &xv, &sv, &zps, lo, hi)
    };
    Ok(Tensor::from_vec(x.shape().to_vec(), q)?.cast(to))
}

/// Quantization to float8 (x / scale, cast with `saturate`; the zero point is ignored, as the
/// reference does) and float4 (x / scale + zero_point, cast; float4 always saturates).
fn quantize_float(
    x: &Tensor,
    scale: &Tensor,
    zp: Option<&Tensor>,
    runs: &[Run],
    to: DType,
    saturate: bool,
) -> Result<Tensor, OpError> {
    if !matches!(to, DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ | DType::F4E2M1) {
        bail!("QuantizeLinear: output type {to} is not supported");
    }
    let zps = match zp {
        Some(z) if to == DType::F4E2M1 => {
            if z.len() != scale.len() {
                bail!("zero point shape {:?} does not match scale shape {:?}", z.shape(), scale.shape());
            }
            to_f32(z)
        }
        _ => vec![0.0; scale.len()],
    };
    let q: Vec<f64> = if x.dtype() == DType::F64 {
        let (xv, sv) = (x.to_f64_vec(), scale.to_f64_vec());
        divide_runs(runs, &xv, &sv, |q, k| q + zps[k] as f64)
    } else {
        let (xv, sv) = (to_f32(x), to_f32(scale));
        divide_runs(runs, &xv, &sv, |q, k| (q as f32 + zps[k]) as f64)
    };
    Ok(Tensor::from_vec(x.shape().to_vec(), q)?.cast_with(to, saturate))
}

/// `then(x / scale, scale index)` for every element, in the input's precision.
fn divide_runs<F>(runs: &[Run], x: &[F], s: &[F], then: impl Fn(f64, usize) -> f64) -> Vec<f64>
where
    F: Copy + std::ops::Div<Output = F> + Into<f64>,
{
    let mut out = vec![0.0; x.len()];
    for r in runs {
        for i in 0..r.len {
            let k = r.scale + i * r.step;
            out[r.start + i] = then((x[r.start + i] / s[k]).into(), k);
        }
    }
    out
}

/// saturate(round_half_even(x / scale) + zero_point), as f64 holding integers in `[lo, hi]`.
fn quantize_runs<F>(runs: &[Run], x: &[F], s: &[F], zp: &[i64], lo: i64, hi: i64) -> Vec<f64>
where
    F: Copy + std::ops::Div<Output = F> + Into<f64>,
{
    let mut out = vec![0.0; x.len()];
    // `scale_runs` checked the scale's shape, so every run and scale index is in range.
    for r in runs {
        for i in 0..r.len {
            let k = r.scale + i * r.step;
            let q: f64 = (x[r.start + i] / s[k]).into();
            out[r.start + i] = (q.round_ties_even() as i64).saturating_add(zp[k]).clamp(lo, hi) as f64;
        }
    }
    out
}

fn dequantize(
    x: &Tensor,
    scale: &Tensor,
    zp: Option<&Tensor>,
    axis: i64,
    block_size: usize,
    output_dtype: Option<DType>,
) -> Result<Tensor, OpError> {
    let low_float = x.dtype().is_low_precision_float() && x.dtype() != DType::F8E8M0;
    if !x.dtype().is_int() && !low_float {
        bail!("DequantizeLinear: expected an integer, float8 or float4 input, found {}", x.dtype());
    }
    if !scale.dtype().is_float() {
        bail!("DequantizeLinear: expected a float scale, found {}", scale.dtype());
    }
    let runs = scale_runs(x.shape(), scale.shape(), axis, block_size)?;
    // As in the reference, a float4 input ignores its zero point and a float8 one must be 0.
    let zps = match zp {
        Some(z) if low_float => {
            if x.dtype() != DType::F4E2M1 && z.to_f64_vec().iter().any(|&v| v != 0.0) {
                bail!("DequantizeLinear: a float8 zero point must be zero");
            }
            vec![0; scale.len()]
        }
        Some(z) if z.dtype() != x.dtype() => {
            bail!("DequantizeLinear: zero point type {} differs from input type {}", z.dtype(), x.dtype())
        }
        _ => zero_points(zp, scale)?,
    };
    let xv = to_f32(x);
    let sv = to_f32(scale);
    // The reference subtracts in f32 and multiplies by the scale in f32.
    let mut out = vec![0f32; xv.len()];
    for r in &runs {
        for i in 0..r.len {
            let k = r.scale + i * r.step;
            out[r.start + i] = (xv[r.start + i] - zps[k] as f32) * sv[k];
        }
    }
    let to = output_dtype.unwrap_or(scale.dtype());
    Ok(Tensor::from_vec(x.shape().to_vec(), out)?.cast(to))
}

/// u8 quantization over the input's range widened to include 0.
fn dynamic_quantize(x: &Tensor) -> OpResult {
    if !x.dtype().is_float() {
        bail!("DynamicQuantizeLinear: expected a float input, found {}", x.dtype());
    }
    let v = to_f32(x);
    let maxx = v.iter().copied().fold(0f32, f32::max);
    let minx = v.iter().copied().fold(0f32, f32::min);
    // The range always contains 0, so it is empty only when every element is 0; the scale is
    // then 1, which quantizes everything to 0.
    let scale = if maxx == minx { 1.0 } else { (maxx - minx) / 255.0 };
    let zp = (0.0 - minx / scale).clamp(0.0, 255.0).round_ties_even();
    let y: Vec<u8> = v.iter().map(|&e| ((e / scale).round_ties_even() + zp).clamp(0.0, 255.0) as u8).collect();
    Ok(vec![
        Tensor::from_vec(x.shape().to_vec(), y)?,
        Tensor::scalar(scale).cast(x.dtype()),
        Tensor::scalar(u8::from_f64(zp as f64)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(op: QuantOp, inputs: &[Tensor], expected: &[Tensor]) {
        let ins: Vec<Option<&Tensor>> = inputs.iter().map(Some).collect();
        assert_eq!(eval(&op, &ins, expected.len()).unwrap(), expected);
    }

    fn t<T: Elem>(shape: &[usize], v: Vec<T>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    #[test]
    fn quantize_rounds_half_to_even_and_saturates() {
        let op = QuantOp::QuantizeLinear { axis: 1, block_size: 0, output_dtype: None, saturate: true };
        let x = t(&[6], vec![0.5f32, 1.5, 2.5, -2.5, 1000.0, -1000.0]);
        let expected = t(&[6], vec![10i8, 12, 12, 8, 127, -128]);
        check(op, &[x, Tensor::scalar(1f32), Tensor::scalar(10i8)], &[expected]);
    }

    #[test]
    fn dequantize_per_axis_negative_axis() {
        let op = QuantOp::DequantizeLinear { axis: -1, block_size: 0, output_dtype: None };
        let x = t(&[2, 3], vec![1u8, 2, 3, 4, 5, 6]);
        let scale = t(&[3], vec![1f32, 2.0, 0.5]);
        let zp = t(&[3], vec![0u8, 1, 2]);
        check(op, &[x, scale, zp], &[t(&[2, 3], vec![1f32, 2.0, 0.5, 4.0, 8.0, 2.0])]);
    }

    #[test]
    fn blocked_with_remainder_block() {
        let op = QuantOp::DequantizeLinear { axis: 1, block_size: 2, output_dtype: None };
        let x = t(&[1, 5], vec![1i8, 1, 1, 1, 1]);
        let scale = t(&[1, 3], vec![1f32, 2.0, 3.0]);
        check(op, &[x, scale], &[t(&[1, 5], vec![1f32, 1.0, 2.0, 2.0, 3.0])]);
        let op = QuantOp::DequantizeLinear { axis: 1, block_size: 2, output_dtype: None };
        let x = t(&[1, 5], vec![1i8, 1, 1, 1, 1]);
        let err = eval(&op, &[Some(&x), Some(&t(&[1, 2], vec![1f32, 2.0]))], 1).unwrap_err();
        assert!(err.0.contains("3 blocks"), "{err}");
    }
}
