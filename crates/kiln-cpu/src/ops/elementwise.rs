//! CPU kernels for the elementwise family.
//!
//! Broadcasting goes through [`Plan`], which collapses the output into as few dims as the
//! inputs' broadcast patterns allow and runs a tight inner loop over the last one, so the
//! common cases (same shapes, a scalar, a per-channel operand) never build index vectors.
//! f16 and bf16 math is done in f32 and rounded back, as the reference does.

use super::common::{input, opt_input};
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp, VariadicOp};
use kiln_ir::ops::ElementwiseOp;
use kiln_ir::{dispatch, DType, Elem, Tensor, TensorData};
use num_traits::Float;

pub(super) fn eval(op: &ElementwiseOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let _ = num_outputs;
    let out = match op {
        ElementwiseOp::Unary(u) => unary(*u, input(inputs, 0)?)?,
        ElementwiseOp::Binary(b) => binary(*b, input(inputs, 0)?, input(inputs, 1)?)?,
        ElementwiseOp::Variadic(v) => variadic(*v, inputs)?,
        ElementwiseOp::LegacyBinary { op, axis } => {
            let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
            binary(*op, a, &align_legacy(a, b, *axis)?)?
        }
        ElementwiseOp::Where => where_(input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?)?,
        ElementwiseOp::Clip { min, max } => clip(inputs, *min, *max)?,
        ElementwiseOp::Cast { to, saturate } => input(inputs, 0)?.cast_with(*to, *saturate),
        ElementwiseOp::CastLike { saturate } => input(inputs, 0)?.cast_with(input(inputs, 1)?.dtype(), *saturate),
    };
    Ok(vec![out])
}

// ---------------------------------------------------------------------------------------------
// Broadcasting

/// A broadcast loop nest over several inputs.
///
/// Output dims of size 1 are dropped and neighbouring dims in which every input is either
/// read in full or broadcast alike are merged, so `[n, c, h, w] + [c, 1, 1]` becomes
/// `[n, c, h·w]` with the second input read at stride 0 in the inner dim.
struct Plan {
    /// The broadcast output shape.
    out: Vec<usize>,
    /// The collapsed loop dims; never empty unless the output is empty.
    dims: Vec<usize>,
    /// Per input, its stride in each collapsed dim (0 where broadcast).
    strides: Vec<Vec<usize>>,
}

impl Plan {
    fn new(shapes: &[&[usize]]) -> Result<Plan, OpError> {
        let out = super::common::broadcast_many(shapes)?;
        let n = out.len();
        // Per collapsed dim: its size and whether each input is read in full along it.
        let mut dims: Vec<(usize, Vec<bool>)> = vec![];
        for (i, &d) in out.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let full: Vec<bool> = shapes.iter().map(|s| i + s.len() >= n && s[i + s.len() - n] != 1).collect();
            match dims.last_mut() {
                Some((size, f)) if *f == full => *size *= d,
                _ => dims.push((d, full)),
            }
        }
        if dims.is_empty() {
            dims.push((1, vec![false; shapes.len()]));
        }
        let strides = (0..shapes.len())
            .map(|k| {
                let mut acc = 1;
                let mut s = vec![0; dims.len()];
                for (j, (size, full)) in dims.iter().enumerate().rev() {
                    if full[k] {
                        s[j] = acc;
                        acc *= size;
                    }
                }
                s
            })
            .collect();
        Ok(Plan { out, dims: dims.into_iter().map(|(d, _)| d).collect(), strides })
    }

    fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// The stride of input `k` in the innermost dim: 1, or 0 where broadcast.
    fn inner_stride(&self, k: usize) -> usize {
        self.strides[k].last().copied().unwrap_or(0)
    }

    /// Calls `f(offsets, len)` for every run of the innermost dim, in row-major order, with
    /// the offset of the run's first element in each input.
    fn for_each_run(&self, mut f: impl FnMut(&[usize], usize)) {
        if self.numel() == 0 {
            return;
        }
        let outer = self.dims.len() - 1;
        let len = self.dims[outer];
        let mut coord = vec![0usize; outer];
        let mut offs = vec![0usize; self.strides.len()];
        loop {
            f(&offs, len);
            let mut d = outer;
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                coord[d] += 1;
                for (o, s) in offs.iter_mut().zip(&self.strides) {
                    *o += s[d];
                }
                if coord[d] < self.dims[d] {
                    break;
                }
                for (o, s) in offs.iter_mut().zip(&self.strides) {
                    *o -= s[d] * self.dims[d];
                }
                coord[d] = 0;
            }
        }
    }
}

