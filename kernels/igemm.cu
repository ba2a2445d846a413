// igemm.cu: the template of the generated INT8 implicit-GEMM kernels, a convolution over a
// channels-last (NHWC) i8 input or a matrix product, on the integer tensor cores, with the
// epilogue (dequantization, bias, residual, activation, requantization) applied to the i32
// accumulators on chip and the result stored in the output's type. Code generation
// (`crates/kiln-cuda/src/codegen.rs`, `igemm_kernel`) replaces the two marked lines: DEFS
// defines KILN_KERNEL_NAME, KILN_BN (output channels per block: 64 or 128), KILN_WN (a warp's
// channels: 32 or 64), KILN_NUM_EXTRA (the epilogue's inputs besides the accumulator),
// KILN_IG_DENSE for a plain product (see below), the output's storage type `kiln_out_t` and
// the expression; BODY defines what a thread does for
// four adjacent channels: `kiln_epi_pre` reads the inputs constant along the rows once,
// `kiln_epi_load` a row's other inputs, and `kiln_epi_row` computes and stores the row's four
// outputs (see the epilogue at the end).
//
// The GEMM: row r is an output position (n, oy, ox), column c an output channel, and the
// reduction runs over k = (ky, kx, ci), in the order both operands are stored: the input NHWC,
// the filter OHWI as [m][k]. A matrix product [rows, k] x [k, m] is the 1x1 case (h = w = 1),
// its B stored [m][k]. The channels are a multiple of 16, so every 16-byte piece of a row
// of the reduction is one contiguous load from one input pixel, or zeros (padding, the tail).
//
// A block computes 128 rows by KILN_BN channels with 2 x KILN_BN/KILN_WN warps of 64 x KILN_WN
// each (KILN_WN 32 or 64),
// over k in steps of 64 bytes: `cp.async` fills a STAGES-deep ring of shared tiles while the
// warps run `mma.sync.m16n8k32` on the tile before, their fragments read with `ldmatrix` (one
// x4 load gives an A fragment, or the B fragments of two 8-channel tiles, in the registers the
// mma takes). A tile row is 64 bytes, four 16-byte pieces; piece c of row r is stored at
// position c ^ ((r / 2) % 4), so the eight rows an `ldmatrix` phase reads fall in distinct
// banks. Each thread copies one piece column of its rows and keeps where the next tile starts
// (input pixel offset and channel) incrementally, so the copy loop divides nothing. With
// KILN_IG_DENSE (a matrix product, or a 1x1 convolution of stride 1 without padding) row r of
// the reduction is simply the k bytes at r * k, and the copies skip the pixel arithmetic.
//
// On sm_90a (NVRTC compiles Hopper's sm_90 so) the same tiles feed `wgmma` instead: the
// block's warpgroups each take all 128 rows (two m64 products) by KILN_BN / warpgroups
// channels, reading both operands from shared memory through descriptors. The tile layout
// above is exactly wgmma's 64-byte swizzle, so the copies are unchanged; a proxy fence makes
// the copies visible to the products, and the products of a stage complete before the next
// barrier, after which the stage is refilled. The accumulators come out in mma.sync's
// fragment layout, so the epilogue is shared.
#include "common.cuh"

/*{{DEFS}}*/

