// igemm.cu: the template of the generated INT8 implicit-GEMM kernels, a convolution over a
// channels-last (NHWC) i8 input or a matrix product, on the integer tensor cores, with the
// epilogue (dequantization, bias, residual, activation, requantization) applied to the i32
// accumulators on chip and the result stored in the output's type. Code generation
// (`crates/kiln-cuda/src/codegen.rs`, `igemm_kernel`) replaces the two marked lines: DEFS
// defines KILN_KERNEL_NAME, KILN_BN (output channels per block: 64, 128, or 192 or 256 for a
// plain product's wide blocks, see IG_WIDE), KILN_WN (a warp's channels: 32 or 64),
// KILN_NUM_EXTRA (the epilogue's inputs besides the accumulator), KILN_IG_DENSE for a plain
// product (see below), KILN_IG_SPLIT for split-K (see below), KILN_IG_LOOP for a wide block
// taking tile after tile, the output's storage type `kiln_out_t` and the expression; BODY
// defines what a thread does for four adjacent channels: `kiln_epi_pre` reads the inputs constant along the rows once,
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
// With KILN_IG_NARROW (a convolution over at most 4 channels: an image network's stem) the
// input is NHWC with its channels padded to 4, the reduction runs over (ky, kx) with one
// 4-byte word a pixel, so a 16-byte piece is four pixels, each copied on its own (zeros
// outside the image and past the filter), and the filter is stored [m][k], k = kh * kw * 4
// rounded up to 16 bytes.
//
// On sm_90a (NVRTC compiles Hopper's sm_90 so) the same tiles feed `wgmma` instead: the
// block's warpgroups each take all 128 rows (two m64 products) by KILN_BN / warpgroups
// channels, reading both operands from shared memory through descriptors. The tile layout
// above is exactly wgmma's 64-byte swizzle, so the copies are unchanged; a proxy fence makes
// the copies visible to the products, and the products of a stage complete before the next
// barrier, after which the stage is refilled. The accumulators come out in mma.sync's
// fragment layout, so the epilogue is shared.
//
// With KILN_IG_PP the file defines the persistent ping-pong kernel instead (see it below): the
// same loader, products and epilogue, one block an SM, two warpgroups taking tiles in turn.
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
// Split-K (KILN_IG_SPLIT > 1, a small grid's long reduction): the launch's z blocks of a tile
// form one cluster, each takes a contiguous share of the reduction's steps, and the epilogue
// sums their accumulators through distributed shared memory, each block of the cluster taking
// its share of the rows. Clusters are Hopper's (sm_90a); elsewhere (and in the host emulation)
// the first block of the z blocks computes the whole reduction and the others return.
#ifndef KILN_IG_SPLIT
#define KILN_IG_SPLIT 1
#endif
#if KILN_IG_SPLIT > 1 && IG_WGMMA
#define IG_CLUSTER KILN_IG_SPLIT
#else
#define IG_CLUSTER 1
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
// Wide blocks (KILN_BN 192 or 256, plain products only): one block an SM, 128 rows by 192
// channels in three warpgroups of 64 channels (twelve warps of 64 x 32 on mma.sync), or by 256
// in two of 128 (eight warps of 64 x 64), the stages in dynamic shared memory. They give the
// planner tile widths that fill the SMs in whole rounds where 128 channels leave a partial
// one (BERT-base's 768-channel products: 128 tiles of 192 channels for 132 SMs, against 192
// of 128 channels, two an SM, on 60 SMs and one on 72). With one block an SM no other block's
// products run while this one waits, so on sm_90a a step's products stay in flight across the
// next barrier (IG_LAG) and the copies run IG_STAGES - 2 steps ahead.
#define IG_WIDE (KILN_BN > 128)
#define IG_STAGES (IG_WIDE ? 6 : KILN_BN == 128 ? 3 : 4)
#if IG_WIDE && IG_WGMMA
#define IG_LAG 1
#else
#define IG_LAG 0
#endif
// Steps the copies run ahead of the products.
#define IG_AHEAD (IG_STAGES - 1 - IG_LAG)
// KILN_IG_LOOP (wide blocks only): a block an SM takes tile after tile, its epilogue staged
// apart from the copies' stages so that the next tile's first copies run during it.
#ifdef KILN_IG_LOOP
#define IG_LOOP 1
#else
#define IG_LOOP 0
#endif
#define IG_MAX_EXTRA 8
// Blocks an SM holds at once: four 64-channel blocks (125 registers a thread, no spills, 48
// KiB of shared memory each) or two 128-channel ones, 16 warps either way; one wide block.
#define IG_MIN_BLOCKS (KILN_BN == 64 ? 4 : KILN_BN == 128 ? 2 : 1)
// The epilogue's staging tile: rows per pass, and the row stride in ints (padded by 8 so that
// the warps' 8-byte writes and the 16-byte reads fall in distinct banks).
#define IG_EPI_ROWS (KILN_BN == 64 ? 128 : 64)
#define IG_EPI_LD (KILN_BN + 8)
// A thread's rows in a pass: IG_EPI_ITERS of them, IG_EPI_STEP apart, loaded IG_EPI_CHUNK at
// a time.
#define IG_EPI_STEP (IG_THREADS / (KILN_BN / 4))
#define IG_EPI_ITERS (IG_EPI_ROWS / IG_EPI_STEP)
#define IG_EPI_CHUNK 8
// A thread's rows in a pass of a cluster's epilogue (its block's share), loaded IG_EPI_CH at a
// time.
#define IG_EPI_MINE (IG_EPI_ITERS / IG_CLUSTER)
#define IG_EPI_CH (IG_EPI_MINE < IG_EPI_CHUNK ? IG_EPI_MINE : IG_EPI_CHUNK)
static_assert(IG_EPI_ITERS % IG_CLUSTER == 0, "a cluster's blocks share a pass's rows evenly");
#define IG_SMEM_TILES (IG_STAGES * (IG_BM + KILN_BN) * IG_BK)
#define IG_SMEM_EPI (IG_EPI_ROWS * IG_EPI_LD * 4)
#if IG_LOOP
#define IG_SMEM (IG_SMEM_TILES + IG_SMEM_EPI)
#else
#define IG_SMEM (IG_SMEM_TILES > IG_SMEM_EPI ? IG_SMEM_TILES : IG_SMEM_EPI)
#endif
#if IG_LOOP && !IG_WIDE
#error "only wide blocks take tile after tile"
#endif
#if IG_WIDE
#if IG_CLUSTER > 1 || defined(KILN_IG_PP) || defined(KILN_IG_LN)
#error "wide blocks are not split, persistent, or LayerNorm epilogues"
#endif
#ifdef KILN_IG_SMEM_LAUNCH
static_assert(IG_SMEM + 1024 <= KILN_IG_SMEM_LAUNCH, "the launch gives the layout and 1024 bytes to align it");
#endif
#endif

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
__device__ __forceinline__ void ig_cp_async4(void* smem, const void* gmem, int bytes) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
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
// Waits until at most N of the warpgroup's committed product groups are still running.
template <int N> __device__ __forceinline__ void ig_wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
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

