// norm.cu: LayerNorm and RMSNorm over the last n elements of each row; GroupNorm and
// InstanceNorm over groups of channel planes; MeanVarianceNormalization and LpNormalization over
// rows; BatchNorm (inference) and LRN elementwise, one thread per element (grid-stride).
// The row kernels take one block per row (grid-stride over rows); LayerNorm and RMSNorm also have
// a warp-per-row path (`*_warp`) for rows that fit a warp's registers, below. The block-per-row
// statistics are taken in one pass with f32 accumulation: Welford's mean and M2 per thread,
// merged across the warp with shuffles and across warps through shared memory (Chan's formula),
// which stays accurate when the mean is large against the spread. The second loop normalizes
// and applies scale and bias.
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

// The warp-per-row path of LayerNorm and RMSNorm, for rows that fit the registers of one warp:
// n * sizeof(T) a multiple of 16 and at most 32 * KILN_ROW_VECS * 16 bytes (the host checks
// both). Each warp of the block takes rows blockIdx.x * warps + warp, stepping by every warp of
// the grid; lane l loads vectors l, l + 32, ... of the row once, as f32. The statistics are
// exact two-pass ones from the registers: the mean from a warp sum, then the variance as the
// mean of (x - mean)^2. No shared memory and no block barrier: a row is one warp's business.
// VEC picks 16-byte loads and stores when every pointer is 16-byte aligned (then every row is,
// as a row is a whole number of vectors); otherwise the same math runs on element loads.
// With `q`, the output is also quantized to i8 as the next layer's QuantizeLinear does it
// (its stored value over the constant scale qc, whose reciprocal is qr; see kiln_div_k), so an
// INT8 network's LayerNorm writes the f16 its residual reads and the i8 its product reads.
template <typename T, bool VEC, bool RMS>
__device__ __forceinline__ void norm_warp_rows(const T* __restrict__ x, const T* __restrict__ scale,
                                               const T* __restrict__ bias, T* __restrict__ y, i64 rows, i64 n,
                                               float eps, float* mean_out, float* invstd_out,
                                               signed char* __restrict__ q = nullptr, float qc = 1.0f,
                                               float qr = 1.0f) {
    constexpr int N = Vec16<T>::N;
    const int lane = threadIdx.x & 31;
    const int nvec = (int)(n / N);
    const i64 warps = (i64)gridDim.x * (blockDim.x >> 5);
    // The row index is the same across the warp, so every lane takes the shuffles below.
    for (i64 r = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
        const T* xr = x + r * n;
        float v[KILN_ROW_VECS][N];
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < KILN_ROW_VECS; ++i) {
            const int c = i * 32 + lane;
            if (c < nvec) {
                load_vec16<T, VEC>(xr, c, v[i]);
#pragma unroll
                for (int e = 0; e < N; ++e) s += RMS ? v[i][e] * v[i][e] : v[i][e];
            }
        }
        s = warp_sum(s);
        float mean = 0.0f, inv;
        if (RMS) {
            inv = rsqrtf(s / (float)n + eps);
        } else {
            mean = s / (float)n;
            float q = 0.0f;
#pragma unroll
            for (int i = 0; i < KILN_ROW_VECS; ++i) {
                if (i * 32 + lane < nvec) {
#pragma unroll
                    for (int e = 0; e < N; ++e) {
                        const float d = v[i][e] - mean;
                        q += d * d;
                    }
                }
            }
            inv = rsqrtf(warp_sum(q) / (float)n + eps);
            if (lane == 0) {
                if (mean_out) mean_out[r] = mean;
                if (invstd_out) invstd_out[r] = inv;
            }
        }
        T* yr = y + r * n;
#pragma unroll
        for (int i = 0; i < KILN_ROW_VECS; ++i) {
            const int c = i * 32 + lane;
            if (c < nvec) {
                float g[N], o[N];
                load_vec16<T, VEC>(scale, c, g);
#pragma unroll
                for (int e = 0; e < N; ++e) o[e] = (v[i][e] - mean) * inv * g[e];
                if (!RMS && bias) {
                    float b[N];
                    load_vec16<T, VEC>(bias, c, b);
#pragma unroll
                    for (int e = 0; e < N; ++e) o[e] += b[e];
                }
                store_vec16<T, VEC>(yr, c, o);
                if (q) {
                    // The stored value, rounded to T, is what the quantize reads.
                    signed char b[N];
#pragma unroll
                    for (int e = 0; e < N; ++e) b[e] = kiln_rni_sat_s8(kiln_div_k(to_f32(from_f32<T>(o[e])), qc, qr));
                    signed char* qrow = q + r * n + (i64)c * N;
                    if (VEC && N == 8) {
                        uint2 w;
                        memcpy(&w, b, 8);
                        *reinterpret_cast<uint2*>(qrow) = w;
                    } else if (VEC && N == 4) {
                        unsigned w;
                        memcpy(&w, b, 4);
                        *reinterpret_cast<unsigned*>(qrow) = w;
                    } else {
#pragma unroll
                        for (int e = 0; e < N; ++e) qrow[e] = b[e];
                    }
                }
            }
        }
    }
}

