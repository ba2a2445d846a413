// spatial.cu: direct kernels for the image-space ops cuDNN and the other families do not cover:
//   conv_transpose  ConvTranspose in gather form: each output element sums over the input cells
//                   and kernel taps that land on it (any groups, strides, dilations, padding);
//   grid_sample     GridSample, nearest, linear and cubic, with zeros, border and reflection
//                   padding;
//   roi_align       RoiAlign, average or max of bilinear samples per bin;
//   col2im          Col2Im in gather form, each image cell summing the block cells that land on it;
//   affine_grid     AffineGrid, the sampling grid of an affine transform;
//   window          HannWindow, HammingWindow and BlackmanWindow (in f64).
// ConvTranspose and GridSample take up to three spatial dims, fewer given as leading dims of
// size one. Every kernel computes one output element per thread (grid-stride). ConvTranspose
// accumulates in f32; GridSample and RoiAlign work in f64 (GridSample's coordinates in f32), as
// the CPU reference does.
#include "common.cuh"

__device__ __forceinline__ double to_f64(float x) { return (double)x; }
__device__ __forceinline__ double to_f64(double x) { return x; }
__device__ __forceinline__ double to_f64(__half x) { return (double)__half2float(x); }
__device__ __forceinline__ double to_f64(__nv_bfloat16 x) { return (double)__bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f64(double x) { return from_f32<T>((float)x); }
template <> __device__ __forceinline__ double from_f64<double>(double x) { return x; }

// ---------------------------------------------------------------------------------------------
// ConvTranspose. X [n, c, in...], W [c, m / group, k...], optional bias [m], Y [n, m, out...].
// Input cell i and tap k of a dim land on output cell i * s + k * d - pb.

struct ConvTArgs {
    i64 n, c, m, group;
    i64 in[3], out[3], k[3], s[3], d[3];
    // Cells cut from the beginning of the full output (negative: cells added there).
    i64 pb[3];
};

template <typename T>
__device__ __forceinline__ void conv_transpose_impl(const T* __restrict__ x, const T* __restrict__ w,
                                                    const T* __restrict__ bias, T* __restrict__ y,
                                                    const ConvTArgs a) {
    const i64 osz = a.out[0] * a.out[1] * a.out[2], isz = a.in[0] * a.in[1] * a.in[2];
    const i64 ksz = a.k[0] * a.k[1] * a.k[2];
    const i64 cg = a.c / a.group, mg = a.m / a.group;
    KILN_GRID_STRIDE(i, a.n * a.m * osz) {
        const i64 o2 = i % a.out[2], o1 = (i / a.out[2]) % a.out[1], o0 = (i / (a.out[2] * a.out[1])) % a.out[0];
        const i64 oc = (i / osz) % a.m, b = i / (osz * a.m);
        const i64 g = oc / mg, ocl = oc % mg;
        const T* xb = x + (b * a.c + g * cg) * isz;
        const T* wg = w + (g * cg * mg + ocl) * ksz;
        float acc = 0.0f;
        for (i64 k0 = 0; k0 < a.k[0]; ++k0) {
            const i64 t0 = o0 + a.pb[0] - k0 * a.d[0];
            if (t0 < 0 || t0 % a.s[0] != 0 || t0 / a.s[0] >= a.in[0]) continue;
            for (i64 k1 = 0; k1 < a.k[1]; ++k1) {
                const i64 t1 = o1 + a.pb[1] - k1 * a.d[1];
                if (t1 < 0 || t1 % a.s[1] != 0 || t1 / a.s[1] >= a.in[1]) continue;
                for (i64 k2 = 0; k2 < a.k[2]; ++k2) {
                    const i64 t2 = o2 + a.pb[2] - k2 * a.d[2];
                    if (t2 < 0 || t2 % a.s[2] != 0 || t2 / a.s[2] >= a.in[2]) continue;
                    const i64 xoff = ((t0 / a.s[0]) * a.in[1] + t1 / a.s[1]) * a.in[2] + t2 / a.s[2];
                    const i64 koff = (k0 * a.k[1] + k1) * a.k[2] + k2;
                    // Input channel cl of the group meets filter [g * cg + cl][ocl].
                    for (i64 cl = 0; cl < cg; ++cl) {
                        acc += to_f32(xb[cl * isz + xoff]) * to_f32(wg[cl * mg * ksz + koff]);
                    }
                }
            }
        }
        if (bias) acc += to_f32(bias[oc]);
        y[i] = from_f32<T>(acc);
    }
}

// ---------------------------------------------------------------------------------------------
// GridSample. X [n, c, D0, D1, D2], grid [n, O0, O1, O2, rank] with the coordinates innermost
// axis first, Y [n, c, O0, O1, O2]; `rank` of the three dims are real, the leading others have
// size one and take no coordinate.

#define GS_LINEAR 0
#define GS_NEAREST 1
#define GS_CUBIC 2
#define GS_ZEROS 0
#define GS_BORDER 1
#define GS_REFLECTION 2

struct GridSampleArgs {
    i64 n, c;
    i64 in[3], out[3];
    i64 rank, mode, padding, align_corners;
};

// Mirrors x into [lo, hi].
__device__ __forceinline__ double gs_reflect(double x, double lo, double hi) {
    const double rng = hi - lo;
    if (x < lo) {
        const double dx = lo - x;
        const i64 n = (i64)(dx / rng);
        const double r = dx - (double)n * rng;
        return n % 2 == 0 ? lo + r : hi - r;
    }
    if (x > hi) {
        const double dx = x - hi;
        const i64 n = (i64)(dx / rng);
        const double r = dx - (double)n * rng;
        return n % 2 == 0 ? hi - r : lo + r;
    }
    return x;
}

__device__ __forceinline__ double gs_cubic(double x) {
    const double a = -0.75;
    x = fabs(x);
    if (x <= 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    return 0.0;
}

template <typename T>
__device__ __forceinline__ void grid_sample_impl(const T* __restrict__ x, const T* __restrict__ grid,
                                                 T* __restrict__ y, const GridSampleArgs a) {
    const i64 osz = a.out[0] * a.out[1] * a.out[2], isz = a.in[0] * a.in[1] * a.in[2];
    KILN_GRID_STRIDE(i, a.n * a.c * osz) {
        const i64 p = i % osz, ch = (i / osz) % a.c, b = i / (osz * a.c);
        const T* g = grid + (b * osz + p) * a.rank;
        // Per dim: up to four taps (index, weight); index -1 reads zero.
        i64 idx[3][4];
        double wt[3][4];
        int cnt[3];
        for (int dd = 0; dd < 3; ++dd) {
            const int r = dd - (3 - (int)a.rank);
            const i64 len = a.in[dd];
            if (r < 0) {
                idx[dd][0] = 0;
                wt[dd][0] = 1.0;
                cnt[dd] = 1;
                continue;
            }
            // The grid lists coordinates innermost dim first. Coordinates are f32 (the
            // reference's arithmetic), without fused multiply-adds.
            const float v = (float)to_f64(g[a.rank - 1 - r]);
            const float lenf = (float)len;
            float cf = a.align_corners ? __fmul_rn(__fdiv_rn(__fadd_rn(v, 1.0f), 2.0f), __fsub_rn(lenf, 1.0f))
                                       : __fdiv_rn(__fsub_rn(__fmul_rn(__fadd_rn(v, 1.0f), lenf), 1.0f), 2.0f);
            if (a.mode == GS_NEAREST) cf = rintf(cf);
            const double lo = a.align_corners ? 0.0 : -0.5;
            const double hi = a.align_corners ? (double)len - 1.0 : (double)len - 0.5;
            const double cv = (double)cf;
            if (cv < lo || cv > hi) {
                if (a.padding == GS_BORDER) cf = (float)fmin(fmax(cv, 0.0), (double)len - 1.0);
                else if (a.padding == GS_REFLECTION) cf = (float)gs_reflect(cv, lo, hi);
            }
            const double c = (double)cf;
            i64 base;
            if (a.mode == GS_NEAREST) {
                base = (i64)c;
                cnt[dd] = 1;
                wt[dd][0] = 1.0;
            } else if (a.mode == GS_LINEAR) {
                const double x0 = floor(c), f = c - x0;
                base = (i64)x0;
                cnt[dd] = 2;
                wt[dd][0] = 1.0 - f;
                wt[dd][1] = f;
            } else {
                const double x0 = floor(c), f = c - x0;
                base = (i64)x0 - 1;
                cnt[dd] = 4;
                wt[dd][0] = gs_cubic(f + 1.0);
                wt[dd][1] = gs_cubic(f);
                wt[dd][2] = gs_cubic(1.0 - f);
                wt[dd][3] = gs_cubic(2.0 - f);
            }
            for (int t = 0; t < cnt[dd]; ++t) {
                i64 q = base + t;
                if (a.padding == GS_ZEROS) {
                    if (q < 0 || q >= len) q = -1;
                } else {
                    if (a.padding == GS_REFLECTION) q = (i64)gs_reflect((double)q, lo, hi);
                    q = q < 0 ? 0 : (q > len - 1 ? len - 1 : q);
                }
                idx[dd][t] = q;
            }
        }
        const T* xp = x + (b * a.c + ch) * isz;
        double acc = 0.0;
        for (int t0 = 0; t0 < cnt[0]; ++t0) {
            if (idx[0][t0] < 0) continue;
            for (int t1 = 0; t1 < cnt[1]; ++t1) {
                if (idx[1][t1] < 0) continue;
                for (int t2 = 0; t2 < cnt[2]; ++t2) {
                    if (idx[2][t2] < 0) continue;
                    const i64 off = (idx[0][t0] * a.in[1] + idx[1][t1]) * a.in[2] + idx[2][t2];
                    acc += wt[0][t0] * wt[1][t1] * wt[2][t2] * to_f64(xp[off]);
                }
            }
        }
        y[i] = from_f64<T>(acc);
    }
}

// ---------------------------------------------------------------------------------------------
// RoiAlign. X [n, c, h, w], rois [r, 4] (x1, y1, x2, y2), batch_indices [r] (i64), Y [r, c, oh, ow].
// A batch index outside [0, n) sets *err and gives 0.

struct RoiArgs {
    i64 n, c, h, w, rois, oh, ow, sampling_ratio, max, half_pixel;
    double spatial_scale;
};

// The value of the bilinear sample at (y, x) under `mode` (sum of the four weighted taps, or
// their maximum); every weight is 0 outside [-1, h] x [-1, w].
template <typename T>
__device__ __forceinline__ double roi_sample(const T* img, i64 h, i64 w, double y, double x, bool max) {
    i64 i[4] = {0, 0, 0, 0};
    double wt[4] = {0.0, 0.0, 0.0, 0.0};
    if (!(y < -1.0 || y > (double)h || x < -1.0 || x > (double)w || h == 0 || w == 0)) {
        y = fmax(y, 0.0);
        x = fmax(x, 0.0);
        i64 yl = (i64)y, xl = (i64)x, yh, xh;
        if (yl >= h - 1) {
            yl = yh = h - 1;
            y = (double)yl;
        } else {
            yh = yl + 1;
        }
        if (xl >= w - 1) {
            xl = xh = w - 1;
            x = (double)xl;
        } else {
            xh = xl + 1;
        }
        const double ly = y - (double)yl, lx = x - (double)xl, hy = 1.0 - ly, hx = 1.0 - lx;
        i[0] = yl * w + xl; wt[0] = hy * hx;
        i[1] = yl * w + xh; wt[1] = hy * lx;
        i[2] = yh * w + xl; wt[2] = ly * hx;
        i[3] = yh * w + xh; wt[3] = ly * lx;
    }
    double r = max ? -__longlong_as_double(0x7ff0000000000000ll) : 0.0;
    for (int t = 0; t < 4; ++t) {
        const double v = wt[t] * to_f64(img[i[t]]);
        r = max ? fmax(r, v) : r + v;
    }
    return r;
}

template <typename T>
__device__ __forceinline__ void roi_align_impl(const T* __restrict__ x, const T* __restrict__ rois,
                                               const i64* __restrict__ bidx, T* __restrict__ y, int* err,
                                               const RoiArgs a) {
    KILN_GRID_STRIDE(i, a.rois * a.c * a.oh * a.ow) {
        const i64 pw = i % a.ow, ph = (i / a.ow) % a.oh, ch = (i / (a.ow * a.oh)) % a.c, r = i / (a.ow * a.oh * a.c);
        const i64 b = bidx[r];
        if (b < 0 || b >= a.n) {
            *err = 1;
            y[i] = from_f64<T>(0.0);
            continue;
        }
        const double off = a.half_pixel ? 0.5 : 0.0;
        const double sw = to_f64(rois[r * 4]) * a.spatial_scale - off;
        const double sh = to_f64(rois[r * 4 + 1]) * a.spatial_scale - off;
        double rw = to_f64(rois[r * 4 + 2]) * a.spatial_scale - off - sw;
        double rh = to_f64(rois[r * 4 + 3]) * a.spatial_scale - off - sh;
        if (!a.half_pixel) {
            rw = fmax(rw, 1.0);
            rh = fmax(rh, 1.0);
        }
        const double bh = rh / (double)a.oh, bw = rw / (double)a.ow;
        const i64 gh = a.sampling_ratio > 0 ? a.sampling_ratio : (i64)fmax(ceil(rh / (double)a.oh), 0.0);
        const i64 gw = a.sampling_ratio > 0 ? a.sampling_ratio : (i64)fmax(ceil(rw / (double)a.ow), 0.0);
        const double count = (double)(gh * gw > 1 ? gh * gw : 1);
        const T* img = x + (b * a.c + ch) * a.h * a.w;
        double acc = 0.0, best = 0.0;
        bool any = false;
        for (i64 iy = 0; iy < gh; ++iy) {
            const double yy = sh + (double)ph * bh + ((double)iy + 0.5) * bh / (double)gh;
            for (i64 ix = 0; ix < gw; ++ix) {
                const double xx = sw + (double)pw * bw + ((double)ix + 0.5) * bw / (double)gw;
                const double v = roi_sample(img, a.h, a.w, yy, xx, a.max != 0);
                if (a.max) {
                    best = any ? fmax(best, v) : v;
                    any = true;
                } else {
                    acc += v;
                }
            }
        }
        y[i] = from_f64<T>(a.max ? (any ? best : 0.0) : acc / count);
    }
}

// ---------------------------------------------------------------------------------------------
// Col2Im. X [n, c * prod(block), L] with L = prod(counts), Y [n, c, image...]; block cell b and
// block position q of a dim land on image cell q * s + b * d - p0.

struct Col2ImArgs {
    i64 n, c, l;
    i64 image[3], block[3], counts[3], s[3], d[3], p0[3];
};

template <typename T>
__device__ __forceinline__ void col2im_impl(const T* __restrict__ x, T* __restrict__ y, const Col2ImArgs a) {
    const i64 ipix = a.image[0] * a.image[1] * a.image[2], bprod = a.block[0] * a.block[1] * a.block[2];
    KILN_GRID_STRIDE(i, a.n * a.c * ipix) {
        const i64 q2 = i % a.image[2], q1 = (i / a.image[2]) % a.image[1];
        const i64 q0 = (i / (a.image[2] * a.image[1])) % a.image[0], nc = i / ipix;
        const T* xr = x + nc * bprod * a.l;
        double acc = 0.0;
        for (i64 b0 = 0; b0 < a.block[0]; ++b0) {
            const i64 t0 = q0 + a.p0[0] - b0 * a.d[0];
            if (t0 < 0 || t0 % a.s[0] != 0 || t0 / a.s[0] >= a.counts[0]) continue;
            for (i64 b1 = 0; b1 < a.block[1]; ++b1) {
                const i64 t1 = q1 + a.p0[1] - b1 * a.d[1];
                if (t1 < 0 || t1 % a.s[1] != 0 || t1 / a.s[1] >= a.counts[1]) continue;
                for (i64 b2 = 0; b2 < a.block[2]; ++b2) {
                    const i64 t2 = q2 + a.p0[2] - b2 * a.d[2];
                    if (t2 < 0 || t2 % a.s[2] != 0 || t2 / a.s[2] >= a.counts[2]) continue;
                    const i64 kb = (b0 * a.block[1] + b1) * a.block[2] + b2;
                    const i64 li = ((t0 / a.s[0]) * a.counts[1] + t1 / a.s[1]) * a.counts[2] + t2 / a.s[2];
                    acc += to_f64(xr[kb * a.l + li]);
                }
            }
        }
        y[i] = from_f64<T>(acc);
    }
}

// ---------------------------------------------------------------------------------------------
// AffineGrid. theta [n, r, r + 1], Y [n, D0, .., D(r-1), r]: each point's normalized
// coordinates, innermost axis first, times theta.

struct AffineGridArgs {
    i64 n, rank;
    i64 dims[3];
    i64 align_corners;
};

__device__ __forceinline__ double affine_base(i64 len, i64 i, bool align) {
    if (align) return len == 1 ? -1.0 : -1.0 + (double)i * 2.0 / ((double)len - 1.0);
    const double step = 2.0 / (double)len;
    return -1.0 + step / 2.0 + (double)i * step;
}

template <typename T>
__device__ __forceinline__ void affine_grid_impl(const T* __restrict__ theta, T* __restrict__ y, const AffineGridArgs a) {
    const int r = (int)a.rank;
    i64 npix = 1;
    for (int d = 0; d < r; ++d) npix *= a.dims[d];
    KILN_GRID_STRIDE(i, a.n * npix * r) {
        const int row = (int)(i % r);
        const i64 p = (i / r) % npix, b = i / (r * npix);
        const T* t = theta + (b * r + row) * (r + 1);
        // h[j] is the coordinate of dim r - 1 - j; h[r] = 1.
        double acc = 0.0;
        i64 rest = p;
        double h[3];
        for (int d = r - 1; d >= 0; --d) {
            h[r - 1 - d] = affine_base(a.dims[d], rest % a.dims[d], a.align_corners != 0);
            rest /= a.dims[d];
        }
        for (int j = 0; j < r; ++j) acc += to_f64(t[j]) * h[j];
        acc += to_f64(t[r]);
        y[i] = from_f64<T>(acc);
    }
}

// ---------------------------------------------------------------------------------------------
// Windows: y[i] = f(2 pi i / n) for i < size, n the size (periodic) or the size minus one
// (symmetric); n = 0 gives ones.

#define WINDOW_HANN 0
#define WINDOW_HAMMING 1
#define WINDOW_BLACKMAN 2

template <typename T>
__device__ __forceinline__ void window_impl(T* __restrict__ y, i64 size, i64 n, int function) {
    KILN_GRID_STRIDE(i, size) {
        double v = 1.0;
        if (n > 0) {
            const double x = 2.0 * 3.141592653589793 * (double)i / (double)n;
            if (function == WINDOW_HANN) v = 0.5 - 0.5 * cos(x);
            else if (function == WINDOW_HAMMING) v = 25.0 / 46.0 - 21.0 / 46.0 * cos(x);
            else v = 0.42 - 0.5 * cos(x) + 0.08 * cos(2.0 * x);
        }
        y[i] = from_f64<T>(v);
    }
}

#define SPATIAL_KERNELS(T, sfx)                                                                          \
    extern "C" __global__ void grid_sample_##sfx(const T* x, const T* grid, T* y, const GridSampleArgs a) { \
        grid_sample_impl<T>(x, grid, y, a);                                                              \
    }                                                                                                    \
    extern "C" __global__ void roi_align_##sfx(const T* x, const T* rois, const i64* batch_indices, T* y, \
                                               int* err, const RoiArgs a) {                              \
        roi_align_impl<T>(x, rois, batch_indices, y, err, a);                                            \
    }                                                                                                    \
    extern "C" __global__ void col2im_##sfx(const T* x, T* y, const Col2ImArgs a) { col2im_impl<T>(x, y, a); } \
    extern "C" __global__ void affine_grid_##sfx(const T* theta, T* y, const AffineGridArgs a) {         \
        affine_grid_impl<T>(theta, y, a);                                                                \
    }                                                                                                    \
    extern "C" __global__ void window_##sfx(T* y, i64 size, i64 n, int function) {                       \
        window_impl<T>(y, size, n, function);                                                            \
    }
#define CONV_KERNELS(T, sfx)                                                                             \
    extern "C" __global__ void conv_transpose_##sfx(const T* x, const T* w, const T* bias, T* y,         \
                                                    const ConvTArgs a) {                                 \
        conv_transpose_impl<T>(x, w, bias, y, a);                                                        \
    }

SPATIAL_KERNELS(float, f32)
SPATIAL_KERNELS(__half, f16)
SPATIAL_KERNELS(__nv_bfloat16, bf16)
SPATIAL_KERNELS(double, f64)
CONV_KERNELS(float, f32)
CONV_KERNELS(__half, f16)
CONV_KERNELS(__nv_bfloat16, bf16)