#if IG_CLUSTER > 1 || (defined(KILN_IG_LN) && IG_WGMMA)
// sm_90a clusters: this block's rank, the cluster's barrier (every thread of every block;
// release and acquire, so shared-memory writes before it are seen by all the blocks after
// it), and a load from another block's shared memory (`mapa` turns a shared address of this
// block into the same address in block `rank`). The loads are volatile, so they stay after the
// barrier, but clobber no memory, so that several of them are in flight at once.
__device__ __forceinline__ int ig_cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return (int)r;
}
__device__ __forceinline__ void ig_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
__device__ __forceinline__ int4 ig_ld_cluster(unsigned addr, int rank) {
    unsigned a;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(a) : "r"(addr), "r"(rank));
    int4 v;
    asm volatile("ld.shared::cluster.v4.s32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(a));
    return v;
}
__device__ __forceinline__ float ig_ld_cluster_f32(unsigned addr, int rank) {
    unsigned a;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(a) : "r"(addr), "r"(rank));
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(a));
    return v;
}
#endif

#if defined(KILN_IG_PP) && !defined(KILN_HOST_EMU)
// The ping-pong kernel's barriers in shared memory (`mbarrier`): a phase completes when its
// count of threads has arrived; a wait names the parity of the phase it waits for.
__device__ __forceinline__ unsigned pp_addr(unsigned long long* bar) { return (unsigned)__cvta_generic_to_shared(bar); }
__device__ __forceinline__ void pp_init(unsigned long long* bar, int count) {
    asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(pp_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void pp_arrive(unsigned long long* bar) {
    unsigned long long state;
    asm volatile("mbarrier.arrive.shared.b64 %0, [%1];\n" : "=l"(state) : "r"(pp_addr(bar)) : "memory");
    (void)state;
}
__device__ __forceinline__ void pp_wait(unsigned long long* bar, int parity) {
    unsigned done;
    do {
#if IG_WGMMA
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(pp_addr(bar)), "r"(parity)
                     : "memory");
#else
        asm volatile("{\n.reg .pred p;\nmbarrier.test_wait.parity.shared.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(pp_addr(bar)), "r"(parity)
                     : "memory");
#endif
    } while (!done);
}
// The barrier of one consumer group's `count` threads (id 1 or 2; 0 is __syncthreads').
__device__ __forceinline__ void pp_bar(int id, int count) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
// A producer's completed copies made visible to the products' reads (async proxy).
__device__ __forceinline__ void pp_fence_async() {
#if IG_WGMMA
    ig_fence_async();
#endif
}
#endif

// Programmatic dependent launch (sm_90a): the runtime may launch this kernel before the one
// before it on the stream has finished (`codegen::waits_for_dependencies`). `ig_pdl_wait`
// waits for that kernel to finish and its writes to be visible; nothing the kernel reads or
// writes but the constant filter may be touched before it. `ig_pdl_trigger` lets the next
// kernel launch once every block of this one has called it or exited. Without such a launch
// both do nothing.
__device__ __forceinline__ void ig_pdl_wait() {
#if IG_WGMMA
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void ig_pdl_trigger() {
#if IG_WGMMA
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Shared-memory byte offset of piece `c` (0..3) of tile row `r`.
__device__ __forceinline__ int ig_swz(int r, int c) { return r * IG_BK + ((c ^ ((r >> 1) & 3)) << 4); }

// What one of THREADS copying threads keeps to fill the A and B tiles of a block's rows
// (row0 on) and channels (col0 on): its pieces' sources and shared offsets, and where its
// piece of the next tile lies in the reduction. `begin` sets it up for a block whose first
// tile starts at byte k0 of the reduction (a multiple of IG_BK), `load` copies one tile into a
// stage and moves on to the next. Each thread copies one piece column of its
// rows and keeps where the next tile starts (input pixel offset and channel) incrementally,
// so the copy loop divides nothing.
template <int THREADS> struct IgLoader {
    // Pieces of A and of B a thread copies per stage. Where THREADS does not divide A's 512
    // pieces (the 384 threads of a 192-channel block) the first threads copy one more:
    // `a_mine` says whether the last is a thread's.
    static constexpr int AP = (IG_BM * 4 + THREADS - 1) / THREADS, BP = KILN_BN * 4 / THREADS;
    static constexpr bool A_EVEN = IG_BM * 4 % THREADS == 0;
    static_assert(KILN_BN * 4 % THREADS == 0, "the threads share B's pieces evenly");
#ifndef KILN_IG_DENSE
    static_assert(A_EVEN, "only the plain-product loader shares A's pieces unevenly");
#endif
    bool a_mine;
    const signed char* a_src[AP];
    const signed char* b_src[BP];
    int a_soff[AP], b_soff[BP];
    bool b_in[BP];
#ifdef KILN_IG_DENSE
    bool a_in[AP];
#else
    // Per row: its top-left input pixel.
    int a_iy[AP], a_ix[AP];
#ifdef KILN_IG_NARROW
    // Per word of the piece (one pixel): its filter row and column.
    int wky[4], wkx[4];
#else
    // The piece's filter row, column and channel.
    int ky, kx, c0;
#endif
#endif
    int kb;  // the piece's byte in the reduction

    __device__ __forceinline__ void begin(int tid, const signed char* x, const signed char* wt, const IgemmArgs& g,
                                          i64 row0, int col0, int k0 = 0) {
        // The host guarantees that the input and the filter have fewer than 2^31 bytes and
        // the GEMM fewer than 2^31 rows, so every offset and row here is 32-bit.
        const int K = (int)g.k, piece = tid & 3, kp = k0 + piece * 16;
        a_mine = A_EVEN || (tid >> 2) + (AP - 1) * (THREADS / 4) < IG_BM;
#pragma unroll
        for (int i = 0; i < AP; ++i) {
            const i64 r = row0 + (tid >> 2) + i * (THREADS / 4);
            a_soff[i] = ig_swz((tid >> 2) + i * (THREADS / 4), piece);
#ifdef KILN_IG_DENSE
            // A plain product: row r of the reduction is the K bytes at x + r * K.
            a_in[i] = r < g.rows && (i < AP - 1 || a_mine);
            a_src[i] = x + (a_in[i] ? (int)r * K + kp : 0);
#else
            if (r < g.rows) {
                const int ow = (int)g.ow, hw_out = (int)(g.oh * g.ow);
                const int rr = (int)r, img = rr / hw_out, p = rr - img * hw_out, oy = p / ow, ox = p - oy * ow;
                a_iy[i] = oy * (int)g.sh - (int)g.ph;
                a_ix[i] = ox * (int)g.sw - (int)g.pw;
                a_src[i] = x + ((img * (int)g.h + a_iy[i]) * (int)g.w + a_ix[i]) * (int)g.c;
            } else {
                a_iy[i] = -(1 << 30);  // never inside the image
                a_ix[i] = 0;
                a_src[i] = x;
            }
#endif
        }
#if defined(KILN_IG_NARROW)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int kpos = kp / 4 + j;
            wky[j] = kpos / (int)g.kw;
            wkx[j] = kpos - wky[j] * (int)g.kw;
        }
#elif !defined(KILN_IG_DENSE)
        {
            const int kpos = kp / (int)g.c;
            c0 = kp - kpos * (int)g.c;
            ky = kpos / (int)g.kw;
            kx = kpos - ky * (int)g.kw;
        }
#endif
#pragma unroll
        for (int i = 0; i < BP; ++i) {
            const int cc = (tid >> 2) + i * (THREADS / 4);
            b_soff[i] = ig_swz(cc, piece);
            b_in[i] = col0 + cc < (int)g.m;
            b_src[i] = wt + (b_in[i] ? (col0 + cc) * K + kp : 0);
        }
        kb = kp;
    }

    // Copies B's part of the tile `ahead` steps past the next one into stage `sb_s`, without
    // moving on: the filter is constant, so this may run before the kernel waits for the one
    // before it (see `ig_pdl_wait`).
    __device__ __forceinline__ void load_b(signed char* sb_s, const IgemmArgs& g, int ahead) const {
        const bool kin = kb + ahead * IG_BK < (int)g.k;
#pragma unroll
        for (int i = 0; i < BP; ++i) ig_cp_async16(sb_s + b_soff[i], b_src[i] + ahead * IG_BK, kin && b_in[i] ? 16 : 0);
    }

    // Copies the next tile into stage (sa_s, sb_s) and moves on to the one after; with B false
    // only A's part (B's copied by `load_b` before).
    template <bool B = true>
    __device__ __forceinline__ void load(signed char* sa_s, signed char* sb_s, const IgemmArgs& g) {
        const bool kin = kb < (int)g.k;
        // A copy of 0 bytes reads nothing (it zero-fills): its address need not be valid.
#ifdef KILN_IG_DENSE
#pragma unroll
        for (int i = 0; i < AP; ++i) {
            // A piece past the tile's rows is not copied at all: its offset lies past A's stage.
            if (i < AP - 1 || a_mine) ig_cp_async16(sa_s + a_soff[i], a_src[i], kin && a_in[i] ? 16 : 0);
            a_src[i] += IG_BK;
        }
#elif defined(KILN_IG_NARROW)
        // Word j of each row's piece: pixel (ky, kx) of the filter, all 4 channels; zeros past
        // the filter (ky = kh on) and outside the image.
        const int H = (int)g.h, W = (int)g.w;
        int dy[4], dx[4], dk[4];
        bool kok[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            dy[j] = wky[j] * (int)g.dh;
            dx[j] = wkx[j] * (int)g.dw;
            dk[j] = (dy[j] * W + dx[j]) * 4;
            kok[j] = wky[j] < (int)g.kh;
        }
#pragma unroll
        for (int i = 0; i < AP; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int yy = a_iy[i] + dy[j], xx = a_ix[i] + dx[j];
                const bool ok = kok[j] && (unsigned)yy < (unsigned)H && (unsigned)xx < (unsigned)W;
                ig_cp_async4(sa_s + a_soff[i] + 4 * j, a_src[i] + dk[j], ok ? 4 : 0);
            }
#else
        const int C = (int)g.c, H = (int)g.h, W = (int)g.w;
        const int dy = ky * (int)g.dh, dx = kx * (int)g.dw, dk = (dy * W + dx) * C + c0;
#pragma unroll
        for (int i = 0; i < AP; ++i) {
            const int yy = a_iy[i] + dy, xx = a_ix[i] + dx;
            const bool ok = kin && (unsigned)yy < (unsigned)H && (unsigned)xx < (unsigned)W;
            ig_cp_async16(sa_s + a_soff[i], a_src[i] + dk, ok ? 16 : 0);
        }
#endif
#pragma unroll
        for (int i = 0; i < BP; ++i) {
            if (B) ig_cp_async16(sb_s + b_soff[i], b_src[i], kin && b_in[i] ? 16 : 0);
            b_src[i] += IG_BK;
        }
        // On to the next tile: 64 bytes further along (channel, filter column, filter row).
        kb += IG_BK;
#if defined(KILN_IG_NARROW)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            wkx[j] += IG_BK / 4;
            while (wkx[j] >= (int)g.kw) {
                wkx[j] -= (int)g.kw;
                ++wky[j];
            }
        }
#elif !defined(KILN_IG_DENSE)
        c0 += IG_BK;
        while (c0 >= C) {
            c0 -= C;
            if (++kx == (int)g.kw) {
                kx = 0;
                ++ky;
            }
        }
#endif
    }
};

#if IG_WGMMA
// A warpgroup's accumulators: two m64 halves of its IG_WG_N channels.
typedef int IgAcc[2][IG_WG_N / 2];
__device__ __forceinline__ void ig_zero(IgAcc& acc) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int q = 0; q < IG_WG_N / 2; ++q) acc[h][q] = 0;
}
// Issues the products of one stage (A at shared address `as`, the warpgroup's B at `bs`):
// per 32-byte step of the tile, one product per 64-row half, all issued before any wait.
__device__ __forceinline__ void ig_products(IgAcc& acc, unsigned as, unsigned bs) {
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
}
#else
// A warp's accumulators: four 16-row tiles by IG_NT 8-channel ones, mma.sync's fragments.
typedef int IgAcc[4][IG_NT][4];
__device__ __forceinline__ void ig_zero(IgAcc& acc) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < IG_NT; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0;
}
// ldmatrix: lane L gives row L % 8 of matrix L / 8. A's matrices are (rows 0-7, 8-15) x
// (k bytes 0-15, 16-31) of a 16-row tile: a0..a3 of the mma. B's are (k 0-15, 16-31) x
// (channels 0-7, 8-15): b0, b1 of two 8-channel tiles. The swizzle of rows r and r + 8k is
// the same, so each k-step's addresses are one base per operand (these offsets, per 32-byte
// step) plus constants: 16 rows (1024 bytes) per A tile, 8 (512) per B tile.
struct IgFrag {
    int a[2], b[2];
};
__device__ __forceinline__ IgFrag ig_frag(int warp, int lane) {
    const int wm = warp / IG_WARPS_N, wn = warp % IG_WARPS_N;
    const int lq = lane >> 3, lr = lane & 7;
    const int a_row = wm * 64 + (lq & 1) * 8 + lr, a_piece = lq >> 1;
    const int b_row = wn * KILN_WN + (lq >> 1) * 8 + lr, b_piece = lq & 1;
    return IgFrag{{ig_swz(a_row, a_piece), ig_swz(a_row, 2 + a_piece)}, {ig_swz(b_row, b_piece), ig_swz(b_row, 2 + b_piece)}};
}
__device__ __forceinline__ void ig_products(IgAcc& acc, const signed char* as, const signed char* bs, const IgFrag& f) {
#pragma unroll
    for (int s = 0; s < 2; ++s) {
        unsigned b[IG_NT][2];
#pragma unroll
        for (int j = 0; j < IG_NT; j += 2) {
            unsigned r[4];
            ig_ldsm4(r, &bs[f.b[s] + j * 8 * IG_BK]);
            b[j][0] = r[0];
            b[j][1] = r[1];
            b[j + 1][0] = r[2];
            b[j + 1][1] = r[3];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            unsigned a[4];
            ig_ldsm4(a, &as[f.a[s] + i * 16 * IG_BK]);
#pragma unroll
            for (int j = 0; j < IG_NT; ++j) ig_mma(acc[i][j], a[0], a[1], a[2], a[3], b[j][0], b[j][1]);
        }
    }
}
#endif

