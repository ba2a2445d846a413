// norm.cu: LayerNorm and RMSNorm over the last n elements of each row.
// One block per row (grid-stride over rows). The statistics are taken in one pass with f32
// accumulation: Welford's mean and M2 per thread, merged across the warp with shuffles and
// across warps through shared memory (Chan's formula), which stays accurate when the mean is
// large against the spread. The second loop normalizes and applies scale and bias.
#include "common.cuh"

struct Welford {
    float n, mean, m2;
};

__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
    const float n = a.n + b.n;
    if (n == 0.0f) return a;
    const float d = b.mean - a.mean;
    const float wb = b.n / n;
    Welford r;
    r.n = n;
    r.mean = a.mean + d * wb;
    r.m2 = a.m2 + b.m2 + d * d * a.n * wb;
    return r;
}

__device__ __forceinline__ Welford welford_block(Welford w) {
    __shared__ float sn[32], smean[32], sm2[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        Welford b;
        b.n = __shfl_xor_sync(0xffffffffu, w.n, o);
        b.mean = __shfl_xor_sync(0xffffffffu, w.mean, o);
        b.m2 = __shfl_xor_sync(0xffffffffu, w.m2, o);
        w = welford_merge(w, b);
    }
    if (lane == 0) { sn[warp] = w.n; smean[warp] = w.mean; sm2[warp] = w.m2; }
    __syncthreads();
    Welford r;
    r.n = lane < nwarps ? sn[lane] : 0.0f;
    r.mean = lane < nwarps ? smean[lane] : 0.0f;
    r.m2 = lane < nwarps ? sm2[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        Welford b;
        b.n = __shfl_xor_sync(0xffffffffu, r.n, o);
        b.mean = __shfl_xor_sync(0xffffffffu, r.mean, o);
        b.m2 = __shfl_xor_sync(0xffffffffu, r.m2, o);
        r = welford_merge(r, b);
    }
    __syncthreads();
    return r;
}

// y = (x - mean) / sqrt(var + eps) * scale + bias over rows of n elements. `bias`, `mean_out`
// and `invstd_out` may be null (ONNX's optional B, Mean and InvStdDev).
template <typename T>
__device__ __forceinline__ void layernorm_rows(const T* __restrict__ x, const T* __restrict__ scale,
                                               const T* __restrict__ bias, T* __restrict__ y, i64 rows, i64 n,
                                               float eps, float* mean_out, float* invstd_out) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        Welford w = {0.0f, 0.0f, 0.0f};
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
            Welford b = {1.0f, to_f32(xr[k]), 0.0f};
            w = welford_merge(w, b);
        }
        w = welford_block(w);
        const float inv = rsqrtf(w.m2 / (float)n + eps);
        if (threadIdx.x == 0) {
            if (mean_out) mean_out[r] = w.mean;
            if (invstd_out) invstd_out[r] = inv;
        }
        T* yr = y + r * n;
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
            float v = (to_f32(xr[k]) - w.mean) * inv * to_f32(scale[k]);
            if (bias) v += to_f32(bias[k]);
            yr[k] = from_f32<T>(v);
        }
    }
}

// y = x / sqrt(mean(x^2) + eps) * scale over rows of n elements.
template <typename T>
__device__ __forceinline__ void rmsnorm_rows(const T* __restrict__ x, const T* __restrict__ scale, T* __restrict__ y,
                                             i64 rows, i64 n, float eps) {
    __shared__ float scratch[32];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        float s = 0.0f;
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
            const float v = to_f32(xr[k]);
            s += v * v;
        }
        s = block_reduce<warp_sum>(s, scratch);
        const float inv = rsqrtf(s / (float)n + eps);
        T* yr = y + r * n;
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) yr[k] = from_f32<T>(to_f32(xr[k]) * inv * to_f32(scale[k]));
    }
}

#define NORM_KERNELS(T, sfx)                                                                                \
    extern "C" __global__ void layernorm_##sfx(const T* x, const T* scale, const T* bias, T* y, i64 rows,   \
                                               i64 n, float eps, float* mean_out, float* invstd_out) {      \
        layernorm_rows<T>(x, scale, bias, y, rows, n, eps, mean_out, invstd_out);                           \
    }                                                                                                       \
    extern "C" __global__ void rmsnorm_##sfx(const T* x, const T* scale, T* y, i64 rows, i64 n, float eps) { \
        rmsnorm_rows<T>(x, scale, y, rows, n, eps);                                                         \
    }

NORM_KERNELS(float, f32)
NORM_KERNELS(__half, f16)
NORM_KERNELS(__nv_bfloat16, bf16)
