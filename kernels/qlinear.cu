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
// qlinear_conv_<x>_<w>_<y>, for u8 and i8; and the tensor-core convolutions
// conv_integer_tc_i8_i8 and qlinear_conv_tc_i8_i8_<y> (see the end of the file).
#include "common.cuh"
#include <mma.h>

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

// ---------------------------------------------------------------------------------------------
// The tensor-core convolutions: i8 x i8 into i32 as an implicit GEMM on the integer tensor
// cores (WMMA 16x16x16 over signed char, int accumulators: IMMA on sm_80 and sm_90), for
// group 1 and zero points absent or zero (the planner checks both; they are not passed).
//
// The GEMM: rows are the output positions (batch, oy, ox) of the NCHW output, columns the
// output channels, and the reduction k = (c, ky, kx) runs over the weight's row
// [M, C, kh, kw] as it is stored. A block computes QTC_BM rows x QTC_BN columns with 8 warps in
// a 4 x 2 grid of 32 x 32 warp tiles (2 x 2 fragments), QTC_BK of k per stage:
// - A (input, gathered): thread t owns row t % 128 and one 16-deep half of the stage, so a
//   warp reads 32 consecutive positions of one (c, ky, kx), which are consecutive bytes at
//   stride 1; padding, k past K and rows past the end read as zero. The 16 bytes go to shared
//   memory as one vector, in [half][row][16] order: each half is a row-major 128 x 16 matrix
//   (ldm 16), every fragment starts 256-byte aligned and a warp's stores are one 512-byte run.
// - B (weight): thread t owns 8 bytes of column t / 4, read as one 8-byte vector where K is a
//   multiple of 16 (else bytewise, zero past K), stored [half][column][16]: each half is the
//   column-major 16 x 64 matrix_b (ldm 16).
// - Two stages in shared memory with the next stage's global loads held in registers while
//   the tensor cores work on this one: one barrier per stage.
// - The epilogue stores the accumulators into shared memory column-major (one output channel's
//   128 positions in a row), then each thread writes its own row's positions, so a warp writes
//   32 consecutive outputs of one channel.
// The i32 sums wrap as the reference's do (mma without saturation); the sum of products is
// exact in any order, so results are bit-identical to the direct kernel. Offsets inside one
// image, one weight row and one output plane are int: the planner only picks these kernels
// where C*H*W, C*kh*kw, OH*OW and the padded input extents fit in an int.
#define QTC_BM 128
#define QTC_BN 64
#define QTC_BK 32
#define QTC_THREADS 256

// 16 bytes of A: row `ok` (else zeros) at reduction index k .. k + 15, from the image `xb`.
__device__ __forceinline__ uint4 qtc_load_a(const signed char* __restrict__ xb, bool ok, int k, const QlConvArgs& g,
                                            int iy0, int ix0) {
    unsigned int v[4] = {0u, 0u, 0u, 0u};
    if (ok) {
        const int C = (int)g.c, H = (int)g.h, W = (int)g.w, KH = (int)g.kh, KW = (int)g.kw;
        const int khw = KH * KW;
        int c = k / khw;
        const int r = k - c * khw;
        int ky = r / KW, kx = r - (r / KW) * KW;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const int iy = iy0 + ky * (int)g.dh, ix = ix0 + kx * (int)g.dw;
            if (c < C && (unsigned)iy < (unsigned)H && (unsigned)ix < (unsigned)W) {
                v[j / 4] |= (unsigned int)(unsigned char)xb[(c * H + iy) * W + ix] << (8 * (j % 4));
            }
            if (++kx == KW) {
                kx = 0;
                if (++ky == KH) {
                    ky = 0;
                    ++c;
                }
            }
        }
    }
    return make_uint4(v[0], v[1], v[2], v[3]);
}

// 8 bytes of B: the weight row `wrow` (of K values) at k .. k + 7, zeros past K or where the
// column is past M (`ok` false). `vec`: K is a multiple of 16 and the weight 16-byte aligned, so
// k (a multiple of 8) below K has all 8 bytes in the row, aligned.
__device__ __forceinline__ uint2 qtc_load_b(const signed char* __restrict__ wrow, bool ok, int k, int K, bool vec) {
    if (!ok || k >= K) return make_uint2(0u, 0u);
    if (vec) return *reinterpret_cast<const uint2*>(wrow + k);
    unsigned int v[2] = {0u, 0u};
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        if (k + j < K) v[j / 4] |= (unsigned int)(unsigned char)wrow[k + j] << (8 * (j % 4));
    }
    return make_uint2(v[0], v[1]);
}