// Writes the accumulators of pass `pass`'s rows into the staging tile, for warp `warp` of the
// block's IG_THREADS.
__device__ __forceinline__ void ig_stage(const IgAcc& acc, int* stg, int pass, int warp, int lane) {
    const int gq = lane >> 2, t = lane & 3;
#if IG_WGMMA
    // A warp's accumulators of half h: rows h * 64 + 16 * (warp % 4) + gq (+ 8), channels
    // j * 8 + 2 * t (+ 1) of its warpgroup's, as mma.sync's m16n8 tiles.
    const int wg_col0 = (warp >> 2) * IG_WG_N;
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
    const int wm = warp / IG_WARPS_N, wn = warp % IG_WARPS_N;
    if ((wm * 64) / IG_EPI_ROWS != pass) return;
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
#endif
}

// The epilogue of a block's tile (rows row0 on, channels col0 on), by its IG_THREADS threads
// (`tid` among them), through shared memory: the warps write their accumulators into a
// staging tile of IG_EPI_ROWS rows (all the block's rows for 64-channel blocks, half of them
// for 128), then every thread takes four adjacent channels of a row at a time, so the
// epilogue's inputs are read and its result stored in whole vectors, coalesced along the
// row. Inputs constant along the rows (per-channel scales, biases) are read once. `sync` is
// the threads' barrier (the cluster's, split-K); the first one also waits for whatever read
// `stg` before.
template <class Sync>
__device__ __forceinline__ void ig_epilogue(const IgAcc& acc, int* stg, int tid, i64 row0, int col0, const IgemmArgs& g,
                                            const EpiArgs& e, void* out, Sync sync) {
    const int cg = tid % (KILN_BN / 4), c = col0 + cg * 4, lr0 = tid / (KILN_BN / 4);
#if IG_CLUSTER > 1
    const int rank = ig_cluster_rank();
#else
    const int rank = 0;
#endif
    EpiPre pre;
    kiln_epi_pre(e, g, c, pre);
    // The passes and chunks stay loops: unrolled, a long epilogue (GELU's erf) would be
    // copied for every row and overflow the instruction cache.
#pragma unroll 1
    for (int pass = 0; pass < IG_BM / IG_EPI_ROWS; ++pass) {
        sync();
        ig_stage(acc, stg, pass, tid >> 5, tid & 31);
        sync();
        // A thread's rows in chunks: each chunk's inputs are all requested before any row is
        // computed, so their loads are in flight together. Rows past the last are computed
        // from the last row's inputs and not stored: no branch separates the rows, so their
        // epilogues interleave.
        // In a cluster each block takes its share of the pass's rows (IG_EPI_MINE of a thread's
        // IG_EPI_ITERS), summing every block's accumulators for them.
        if (c < g.m) {
#pragma unroll 1
            for (int ch = 0; ch < IG_EPI_MINE; ch += IG_EPI_CH) {
                EpiIn in[IG_EPI_CH];
#pragma unroll
                for (int q = 0; q < IG_EPI_CH; ++q) {
                    const i64 r = row0 + pass * IG_EPI_ROWS + lr0 + (rank * IG_EPI_MINE + ch + q) * IG_EPI_STEP;
                    kiln_epi_load(e, g, r < g.rows ? r : g.rows - 1, c, in[q]);
                }
#pragma unroll
                for (int q = 0; q < IG_EPI_CH; ++q) {
                    const int lr = lr0 + (rank * IG_EPI_MINE + ch + q) * IG_EPI_STEP;
                    const i64 r = row0 + pass * IG_EPI_ROWS + lr;
#if IG_CLUSTER > 1
                    const unsigned sa = (unsigned)__cvta_generic_to_shared(&stg[lr * IG_EPI_LD + cg * 4]);
                    int a[4] = {0, 0, 0, 0};
#pragma unroll
                    for (int b = 0; b < IG_CLUSTER; ++b) {
                        const int4 v = ig_ld_cluster(sa, b);
                        a[0] += v.x;
                        a[1] += v.y;
                        a[2] += v.z;
                        a[3] += v.w;
                    }
#else
                    const int4 a4 = *reinterpret_cast<const int4*>(&stg[lr * IG_EPI_LD + cg * 4]);
                    const int a[4] = {a4.x, a4.y, a4.z, a4.w};
#endif
                    kiln_epi_row(e, g, pre, in[q], r, c, a, out, r < g.rows);
                }
            }
        }
    }
}

