//! Convolutions: Conv, ConvInteger and QLinearConv by im2col and one matrix product per group
//! (a pointwise convolution is a plain product, with no im2col), ConvTranspose by one product
//! per group and col2im.

use super::gemm::{Mat, Scalar};
use super::{finish, quantized_i32, requantize, values};
use crate::ops::common::{input, opt_input, strides};
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::linalg::{ConvAttrs, ConvTransposeAttrs, TransposeDim};
use kiln_ir::ops::pool::WindowDim;
use kiln_ir::{DType, Tensor};
use rayon::prelude::*;

/// Marks a padding cell in the index tables.
const PAD: usize = usize::MAX;

/// Im2col buffers at least this large are filled by the thread pool.
const PARALLEL_FILL: usize = 1 << 15;

/// Checks the ranks of X and W and returns the spatial sizes of the weight.
fn check_ranks<'a>(op: &str, xs: &[usize], ws: &'a [usize]) -> Result<&'a [usize], OpError> {
    if xs.len() < 3 || ws.len() != xs.len() {
        bail!("{op} needs X of rank 3 or more and W of the same rank, found shapes {xs:?} and {ws:?}");
    }
    Ok(&ws[2..])
}

/// Convolution of `x` (shape `xs`, `[N, C, D...]`) by `w` (shape `ws`, `[M, C/group, k...]`)
/// plus an optional per-channel bias; returns the output and its shape.
pub(super) fn conv<T: Scalar>(
    x: &[T],
    xs: &[usize],
    w: &[T],
    ws: &[usize],
    bias: Option<&[T]>,
    attrs: &ConvAttrs,
) -> Result<(Vec<T>, Vec<usize>), OpError> {
    let kshape = check_ranks("Conv", xs, ws)?;
    let (n, c, m, cg, group) = (xs[0], xs[1], ws[0], ws[1], attrs.group);
    if group == 0 || c != cg * group || m % group != 0 {
        bail!("Conv: X has {c} channels and W has shape {ws:?}, which does not fit group {group}");
    }
    if let Some(b) = bias {
        if b.len() != m {
            bail!("Conv: the bias has {} values for {m} output channels", b.len());
        }
    }
    let dims = attrs.dims(&xs[2..], kshape).map_err(OpError)?;
    let in_size: usize = xs[2..].iter().product();
    let p: usize = dims.iter().map(|d| d.output).product();
    let kk = cg * kshape.iter().product::<usize>();
    let mg = m / group;
    let mut shape = vec![n, m];
    shape.extend(dims.iter().map(|d| d.output));
    let mut out = vec![T::ZERO; n * m * p];
    if out.is_empty() {
        return Ok((out, shape));
    }
    let pointwise = dims.iter().all(|d| d.kernel == 1 && d.stride == 1 && d.pad_begin == 0 && d.pad_end == 0);
    // One product per (image, group): out[b, g] (mg x p) = W[g] (mg x kk) @ cols (kk x p).
    let run = |idx: usize, dst: &mut [T], buf: &mut Vec<T>, threads: bool| -> Result<(), OpError> {
        let (b, g) = (idx / group, idx % group);
        let xg = &x[(b * c + g * cg) * in_size..][..cg * in_size];
        let cols: &[T] = if pointwise {
            xg
        } else {
            buf.resize(kk * p, T::ZERO);
            im2col(xg, &dims, buf, threads);
            buf
        };
        let accumulate = match bias {
            Some(bias) => {
                for (r, row) in dst.chunks_mut(p).enumerate() {
                    row.fill(bias[g * mg + r]);
                }
                true
            }
            None => false,
        };
        T::gemm(dst, Mat::new(&w[g * mg * kk..][..mg * kk], mg, kk), Mat::new(cols, kk, p), T::ONE, accumulate, threads)
    };
    if group == 1 {
        let mut buf = vec![];
        for (idx, dst) in out.chunks_mut(mg * p).enumerate() {
            run(idx, dst, &mut buf, true)?;
        }
    } else {
        // Many small products (depthwise convolutions): one task per group.
        out.par_chunks_mut(mg * p)
            .enumerate()
            .try_for_each_init(Vec::new, |buf, (idx, dst)| run(idx, dst, buf, false))?;
    }
    Ok((out, shape))
}

/// For each spatial dim, the input index read by each (kernel tap, output position), `PAD`
/// where it falls in the padding: `table[j][k * out_j + o]`.
fn im2col_tables(dims: &[WindowDim]) -> Vec<Vec<usize>> {
    dims.iter()
        .map(|d| {
            (0..d.kernel)
                .flat_map(|k| {
                    (0..d.output).map(move |o| {
                        let i = (o * d.stride + k * d.dilation) as i64 - d.pad_begin as i64;
                        if i >= 0 && (i as usize) < d.input {
                            i as usize
                        } else {
                            PAD
                        }
                    })
                })
                .collect()
        })
        .collect()
}

