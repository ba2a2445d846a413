//! The ONNX low-precision element types: the float8 family, 4-bit integers, float4 and the
//! E8M0 scale, each a newtype holding one element per byte.
//!
//! Conversions follow what the ONNX reference (through `ml_dtypes`) computes, because that is
//! what the backend tests' expected outputs were made with:
//! - to a float8 or float4 type, a value is rounded to nearest, ties to even, on its bits;
//!   `from_f64` is ONNX `Cast` with `saturate=1` (out-of-range values and infinities clamp to
//!   the largest finite value, NaN stays NaN), `from_f64_unsaturated` is `saturate=0`
//!   (out of range becomes Inf for E5M2 and NaN for the others);
//! - the FNUZ types have no negative zero and one NaN (`0x80`); float4 has no NaN or Inf and
//!   always saturates, and NaN becomes `0x8` as `ml_dtypes` makes it;
//! - E8M0 is a power-of-two scale `2^(bits - 127)` with NaN at `0xFF`; it is made from the
//!   exponent of the f32 value, rounding up when any fraction bit is set (ONNX's default
//!   `round_mode="up"`);
//! - the 4-bit integers truncate toward zero and wrap modulo 16 like `ml_dtypes` (NaN, Inf and
//!   values beyond the i32 range become 0, as the C++ conversion does on x86).

use std::cmp::Ordering;
use std::fmt;

/// What a float8 or float4 format does with its special bit patterns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Special {
    /// All-ones exponent and mantissa are NaN; no infinities (E4M3FN).
    FiniteNan,
    /// IEEE-like: the top exponent holds the infinities and NaNs (E5M2).
    Ieee,
    /// `0x80` is the only NaN; no negative zero and no infinities (the FNUZ types).
    Unsigned0,
    /// Every pattern is a finite number (FLOAT4E2M1).
    None,
}

/// A small binary floating-point format.
struct Format {
    ebits: u32,
    mbits: u32,
    bias: i32,
    max: f64,
    special: Special,
}

impl Format {
    fn sign_bit(&self) -> u8 {
        1 << (self.ebits + self.mbits)
    }

    fn decode(&self, b: u8) -> f64 {
        let sign = self.sign_bit();
        let mag = b & (sign - 1);
        let emask = (1u8 << self.ebits) - 1;
        let (e, m) = ((mag >> self.mbits) & emask, mag & ((1 << self.mbits) - 1));
        match self.special {
            Special::FiniteNan if mag == sign - 1 => return f64::NAN,
            Special::Ieee if e == emask => return if m == 0 { f64::INFINITY } else { f64::NAN } * sgn(b & sign),
            Special::Unsigned0 if b == 0x80 => return f64::NAN,
            _ => {}
        }
        let scale = (1u64 << self.mbits) as f64;
        let v = if e == 0 {
            m as f64 / scale * pow2(1 - self.bias)
        } else {
            (1.0 + m as f64 / scale) * pow2(e as i32 - self.bias)
        };
        v * sgn(b & sign)
    }

    fn encode(&self, x: f64, saturate: bool) -> u8 {
        let sign = if x.is_sign_negative() { self.sign_bit() } else { 0 };
        if x.is_nan() {
            return match self.special {
                Special::FiniteNan => (self.sign_bit() - 1) | sign,
                Special::Ieee => (((1u8 << self.ebits) - 1) << self.mbits) | (1 << (self.mbits - 1)) | sign,
                Special::Unsigned0 => 0x80,
                Special::None => self.sign_bit(),
            };
        }
        let a = x.abs();
        let emin = 1 - self.bias;
        let v = if a == 0.0 {
            0.0
        } else {
            // Rounding a/q to an integer with q the value of the last mantissa bit is exact
            // round-to-nearest-even, because dividing by a power of two is exact.
            let e = exponent(a).max(emin);
            let q = pow2(e - self.mbits as i32);
            (a / q).round_ties_even() * q
        };
        if v > self.max {
            let overflow = match self.special {
                _ if saturate => self.max_bits(),
                Special::FiniteNan => self.sign_bit() - 1,
                Special::Ieee => ((1u8 << self.ebits) - 1) << self.mbits,
                Special::Unsigned0 => return 0x80,
                Special::None => self.max_bits(),
            };
            return overflow | sign;
        }
        if v == 0.0 {
            return if self.special == Special::Unsigned0 { 0 } else { sign };
        }
        let bits = if v < pow2(emin) {
            (v / pow2(emin - self.mbits as i32)) as u8
        } else {
            let e = exponent(v);
            let m = (v / pow2(e - self.mbits as i32)) as u8 - (1 << self.mbits);
            (((e + self.bias) as u8) << self.mbits) | m
        };
        bits | sign
    }