#ifdef KILN_IG_LN
// LayerNormalization over the output channels in the epilogue (KILN_IG_LN, sm_90a): the
// KILN_IG_LN blocks of 128 channels along the launch's y that make up a row's m channels are
// one cluster. Each block computes its outputs as the plain kernel would store them (rounded
// to kiln_out_t, `kiln_epi_vals`), sums each row's share in a warp (a warp takes one row's
// 128 channels at a time), and reads the other blocks' sums from their shared memory: the mean
// first, then the sum of squared deviations (two passes, as the LayerNorm kernels compute
// them). It stores the normalized row in kiln_out_t and, with `q`, quantized to i8 as
// QuantizeLinear would from the stored value. The plan takes this only for sm_90 engines
// (`plan::Target`); elsewhere the kernel traps.
struct LnArgs {
    const void* gamma;
    const void* beta;  // or null
    signed char* q;    // or null
    double eps, qc, qr;
};

#if IG_WGMMA
// The cluster's totals of a warp's rows (lr0 + q * IG_EPI_STEP, q < 8) from the blocks' sums at
// shared address `at` (one float a row): lane l reads row l / 4's from blocks l % 4 and
// l % 4 + 4, and its quad adds them up, so lanes 4q to 4q + 3 hold row q's total.
__device__ __forceinline__ float ig_ln_total(unsigned at, int lr0, int lane) {
    const int b = lane & 3;
    const unsigned row = at + (lr0 + (lane >> 2) * IG_EPI_STEP) * 4;
    float t = b < KILN_IG_LN ? ig_ld_cluster_f32(row, b) : 0.0f;
    if (b + 4 < KILN_IG_LN) t += ig_ld_cluster_f32(row, b + 4);
    t += __shfl_xor_sync(0xffffffffu, t, 1);
    return t + __shfl_xor_sync(0xffffffffu, t, 2);
}