/// Applies `f` to the broadcast pairs of `a` and `b`, returning the output shape and values.
fn zip_map<A: Copy, B: Copy, O: Copy>(
    a: &[A],
    ash: &[usize],
    b: &[B],
    bsh: &[usize],
    f: impl Fn(A, B) -> O,
) -> Result<(Vec<usize>, Vec<O>), OpError> {
    if ash == bsh {
        return Ok((ash.to_vec(), a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()));
    }
    let plan = Plan::new(&[ash, bsh])?;
    let mut out = Vec::with_capacity(plan.numel());
    let (ia, ib) = (plan.inner_stride(0), plan.inner_stride(1));
    // The plan's offsets and run lengths stay within the inputs, whose lengths match their shapes.
    plan.for_each_run(|o, len| match (ia, ib) {
        (1, 1) => out.extend(a[o[0]..o[0] + len].iter().zip(&b[o[1]..o[1] + len]).map(|(&x, &y)| f(x, y))),
        (1, _) => {
            let y = b[o[1]];
            out.extend(a[o[0]..o[0] + len].iter().map(|&x| f(x, y)));
        }
        (_, 1) => {
            let x = a[o[0]];
            out.extend(b[o[1]..o[1] + len].iter().map(|&y| f(x, y)));
        }
        _ => out.extend(std::iter::repeat_n(f(a[o[0]], b[o[1]]), len)),
    });
    Ok((plan.out, out))
}

// ---------------------------------------------------------------------------------------------
// Numeric element types

/// Arithmetic shared by the numeric element types: wrapping for integers, IEEE for floats.
trait Num: Elem {
    const INT: bool;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// Integers truncate toward zero; the caller rules out a zero divisor.
    fn div(self, o: Self) -> Self;
    /// The remainder with the sign of `self` (C `fmod`); the caller rules out a zero divisor.
    fn fmod(self, o: Self) -> Self;
}

macro_rules! num_float {
    ($($t:ty),*) => {$(
        impl Num for $t {
            const INT: bool = false;
            #[inline] fn add(self, o: Self) -> Self { self + o }
            #[inline] fn sub(self, o: Self) -> Self { self - o }
            #[inline] fn mul(self, o: Self) -> Self { self * o }
            #[inline] fn div(self, o: Self) -> Self { self / o }
            #[inline] fn fmod(self, o: Self) -> Self { self % o }
        }
    )*};
}
macro_rules! num_int {
    ($($t:ty),*) => {$(
        impl Num for $t {
            const INT: bool = true;
            #[inline] fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            #[inline] fn sub(self, o: Self) -> Self { self.wrapping_sub(o) }
            #[inline] fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            #[inline] fn div(self, o: Self) -> Self { self.wrapping_div(o) }
            #[inline] fn fmod(self, o: Self) -> Self { self.wrapping_rem(o) }
        }
    )*};
}
num_float!(f32, f64);
num_int!(i8, u8, i16, u16, i32, u32, i64, u64);