    fn max_bits(&self) -> u8 {
        self.encode(self.max, false)
    }
}

fn sgn(sign: u8) -> f64 {
    if sign != 0 {
        -1.0
    } else {
        1.0
    }
}

fn pow2(e: i32) -> f64 {
    2f64.powi(e)
}

/// floor(log2(a)) of a positive normal f64.
fn exponent(a: f64) -> i32 {
    ((a.to_bits() >> 52) & 0x7FF) as i32 - 1023
}

const E4M3FN: Format = Format { ebits: 4, mbits: 3, bias: 7, max: 448.0, special: Special::FiniteNan };
const E4M3FNUZ: Format = Format { ebits: 4, mbits: 3, bias: 8, max: 240.0, special: Special::Unsigned0 };
const E5M2: Format = Format { ebits: 5, mbits: 2, bias: 15, max: 57344.0, special: Special::Ieee };
const E5M2FNUZ: Format = Format { ebits: 5, mbits: 2, bias: 16, max: 57344.0, special: Special::Unsigned0 };
const E2M1: Format = Format { ebits: 2, mbits: 1, bias: 1, max: 6.0, special: Special::None };

macro_rules! small_float {
    ($(#[$doc:meta])* $name:ident, $fmt:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Default)]
        pub struct $name(pub u8);

        impl $name {
            /// The value as f64 (exact).
            #[inline]
            pub fn to_f64(self) -> f64 {
                $fmt.decode(self.0)
            }
            /// ONNX `Cast` with `saturate=1`.
            #[inline]
            pub fn from_f64(v: f64) -> Self {
                $name($fmt.encode(v, true))
            }
            /// ONNX `Cast` with `saturate=0`.
            #[inline]
            pub fn from_f64_unsaturated(v: f64) -> Self {
                $name($fmt.encode(v, false))
            }
        }
        value_semantics!($name);
    };
}

/// Equality, order and `Debug` by numeric value, as for `f32` (NaN is unequal to itself and
/// `-0 == 0`).
macro_rules! value_semantics {
    ($name:ident) => {
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.to_f64() == other.to_f64()
            }
        }
        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                self.to_f64().partial_cmp(&other.to_f64())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.to_f64())
            }
        }
    };
}

small_float!(
    /// FLOAT8E4M3FN: 4 exponent bits (bias 7), 3 mantissa bits, NaN at `0x7F`/`0xFF`, no Inf.
    F8E4M3FN,
    E4M3FN
);
small_float!(
    /// FLOAT8E4M3FNUZ: bias 8, NaN only at `0x80`, no negative zero, no Inf.
    F8E4M3FNUZ,
    E4M3FNUZ
);
small_float!(
    /// FLOAT8E5M2: 5 exponent bits (bias 15), 2 mantissa bits, IEEE-like Inf and NaN.
    F8E5M2,
    E5M2
);
small_float!(
    /// FLOAT8E5M2FNUZ: bias 16, NaN only at `0x80`, no negative zero, no Inf.
    F8E5M2FNUZ,
    E5M2FNUZ
);
small_float!(
    /// FLOAT4E2M1 in the low nibble: 2 exponent bits (bias 1), 1 mantissa bit, no Inf or NaN.
    F4E2M1,
    E2M1
);

/// FLOAT8E8M0: an unsigned power-of-two scale `2^(bits - 127)`, NaN at `0xFF`, no zero.
#[derive(Clone, Copy, Default)]
pub struct F8E8M0(pub u8);

impl F8E8M0 {
    /// ONNX's `to_float8e8m0` with `round_mode="up"`: the f32 value's biased exponent,
    /// incremented when the fraction is nonzero (the reference tests the fraction with the mask
    /// `0x4FFFFF`, and so do we); Inf and NaN become NaN. With `saturate`, rounding never
    /// reaches NaN from a finite value.
    fn encode(v: f64, saturate: bool) -> u8 {
        let bits = (v as f32).to_bits();
        let e = (bits >> 23) & 0xFF;
        if e == 0xFF {
            return 0xFF;
        }
        let up = bits & 0x4F_FFFF != 0 && !(saturate && e == 0xFE);
        (e + up as u32) as u8
    }
}

