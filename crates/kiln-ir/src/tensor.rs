//! Dense host tensors: the values of constants, weights and the CPU executor.

use crate::lowp::{F4E2M1, F8E4M3FN, F8E4M3FNUZ, F8E5M2, F8E5M2FNUZ, F8E8M0, I4, U4};
use crate::DType;
use half::{bf16, f16};
use std::fmt;

/// The typed storage of a [`Tensor`], row-major.
#[derive(Clone, PartialEq)]
#[allow(missing_docs)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F64(Vec<f64>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    I64(Vec<i64>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
    F8E4M3FN(Vec<F8E4M3FN>),
    F8E4M3FNUZ(Vec<F8E4M3FNUZ>),
    F8E5M2(Vec<F8E5M2>),
    F8E5M2FNUZ(Vec<F8E5M2FNUZ>),
    U4(Vec<U4>),
    I4(Vec<I4>),
    F4E2M1(Vec<F4E2M1>),
    F8E8M0(Vec<F8E8M0>),
}

/// Applies `$body` to the vector inside a [`TensorData`], binding it as `$v`.
///
/// The body is instantiated once per element type, so it may use generic code.
#[macro_export]
macro_rules! dispatch {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::F32($v) => $body,
            $crate::TensorData::F16($v) => $body,
            $crate::TensorData::BF16($v) => $body,
            $crate::TensorData::F64($v) => $body,
            $crate::TensorData::I8($v) => $body,
            $crate::TensorData::U8($v) => $body,
            $crate::TensorData::I16($v) => $body,
            $crate::TensorData::U16($v) => $body,
            $crate::TensorData::I32($v) => $body,
            $crate::TensorData::U32($v) => $body,
            $crate::TensorData::I64($v) => $body,
            $crate::TensorData::U64($v) => $body,
            $crate::TensorData::Bool($v) => $body,
            $crate::TensorData::F8E4M3FN($v) => $body,
            $crate::TensorData::F8E4M3FNUZ($v) => $body,
            $crate::TensorData::F8E5M2($v) => $body,
            $crate::TensorData::F8E5M2FNUZ($v) => $body,
            $crate::TensorData::U4($v) => $body,
            $crate::TensorData::I4($v) => $body,
            $crate::TensorData::F4E2M1($v) => $body,
            $crate::TensorData::F8E8M0($v) => $body,
        }
    };
}

/// An element type that a [`Tensor`] can hold.
pub trait Elem: Copy + Default + PartialEq + PartialOrd + Send + Sync + fmt::Debug + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Wraps a vector of this type.
    fn wrap(v: Vec<Self>) -> TensorData;
    /// Borrows the vector if the storage holds this type.
    fn slice(d: &TensorData) -> Option<&[Self]>;
    /// Mutably borrows the vector if the storage holds this type.
    fn slice_mut(d: &mut TensorData) -> Option<&mut Vec<Self>>;
    /// Takes the vector if the storage holds this type.
    fn unwrap(d: TensorData) -> Option<Vec<Self>>;
    /// Converts to f64 (booleans become 0 or 1).
    fn to_f64(self) -> f64;
    /// Converts from f64 with `as`-cast semantics (saturating for integers, NaN to 0); the
    /// low-precision types follow ONNX `Cast` with `saturate=1` (see [`crate::lowp`]), the
    /// 4-bit integers wrap.
    fn from_f64(v: f64) -> Self;
    /// ONNX `Cast` with `saturate=0`: differs from [`Elem::from_f64`] only for the float8 and
    /// E8M0 types, where out-of-range values become Inf or NaN.
    fn from_f64_unsaturated(v: f64) -> Self {
        Self::from_f64(v)
    }
    /// Converts to i64 exactly where possible (floats truncate toward zero).
    fn to_i64(self) -> i64;
    /// Converts from i64 with wrapping semantics for integers.
    fn from_i64(v: i64) -> Self;
}