__device__ __forceinline__ void ig_epilogue_ln(const IgAcc& acc, int* stg, int tid, i64 row0, int col0,
                                               const IgemmArgs& g, const EpiArgs& e, const LnArgs& ln, void* out) {
    static_assert(KILN_BN == 128 && IG_THREADS == 256 && IG_EPI_STEP == 8 && IG_EPI_ITERS == 8,
                  "a warp takes a row's 128 channels, eight rows a pass");
    static_assert(IG_SMEM_EPI + 2 * IG_EPI_ROWS * 4 <= IG_SMEM, "the row sums fit after the staging tile");
    // The row sums of this block's channels, after the staging tile: the mean's, then the
    // squared deviations'.
    float* red = reinterpret_cast<float*>(stg + IG_EPI_ROWS * IG_EPI_LD);
    const int lane = tid & 31, lr0 = tid >> 5, c = col0 + lane * 4;
    const float n = (float)g.m, eps = (float)ln.eps, qc = (float)ln.qc, qr = (float)ln.qr;
    EpiPre pre;
    kiln_epi_pre(e, g, c, pre);
    const kiln_out_t* G = (const kiln_out_t*)ln.gamma;
    const kiln_out_t* B = (const kiln_out_t*)ln.beta;
    const unsigned red_at = (unsigned)__cvta_generic_to_shared(red);
    constexpr int CH = 4;
#pragma unroll 1
    for (int pass = 0; pass < IG_BM / IG_EPI_ROWS; ++pass) {
        __syncthreads();
        ig_stage(acc, stg, pass, tid >> 5, lane);
        __syncthreads();
        // The rows' values, then (after the mean) their deviations from it, replace the
        // accumulators in the staging tile (each thread's own four), so that no row is held in
        // registers across the cluster's barriers. The inputs are read CH rows at a time, all
        // of a chunk's loads in flight together.
#pragma unroll
        for (int ch = 0; ch < IG_EPI_ITERS; ch += CH) {
            EpiIn in[CH];
#pragma unroll
            for (int q = 0; q < CH; ++q) {
                const i64 r = row0 + pass * IG_EPI_ROWS + lr0 + (ch + q) * IG_EPI_STEP;
                kiln_epi_load(e, g, r < g.rows ? r : g.rows - 1, c, in[q]);
            }
#pragma unroll
            for (int q = 0; q < CH; ++q) {
                const int lr = lr0 + (ch + q) * IG_EPI_STEP;
                int4* at = reinterpret_cast<int4*>(&stg[lr * IG_EPI_LD + lane * 4]);
                const int4 a4 = *at;
                const int a[4] = {a4.x, a4.y, a4.z, a4.w};
                float y[4];
                kiln_epi_vals(e, g, pre, in[q], a, y);
                *reinterpret_cast<float4*>(at) = make_float4(y[0], y[1], y[2], y[3]);
                const float s = warp_sum(y[0] + y[1] + y[2] + y[3]);
                if (lane == 0) red[lr] = s;
            }
        }
        ig_cluster_sync();
        const float sum = ig_ln_total(red_at, lr0, lane);
#pragma unroll
        for (int q = 0; q < IG_EPI_ITERS; ++q) {
            const int lr = lr0 + q * IG_EPI_STEP;
            float4* at = reinterpret_cast<float4*>(&stg[lr * IG_EPI_LD + lane * 4]);
            const float mean = __shfl_sync(0xffffffffu, sum, q * 4) / n;
            float4 d = *at;
            d.x -= mean;
            d.y -= mean;
            d.z -= mean;
            d.w -= mean;
            *at = d;
            const float d2 = warp_sum(d.x * d.x + d.y * d.y + d.z * d.z + d.w * d.w);
            if (lane == 0) red[IG_EPI_ROWS + lr] = d2;
        }
        ig_cluster_sync();
        const float dev = ig_ln_total(red_at + IG_EPI_ROWS * 4, lr0, lane);
        float gam[4], bet[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            gam[u] = to_f32(G[c + u]);
            bet[u] = B ? to_f32(B[c + u]) : 0.0f;
        }
#pragma unroll
        for (int q = 0; q < IG_EPI_ITERS; ++q) {
            const int lr = lr0 + q * IG_EPI_STEP;
            const i64 r = row0 + pass * IG_EPI_ROWS + lr;
            const float4 d = *reinterpret_cast<const float4*>(&stg[lr * IG_EPI_LD + lane * 4]);
            const float y[4] = {d.x, d.y, d.z, d.w};
            const float inv = rsqrtf(__shfl_sync(0xffffffffu, dev, q * 4) / n + eps);
            kiln_out_t o[4];
            signed char qb[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                o[u] = from_f32<kiln_out_t>(y[u] * inv * gam[u] + bet[u]);
                qb[u] = kiln_rni_sat_s8(kiln_div_k(to_f32(o[u]), qc, qr));
            }
            if (r < g.rows) {
                ig_st4((kiln_out_t*)out + r * g.m + c, o);
                if (ln.q) ig_st4(ln.q + r * g.m + c, qb);
            }
        }
        // The next pass rewrites `red` only after its first cluster barrier, which every block
        // reaches after reading this pass's sums.
    }
    // No block leaves while another may still read its sums.
    ig_cluster_sync();
}
#endif
#endif

