//! Matrix products: MatMul (numpy semantics), Gemm, their integer and quantized forms, and Det.

use super::gemm::{Mat, Scalar};
use super::{finish, quantized_i32, requantize, values};
use crate::ops::common::{broadcast_index, broadcast_many, broadcast_strides, input, opt_input};
use crate::{bail, OpError, OpResult};
use kiln_ir::{Elem, Tensor};
use rayon::prelude::*;

/// numpy `matmul` of row-major operands of shapes `sa` and `sb`: 1-D operands are promoted to
/// a row (left) or a column (right) vector and the promoted dim dropped from the result, and
/// the leading dims broadcast.
pub(super) fn matmul<T: Scalar>(a: &[T], sa: &[usize], b: &[T], sb: &[usize]) -> Result<(Vec<T>, Vec<usize>), OpError> {
    if sa.is_empty() || sb.is_empty() {
        bail!("MatMul operands must have rank 1 or more, found shapes {sa:?} and {sb:?}");
    }
    let pa: Vec<usize> = if sa.len() == 1 { vec![1, sa[0]] } else { sa.to_vec() };
    let pb: Vec<usize> = if sb.len() == 1 { vec![sb[0], 1] } else { sb.to_vec() };
    let (ra, rb) = (pa.len(), pb.len());
    let (m, k, k2, n) = (pa[ra - 2], pa[ra - 1], pb[rb - 2], pb[rb - 1]);
    if k != k2 {
        bail!("MatMul inner dims differ: shapes {sa:?} and {sb:?}");
    }
    let (batch_a, batch_b) = (&pa[..ra - 2], &pb[..rb - 2]);
    let batch = broadcast_many(&[batch_a, batch_b])?;
    let mut out_shape = batch.clone();
    if sa.len() > 1 {
        out_shape.push(m);
    }
    if sb.len() > 1 {
        out_shape.push(n);
    }
    let nb: usize = batch.iter().product();
    let mut out = vec![T::ZERO; nb * m * n];
    if out.is_empty() {
        return Ok((out, out_shape));
    }
    let b_batched = batch_b.iter().product::<usize>() > 1;
    if !b_batched && batch_a.iter().product::<usize>() == nb {
        // One product: the batch folds into the rows of A.
        T::gemm(&mut out, Mat::new(a, nb * m, k), Mat::new(b, k, n), T::ONE, false, true)?;
        return Ok((out, out_shape));
    }
    let offs = broadcast_index(&batch, &[broadcast_strides(batch_a, &batch), broadcast_strides(batch_b, &batch)]);
    let one = |(i, dst): (usize, &mut [T])| {
        let (oa, ob) = (offs[0][i] * m * k, offs[1][i] * k * n);
        let threads = m * n * k >= 1 << 18;
        T::gemm(dst, Mat::new(&a[oa..oa + m * k], m, k), Mat::new(&b[ob..ob + k * n], k, n), T::ONE, false, threads)
    };
    if m * n * k < 1 << 18 {
        out.par_chunks_mut(m * n).enumerate().try_for_each(one)?;
    } else {
        out.chunks_mut(m * n).enumerate().try_for_each(one)?;
    }
    Ok((out, out_shape))
}

pub(super) fn eval_matmul(inputs: &[Option<&Tensor>]) -> OpResult {
    let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
    if a.dtype() != b.dtype() {
        bail!("MatMul operands must have one type, found {} and {}", a.dtype(), b.dtype());
    }
    with_scalar!(a.dtype(), T => {
        let (v, shape) = matmul::<T>(&values::<T>(a), a.shape(), &values::<T>(b), b.shape())?;
        Ok(vec![finish(shape, v, a.dtype())?])
    })
}

