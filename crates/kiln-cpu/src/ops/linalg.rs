//! CPU kernels for the linalg family: matrix products and convolutions.
//!
//! Every product goes through [`gemm::Scalar::gemm`]: the `gemm` crate for f32 and f64, an
//! exact wrapping loop for integers. f16 and bf16 compute in f32, integer types other than the
//! quantized ones in i64 (wrapping, as the narrower type would).

use crate::{bail, OpError, OpResult};
use kiln_ir::ops::LinalgOp;
use kiln_ir::{bf16, f16, DType, Tensor};
use std::borrow::Cow;

/// The type a kernel computes in for operands of a given type.
enum Compute {
    F32,
    F64,
    I64,
}

fn compute_type(d: DType) -> Result<Compute, OpError> {
    Ok(match d {
        DType::F32 | DType::F16 | DType::BF16 => Compute::F32,
        DType::F64 => Compute::F64,
        DType::Bool => bail!("expected a numeric tensor, found bool"),
        _ => Compute::I64,
    })
}

/// Runs `$body` with `$T` bound to the compute type for operands of type `$dtype`.
macro_rules! with_scalar {
    ($dtype:expr, $T:ident => $body:expr) => {
        match super::compute_type($dtype)? {
            super::Compute::F32 => {
                type $T = f32;
                $body
            }
            super::Compute::F64 => {
                type $T = f64;
                $body
            }
            super::Compute::I64 => {
                type $T = i64;
                $body
            }
        }
    };
}

mod conv;
mod einsum;
mod gemm;
mod matmul;

/// The elements of `t` as `T`, borrowed when `t` already holds `T`.
fn values<T: gemm::Scalar>(t: &Tensor) -> Cow<'_, [T]> {
    match t.as_slice::<T>() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            let (_, data) = t.cast(T::DTYPE).into_parts();
            Cow::Owned(T::unwrap(data).unwrap_or_default())
        }
    }
}

/// A result computed in `T`, converted to the operands' type `dtype`.
fn finish<T: gemm::Scalar>(shape: Vec<usize>, v: Vec<T>, dtype: DType) -> Result<Tensor, OpError> {
    let t = Tensor::from_vec(shape, v)?;
    Ok(if dtype == T::DTYPE { t } else { t.cast(dtype) })
}

/// The values of a quantized (8- or 16-bit integer) tensor as i32.
fn quantized_i32(t: &Tensor, what: &str) -> Result<Vec<i32>, OpError> {
    match t.dtype() {
        DType::U8 | DType::I8 | DType::U16 | DType::I16 => Ok(t.to_i64_vec().into_iter().map(|x| x as i32).collect()),
        d => bail!("{what} must be an 8- or 16-bit integer tensor, found {d}"),
    }
}

