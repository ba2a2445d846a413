// quant.cu: linear quantization (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear),
// bit-exact with the CPU reference (crates/kiln-cpu/src/ops/quant.rs).
// One thread per element in a grid-stride loop. Scales and zero points are per tensor, per
// axis or per block, all read through one index: element i sits at coordinate
// c = (i / inner) % dim of the quantized axis, and its scale is c (per axis; per tensor is
// dim 1), or (o * blocks + c / block_size) * inner + i % inner with o = i / (inner * dim)
// (blocked). Zero points have the scale's layout. Quantization divides in the input's
// precision (f64 for f64, f32 otherwise: the host passes the scale in that type); dequantization
// computes (x - zero_point) * scale in f32 and rounds once to the output type.
// Kernels: quantize_<x>_<y> and dequantize_<x>_<y>, dynamic_quantize_range_<x> and
// dynamic_quantize_<x>; quantize_nhwc4_f32_i8, an image quantized into the INT8 implicit
// GEMM's narrow input.
#include "common.cuh"

__device__ __forceinline__ i64 quant_scale_index(i64 i, i64 dim, i64 inner, i64 block_size, i64 blocks) {
    // Per tensor (the common case: every activation's scale) needs no 64-bit division.
    if (dim == 1 && block_size == 0) return 0;
    const i64 c = (i / inner) % dim;
    if (block_size == 0) return c;
    const i64 o = i / (inner * dim);
    return (o * blocks + c / block_size) * inner + i % inner;
}