/// Runs `$body` with `$v` bound to the vector of a numeric storage other than f16 and bf16
/// (which callers widen to f32 first); `$other` otherwise.
macro_rules! numeric {
    ($data:expr, $v:ident => $body:expr, _ => $other:expr) => {
        match $data {
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
            TensorData::I8($v) => $body,
            TensorData::U8($v) => $body,
            TensorData::I16($v) => $body,
            TensorData::U16($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::U32($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::U64($v) => $body,
            _ => $other,
        }
    };
}

/// Like `numeric!` for the integer storages.
macro_rules! integer {
    ($data:expr, $v:ident => $body:expr, _ => $other:expr) => {
        match $data {
            TensorData::I8($v) => $body,
            TensorData::U8($v) => $body,
            TensorData::I16($v) => $body,
            TensorData::U16($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::U32($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::U64($v) => $body,
            _ => $other,
        }
    };
}

fn is_half(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16)
}

/// Widens f16 and bf16 to f32; other types are returned as they are.
fn widen(t: &Tensor) -> std::borrow::Cow<'_, Tensor> {
    if is_half(t.dtype()) {
        std::borrow::Cow::Owned(t.cast(DType::F32))
    } else {
        std::borrow::Cow::Borrowed(t)
    }
}

/// Runs `f` on f16 and bf16 inputs widened to f32 and rounds the result back to the type of
/// input 0; other types go through unchanged.
fn via_f32(ts: &[&Tensor], f: impl FnOnce(&[&Tensor]) -> Result<Tensor, OpError>) -> Result<Tensor, OpError> {
    let d = ts.first().map(|t| t.dtype());
    match d {
        Some(d) if is_half(d) => {
            let wide: Vec<std::borrow::Cow<'_, Tensor>> = ts.iter().map(|t| widen(t)).collect();
            let refs: Vec<&Tensor> = wide.iter().map(|c| c.as_ref()).collect();
            Ok(f(&refs)?.cast(d))
        }
        _ => f(ts),
    }
}

fn same_dtype(op: &str, a: &Tensor, b: &Tensor) -> Result<(), OpError> {
    if a.dtype() != b.dtype() {
        bail!("{op}: inputs must have the same type, found {} and {}", a.dtype(), b.dtype());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Binary and variadic ops

/// Arithmetic kernels over two tensors of one numeric type.
#[derive(Clone, Copy, Debug)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Mod { fmod: bool },
    Max,
    Min,
    PRelu,
}

fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor, OpError> {
    let arith = |k: Arith| arith(k, op.name(), a, b);
    match op {
        BinaryOp::Add => arith(Arith::Add),
        BinaryOp::Sub => arith(Arith::Sub),
        BinaryOp::Mul => arith(Arith::Mul),
        BinaryOp::Div => arith(Arith::Div),
        BinaryOp::Mod { fmod } => arith(Arith::Mod { fmod }),
        BinaryOp::PRelu => arith(Arith::PRelu),
        BinaryOp::Pow => pow(a, b),
        BinaryOp::Equal | BinaryOp::Less | BinaryOp::LessOrEqual | BinaryOp::Greater | BinaryOp::GreaterOrEqual => {
            same_dtype(op.name(), a, b)?;
            dispatch!(a.data(), v => compare(op, v, a.shape(), b))
        }
        BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => {
            let (x, y) = (bools(op.name(), a)?, bools(op.name(), b)?);
            let (shape, v) = match op {
                BinaryOp::And => zip_map(x, a.shape(), y, b.shape(), |p, q| p & q)?,
                BinaryOp::Or => zip_map(x, a.shape(), y, b.shape(), |p, q| p | q)?,
                _ => zip_map(x, a.shape(), y, b.shape(), |p, q| p ^ q)?,
            };
            Ok(Tensor::from_vec(shape, v)?)
        }
        BinaryOp::BitwiseAnd | BinaryOp::BitwiseOr | BinaryOp::BitwiseXor | BinaryOp::BitShift { .. } => {
            same_dtype(op.name(), a, b)?;
            integer!(a.data(), v => bitwise(op, v, a.shape(), b), _ => bail!("{}: expected integer inputs, found {}", op.name(), a.dtype()))
        }
    }
}

fn bools<'a>(op: &str, t: &'a Tensor) -> Result<&'a [bool], OpError> {
    t.as_slice::<bool>().map_err(|_| OpError::new(format!("{op}: expected bool inputs, found {}", t.dtype())))
}

fn arith(k: Arith, name: &str, a: &Tensor, b: &Tensor) -> Result<Tensor, OpError> {
    same_dtype(name, a, b)?;
    via_f32(&[a, b], |ts| {
        let (a, b) = (ts[0], ts[1]);
        numeric!(a.data(), v => arith_typed(k, v, a.shape(), b), _ => bail!("{name}: expected numeric inputs, found {}", a.dtype()))
    })
}

fn arith_typed<T: Num>(k: Arith, a: &[T], ash: &[usize], b: &Tensor) -> Result<Tensor, OpError> {
    let bv = b.as_slice::<T>()?;
    let bsh = b.shape();
    let zero = T::default();
    if T::INT && matches!(k, Arith::Div | Arith::Mod { .. }) && bv.contains(&zero) {
        bail!("integer division by zero");
    }
    let (shape, v) = match k {
        Arith::Add => zip_map(a, ash, bv, bsh, T::add)?,
        Arith::Sub => zip_map(a, ash, bv, bsh, T::sub)?,
        Arith::Mul => zip_map(a, ash, bv, bsh, T::mul)?,
        Arith::Div => zip_map(a, ash, bv, bsh, T::div)?,
        Arith::Mod { fmod: true } => zip_map(a, ash, bv, bsh, T::fmod)?,
        // Python's modulo: the result takes the sign of the divisor.
        Arith::Mod { fmod: false } => zip_map(a, ash, bv, bsh, |x, y| {
            let r = x.fmod(y);
            if r != zero && ((r < zero) != (y < zero)) {
                r.add(y)
            } else {
                r
            }
        })?,
        // NaN wins, as with numpy's maximum and minimum.
        Arith::Max => zip_map(a, ash, bv, bsh, |x, y| if x > y || is_nan(x) { x } else { y })?,
        Arith::Min => zip_map(a, ash, bv, bsh, |x, y| if x < y || is_nan(x) { x } else { y })?,
        Arith::PRelu => zip_map(a, ash, bv, bsh, |x, s| if x < zero { x.mul(s) } else { x })?,
    };
    Ok(Tensor::from_vec(shape, v)?)
}

/// Whether `x` is a NaN, for any element type.
#[allow(clippy::eq_op)] // only NaN differs from itself
fn is_nan<T: PartialEq>(x: T) -> bool {
    x != x
}

fn compare<T: Elem>(op: BinaryOp, a: &[T], ash: &[usize], b: &Tensor) -> Result<Tensor, OpError> {
    let bv = b.as_slice::<T>()?;
    let bsh = b.shape();
    let (shape, v) = match op {
        BinaryOp::Equal => zip_map(a, ash, bv, bsh, |x, y| x == y)?,
        BinaryOp::Less => zip_map(a, ash, bv, bsh, |x, y| x < y)?,
        BinaryOp::LessOrEqual => zip_map(a, ash, bv, bsh, |x, y| x <= y)?,
        BinaryOp::Greater => zip_map(a, ash, bv, bsh, |x, y| x > y)?,
        _ => zip_map(a, ash, bv, bsh, |x, y| x >= y)?,
    };
    Ok(Tensor::from_vec(shape, v)?)
}

/// Integer ops whose element types provide the bit operators.
trait Bits:
    Num + std::ops::BitAnd<Output = Self> + std::ops::BitOr<Output = Self> + std::ops::BitXor<Output = Self>
{
    fn shl(self, n: Self) -> Self;
    fn shr(self, n: Self) -> Self;
    fn not(self) -> Self;
}
macro_rules! bits {
    ($($t:ty),*) => {$(
        impl Bits for $t {
            // Shifting by the bit width or more gives 0, as numpy does.
            #[inline] fn shl(self, n: Self) -> Self { u32::try_from(n).ok().and_then(|n| self.checked_shl(n)).unwrap_or(0) }
            #[inline] fn shr(self, n: Self) -> Self { u32::try_from(n).ok().and_then(|n| self.checked_shr(n)).unwrap_or(0) }
            #[inline] fn not(self) -> Self { !self }
        }
    )*};
}
bits!(i8, u8, i16, u16, i32, u32, i64, u64);

fn bitwise<T: Bits>(op: BinaryOp, a: &[T], ash: &[usize], b: &Tensor) -> Result<Tensor, OpError> {
    let bv = b.as_slice::<T>()?;
    let bsh = b.shape();
    let (shape, v) = match op {
        BinaryOp::BitwiseAnd => zip_map(a, ash, bv, bsh, |x, y| x & y)?,
        BinaryOp::BitwiseOr => zip_map(a, ash, bv, bsh, |x, y| x | y)?,
        BinaryOp::BitwiseXor => zip_map(a, ash, bv, bsh, |x, y| x ^ y)?,
        BinaryOp::BitShift { left: true } => zip_map(a, ash, bv, bsh, T::shl)?,
        _ => zip_map(a, ash, bv, bsh, T::shr)?,
    };
    Ok(Tensor::from_vec(shape, v)?)
}

/// The output has the base's type; mixed types compute in f64 and convert, as numpy's
/// `power(a, b).astype(a.dtype)` does.
fn pow(a: &Tensor, b: &Tensor) -> Result<Tensor, OpError> {
    if a.dtype() == DType::Bool || b.dtype() == DType::Bool {
        bail!("Pow: expected numeric inputs, found {} and {}", a.dtype(), b.dtype());
    }
    via_f32(&[a], |ts| {
        let a = ts[0];
        if let (Ok(x), Ok(y)) = (a.as_slice::<f32>(), b.as_slice::<f32>()) {
            let (shape, v) = zip_map(x, a.shape(), y, b.shape(), f32::powf)?;
            return Ok(Tensor::from_vec(shape, v)?);
        }
        numeric!(a.data(), v => pow_typed(v, a.shape(), b), _ => bail!("Pow: expected a numeric base, found {}", a.dtype()))
    })
}

fn pow_typed<T: Num>(a: &[T], ash: &[usize], b: &Tensor) -> Result<Tensor, OpError> {
    let (shape, out) = if T::INT && b.dtype().is_int() {
        let ev = b.to_i64_vec();
        zip_map(a, ash, &ev, b.shape(), |x, e| match u32::try_from(e) {
            Ok(n) => T::from_i64(x.to_i64().wrapping_pow(n)),
            Err(_) => T::from_f64(x.to_f64().powf(e as f64)),
        })?
    } else {
        let ev = b.to_f64_vec();
        zip_map(a, ash, &ev, b.shape(), |x, e| T::from_f64(x.to_f64().powf(e)))?
    };
    Ok(Tensor::from_vec(shape, out)?)
}

fn variadic(op: VariadicOp, inputs: &[Option<&Tensor>]) -> Result<Tensor, OpError> {
    let ts: Vec<&Tensor> = inputs.iter().flatten().copied().collect();
    if ts.is_empty() {
        bail!("{} needs at least one input", op.name());
    }
    let k = match op {
        VariadicOp::Max => Arith::Max,
        VariadicOp::Min => Arith::Min,
        VariadicOp::Sum | VariadicOp::Mean => Arith::Add,
    };
    via_f32(&ts, |ts| {
        let mut acc = ts[0].clone();
        for t in &ts[1..] {
            acc = arith(k, op.name(), &acc, t)?;
        }
        if op == VariadicOp::Mean {
            let n = Tensor::scalar(ts.len() as f64).cast(acc.dtype());
            acc = arith(Arith::Div, op.name(), &acc, &n)?;
        }
        Ok(acc)
    })
}

// ---------------------------------------------------------------------------------------------
// Unary ops

fn unary(u: UnaryOp, x: &Tensor) -> Result<Tensor, OpError> {
    let shape = x.shape().to_vec();
    let name = u.name();
    match u {
        UnaryOp::Not => {
            let v: Vec<bool> = bools(name, x)?.iter().map(|b| !b).collect();
            Ok(Tensor::from_vec(shape, v)?)
        }
        UnaryOp::BitwiseNot => integer!(x.data(), v => {
            Ok(Tensor::from_vec(shape, v.iter().map(|&y| y.not()).collect::<Vec<_>>())?)
        }, _ => bail!("{name}: expected an integer input, found {}", x.dtype())),
        UnaryOp::IsNaN | UnaryOp::IsInf { .. } => {
            if !x.dtype().is_float() {
                bail!("{name}: expected a float input, found {}", x.dtype());
            }
            let test: Box<dyn Fn(f64) -> bool> = match u {
                UnaryOp::IsInf { detect_negative, detect_positive } => {
                    Box::new(move |y: f64| y.is_infinite() && if y > 0.0 { detect_positive } else { detect_negative })
                }
                _ => Box::new(|y: f64| y.is_nan()),
            };
            Ok(Tensor::from_vec(shape, x.to_f64_vec().into_iter().map(test).collect::<Vec<bool>>())?)
        }
        _ => {
            let unsupported = || OpError::new(format!("{name}: input type {} is not supported", x.dtype()));
            match x.data() {
                TensorData::F32(v) => Ok(Tensor::from_vec(shape, float_unary(u, v).ok_or_else(unsupported)?)?),
                TensorData::F64(v) => Ok(Tensor::from_vec(shape, float_unary(u, v).ok_or_else(unsupported)?)?),
                TensorData::F16(_) | TensorData::BF16(_) => {
                    let wide = x.cast(DType::F32);
                    let v = float_unary(u, wide.as_slice::<f32>()?).ok_or_else(unsupported)?;
                    Ok(Tensor::from_vec(shape, v)?.cast(x.dtype()))
                }
                data => numeric!(data, v => {
                    Ok(Tensor::from_vec(shape, int_unary(u, v).ok_or_else(unsupported)?)?)
                }, _ => Err(unsupported())),
            }
        }
    }
}

/// The unary ops defined on integers (after the float-only ones were ruled out).
fn int_unary<T: Num>(u: UnaryOp, v: &[T]) -> Option<Vec<T>> {
    let f: fn(T) -> T = match u {
        UnaryOp::Abs => |x| if x < T::default() { T::default().sub(x) } else { x },
        UnaryOp::Neg => |x| T::default().sub(x),
        UnaryOp::Relu => |x| if x < T::default() { T::default() } else { x },
        UnaryOp::Sign => |x| T::from_i64((x > T::default()) as i64 - (x < T::default()) as i64),
        _ => return None,
    };
    apply(v, f)
}

/// Maps every element; generic so that each op's closure is inlined into its loop.
fn apply<F: Copy>(v: &[F], f: impl Fn(F) -> F) -> Option<Vec<F>> {
    Some(v.iter().map(|&x| f(x)).collect())
}

/// A constant in the compute type.
fn c<F: Float>(x: f64) -> F {
    F::from(x).unwrap_or_else(F::nan)
}

/// Rounds half to even, as numpy's `round` does.
fn round_even<F: Float>(x: F) -> F {
    let r = x.round();
    if (r - x).abs() == c(0.5) && r % c(2.0) != F::zero() {
        r - x.signum()
    } else {
        r
    }
}

/// The float unary ops, computed in `F`; `None` for ops not defined on floats.
fn float_unary<F: Float>(u: UnaryOp, v: &[F]) -> Option<Vec<F>> {
    let one = F::one();
    let zero = F::zero();
    match u {
        UnaryOp::Relu => apply(v, |x| if x < zero { zero } else { x }),
        UnaryOp::Sigmoid => apply(v, |x| one / (one + (-x).exp())),
        UnaryOp::Neg => apply(v, |x| -x),
        UnaryOp::Abs => apply(v, |x| x.abs()),
        UnaryOp::Exp => apply(v, |x| x.exp()),
        UnaryOp::Log => apply(v, |x| x.ln()),
        UnaryOp::Sqrt => apply(v, |x| x.sqrt()),
        UnaryOp::Reciprocal => apply(v, |x| one / x),
        UnaryOp::Floor => apply(v, |x| x.floor()),
        UnaryOp::Ceil => apply(v, |x| x.ceil()),
        UnaryOp::Round => apply(v, round_even),
        UnaryOp::Sign => apply(v, |x| {
            if x > zero {
                one
            } else if x < zero {
                -one
            } else {
                x
            }
        }),
        UnaryOp::Erf => apply(v, |x| c(erf(x.to_f64().unwrap_or(f64::NAN)))),
        UnaryOp::Sin => apply(v, |x| x.sin()),
        UnaryOp::Cos => apply(v, |x| x.cos()),
        UnaryOp::Tan => apply(v, |x| x.tan()),
        UnaryOp::Asin => apply(v, |x| x.asin()),
        UnaryOp::Acos => apply(v, |x| x.acos()),
        UnaryOp::Atan => apply(v, |x| x.atan()),
        UnaryOp::Sinh => apply(v, |x| x.sinh()),
        UnaryOp::Cosh => apply(v, |x| x.cosh()),
        UnaryOp::Asinh => apply(v, |x| x.asinh()),
        UnaryOp::Acosh => apply(v, |x| x.acosh()),
        UnaryOp::Atanh => apply(v, |x| x.atanh()),
        UnaryOp::Tanh => apply(v, |x| x.tanh()),
        UnaryOp::LeakyRelu { alpha } => {
            let a: F = c(alpha as f64);
            apply(v, |x| if x < zero { a * x } else { x })
        }
        UnaryOp::Elu { alpha } => {
            let a: F = c(alpha as f64);
            apply(v, |x| if x < zero { a * (x.exp() - one) } else { x })
        }
        UnaryOp::Selu { alpha, gamma } => {
            let (a, g): (F, F) = (c(alpha as f64), c(gamma as f64));
            apply(v, |x| if x <= zero { g * (a * x.exp() - a) } else { g * x })
        }
        UnaryOp::Celu { alpha } => {
            let a: F = c(alpha as f64);
            apply(v, |x| x.max(zero) + (a * ((x / a).exp() - one)).min(zero))
        }
        UnaryOp::HardSigmoid { alpha, beta } => {
            let (a, b): (F, F) = (c(alpha as f64), c(beta as f64));
            apply(v, |x| (a * x + b).min(one).max(zero))
        }
        UnaryOp::HardSwish => {
            let (a, b): (F, F) = (c(1.0 / 6.0), c(0.5));
            apply(v, |x| x * (a * x + b).min(one).max(zero))
        }
        // ln(1 + e^x) without overflow: past 20 the result is x to f64 precision.
        UnaryOp::Softplus => apply(v, |x| if x > c(20.0) { x } else { x.exp().ln_1p() }),
        UnaryOp::Softsign => apply(v, |x| x / (one + x.abs())),
        UnaryOp::ThresholdedRelu { alpha } => {
            let a: F = c(alpha as f64);
            apply(v, |x| if x > a { x } else { zero })
        }
        UnaryOp::Gelu { tanh: false } => apply(v, |x| {
            c::<F>(0.5) * x * (one + c::<F>(erf(x.to_f64().unwrap_or(f64::NAN) / std::f64::consts::SQRT_2)))
        }),
        UnaryOp::Gelu { tanh: true } => {
            let k: F = c((2.0 / std::f64::consts::PI).sqrt());
            apply(v, |x| c::<F>(0.5) * x * (one + (k * (x + c::<F>(0.044715) * x * x * x)).tanh()))
        }
        UnaryOp::Mish => apply(v, |x| x * (if x > c(20.0) { x } else { x.exp().ln_1p() }).tanh()),
        UnaryOp::Shrink { bias, lambd } => {
            let (b, l): (F, F) = (c(bias as f64), c(lambd as f64));
            apply(v, |x| {
                if x < -l {
                    x + b
                } else if x > l {
                    x - b
                } else {
                    zero
                }
            })
        }
        UnaryOp::Swish { alpha } => {
            let a: F = c(alpha as f64);
            apply(v, |x| x / (one + (-a * x).exp()))
        }
        UnaryOp::Not | UnaryOp::BitwiseNot | UnaryOp::IsNaN | UnaryOp::IsInf { .. } => None,
    }
}

/// The error function: its Maclaurin series below 3 (accurate to about 1e-13 there) and the
/// Numerical Recipes Chebyshev fit of erfc above (relative error below 1.2e-7 on erfc, so
/// below 3e-12 on erf).
fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let r = if a < 3.0 {
        // erf(x) = 2/√π · Σ (-1)^n x^(2n+1) / (n! (2n+1))
        let x2 = a * a;
        let mut term = a;
        let mut sum = a;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        let t = 1.0 / (1.0 + 0.5 * a);
        let poly = -a * a - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
        1.0 - t * poly.exp()
    };
    r.copysign(x)
}

