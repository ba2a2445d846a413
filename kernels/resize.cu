// resize.cu: nearest and linear Resize over the last two dims of [planes, H, W]; and
// resize_taps_<in>_<out>, one separable pass of any Resize along one axis from tap tables the
// host builds (cubic, antialiased, tf_crop_and_resize, more than two axes).
// Coordinates are computed in f64 as the reference does, so that ties of nearest rounding fall
// the same way. Per axis, the two taps are ceil(x) - 1 and ceil(x), clamped to the input, with
// an integral x counted as the right end of its interval (the reference's rule).
#include "common.cuh"

#define COORD_HALF_PIXEL 0
#define COORD_ASYMMETRIC 1
#define COORD_ALIGN_CORNERS 2
#define COORD_PYTORCH_HALF_PIXEL 3
#define COORD_HALF_PIXEL_SYMMETRIC 4

#define NEAREST_ROUND_PREFER_FLOOR 0
#define NEAREST_ROUND_PREFER_CEIL 1
#define NEAREST_FLOOR 2
#define NEAREST_CEIL 3

struct ResizeArgs {
    i64 planes, ih, iw, oh, ow;
    double scale_h, scale_w;
    i64 coord_mode, nearest_mode;
};

// The input coordinate of output index `o` along an axis.
__device__ __forceinline__ double resize_coord(i64 o, i64 in_len, i64 out_len, double scale, i64 mode) {
    const double xo = (double)o, inw = (double)in_len, outw = scale * inw;
    switch (mode) {
        case COORD_ALIGN_CORNERS: return outw == 1.0 ? 0.0 : xo * (inw - 1.0) / (outw - 1.0);
        case COORD_ASYMMETRIC: return xo / scale;
        case COORD_PYTORCH_HALF_PIXEL: return outw == 1.0 ? -0.5 : (xo + 0.5) / scale - 0.5;
        case COORD_HALF_PIXEL_SYMMETRIC: {
            const double adjustment = (double)out_len / outw;
            return inw / 2.0 * (1.0 - adjustment) + (xo + 0.5) / scale - 0.5;
        }
        default: return (xo + 0.5) / scale - 0.5;
    }
}

// The two taps and the weight of the right one.
__device__ __forceinline__ void resize_taps(double x, i64 len, i64* left, i64* right, double* ratio) {
    const double f = floor(x);
    *ratio = x == f ? 1.0 : x - f;
    i64 start = (i64)ceil(x) - 1;
    if (start < -1) start = -1;
    if (start > len - 1) start = len - 1;
    i64 l = start, r = start + 1;
    *left = l < 0 ? 0 : (l > len - 1 ? len - 1 : l);
    *right = r < 0 ? 0 : (r > len - 1 ? len - 1 : r);
}

__device__ __forceinline__ bool nearest_right(double ratio, i64 mode) {
    if (ratio == 1.0) return true;
    switch (mode) {
        case NEAREST_ROUND_PREFER_CEIL: return ratio >= 0.5;
        case NEAREST_FLOOR: return false;
        case NEAREST_CEIL: return true;
        default: return ratio > 0.5;
    }
}

template <typename T, bool LINEAR>
__device__ __forceinline__ void resize_impl(const T* __restrict__ x, T* __restrict__ y, const ResizeArgs a) {
    KILN_GRID_STRIDE(i, a.planes * a.oh * a.ow) {
        const i64 ox = i % a.ow, oy = (i / a.ow) % a.oh, pl = i / (a.ow * a.oh);
        const T* xp = x + pl * a.ih * a.iw;
        i64 y0, y1, x0, x1;
        double ry, rx;
        resize_taps(resize_coord(oy, a.ih, a.oh, a.scale_h, a.coord_mode), a.ih, &y0, &y1, &ry);
        resize_taps(resize_coord(ox, a.iw, a.ow, a.scale_w, a.coord_mode), a.iw, &x0, &x1, &rx);
        if (LINEAR) {
            const double v00 = to_f32(xp[y0 * a.iw + x0]), v01 = to_f32(xp[y0 * a.iw + x1]);
            const double v10 = to_f32(xp[y1 * a.iw + x0]), v11 = to_f32(xp[y1 * a.iw + x1]);
            const double top = v00 * (1.0 - rx) + v01 * rx, bot = v10 * (1.0 - rx) + v11 * rx;
            y[i] = from_f32<T>((float)(top * (1.0 - ry) + bot * ry));
        } else {
            const i64 yy = nearest_right(ry, a.nearest_mode) ? y1 : y0;
            const i64 xx = nearest_right(rx, a.nearest_mode) ? x1 : x0;
            y[i] = xp[yy * a.iw + xx];
        }
    }
}