#define IG_BM 128
#define IG_BK 64
// On sm_90a the products are `wgmma` (warpgroup) instructions reading both operands from the
// shared tiles; elsewhere, and in the host emulation, `mma.sync` on fragments from `ldmatrix`.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) && !defined(KILN_HOST_EMU)
#define IG_WGMMA 1
#else
#define IG_WGMMA 0
#endif
// Warps: 2 along the rows (64 each) by KILN_BN / KILN_WN along the channels (KILN_WN each).
#define IG_WARPS_N (KILN_BN / KILN_WN)
#define IG_THREADS (64 * IG_WARPS_N)
// 8-channel mma tiles per warp.
#define IG_NT (KILN_WN / 8)
// With wgmma: warpgroups (of 128 threads), each computing all 128 rows (two m64 halves) by
// IG_WG_N channels (64, or 128 for the block of four 64 x 64 warps).
#define IG_WGS (IG_THREADS / 128)
#define IG_WG_N (KILN_BN / IG_WGS)
#define IG_STAGES (KILN_BN == 128 ? 3 : 4)
// 16-byte pieces of A and of B each thread copies per stage.
#define IG_A_PIECES (IG_BM * 4 / IG_THREADS)
#define IG_B_PIECES (KILN_BN * 4 / IG_THREADS)
#define IG_MAX_EXTRA 8
// Blocks an SM holds at once: four 64-channel blocks (125 registers a thread, no spills, 48
// KiB of shared memory each) or two 128-channel ones, 16 warps either way.
#define IG_MIN_BLOCKS (KILN_BN == 64 ? 4 : 2)
// The epilogue's staging tile: rows per pass, and the row stride in ints (padded by 8 so that
// the warps' 8-byte writes and the 16-byte reads fall in distinct banks).
#define IG_EPI_ROWS (KILN_BN == 128 ? 64 : 128)
#define IG_EPI_LD (KILN_BN + 8)
// A thread's rows in a pass: IG_EPI_ITERS of them, IG_EPI_STEP apart, loaded IG_EPI_CHUNK at
// a time.
#define IG_EPI_STEP (IG_THREADS / (KILN_BN / 4))
#define IG_EPI_ITERS (IG_EPI_ROWS / IG_EPI_STEP)
#define IG_EPI_CHUNK 8
#define IG_SMEM_TILES (IG_STAGES * (IG_BM + KILN_BN) * IG_BK)
#define IG_SMEM_EPI (IG_EPI_ROWS * IG_EPI_LD * 4)
#define IG_SMEM (IG_SMEM_TILES > IG_SMEM_EPI ? IG_SMEM_TILES : IG_SMEM_EPI)

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

// Four adjacent elements of type T, moved as one vector (T of 1, 2, 4 or 8 bytes; the address
// aligned to four elements).
template <typename T> __device__ __forceinline__ void ig_ld4(T (&d)[4], const T* p) {
    if constexpr (sizeof(T) == 1) {
        const unsigned v = *reinterpret_cast<const unsigned*>(p);
        memcpy(d, &v, 4);
    } else if constexpr (sizeof(T) == 2) {
        const uint2 v = *reinterpret_cast<const uint2*>(p);
        memcpy(d, &v, 8);
    } else if constexpr (sizeof(T) == 4) {
        const uint4 v = *reinterpret_cast<const uint4*>(p);
        memcpy(d, &v, 16);
    } else {
        const uint4 v0 = reinterpret_cast<const uint4*>(p)[0], v1 = reinterpret_cast<const uint4*>(p)[1];
        memcpy(d, &v0, 16);
        memcpy(reinterpret_cast<char*>(d) + 16, &v1, 16);
    }
}
template <typename T> __device__ __forceinline__ void ig_st4(T* p, const T (&d)[4]) {
    if constexpr (sizeof(T) == 1) {
        unsigned v;
        memcpy(&v, d, 4);
        *reinterpret_cast<unsigned*>(p) = v;
    } else if constexpr (sizeof(T) == 2) {
        uint2 v;
        memcpy(&v, d, 8);
        *reinterpret_cast<uint2*>(p) = v;
    } else if constexpr (sizeof(T) == 4) {
        uint4 v;
        memcpy(&v, d, 16);
        *reinterpret_cast<uint4*>(p) = v;
    } else {
        uint4 v0, v1;
        memcpy(&v0, d, 16);
        memcpy(&v1, reinterpret_cast<const char*>(d) + 16, 16);
        reinterpret_cast<uint4*>(p)[0] = v0;
        reinterpret_cast<uint4*>(p)[1] = v1;
    }
}

/*{{BODY}}*/