// ---------------------------------------------------------------------------------------------
// Where and Clip

fn where_(c: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor, OpError> {
    let cv = bools("Where", c)?;
    same_dtype("Where", x, y)?;
    dispatch!(x.data(), xv => where_typed(cv, c.shape(), xv, x.shape(), y))
}

fn where_typed<T: Elem>(c: &[bool], csh: &[usize], x: &[T], xsh: &[usize], y: &Tensor) -> Result<Tensor, OpError> {
    let yv = y.as_slice::<T>()?;
    let plan = Plan::new(&[csh, xsh, y.shape()])?;
    let s = [plan.inner_stride(0), plan.inner_stride(1), plan.inner_stride(2)];
    let mut out = Vec::with_capacity(plan.numel());
    plan.for_each_run(|o, len| {
        out.extend((0..len).map(|i| if c[o[0] + i * s[0]] { x[o[1] + i * s[1]] } else { yv[o[2] + i * s[2]] }))
    });
    Ok(Tensor::from_vec(plan.out, out)?)
}

fn clip(inputs: &[Option<&Tensor>], min: Option<f32>, max: Option<f32>) -> Result<Tensor, OpError> {
    let x = input(inputs, 0)?;
    dispatch!(x.data(), v => {
        let lo = clip_bound(opt_input(inputs, 1), min, x.dtype(), "min")?;
        let hi = clip_bound(opt_input(inputs, 2), max, x.dtype(), "max")?;
        Ok(Tensor::from_vec(x.shape().to_vec(), clamp(v, lo, hi))?)
    })
}

/// When min > max every element becomes max, as the spec asks.
fn clamp<T: Elem>(v: &[T], lo: Option<T>, hi: Option<T>) -> Vec<T> {
    v.iter()
        .map(|&y| {
            let y = match lo {
                Some(l) if y < l => l,
                _ => y,
            };
            match hi {
                Some(h) if y > h => h,
                _ => y,
            }
        })
        .collect()
}

/// A Clip bound: the scalar input if given, else the attribute, else none.
fn clip_bound<T: Elem>(t: Option<&Tensor>, attr: Option<f32>, dtype: DType, name: &str) -> Result<Option<T>, OpError> {
    let Some(t) = t else { return Ok(attr.map(|a| T::from_f64(a as f64))) };
    if t.dtype() != dtype {
        bail!("Clip: {name} must have the input's type {dtype}, found {}", t.dtype());
    }
    match t.as_slice::<T>()? {
        [b] => Ok(Some(*b)),
        _ => bail!("Clip: {name} must be a scalar, found shape {:?}", t.shape()),
    }
}

/// Reshapes `b` so that numpy broadcasting lines its dims up with `a`'s starting at `axis`,
/// as broadcasting did before opset 7.
fn align_legacy(a: &Tensor, b: &Tensor, axis: i64) -> Result<Tensor, OpError> {
    let ax = if axis < 0 { axis + a.rank() as i64 } else { axis };
    if ax < 0 || ax as usize + b.rank() > a.rank() {
        bail!("input 1 of shape {:?} cannot line up with input 0 of shape {:?} at axis {axis}", b.shape(), a.shape());
    }
    let mut shape = b.shape().to_vec();
    shape.resize(a.rank() - ax as usize, 1);
    Ok(b.clone().reshape(shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(op: ElementwiseOp, inputs: &[Tensor], expected: Tensor) {
        let ins: Vec<Option<&Tensor>> = inputs.iter().map(Some).collect();
        assert_eq!(eval(&op, &ins, 1).unwrap(), vec![expected]);
    }

    fn t<T: Elem>(shape: &[usize], v: Vec<T>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    /// Naive broadcasting by coordinates, to compare the collapsed loop nest against.
    fn naive_add(a: &[f32], ash: &[usize], b: &[f32], bsh: &[usize]) -> (Vec<usize>, Vec<f32>) {
        let out = kiln_ir::ops::infer::broadcast_shapes(ash, bsh).unwrap();
        let n: usize = out.iter().product();
        let at = |sh: &[usize], v: &[f32], mut flat: usize| {
            let mut idx = 0;
            let mut mul = 1;
            for d in (0..out.len()).rev() {
                let c = flat % out[d];
                flat /= out[d];
                if let Some(k) = (d + sh.len()).checked_sub(out.len()) {
                    if sh[k] != 1 {
                        idx += c * mul;
                    }
                    mul *= sh[k];
                }
            }
            v[idx]
        };
        (out.clone(), (0..n).map(|i| at(ash, a, i) + at(bsh, b, i)).collect())
    }

    #[test]
    fn broadcasting_matches_naive() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 5, 7], &[3, 1, 1]),
            (&[2, 3, 5, 7], &[7]),
            (&[3, 1, 5], &[1, 4, 1]),
            (&[1], &[3, 50]),
            (&[4, 1, 3], &[1, 1, 1]),
            (&[], &[2, 3]),
            (&[2, 0, 3], &[1, 3]),
            (&[783], &[783]),
            (&[2, 1, 3, 1], &[2, 4, 1, 5]),
        ];
        for (ash, bsh) in cases {
            let na: usize = ash.iter().product();
            let nb: usize = bsh.iter().product();
            let a: Vec<f32> = (0..na).map(|i| i as f32).collect();
            let b: Vec<f32> = (0..nb).map(|i| 1000.0 * i as f32).collect();
            let (shape, want) = naive_add(&a, ash, &b, bsh);
            check(ElementwiseOp::Binary(BinaryOp::Add), &[t(ash, a), t(bsh, b)], t(&shape, want));
        }
    }

    #[test]
    fn incompatible_shapes_fail() {
        let op = ElementwiseOp::Binary(BinaryOp::Mul);
        let (a, b) = (t(&[2, 3], vec![0f32; 6]), t(&[4], vec![0f32; 4]));
        assert!(eval(&op, &[Some(&a), Some(&b)], 1).unwrap_err().0.contains("do not broadcast"));
    }

    #[test]
    fn integer_division() {
        let div = ElementwiseOp::Binary(BinaryOp::Div);
        check(
            div.clone(),
            &[t(&[3], vec![7i32, -7, i32::MIN]), t(&[3], vec![2i32, 2, -1])],
            t(&[3], vec![3i32, -3, i32::MIN]),
        );
        let (a, b) = (t(&[2], vec![1i64, 2]), t(&[2], vec![1i64, 0]));
        assert_eq!(eval(&div, &[Some(&a), Some(&b)], 1).unwrap_err().0, "integer division by zero");
    }

    #[test]
    fn mod_signs() {
        let a = t(&[4], vec![-4i32, 7, 5, -5]);
        let b = t(&[4], vec![3i32, -3, 3, -3]);
        check(
            ElementwiseOp::Binary(BinaryOp::Mod { fmod: false }),
            &[a.clone(), b.clone()],
            t(&[4], vec![2i32, -2, 2, -2]),
        );
        check(ElementwiseOp::Binary(BinaryOp::Mod { fmod: true }), &[a, b], t(&[4], vec![-1i32, 1, 2, -2]));
    }

    #[test]
    fn round_half_to_even() {
        let x = t(&[6], vec![0.5f32, 1.5, 2.5, -2.5, -0.4, 2.6]);
        check(ElementwiseOp::Unary(UnaryOp::Round), &[x], t(&[6], vec![0f32, 2.0, 2.0, -2.0, -0.0, 3.0]));
    }

    #[test]
    fn where_broadcasts_three_ways() {
        let c = t(&[2, 1], vec![true, false]);
        let x = t(&[3], vec![1i64, 2, 3]);
        let y = t(&[], vec![0i64]);
        check(ElementwiseOp::Where, &[c, x, y], t(&[2, 3], vec![1i64, 2, 3, 0, 0, 0]));
    }

    #[test]
    fn pow_keeps_base_type() {
        let a = t(&[3], vec![2i32, 3, 4]);
        check(ElementwiseOp::Binary(BinaryOp::Pow), &[a.clone(), t(&[3], vec![3i64, 2, 0])], t(&[3], vec![8i32, 9, 1]));
        check(ElementwiseOp::Binary(BinaryOp::Pow), &[a, t(&[1], vec![0.5f32])], t(&[3], vec![1i32, 1, 2]));
    }

    #[test]
    fn erf_is_accurate() {
        for (x, want) in [
            (0.1, 0.112_462_916_018_284_9),
            (1.0, 0.842_700_792_949_714_9),
            (-2.5, -0.999_593_047_982_555),
            (3.5, 0.999_999_256_901_627_7),
        ] {
            assert!((erf(x) - want).abs() < 1e-12, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn clip_with_min_above_max_gives_max() {
        let x = t(&[3], vec![-1f32, 0.5, 9.0]);
        let op = ElementwiseOp::Clip { min: None, max: None };
        let ins = [Some(&x), Some(&Tensor::scalar(2f32)), Some(&Tensor::scalar(1f32))];
        assert_eq!(eval(&op, &ins, 1).unwrap(), vec![t(&[3], vec![1f32, 1.0, 1.0])]);
        let half = x.cast(DType::F16);
        let op = ElementwiseOp::Clip { min: Some(0.0), max: None };
        assert_eq!(eval(&op, &[Some(&half)], 1).unwrap(), vec![t(&[3], vec![0f32, 0.5, 9.0]).cast(DType::F16)]);
    }
}