#ifndef KILN_IG_PP
// One block a tile: 128 rows by KILN_BN channels, over k in steps of 64 bytes (or, split-K,
// its share of them, the cluster's blocks summing their accumulators in the epilogue). The
// copies fill a STAGES-deep ring while the warps compute on the stage before; a barrier at
// every step frees the stage read in the step before.
#if IG_CLUSTER > 1
#define IG_CLUSTER_DIMS __cluster_dims__(1, 1, IG_CLUSTER)
#elif defined(KILN_IG_LN) && IG_WGMMA
#define IG_CLUSTER_DIMS __cluster_dims__(1, KILN_IG_LN, 1)
#else
#define IG_CLUSTER_DIMS
#endif
extern "C" __global__ void __launch_bounds__(IG_THREADS, IG_MIN_BLOCKS) IG_CLUSTER_DIMS
    KILN_KERNEL_NAME(const signed char* __restrict__ x, const signed char* __restrict__ wt, void* __restrict__ out,
                     const IgemmArgs g, const EpiArgs e
#ifdef KILN_IG_LN
                     ,
                     const LnArgs ln
#endif
    ) {
    // The stages of A, then those of B; the epilogue reuses it all as its staging tile.
    // Aligned to the swizzle's 512-byte period, which wgmma takes from the address bits. Wide
    // blocks take theirs from the launch's dynamic shared memory, which adds 1024 bytes to
    // align it.
#if IG_WIDE && !defined(KILN_HOST_EMU)
    extern __shared__ __align__(16) signed char ig_dsm[];
    signed char* smem = ig_dsm + ((1024 - ((unsigned)__cvta_generic_to_shared(ig_dsm) & 1023)) & 1023);
#else
    __align__(1024) __shared__ signed char smem[IG_SMEM];
#endif
    signed char* sa = smem;
    signed char* sb = smem + IG_STAGES * IG_BM * IG_BK;
    const int tid = threadIdx.x, warp = tid >> 5;
#if IG_LOOP
    // Tiles blockIdx.x, + gridDim.x, ..., down the rows first as a grid would run them; the
    // epilogue stages its tile after the copies' stages, which the next tile's first copies
    // fill meanwhile.
    const int gx = (int)((g.rows + IG_BM - 1) / IG_BM), ntiles = gx * (int)((g.m + KILN_BN - 1) / KILN_BN);
    int* const stg = reinterpret_cast<int*>(smem + IG_SMEM_TILES);
    int tile = blockIdx.x;
    if (tile >= ntiles) return;
    i64 row0 = (i64)(tile % gx) * IG_BM;
    int col0 = tile / gx * KILN_BN;
#else
    int* const stg = reinterpret_cast<int*>(smem);
    const i64 row0 = (i64)blockIdx.x * IG_BM;
    const int col0 = blockIdx.y * KILN_BN;
#endif
    // The block's steps of the reduction: all of them, or its share of a cluster's.
    const int all = ((int)g.k + IG_BK - 1) / IG_BK;
#if IG_CLUSTER > 1
    const int rank = ig_cluster_rank(), t0 = rank * all / IG_CLUSTER, tiles = (rank + 1) * all / IG_CLUSTER - t0;
#else
    if (blockIdx.z != 0) return;
    const int t0 = 0, tiles = all;
#endif
    IgLoader<IG_THREADS> ld;
    ld.begin(tid, x, wt, g, row0, col0, t0 * IG_BK);
    IgAcc acc;
    ig_zero(acc);
    // The first stages' filter tiles while the kernel before may still run, then (in the first
    // stage's copy group, so the waits below count as before) the input's.
#pragma unroll
    for (int s = 0; s < IG_AHEAD; ++s)
        if (s < tiles) ld.load_b(sb + s * KILN_BN * IG_BK, g, s);
    ig_pdl_wait();
#pragma unroll
    for (int s = 0; s < IG_AHEAD; ++s) {
        if (s < tiles) ld.load<false>(sa + s * IG_BM * IG_BK, sb + s * KILN_BN * IG_BK, g);
        ig_cp_commit();
    }
#if IG_WGMMA
    // Each warpgroup takes all 128 rows by its IG_WG_N channels. The stage is rewritten only
    // after the next barrier, when every warpgroup's products on it are complete.
    const unsigned sa0 = (unsigned)__cvta_generic_to_shared(sa);
    const unsigned sb0 = (unsigned)__cvta_generic_to_shared(sb) + (warp >> 2) * IG_WG_N * IG_BK;
#else
    const IgFrag frag = ig_frag(warp, tid & 31);
#endif
#if IG_LOOP
    for (;;) {
#endif
    for (int kt = 0; kt < tiles; ++kt) {
        ig_cp_wait<IG_AHEAD - 1>();
#if IG_WGMMA
        ig_fence_async();
#endif
        __syncthreads();
        // The stage read IG_LAG + 1 steps before is free now that every warp has passed the
        // barrier: each waited for its products of that step before it.
        if (kt + IG_AHEAD < tiles) {
            const int s = (kt + IG_AHEAD) % IG_STAGES;
            ld.load(sa + s * IG_BM * IG_BK, sb + s * KILN_BN * IG_BK, g);
        }
        ig_cp_commit();
        const int s = kt % IG_STAGES;
#if IG_WGMMA
        ig_products(acc, sa0 + s * (IG_BM * IG_BK), sb0 + s * (KILN_BN * IG_BK));
        ig_wgmma_wait<IG_LAG>();
#else
        ig_products(acc, sa + s * IG_BM * IG_BK, sb + s * KILN_BN * IG_BK, frag);
#endif
    }
#if IG_WGMMA && IG_LAG > 0
    ig_wgmma_wait<0>();
#endif
    ig_cp_wait<0>();
#if IG_LOOP
    // The next tile's first copies go out before this one's epilogue, which hides their
    // latency; once every warp's products are done (the barrier) the stages are free.
    const int next = tile + gridDim.x;
    i64 next_row0 = 0;
    int next_col0 = 0;
    if (next < ntiles) {
        next_row0 = (i64)(next % gx) * IG_BM;
        next_col0 = next / gx * KILN_BN;
        __syncthreads();
        ld.begin(tid, x, wt, g, next_row0, next_col0);
#pragma unroll
        for (int s = 0; s < IG_AHEAD; ++s) {
            if (s < tiles) ld.load(sa + s * IG_BM * IG_BK, sb + s * KILN_BN * IG_BK, g);
            ig_cp_commit();
        }
    } else {
        ig_pdl_trigger();
    }
#else
    ig_pdl_trigger();
#endif
#if defined(KILN_IG_LN) && IG_WGMMA
    ig_epilogue_ln(acc, stg, tid, row0, col0, g, e, ln, out);
#elif defined(KILN_IG_LN)
    // Never planned without clusters (`plan::Target`).
    __trap();
#elif IG_CLUSTER > 1
    ig_epilogue(acc, stg, tid, row0, col0, g, e, out, [] { ig_cluster_sync(); });
    // No block leaves while another may still read its accumulators.
    ig_cluster_sync();
#else
    ig_epilogue(acc, stg, tid, row0, col0, g, e, out, [] { __syncthreads(); });
#endif
#if IG_LOOP
        if (next >= ntiles) break;
        tile = next;
        row0 = next_row0;
        col0 = next_col0;
        ig_zero(acc);
    }
#endif
}
#else
// The persistent ping-pong kernel (KILN_IG_PP, 128-channel tiles). One block an SM takes tiles
// blockIdx.x, + gridDim.x, ... (in the order a grid of tiles would run: down the rows, then the
// next channel block). Two consumer groups, each the IG_THREADS threads of a one-tile block
// (two warpgroups of 128 x 64 with KILN_WN 32, one of 128 x 128 with 64), take the block's
// tiles in turn, and while one runs its products the other runs the epilogue of its last
// tile, so the tensor cores and the epilogue's arithmetic overlap. A producer warpgroup copies
// every tile's stages, in the order the groups use them, into a ring of PP_STAGES stages,
// ahead of both; barriers in shared memory (`mbarrier`) say when a stage is full (its copies
// complete) and when it is empty again (its products done), and a third pair passes the turn
// from one group's products to the other's. On sm_90a the producer hands most of its
// registers to the consumers (`setmaxnreg`).
// The ring's stages, and the copies the producer keeps in flight before it signals the oldest
// (its copies complete): code generation defines both.
#ifndef PP_STAGES
#define PP_STAGES 5
#define PP_LAG 3
#endif
#define PP_PRODUCERS 128
// Registers a thread of the producer and of the consumers keep (sm_90a). The launch gives
// each thread PP_LAUNCH_REGS (65536 / PP_THREADS, in steps of 8), and a consumer can take only
// what the producer gives back within the block: 232 for 384 threads, 104 for 640.
#define PP_PRODUCER_REGS 40
#define PP_LAUNCH_REGS ((65536 / PP_THREADS) / 8 * 8)
#define PP_CONSUMER_REGS \
    ((PP_LAUNCH_REGS + (PP_LAUNCH_REGS - PP_PRODUCER_REGS) * PP_PRODUCERS / (2 * IG_THREADS)) / 8 * 8)
