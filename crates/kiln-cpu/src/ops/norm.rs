//! CPU kernels for the norm family: normalizations and the softmax family.
//!
//! Every kernel computes in f32 (f16, bf16 and f64 inputs are converted and the result cast
//! back) and walks its groups of cells with the reduction [`Plan`]s of the reduce family.

use super::common::{axis, expect_float, from_f32, input, opt_input, to_f32};
use super::reduce::{max_f32, sum_f32, Plan, PAR_MIN};
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::infer::broadcast_shapes;
use kiln_ir::ops::norm::stash_dtype;
use kiln_ir::ops::reduce::reduced_axes;
use kiln_ir::ops::NormOp;
use kiln_ir::{DType, Tensor};
use rayon::prelude::*;

pub(super) fn eval(op: &NormOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let x = input(inputs, 0)?;
    let dtype = expect_float(x, "X")?;
    let shape = x.shape().to_vec();
    let mut v = to_f32(x);
    let mut extra = vec![];
    match op {
        NormOp::Softmax { axis: a, coerce_2d } => {
            softmax_plan(&shape, *a, *coerce_2d)?.update(&mut v, |_, s| softmax(s));
        }
        NormOp::LogSoftmax { axis: a, coerce_2d } => {
            softmax_plan(&shape, *a, *coerce_2d)?.update(&mut v, |_, s| log_softmax(s));
        }
        NormOp::Hardmax { axis: a, coerce_2d } => {
            softmax_plan(&shape, *a, *coerce_2d)?.update(&mut v, |_, s| hardmax(s));
        }
        NormOp::BatchNormalization { epsilon, momentum, training_mode } => {
            extra = batch_norm(&shape, &mut v, inputs, *epsilon, *momentum, *training_mode, num_outputs)?;
        }
        NormOp::InstanceNormalization { epsilon } => {
            let c = channels(&shape)?;
            let scale = per_channel(inputs, 1, "scale", c)?;
            let bias = per_channel(inputs, 2, "B", c)?;
            let axes: Vec<usize> = (2..shape.len()).collect();
            Plan::new(&shape, &axes, true).update(&mut v, |g, s| {
                let (mean, var) = mean_var(s);
                let a = scale[g % c] / (var + epsilon).sqrt();
                let b = bias[g % c] - mean * a;
                s.iter_mut().for_each(|x| *x = *x * a + b);
            });
        }
        NormOp::LayerNormalization { axis: a, epsilon, stash_type } => {
            let a = axis(*a, shape.len())?;
            let inner = &shape[a..];
            let scale = broadcast_param(input(inputs, 1)?, inner, "Scale")?;
            let bias = opt_input(inputs, 2).map(|b| broadcast_param(b, inner, "B")).transpose()?;
            let axes: Vec<usize> = (a..shape.len()).collect();
            let plan = Plan::new(&shape, &axes, true);
            let stats = plan.update(&mut v, |_, s| {
                let (mean, var) = mean_var(s);
                let inv = 1.0 / (var + epsilon).sqrt();
                match &bias {
                    Some(b) => s.iter_mut().zip(&scale).zip(b).for_each(|((x, k), b)| *x = (*x - mean) * inv * k + b),
                    None => s.iter_mut().zip(&scale).for_each(|(x, k)| *x = (*x - mean) * inv * k),
                }
                (mean, inv)
            });
            let (means, inv_stds): (Vec<f32>, Vec<f32>) = stats.into_iter().unzip();
            let stash = stash_dtype(*stash_type).unwrap_or(DType::F32);
            if num_outputs > 1 {
                extra.push(from_f32(plan.out_shape.clone(), means, stash)?);
                extra.push(from_f32(plan.out_shape, inv_stds, stash)?);
            }
        }
        NormOp::GroupNormalization { num_groups, epsilon, .. } => {
            group_norm(&shape, &mut v, inputs, *num_groups, *epsilon)?;
        }
        NormOp::RMSNormalization { axis: a, epsilon, .. } => {
            let a = axis(*a, shape.len())?;
            let scale = broadcast_param(input(inputs, 1)?, &shape[a..], "scale")?;
            let axes: Vec<usize> = (a..shape.len()).collect();
            Plan::new(&shape, &axes, true).update(&mut v, |_, s| {
                let ms = s.iter().map(|x| x * x).sum::<f32>() / s.len() as f32;
                let inv = 1.0 / (ms + epsilon).sqrt();
                s.iter_mut().zip(&scale).for_each(|(x, k)| *x = *x * inv * k);
            });
        }
        NormOp::LRN { alpha, beta, bias, size } => lrn(&shape, &mut v, *alpha, *beta, *bias, *size)?,
        NormOp::LpNormalization { axis: a, p } => {
            let a = axis(*a, shape.len())?;
            Plan::new(&shape, &[a], true).update(&mut v, |_, s| {
                let norm = if *p == 1 { s.iter().map(|x| x.abs()).sum::<f32>() } else { sum_sq(s).sqrt() };
                s.iter_mut().for_each(|x| *x /= norm);
            });
        }
        NormOp::MeanVarianceNormalization { axes } => {
            let axes = reduced_axes(axes, shape.len()).map_err(OpError)?;
            Plan::new(&shape, &axes, true).update(&mut v, |_, s| {
                let (mean, var) = mean_var(s);
                let d = var.sqrt() + 1e-9;
                s.iter_mut().for_each(|x| *x = (*x - mean) / d);
            });
        }
    }
    let mut out = vec![from_f32(shape, v, dtype)?];
    out.extend(extra);
    Ok(out)
}