/// Fills `cols` (`channels * prod(kernel)` rows of `prod(output)` cells) with the input cells
/// each kernel tap reads at each output position, zero in the padding.
fn im2col<T: Scalar>(x: &[T], dims: &[WindowDim], cols: &mut [T], threads: bool) {
    let r = dims.len();
    let in_sizes: Vec<usize> = dims.iter().map(|d| d.input).collect();
    let in_strides = strides(&in_sizes);
    let in_size: usize = in_sizes.iter().product();
    let out_sizes: Vec<usize> = dims.iter().map(|d| d.output).collect();
    let p: usize = out_sizes.iter().product();
    let kernel: Vec<usize> = dims.iter().map(|d| d.kernel).collect();
    let ksize: usize = kernel.iter().product();
    let tables = im2col_tables(dims);
    let last = r - 1;
    let ol = out_sizes[last];
    let stride = dims[last].stride;
    // For each tap of the last dim: the output range that reads inside the input, and the
    // input index at its start (the range is contiguous because the index grows with o).
    let spans: Vec<(usize, usize, usize)> = (0..kernel[last])
        .map(|k| {
            let t = &tables[last][k * ol..(k + 1) * ol];
            let lo = t.iter().position(|&i| i != PAD).unwrap_or(ol);
            let hi = lo + t[lo..].iter().take_while(|&&i| i != PAD).count();
            (lo, hi, if lo < hi { t[lo] } else { 0 })
        })
        .collect();
    let fill_row = |row_idx: usize, row: &mut [T]| {
        let ch = row_idx / ksize;
        let mut rest = row_idx % ksize;
        let mut taps = vec![0; r];
        for j in (0..r).rev() {
            taps[j] = rest % kernel[j];
            rest /= kernel[j];
        }
        let xc = &x[ch * in_size..(ch + 1) * in_size];
        let (lo, hi, start) = spans[taps[last]];
        let mut opos = vec![0; last];
        for dst in row.chunks_mut(ol) {
            let mut base = Some(0);
            for j in 0..last {
                let i = tables[j][taps[j] * out_sizes[j] + opos[j]];
                base = base.filter(|_| i != PAD).map(|b| b + i * in_strides[j]);
            }
            match base {
                None => dst.fill(T::ZERO),
                Some(b) => {
                    dst[..lo].fill(T::ZERO);
                    let src = b + start;
                    if stride == 1 {
                        dst[lo..hi].copy_from_slice(&xc[src..src + (hi - lo)]);
                    } else {
                        for (t, d) in dst[lo..hi].iter_mut().enumerate() {
                            *d = xc[src + t * stride];
                        }
                    }
                    dst[hi..].fill(T::ZERO);
                }
            }
            for j in (0..last).rev() {
                opos[j] += 1;
                if opos[j] < out_sizes[j] {
                    break;
                }
                opos[j] = 0;
            }
        }
    };
    if threads && cols.len() >= PARALLEL_FILL {
        cols.par_chunks_mut(p).enumerate().for_each(|(i, row)| fill_row(i, row));
    } else {
        cols.chunks_mut(p).enumerate().for_each(|(i, row)| fill_row(i, row));
    }
}

/// Transposed convolution of `x` (`[N, C, D...]`) by `w` (`[C, M/group, k...]`) plus an
/// optional per-channel bias.
pub(super) fn conv_transpose<T: Scalar>(
    x: &[T],
    xs: &[usize],
    w: &[T],
    ws: &[usize],
    bias: Option<&[T]>,
    attrs: &ConvTransposeAttrs,
) -> Result<(Vec<T>, Vec<usize>), OpError> {
    let kshape = check_ranks("ConvTranspose", xs, ws)?;
    let (n, c, mg, group) = (xs[0], xs[1], ws[1], attrs.group);
    if group == 0 || ws[0] != c || c % group != 0 {
        bail!("ConvTranspose: X has {c} channels and W has shape {ws:?}, which does not fit group {group}");
    }
    let (cg, m) = (c / group, mg * group);
    if let Some(b) = bias {
        if b.len() != m {
            bail!("ConvTranspose: the bias has {} values for {m} output channels", b.len());
        }
    }
    let dims = attrs.dims(&xs[2..], kshape).map_err(OpError)?;
    let in_size: usize = xs[2..].iter().product();
    let out_size: usize = dims.iter().map(|d| d.output).product();
    let ksize: usize = kshape.iter().product();
    let rows = mg * ksize;
    let mut shape = vec![n, m];
    shape.extend(dims.iter().map(|d| d.output));
    let mut out = vec![T::ZERO; n * m * out_size];
    if out.is_empty() {
        return Ok((out, shape));
    }
    let mut cols = vec![T::ZERO; rows * in_size];
    for (idx, dst) in out.chunks_mut(mg * out_size).enumerate() {
        let (b, g) = (idx / group, idx % group);
        let xg = &x[(b * c + g * cg) * in_size..][..cg * in_size];
        let wg = &w[g * cg * rows..][..cg * rows];
        // cols (rows x in_size) = W[g]^T (rows x cg) @ X[b, g] (cg x in_size)
        T::gemm(&mut cols, Mat::new(wg, cg, rows).t(), Mat::new(xg, cg, in_size), T::ONE, false, true)?;
        col2im(&cols, &dims, dst);
        if let Some(bias) = bias {
            for (r, plane) in dst.chunks_mut(out_size).enumerate() {
                let v = bias[g * mg + r];
                plane.iter_mut().for_each(|o| *o = o.add(v));
            }
        }
    }
    Ok((out, shape))
}