macro_rules! elem {
    ($t:ty, $d:ident, $to64:expr, $from64:expr, $toi:expr, $fromi:expr $(, $unsat:expr)?) => {
        impl Elem for $t {
            $(
            #[inline]
            fn from_f64_unsaturated(v: f64) -> Self {
                let f: fn(f64) -> $t = $unsat;
                f(v)
            }
            )?
            const DTYPE: DType = DType::$d;
            fn wrap(v: Vec<Self>) -> TensorData {
                TensorData::$d(v)
            }
            fn slice(d: &TensorData) -> Option<&[Self]> {
                match d {
                    TensorData::$d(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(d: &mut TensorData) -> Option<&mut Vec<Self>> {
                match d {
                    TensorData::$d(v) => Some(v),
                    _ => None,
                }
            }
            fn unwrap(d: TensorData) -> Option<Vec<Self>> {
                match d {
                    TensorData::$d(v) => Some(v),
                    _ => None,
                }
            }
            #[inline]
            fn to_f64(self) -> f64 {
                let f: fn($t) -> f64 = $to64;
                f(self)
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                let f: fn(f64) -> $t = $from64;
                f(v)
            }
            #[inline]
            fn to_i64(self) -> i64 {
                let f: fn($t) -> i64 = $toi;
                f(self)
            }
            #[inline]
            fn from_i64(v: i64) -> Self {
                let f: fn(i64) -> $t = $fromi;
                f(v)
            }
        }
    };
}

elem!(f32, F32, |x| x as f64, |v| v as f32, |x| x as i64, |v| v as f32);
elem!(f16, F16, |x| x.to_f64(), f16::from_f64, |x| x.to_f32() as i64, |v| f16::from_f64(v as f64));
elem!(bf16, BF16, |x| x.to_f64(), bf16::from_f64, |x| x.to_f32() as i64, |v| bf16::from_f64(v as f64));
elem!(f64, F64, |x| x, |v| v, |x| x as i64, |v| v as f64);
elem!(i8, I8, |x| x as f64, |v| v as i8, |x| x as i64, |v| v as i8);
elem!(u8, U8, |x| x as f64, |v| v as u8, |x| x as i64, |v| v as u8);
elem!(i16, I16, |x| x as f64, |v| v as i16, |x| x as i64, |v| v as i16);
elem!(u16, U16, |x| x as f64, |v| v as u16, |x| x as i64, |v| v as u16);
elem!(i32, I32, |x| x as f64, |v| v as i32, |x| x as i64, |v| v as i32);
elem!(u32, U32, |x| x as f64, |v| v as u32, |x| x as i64, |v| v as u32);
elem!(i64, I64, |x| x as f64, |v| v as i64, |x| x, |v| v);
elem!(u64, U64, |x| x as f64, |v| v as u64, |x| x as i64, |v| v as u64);
elem!(bool, Bool, |x| x as u8 as f64, |v| v != 0.0, |x| x as i64, |v| v != 0);
elem!(I4, I4, |x| x.0 as f64, I4::from_f64, |x| x.0 as i64, I4::wrapping);
elem!(U4, U4, |x| x.0 as f64, U4::from_f64, |x| x.0 as i64, U4::wrapping);

macro_rules! lowp_elem {
    ($($t:ident),*) => {$(
        elem!($t, $t, $t::to_f64, $t::from_f64, |x| x.to_f64() as i64, |v| $t::from_f64(v as f64), $t::from_f64_unsaturated);
    )*};
}
lowp_elem!(F8E4M3FN, F8E4M3FNUZ, F8E5M2, F8E5M2FNUZ, F4E2M1, F8E8M0);

/// Errors from constructing or converting tensors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TensorError {
    /// The element count does not match the shape.
    #[error("tensor of shape {shape:?} needs {expected} elements, got {found}")]
    Len {
        /// The shape.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements given.
        found: usize,
    },
    /// The element count of a shape overflows `usize`.
    #[error("element count of shape {0:?} overflows")]
    Overflow(Vec<usize>),
    /// The tensor has another element type than the one asked for.
    #[error("expected a {expected} tensor, found {found}")]
    DType {
        /// Type asked for.
        expected: DType,
        /// Type found.
        found: DType,
    },
}

/// A dense, row-major tensor on the host.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// The element count of `shape`, or `None` on overflow.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Tensor {
    /// Builds a tensor, checking that `data` holds exactly as many elements as `shape` needs.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor, TensorError> {
        let expected = checked_numel(&shape).ok_or_else(|| TensorError::Overflow(shape.clone()))?;
        let found = dispatch!(&data, v => v.len());
        if expected != found {
            return Err(TensorError::Len { shape, expected, found });
        }
        Ok(Tensor { shape, data })
    }

    /// Builds a tensor from a typed vector.
    pub fn from_vec<T: Elem>(shape: Vec<usize>, v: Vec<T>) -> Result<Tensor, TensorError> {
        Tensor::new(shape, T::wrap(v))
    }

    /// A rank-0 tensor holding `v`.
    pub fn scalar<T: Elem>(v: T) -> Tensor {
        Tensor { shape: vec![], data: T::wrap(vec![v]) }
    }

    /// A tensor of zeros (false for booleans).
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Result<Tensor, TensorError> {
        let n = checked_numel(&shape).ok_or_else(|| TensorError::Overflow(shape.clone()))?;
        Ok(Tensor { shape, data: TensorData::zeros(dtype, n) })
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The rank (number of dimensions).
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        dispatch!(&self.data, v => v.len())
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of element storage.
    pub fn byte_size(&self) -> usize {
        self.len() * self.dtype().size()
    }

    /// The storage.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Splits into shape and storage.
    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    /// The elements as a typed slice, if the type matches.
    pub fn as_slice<T: Elem>(&self) -> Result<&[T], TensorError> {
        T::slice(&self.data).ok_or(TensorError::DType { expected: T::DTYPE, found: self.dtype() })
    }

    /// The elements as a mutable typed vector, if the type matches.
    pub fn as_mut_vec<T: Elem>(&mut self) -> Result<&mut Vec<T>, TensorError> {
        let found = self.dtype();
        T::slice_mut(&mut self.data).ok_or(TensorError::DType { expected: T::DTYPE, found })
    }

    /// Takes the elements as a typed vector, if the type matches.
    pub fn into_vec<T: Elem>(self) -> Result<Vec<T>, TensorError> {
        let found = self.dtype();
        T::unwrap(self.data).ok_or(TensorError::DType { expected: T::DTYPE, found })
    }

    /// The same elements under another shape with the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Tensor, TensorError> {
        Tensor::new(shape, self.data)
    }

    /// Converts every element to f64 (booleans to 0 or 1).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        dispatch!(&self.data, v => v.iter().map(|x| x.to_f64()).collect())
    }

    /// Converts every element to i64 (floats truncate toward zero).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        dispatch!(&self.data, v => v.iter().map(|x| x.to_i64()).collect())
    }

    /// Converts to another element type with ONNX `Cast` semantics and `saturate=1`:
    /// floats to integers truncate (saturating), integers wrap between integer types (the
    /// 4-bit ones too), anything to bool is `x != 0`, and values beyond the float8 range clamp
    /// to its largest finite value.
    pub fn cast(&self, to: DType) -> Tensor {
        self.cast_with(to, true)
    }

    /// ONNX `Cast` with an explicit `saturate` attribute, which matters only for the float8
    /// and E8M0 targets: without it, out-of-range values become Inf (E5M2) or NaN.
    pub fn cast_with(&self, to: DType, saturate: bool) -> Tensor {
        if self.dtype() == to {
            return self.clone();
        }
        let data = dispatch!(&self.data, v => TensorData::cast_from(v, to, saturate));
        Tensor { shape: self.shape.clone(), data }
    }
}

