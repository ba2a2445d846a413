// conv.cu: direct convolutions for the shapes cuDNN handles badly.
//
// dwconv2d_nhwc: a depthwise 2-D convolution (one 2-D filter per channel) of an NHWC input, the
// filter stored [kh, kw, c], with a per-channel bias (or none: a null pointer) and an activation
// fused. One output element per thread, channels fastest, so loads of x and w and stores of y
// are coalesced; padding may differ per side (cells outside the input are skipped). Math in f32.
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

#define CONV_KERNELS(T, sfx)                                                                             \
    extern "C" __global__ void dwconv2d_nhwc_##sfx(const T* x, const T* w, const T* bias, T* y,          \
                                                   const DwArgs p) {                                     \
        dwconv_nhwc_impl<T>(x, w, bias, y, p);                                                           \
    }

CONV_KERNELS(float, f32)
CONV_KERNELS(__half, f16)
CONV_KERNELS(__nv_bfloat16, bf16)