/// The groups of the softmax family: one axis, or every axis from `axis` on before opset 13.
fn softmax_plan(shape: &[usize], a: i64, coerce_2d: bool) -> Result<Plan, OpError> {
    let a = axis(a, shape.len())?;
    let axes: Vec<usize> = if coerce_2d { (a..shape.len()).collect() } else { vec![a] };
    Ok(Plan::new(shape, &axes, true))
}

fn softmax(s: &mut [f32]) {
    let m = max_f32(s);
    s.iter_mut().for_each(|x| *x = (*x - m).exp());
    let inv = 1.0 / sum_f32(s);
    s.iter_mut().for_each(|x| *x *= inv);
}

fn log_softmax(s: &mut [f32]) {
    let m = max_f32(s);
    let lse = s.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
    s.iter_mut().for_each(|x| *x = *x - m - lse);
}

fn hardmax(s: &mut [f32]) {
    // The first maximum wins, as numpy's argmax picks it.
    let mut best = 0;
    for (i, &x) in s.iter().enumerate() {
        if x > s[best] {
            best = i;
        }
    }
    s.iter_mut().enumerate().for_each(|(i, x)| *x = if i == best { 1.0 } else { 0.0 });
}

fn sum_sq(s: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = s.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().map(|x| x * x).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i] * c[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Mean and population variance, in two passes for accuracy.
fn mean_var(s: &[f32]) -> (f32, f32) {
    let n = s.len().max(1) as f32;
    let mean = sum_f32(s) / n;
    let mut acc = [0f32; 8];
    let chunks = s.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().map(|x| (x - mean) * (x - mean)).sum();
    for c in chunks {
        for i in 0..8 {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    (mean, (acc.iter().sum::<f32>() + rest) / n)
}

/// The channel count of an `[N, C, ...]` input.
fn channels(shape: &[usize]) -> Result<usize, OpError> {
    match shape.get(1) {
        Some(&c) => Ok(c),
        None => bail!("X must have rank 2 or more, found shape {shape:?}"),
    }
}

/// A per-channel parameter input of `c` values.
fn per_channel(inputs: &[Option<&Tensor>], i: usize, what: &str, c: usize) -> Result<Vec<f32>, OpError> {
    let t = input(inputs, i)?;
    expect_float(t, what)?;
    if t.len() != c {
        bail!("{what} must hold one value per channel ({c}), found shape {:?}", t.shape());
    }
    Ok(to_f32(t))
}

/// A parameter broadcast (one way) to `shape`, as a dense vector.
fn broadcast_param(t: &Tensor, shape: &[usize], what: &str) -> Result<Vec<f32>, OpError> {
    expect_float(t, what)?;
    let v = to_f32(t);
    if t.shape() == shape {
        return Ok(v);
    }
    if broadcast_shapes(t.shape(), shape).as_deref() != Some(shape) {
        bail!("{what} of shape {:?} does not broadcast to the normalized shape {shape:?}", t.shape());
    }
    let st = super::common::broadcast_strides(t.shape(), shape);
    let idx = super::common::broadcast_index(shape, &[st]);
    Ok(idx[0].iter().map(|&i| v[i]).collect())
}

fn batch_norm(
    shape: &[usize],
    v: &mut [f32],
    inputs: &[Option<&Tensor>],
    epsilon: f32,
    momentum: f32,
    training: bool,
    num_outputs: usize,
) -> Result<Vec<Tensor>, OpError> {
    let c = channels(shape)?;
    let scale = per_channel(inputs, 1, "scale", c)?;
    let bias = per_channel(inputs, 2, "B", c)?;
    let mut mean = per_channel(inputs, 3, "input_mean", c)?;
    let mut var = per_channel(inputs, 4, "input_var", c)?;
    let stat_dtype = input(inputs, 3)?.dtype();
    let plane: usize = shape[2..].iter().product();
    let n = shape[0];
    let mut extra = vec![];
    if training {
        // Batch statistics per channel, over the batch and the spatial dims.
        let count = (n * plane).max(1) as f32;
        let mut bmean = vec![0f32; c];
        let mut bvar = vec![0f32; c];
        for ch in 0..c {
            let planes = || (0..n).map(|b| &v[(b * c + ch) * plane..(b * c + ch + 1) * plane]);
            let m = planes().map(sum_f32).sum::<f32>() / count;
            let q = planes().map(|p| p.iter().map(|x| (x - m) * (x - m)).sum::<f32>()).sum::<f32>() / count;
            bmean[ch] = m;
            bvar[ch] = q;
        }
        let running_mean: Vec<f32> =
            mean.iter().zip(&bmean).map(|(r, b)| r * momentum + b * (1.0 - momentum)).collect();
        let running_var: Vec<f32> = var.iter().zip(&bvar).map(|(r, b)| r * momentum + b * (1.0 - momentum)).collect();
        extra.push(from_f32(vec![c], running_mean, stat_dtype)?);
        extra.push(from_f32(vec![c], running_var, stat_dtype)?);
        mean = bmean;
        var = bvar;
    } else {
        // Opsets before 9 may list the running statistics as outputs; they pass through.
        for i in 1..num_outputs.min(5) {
            let src = if i % 2 == 1 { &mean } else { &var };
            extra.push(from_f32(vec![c], src.clone(), stat_dtype)?);
        }
    }
    // y = x * a + k per channel.
    let a: Vec<f32> = (0..c).map(|ch| scale[ch] / (var[ch] + epsilon).sqrt()).collect();
    let k: Vec<f32> = (0..c).map(|ch| bias[ch] - mean[ch] * a[ch]).collect();
    let run = |(i, p): (usize, &mut [f32])| {
        let (a, k) = (a[i % c], k[i % c]);
        p.iter_mut().for_each(|x| *x = *x * a + k);
    };
    if plane > 0 && c > 0 {
        if v.len() >= PAR_MIN {
            v.par_chunks_mut(plane).enumerate().for_each(run);
        } else {
            v.chunks_mut(plane).enumerate().for_each(run);
        }
    }
    Ok(extra)
}

fn group_norm(
    shape: &[usize],
    v: &mut [f32],
    inputs: &[Option<&Tensor>],
    groups: usize,
    epsilon: f32,
) -> Result<(), OpError> {
    let c = channels(shape)?;
    if c % groups != 0 {
        bail!("the {c} channels do not split into {groups} groups");
    }
    let scale_t = input(inputs, 1)?;
    let bias_t = input(inputs, 2)?;
    expect_float(scale_t, "scale")?;
    expect_float(bias_t, "bias")?;
    // Opset 18 has one scale and bias per group, opset 21 one per channel.
    let per_group = scale_t.len() == groups && groups != c;
    let want = if per_group { groups } else { c };
    if scale_t.len() != want || bias_t.len() != want {
        bail!("scale and bias must hold {want} values, found shapes {:?} and {:?}", scale_t.shape(), bias_t.shape());
    }
    let (scale, bias) = (to_f32(scale_t), to_f32(bias_t));
    let plane: usize = shape[2..].iter().product();
    let per = c / groups;
    let len = per * plane;
    if len == 0 {
        return Ok(());
    }
    for (gi, grp) in v.chunks_exact_mut(len).enumerate() {
        let g = gi % groups;
        let (mean, var) = mean_var(grp);
        let inv = 1.0 / (var + epsilon).sqrt();
        for (k, p) in grp.chunks_exact_mut(plane.max(1)).enumerate() {
            let ch = if per_group { g } else { g * per + k };
            let a = inv * scale[ch];
            let b = bias[ch] - mean * a;
            p.iter_mut().for_each(|x| *x = *x * a + b);
        }
    }
    Ok(())
}

fn lrn(shape: &[usize], v: &mut [f32], alpha: f32, beta: f32, bias: f32, size: usize) -> Result<(), OpError> {
    let c = channels(shape)?;
    let plane: usize = shape[2..].iter().product();
    let (before, after) = ((size - 1) / 2, size - 1 - (size - 1) / 2);
    let sq: Vec<f32> = v.iter().map(|x| x * x).collect();
    let scale = alpha / size as f32;
    for b in 0..shape[0] {
        for ch in 0..c {
            let lo = ch.saturating_sub(before);
            let hi = (ch + after).min(c - 1);
            for s in 0..plane {
                let sum: f32 = (lo..=hi).map(|k| sq[(b * c + k) * plane + s]).sum();
                let i = (b * c + ch) * plane + s;
                v[i] /= (bias + scale * sum).powf(beta);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    /// Runs the kernel and compares every output: shape and type exactly, values within 1e-5.
    fn check(op: NormOp, inputs: &[Tensor], expected: &[Tensor]) {
        let ins: Vec<Option<&Tensor>> = inputs.iter().map(Some).collect();
        let out = eval(&op, &ins, expected.len()).unwrap();
        assert_eq!(out.len(), expected.len());
        for (o, e) in out.iter().zip(expected) {
            assert_eq!((o.dtype(), o.shape()), (e.dtype(), e.shape()), "{o:?} vs {e:?}");
            for (a, b) in o.to_f64_vec().iter().zip(e.to_f64_vec()) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{o:?} vs {e:?}");
            }
        }
    }

    fn naive_softmax(x: &[f32]) -> Vec<f32> {
        let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let s: f32 = x.iter().map(|v| (v - m).exp()).sum();
        x.iter().map(|v| (v - m).exp() / s).collect()
    }

    #[test]
    fn softmax_over_a_middle_axis() {
        let x: Vec<f32> = (0..24).map(|i| ((i * 5) % 7) as f32 - 3.0).collect();
        let mut want = vec![0f32; 24];
        for a in 0..2 {
            for c in 0..4 {
                let line: Vec<f32> = (0..3).map(|b| x[(a * 3 + b) * 4 + c]).collect();
                for (b, v) in naive_softmax(&line).into_iter().enumerate() {
                    want[(a * 3 + b) * 4 + c] = v;
                }
            }
        }
        check(NormOp::Softmax { axis: -2, coerce_2d: false }, &[t(&[2, 3, 4], x)], &[t(&[2, 3, 4], want)]);
    }

    #[test]
    fn legacy_softmax_flattens_from_the_axis() {
        let x: Vec<f32> = (0..24).map(|i| i as f32 / 10.0).collect();
        let want: Vec<f32> = x.chunks(12).flat_map(naive_softmax).collect();
        check(NormOp::Softmax { axis: 1, coerce_2d: true }, &[t(&[2, 3, 4], x)], &[t(&[2, 3, 4], want)]);
    }

    #[test]
    fn log_softmax_and_hardmax() {
        let x = t(&[1, 3], vec![1000.0, 1000.0, 0.0]);
        let l = -(2f32.ln());
        check(
            NormOp::LogSoftmax { axis: -1, coerce_2d: false },
            std::slice::from_ref(&x),
            &[t(&[1, 3], vec![l, l, -1000.0 + l])],
        );
        check(NormOp::Hardmax { axis: 1, coerce_2d: false }, &[x], &[t(&[1, 3], vec![1.0, 0.0, 0.0])]);
    }

    #[test]
    fn layer_norm_with_statistics_outputs() {
        let x = t(&[2, 2, 2], vec![1.0, 3.0, 5.0, 7.0, 0.0, 0.0, 2.0, 2.0]);
        let scale = t(&[2, 2], vec![1.0, 1.0, 2.0, 2.0]);
        let bias = t(&[2], vec![0.5, -0.5]);
        let op = NormOp::LayerNormalization { axis: -2, epsilon: 0.0, stash_type: 1 };
        let s1 = 1.0 / 5f32.sqrt();
        let y = vec![-3.0 * s1 + 0.5, -s1 - 0.5, 2.0 * s1 + 0.5, 6.0 * s1 - 0.5, -0.5, -1.5, 2.5, 1.5];
        check(op, &[x, scale, bias], &[t(&[2, 2, 2], y), t(&[2, 1, 1], vec![4.0, 1.0]), t(&[2, 1, 1], vec![s1, 1.0])]);
    }

    #[test]
    fn batch_norm_inference_and_training() {
        let x = t(&[2, 2, 1], vec![1.0, 2.0, 3.0, 6.0]);
        let ones = t(&[2], vec![1.0, 1.0]);
        let zeros = t(&[2], vec![0.0, 0.0]);
        let mean = t(&[2], vec![1.0, 2.0]);
        let var = t(&[2], vec![4.0, 1.0]);
        let op = NormOp::BatchNormalization { epsilon: 0.0, momentum: 0.5, training_mode: false };
        let inputs = [x, ones.clone(), zeros, mean, var];
        check(op, &inputs, &[t(&[2, 2, 1], vec![0.0, 0.0, 1.0, 4.0])]);
        // Batch statistics: channel 0 has mean 2 and variance 1, channel 1 mean 4 and variance 4.
        let op = NormOp::BatchNormalization { epsilon: 0.0, momentum: 0.5, training_mode: true };
        check(
            op,
            &inputs,
            &[t(&[2, 2, 1], vec![-1.0, -1.0, 1.0, 1.0]), t(&[2], vec![1.5, 3.0]), t(&[2], vec![2.5, 2.5])],
        );
    }

    #[test]
    fn group_norm_scales_per_channel_or_per_group() {
        let x = t(&[1, 4, 1], vec![1.0, 3.0, 10.0, 12.0]);
        let per_channel = [t(&[4], vec![1.0, 2.0, 3.0, 4.0]), t(&[4], vec![0.0, 0.0, 1.0, 1.0])];
        let op = NormOp::GroupNormalization { num_groups: 2, epsilon: 0.0, stash_type: 1 };
        let inputs = [x.clone(), per_channel[0].clone(), per_channel[1].clone()];
        check(op.clone(), &inputs, &[t(&[1, 4, 1], vec![-1.0, 2.0, -2.0, 5.0])]);
        let inputs = [x, t(&[2], vec![2.0, 1.0]), t(&[2], vec![0.0, 5.0])];
        check(op, &inputs, &[t(&[1, 4, 1], vec![-2.0, 2.0, 4.0, 6.0])]);
    }

    #[test]
    fn lrn_sums_over_neighbouring_channels() {
        let x = t(&[1, 3, 1], vec![1.0, 2.0, 3.0]);
        let op = NormOp::LRN { alpha: 3.0, beta: 1.0, bias: 1.0, size: 3 };
        // alpha / size = 1; channel c sums the squares of channels c-1..=c+1.
        check(op, &[x], &[t(&[1, 3, 1], vec![1.0 / 6.0, 2.0 / 15.0, 3.0 / 14.0])]);
    }

    #[test]
    fn wrong_parameter_length_is_an_error() {
        let x = t(&[1, 2, 1], vec![1.0, 2.0]);
        let p = t(&[3], vec![1.0; 3]);
        let op = NormOp::InstanceNormalization { epsilon: 1e-5 };
        let err = eval(&op, &[Some(&x), Some(&p), Some(&p)], 1).unwrap_err();
        assert!(err.0.contains("one value per channel"), "{err}");
    }
}