/// Adds each column cell to the output cell it lands on: `cols` holds `channels * prod(kernel)`
/// rows of `prod(input)` cells, `out` `channels` planes of `prod(output)` cells.
fn col2im<T: Scalar>(cols: &[T], dims: &[TransposeDim], out: &mut [T]) {
    let r = dims.len();
    let in_sizes: Vec<usize> = dims.iter().map(|d| d.input).collect();
    let in_size: usize = in_sizes.iter().product();
    let out_sizes: Vec<usize> = dims.iter().map(|d| d.output).collect();
    let out_strides = strides(&out_sizes);
    let out_size: usize = out_sizes.iter().product();
    let kernel: Vec<usize> = dims.iter().map(|d| d.kernel).collect();
    let ksize: usize = kernel.iter().product();
    // table[j][k * in_j + i]: the output index input cell i and tap k land on, or PAD.
    let tables: Vec<Vec<usize>> = dims
        .iter()
        .map(|d| {
            (0..d.kernel)
                .flat_map(|k| {
                    (0..d.input).map(move |i| {
                        let o = (i * d.stride + k * d.dilation) as i64 - d.pad_begin;
                        if o >= 0 && (o as usize) < d.output {
                            o as usize
                        } else {
                            PAD
                        }
                    })
                })
                .collect()
        })
        .collect();
    let last = r - 1;
    let il = in_sizes[last];
    let plane = |(ch, dst): (usize, &mut [T])| {
        let mut taps = vec![0; r];
        let mut ipos = vec![0; last];
        for kidx in 0..ksize {
            let mut rest = kidx;
            for j in (0..r).rev() {
                taps[j] = rest % kernel[j];
                rest /= kernel[j];
            }
            let row = &cols[(ch * ksize + kidx) * in_size..][..in_size];
            let tl = &tables[last][taps[last] * il..][..il];
            ipos.fill(0);
            for src in row.chunks(il) {
                let mut base = Some(0);
                for j in 0..last {
                    let o = tables[j][taps[j] * in_sizes[j] + ipos[j]];
                    base = base.filter(|_| o != PAD).map(|b| b + o * out_strides[j]);
                }
                if let Some(b) = base {
                    for (&o, &v) in tl.iter().zip(src) {
                        if o != PAD {
                            dst[b + o] = dst[b + o].add(v);
                        }
                    }
                }
                for j in (0..last).rev() {
                    ipos[j] += 1;
                    if ipos[j] < in_sizes[j] {
                        break;
                    }
                    ipos[j] = 0;
                }
            }
        }
    };
    if out.len() >= PARALLEL_FILL {
        out.par_chunks_mut(out_size).enumerate().for_each(plane);
    } else {
        out.chunks_mut(out_size).enumerate().for_each(plane);
    }
}

/// X, W and the optional bias of a float convolution, checked to share a float type.
fn float_operands<'a>(
    op: &str,
    inputs: &[Option<&'a Tensor>],
) -> Result<(&'a Tensor, &'a Tensor, Option<&'a Tensor>), OpError> {
    let (x, w, b) = (input(inputs, 0)?, input(inputs, 1)?, opt_input(inputs, 2));
    if !x.dtype().is_float() || w.dtype() != x.dtype() || b.is_some_and(|b| b.dtype() != x.dtype()) {
        bail!(
            "{op} needs X, W and B of one float type, found {}, {} and {:?}",
            x.dtype(),
            w.dtype(),
            b.map(|b| b.dtype())
        );
    }
    Ok((x, w, b))
}

