// igemm.cu: the template of the generated INT8 implicit-GEMM kernels, a convolution over a
// channels-last (NHWC) i8 input or a matrix product, on the integer tensor cores, with the
// epilogue (dequantization, bias, residual, activation, requantization) applied to the i32
// accumulators in registers and the result stored in the output's type. Code generation
// (`crates/kiln-cuda/src/codegen.rs`, `igemm_kernel`) replaces the two marked lines: DEFS
// defines KILN_KERNEL_NAME, KILN_BN (output channels per block: 64 or 128), KILN_NUM_EXTRA
// (the epilogue's inputs besides the accumulator) and the expression; BODY defines
// `kiln_epilogue`, which loads those inputs for one output element, computes and stores it.
//
// The GEMM: row r is an output position (n, oy, ox), column c an output channel, and the
// reduction runs over k = (ky, kx, ci), in the order both operands are stored: the input NHWC,
// the filter OHWI as [m][k]. A matrix product [rows, k] x [k, m] is the 1x1 case (h = w = 1),
// its B stored [m][k]. The channels are a multiple of 16, so every 16-byte piece of a row
// of the reduction is one contiguous load from one input pixel, or zeros (padding, the tail).
//
// A block computes 128 rows by KILN_BN channels with 2 x KILN_BN/32 warps of 64 x 32 each,
// over k in steps of 64 bytes: `cp.async` fills a STAGES-deep ring of shared tiles ([row][64]
// bytes, no padding: 16-byte reads of 8 lanes cover two whole rows, so no bank conflicts)
// while the warps run `mma.sync.m16n8k32` on the tile before. The reduction need not follow
// k's order: a lane's four A registers of one mma are bytes 16t..16t+7 (first step) or
// 16t+8..16t+15 (second) of its two rows, and its two B registers the same bytes of its
// column, so one 16-byte shared load feeds two steps and the products still pair up.
#include "common.cuh"

/*{{DEFS}}*/

#define IG_BM 128
#define IG_BK 64
#define IG_WARPS_N (KILN_BN / 32)
#define IG_THREADS (64 * IG_WARPS_N)
#define IG_STAGES (KILN_BN == 128 ? 3 : 4)
// 16-byte pieces of A and of B each thread copies per stage.
#define IG_A_PIECES (IG_BM * 4 / IG_THREADS)
#define IG_B_PIECES (KILN_BN * 4 / IG_THREADS)
#define IG_MAX_EXTRA 8

struct IgemmArgs {
    // Rows of the GEMM (n * oh * ow) and the input's n, h, w, c (NHWC).
    i64 rows, n, h, w, c;
    // Output channels, filter size, output size, strides, dilations, padding.
    i64 m, kh, kw, oh, ow, sh, sw, dh, dw, ph, pw;
    // The reduction's length: kh * kw * c.
    i64 k;
};

// The epilogue's inputs, each with its strides over (image, output row, output column,
// channel): 0 where broadcast.
struct EpiArgs {
    const void* in[IG_MAX_EXTRA];
    i64 st[IG_MAX_EXTRA][4];
};

/*{{BODY}}*/

