// pool.cu: pooling over the last two dims of NCHW tensors (1-D pooling is H = 1), and over up
// to three (the *3d kernels, fewer dims given as leading dims of size one).
// maxpool2d (f32, f16, bf16, and i8 and u8), avgpool2d and the *3d kernels compute one output
// element per thread (grid-stride);
// the host gives the output size, which holds ceil_mode. globalmaxpool and globalavgpool reduce one [H*W]
// plane per block with warp shuffles. maxunpool scatters one input element per thread into an
// output that maxunpool_zero cleared first.
#include "common.cuh"

// 8-bit integers for MaxPool: f32 holds every 8-bit value exactly, and every window holds at
// least one input cell (pads are smaller than the kernel), so the max converts back exactly.
__device__ __forceinline__ float to_f32(signed char x) { return (float)x; }
__device__ __forceinline__ float to_f32(unsigned char x) { return (float)x; }
template <> __device__ __forceinline__ signed char from_f32<signed char>(float x) { return (signed char)x; }
template <> __device__ __forceinline__ unsigned char from_f32<unsigned char>(float x) { return (unsigned char)x; }

struct PoolArgs {
    i64 planes, ih, iw, oh, ow;
    i64 kh, kw, sh, sw, dh, dw;
    // Padding before and after each dim.
    i64 ph0, pw0, ph1, pw1;
    // AveragePool: whether padded cells count in the divisor.
    i64 count_include_pad;
};

// Calls f(q) for every cell of output (oy, ox)'s window inside the image, q the cell in the
// image xp whose pixels lie `step` elements apart (1 for an NCHW plane, the channel count for
// channels-last data, where q is the cell's channels).
template <typename T, class F>
__device__ __forceinline__ void pool_window(const T* xp, const PoolArgs& p, i64 step, i64 oy, i64 ox, F f) {
    for (i64 ky = 0; ky < p.kh; ++ky) {
        const i64 yy = oy * p.sh - p.ph0 + ky * p.dh;
        if (yy < 0 || yy >= p.ih) continue;
        for (i64 kx = 0; kx < p.kw; ++kx) {
            const i64 xx = ox * p.sw - p.pw0 + kx * p.dw;
            if (xx < 0 || xx >= p.iw) continue;
            f(xp + (yy * p.iw + xx) * step);
        }
    }
}

