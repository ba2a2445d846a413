// pool.cu: pooling over the last two dims of NCHW tensors (1-D pooling is H = 1).
// maxpool2d and avgpool2d compute one output element per thread (grid-stride); the host gives
// the output size, which holds ceil_mode. globalmaxpool and globalavgpool reduce one [H*W]
// plane per block with warp shuffles.
#include "common.cuh"

struct PoolArgs {
    i64 planes, ih, iw, oh, ow;
    i64 kh, kw, sh, sw, dh, dw;
    // Padding before and after each dim.
    i64 ph0, pw0, ph1, pw1;
    // AveragePool: whether padded cells count in the divisor.
    i64 count_include_pad;
};

template <typename T>
__device__ __forceinline__ void maxpool_impl(const T* __restrict__ x, T* __restrict__ y, const PoolArgs p) {
    KILN_GRID_STRIDE(i, p.planes * p.oh * p.ow) {
        const i64 ox = i % p.ow, oy = (i / p.ow) % p.oh, pl = i / (p.ow * p.oh);
        const T* xp = x + pl * p.ih * p.iw;
        float m = -__int_as_float(0x7f800000);
        for (i64 ky = 0; ky < p.kh; ++ky) {
            const i64 yy = oy * p.sh - p.ph0 + ky * p.dh;
            if (yy < 0 || yy >= p.ih) continue;
            for (i64 kx = 0; kx < p.kw; ++kx) {
                const i64 xx = ox * p.sw - p.pw0 + kx * p.dw;
                if (xx < 0 || xx >= p.iw) continue;
                m = nan_max(m, to_f32(xp[yy * p.iw + xx]));
            }
        }
        y[i] = from_f32<T>(m);
    }
}

template <typename T>
__device__ __forceinline__ void avgpool_impl(const T* __restrict__ x, T* __restrict__ y, const PoolArgs p) {
    KILN_GRID_STRIDE(i, p.planes * p.oh * p.ow) {
        const i64 ox = i % p.ow, oy = (i / p.ow) % p.oh, pl = i / (p.ow * p.oh);
        const T* xp = x + pl * p.ih * p.iw;
        float s = 0.0f;
        i64 valid = 0, padded = 0;
        for (i64 ky = 0; ky < p.kh; ++ky) {
            const i64 yy = oy * p.sh - p.ph0 + ky * p.dh;
            const bool yin = yy >= 0 && yy < p.ih, ypad = yy >= -p.ph0 && yy < p.ih + p.ph1;
            for (i64 kx = 0; kx < p.kw; ++kx) {
                const i64 xx = ox * p.sw - p.pw0 + kx * p.dw;
                const bool xin = xx >= 0 && xx < p.iw, xpad = xx >= -p.pw0 && xx < p.iw + p.pw1;
                if (yin && xin) {
                    s += to_f32(xp[yy * p.iw + xx]);
                    ++valid;
                }
                // Cells in the explicit padding count; those past it (ceil_mode) never do.
                if (ypad && xpad) ++padded;
            }
        }
        const i64 div = p.count_include_pad ? padded : valid;
        y[i] = from_f32<T>(div > 0 ? s / (float)div : 0.0f);
    }
}

template <typename T, bool MAX>
__device__ __forceinline__ void global_pool_impl(const T* __restrict__ x, T* __restrict__ y, i64 planes, i64 hw) {
    __shared__ float scratch[32];
    for (i64 pl = blockIdx.x; pl < planes; pl += gridDim.x) {
        const T* xp = x + pl * hw;
        float acc = MAX ? -__int_as_float(0x7f800000) : 0.0f;
        for (i64 k = threadIdx.x; k < hw; k += blockDim.x) {
            const float v = to_f32(xp[k]);
            acc = MAX ? nan_max(acc, v) : acc + v;
        }
        acc = MAX ? block_reduce<warp_max>(acc, scratch) : block_reduce<warp_sum>(acc, scratch);
        if (threadIdx.x == 0) y[pl] = from_f32<T>(MAX ? acc : acc / (float)hw);
    }
}

#define POOL_KERNELS(T, sfx)                                                                           \
    extern "C" __global__ void maxpool2d_##sfx(const T* x, T* y, const PoolArgs p) {                   \
        maxpool_impl<T>(x, y, p);                                                                      \
    }                                                                                                  \
    extern "C" __global__ void avgpool2d_##sfx(const T* x, T* y, const PoolArgs p) {                   \
        avgpool_impl<T>(x, y, p);                                                                      \
    }                                                                                                  \
    extern "C" __global__ void globalmaxpool_##sfx(const T* x, T* y, i64 planes, i64 hw) {             \
        global_pool_impl<T, true>(x, y, planes, hw);                                                   \
    }                                                                                                  \
    extern "C" __global__ void globalavgpool_##sfx(const T* x, T* y, i64 planes, i64 hw) {             \
        global_pool_impl<T, false>(x, y, planes, hw);                                                  \
    }