#define PP_THREADS (2 * IG_THREADS + PP_PRODUCERS)
#define PP_TILE ((IG_BM + KILN_BN) * IG_BK)
#define PP_EPI (IG_EPI_ROWS * IG_EPI_LD * 4)
#define PP_BARS (PP_STAGES * PP_TILE + 2 * PP_EPI)
#define PP_SMEM (PP_BARS + 8 * (2 * PP_STAGES + 2))
static_assert(KILN_BN == 128, "the ping-pong kernel takes 128-channel tiles");
static_assert(PP_PRODUCERS * PP_PRODUCER_REGS + 2 * IG_THREADS * PP_CONSUMER_REGS <= PP_THREADS * PP_LAUNCH_REGS,
              "the consumers take no more registers than the producer gives back");
#ifdef PP_SMEM_LAUNCH
static_assert(PP_SMEM + 1024 <= PP_SMEM_LAUNCH, "the launch gives the layout and 1024 bytes to align it");
#endif
static_assert(PP_LAG < PP_STAGES, "a producer signals a stage before it waits for that stage again");

extern "C" __global__ void __launch_bounds__(PP_THREADS, 1)
    KILN_KERNEL_NAME(const signed char* __restrict__ x, const signed char* __restrict__ wt, void* __restrict__ out,
                     const IgemmArgs g, const EpiArgs e) {
    // The stages (A then B in each), each consumer group's staging tile, the barriers:
    // full[s], empty[s], then the turn of group 0 and 1. The launch adds 1024 bytes to align it.
#ifdef KILN_HOST_EMU
    __align__(1024) __shared__ signed char dsm[PP_SMEM];
    signed char* smem = dsm;
#else
    extern __shared__ __align__(16) signed char dsm[];
    signed char* smem = dsm + ((1024 - ((unsigned)__cvta_generic_to_shared(dsm) & 1023)) & 1023);
#endif
    unsigned long long* full = reinterpret_cast<unsigned long long*>(smem + PP_BARS);
    unsigned long long* empty = full + PP_STAGES;
    unsigned long long* turn = full + 2 * PP_STAGES;
    const int tid = threadIdx.x;
    if (tid == 0) {
        for (int s = 0; s < PP_STAGES; ++s) {
            pp_init(&full[s], PP_PRODUCERS);
            pp_init(&empty[s], IG_THREADS);
        }
        pp_init(&turn[0], IG_THREADS);
        pp_init(&turn[1], IG_THREADS);
    }
    __syncthreads();
    const int gx = (int)((g.rows + IG_BM - 1) / IG_BM), ntiles = gx * (int)((g.m + KILN_BN - 1) / KILN_BN);
    const int kt_n = ((int)g.k + IG_BK - 1) / IG_BK;
    if (tid >= 2 * IG_THREADS) {
#if IG_WGMMA
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(PP_PRODUCER_REGS));
#endif
        // Producer: fill q of the block's sequence goes to stage q % PP_STAGES once the
        // products of fill q - PP_STAGES are done (the first pass finds every stage empty).
        IgLoader<PP_PRODUCERS> ld;
        int q = 0;
        for (int t = blockIdx.x; t < ntiles; t += gridDim.x) {
            ld.begin(tid - 2 * IG_THREADS, x, wt, g, (i64)(t % gx) * IG_BM, (t / gx) * KILN_BN);
            for (int kt = 0; kt < kt_n; ++kt, ++q) {
                const int s = q % PP_STAGES;
                pp_wait(&empty[s], ((q / PP_STAGES) & 1) ^ 1);
                ld.load(smem + s * PP_TILE, smem + s * PP_TILE + IG_BM * IG_BK, g);
                ig_cp_commit();
                if (q >= PP_LAG) {
                    ig_cp_wait<PP_LAG>();
                    pp_fence_async();
                    pp_arrive(&full[(q - PP_LAG) % PP_STAGES]);
                }
            }
        }
        ig_cp_wait<0>();
        pp_fence_async();
        for (int p = q > PP_LAG ? q - PP_LAG : 0; p < q; ++p) pp_arrive(&full[p % PP_STAGES]);
        return;
    }
    // Consumers: group w takes the block's tiles w, w + 2, ...
