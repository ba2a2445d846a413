// conv.cu: direct convolutions for the shapes cuDNN handles badly.
//
// dwconv2d_nhwc: a depthwise 2-D convolution (one 2-D filter per channel) of an NHWC input, the
// filter stored [kh, kw, c], with a per-channel bias (or none: a null pointer) and an activation
// fused. One output element per thread, channels fastest, so loads of x and w and stores of y
// are coalesced; padding may differ per side (cells outside the input are skipped). Math in f32.
//
// dwconv2d_nhwc_v8 (f16, bf16) and dwconv2d_nhwc_v4 (f32): the same convolution, the same
// arguments, for the common case (kernel at most DW_K x DW_K, strides 1 or 2, dilation 1, c a
// multiple of the vector width, every pointer 16-byte aligned, every element count below 2^31).
// A thread computes one 16-byte vector of channels (8 of f16/bf16, 4 of f32) for DW_OX
// consecutive output columns of one output row: it reads the input row segment those outputs
// share once per kernel row, as 16-byte vectors, and keeps weights and sums in f32 registers;
// index math is 32-bit. Threads run over (n, oy, ox group, channel vector), the channel vector
// fastest. Arguments outside the common case take dwconv2d_nhwc's loop in the same kernel (a
// uniform branch), so the result never depends on the host's choice. For a fixed output the
// taps are summed in dwconv2d_nhwc's order, so both give the same f32 sums.
#include "common.cuh"

struct DwArgs {
    i64 n, c, ih, iw, oh, ow, kh, kw, sh, sw, dh, dw;
    // Padding before each dim.
    i64 ph, pw;
    // 0: none, 1: ReLU, 2: clamp to [lo, hi]. NaN stays NaN, as in Relu and Clip.
    i64 act;
    double lo, hi;
};

template <typename T>
__device__ __forceinline__ void dwconv_nhwc_impl(const T* __restrict__ x, const T* __restrict__ w,
                                                 const T* __restrict__ bias, T* __restrict__ y, const DwArgs p) {
    KILN_GRID_STRIDE(i, p.n * p.oh * p.ow * p.c) {
        const i64 ch = i % p.c, pix = i / p.c;
        const i64 ox = pix % p.ow, oy = (pix / p.ow) % p.oh, n = pix / (p.ow * p.oh);
        const T* xp = x + n * p.ih * p.iw * p.c + ch;
        float acc = bias ? to_f32(bias[ch]) : 0.0f;
        for (i64 ky = 0; ky < p.kh; ++ky) {
            const i64 yy = oy * p.sh - p.ph + ky * p.dh;
            if (yy < 0 || yy >= p.ih) continue;
            for (i64 kx = 0; kx < p.kw; ++kx) {
                const i64 xx = ox * p.sw - p.pw + kx * p.dw;
                if (xx < 0 || xx >= p.iw) continue;
                acc += to_f32(xp[(yy * p.iw + xx) * p.c]) * to_f32(w[(ky * p.kw + kx) * p.c + ch]);
            }
        }
        if (p.act == 1) {
            acc = acc < 0.0f ? 0.0f : acc;
        } else if (p.act == 2) {
            const float lo = (float)p.lo, hi = (float)p.hi;
            acc = acc < lo ? lo : (acc > hi ? hi : acc);
        }
        y[i] = from_f32<T>(acc);
    }
}

// ---------------------------------------------------------------------------------------------
// The vector path. DW_OX is launch.rs's DW_OX (the host sizes the grid with it).

#define DW_OX 4
#define DW_K 3

// 16-bit patterns of the 2-byte float types.
__device__ __forceinline__ unsigned int dw_bits(__half h) { return __half_as_ushort(h); }
__device__ __forceinline__ unsigned int dw_bits(__nv_bfloat16 h) { return __bfloat16_as_ushort(h); }
template <typename T> __device__ __forceinline__ T dw_from_bits(unsigned int b);
template <> __device__ __forceinline__ __half dw_from_bits<__half>(unsigned int b) {
    return __ushort_as_half((unsigned short)b);
}
template <> __device__ __forceinline__ __nv_bfloat16 dw_from_bits<__nv_bfloat16>(unsigned int b) {
    return __ushort_as_bfloat16((unsigned short)b);
}

