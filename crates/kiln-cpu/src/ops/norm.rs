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