pub(super) fn eval_conv(attrs: &ConvAttrs, inputs: &[Option<&Tensor>]) -> OpResult {
    let (x, w, b) = float_operands("Conv", inputs)?;
    with_scalar!(x.dtype(), T => {
        let bias = b.map(values::<T>);
        let (v, shape) = conv::<T>(&values::<T>(x), x.shape(), &values::<T>(w), w.shape(), bias.as_deref(), attrs)?;
        Ok(vec![finish(shape, v, x.dtype())?])
    })
}

pub(super) fn eval_conv_transpose(attrs: &ConvTransposeAttrs, inputs: &[Option<&Tensor>]) -> OpResult {
    let (x, w, b) = float_operands("ConvTranspose", inputs)?;
    with_scalar!(x.dtype(), T => {
        let bias = b.map(values::<T>);
        let (v, shape) =
            conv_transpose::<T>(&values::<T>(x), x.shape(), &values::<T>(w), w.shape(), bias.as_deref(), attrs)?;
        Ok(vec![finish(shape, v, x.dtype())?])
    })
}

/// The 8-bit input minus its (per-tensor) zero point.
fn centered_input(x: &Tensor, zp: Option<&Tensor>) -> Result<Vec<i32>, OpError> {
    let z = match zp {
        None => 0,
        Some(z) if z.len() != 1 || z.dtype() != x.dtype() => {
            bail!(
                "the input's zero point must be one {} value, found {} of shape {:?}",
                x.dtype(),
                z.dtype(),
                z.shape()
            )
        }
        Some(z) => quantized_i32(z, "the input's zero point")?[0],
    };
    Ok(quantized_i32(x, "the input")?.into_iter().map(|v| v - z).collect())
}

/// The 8-bit weight minus its zero point, per tensor or per output channel.
fn centered_weight(w: &Tensor, zp: Option<&Tensor>) -> Result<Vec<i32>, OpError> {
    let v = quantized_i32(w, "the weight")?;
    let Some(zp) = zp else { return Ok(v) };
    let m = w.shape().first().copied().unwrap_or(1);
    if zp.rank() > 1 || zp.len() != 1 && zp.len() != m || zp.dtype() != w.dtype() {
        bail!(
            "the weight's zero point must be one {} value or one per output channel ({m}), found {} of shape {:?}",
            w.dtype(),
            zp.dtype(),
            zp.shape()
        );
    }
    let z = quantized_i32(zp, "the weight's zero point")?;
    let per = v.len() / m.max(1);
    Ok(v.into_iter().enumerate().map(|(i, x)| x - if z.len() == 1 { z[0] } else { z[i / per] }).collect())
}

pub(super) fn eval_conv_integer(attrs: &ConvAttrs, inputs: &[Option<&Tensor>]) -> OpResult {
    let (x, w) = (input(inputs, 0)?, input(inputs, 1)?);
    let xi = centered_input(x, opt_input(inputs, 2))?;
    let wi = centered_weight(w, opt_input(inputs, 3))?;
    let (v, shape) = conv::<i32>(&xi, x.shape(), &wi, w.shape(), None, attrs)?;
    Ok(vec![Tensor::from_vec(shape, v)?])
}

pub(super) fn eval_qlinear_conv(attrs: &ConvAttrs, inputs: &[Option<&Tensor>]) -> OpResult {
    let (x, x_scale, w, w_scale, y_scale) =
        (input(inputs, 0)?, input(inputs, 1)?, input(inputs, 3)?, input(inputs, 4)?, input(inputs, 6)?);
    let (y_zp, b) = (opt_input(inputs, 7), opt_input(inputs, 8));
    let xi = centered_input(x, opt_input(inputs, 2))?;
    let wi = centered_weight(w, opt_input(inputs, 5))?;
    let bias = match b {
        Some(b) if b.dtype() != DType::I32 => {
            bail!("QLinearConv: the bias must be i32, found {}", b.dtype())
        }
        Some(b) => Some(b.as_slice::<i32>()?),
        None => None,
    };
    let (acc, shape) = conv::<i32>(&xi, x.shape(), &wi, w.shape(), bias, attrs)?;
    let m = shape[1];
    let plane: usize = shape[2..].iter().product();
    if x_scale.len() != 1 || w_scale.len() != 1 && w_scale.len() != m {
        bail!("QLinearConv: x_scale must be a scalar and w_scale a scalar or one value per output channel ({m})");
    }
    let out_dtype = y_zp.map_or(x.dtype(), |z| z.dtype());
    requantize(&acc, shape, x_scale, w_scale, y_scale, y_zp, out_dtype, |p| (0, (p / plane.max(1)) % m.max(1)))
}