// The 16 bytes at `p` (16-byte aligned) as 16 / sizeof(T) f32 values, and back.
template <typename T> __device__ __forceinline__ void dw_load(const T* p, float* f) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const unsigned int u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        f[2 * k] = to_f32(dw_from_bits<T>(u[k] & 0xffffu));
        f[2 * k + 1] = to_f32(dw_from_bits<T>(u[k] >> 16));
    }
}
template <> __device__ __forceinline__ void dw_load<float>(const float* p, float* f) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    f[0] = v.x;
    f[1] = v.y;
    f[2] = v.z;
    f[3] = v.w;
}
template <typename T> __device__ __forceinline__ void dw_store(T* p, const float* f) {
    unsigned int u[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) u[k] = dw_bits(from_f32<T>(f[2 * k])) | (dw_bits(from_f32<T>(f[2 * k + 1])) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(u[0], u[1], u[2], u[3]);
}
template <> __device__ __forceinline__ void dw_store<float>(float* p, const float* f) {
    *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
}

// Whether a, b, c, d are each at least 1 and their product is below 2^31 - 64, checked so
// that no product overflows i64.
__device__ __forceinline__ bool dw_fits(i64 a, i64 b, i64 c, i64 d) {
    const i64 lim = 2147483647LL - 64;
    if (a < 1 || b < 1 || c < 1 || d < 1 || a > lim || b > lim || c > lim || d > lim) return false;
    if (a * b > lim) return false;
    if (a * b * c > lim) return false;
    return a * b * c * d <= lim;
}

// Whether the vector path takes these arguments (launch.rs's dw_vector_ok says the same on the
// host). Then every index it forms in int is below 2^31: the largest are offsets into x and y
// (below the element counts), ox0 * sw - pw + j lies in [-65536, 2 * ow + 8] and
// oy * sh - ph + ky in [-65536, 2 * oh + 2], and (ky * kw + kx) * c + ch is below kh * kw * c.
template <typename T>
__device__ __forceinline__ bool dw_vector_ok(const T* x, const T* w, const T* bias, T* y, const DwArgs& p) {
    const int V = 16 / sizeof(T);
    const bool aligned = (((u64)x | (u64)w | (u64)bias | (u64)y) & 15u) == 0;
    return aligned && p.c % V == 0 && dw_fits(p.n, p.ih, p.iw, p.c) && dw_fits(p.n, p.oh, p.ow, p.c) &&
           dw_fits(p.kh, p.kw, p.c, 1) && p.kh <= DW_K && p.kw <= DW_K && p.dh == 1 && p.dw == 1 &&
           (p.sh == 1 || p.sh == 2) && (p.sw == 1 || p.sw == 2) && p.ph >= 0 && p.pw >= 0 && p.ph <= 65536 &&
           p.pw <= 65536 && p.oh <= (1LL << 29) && p.ow <= (1LL << 29);
}

// One thread: channels [ch, ch + V) of outputs (n, oy, ox0 .. ox0 + DW_OX - 1). With stride SW
// along x those outputs read the input columns ox0 * SW - pw + j, j < (DW_OX - 1) * SW + kw;
// column j is tap kx = j - o * SW of output o.
template <typename T, int SW>
__device__ __forceinline__ void dwconv_nhwc_vec(const T* __restrict__ x, const T* __restrict__ w,
                                                const T* __restrict__ bias, T* __restrict__ y, const DwArgs& p) {
    constexpr int V = 16 / sizeof(T), OX = DW_OX, K = DW_K;
    constexpr int COLS = (OX - 1) * SW + K;
    const int c = (int)p.c, ih = (int)p.ih, iw = (int)p.iw, oh = (int)p.oh, ow = (int)p.ow;
    const int kh = (int)p.kh, kw = (int)p.kw, sh = (int)p.sh, ph = (int)p.ph, pw = (int)p.pw;
    const int cols = (OX - 1) * SW + kw;
    const int vecs = c / V, groups = (ow + OX - 1) / OX;
    const int act = (int)p.act;
    const float lo = (float)p.lo, hi = (float)p.hi;
    KILN_GRID_STRIDE(i, p.n * p.oh * groups * vecs) {
        int t = (int)i;
        const int ch = (t % vecs) * V;
        t /= vecs;
        const int ox0 = (t % groups) * OX;
        t /= groups;
        const int oy = t % oh, n = t / oh;

        float acc[OX][V];
        {
            float b[V];
            if (bias) {
                dw_load(bias + ch, b);
            } else {
#pragma unroll
                for (int v = 0; v < V; ++v) b[v] = 0.0f;
            }
#pragma unroll
            for (int o = 0; o < OX; ++o)
#pragma unroll
                for (int v = 0; v < V; ++v) acc[o][v] = b[v];
        }
        const int ix0 = ox0 * SW - pw;
#pragma unroll
        for (int ky = 0; ky < K; ++ky) {
            const int iy = oy * sh - ph + ky;
            if (ky >= kh || iy < 0 || iy >= ih) continue;
            float wk[K][V];
#pragma unroll
            for (int kx = 0; kx < K; ++kx) {
                if (kx < kw) dw_load(w + (ky * kw + kx) * c + ch, wk[kx]);
            }
            const T* xr = x + (n * ih + iy) * iw * c + ch;
#pragma unroll
            for (int j = 0; j < COLS; ++j) {
                const int ix = ix0 + j;
                if (j >= cols || ix < 0 || ix >= iw) continue;
                float xv[V];
                dw_load(xr + ix * c, xv);
#pragma unroll
                for (int o = 0; o < OX; ++o) {
                    const int kx = j - o * SW; // a constant once unrolled
                    if (kx < 0 || kx >= K || kx >= kw) continue;
#pragma unroll
                    for (int v = 0; v < V; ++v) acc[o][v] += xv[v] * wk[kx][v];
                }
            }
        }
        T* yp = y + ((n * oh + oy) * ow + ox0) * c + ch;
#pragma unroll
        for (int o = 0; o < OX; ++o) {
            if (ox0 + o >= ow) break;
#pragma unroll
            for (int v = 0; v < V; ++v) {
                float a = acc[o][v];
                if (act == 1) {
                    a = a < 0.0f ? 0.0f : a;
                } else if (act == 2) {
                    a = a < lo ? lo : (a > hi ? hi : a);
                }
                acc[o][v] = a;
            }
            dw_store(yp + o * c, acc[o]);
        }
    }
}

template <typename T>
__device__ __forceinline__ void dwconv_nhwc_vec_entry(const T* __restrict__ x, const T* __restrict__ w,
                                                      const T* __restrict__ bias, T* __restrict__ y, const DwArgs& p) {
    if (!dw_vector_ok<T>(x, w, bias, y, p)) {
        dwconv_nhwc_impl<T>(x, w, bias, y, p);
    } else if (p.sw == 1) {
        dwconv_nhwc_vec<T, 1>(x, w, bias, y, p);
    } else {
        dwconv_nhwc_vec<T, 2>(x, w, bias, y, p);
    }
}

#define CONV_KERNELS(T, sfx, vec)                                                                        \
    extern "C" __global__ void dwconv2d_nhwc_##sfx(const T* x, const T* w, const T* bias, T* y,          \
                                                   const DwArgs p) {                                     \
        dwconv_nhwc_impl<T>(x, w, bias, y, p);                                                           \
    }                                                                                                    \
    extern "C" __global__ void dwconv2d_nhwc_##vec##_##sfx(const T* x, const T* w, const T* bias, T* y,  \
                                                           const DwArgs p) {                             \
        dwconv_nhwc_vec_entry<T>(x, w, bias, y, p);                                                      \
    }

CONV_KERNELS(float, f32, v4)
CONV_KERNELS(__half, f16, v8)
CONV_KERNELS(__nv_bfloat16, bf16, v8)