#define RESIZE_KERNELS(T, sfx)                                                                    \
    extern "C" __global__ void resize_nearest_##sfx(const T* x, T* y, const ResizeArgs a) {       \
        resize_impl<T, false>(x, y, a);                                                           \
    }                                                                                             \
    extern "C" __global__ void resize_linear_##sfx(const T* x, T* y, const ResizeArgs a) {        \
        resize_impl<T, true>(x, y, a);                                                            \
    }

RESIZE_KERNELS(float, f32)
RESIZE_KERNELS(__half, f16)
RESIZE_KERNELS(__nv_bfloat16, bf16)

// One pass along one axis: x [outer, n_in, inner] -> y [outer, n_out, inner]. Output index j
// sums w[j][t] * x[idx[j][t]] over its ntaps taps in f64 (a zero weight is skipped, as the
// reference skips it); idx[j][0] < 0 marks an index outside the region, which takes `fill`.
struct TapArgs {
    i64 outer, n_in, n_out, inner, ntaps;
    double fill;
};

__device__ __forceinline__ double tap_load(float x) { return (double)x; }
__device__ __forceinline__ double tap_load(double x) { return x; }
__device__ __forceinline__ double tap_load(__half x) { return (double)__half2float(x); }
__device__ __forceinline__ double tap_load(__nv_bfloat16 x) { return (double)__bfloat162float(x); }
template <typename T> __device__ __forceinline__ T tap_store(double x) { return from_f32<T>((float)x); }
template <> __device__ __forceinline__ double tap_store<double>(double x) { return x; }

template <typename TI, typename TO>
__device__ __forceinline__ void resize_taps_impl(const TI* __restrict__ x, TO* __restrict__ y, const i64* __restrict__ idx,
                                                 const double* __restrict__ w, const TapArgs a) {
    KILN_GRID_STRIDE(i, a.outer * a.n_out * a.inner) {
        const i64 in = i % a.inner, j = (i / a.inner) % a.n_out, o = i / (a.inner * a.n_out);
        const i64* ij = idx + j * a.ntaps;
        const double* wj = w + j * a.ntaps;
        if (ij[0] < 0) {
            y[i] = tap_store<TO>(a.fill);
            continue;
        }
        const TI* xr = x + o * a.n_in * a.inner + in;
        double acc = 0.0;
        for (i64 t = 0; t < a.ntaps; ++t) {
            if (wj[t] == 0.0) continue;
            acc += wj[t] * tap_load(xr[ij[t] * a.inner]);
        }
        y[i] = tap_store<TO>(acc);
    }
}

#define RESIZE_TAPS(TI, si, TO, so)                                                                          \
    extern "C" __global__ void resize_taps_##si##_##so(const TI* x, TO* y, const i64* idx, const double* w, \
                                                        const TapArgs a) {                                   \
        resize_taps_impl<TI, TO>(x, y, idx, w, a);                                                           \
    }
#define RESIZE_TAPS_FROM(TI, si)                                                                             \
    RESIZE_TAPS(TI, si, float, f32)                                                                          \
    RESIZE_TAPS(TI, si, __half, f16)                                                                         \
    RESIZE_TAPS(TI, si, __nv_bfloat16, bf16)                                                                 \
    RESIZE_TAPS(TI, si, double, f64)

RESIZE_TAPS_FROM(float, f32)
RESIZE_TAPS_FROM(__half, f16)
RESIZE_TAPS_FROM(__nv_bfloat16, bf16)
RESIZE_TAPS_FROM(double, f64)
