// qlinear.cu: the integer matrix products and convolutions (MatMulInteger, QLinearMatMul,
// ConvInteger, QLinearConv) as direct kernels, bit-exact with the CPU reference
// (crates/kiln-cpu/src/ops/linalg.rs, linalg/matmul.rs, linalg/conv.rs).
// One thread per output element in a grid-stride loop; the operands minus their zero points
// are multiplied and summed in i32 (wrapping), the quantized forms then requantize:
// y = saturate(round_half_even(acc * mult + y_zero_point)) with
// mult = round(round(s1 * s2) / y_scale), where round() rounds an f32 to the scales' own type
// (`round_mode` 1: f16, 2: bf16, 0: f32) as the reference computes in that type, and the last
// step is in f64 without contraction into an FMA. Scales arrive as f32 (the host converts).
// Kernels: matmul_integer_<a>_<b>, qlinear_matmul_<a>_<b>_<y>, conv_integer_<x>_<w>,
// qlinear_conv_<x>_<w>_<y>, for u8 and i8.
#include "common.cuh"

__device__ __forceinline__ float ql_round(float v, int mode) {
    if (mode == 1) return __half2float(__float2half_rn(v));
    if (mode == 2) return __bfloat162float(__float2bfloat16_rn(v));
    return v;
}

template <typename Y> struct ql_range;
template <> struct ql_range<unsigned char> { static constexpr double lo = 0.0, hi = 255.0; };
template <> struct ql_range<signed char> { static constexpr double lo = -128.0, hi = 127.0; };

template <typename Y>
__device__ __forceinline__ Y ql_requantize(int acc, float s1, float s2, float ys, const Y* y_zp, int mode) {
    const float mult = ql_round(ql_round(s1 * s2, mode) / ys, mode);
    const double zp = y_zp ? (double)y_zp[0] : 0.0;
    double v = rint(__dadd_rn(__dmul_rn((double)acc, (double)mult), zp));
    v = v < ql_range<Y>::lo ? ql_range<Y>::lo : (v > ql_range<Y>::hi ? ql_range<Y>::hi : v);
    return (Y)(int)v;
}

// Output element p = ((bi * m) + r) * n + c of a batched product: A is [batch, m, k] with
// batch stride sa (0: shared), B is [batch, k, n] with stride sb. A's zero point is per row
// (a_zp_n == m) or per tensor, B's per column (b_zp_n == n) or per tensor.
template <typename A, typename B>
__device__ __forceinline__ int ql_dot(const A* __restrict__ a, const B* __restrict__ b, const A* __restrict__ a_zp,
                                      const B* __restrict__ b_zp, i64 p, i64 m, i64 n, i64 k, i64 sa, i64 sb,
                                      i64 a_zp_n, i64 b_zp_n, i64* row, i64* col) {
    const i64 c = p % n, r = (p / n) % m, bi = p / (m * n);
    const int za = a_zp ? (int)a_zp[a_zp_n == 1 ? 0 : r] : 0;
    const int zb = b_zp ? (int)b_zp[b_zp_n == 1 ? 0 : c] : 0;
    const A* ap = a + bi * sa + r * k;
    const B* bp = b + bi * sb + c;
    unsigned int acc = 0;
    for (i64 t = 0; t < k; ++t) acc += (unsigned int)(((int)ap[t] - za) * ((int)bp[t * n] - zb));
    *row = r;
    *col = c;
    return (int)acc;
}

#define QL_MATMUL_PARAMS(A, B)                                                                         \
    const A *a, const B *b, const A *a_zp, const B *b_zp, i64 total, i64 m, i64 n, i64 k, i64 sa, i64 sb, \
        i64 a_zp_n, i64 b_zp_n

#define QL_MATMUL(as, A, bs, B)                                                                        \
    extern "C" __global__ void matmul_integer_##as##_##bs(QL_MATMUL_PARAMS(A, B), int* y) {           \
        KILN_GRID_STRIDE(p, total) {                                                                   \
            i64 r, c;                                                                                  \
            y[p] = ql_dot<A, B>(a, b, a_zp, b_zp, p, m, n, k, sa, sb, a_zp_n, b_zp_n, &r, &c);          \
        }                                                                                              \
    }                                                                                                  \
    QL_QMATMUL(as, A, bs, B, u8, unsigned char)                                                        \
    QL_QMATMUL(as, A, bs, B, i8, signed char)