#ifndef KILN_HOST_EMU
__device__ __forceinline__ void ig_cp_async16(void* smem, const void* gmem, int bytes) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void ig_ldsm4(unsigned (&r)[4], const void* smem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
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

#if IG_WGMMA
// sm_90a: the warpgroup's asynchronous product. A shared-memory operand is described by its
// start address, the distance between 8-row groups (512 bytes) and the swizzle (64-byte: the
// tile layout above, piece c of row r at c ^ ((r / 2) % 4), which the hardware undoes).
__device__ __forceinline__ unsigned long long ig_desc(unsigned addr) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | (1ull << 16) | ((unsigned long long)(512 >> 4) << 32) |
           (2ull << 62);
}
__device__ __forceinline__ void ig_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void ig_wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void ig_wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// The copies' writes (generic proxy) made visible to the products' reads (async proxy).
__device__ __forceinline__ void ig_fence_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void ig_wgmma_n64(int (&d)[32], unsigned long long da, unsigned long long db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p;\n}\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
        : "l"(da), "l"(db), "n"(1));
}
__device__ __forceinline__ void ig_wgmma_n128(int (&d)[64], unsigned long long da, unsigned long long db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p;\n}\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
        : "l"(da), "l"(db), "n"(1));
}
#endif

// Shared-memory byte offset of piece `c` (0..3) of tile row `r`.
__device__ __forceinline__ int ig_swz(int r, int c) { return r * IG_BK + ((c ^ ((r >> 1) & 3)) << 4); }