// The entry of the warp-per-row path: one uniform test of the pointers' alignment picks the
// 16-byte loads or the element loads (`bias` may be null, which is aligned).
template <typename T, bool RMS>
__device__ __forceinline__ void norm_warp(const T* x, const T* scale, const T* bias, T* y, i64 rows, i64 n, float eps,
                                          float* mean_out, float* invstd_out) {
    if (aligned16(x) && aligned16(scale) && aligned16(bias) && aligned16(y))
        norm_warp_rows<T, true, RMS>(x, scale, bias, y, rows, n, eps, mean_out, invstd_out);
    else
        norm_warp_rows<T, false, RMS>(x, scale, bias, y, rows, n, eps, mean_out, invstd_out);
}
// The same LayerNorm, its output quantized to `q` too (aligned as `y`, an i8 row being a
// quarter or half of a T row's bytes: 16-byte alignment of q is checked with the others).
template <typename T>
__device__ __forceinline__ void layernorm_warp_q(const T* x, const T* scale, const T* bias, T* y, i64 rows, i64 n,
                                                 float eps, float* mean_out, float* invstd_out, signed char* q,
                                                 float qc, float qr) {
    if (aligned16(x) && aligned16(scale) && aligned16(bias) && aligned16(y) && aligned16(q))
        norm_warp_rows<T, true, false>(x, scale, bias, y, rows, n, eps, mean_out, invstd_out, q, qc, qr);
    else
        norm_warp_rows<T, false, false>(x, scale, bias, y, rows, n, eps, mean_out, invstd_out, q, qc, qr);
}

// GroupNorm and InstanceNorm (groups = channels): row r is group r % groups of its sample, n =
// per * plane elements, element k of the row in channel (r % groups) * per + k / plane. Scale and
// bias hold one value per channel, or per group when `per_group` (GroupNorm of opset 18).
template <typename T>
__device__ __forceinline__ void groupnorm_rows(const T* __restrict__ x, const T* __restrict__ scale,
                                               const T* __restrict__ bias, T* __restrict__ y, i64 rows, i64 groups,
                                               i64 per, i64 plane, float eps, int per_group) {
    const i64 n = per * plane;
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        Welford w = {0.0f, 0.0f, 0.0f};
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
            Welford b = {1.0f, to_f32(xr[k]), 0.0f};
            w = welford_merge(w, b);
        }
        w = welford_block(w);
        const float inv = rsqrtf(w.m2 / (float)n + eps);
        const i64 g = r % groups;
        T* yr = y + r * n;
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
            const i64 ch = per_group ? g : g * per + k / plane;
            const float a = inv * to_f32(scale[ch]);
            yr[k] = from_f32<T>(to_f32(xr[k]) * a + (to_f32(bias[ch]) - w.mean * a));
        }
    }
}

// MeanVarianceNormalization over rows of n elements: (x - mean) / (sqrt(var) + 1e-9).
template <typename T>
__device__ __forceinline__ void mvn_rows(const T* __restrict__ x, T* __restrict__ y, i64 rows, i64 n) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        Welford w = {0.0f, 0.0f, 0.0f};
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
            Welford b = {1.0f, to_f32(xr[k]), 0.0f};
            w = welford_merge(w, b);
        }
        w = welford_block(w);
        const float d = sqrtf(w.m2 / (float)n) + 1e-9f;
        T* yr = y + r * n;
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) yr[k] = from_f32<T>((to_f32(xr[k]) - w.mean) / d);
    }
}