impl F8E8M0 {
    /// The value as f64 (exact).
    #[inline]
    pub fn to_f64(self) -> f64 {
        if self.0 == 0xFF {
            f64::NAN
        } else {
            pow2(self.0 as i32 - 127)
        }
    }
    /// ONNX `Cast` with `saturate=1` and `round_mode="up"`.
    pub fn from_f64(v: f64) -> Self {
        F8E8M0(F8E8M0::encode(v, true))
    }
    /// ONNX `Cast` with `saturate=0` and `round_mode="up"`.
    pub fn from_f64_unsaturated(v: f64) -> Self {
        F8E8M0(F8E8M0::encode(v, false))
    }
}
value_semantics!(F8E8M0);

/// Truncates toward zero as C++ `static_cast<int>` does on x86: NaN, Inf and values beyond
/// the i32 range become `i32::MIN`, whose low four bits are 0.
fn trunc_i32(v: f64) -> i64 {
    if v.is_finite() && v > i32::MIN as f64 - 1.0 && v < i32::MAX as f64 + 1.0 {
        v as i64
    } else {
        i32::MIN as i64
    }
}

/// INT4: a signed 4-bit integer in `[-8, 7]`, one per byte in memory.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct I4(pub i8);

impl I4 {
    /// Wraps `v` modulo 16 into `[-8, 7]`.
    pub fn wrapping(v: i64) -> I4 {
        I4((((v & 0xF) ^ 8) - 8) as i8)
    }
    /// Truncates toward zero, then wraps.
    pub fn from_f64(v: f64) -> I4 {
        I4::wrapping(trunc_i32(v))
    }
}

/// UINT4: an unsigned 4-bit integer in `[0, 15]`, one per byte in memory.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct U4(pub u8);