extern "C" __global__ void __launch_bounds__(IG_THREADS, IG_MIN_BLOCKS)
    KILN_KERNEL_NAME(const signed char* __restrict__ x, const signed char* __restrict__ wt, void* __restrict__ out,
                     const IgemmArgs g, const EpiArgs e) {
    // The stages of A, then those of B; the epilogue reuses it all as its staging tile.
    // Aligned to the swizzle's 512-byte period, which wgmma takes from the address bits.
    __align__(1024) __shared__ signed char smem[IG_SMEM];
    signed char(*sa)[IG_BM * IG_BK] = reinterpret_cast<signed char(*)[IG_BM * IG_BK]>(smem);
    signed char(*sb)[KILN_BN * IG_BK] = reinterpret_cast<signed char(*)[KILN_BN * IG_BK]>(smem + IG_STAGES * IG_BM * IG_BK);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
#if !IG_WGMMA
    const int wm = warp / IG_WARPS_N, wn = warp % IG_WARPS_N;
#endif
    const i64 row0 = (i64)blockIdx.x * IG_BM;
    const int col0 = blockIdx.y * KILN_BN;
    // The host guarantees that the input and the filter have fewer than 2^31 bytes and the
    // GEMM fewer than 2^31 rows, so every offset and row here is 32-bit (the output's are not).
    const int K = (int)g.k;
    const int piece = tid & 3;
#ifdef KILN_IG_DENSE
    // A plain product (a matrix product, or a 1x1 convolution of stride 1 without padding):
    // row r of the reduction is the K bytes at x + r * K.
    const signed char* a_src[IG_A_PIECES];
    bool a_in[IG_A_PIECES];
#pragma unroll
    for (int i = 0; i < IG_A_PIECES; ++i) {
        const i64 r = row0 + (tid >> 2) + i * (IG_THREADS / 4);
        a_in[i] = r < g.rows;
        a_src[i] = x + (a_in[i] ? (int)r * K + piece * 16 : 0);
    }
#else
    const int C = (int)g.c, H = (int)g.h, W = (int)g.w, KW = (int)g.kw;
    const int ow = (int)g.ow, hw_out = (int)(g.oh * g.ow);
    // Per row this thread copies: the offset of its top-left input pixel, and that pixel.
    const signed char* a_src[IG_A_PIECES];
    int a_iy[IG_A_PIECES], a_ix[IG_A_PIECES];
#pragma unroll
    for (int i = 0; i < IG_A_PIECES; ++i) {
        const i64 r = row0 + (tid >> 2) + i * (IG_THREADS / 4);
        if (r < g.rows) {
            const int rr = (int)r, img = rr / hw_out, p = rr - img * hw_out, oy = p / ow, ox = p - oy * ow;
            a_iy[i] = oy * (int)g.sh - (int)g.ph;
            a_ix[i] = ox * (int)g.sw - (int)g.pw;
            a_src[i] = x + ((img * H + a_iy[i]) * W + a_ix[i]) * C;
        } else {
            a_iy[i] = -(1 << 30);  // never inside the image
            a_ix[i] = 0;
            a_src[i] = x;
        }
    }
    // Where this thread's piece of the next tile lies in the reduction: filter row and column,
    // channel, and the byte offset within a filter row.
    int ky, kx, c0;
    {
        const int k = piece * 16, kpos = k / C;
        c0 = k - kpos * C;
        ky = kpos / KW;
        kx = kpos - ky * KW;
    }
#endif
    // Shared offsets of this thread's pieces (the same at every stage), and its filter rows.
    int a_soff[IG_A_PIECES], b_soff[IG_B_PIECES];
    const signed char* b_src[IG_B_PIECES];
    bool b_in[IG_B_PIECES];
#pragma unroll
    for (int i = 0; i < IG_A_PIECES; ++i) a_soff[i] = ig_swz((tid >> 2) + i * (IG_THREADS / 4), piece);
#pragma unroll
    for (int i = 0; i < IG_B_PIECES; ++i) {
        const int cc = (tid >> 2) + i * (IG_THREADS / 4);
        b_soff[i] = ig_swz(cc, piece);
        b_in[i] = col0 + cc < (int)g.m;
        b_src[i] = wt + (b_in[i] ? (col0 + cc) * K + piece * 16 : 0);
    }
    int kb = piece * 16;  // the piece's byte in the reduction
    auto load = [&](int stage) {
        const bool kin = kb < K;
        signed char* sa_s = sa[stage];
        signed char* sb_s = sb[stage];
        // A copy of 0 bytes reads nothing (it zero-fills): its address need not be valid.
#ifdef KILN_IG_DENSE
#pragma unroll
        for (int i = 0; i < IG_A_PIECES; ++i) {
            ig_cp_async16(sa_s + a_soff[i], a_src[i], kin && a_in[i] ? 16 : 0);
            a_src[i] += IG_BK;
        }
#else
        const int dy = ky * (int)g.dh, dx = kx * (int)g.dw, dk = (dy * W + dx) * C + c0;
#pragma unroll
        for (int i = 0; i < IG_A_PIECES; ++i) {
            const int yy = a_iy[i] + dy, xx = a_ix[i] + dx;
            const bool ok = kin && (unsigned)yy < (unsigned)H && (unsigned)xx < (unsigned)W;
            ig_cp_async16(sa_s + a_soff[i], a_src[i] + dk, ok ? 16 : 0);
        }
#endif
#pragma unroll
        for (int i = 0; i < IG_B_PIECES; ++i) {
            const bool ok = kin && b_in[i];
            ig_cp_async16(sb_s + b_soff[i], b_src[i], ok ? 16 : 0);
            b_src[i] += IG_BK;
        }
        // On to the next tile: 64 bytes further along (channel, filter column, filter row).
        kb += IG_BK;
#ifndef KILN_IG_DENSE
        c0 += IG_BK;
        while (c0 >= C) {
            c0 -= C;
            if (++kx == KW) {
                kx = 0;
                ++ky;
            }
        }
#endif
    };

#if IG_WGMMA
    int acc[2][IG_WG_N / 2];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int q = 0; q < IG_WG_N / 2; ++q) acc[h][q] = 0;
