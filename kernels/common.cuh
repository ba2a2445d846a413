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
__device__ __forceinline__ float nan_min(float a, float b) { return (a < b || a != a) ? a : b; }

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