/// Rounds an f32 to the precision of a scale of type `d`, so that scale arithmetic matches
/// arithmetic done in that type.
fn round_to(d: DType, x: f32) -> f32 {
    match d {
        DType::F16 => f16::from_f32(x).to_f32(),
        DType::BF16 => bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// Requantizes i32 accumulators: `y = saturate(round_half_even(acc * s1 * s2 / y_scale) +
/// y_zero_point)`, the scale product computed in the scales' type as the reference does.
/// `index(p)` gives the positions of element `p` in `s1` and `s2` (used where they are not
/// scalars).
fn requantize(
    acc: &[i32],
    shape: Vec<usize>,
    s1: &Tensor,
    s2: &Tensor,
    y_scale: &Tensor,
    y_zp: Option<&Tensor>,
    out: DType,
    index: impl Fn(usize) -> (usize, usize),
) -> OpResult {
    let sd = s1.dtype();
    for (s, what) in [(s1, "scale"), (s2, "scale"), (y_scale, "y_scale")] {
        if !s.dtype().is_float() || s.is_empty() {
            bail!("{what} must be a non-empty float tensor, found {} of shape {:?}", s.dtype(), s.shape());
        }
    }
    let (v1, v2) = (crate::ops::common::to_f32(s1), crate::ops::common::to_f32(s2));
    let ys = crate::ops::common::to_f32(y_scale)[0];
    let zp = match y_zp {
        Some(z) if z.dtype() != out => bail!("y_zero_point must be {out}, found {}", z.dtype()),
        Some(z) => z.to_f64_vec().first().copied().unwrap_or(0.0),
        None => 0.0,
    };
    let (lo, hi) = match out {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::U16 => (0.0, 65535.0),
        DType::I16 => (-32768.0, 32767.0),
        d => bail!("the quantized output must be an 8- or 16-bit integer type, found {d}"),
    };
    let pick = |v: &[f32], i: usize| {
        if v.len() == 1 {
            v[0]
        } else {
            v.get(i).copied().unwrap_or(v[0])
        }
    };
    let y: Vec<f64> = acc
        .iter()
        .enumerate()
        .map(|(p, &a)| {
            let (i, j) = index(p);
            let mult = round_to(sd, round_to(sd, pick(&v1, i) * pick(&v2, j)) / ys);
            (a as f64 * mult as f64 + zp).round_ties_even().clamp(lo, hi)
        })
        .collect();
    Ok(vec![Tensor::from_vec(shape, y)?.cast(out)])
}

pub(super) fn eval(op: &LinalgOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let _ = num_outputs;
    match op {
        LinalgOp::MatMul => matmul::eval_matmul(inputs),
        LinalgOp::Gemm { alpha, beta, trans_a, trans_b } => {
            matmul::eval_gemm(inputs, *alpha, *beta, *trans_a, *trans_b)
        }
        LinalgOp::MatMulInteger => matmul::eval_matmul_integer(inputs),
        LinalgOp::QLinearMatMul => matmul::eval_qlinear_matmul(inputs),
        LinalgOp::Det => matmul::eval_det(inputs),
        LinalgOp::Einsum { equation } => einsum::eval(equation, inputs),
        LinalgOp::Conv(attrs) => conv::eval_conv(attrs, inputs),
        LinalgOp::ConvInteger(attrs) => conv::eval_conv_integer(attrs, inputs),
        LinalgOp::QLinearConv(attrs) => conv::eval_qlinear_conv(attrs, inputs),
        LinalgOp::ConvTranspose(attrs) => conv::eval_conv_transpose(attrs, inputs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::ops::linalg::{ConvAttrs, ConvTransposeAttrs, EinsumEquation};
    use kiln_ir::ops::pool::AutoPad;

    /// The only call into the kernels.
    fn run(op: &LinalgOp, inputs: &[Option<&Tensor>]) -> OpResult {
        eval(op, inputs, 1)
    }

    /// Runs `op` and compares with `expected` within 1e-4 + 1e-4 * |expected|.
    fn check(op: &LinalgOp, inputs: &[&Tensor], expected: &Tensor) {
        let inputs: Vec<Option<&Tensor>> = inputs.iter().map(|t| Some(*t)).collect();
        let got = run(op, &inputs).unwrap_or_else(|e| panic!("{} failed: {e}", op.name())).remove(0);
        assert_eq!(got.shape(), expected.shape(), "{} shape", op.name());
        assert_eq!(got.dtype(), expected.dtype(), "{} dtype", op.name());
        let (g, e) = (got.to_f64_vec(), expected.to_f64_vec());
        for (i, (a, b)) in g.iter().zip(&e).enumerate() {
            assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "{} element {i}: {a} but expected {b}", op.name());
        }
    }

    /// Seeded values in [-1, 1).
    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    /// Naive numpy matmul for 2-d `b` and any-rank `a` (batch in a only), or equal batches.
    fn naive_matmul(a: &[f32], m: usize, k: usize, b: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn matmul_promotes_vectors_and_broadcasts_batches() {
        let (a, b) = (rand(&[3], 1), rand(&[2, 3, 4], 2));
        let (av, bv) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        let mut want = naive_matmul(av, 1, 3, &bv[..12], 4);
        want.extend(naive_matmul(av, 1, 3, &bv[12..], 4));
        check(&LinalgOp::MatMul, &[&a, &b], &t(&[2, 4], want));

        // [2, 1, 5, 3] @ [4, 3, 2] -> [2, 4, 5, 2]: A broadcast over B's batch.
        let (a, b) = (rand(&[2, 1, 5, 3], 3), rand(&[4, 3, 2], 4));
        let (av, bv) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        let mut want = vec![];
        for i in 0..2 {
            for j in 0..4 {
                want.extend(naive_matmul(&av[i * 15..], 5, 3, &bv[j * 6..], 2));
            }
        }
        check(&LinalgOp::MatMul, &[&a, &b], &t(&[2, 4, 5, 2], want));

        // Matrix @ vector drops the promoted dim; f64 and i64 take their own paths.
        let a = Tensor::from_vec(vec![2, 3], vec![1i64, 2, 3, 4, 5, 6]).unwrap();
        let b = Tensor::from_vec(vec![3], vec![1i64, 0, -1]).unwrap();
        check(&LinalgOp::MatMul, &[&a, &b], &Tensor::from_vec(vec![2], vec![-2i64, -2]).unwrap());
        let a = a.cast(DType::F64);
        let b = b.cast(DType::F64);
        check(&LinalgOp::MatMul, &[&a, &b], &Tensor::from_vec(vec![2], vec![-2f64, -2.0]).unwrap());
    }

    #[test]
    fn matmul_large_batched_products_match_naive() {
        // Large enough for the threaded path; odd sizes.
        let (a, b) = (rand(&[3, 50, 783], 5), rand(&[783, 67], 6));
        let (av, bv) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        check(&LinalgOp::MatMul, &[&a, &b], &t(&[3, 50, 67], naive_matmul(av, 150, 783, bv, 67)));
    }

    #[test]
    fn gemm_transposes_scales_and_broadcasts_c() {
        let (m, k, n) = (3, 50, 7);
        let a = rand(&[k, m], 7); // transA
        let b = rand(&[n, k], 8); // transB
        let c = rand(&[n], 9);
        let (av, bv, cv) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap(), c.as_slice::<f32>().unwrap());
        let mut want = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f32 = (0..k).map(|p| av[p * m + i] * bv[j * k + p]).sum();
                want[i * n + j] = 0.5 * s + 2.0 * cv[j];
            }
        }
        let op = LinalgOp::Gemm { alpha: 0.5, beta: 2.0, trans_a: true, trans_b: true };
        check(&op, &[&a, &b, &c], &t(&[m, n], want));
        let bad = rand(&[2], 1);
        let err = run(&op, &[Some(&a), Some(&b), Some(&bad)]).unwrap_err();
        assert!(err.0.contains("does not broadcast"), "{err}");
    }

    fn conv_attrs(strides: &[usize], dilations: &[usize], pads: &[usize], group: usize) -> ConvAttrs {
        ConvAttrs {
            kernel_shape: vec![],
            strides: strides.to_vec(),
            dilations: dilations.to_vec(),
            pads: pads.to_vec(),
            auto_pad: AutoPad::NotSet,
            group,
        }
    }

    /// Direct 2-d convolution with explicit pads.
    fn naive_conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, a: &ConvAttrs) -> Tensor {
        let (xs, ws) = (x.shape(), w.shape());
        let (xv, wv) = (x.as_slice::<f32>().unwrap(), w.as_slice::<f32>().unwrap());
        let (n, c, h, wd, m, cg, kh, kw) = (xs[0], xs[1], xs[2], xs[3], ws[0], ws[1], ws[2], ws[3]);
        let (sh, sw, dh, dw) = (a.strides[0], a.strides[1], a.dilations[0], a.dilations[1]);
        let (pt, pl, pb, pr) = (a.pads[0], a.pads[1], a.pads[2], a.pads[3]);
        let oh = (h + pt + pb - (kh - 1) * dh - 1) / sh + 1;
        let ow = (wd + pl + pr - (kw - 1) * dw - 1) / sw + 1;
        let mg = m / a.group;
        let mut out = vec![0.0; n * m * oh * ow];
        for bi in 0..n {
            for o in 0..m {
                let g = o / mg;
                for y in 0..oh {
                    for xx in 0..ow {
                        let mut s = b.map_or(0.0, |b| b.as_slice::<f32>().unwrap()[o]);
                        for ci in 0..cg {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let iy = (y * sh + i * dh) as i64 - pt as i64;
                                    let ix = (xx * sw + j * dw) as i64 - pl as i64;
                                    if iy < 0 || ix < 0 || iy >= h as i64 || ix >= wd as i64 {
                                        continue;
                                    }
                                    let xi = ((bi * c + g * cg + ci) * h + iy as usize) * wd + ix as usize;
                                    s += xv[xi] * wv[((o * cg + ci) * kh + i) * kw + j];
                                }
                            }
                        }
                        out[((bi * m + o) * oh + y) * ow + xx] = s;
                    }
                }
            }
        }
        t(&[n, m, oh, ow], out)
    }

    #[test]
    fn conv2d_matches_direct_convolution() {
        let cases = [
            // (x shape, w shape, strides, dilations, pads, group)
            ([2, 4, 9, 7], [6, 2, 3, 2], [2, 1], [2, 1], [1, 0, 2, 1], 2),
            ([1, 3, 5, 5], [4, 3, 1, 1], [1, 1], [1, 1], [0, 0, 0, 0], 1),
            ([1, 6, 8, 8], [6, 1, 3, 3], [1, 2], [1, 1], [1, 1, 1, 1], 6),
            ([1, 3, 11, 13], [5, 3, 3, 3], [3, 2], [1, 2], [0, 2, 1, 0], 1),
        ];
        for (i, (xs, ws, s, d, p, g)) in cases.iter().enumerate() {
            let (x, w, b) = (rand(xs, 10 + i as u64), rand(ws, 20 + i as u64), rand(&[ws[0]], 30));
            let a = conv_attrs(s, d, p, *g);
            check(&LinalgOp::Conv(a.clone()), &[&x, &w, &b], &naive_conv2d(&x, &w, Some(&b), &a));
            check(&LinalgOp::Conv(a.clone()), &[&x, &w], &naive_conv2d(&x, &w, None, &a));
        }
    }

    #[test]
    fn conv_auto_pad_same_lower_puts_the_odd_cell_first() {
        // 1-d, size 4, kernel 2, stride 1: one padding cell, at the beginning.
        let x = t(&[1, 1, 4], vec![1.0, 2.0, 3.0, 4.0]);
        let w = t(&[1, 1, 2], vec![1.0, 10.0]);
        let mut a = conv_attrs(&[], &[], &[], 1);
        a.auto_pad = AutoPad::SameLower;
        check(&LinalgOp::Conv(a.clone()), &[&x, &w], &t(&[1, 1, 4], vec![10.0, 21.0, 32.0, 43.0]));
        a.auto_pad = AutoPad::SameUpper;
        check(&LinalgOp::Conv(a), &[&x, &w], &t(&[1, 1, 4], vec![21.0, 32.0, 43.0, 4.0]));
    }

    #[test]
    fn conv_rejects_channel_mismatch() {
        let (x, w) = (rand(&[1, 3, 4, 4], 1), rand(&[2, 2, 3, 3], 2));
        let err = run(&LinalgOp::Conv(conv_attrs(&[], &[], &[], 1)), &[Some(&x), Some(&w)]).unwrap_err();
        assert!(err.0.contains("3 channels"), "{err}");
    }

    #[test]
    fn conv_transpose_matches_scatter() {
        let (xs, ws) = ([1, 4, 3, 4], [4, 3, 3, 2]); // group 2: 6 output channels
        let (x, w, b) = (rand(&xs, 40), rand(&ws, 41), rand(&[6], 42));
        let (st, dl, pads, op) = ([2, 3], [1, 2], [1, 0, 0, 2], [1, 2]);
        let (xv, wv, bv) = (x.as_slice::<f32>().unwrap(), w.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        let oh = st[0] * (xs[2] - 1) + op[0] + (ws[2] - 1) * dl[0] + 1 - pads[0] - pads[2];
        let ow = st[1] * (xs[3] - 1) + op[1] + (ws[3] - 1) * dl[1] + 1 - pads[1] - pads[3];
        let mut want = vec![0.0; 6 * oh * ow];
        for o in 0..6 {
            let (g, mo) = (o / 3, o % 3);
            want[o * oh * ow..(o + 1) * oh * ow].fill(bv[o]);
            for ci in 0..2 {
                let c = g * 2 + ci;
                for i in 0..xs[2] {
                    for j in 0..xs[3] {
                        for ki in 0..ws[2] {
                            for kj in 0..ws[3] {
                                let y = (i * st[0] + ki * dl[0]) as i64 - pads[0] as i64;
                                let z = (j * st[1] + kj * dl[1]) as i64 - pads[1] as i64;
                                if y < 0 || z < 0 || y >= oh as i64 || z >= ow as i64 {
                                    continue;
                                }
                                want[(o * oh + y as usize) * ow + z as usize] +=
                                    xv[(c * xs[2] + i) * xs[3] + j] * wv[((c * 3 + mo) * ws[2] + ki) * ws[3] + kj];
                            }
                        }
                    }
                }
            }
        }
        let attrs = ConvTransposeAttrs {
            kernel_shape: vec![],
            strides: st.to_vec(),
            dilations: dl.to_vec(),
            pads: pads.to_vec(),
            output_padding: op.to_vec(),
            output_shape: None,
            auto_pad: AutoPad::NotSet,
            group: 2,
        };
        check(&LinalgOp::ConvTranspose(attrs), &[&x, &w, &b], &t(&[1, 6, oh, ow], want));
    }

    fn einsum(eq: &str) -> LinalgOp {
        LinalgOp::Einsum { equation: EinsumEquation::parse(eq).unwrap() }
    }

    #[test]
    fn einsum_diagonals_ellipsis_and_chains() {
        let a = t(&[3, 3], (0..9).map(|v| v as f32).collect());
        check(&einsum("ii->i"), &[&a], &t(&[3], vec![0.0, 4.0, 8.0]));
        check(&einsum("ii"), &[&a], &t(&[], vec![12.0]));
        check(&einsum("ij->"), &[&a], &t(&[], vec![36.0]));
        // Implicit output: letters once, alphabetically ("ji" is the transpose).
        check(&einsum("ji"), &[&a], &t(&[3, 3], vec![0.0, 3.0, 6.0, 1.0, 4.0, 7.0, 2.0, 5.0, 8.0]));
        // Ellipsis dims broadcast: [1, 2, 3] with [4, 3, 2].
        let (x, y) = (rand(&[1, 2, 3], 50), rand(&[4, 3, 2], 51));
        let (xv, yv) = (x.as_slice::<f32>().unwrap(), y.as_slice::<f32>().unwrap());
        let want: Vec<f32> = (0..4).flat_map(|b| naive_matmul(xv, 2, 3, &yv[b * 6..], 2)).collect();
        check(&einsum("...ij,...jk->...ik"), &[&x, &y], &t(&[4, 2, 2], want));
        // A chain of three with a middle index summed away.
        let (p, q, r) = (rand(&[2, 3], 52), rand(&[3, 4], 53), rand(&[4, 5], 54));
        let pq = naive_matmul(p.as_slice().unwrap(), 2, 3, q.as_slice().unwrap(), 4);
        let want = naive_matmul(&pq, 2, 4, r.as_slice().unwrap(), 5);
        check(&einsum("ij,jk,kl->il"), &[&p, &q, &r], &t(&[2, 5], want));
        // Repeated index across operands kept as a batch dim, another summed in one operand.
        let (u, v) = (rand(&[2, 3, 4], 55), rand(&[2, 4], 56));
        let (uv, vv) = (u.as_slice::<f32>().unwrap(), v.as_slice::<f32>().unwrap());
        let mut want = vec![0.0; 2 * 4];
        for b in 0..2 {
            for k in 0..4 {
                want[b * 4 + k] = (0..3).map(|i| uv[(b * 3 + i) * 4 + k]).sum::<f32>() * vv[b * 4 + k];
            }
        }
        check(&einsum("bik,bk->bk"), &[&u, &v], &t(&[2, 4], want));
    }

    #[test]
    fn integer_products_are_exact() {
        // Per-row zero point of A, per-tensor of B.
        let a = Tensor::from_vec(vec![2, 3], vec![255u8, 0, 10, 1, 2, 3]).unwrap();
        let b = Tensor::from_vec(vec![3, 1], vec![255u8, 128, 0]).unwrap();
        let za = Tensor::from_vec(vec![2], vec![1u8, 2]).unwrap();
        let zb = Tensor::scalar(128u8);
        let want = Tensor::from_vec(vec![2, 1], vec![254 * 127 + 9 * -128, -127 - 128]).unwrap();
        check(&LinalgOp::MatMulInteger, &[&a, &b, &za, &zb], &want);
    }

    /// Prints the time of ResNet-50's two most common convolution shapes, and of the bare
    /// product of the same size (run with `--nocapture`); asserts nothing about speed.
    #[test]
    fn conv_timings() {
        let best_of = |f: &dyn Fn() -> Tensor| {
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let start = std::time::Instant::now();
                let out = f();
                best = best.min(start.elapsed().as_secs_f64());
                assert_eq!(out.len(), 64 * 56 * 56);
            }
            best
        };
        let cases = [
            ("3x3 1x64x56x56 -> 64", [1, 64, 56, 56], [64, 64, 3, 3], [1, 1, 1, 1]),
            ("1x1 1x256x56x56 -> 64", [1, 256, 56, 56], [64, 256, 1, 1], [0, 0, 0, 0]),
        ];
        for (name, xs, ws, pads) in cases {
            let (x, w, b) = (rand(&xs, 1), rand(&ws, 2), rand(&[ws[0]], 3));
            let op = LinalgOp::Conv(conv_attrs(&[1, 1], &[1, 1], &pads, 1));
            let k = ws[1..].iter().product::<usize>();
            let flops = 2.0 * (ws[0] * k * xs[2] * xs[3]) as f64;
            let conv = best_of(&|| run(&op, &[Some(&x), Some(&w), Some(&b)]).unwrap().remove(0));
            let (wm, cols) = (w.clone().reshape(vec![ws[0], k]).unwrap(), rand(&[k, xs[2] * xs[3]], 4));
            let product = best_of(&|| run(&LinalgOp::MatMul, &[Some(&wm), Some(&cols)]).unwrap().remove(0));
            println!(
                "conv {name}: {:.2} ms, {:.1} GFLOP/s (its product alone: {:.2} ms)",
                conv * 1e3,
                flops / conv / 1e9,
                product * 1e3
            );
        }
    }
}