impl TensorData {
    /// The element type held.
    pub fn dtype(&self) -> DType {
        dispatch!(self, v => elem_dtype(v))
    }

    /// `n` zeros of type `dtype`.
    pub fn zeros(dtype: DType, n: usize) -> TensorData {
        match dtype {
            DType::F32 => TensorData::F32(vec![0.0; n]),
            DType::F16 => TensorData::F16(vec![f16::ZERO; n]),
            DType::BF16 => TensorData::BF16(vec![bf16::ZERO; n]),
            DType::F64 => TensorData::F64(vec![0.0; n]),
            DType::I8 => TensorData::I8(vec![0; n]),
            DType::U8 => TensorData::U8(vec![0; n]),
            DType::I16 => TensorData::I16(vec![0; n]),
            DType::U16 => TensorData::U16(vec![0; n]),
            DType::I32 => TensorData::I32(vec![0; n]),
            DType::U32 => TensorData::U32(vec![0; n]),
            DType::I64 => TensorData::I64(vec![0; n]),
            DType::U64 => TensorData::U64(vec![0; n]),
            DType::Bool => TensorData::Bool(vec![false; n]),
            DType::F8E4M3FN => TensorData::F8E4M3FN(vec![F8E4M3FN::default(); n]),
            DType::F8E4M3FNUZ => TensorData::F8E4M3FNUZ(vec![F8E4M3FNUZ::default(); n]),
            DType::F8E5M2 => TensorData::F8E5M2(vec![F8E5M2::default(); n]),
            DType::F8E5M2FNUZ => TensorData::F8E5M2FNUZ(vec![F8E5M2FNUZ::default(); n]),
            DType::U4 => TensorData::U4(vec![U4::default(); n]),
            DType::I4 => TensorData::I4(vec![I4::default(); n]),
            DType::F4E2M1 => TensorData::F4E2M1(vec![F4E2M1::default(); n]),
            DType::F8E8M0 => TensorData::F8E8M0(vec![F8E8M0::default(); n]),
        }
    }