pub(super) fn eval_gemm(inputs: &[Option<&Tensor>], alpha: f32, beta: f32, trans_a: bool, trans_b: bool) -> OpResult {
    let (a, b, c) = (input(inputs, 0)?, input(inputs, 1)?, opt_input(inputs, 2));
    if a.rank() != 2 || b.rank() != 2 {
        bail!("Gemm needs 2-d A and B, found shapes {:?} and {:?}", a.shape(), b.shape());
    }
    if a.dtype() != b.dtype() {
        bail!("Gemm operands must have one type, found {} and {}", a.dtype(), b.dtype());
    }
    let (sa, sb) = (a.shape(), b.shape());
    let (m, k) = if trans_a { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
    let (k2, n) = if trans_b { (sb[1], sb[0]) } else { (sb[0], sb[1]) };
    if k != k2 {
        bail!("Gemm inner dims differ: A {sa:?} (transA {trans_a}), B {sb:?} (transB {trans_b})");
    }
    with_scalar!(a.dtype(), T => {
        let (va, vb) = (values::<T>(a), values::<T>(b));
        let mut dst = vec![T::ZERO; m * n];
        let mut accumulate = false;
        if let Some(c) = c {
            let vc = values::<T>(c);
            let cs = broadcast_strides(c.shape(), &[m, n]);
            if c.rank() > 2 || kiln_ir::ops::infer::broadcast_shapes(c.shape(), &[m, n]).as_deref() != Some(&[m, n][..]) {
                bail!("Gemm: C of shape {:?} does not broadcast to [{m}, {n}]", c.shape());
            }
            let beta = T::from_f64(beta as f64);
            for i in 0..m {
                for j in 0..n {
                    dst[i * n + j] = beta.mul(vc[i * cs[0] + j * cs[1]]);
                }
            }
            accumulate = true;
        }
        let mut ma = Mat::new(&va[..], sa[0], sa[1]);
        if trans_a {
            ma = ma.t();
        }
        let mut mb = Mat::new(&vb[..], sb[0], sb[1]);
        if trans_b {
            mb = mb.t();
        }
        T::gemm(&mut dst, ma, mb, T::from_f64(alpha as f64), accumulate, true)?;
        Ok(vec![finish(vec![m, n], dst, a.dtype())?])
    })
}

/// Validates a zero point or scale that is per tensor or per row (`len == rows`), returning
/// its length.
fn per_axis_len(t: &Tensor, what: &str, axis_len: usize, axis: &str) -> Result<usize, OpError> {
    let n = t.len();
    if t.rank() > 1 || n != 1 && n != axis_len {
        bail!("{what} must be a scalar or have one value per {axis} ({axis_len}), found shape {:?}", t.shape());
    }
    Ok(n)
}

/// An 8-bit matmul operand minus its zero point, as i32. `rows` and `cols` are the matrix
/// dims of the (promoted) operand; the zero point is per tensor, or per row (`per_row`) or per
/// column.
fn centered(t: &Tensor, zp: Option<&Tensor>, per_row: bool, what: &str) -> Result<Vec<i32>, OpError> {
    let s = t.shape();
    let (rows, cols) = match s.len() {
        0 => bail!("{what} must have rank 1 or more"),
        1 if per_row => (1, s[0]),
        1 => (s[0], 1),
        r => (s[r - 2], s[r - 1]),
    };
    let (axis_len, axis) = if per_row { (rows, "row") } else { (cols, "column") };
    let zps: Vec<i32> = match zp {
        None => vec![0],
        Some(z) => {
            per_axis_len(z, &format!("the zero point of {what}"), axis_len, axis)?;
            if z.dtype() != t.dtype() {
                bail!("the zero point of {what} must be {}, found {}", t.dtype(), z.dtype());
            }
            quantized_i32(z, what)?
        }
    };
    let v = quantized_i32(t, what)?;
    if zps.len() == 1 {
        let z = zps[0];
        return Ok(v.into_iter().map(|x| x - z).collect());
    }
    Ok(v.into_iter().enumerate().map(|(p, x)| x - zps[if per_row { (p / cols) % rows } else { p % cols }]).collect())
}

pub(super) fn eval_matmul_integer(inputs: &[Option<&Tensor>]) -> OpResult {
    let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
    let va = centered(a, opt_input(inputs, 2), true, "A")?;
    let vb = centered(b, opt_input(inputs, 3), false, "B")?;
    let (v, shape) = matmul::<i32>(&va, a.shape(), &vb, b.shape())?;
    Ok(vec![Tensor::from_vec(shape, v)?])
}

pub(super) fn eval_qlinear_matmul(inputs: &[Option<&Tensor>]) -> OpResult {
    let (a, a_scale, b, b_scale, y_scale) =
        (input(inputs, 0)?, input(inputs, 1)?, input(inputs, 3)?, input(inputs, 4)?, input(inputs, 6)?);
    let y_zp = opt_input(inputs, 7);
    let va = centered(a, opt_input(inputs, 2), true, "a")?;
    let vb = centered(b, opt_input(inputs, 5), false, "b")?;
    let (acc, shape) = matmul::<i32>(&va, a.shape(), &vb, b.shape())?;
    let m = if a.rank() > 1 { a.shape()[a.rank() - 2] } else { 1 };
    let n = if b.rank() > 1 { b.shape()[b.rank() - 1] } else { 1 };
    per_axis_len(a_scale, "a_scale", m, "row")?;
    per_axis_len(b_scale, "b_scale", n, "column")?;
    per_axis_len(y_scale, "y_scale", 1, "tensor")?;
    let out_dtype = y_zp.map_or(a.dtype(), |z| z.dtype());
    // Element `p` of the result is row `(p / n) % m`, column `p % n` of its matrix.
    let scale_index = |p: usize| ((p / n) % m, p % n);
    requantize(&acc, shape, a_scale, b_scale, y_scale, y_zp, out_dtype, scale_index)
}

pub(super) fn eval_det(inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let s = x.shape();
    if s.len() < 2 || s[s.len() - 1] != s[s.len() - 2] {
        bail!("Det needs square matrices in the last two dims, found shape {s:?}");
    }
    if !x.dtype().is_float() {
        bail!("Det needs a float tensor, found {}", x.dtype());
    }
    let n = s[s.len() - 1];
    let batch = s[..s.len() - 2].to_vec();
    // The determinant of a 0x0 matrix is 1.
    let dets: Vec<f64> = if n == 0 {
        vec![1.0; batch.iter().product()]
    } else {
        x.to_f64_vec().chunks(n * n).map(|m| det(m, n)).collect()
    };
    Ok(vec![Tensor::from_vec(batch, dets)?.cast(x.dtype())])
}

/// The determinant of a row-major `n x n` matrix by LU decomposition with partial pivoting.
fn det(m: &[f64], n: usize) -> f64 {
    let mut a = m.to_vec();
    let mut d = 1.0;
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i * n + c].abs().total_cmp(&a[j * n + c].abs())).unwrap_or(c);
        if a[p * n + c] == 0.0 {
            return 0.0;
        }
        if p != c {
            for j in 0..n {
                a.swap(p * n + j, c * n + j);
            }
            d = -d;
        }
        let pivot = a[c * n + c];
        d *= pivot;
        for i in c + 1..n {
            let f = a[i * n + c] / pivot;
            for j in c..n {
                a[i * n + j] -= f * a[c * n + j];
            }
        }
    }
    d
}