#define QL_QMATMUL(as, A, bs, B, ys, Y)                                                                \
    extern "C" __global__ void qlinear_matmul_##as##_##bs##_##ys(                                      \
        QL_MATMUL_PARAMS(A, B), Y* y, const float* a_scale, const float* b_scale, const float* y_scale,  \
        const Y* y_zp, i64 a_scale_n, i64 b_scale_n, int round_mode) {                                 \
        KILN_GRID_STRIDE(p, total) {                                                                   \
            i64 r, c;                                                                                  \
            const int acc = ql_dot<A, B>(a, b, a_zp, b_zp, p, m, n, k, sa, sb, a_zp_n, b_zp_n, &r, &c); \
            y[p] = ql_requantize<Y>(acc, a_scale[a_scale_n == 1 ? 0 : r], b_scale[b_scale_n == 1 ? 0 : c], \
                                    y_scale[0], y_zp, round_mode);                                     \
        }                                                                                              \
    }

QL_MATMUL(u8, unsigned char, u8, unsigned char)
QL_MATMUL(u8, unsigned char, i8, signed char)
QL_MATMUL(i8, signed char, u8, unsigned char)
QL_MATMUL(i8, signed char, i8, signed char)

// A 2-D convolution (1-D as height 1) with groups, zero padding of the centred input:
// x [batch, c, h, w], weight [m, c / group, kh, kw], output [batch, m, oh, ow]. The input's
// zero point is one value, the weight's one value or one per output channel.
struct QlConvArgs {
    i64 total, c, h, w, m, kh, kw, oh, ow, sh, sw, dh, dw, ph, pw, group, w_zp_n;
};

template <typename X, typename W>
__device__ __forceinline__ int ql_conv(const X* __restrict__ x, const W* __restrict__ wt, const X* __restrict__ x_zp,
                                       const W* __restrict__ w_zp, const QlConvArgs& g, i64 p, i64* channel) {
    const i64 ox = p % g.ow, oy = (p / g.ow) % g.oh, oc = (p / (g.ow * g.oh)) % g.m, b = p / (g.ow * g.oh * g.m);
    const i64 cg = g.c / g.group, mg = g.m / g.group, grp = oc / mg;
    const int zx = x_zp ? (int)x_zp[0] : 0;
    const int zw = w_zp ? (int)w_zp[g.w_zp_n == 1 ? 0 : oc] : 0;
    unsigned int acc = 0;
    for (i64 ci = 0; ci < cg; ++ci) {
        const i64 ic = grp * cg + ci;
        for (i64 ky = 0; ky < g.kh; ++ky) {
            const i64 iy = oy * g.sh - g.ph + ky * g.dh;
            if (iy < 0 || iy >= g.h) continue;
            for (i64 kx = 0; kx < g.kw; ++kx) {
                const i64 ix = ox * g.sw - g.pw + kx * g.dw;
                if (ix < 0 || ix >= g.w) continue;
                const int xv = (int)x[((b * g.c + ic) * g.h + iy) * g.w + ix] - zx;
                const int wv = (int)wt[((oc * cg + ci) * g.kh + ky) * g.kw + kx] - zw;
                acc += (unsigned int)(xv * wv);
            }
        }
    }
    *channel = oc;
    return (int)acc;
}

#define QL_CONV(xs, X, ws, W)                                                                          \
    extern "C" __global__ void conv_integer_##xs##_##ws(const X* x, const W* w, const X* x_zp, const W* w_zp, \
                                                         int* y, const QlConvArgs g) {                 \
        KILN_GRID_STRIDE(p, g.total) {                                                                 \
            i64 oc;                                                                                    \
            y[p] = ql_conv<X, W>(x, w, x_zp, w_zp, g, p, &oc);                                         \
        }                                                                                              \
    }                                                                                                  \
    QL_QCONV(xs, X, ws, W, u8, unsigned char)                                                          \
    QL_QCONV(xs, X, ws, W, i8, signed char)

#define QL_QCONV(xs, X, ws, W, ys, Y)                                                                  \
    extern "C" __global__ void qlinear_conv_##xs##_##ws##_##ys(                                        \
        const X* x, const W* w, const X* x_zp, const W* w_zp, Y* y, const QlConvArgs g, const int* bias, \
        const float* x_scale, const float* w_scale, const float* y_scale, const Y* y_zp, i64 w_scale_n, \
        int round_mode) {                                                                              \
        KILN_GRID_STRIDE(p, g.total) {                                                                 \
            i64 oc;                                                                                    \
            int acc = ql_conv<X, W>(x, w, x_zp, w_zp, g, p, &oc);                                      \
            if (bias) acc = (int)((unsigned int)acc + (unsigned int)bias[oc]);                         \
            y[p] = ql_requantize<Y>(acc, x_scale[0], w_scale[w_scale_n == 1 ? 0 : oc], y_scale[0], y_zp,  \
                                    round_mode);                                                       \
        }                                                                                              \
    }

QL_CONV(u8, unsigned char, u8, unsigned char)
QL_CONV(u8, unsigned char, i8, signed char)
QL_CONV(i8, signed char, u8, unsigned char)
QL_CONV(i8, signed char, i8, signed char)