// LpNormalization over the middle axis of [outer, n, inner]: x / ||x||_p with p 1 or 2; one
// row (o, i) per block iteration.
template <typename T>
__device__ __forceinline__ void lpnorm_rows(const T* __restrict__ x, T* __restrict__ y, i64 outer, i64 n, i64 inner,
                                            int p) {
    __shared__ float scratch[32];
    for (i64 row = blockIdx.x; row < outer * inner; row += gridDim.x) {
        const i64 off = (row / inner) * n * inner + row % inner;
        float s = 0.0f;
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
            const float v = to_f32(x[off + k * inner]);
            s += p == 1 ? fabsf(v) : v * v;
        }
        s = block_reduce<warp_sum>(s, scratch);
        const float norm = p == 1 ? s : sqrtf(s);
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) y[off + k * inner] = from_f32<T>(to_f32(x[off + k * inner]) / norm);
    }
}

// BatchNormalization in inference form over [N, C, plane]:
// y = x * a + (bias - mean * a) with a = scale / sqrt(var + eps), per channel.
template <typename T>
__device__ __forceinline__ void batchnorm_impl(const T* __restrict__ x, const T* __restrict__ scale,
                                               const T* __restrict__ bias, const T* __restrict__ mean,
                                               const T* __restrict__ var, T* __restrict__ y, i64 n, i64 channels,
                                               i64 plane, float eps) {
    KILN_GRID_STRIDE(i, n) {
        const i64 ch = (i / plane) % channels;
        const float a = to_f32(scale[ch]) / sqrtf(to_f32(var[ch]) + eps);
        y[i] = from_f32<T>(to_f32(x[i]) * a + (to_f32(bias[ch]) - to_f32(mean[ch]) * a));
    }
}

// LRN across the channels of [N, C, plane]: x / (bias + alpha / size * sum(x^2))^beta, the sum
// over channels c - floor((size - 1) / 2) to c + ceil((size - 1) / 2), clipped to [0, C).
template <typename T>
__device__ __forceinline__ void lrn_impl(const T* __restrict__ x, T* __restrict__ y, i64 n, i64 channels, i64 plane,
                                         i64 size, float alpha, float beta, float bias) {
    const i64 before = (size - 1) / 2, after = size - 1 - before;
    KILN_GRID_STRIDE(i, n) {
        const i64 ch = (i / plane) % channels;
        const i64 base = i - ch * plane;
        const i64 lo = ch - before < 0 ? 0 : ch - before;
        const i64 hi = ch + after > channels - 1 ? channels - 1 : ch + after;
        float s = 0.0f;
        for (i64 k = lo; k <= hi; ++k) {
            const float v = to_f32(x[base + k * plane]);
            s += v * v;
        }
        y[i] = from_f32<T>(to_f32(x[i]) / powf(bias + alpha / (float)size * s, beta));
    }
}

// BatchNormalization's batch statistics over [N, C, plane], one block per channel: the mean and
// population variance into mean_out and var_out, and when given the running statistics
// in * momentum + batch * (1 - momentum).
template <typename T>
__device__ __forceinline__ void batchnorm_stats_rows(const T* __restrict__ x, const T* __restrict__ in_mean,
                                                     const T* __restrict__ in_var, T* __restrict__ mean_out,
                                                     T* __restrict__ var_out, T* __restrict__ run_mean,
                                                     T* __restrict__ run_var, i64 n, i64 channels, i64 plane,
                                                     float momentum) {
    for (i64 c = blockIdx.x; c < channels; c += gridDim.x) {
        Welford w = {0.0f, 0.0f, 0.0f};
        for (i64 k = threadIdx.x; k < n * plane; k += blockDim.x) {
            Welford b = {1.0f, to_f32(x[((k / plane) * channels + c) * plane + k % plane]), 0.0f};
            w = welford_merge(w, b);
        }
        w = welford_block(w);
        if (threadIdx.x == 0) {
            const float var = w.n > 0.0f ? w.m2 / w.n : 0.0f;
            mean_out[c] = from_f32<T>(w.mean);
            var_out[c] = from_f32<T>(var);
            if (run_mean) run_mean[c] = from_f32<T>(to_f32(in_mean[c]) * momentum + w.mean * (1.0f - momentum));
            if (run_var) run_var[c] = from_f32<T>(to_f32(in_var[c]) * momentum + var * (1.0f - momentum));
        }
    }
}