impl U4 {
    /// Wraps `v` modulo 16 into `[0, 15]`.
    pub fn wrapping(v: i64) -> U4 {
        U4((v & 0xF) as u8)
    }
    /// Truncates toward zero, then wraps.
    pub fn from_f64(v: f64) -> U4 {
        U4::wrapping(trunc_i32(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! roundtrip {
        ($t:ident, $range:expr) => {
            for b in $range {
                let v = $t(b as u8).to_f64();
                if !v.is_finite() {
                    continue;
                }
                assert_eq!($t::from_f64(v).0, b as u8, "saturating round trip of {b:#x} ({v})");
                assert_eq!($t::from_f64_unsaturated(v).0, b as u8, "round trip of {b:#x} ({v})");
            }
        };
    }

    #[test]
    fn every_finite_value_round_trips() {
        roundtrip!(F8E4M3FN, 0..256u16);
        roundtrip!(F8E4M3FNUZ, 0..256u16);
        roundtrip!(F8E5M2, 0..256u16);
        roundtrip!(F8E5M2FNUZ, 0..256u16);
        // 2^-127 is an f32 subnormal, whose nonzero fraction the reference rounds up to 2^-126.
        roundtrip!(F8E8M0, 1..256u16);
        assert_eq!(F8E8M0::from_f64(F8E8M0(0).to_f64()).0, 1);
        roundtrip!(F4E2M1, 0..16u16);
    }

    #[test]
    fn known_values() {
        assert_eq!(F8E4M3FN(0x7E).to_f64(), 448.0);
        assert_eq!(F8E4M3FN(0x01).to_f64(), 2f64.powi(-9));
        assert_eq!(F8E4M3FNUZ(0x7F).to_f64(), 240.0);
        assert_eq!(F8E5M2(0x7B).to_f64(), 57344.0);
        assert_eq!(F8E5M2(0x7C).to_f64(), f64::INFINITY);
        assert_eq!(F8E5M2FNUZ(0x7F).to_f64(), 57344.0);
        assert_eq!(F8E8M0(127).to_f64(), 1.0);
        let f4: Vec<f64> = (0..8).map(|b| F4E2M1(b).to_f64()).collect();
        assert_eq!(f4, [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]);
        assert_eq!(F4E2M1(0xF).to_f64(), -6.0);
    }

    /// Expected bits computed with `ml_dtypes` 0.6 (`np.float32(x).astype(t).view(np.uint8)`).
    #[test]
    fn unsaturated_matches_ml_dtypes() {
        let xs = [464.0, 465.0, 1e9, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -f64::NAN, -0.0, 1e-10, -1e-10];
        let xs2 = [60000.0, 61440.0, 61441.0];
        let all: Vec<f64> = xs.iter().chain(&xs2).copied().collect();
        let got = |f: fn(f64) -> u8| all.iter().map(|&x| f(x)).collect::<Vec<_>>();
        assert_eq!(
            got(|x| F8E4M3FN::from_f64_unsaturated(x).0),
            [126, 127, 127, 127, 255, 127, 255, 128, 0, 128, 127, 127, 127]
        );
        assert_eq!(
            got(|x| F8E4M3FNUZ::from_f64_unsaturated(x).0),
            [128, 128, 128, 128, 128, 128, 128, 0, 0, 0, 128, 128, 128]
        );
        assert_eq!(
            got(|x| F8E5M2::from_f64_unsaturated(x).0),
            [95, 95, 124, 124, 252, 126, 254, 128, 0, 128, 123, 124, 124]
        );
        assert_eq!(
            got(|x| F8E5M2FNUZ::from_f64_unsaturated(x).0),
            [99, 99, 128, 128, 128, 128, 128, 0, 0, 0, 127, 128, 128]
        );
    }

    #[test]
    fn saturation_and_nan() {
        assert_eq!(F8E4M3FN::from_f64(1e9).0, 0x7E);
        assert_eq!(F8E4M3FN::from_f64(f64::NEG_INFINITY).0, 0xFE);
        assert!(F8E4M3FN::from_f64(f64::NAN).to_f64().is_nan());
        assert_eq!(F8E4M3FNUZ::from_f64(f64::INFINITY).0, 0x7F);
        assert_eq!(F8E4M3FNUZ::from_f64(f64::NAN).0, 0x80);
        assert_eq!(F8E5M2::from_f64(f64::INFINITY).0, 0x7B);
        assert_eq!(F8E5M2::from_f64(-61440.0).0, 0xFB);
        assert_eq!(F8E5M2FNUZ::from_f64(-1e9).0, 0xFF);
        // float4 (ml_dtypes): ties to even, saturating, NaN to 0x8.
        let y = [0.25, 0.75, 1.25, 2.5, 3.5, 5.0, 5.5, 100.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0];
        let f4: Vec<u8> = y.iter().map(|&x| F4E2M1::from_f64(x).0).collect();
        assert_eq!(f4, [0, 2, 2, 4, 6, 6, 7, 7, 8, 7, 15, 8]);
        // E8M0, round up: 3 -> 4, 0.3 -> 0.5; NaN and Inf -> NaN; 0 -> 2^-127.
        let e: Vec<u8> =
            [1.0, 3.0, 0.3, -2.0, f64::NAN, f64::INFINITY, 0.0].iter().map(|&x| F8E8M0::from_f64(x).0).collect();
        assert_eq!(e, [127, 129, 126, 128, 255, 255, 0]);
        assert_eq!(F8E8M0::from_f64(f32::MAX as f64).0, 0xFE);
        assert_eq!(F8E8M0::from_f64_unsaturated(f32::MAX as f64).0, 0xFF);
    }

    #[test]
    fn four_bit_integers_wrap() {
        let x = [0.4, 1.5, -2.5, 7.6, 8.5, 15.5, 16.0, -9.0, -100.0, f64::NAN, f64::INFINITY];
        let i: Vec<i8> = x.iter().map(|&v| I4::from_f64(v).0).collect();
        assert_eq!(i, [0, 1, -2, 7, -8, -1, 0, 7, -4, 0, 0]);
        let u: Vec<u8> = x.iter().map(|&v| U4::from_f64(v).0).collect();
        assert_eq!(u, [0, 1, 14, 7, 8, 15, 0, 7, 12, 0, 0]);
        assert_eq!(I4::wrapping(300), I4(-4));
        assert_eq!(U4::wrapping(-1), U4(15));
    }
}