#if IG_WGMMA
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(PP_CONSUMER_REGS));
#endif
    const int w = tid / IG_THREADS, wtid = tid % IG_THREADS;
    int* stg = reinterpret_cast<int*>(smem + PP_STAGES * PP_TILE + w * PP_EPI);
#if IG_WGMMA
    // A's stages, and this warpgroup's channels of B's.
    const unsigned tiles0 = (unsigned)__cvta_generic_to_shared(smem);
    const unsigned b0 = tiles0 + IG_BM * IG_BK + (wtid >> 7) * IG_WG_N * IG_BK;
#else
    const IgFrag frag = ig_frag(wtid >> 5, wtid & 31);
#endif
    IgAcc acc;
    int i = 0;
    for (int t = blockIdx.x + w * gridDim.x; t < ntiles; t += 2 * gridDim.x, ++i) {
        // The turn: group 1's products on its tile i follow group 0's on its tile i, and
        // group 0's on its tile i follow group 1's on tile i - 1.
        if (w == 1) pp_wait(&turn[1], i & 1);
        else if (i > 0) pp_wait(&turn[0], (i - 1) & 1);
        ig_zero(acc);
        const int q0 = (2 * i + w) * kt_n;
        for (int kt = 0; kt < kt_n; ++kt) {
            const int q = q0 + kt, s = q % PP_STAGES;
            pp_wait(&full[s], (q / PP_STAGES) & 1);
#if IG_WGMMA
            ig_products(acc, tiles0 + s * PP_TILE, b0 + s * PP_TILE);
            // The step before's products are done: its stage is free.
            ig_wgmma_wait<1>();
            if (kt > 0) pp_arrive(&empty[(q - 1) % PP_STAGES]);
#else
            ig_products(acc, smem + s * PP_TILE, smem + s * PP_TILE + IG_BM * IG_BK, frag);
            pp_arrive(&empty[s]);
#endif
        }
#if IG_WGMMA
        ig_wgmma_wait<0>();
        pp_arrive(&empty[(q0 + kt_n - 1) % PP_STAGES]);
#endif
        pp_arrive(&turn[1 - w]);
        ig_epilogue(acc, stg, wtid, (i64)(t % gx) * IG_BM, (t / gx) * KILN_BN, g, e, out, [w] { pp_bar(1 + w, IG_THREADS); });
    }
}
#endif
