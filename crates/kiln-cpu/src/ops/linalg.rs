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
    let pick = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v.get(i).copied().unwrap_or(v[0]) };
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