#else
    int acc[4][IG_NT][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < IG_NT; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0;
#endif

    const int tiles = (K + IG_BK - 1) / IG_BK;
#pragma unroll
    for (int s = 0; s < IG_STAGES - 1; ++s) {
        if (s < tiles) load(s);
        ig_cp_commit();
    }
#if IG_WGMMA
    // Each warpgroup: per 32-byte step of the tile, one product per 64-row half over its
    // channels, all issued before waiting for them. The stage is rewritten only after the next
    // barrier, when every warpgroup's products on it are complete.
    const int wg = warp >> 2;
    const int wg_col0 = wg * IG_WG_N;
    const unsigned sa0 = (unsigned)__cvta_generic_to_shared(sa[0]);
    const unsigned sb0 = (unsigned)__cvta_generic_to_shared(sb[0]) + wg_col0 * IG_BK;
    for (int kt = 0; kt < tiles; ++kt) {
        ig_cp_wait<IG_STAGES - 2>();
        ig_fence_async();
        __syncthreads();
        if (kt + IG_STAGES - 1 < tiles) load((kt + IG_STAGES - 1) % IG_STAGES);
        ig_cp_commit();
        const unsigned as = sa0 + (kt % IG_STAGES) * (IG_BM * IG_BK), bs = sb0 + (kt % IG_STAGES) * (KILN_BN * IG_BK);
        ig_wgmma_fence();
#pragma unroll
        for (int s = 0; s < 2; ++s) {
            const unsigned long long db = ig_desc(bs + s * 32);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
#if IG_WG_N == 64
                ig_wgmma_n64(acc[h], ig_desc(as + h * 64 * IG_BK + s * 32), db);
#else
                ig_wgmma_n128(acc[h], ig_desc(as + h * 64 * IG_BK + s * 32), db);
#endif
            }
        }
        ig_wgmma_commit();
        ig_wgmma_wait0();
    }
#else
    // ldmatrix: lane L gives row L % 8 of matrix L / 8. A's matrices are (rows 0-7, 8-15) x
    // (k bytes 0-15, 16-31) of a 16-row tile: a0..a3 of the mma. B's are (k 0-15, 16-31) x
    // (channels 0-7, 8-15): b0, b1 of two 8-channel tiles.
    // The swizzle of rows r and r + 8k is the same, so each k-step's addresses are one base
    // per operand plus constants: 16 rows (1024 bytes) per A tile, 8 (512) per B tile.
    const int lq = lane >> 3, lr = lane & 7;
    const int a_row = wm * 64 + (lq & 1) * 8 + lr, a_piece = lq >> 1;
    const int b_row = wn * KILN_WN + (lq >> 1) * 8 + lr, b_piece = lq & 1;
    const int a_ld[2] = {ig_swz(a_row, a_piece), ig_swz(a_row, 2 + a_piece)};
    const int b_ld[2] = {ig_swz(b_row, b_piece), ig_swz(b_row, 2 + b_piece)};
    for (int kt = 0; kt < tiles; ++kt) {
        ig_cp_wait<IG_STAGES - 2>();
        __syncthreads();
        // The stage read in the step before is free now that every warp has passed the barrier.
        if (kt + IG_STAGES - 1 < tiles) load((kt + IG_STAGES - 1) % IG_STAGES);
        ig_cp_commit();
        const signed char* as = sa[kt % IG_STAGES];
        const signed char* bs = sb[kt % IG_STAGES];
#pragma unroll
        for (int s = 0; s < 2; ++s) {
            unsigned b[IG_NT][2];
#pragma unroll
            for (int j = 0; j < IG_NT; j += 2) {
                unsigned r[4];
                ig_ldsm4(r, &bs[b_ld[s] + j * 8 * IG_BK]);
                b[j][0] = r[0];
                b[j][1] = r[1];
                b[j + 1][0] = r[2];
                b[j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                unsigned a[4];
                ig_ldsm4(a, &as[a_ld[s] + i * 16 * IG_BK]);
#pragma unroll
                for (int j = 0; j < IG_NT; ++j) ig_mma(acc[i][j], a[0], a[1], a[2], a[3], b[j][0], b[j][1]);
            }
        }
    }
#endif
    ig_cp_wait<0>();
    __syncthreads();

    // The epilogue, through shared memory: the warps write their accumulators into a staging
    // tile of IG_EPI_ROWS rows (all the block's rows for 64-channel blocks, half of them for
    // 128), then every thread takes four adjacent channels of a row at a time, so the
    // epilogue's inputs are read and its result stored in whole vectors, coalesced along the
    // row. Inputs constant along the rows (per-channel scales, biases) are read once.
    int* stg = reinterpret_cast<int*>(smem);
    const int gq = lane >> 2, t = lane & 3;
    const int cg = tid % (KILN_BN / 4), c = col0 + cg * 4, lr0 = tid / (KILN_BN / 4);
    EpiPre pre;
    kiln_epi_pre(e, g, c, pre);
    // The passes and chunks stay loops: unrolled, a long epilogue (GELU's erf) would be
    // copied for every row and overflow the instruction cache.
#pragma unroll 1
    for (int pass = 0; pass < IG_BM / IG_EPI_ROWS; ++pass) {
        if (pass > 0) __syncthreads();  // the previous pass's reads are done
#if IG_WGMMA
        // A warp's accumulators of half h: rows h * 64 + 16 * (warp % 4) + gq (+ 8), channels
        // j * 8 + 2 * t (+ 1) of its warpgroup's, as mma.sync's m16n8 tiles.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            if ((h * 64) / IG_EPI_ROWS != pass) continue;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int lr = h * 64 - pass * IG_EPI_ROWS + (warp & 3) * 16 + gq + half * 8;
#pragma unroll
                for (int j = 0; j < IG_WG_N / 8; ++j)
                    *reinterpret_cast<int2*>(&stg[lr * IG_EPI_LD + wg_col0 + j * 8 + t * 2]) =
                        make_int2(acc[h][j * 4 + half * 2], acc[h][j * 4 + half * 2 + 1]);
            }
        }