// One block's tile of the convolution; `epi(offset, channel, acc)` writes output element
// `offset` (of channel `channel`) from its i32 sum.
template <typename Epi>
__device__ __forceinline__ void qtc_conv(const signed char* __restrict__ x, const signed char* __restrict__ w,
                                         const QlConvArgs& g, const Epi& epi) {
    using namespace nvcuda;
    // Two stages of A (2 x 2 x 128 x 16 bytes) and B (2 x 2 x 64 x 16), then the C tile
    // (64 x 128 ints) over the same bytes once the main loop is done.
    __align__(128) __shared__ unsigned char smem[QTC_BN * QTC_BM * 4];
    signed char* const As = reinterpret_cast<signed char*>(smem);
    signed char* const Bs = As + 2 * 2 * QTC_BM * 16;
    int* const Cs = reinterpret_cast<int*>(smem);

    const int tid = threadIdx.x, warp = tid / 32;
    const int M = (int)g.m, K = (int)(g.c * g.kh * g.kw), ohw = (int)(g.oh * g.ow);
    const i64 rows = g.total / g.m;
    const i64 row0 = (i64)blockIdx.x * QTC_BM;
    const int col0 = blockIdx.y * QTC_BN;

    // This thread's row of A (and of the output) and its half of each stage.
    const int ar = tid % QTC_BM, ah = tid / QTC_BM;
    const bool a_ok = row0 + ar < rows;
    const i64 img = a_ok ? (row0 + ar) / ohw : 0;
    const int sp = a_ok ? (int)((row0 + ar) - img * ohw) : 0;
    const int iy0 = (sp / (int)g.ow) * (int)g.sh - (int)g.ph, ix0 = (sp % (int)g.ow) * (int)g.sw - (int)g.pw;
    const signed char* const xb = x + img * g.c * g.h * g.w;

    // This thread's piece of B: column bc, half bh, 8-byte quarter bq.
    const int bc = tid / 4, bh = (tid / 2) % 2, bq = tid % 2;
    const bool b_ok = col0 + bc < M;
    const signed char* const wrow = w + (i64)(b_ok ? col0 + bc : 0) * K;
    const bool b_vec = K % 16 == 0 && (reinterpret_cast<unsigned long long>(w) & 15) == 0;

    signed char* const a_dst = As + (ah * QTC_BM + ar) * 16;
    signed char* const b_dst = Bs + (bh * QTC_BN + bc) * 16 + bq * 8;
    const int a_stage = 2 * QTC_BM * 16, b_stage = 2 * QTC_BN * 16;

    wmma::fragment<wmma::accumulator, 16, 16, 16, int> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0);
    // The warp's 32 x 32 tile: rows wr * 32, columns wc * 32 of the block's.
    const int wr = warp % 4, wc = warp / 4;

    const int stages = (K + QTC_BK - 1) / QTC_BK;
    uint4 ra = qtc_load_a(xb, a_ok, ah * 16, g, iy0, ix0);
    uint2 rb = qtc_load_b(wrow, b_ok, bh * 16 + bq * 8, K, b_vec);
    *reinterpret_cast<uint4*>(a_dst) = ra;
    *reinterpret_cast<uint2*>(b_dst) = rb;
    __syncthreads();
    for (int t = 0; t < stages; ++t) {
        const int s = t & 1;
        const bool more = t + 1 < stages;
        if (more) {
            const int k0 = (t + 1) * QTC_BK;
            ra = qtc_load_a(xb, a_ok, k0 + ah * 16, g, iy0, ix0);
            rb = qtc_load_b(wrow, b_ok, k0 + bh * 16 + bq * 8, K, b_vec);
        }
        const signed char* const as = As + s * a_stage;
        const signed char* const bs = Bs + s * b_stage;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, signed char, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, signed char, wmma::col_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], as + (h * QTC_BM + wr * 32 + i * 16) * 16, 16);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], bs + (h * QTC_BN + wc * 32 + j * 16) * 16, 16);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        // The other stage was last read before the previous barrier, so it can be refilled.
        if (more) {
            *reinterpret_cast<uint4*>(a_dst + (s ^ 1) * a_stage) = ra;
            *reinterpret_cast<uint2*>(b_dst + (s ^ 1) * b_stage) = rb;
        }
        __syncthreads();
    }

    // C column-major in shared memory: column (output channel) c at Cs + c * QTC_BM.
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(Cs + (wc * 32 + j * 16) * QTC_BM + wr * 32 + i * 16, acc[i][j], QTC_BM,
                                    wmma::mem_col_major);
    __syncthreads();
    if (!a_ok) return;
    const i64 y_row = img * g.m * ohw + sp;
    for (int cc = ah; cc < QTC_BN && col0 + cc < M; cc += QTC_THREADS / QTC_BM) {
        epi(y_row + (i64)(col0 + cc) * ohw, col0 + cc, Cs[cc * QTC_BM + ar]);
    }
}

struct QtcStore {
    int* y;
    __device__ __forceinline__ void operator()(i64 p, int, int acc) const { y[p] = acc; }
};

template <typename Y> struct QtcRequantize {
    Y* y;
    const int* bias;
    const float *x_scale, *w_scale, *y_scale;
    const Y* y_zp;
    i64 w_scale_n;
    int round_mode;
    __device__ __forceinline__ void operator()(i64 p, int oc, int acc) const {
        if (bias) acc = (int)((unsigned int)acc + (unsigned int)bias[oc]);
        y[p] = ql_requantize<Y>(acc, x_scale[0], w_scale[w_scale_n == 1 ? 0 : oc], y_scale[0], y_zp, round_mode);
    }
};

// Launch: QTC_THREADS threads, grid (ceil(rows / QTC_BM), ceil(M / QTC_BN)). Two blocks per SM
// give ptxas up to 128 registers a thread, which it needs to keep the prefetched stage and
// the accumulators without spilling (about 110 on sm_80 and sm_90).
extern "C" __global__ void __launch_bounds__(QTC_THREADS, 2)
    conv_integer_tc_i8_i8(const signed char* x, const signed char* w, int* y, const QlConvArgs g) {
    qtc_conv(x, w, g, QtcStore{y});
}

#define QL_QCONV_TC(ys, Y)                                                                              \
    extern "C" __global__ void __launch_bounds__(QTC_THREADS, 2) qlinear_conv_tc_i8_i8_##ys(            \
        const signed char* x, const signed char* w, Y* y, const QlConvArgs g, const int* bias,          \
        const float* x_scale, const float* w_scale, const float* y_scale, const Y* y_zp, i64 w_scale_n, \
        int round_mode) {                                                                               \
        const QtcRequantize<Y> epi{y, bias, x_scale, w_scale, y_scale, y_zp, w_scale_n, round_mode};    \
        qtc_conv(x, w, g, epi);                                                                         \
    }

QL_QCONV_TC(u8, unsigned char)
QL_QCONV_TC(i8, signed char)