#define NORM_KERNELS(T, sfx)                                                                                \
    extern "C" __global__ void layernorm_##sfx(const T* x, const T* scale, const T* bias, T* y, i64 rows,   \
                                               i64 n, float eps, float* mean_out, float* invstd_out) {      \
        layernorm_rows<T>(x, scale, bias, y, rows, n, eps, mean_out, invstd_out);                           \
    }                                                                                                       \
    extern "C" __global__ void rmsnorm_##sfx(const T* x, const T* scale, T* y, i64 rows, i64 n, float eps) { \
        rmsnorm_rows<T>(x, scale, y, rows, n, eps);                                                         \
    }                                                                                                       \
    extern "C" __global__ void layernorm_warp_##sfx(const T* x, const T* scale, const T* bias, T* y,       \
                                                    i64 rows, i64 n, float eps, float* mean_out,            \
                                                    float* invstd_out) {                                    \
        norm_warp<T, false>(x, scale, bias, y, rows, n, eps, mean_out, invstd_out);                         \
    }                                                                                                       \
    extern "C" __global__ void layernorm_warp_q_##sfx(const T* x, const T* scale, const T* bias, T* y,     \
                                                      i64 rows, i64 n, float eps, float* mean_out,          \
                                                      float* invstd_out, signed char* q, float qc,          \
                                                      float qr) {                                           \
        layernorm_warp_q<T>(x, scale, bias, y, rows, n, eps, mean_out, invstd_out, q, qc, qr);              \
    }                                                                                                       \
    extern "C" __global__ void rmsnorm_warp_##sfx(const T* x, const T* scale, T* y, i64 rows, i64 n,       \
                                                  float eps) {                                              \
        norm_warp<T, true>(x, scale, nullptr, y, rows, n, eps, nullptr, nullptr);                           \
    }                                                                                                       \
    extern "C" __global__ void groupnorm_##sfx(const T* x, const T* scale, const T* bias, T* y, i64 rows,   \
                                               i64 groups, i64 per, i64 plane, float eps, int per_group) {  \
        groupnorm_rows<T>(x, scale, bias, y, rows, groups, per, plane, eps, per_group);                     \
    }                                                                                                       \
    extern "C" __global__ void mvn_##sfx(const T* x, T* y, i64 rows, i64 n) { mvn_rows<T>(x, y, rows, n); } \
    extern "C" __global__ void lpnorm_##sfx(const T* x, T* y, i64 outer, i64 n, i64 inner, int p) {         \
        lpnorm_rows<T>(x, y, outer, n, inner, p);                                                           \
    }                                                                                                       \
    extern "C" __global__ void batchnorm_##sfx(const T* x, const T* scale, const T* bias, const T* mean,    \
                                               const T* var, T* y, i64 n, i64 channels, i64 plane,          \
                                               float eps) {                                                 \
        batchnorm_impl<T>(x, scale, bias, mean, var, y, n, channels, plane, eps);                           \
    }                                                                                                       \
    extern "C" __global__ void batchnorm_stats_##sfx(const T* x, const T* in_mean, const T* in_var,         \
                                                     T* mean_out, T* var_out, T* run_mean, T* run_var,      \
                                                     i64 n, i64 channels, i64 plane, float momentum) {      \
        batchnorm_stats_rows<T>(x, in_mean, in_var, mean_out, var_out, run_mean, run_var, n, channels,      \
                                plane, momentum);                                                           \
    }                                                                                                       \
    extern "C" __global__ void lrn_##sfx(const T* x, T* y, i64 n, i64 channels, i64 plane, i64 size,        \
                                         float alpha, float beta, float bias) {                             \
        lrn_impl<T>(x, y, n, channels, plane, size, alpha, beta, bias);                                     \
    }

NORM_KERNELS(float, f32)
NORM_KERNELS(__half, f16)
NORM_KERNELS(__nv_bfloat16, bf16)
