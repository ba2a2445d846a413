// common.cuh: what every kernel family shares.
// Element conversions to and from the f32 compute type, warp and block reductions, and the
// strided-index helper used for broadcasting. Kernel names are op_variant_dtype.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

typedef long long i64;
typedef unsigned long long u64;

// The largest rank a strided kernel takes; the host collapses dims to fit.
#define KILN_MAX_RANK 8

// ---------------------------------------------------------------------------------------------
// Conversions. Math on f16 and bf16 is done in f32.

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(double x) { return (float)x; }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ double from_f32<double>(float x) { return (double)x; }

// NaN-propagating max and min, as numpy's maximum and minimum (fmaxf drops NaN).
__device__ __forceinline__ float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }
// x / c for a constant c, given r = 1 / c rounded: the quotient rounded from the residual, as
// a division's fast path computes it (correctly rounded where x / c is a normal float), without
// the range check and branch around it. An exact quotient, an infinity and NaN pass as x * r.
__device__ __forceinline__ float kiln_div_k(float x, float c, float r) {
    const float q = x * r;
    const float e = fmaf(-q, c, x);
    return (e != 0.0f && isfinite(q)) ? fmaf(e, r, q) : q;
}
// erf(x) within 1e-6: Abramowitz and Stegun's 7.1.26 (1.5e-7) with the hardware's approximate
// reciprocal and exp2, about half of erff's instructions and two of the SM's 16-a-cycle
// special-function operations.
__device__ __forceinline__ float kiln_erf_as(float x) {
    const float a = fabsf(x);
    const float t = __fdividef(1.0f, fmaf(0.3275911f, a, 1.0f));
    const float p =
        t * fmaf(t, fmaf(t, fmaf(t, fmaf(t, 1.061405429f, -1.453152027f), 1.421413741f), -0.284496736f), 0.254829592f);
    return copysignf(fmaf(-p, __expf(-a * a), 1.0f), x);
}
// The hardware's tanh (tanh.approx.f32: one special-function operation, relative error about
// 2^-11); tanhf off the GPU (the host emulation).
__device__ __forceinline__ float kiln_tanh_approx(float x) {
#ifdef __CUDA_ARCH__
    float r;
    asm("tanh.approx.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#else
    return tanhf(x);
#endif
}
// erf(x) within 8e-4 from one hardware tanh: tanh(x (a + b x^2)), a and b fitted for the least
// largest error over all x (2.8e-4 with an exact tanh; the tanh-form GELU's constants give
// 3.6e-4), odd and monotonic as erf is. The INT8 implicit GEMM's epilogues take it (codegen's
// ExprMath::Int8Epilogue): their results are rounded to 8 bits, and GELU's erf-form and
// tanh-form differ by 5e-4 at most. Where an epilogue is bound by the special-function unit
// (BERT's FFN input product: its erf, then the conversion to i8) it takes one operation of
// kiln_erf_as's two.
__device__ __forceinline__ float kiln_erf_fast(float x) {
    return kiln_tanh_approx(x * fmaf(0.0997927f, x * x, 1.12967583f));
}
__device__ __forceinline__ float nan_min(float a, float b) { return (a < b || a != a) ? a : b; }
// Cast<i8>(Clip<-128,127>(Round(x))) (and u8 over [0, 255]), a quantization's last steps, as
// one conversion: round half to even, saturate, NaN to 0 (PTX's cvt.rni.sat).
__device__ __forceinline__ signed char kiln_rni_sat_s8(float x) {
#ifdef __CUDA_ARCH__
    int r;
    asm("cvt.rni.sat.s8.f32 %0, %1;" : "=r"(r) : "f"(x));
    return (signed char)r;
#else
    return x != x ? 0 : (signed char)fminf(fmaxf(rintf(x), -128.0f), 127.0f);
#endif
}
__device__ __forceinline__ unsigned char kiln_rni_sat_u8(float x) {
#ifdef __CUDA_ARCH__
    unsigned r;
    asm("cvt.rni.sat.u8.f32 %0, %1;" : "=r"(r) : "f"(x));
    return (unsigned char)r;
#else
    return x != x ? 0 : (unsigned char)fminf(fmaxf(rintf(x), 0.0f), 255.0f);
#endif
}

// ---------------------------------------------------------------------------------------------
// Reductions. Blocks are a multiple of 32 threads, at most 1024.

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_min(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = nan_min(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_prod(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v *= __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Combines one value per thread across the block with a warp reduction `W`; every thread gets
// the result. `scratch` holds 32 floats of shared memory. Ends with a barrier, so the scratch
// may be reused at once.
template <float (*W)(float)>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    v = W(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    // Warp 0 combines the partials; the lanes past the warp count repeat partial 0, which
    // changes nothing for max and min and is excluded for sum and product below.
    float r = scratch[lane < nwarps ? lane : 0];
    if (lane >= nwarps) {
        if (W == warp_sum) r = 0.0f;
        else if (W == warp_prod) r = 1.0f;
    }
    r = W(r);
    __syncthreads();
    return r;
}

// ---------------------------------------------------------------------------------------------
// 16-byte vectors: Vec16<T>::N elements of f32, f16 or bf16 in one uint4, unpacked to f32 and
// packed back with bit operations only, so the values stay in registers. Element 0 is the lowest
// address, which on a little-endian GPU is the low half of the first word.

template <typename T> struct Vec16;
template <> struct Vec16<float> {
    static constexpr int N = 4;
    static __device__ __forceinline__ void unpack(uint4 u, float* f) {
        f[0] = __uint_as_float(u.x);
        f[1] = __uint_as_float(u.y);
        f[2] = __uint_as_float(u.z);
        f[3] = __uint_as_float(u.w);
    }
    static __device__ __forceinline__ uint4 pack(const float* f) {
        return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
    }
};
// Eight 16-bit elements: unpacked and packed two to a word through P's `get` and `put`.
template <typename P> struct Vec16Pairs {
    static constexpr int N = 8;
    static __device__ __forceinline__ void unpack(uint4 u, float* f) {
        f[0] = P::get(u.x, 0); f[1] = P::get(u.x, 1); f[2] = P::get(u.y, 0); f[3] = P::get(u.y, 1);
        f[4] = P::get(u.z, 0); f[5] = P::get(u.z, 1); f[6] = P::get(u.w, 0); f[7] = P::get(u.w, 1);
    }
    static __device__ __forceinline__ uint4 pack(const float* f) {
        return make_uint4(P::put(f[0], f[1]), P::put(f[2], f[3]), P::put(f[4], f[5]), P::put(f[6], f[7]));
    }
};
template <> struct Vec16<__half> : Vec16Pairs<Vec16<__half>> {
    static __device__ __forceinline__ float get(unsigned int w, int hi) {
        return __half2float(__ushort_as_half((unsigned short)(hi ? w >> 16 : w & 0xffffu)));
    }
    static __device__ __forceinline__ unsigned int put(float a, float b) {
        return (unsigned int)__half_as_ushort(__float2half_rn(a)) |
               ((unsigned int)__half_as_ushort(__float2half_rn(b)) << 16);
    }
};
template <> struct Vec16<__nv_bfloat16> : Vec16Pairs<Vec16<__nv_bfloat16>> {
    static __device__ __forceinline__ float get(unsigned int w, int hi) {
        return __bfloat162float(__ushort_as_bfloat16((unsigned short)(hi ? w >> 16 : w & 0xffffu)));
    }
    static __device__ __forceinline__ unsigned int put(float a, float b) {
        return (unsigned int)__bfloat16_as_ushort(__float2bfloat16_rn(a)) |
               ((unsigned int)__bfloat16_as_ushort(__float2bfloat16_rn(b)) << 16);
    }
};

// Vector `c` of a row (elements c * N to c * N + N - 1) as f32: one 16-byte load when VEC (the
// row is 16-byte aligned), else N element loads, for views that are not.
template <typename T, bool VEC>
__device__ __forceinline__ void load_vec16(const T* __restrict__ row, int c, float* f) {
    constexpr int N = Vec16<T>::N;
    if (VEC) {
        Vec16<T>::unpack(reinterpret_cast<const uint4*>(row)[c], f);
    } else {
#pragma unroll
        for (int e = 0; e < N; ++e) f[e] = to_f32(row[c * N + e]);
    }
}
template <typename T, bool VEC>
__device__ __forceinline__ void store_vec16(T* __restrict__ row, int c, const float* f) {
    constexpr int N = Vec16<T>::N;
    if (VEC) {
        reinterpret_cast<uint4*>(row)[c] = Vec16<T>::pack(f);
    } else {
#pragma unroll
        for (int e = 0; e < N; ++e) row[c * N + e] = from_f32<T>(f[e]);
    }
}

// Whether a pointer is 16-byte aligned (null is).
__device__ __forceinline__ bool aligned16(const void* p) { return ((u64)p & 15u) == 0; }

// The warp-per-row kernels (LayerNorm, RMSNorm, Softmax) keep a row in registers: lane l holds
// vectors l, l + 32, ..., at most KILN_ROW_VECS of them, so a row takes at most
// 32 * KILN_ROW_VECS * 16 bytes (launch.rs's WARP_ROW_BYTES).
#define KILN_ROW_VECS 8

// ---------------------------------------------------------------------------------------------
// Strided indexing: the offset, in elements, of flat output index `i` in a tensor with
// `strides` (0 where broadcast) over an output of `dims`.

struct Strided {
    i64 dims[KILN_MAX_RANK];
    i64 strides[KILN_MAX_RANK];
};

__device__ __forceinline__ i64 strided_offset(i64 i, int rank, const i64* dims, const i64* strides) {
    i64 off = 0;
    for (int d = rank - 1; d >= 0; --d) {
        const i64 c = i % dims[d];
        i /= dims[d];
        off += c * strides[d];
    }
    return off;
}

// A grid-stride loop over [0, n).
#define KILN_GRID_STRIDE(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)blockDim.x * gridDim.x)

// ---------------------------------------------------------------------------------------------
// The ONNX small element types, one element per byte in memory (4-bit types in the low nibble),
// bit-exact with kiln-ir's lowp.rs, which follows the ONNX reference (ml_dtypes): not
// cuda_fp8.h, whose saturation and NaN rules differ per type.
// Decoding gives the exact value as f32 (every value of these types is an f32). Encoding takes
// an f64 (an f32 widens exactly), rounds to nearest even on the value, and applies `saturate`:
// out-of-range values and infinities clamp to the largest finite value, or without it become
// Inf (E5M2) or NaN (the others). The FNUZ types have no -0 and one NaN (0x80); E2M1 has no
// NaN or Inf, always saturates, and NaN becomes 0x8.

#define KILN_SP_FINITE_NAN 0 // E4M3FN: all-ones exponent and mantissa are NaN, no Inf
#define KILN_SP_IEEE 1       // E5M2: the top exponent holds Inf and NaN
#define KILN_SP_UNSIGNED0 2  // FNUZ: 0x80 is the only NaN, no -0, no Inf
#define KILN_SP_NONE 3       // E2M1: every pattern is a finite number

// floor(log2(a)) of a positive f64 from its biased exponent (-1023 for subnormals, 1024 for Inf).
__device__ __forceinline__ int kiln_exponent(double a) {
    return (int)((__double_as_longlong(a) >> 52) & 0x7FF) - 1023;
}

template <int EB, int MB, int BIAS, int SP>
__device__ __forceinline__ float kiln_small_decode(unsigned int b) {
    const unsigned int sign = 1u << (EB + MB);
    const unsigned int mag = b & (sign - 1u);
    const unsigned int emask = (1u << EB) - 1u;
    const unsigned int e = (mag >> MB) & emask, m = mag & ((1u << MB) - 1u);
    const bool neg = (b & sign) != 0;
    if (SP == KILN_SP_FINITE_NAN && mag == sign - 1u) return __int_as_float(0x7fc00000);
    if (SP == KILN_SP_IEEE && e == emask) {
        const float s = m == 0 ? __int_as_float(0x7f800000) : __int_as_float(0x7fc00000);
        return neg ? -s : s;
    }
    if (SP == KILN_SP_UNSIGNED0 && (b & 0xFFu) == 0x80u) return __int_as_float(0x7fc00000);
    // Subnormal: m * 2^(1 - bias - MB); normal: (2^MB + m) * 2^(e - bias - MB). Exact.
    const float v = e == 0 ? ldexpf((float)m, 1 - BIAS - MB) : ldexpf((float)(m + (1u << MB)), (int)e - BIAS - MB);
    return neg ? -v : v;
}

template <int EB, int MB, int BIAS, int SP>
__device__ __forceinline__ unsigned char kiln_small_encode(double x, bool saturate, double maxv, unsigned int max_bits) {
    const unsigned int signbit = 1u << (EB + MB);
    const unsigned int sign = __double_as_longlong(x) < 0 ? signbit : 0u;
    if (x != x) {
        if (SP == KILN_SP_FINITE_NAN) return (unsigned char)((signbit - 1u) | sign);
        if (SP == KILN_SP_IEEE) return (unsigned char)((((1u << EB) - 1u) << MB) | (1u << (MB - 1)) | sign);
        if (SP == KILN_SP_UNSIGNED0) return 0x80;
        return (unsigned char)signbit;
    }
    const double a = fabs(x);
    const int emin = 1 - BIAS;
    double v = 0.0;
    if (a != 0.0) {
        // Scaling by powers of two is exact, so rint on the scaled value rounds the value to
        // nearest even at the last mantissa bit (or the subnormal step below 2^emin).
        int e = kiln_exponent(a);
        if (e < emin) e = emin;
        v = ldexp(rint(ldexp(a, MB - e)), e - MB);
    }
    if (v > maxv) {
        if (saturate || SP == KILN_SP_NONE) return (unsigned char)(max_bits | sign);
        if (SP == KILN_SP_FINITE_NAN) return (unsigned char)((signbit - 1u) | sign);
        if (SP == KILN_SP_IEEE) return (unsigned char)((((1u << EB) - 1u) << MB) | sign);
        return 0x80;
    }
    if (v == 0.0) return SP == KILN_SP_UNSIGNED0 ? 0 : (unsigned char)sign;
    unsigned int bits;
    if (v < ldexp(1.0, emin)) {
        bits = (unsigned int)ldexp(v, MB - emin);
    } else {
        const int e = kiln_exponent(v);
        bits = ((unsigned int)(e + BIAS) << MB) | ((unsigned int)ldexp(v, MB - e) - (1u << MB));
    }
    return (unsigned char)(bits | sign);
}

// kiln_<type>_to_f32(byte) and kiln_<type>_from_f64(value, saturate) per type, with the largest
// finite value and its bits.
#define KILN_SMALL_FLOAT(name, EB, MB, BIAS, SP, MAXV, MAXBITS)                                         \
    __device__ __forceinline__ float kiln_##name##_to_f32(unsigned char b) {                           \
        return kiln_small_decode<EB, MB, BIAS, SP>(b);                                                 \
    }                                                                                                  \
    __device__ __forceinline__ unsigned char kiln_##name##_from_f64(double x, bool saturate) {        \
        return kiln_small_encode<EB, MB, BIAS, SP>(x, saturate, MAXV, MAXBITS);                        \
    }
KILN_SMALL_FLOAT(f8e4m3fn, 4, 3, 7, KILN_SP_FINITE_NAN, 448.0, 0x7Eu)
KILN_SMALL_FLOAT(f8e4m3fnuz, 4, 3, 8, KILN_SP_UNSIGNED0, 240.0, 0x7Fu)
KILN_SMALL_FLOAT(f8e5m2, 5, 2, 15, KILN_SP_IEEE, 57344.0, 0x7Bu)
KILN_SMALL_FLOAT(f8e5m2fnuz, 5, 2, 16, KILN_SP_UNSIGNED0, 57344.0, 0x7Fu)
KILN_SMALL_FLOAT(f4e2m1, 2, 1, 1, KILN_SP_NONE, 6.0, 0x7u)

// FLOAT8E8M0: 2^(bits - 127), NaN at 0xFF. Encoding takes the f32 value's biased exponent and
// rounds up when a fraction bit under the reference's mask 0x4FFFFF is set (ONNX's default
// round_mode="up"); with `saturate`, rounding never reaches NaN from a finite value.
__device__ __forceinline__ float kiln_f8e8m0_to_f32(unsigned char b) {
    if (b == 0xFF) return __int_as_float(0x7fc00000);
    return b == 0 ? __int_as_float(0x00400000) : __int_as_float((int)b << 23);
}
__device__ __forceinline__ unsigned char kiln_f8e8m0_from_f64(double x, bool saturate) {
    const unsigned int bits = __float_as_uint(__double2float_rn(x));
    const unsigned int e = (bits >> 23) & 0xFFu;
    if (e == 0xFFu) return 0xFF;
    const bool up = (bits & 0x4FFFFFu) != 0 && !(saturate && e == 0xFEu);
    return (unsigned char)(e + (up ? 1u : 0u));
}
// Stores a value that is already an E8M0 value (a power of two, or NaN) exactly: 2^-127 is an
// f32 subnormal whose fraction would round it up.
__device__ __forceinline__ unsigned char kiln_f8e8m0_store(double x) {
    return x == 0x1p-127 ? 0 : kiln_f8e8m0_from_f64(x, false);
}

// The 4-bit integers wrap modulo 16 like ml_dtypes; from a float they first truncate toward
// zero as C++'s static_cast<int> does on x86 (NaN, Inf and values beyond the i32 range become
// INT_MIN, whose low four bits are 0).
__device__ __forceinline__ long long kiln_trunc_i32(double x) {
    return (x == x && x > -2147483649.0 && x < 2147483648.0) ? (long long)x : -2147483648LL;
}
__device__ __forceinline__ signed char kiln_wrap_i4(long long v) { return (signed char)(((v & 0xF) ^ 8) - 8); }
__device__ __forceinline__ unsigned char kiln_wrap_u4(long long v) { return (unsigned char)(v & 0xF); }