// The input in its division precision.
__device__ __forceinline__ float quant_load(float v) { return v; }
__device__ __forceinline__ float quant_load(__half v) { return __half2float(v); }
__device__ __forceinline__ float quant_load(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ double quant_load(double v) { return v; }

// The quantized types: storage S, the value as f32, and (integers) the clamp range and store.
#define QUANT_INT(tag, St, LO, HI)                                                                     \
    struct tag {                                                                                       \
        typedef St S;                                                                                  \
        static constexpr long long lo = LO, hi = HI;                                                   \
        __device__ static float value(S v) { return (float)v; }                                        \
    };
QUANT_INT(q_i8, signed char, -128, 127)
QUANT_INT(q_u8, unsigned char, 0, 255)
QUANT_INT(q_i16, short, -32768, 32767)
QUANT_INT(q_u16, unsigned short, 0, 65535)
QUANT_INT(q_i4, signed char, -8, 7)
QUANT_INT(q_u4, unsigned char, 0, 15)
QUANT_INT(q_i32, int, -2147483647LL - 1, 2147483647LL)

#define QUANT_FLOAT(tag, name)                                                                         \
    struct tag {                                                                                       \
        typedef unsigned char S;                                                                       \
        __device__ static float value(S v) { return kiln_##name##_to_f32(v); }                         \
        __device__ static S encode(double v, bool saturate) { return kiln_##name##_from_f64(v, saturate); } \
    };
QUANT_FLOAT(q_f8e4m3fn, f8e4m3fn)
QUANT_FLOAT(q_f8e4m3fnuz, f8e4m3fnuz)
QUANT_FLOAT(q_f8e5m2, f8e5m2)
QUANT_FLOAT(q_f8e5m2fnuz, f8e5m2fnuz)
QUANT_FLOAT(q_f4e2m1, f4e2m1)

// saturate(round_half_even(q) + z) for an 8- or 16-bit Y, in f32: the rounded quotient and the
// zero point are exact in f32 up to 2^24, and past it both this and the f64 form saturate.
template <typename Y> __device__ __forceinline__ typename Y::S quant_round_f32(float q, float z) {
    const float r = rintf(q);
    float v = (r != r ? 0.0f : r) + z;
    v = v < (float)Y::lo ? (float)Y::lo : (v > (float)Y::hi ? (float)Y::hi : v);
    return (typename Y::S)(int)v;
}

// saturate(round_half_even(x / scale) + zero_point). NaN rounds to 0 (Rust's `as i64`), and
// the sum is clamped in f64, which gives the reference's saturating i64 result since the
// clamp range is far inside both.
template <typename X, typename C, typename Y>
__device__ __forceinline__ void quantize_int(const X* __restrict__ x, const C* __restrict__ scale,
                                             const typename Y::S* __restrict__ zp, typename Y::S* __restrict__ y,
                                             i64 n, i64 dim, i64 inner, i64 block_size, i64 blocks) {
    // Not unrolled: a thread mostly takes one element, and the unrolled loop's trip count
    // costs a 64-bit division per thread (a network input's quantize ran 3x slower so).
#pragma unroll 1
    KILN_GRID_STRIDE(i, n) {
        const i64 k = quant_scale_index(i, dim, inner, block_size, blocks);
        const C q = quant_load(x[i]) / scale[k];
        if constexpr (sizeof(C) == 4 && sizeof(typename Y::S) <= 2) {
            // 8- and 16-bit results in f32, without f64 conversions.
            y[i] = quant_round_f32<Y>(q, zp ? (float)zp[k] : 0.0f);
            continue;
        }
        const double r = rint((double)q);
        const double z = zp ? (double)zp[k] : 0.0;
        double v = (r != r ? 0.0 : r) + z;
        v = v < (double)Y::lo ? (double)Y::lo : (v > (double)Y::hi ? (double)Y::hi : v);
        y[i] = (typename Y::S)(long long)v;
    }
}

// QuantizeLinear to i8 by one scale (and zero point) of an NCHW f32 input of at most 4
// channels, stored channels-last with its channels padded to 4 (zeros): y[b][p] holds the
// quantized x[b][0..c][p] as one 4-byte word, what quantize_f32_i8 and nhwc4_u8 give in turn
// (the INT8 implicit GEMM's narrow loader reads it).
extern "C" __global__ void quantize_nhwc4_f32_i8(const float* __restrict__ x, const float* __restrict__ scale,
                                                 const signed char* __restrict__ zp, unsigned* __restrict__ y,
                                                 i64 batch, i64 c, i64 hw) {
    const float s = scale[0], z = zp ? (float)zp[0] : 0.0f;
    // Four pixels a thread, each channel's four read as one vector, where the planes allow:
    // every channel's loads in flight at once (one pixel a thread, a thread waited for each).
    const bool vec = hw % 4 == 0 && ((unsigned long long)x & 15) == 0 && ((unsigned long long)y & 15) == 0;
    const i64 per = vec ? 4 : 1, n = batch * hw / per;
#pragma unroll 1
    KILN_GRID_STRIDE(i, n) {
        const i64 pix = i * per, b = pix / hw, p = pix - b * hw;
        const float* xp = x + b * c * hw + p;
        unsigned w[4] = {0u, 0u, 0u, 0u};
        if (vec) {
            float4 v[4];
#pragma unroll
            for (int ch = 0; ch < 4; ++ch)
                v[ch] = ch < c ? *reinterpret_cast<const float4*>(xp + ch * hw) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int ch = 0; ch < 4; ++ch) {
                if (ch >= c) break;
                const float e[4] = {v[ch].x, v[ch].y, v[ch].z, v[ch].w};
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    w[j] |= (unsigned)(unsigned char)quant_round_f32<q_i8>(e[j] / s, z) << (8 * ch);
            }
            *reinterpret_cast<uint4*>(y + pix) = make_uint4(w[0], w[1], w[2], w[3]);
        } else {
            float v[4];
#pragma unroll
            for (int ch = 0; ch < 4; ++ch) v[ch] = ch < c ? xp[ch * hw] : 0.0f;
#pragma unroll
            for (int ch = 0; ch < 4; ++ch)
                if (ch < c) w[0] |= (unsigned)(unsigned char)quant_round_f32<q_i8>(v[ch] / s, z) << (8 * ch);
            y[pix] = w[0];
        }
    }
}

// Float8: x / scale, cast with `saturate` (the zero point is ignored, but the reference's
// + 0 turns -0 into +0). Float4: x / scale + zero_point, cast (always saturating).
template <typename X, typename C, typename Y>
__device__ __forceinline__ void quantize_float(const X* __restrict__ x, const C* __restrict__ scale,
                                               const unsigned char* __restrict__ zp, unsigned char* __restrict__ y,
                                               i64 n, i64 dim, i64 inner, i64 block_size, i64 blocks, int saturate) {
    KILN_GRID_STRIDE(i, n) {
        const i64 k = quant_scale_index(i, dim, inner, block_size, blocks);
        const C q = quant_load(x[i]) / scale[k];
        const C z = zp ? (C)Y::value(zp[k]) : (C)0;
        y[i] = Y::encode((double)(q + z), saturate != 0);
    }
}

// (x - zero_point) * scale in f32, rounded once to the output type.
template <typename X, typename T>
__device__ __forceinline__ void dequantize(const typename X::S* __restrict__ x, const float* __restrict__ scale,
                                           const typename X::S* __restrict__ zp, T* __restrict__ y, i64 n, i64 dim,
                                           i64 inner, i64 block_size, i64 blocks) {
    KILN_GRID_STRIDE(i, n) {
        const i64 k = quant_scale_index(i, dim, inner, block_size, blocks);
        const float z = zp ? X::value(zp[k]) : 0.0f;
        y[i] = from_f32<T>((X::value(x[i]) - z) * scale[k]);
    }
}

#define QUANTIZE_INT(xs, X, C, ys, Y)                                                                  \
    extern "C" __global__ void quantize_##xs##_##ys(const X* x, const C* scale, const Y::S* zp, Y::S* y, i64 n, \
                                                     i64 dim, i64 inner, i64 block_size, i64 blocks, int saturate) { \
        quantize_int<X, C, Y>(x, scale, zp, y, n, dim, inner, block_size, blocks);                     \
    }
#define QUANTIZE_FLOAT(xs, X, C, ys, Y)                                                                \
    extern "C" __global__ void quantize_##xs##_##ys(const X* x, const C* scale, const unsigned char* zp,  \
                                                     unsigned char* y, i64 n, i64 dim, i64 inner,         \
                                                     i64 block_size, i64 blocks, int saturate) {          \
        quantize_float<X, C, Y>(x, scale, zp, y, n, dim, inner, block_size, blocks, saturate);          \
    }