#ifndef KILN_HOST_EMU
__device__ __forceinline__ void ig_cp_async16(void* smem, const void* gmem, int bytes) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void ig_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void ig_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
__device__ __forceinline__ void ig_mma(int (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                       unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
#endif

extern "C" __global__ void __launch_bounds__(IG_THREADS, 2)
    KILN_KERNEL_NAME(const signed char* __restrict__ x, const signed char* __restrict__ wt, void* __restrict__ out,
                     const IgemmArgs g, const EpiArgs e) {
    __align__(16) __shared__ signed char sa[IG_STAGES][IG_BM * IG_BK];
    __align__(16) __shared__ signed char sb[IG_STAGES][KILN_BN * IG_BK];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / IG_WARPS_N, wn = warp % IG_WARPS_N;
    const i64 row0 = (i64)blockIdx.x * IG_BM;
    const i64 col0 = (i64)blockIdx.y * KILN_BN;
    // Each thread copies the same 16-byte column `piece` of its rows of A and B at every stage.
    const int piece = tid & 3;
    const i64 hw_out = g.oh * g.ow;
    const signed char* a_base[IG_A_PIECES];
    int a_iy[IG_A_PIECES], a_ix[IG_A_PIECES];
#pragma unroll
    for (int i = 0; i < IG_A_PIECES; ++i) {
        const i64 r = row0 + (tid >> 2) + i * (IG_THREADS / 4);
        if (r < g.rows) {
            const i64 img = r / hw_out, p = r - img * hw_out, oy = p / g.ow, ox = p - oy * g.ow;
            a_base[i] = x + img * g.h * g.w * g.c;
            a_iy[i] = (int)(oy * g.sh - g.ph);
            a_ix[i] = (int)(ox * g.sw - g.pw);
        } else {
            a_base[i] = x;
            a_iy[i] = -(1 << 30);  // never inside the image
            a_ix[i] = 0;
        }
    }
    const int iw = (int)g.w, ih = (int)g.h, ic = (int)g.c;
    auto load = [&](int stage, i64 kt) {
        const i64 k = kt * IG_BK + piece * 16;
        const bool kin = k < g.k;
        const int kpos = kin ? (int)(k / g.c) : 0;
        const int c0 = kin ? (int)(k - (i64)kpos * g.c) : 0;
        const int ky = kpos / (int)g.kw, kx = kpos - ky * (int)g.kw;
#pragma unroll
        for (int i = 0; i < IG_A_PIECES; ++i) {
            const int yy = a_iy[i] + ky * (int)g.dh, xx = a_ix[i] + kx * (int)g.dw;
            const bool ok = kin && yy >= 0 && yy < ih && xx >= 0 && xx < iw;
            const signed char* src = ok ? a_base[i] + ((i64)yy * iw + xx) * ic + c0 : x;
            const int rr = (tid >> 2) + i * (IG_THREADS / 4);
            ig_cp_async16(&sa[stage][rr * IG_BK + piece * 16], src, ok ? 16 : 0);
        }
#pragma unroll
        for (int i = 0; i < IG_B_PIECES; ++i) {
            const int cc = (tid >> 2) + i * (IG_THREADS / 4);
            const bool ok = kin && col0 + cc < g.m;
            const signed char* src = ok ? wt + (col0 + cc) * g.k + k : wt;
            ig_cp_async16(&sb[stage][cc * IG_BK + piece * 16], src, ok ? 16 : 0);
        }
    };

    int acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0;

    const i64 tiles = (g.k + IG_BK - 1) / IG_BK;
#pragma unroll
    for (int s = 0; s < IG_STAGES - 1; ++s) {
        if (s < tiles) load(s, s);
        ig_cp_commit();
    }
    const int gq = lane >> 2, t = lane & 3;
    for (i64 kt = 0; kt < tiles; ++kt) {
        ig_cp_wait<IG_STAGES - 2>();
        __syncthreads();
        // The stage read in the step before is free now that every warp has passed the barrier.
        const i64 next = kt + IG_STAGES - 1;
        if (next < tiles) load((int)(next % IG_STAGES), next);
        ig_cp_commit();
        const signed char* as = sa[kt % IG_STAGES];
        const signed char* bs = sb[kt % IG_STAGES];
        int4 bf[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) bf[j] = *(const int4*)&bs[(wn * 32 + j * 8 + gq) * IG_BK + t * 16];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = wm * 64 + i * 16 + gq;
            const int4 a0 = *(const int4*)&as[r * IG_BK + t * 16];
            const int4 a1 = *(const int4*)&as[(r + 8) * IG_BK + t * 16];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                ig_mma(acc[i][j], a0.x, a1.x, a0.y, a1.y, bf[j].x, bf[j].y);
                ig_mma(acc[i][j], a0.z, a1.z, a0.w, a1.w, bf[j].z, bf[j].w);
            }
        }
    }
    ig_cp_wait<0>();

    // The epilogue: lane (gq, t) holds rows gq and gq + 8 of each 16-row tile, columns 2t and
    // 2t + 1 of each 8-column tile.
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const i64 r = row0 + wm * 64 + i * 16 + gq + half * 8;
            if (r >= g.rows) continue;
            const i64 img = r / hw_out, p = r - img * hw_out, oy = p / g.ow, ox = p - oy * g.ow;
            i64 ro[KILN_NUM_EXTRA > 0 ? KILN_NUM_EXTRA : 1];
#pragma unroll
            for (int q = 0; q < KILN_NUM_EXTRA; ++q) ro[q] = img * e.st[q][0] + oy * e.st[q][1] + ox * e.st[q][2];
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int q = 0; q < 2; ++q) {
                    const i64 c = col0 + wn * 32 + j * 8 + t * 2 + q;
                    if (c < g.m) kiln_epilogue(e, out, r * g.m + c, ro, c, acc[i][j][half * 2 + q]);
                }
        }
}