    fn cast_from<T: Elem>(v: &[T], to: DType, saturate: bool) -> TensorData {
        fn conv<T: Elem, U: Elem>(v: &[T], saturate: bool) -> TensorData {
            let from = T::DTYPE;
            let to = U::DTYPE;
            if from.is_int() && to.is_int() || from == DType::Bool {
                U::wrap(v.iter().map(|x| U::from_i64(x.to_i64())).collect())
            } else if saturate {
                U::wrap(v.iter().map(|x| U::from_f64(x.to_f64())).collect())
            } else {
                U::wrap(v.iter().map(|x| U::from_f64_unsaturated(x.to_f64())).collect())
            }
        }
        match to {
            DType::F32 => conv::<T, f32>(v, saturate),
            DType::F16 => conv::<T, f16>(v, saturate),
            DType::BF16 => conv::<T, bf16>(v, saturate),
            DType::F64 => conv::<T, f64>(v, saturate),
            DType::I8 => conv::<T, i8>(v, saturate),
            DType::U8 => conv::<T, u8>(v, saturate),
            DType::I16 => conv::<T, i16>(v, saturate),
            DType::U16 => conv::<T, u16>(v, saturate),
            DType::I32 => conv::<T, i32>(v, saturate),
            DType::U32 => conv::<T, u32>(v, saturate),
            DType::I64 => conv::<T, i64>(v, saturate),
            DType::U64 => conv::<T, u64>(v, saturate),
            DType::Bool => conv::<T, bool>(v, saturate),
            DType::F8E4M3FN => conv::<T, F8E4M3FN>(v, saturate),
            DType::F8E4M3FNUZ => conv::<T, F8E4M3FNUZ>(v, saturate),
            DType::F8E5M2 => conv::<T, F8E5M2>(v, saturate),
            DType::F8E5M2FNUZ => conv::<T, F8E5M2FNUZ>(v, saturate),
            DType::U4 => conv::<T, U4>(v, saturate),
            DType::I4 => conv::<T, I4>(v, saturate),
            DType::F4E2M1 => conv::<T, F4E2M1>(v, saturate),
            DType::F8E8M0 => conv::<T, F8E8M0>(v, saturate),
        }
    }
}

fn elem_dtype<T: Elem>(_: &[T]) -> DType {
    T::DTYPE
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor<{}{:?}>", self.dtype(), self.shape)?;
        let n = self.len();
        let head: Vec<String> = dispatch!(&self.data, v => v.iter().take(8).map(|x| format!("{x:?}")).collect());
        write!(f, "[{}{}]", head.join(", "), if n > 8 { ", .." } else { "" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_length() {
        assert_eq!(
            Tensor::from_vec(vec![2, 3], vec![1.0f32; 5]).unwrap_err(),
            TensorError::Len { shape: vec![2, 3], expected: 6, found: 5 }
        );
        assert!(matches!(Tensor::zeros(DType::F32, vec![usize::MAX, 3]), Err(TensorError::Overflow(_))));
    }

    #[test]
    fn cast_semantics() {
        let t = Tensor::from_vec(vec![4], vec![-1.5f32, 0.0, 2.7, 300.0]).unwrap();
        assert_eq!(t.cast(DType::I32).as_slice::<i32>().unwrap(), &[-1, 0, 2, 300]);
        assert_eq!(t.cast(DType::Bool).as_slice::<bool>().unwrap(), &[true, false, true, true]);
        let i = Tensor::from_vec(vec![2], vec![300i64, -1]).unwrap();
        assert_eq!(i.cast(DType::U8).as_slice::<u8>().unwrap(), &[44, 255]);
    }
}