template <typename T>
__device__ __forceinline__ void maxpool_impl(const T* __restrict__ x, T* __restrict__ y, const PoolArgs p) {
    KILN_GRID_STRIDE(i, p.planes * p.oh * p.ow) {
        const i64 ox = i % p.ow, oy = (i / p.ow) % p.oh, pl = i / (p.ow * p.oh);
        const T* xp = x + pl * p.ih * p.iw;
        float m = -__int_as_float(0x7f800000);
        pool_window(xp, p, 1, oy, ox, [&](const T* q) { m = nan_max(m, to_f32(*q)); });
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

// Pooling over three spatial dims [D0, D1, D2] of [planes, D0, D1, D2]; 1-D and 2-D inputs come
// with leading dims of size one (which column-major indices then ignore, as they should).
struct Pool3Args {
    i64 planes;
    i64 in[3], out[3], k[3], s[3], d[3];
    // Padding before and after each dim.
    i64 p0[3], p1[3];
    // AveragePool: whether padded cells count in the divisor.
    i64 count_include_pad;
    // MaxPool's Indices: whether they are column-major (storage_order 1).
    i64 column_major;
    // LpPool's exponent.
    double p;
};

#define POOL3_MAX 0
#define POOL3_AVG 1
#define POOL3_LP 2

// MaxPool keeps the first maximum (a later cell wins only when strictly larger) and gives 0 and
// index -1 for a window wholly in the padding, as the CPU reference does. `idx` may be null.
template <typename T, int MODE>
__device__ __forceinline__ void pool3_impl(const T* __restrict__ x, T* __restrict__ y, i64* __restrict__ idx,
                                           const Pool3Args a) {
    const i64 osz = a.out[0] * a.out[1] * a.out[2], isz = a.in[0] * a.in[1] * a.in[2];
    const float p = (float)a.p;
    KILN_GRID_STRIDE(i, a.planes * osz) {
        const i64 o2 = i % a.out[2], o1 = (i / a.out[2]) % a.out[1], o0 = (i / (a.out[2] * a.out[1])) % a.out[0];
        const i64 pl = i / osz;
        const T* xp = x + pl * isz;
        float acc = 0.0f;
        i64 best = -1, valid = 0, padded = 0;
        for (i64 k0 = 0; k0 < a.k[0]; ++k0) {
            const i64 c0 = o0 * a.s[0] - a.p0[0] + k0 * a.d[0];
            const bool in0 = c0 >= 0 && c0 < a.in[0], pad0 = c0 < a.in[0] + a.p1[0];
            for (i64 k1 = 0; k1 < a.k[1]; ++k1) {
                const i64 c1 = o1 * a.s[1] - a.p0[1] + k1 * a.d[1];
                const bool in1 = c1 >= 0 && c1 < a.in[1], pad1 = c1 < a.in[1] + a.p1[1];
                for (i64 k2 = 0; k2 < a.k[2]; ++k2) {
                    const i64 c2 = o2 * a.s[2] - a.p0[2] + k2 * a.d[2];
                    const bool in2 = c2 >= 0 && c2 < a.in[2], pad2 = c2 < a.in[2] + a.p1[2];
                    // Cells in the explicit padding count; those past it (ceil_mode) never do.
                    if (pad0 && pad1 && pad2) ++padded;
                    if (!(in0 && in1 && in2)) continue;
                    const i64 cell = (c0 * a.in[1] + c1) * a.in[2] + c2;
                    const float v = to_f32(xp[cell]);
                    if (MODE == POOL3_MAX) {
                        if (best < 0 || v > acc) {
                            acc = v;
                            best = a.column_major ? c0 + a.in[0] * (c1 + a.in[1] * c2) : cell;
                        }
                    } else if (MODE == POOL3_AVG) {
                        acc += v;
                    } else {
                        acc += p == 2.0f ? v * v : p == 1.0f ? fabsf(v) : powf(fabsf(v), p);
                    }
                    ++valid;
                }
            }
        }
        float r;
        if (MODE == POOL3_MAX) {
            r = acc;
            if (idx) idx[i] = best < 0 ? -1 : pl * isz + best;
        } else if (MODE == POOL3_AVG) {
            const i64 div = a.count_include_pad ? padded : valid;
            r = div > 0 ? acc / (float)div : 0.0f;
        } else {
            r = p == 2.0f ? sqrtf(acc) : p == 1.0f ? acc : powf(acc, 1.0f / p);
        }
        y[i] = from_f32<T>(r);
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

// MaxUnpool: x[i] goes to flat index idx[i] of the `inferred` shape (the unpooled size), placed
// in the top-left corner of the `out` shape (output_shape); cells beyond `out` are dropped. An
// index outside the inferred shape sets *err. Two entries of one index write the same maximum.
struct UnpoolArgs {
    i64 rank;
    i64 inferred[KILN_MAX_RANK];
    i64 out[KILN_MAX_RANK];
};

template <typename T>
__device__ __forceinline__ void maxunpool_impl(const T* __restrict__ x, const i64* __restrict__ idx, T* __restrict__ y,
                                               i64 n, const UnpoolArgs a, int* err) {
    i64 total = 1;
    for (int d = 0; d < (int)a.rank; ++d) total *= a.inferred[d];
    KILN_GRID_STRIDE(i, n) {
        i64 rest = idx[i];
        if (rest < 0 || rest >= total) {
            *err = 1;
            continue;
        }
        i64 o = 0, mul = 1;
        bool inside = true;
        for (int d = (int)a.rank - 1; d >= 0; --d) {
            const i64 c = rest % a.inferred[d];
            rest /= a.inferred[d];
            if (c >= a.out[d]) inside = false;
            o += c * mul;
            mul *= a.out[d];
        }
        if (inside) y[o] = x[i];
    }
}

#define POOL_KERNELS(T, sfx)                                                                           \
    extern "C" __global__ void maxpool2d_##sfx(const T* x, T* y, const PoolArgs p) {                   \
        maxpool_impl<T>(x, y, p);                                                                      \
    }                                                                                                  \
    extern "C" __global__ void avgpool2d_##sfx(const T* x, T* y, const PoolArgs p) {                   \
        avgpool_impl<T>(x, y, p);                                                                      \
    }                                                                                                  \
    extern "C" __global__ void maxpool3d_##sfx(const T* x, T* y, i64* indices, const Pool3Args a) {    \
        pool3_impl<T, POOL3_MAX>(x, y, indices, a);                                                    \
    }                                                                                                  \
    extern "C" __global__ void avgpool3d_##sfx(const T* x, T* y, const Pool3Args a) {                  \
        pool3_impl<T, POOL3_AVG>(x, y, nullptr, a);                                                    \
    }                                                                                                  \
    extern "C" __global__ void lppool3d_##sfx(const T* x, T* y, const Pool3Args a) {                   \
        pool3_impl<T, POOL3_LP>(x, y, nullptr, a);                                                     \
    }                                                                                                  \
    extern "C" __global__ void maxunpool_zero_##sfx(T* y, i64 n) {                                    \
        KILN_GRID_STRIDE(i, n) y[i] = from_f32<T>(0.0f);                                               \
    }                                                                                                  \
    extern "C" __global__ void maxunpool_##sfx(const T* x, const i64* indices, T* y, i64 n,            \
                                               const UnpoolArgs a, int* err) {                         \
        maxunpool_impl<T>(x, indices, y, n, a, err);                                                   \
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

// MaxPool over 8-bit integers (ONNX defines it for int8 and uint8; an INT8 network pools its
// quantized activations) through the same window loop, with the 8-bit conversions at the top.
extern "C" __global__ void maxpool2d_i8(const signed char* x, signed char* y, const PoolArgs p) {
    maxpool_impl(x, y, p);
}
extern "C" __global__ void maxpool2d_u8(const unsigned char* x, unsigned char* y, const PoolArgs p) {
    maxpool_impl(x, y, p);
}

// Channels-last (NHWC) pooling, for the FP16 convolution networks the planner runs in NHWC.
// `planes` is N * C as above and `c` the channel count: consecutive threads take consecutive
// channels of one output cell, so every load is coalesced. The global forms read [N, H*W, C]
// and write [N, C], which is the same memory as NCHW's [N, C, 1, 1].

// The byte kernels' common case: a 3x3 window without dilation over fewer than 2^31 bytes
// (ResNet's stem pool). Indices in 32 bits and the window unrolled, so a thread's nine loads
// (predicated off outside the image) are all in flight at once; the general loop below
// divides 64-bit indices and waits for each cell's branch.
template <bool SIGNED>
__device__ __forceinline__ void maxpool3x3_nhwc16_u8(const unsigned char* __restrict__ x, unsigned char* __restrict__ y,
                                                     const PoolArgs p, int c) {
    const unsigned cv = (unsigned)c / 16, ow = (unsigned)p.ow, oh = (unsigned)p.oh;
    const unsigned n = (unsigned)(p.planes / c) * oh * ow * cv;
    const int ih = (int)p.ih, iw = (int)p.iw;
    const unsigned least = SIGNED ? 0x80808080u : 0u;
#pragma unroll 1
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const unsigned g = i % cv, cell = i / cv, ox = cell % ow, t = cell / ow, oy = t % oh, img = t / oh;
        const int y0 = (int)oy * (int)p.sh - (int)p.ph0, x0 = (int)ox * (int)p.sw - (int)p.pw0;
        const unsigned char* xp = x + (size_t)img * ih * iw * c + g * 16;
        uint4 v[9];
#pragma unroll
        for (int k = 0; k < 9; ++k) {
            const int yy = y0 + k / 3, xx = x0 + k % 3;
            v[k] = (unsigned)yy < (unsigned)ih && (unsigned)xx < (unsigned)iw
                       ? *reinterpret_cast<const uint4*>(xp + (yy * iw + xx) * c)
                       : make_uint4(least, least, least, least);
        }
        unsigned m[4] = {least, least, least, least};
#pragma unroll
        for (int k = 0; k < 9; ++k) {
            const unsigned e[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
#pragma unroll
            for (int q = 0; q < 4; ++q) m[q] = SIGNED ? __vmaxs4(m[q], e[q]) : __vmaxu4(m[q], e[q]);
        }
        *reinterpret_cast<uint4*>(y + (size_t)cell * c + g * 16) = make_uint4(m[0], m[1], m[2], m[3]);
    }
}

// MaxPool over channels-last data, V adjacent channels a thread: one, or 16 bytes of them (8
// f16, 16 i8) moved as one vector per window cell, which needs the channels times the element
// size to be a multiple of 16 (the planner checks).
template <typename T, int V>
__device__ __forceinline__ void maxpool_nhwc_impl(const T* __restrict__ x, T* __restrict__ y, const PoolArgs p,
                                                  i64 c) {
    static_assert(V == 1 || V * sizeof(T) == 16, "one channel or 16 bytes of them a thread");
    if constexpr (V == 16 && sizeof(T) == 1) {
        const i64 bytes = p.planes * (p.ih * p.iw > p.oh * p.ow ? p.ih * p.iw : p.oh * p.ow);
        if (p.kh == 3 && p.kw == 3 && p.dh == 1 && p.dw == 1 && bytes < (1ll << 31)) {
            constexpr bool is_signed = (T)-1 < (T)0;
            maxpool3x3_nhwc16_u8<is_signed>(reinterpret_cast<const unsigned char*>(x),
                                            reinterpret_cast<unsigned char*>(y), p, (int)c);
            return;
        }
    }
    const i64 cv = c / V, images = p.planes / c;
    KILN_GRID_STRIDE(i, images * p.oh * p.ow * cv) {
        const i64 g = i % cv, cell = i / cv, ox = cell % p.ow, oy = (cell / p.ow) % p.oh, n = cell / (p.ow * p.oh);
        const T* xp = x + n * p.ih * p.iw * c + g * V;
        if constexpr (V == 16 && sizeof(T) == 1) {
            // Bytes: four lanes a SIMD max, from the type's least value (a window always
            // holds at least one pixel).
            constexpr bool is_signed = (T)-1 < (T)0;
            unsigned m[4];
#pragma unroll
            for (int v = 0; v < 4; ++v) m[v] = is_signed ? 0x80808080u : 0u;
            pool_window(xp, p, c, oy, ox, [&](const T* q) {
                const uint4 raw = *reinterpret_cast<const uint4*>(q);
                const unsigned e[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
                for (int v = 0; v < 4; ++v) m[v] = is_signed ? __vmaxs4(m[v], e[v]) : __vmaxu4(m[v], e[v]);
            });
            *reinterpret_cast<uint4*>(y + cell * c + g * V) = make_uint4(m[0], m[1], m[2], m[3]);
            continue;
        }
        float m[V];
#pragma unroll
        for (int v = 0; v < V; ++v) m[v] = -__int_as_float(0x7f800000);
        pool_window(xp, p, c, oy, ox, [&](const T* q) {
            T e[V];
            if constexpr (V == 1) {
                e[0] = *q;
            } else {
                const uint4 raw = *reinterpret_cast<const uint4*>(q);
                memcpy(e, &raw, 16);
            }
#pragma unroll
            for (int v = 0; v < V; ++v) m[v] = nan_max(m[v], to_f32(e[v]));
        });
        T o[V];
#pragma unroll
        for (int v = 0; v < V; ++v) o[v] = from_f32<T>(m[v]);
        if constexpr (V == 1) {
            y[i] = o[0];
        } else {
            uint4 out;
            memcpy(&out, o, 16);
            *reinterpret_cast<uint4*>(y + cell * c + g * V) = out;
        }
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
        maxpool_nhwc_impl<T, 1>(x, y, p, c);                                                           \
    }                                                                                                  \
    extern "C" __global__ void maxpool2d_nhwc16_##sfx(const T* x, T* y, const PoolArgs p, i64 c) {     \
        maxpool_nhwc_impl<T, 16 / sizeof(T)>(x, y, p, c);                                              \
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

// Channels-last MaxPool over 8-bit integers, for INT8 networks whose quantized activations
// stay NHWC between convolutions.
#define MAXPOOL_NHWC_INT_KERNELS(T, sfx)                                                               \
    extern "C" __global__ void maxpool2d_nhwc_##sfx(const T* x, T* y, const PoolArgs p, i64 c) {       \
        maxpool_nhwc_impl<T, 1>(x, y, p, c);                                                           \
    }                                                                                                  \
    extern "C" __global__ void maxpool2d_nhwc16_##sfx(const T* x, T* y, const PoolArgs p, i64 c) {     \
        maxpool_nhwc_impl<T, 16 / sizeof(T)>(x, y, p, c);                                              \
    }
MAXPOOL_NHWC_INT_KERNELS(signed char, i8)
MAXPOOL_NHWC_INT_KERNELS(unsigned char, u8)