#define QUANTIZE_ALL(xs, X, C)                                                                         \
    QUANTIZE_INT(xs, X, C, i8, q_i8)                                                                   \
    QUANTIZE_INT(xs, X, C, u8, q_u8)                                                                   \
    QUANTIZE_INT(xs, X, C, i16, q_i16)                                                                 \
    QUANTIZE_INT(xs, X, C, u16, q_u16)                                                                 \
    QUANTIZE_INT(xs, X, C, i4, q_i4)                                                                   \
    QUANTIZE_INT(xs, X, C, u4, q_u4)                                                                   \
    QUANTIZE_FLOAT(xs, X, C, f8e4m3fn, q_f8e4m3fn)                                                     \
    QUANTIZE_FLOAT(xs, X, C, f8e4m3fnuz, q_f8e4m3fnuz)                                                 \
    QUANTIZE_FLOAT(xs, X, C, f8e5m2, q_f8e5m2)                                                         \
    QUANTIZE_FLOAT(xs, X, C, f8e5m2fnuz, q_f8e5m2fnuz)                                                 \
    QUANTIZE_FLOAT(xs, X, C, f4e2m1, q_f4e2m1)
QUANTIZE_ALL(f32, float, float)
QUANTIZE_ALL(f16, __half, float)
QUANTIZE_ALL(bf16, __nv_bfloat16, float)
QUANTIZE_ALL(f64, double, double)

#define DEQUANTIZE(xs, X, ts, T)                                                                       \
    extern "C" __global__ void dequantize_##xs##_##ts(const X::S* x, const float* scale, const X::S* zp, T* y, \
                                                       i64 n, i64 dim, i64 inner, i64 block_size, i64 blocks) { \
        dequantize<X, T>(x, scale, zp, y, n, dim, inner, block_size, blocks);                          \
    }
#define DEQUANTIZE_ALL(xs, X)                                                                          \
    DEQUANTIZE(xs, X, f32, float)                                                                      \
    DEQUANTIZE(xs, X, f16, __half)                                                                     \
    DEQUANTIZE(xs, X, bf16, __nv_bfloat16)                                                             \
    DEQUANTIZE(xs, X, f64, double)