POOL_KERNELS(float, f32)
POOL_KERNELS(__half, f16)
POOL_KERNELS(__nv_bfloat16, bf16)

// Channels-last (NHWC) pooling, for the FP16 convolution networks the planner runs in NHWC.
// `planes` is N * C as above and `c` the channel count: consecutive threads take consecutive
// channels of one output cell, so every load is coalesced. The global forms read [N, H*W, C]
// and write [N, C], which is the same memory as NCHW's [N, C, 1, 1].
template <typename T>
__device__ __forceinline__ void maxpool_nhwc_impl(const T* __restrict__ x, T* __restrict__ y, const PoolArgs p,
                                                  i64 c) {
    KILN_GRID_STRIDE(i, p.planes * p.oh * p.ow) {
        const i64 ch = i % c, ox = (i / c) % p.ow, oy = (i / (c * p.ow)) % p.oh, n = i / (c * p.ow * p.oh);
        const T* xp = x + n * p.ih * p.iw * c + ch;
        float m = -__int_as_float(0x7f800000);
        for (i64 ky = 0; ky < p.kh; ++ky) {
            const i64 yy = oy * p.sh - p.ph0 + ky * p.dh;
            if (yy < 0 || yy >= p.ih) continue;
            for (i64 kx = 0; kx < p.kw; ++kx) {
                const i64 xx = ox * p.sw - p.pw0 + kx * p.dw;
                if (xx < 0 || xx >= p.iw) continue;
                m = nan_max(m, to_f32(xp[(yy * p.iw + xx) * c]));
            }
        }
        y[i] = from_f32<T>(m);
    }
}

template <typename T>
__device__ __forceinline__ void avgpool_nhwc_impl(const T* __restrict__ x, T* __restrict__ y, const PoolArgs p,
                                                  i64 c) {
    KILN_GRID_STRIDE(i, p.planes * p.oh * p.ow) {
        const i64 ch = i % c, ox = (i / c) % p.ow, oy = (i / (c * p.ow)) % p.oh, n = i / (c * p.ow * p.oh);
        const T* xp = x + n * p.ih * p.iw * c + ch;
        float s = 0.0f;
        i64 valid = 0, padded = 0;
        for (i64 ky = 0; ky < p.kh; ++ky) {
            const i64 yy = oy * p.sh - p.ph0 + ky * p.dh;
            const bool yin = yy >= 0 && yy < p.ih, ypad = yy >= -p.ph0 && yy < p.ih + p.ph1;
            for (i64 kx = 0; kx < p.kw; ++kx) {
                const i64 xx = ox * p.sw - p.pw0 + kx * p.dw;
                const bool xin = xx >= 0 && xx < p.iw, xpad = xx >= -p.pw0 && xx < p.iw + p.pw1;
                if (yin && xin) {
                    s += to_f32(xp[(yy * p.iw + xx) * c]);
                    ++valid;
                }
                if (ypad && xpad) ++padded;
            }
        }
        const i64 div = p.count_include_pad ? padded : valid;
        y[i] = from_f32<T>(div > 0 ? s / (float)div : 0.0f);
    }
}

template <typename T, bool MAX>
__device__ __forceinline__ void global_pool_nhwc_impl(const T* __restrict__ x, T* __restrict__ y, i64 planes,
                                                      i64 hw, i64 c) {
    KILN_GRID_STRIDE(i, planes) {
        const i64 ch = i % c, n = i / c;
        const T* xp = x + n * hw * c + ch;
        float acc = MAX ? -__int_as_float(0x7f800000) : 0.0f;
        for (i64 k = 0; k < hw; ++k) {
            const float v = to_f32(xp[k * c]);
            acc = MAX ? nan_max(acc, v) : acc + v;
        }
        y[i] = from_f32<T>(MAX ? acc : acc / (float)hw);
    }
}

#define POOL_NHWC_KERNELS(T, sfx)                                                                      \
    extern "C" __global__ void maxpool2d_nhwc_##sfx(const T* x, T* y, const PoolArgs p, i64 c) {       \
        maxpool_nhwc_impl<T>(x, y, p, c);                                                              \
    }                                                                                                  \
    extern "C" __global__ void avgpool2d_nhwc_##sfx(const T* x, T* y, const PoolArgs p, i64 c) {       \
        avgpool_nhwc_impl<T>(x, y, p, c);                                                              \
    }                                                                                                  \
    extern "C" __global__ void globalmaxpool_nhwc_##sfx(const T* x, T* y, i64 planes, i64 hw, i64 c) { \
        global_pool_nhwc_impl<T, true>(x, y, planes, hw, c);                                           \
    }                                                                                                  \
    extern "C" __global__ void globalavgpool_nhwc_##sfx(const T* x, T* y, i64 planes, i64 hw, i64 c) { \
        global_pool_nhwc_impl<T, false>(x, y, planes, hw, c);                                          \
    }

POOL_NHWC_KERNELS(float, f32)
POOL_NHWC_KERNELS(__half, f16)
POOL_NHWC_KERNELS(__nv_bfloat16, bf16)