#else
        if ((wm * 64) / IG_EPI_ROWS == pass) {
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int lr = wm * 64 - pass * IG_EPI_ROWS + i * 16 + gq + half * 8;
#pragma unroll
                    for (int j = 0; j < IG_NT; ++j)
                        *reinterpret_cast<int2*>(&stg[lr * IG_EPI_LD + wn * KILN_WN + j * 8 + t * 2]) =
                            make_int2(acc[i][j][half * 2], acc[i][j][half * 2 + 1]);
                }
        }
#endif
        __syncthreads();
        // A thread's rows in chunks: each chunk's inputs are all requested before any row is
        // computed, so their loads are in flight together. Rows past the last are computed
        // from the last row's inputs and not stored: no branch separates the rows, so their
        // epilogues interleave.
        if (c < g.m) {
#pragma unroll 1
            for (int ch = 0; ch < IG_EPI_ITERS; ch += IG_EPI_CHUNK) {
                EpiIn in[IG_EPI_CHUNK];
#pragma unroll
                for (int q = 0; q < IG_EPI_CHUNK; ++q) {
                    const i64 r = row0 + pass * IG_EPI_ROWS + lr0 + (ch + q) * IG_EPI_STEP;
                    kiln_epi_load(e, g, r < g.rows ? r : g.rows - 1, c, in[q]);
                }
#pragma unroll
                for (int q = 0; q < IG_EPI_CHUNK; ++q) {
                    const int lr = lr0 + (ch + q) * IG_EPI_STEP;
                    const i64 r = row0 + pass * IG_EPI_ROWS + lr;
                    const int4 a4 = *reinterpret_cast<const int4*>(&stg[lr * IG_EPI_LD + cg * 4]);
                    const int a[4] = {a4.x, a4.y, a4.z, a4.w};
                    kiln_epi_row(e, g, pre, in[q], r, c, a, out, r < g.rows);
                }
            }
        }
    }
}