DEQUANTIZE_ALL(i8, q_i8)
DEQUANTIZE_ALL(u8, q_u8)
DEQUANTIZE_ALL(i16, q_i16)
DEQUANTIZE_ALL(u16, q_u16)
DEQUANTIZE_ALL(i32, q_i32)
DEQUANTIZE_ALL(i4, q_i4)
DEQUANTIZE_ALL(u4, q_u4)
DEQUANTIZE_ALL(f8e4m3fn, q_f8e4m3fn)
DEQUANTIZE_ALL(f8e4m3fnuz, q_f8e4m3fnuz)
DEQUANTIZE_ALL(f8e5m2, q_f8e5m2)
DEQUANTIZE_ALL(f8e5m2fnuz, q_f8e5m2fnuz)
DEQUANTIZE_ALL(f4e2m1, q_f4e2m1)

// DynamicQuantizeLinear, in two launches. First one block of DQ_THREADS threads finds the
// range widened to include 0 (maximum and minimum ignore NaN, as Rust's f32::max and f32::min
// do), and writes scale = (max - min) / 255 (1 when every element is 0) in the input's type
// and zero_point = round_half_even(clamp(-min / scale, 0, 255)) as u8; `range` (two floats)
// keeps the f32 scale and zero point for the second launch, which quantizes every element:
// clamp(round_half_even(x / scale) + zero_point, 0, 255), NaN to 0.
#define DQ_THREADS 1024

__device__ __forceinline__ float dq_max(float a, float b) { return b > a || a != a ? b : a; }
__device__ __forceinline__ float dq_min(float a, float b) { return b < a || a != a ? b : a; }

template <typename T>
__device__ __forceinline__ void dynamic_quantize_range(const T* __restrict__ x, T* __restrict__ y_scale,
                                                       unsigned char* __restrict__ y_zp, float* __restrict__ range,
                                                       i64 n) {
    __shared__ float smax[DQ_THREADS], smin[DQ_THREADS];
    float mx = 0.0f, mn = 0.0f;
    for (i64 i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = to_f32(x[i]);
        mx = dq_max(mx, v);
        mn = dq_min(mn, v);
    }
    smax[threadIdx.x] = mx;
    smin[threadIdx.x] = mn;
    __syncthreads();
    if (threadIdx.x == 0) {
        // In order, so the result does not depend on the block size (max and min are exact).
        for (unsigned int t = 1; t < blockDim.x; ++t) {
            mx = dq_max(mx, smax[t]);
            mn = dq_min(mn, smin[t]);
        }
        const float scale = mx == mn ? 1.0f : (mx - mn) / 255.0f;
        float z = 0.0f - mn / scale;
        z = z < 0.0f ? 0.0f : (z > 255.0f ? 255.0f : z);
        z = rintf(z);
        range[0] = scale;
        range[1] = z;
        *y_scale = from_f32<T>(scale);
        *y_zp = (unsigned char)z;
    }
}

template <typename T>
__device__ __forceinline__ void dynamic_quantize(const T* __restrict__ x, const float* __restrict__ range,
                                                 unsigned char* __restrict__ y, i64 n) {
    const float scale = range[0], z = range[1];
    KILN_GRID_STRIDE(i, n) {
        float v = rintf(to_f32(x[i]) / scale) + z;
        v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
        y[i] = v != v ? 0 : (unsigned char)v;
    }
}

#define DYNAMIC_QUANTIZE(sfx, T)                                                                       \
    extern "C" __global__ void dynamic_quantize_range_##sfx(const T* x, T* y_scale, unsigned char* y_zp, \
                                                             float* range, i64 n) {                    \
        dynamic_quantize_range<T>(x, y_scale, y_zp, range, n);                                         \
    }                                                                                                  \
    extern "C" __global__ void dynamic_quantize_##sfx(const T* x, const float* range, unsigned char* y, i64 n) { \
        dynamic_quantize<T>(x, range, y, n);                                                           \
    }
DYNAMIC_QUANTIZE(f32, float)
DYNAMIC_QUANTIZE(f16, __half)
DYNAMIC_QUANTIZE(bf16, __nv_bfloat16)
DYNAMIC_QUANTIZE(f64, double)
