// Host emulation of the CUDA subset kiln's kernels use: one std::thread per CUDA thread,
// blocks run one after another (so `static` stands in for __shared__).
// See run.sh for what it can and cannot check.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>
#include <cstdio>
#include <cstdlib>
using std::isinf;
using std::isfinite;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static
struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
struct WarpCtx { std::barrier<> bar{32}; uint64_t slot[32]; unsigned mma[32][6]; };
inline thread_local WarpCtx* g_warp;
inline thread_local int g_lane;
inline std::barrier<>* g_block_bar;
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
template <class T> T shfl_from(T v, int src) {
    std::memcpy(&g_warp->slot[g_lane], &v, sizeof(T));
    g_warp->bar.arrive_and_wait();
    T r; std::memcpy(&r, &g_warp->slot[src & 31], sizeof(T));
    g_warp->bar.arrive_and_wait();
    return r;
}
template <class T> T __shfl_xor_sync(unsigned, T v, int o) { return shfl_from(v, g_lane ^ o); }
template <class T> T __shfl_sync(unsigned, T v, int src) { return shfl_from(v, src); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, 8); return i; }
inline float __double2float_rn(double d) { return (float)d; }
inline double __longlong_as_double(long long i) { double f; std::memcpy(&f, &i, 8); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __expf(float x) { return std::exp(x); }
struct __half { _Float16 v; };
struct __nv_bfloat16 { uint16_t bits; };
inline __half __float2half_rn(float f) { return __half{(_Float16)f}; }
inline float __half2float(__half h) { return (float)h.v; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u; std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return __nv_bfloat16{0x7fc0};
    u += 0x7fff + ((u >> 16) & 1);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}
inline unsigned short __half_as_ushort(__half h) { unsigned short u; std::memcpy(&u, &h.v, 2); return u; }
inline __half __ushort_as_half(unsigned short u) { __half h; std::memcpy(&h.v, &u, 2); return h; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.bits; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }
// 16-byte vectors; the kernels only form them at 16-byte aligned addresses.
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
// Per-byte SIMD max, signed and unsigned.
inline unsigned __vmaxs4(unsigned a, unsigned b) {
    unsigned r = 0;
    for (int i = 0; i < 32; i += 8) r |= (unsigned)(unsigned char)std::max((signed char)(a >> i), (signed char)(b >> i)) << i;
    return r;
}
inline unsigned __vmaxu4(unsigned a, unsigned b) {
    unsigned r = 0;
    for (int i = 0; i < 32; i += 8) r |= (unsigned)std::max((unsigned char)(a >> i), (unsigned char)(b >> i)) << i;
    return r;
}
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float __bfloat162float(__nv_bfloat16 b) { uint32_t u = (uint32_t)b.bits << 16; float f; std::memcpy(&f, &u, 4); return f; }
struct alignas(8) uint2 { unsigned x, y; };
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
struct alignas(8) int2 { int x, y; };
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }

// WMMA (<mma.h>), 16x16x16 only: every lane holds the whole tile (the hardware's split of a
// fragment over lanes is unspecified, and kernels may not depend on it), loads and stores
// check the API's alignment rules (pointers 32-byte aligned, ldm a multiple of 16 bytes), and
// lane 0 alone stores, so the kernel must synchronize before others read the tile, as on a GPU.
namespace nvcuda { namespace wmma {
struct matrix_a {}; struct matrix_b {}; struct accumulator {};
struct row_major {}; struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulation has 16x16x16 only");
    T v[16][16];
};
inline void wmma_check(const void* p, unsigned ldm, size_t elem) {
    if ((uintptr_t)p % 32 || ldm * elem % 16) { fprintf(stderr, "wmma: misaligned %p or ldm %u\n", p, ldm); std::abort(); }
}
template <class Use, class T, class L, class P> void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const P* p, unsigned ldm) {
    wmma_check(p, ldm, sizeof(P));
    constexpr bool row = std::is_same_v<L, row_major>;
    for (int r = 0; r < 16; ++r) for (int c = 0; c < 16; ++c) f.v[r][c] = row ? p[r * ldm + c] : p[c * ldm + r];
}
template <class T, class V> void fill_fragment(fragment<accumulator, 16, 16, 16, T>& f, V x) {
    for (auto& row : f.v) for (auto& e : row) e = (T)x;
}
template <class TA, class LA, class TB, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, int>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
              const fragment<matrix_b, 16, 16, 16, TB, LB>& b, const fragment<accumulator, 16, 16, 16, int>& c) {
    fragment<accumulator, 16, 16, 16, int> t;
    for (int r = 0; r < 16; ++r) for (int n = 0; n < 16; ++n) {
        uint32_t s = (uint32_t)c.v[r][n];  // wraps, as mma without saturation
        for (int k = 0; k < 16; ++k) s += (uint32_t)((int)a.v[r][k] * (int)b.v[k][n]);
        t.v[r][n] = (int)s;
    }
    d = t;
}
template <class T> void store_matrix_sync(T* p, const fragment<accumulator, 16, 16, 16, T>& f, unsigned ldm, layout_t l) {
    wmma_check(p, ldm, sizeof(T));
    if (g_lane != 0) return;
    for (int r = 0; r < 16; ++r) for (int c = 0; c < 16; ++c) (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.v[r][c];
}
} }

// igemm.cu's PTX wrappers. cp.async copies at once (the waits have nothing to wait for);
// mma.sync.m16n8k32 s8 gathers the warp's registers and computes each lane's four results
// from the PTX ISA's fragment layout: lane (g, t) holds A rows g and g + 8, bytes 4t..4t+3
// (a0, a1) and 16 + 4t.. (a2, a3) of k; B column g, the same bytes (b0, b1); D rows g and
// g + 8, columns 2t and 2t + 1.
#define KILN_HOST_EMU 1
struct alignas(16) int4 { int x, y, z, w; };
inline void ig_cp_async16(void* s, const void* g, int bytes) {
    if (bytes) std::memcpy(s, g, 16); else std::memset(s, 0, 16);
}
inline void ig_cp_async4(void* s, const void* g, int bytes) {
    if (((uintptr_t)s | (uintptr_t)g) % 4) { fprintf(stderr, "cp.async 4: %p <- %p not 4-byte aligned\n", s, g); std::abort(); }
    if (bytes) std::memcpy(s, g, 4); else std::memset(s, 0, 4);
}
inline void ig_cp_commit() {}
// ldmatrix.m8n8.x4.b16: lanes 8q..8q+7 give the row addresses of matrix q; register q of lane
// T is bytes 4 (T % 4).. of row T / 4 of matrix q.
inline void ig_ldsm4(unsigned (&r)[4], const void* smem) {
    if ((uintptr_t)smem % 16) { fprintf(stderr, "ldmatrix: row address %p not 16-byte aligned\n", smem); std::abort(); }
    g_warp->slot[g_lane] = (uint64_t)(uintptr_t)smem;
    g_warp->bar.arrive_and_wait();
    for (int q = 0; q < 4; ++q) {
        const char* row = (const char*)(uintptr_t)g_warp->slot[8 * q + g_lane / 4];
        std::memcpy(&r[q], row + 4 * (g_lane % 4), 4);
    }
    g_warp->bar.arrive_and_wait();
}
template <int N> void ig_cp_wait() {}
inline void ig_mma(int (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    unsigned* mine = g_warp->mma[g_lane];
    mine[0] = a0; mine[1] = a1; mine[2] = a2; mine[3] = a3; mine[4] = b0; mine[5] = b1;
    g_warp->bar.arrive_and_wait();
    auto byte = [](unsigned v, int i) { return (int)(signed char)(v >> (8 * i)); };
    // A[row][k] and B[k][col] as the hardware sees them.
    auto A = [&](int row, int k) {
        const int t = (k % 16) / 4, reg = (row >= 8 ? 1 : 0) + (k >= 16 ? 2 : 0);
        return byte(g_warp->mma[(row % 8) * 4 + t][reg], k % 4);
    };
    auto B = [&](int k, int col) {
        const int t = (k % 16) / 4;
        return byte(g_warp->mma[col * 4 + t][4 + (k >= 16 ? 1 : 0)], k % 4);
    };
    const int g = g_lane >> 2, t = g_lane & 3;
    for (int q = 0; q < 4; ++q) {
        const int row = g + (q >= 2 ? 8 : 0), col = 2 * t + (q & 1);
        int s = 0;
        for (int k = 0; k < 32; ++k) s += A(row, k) * B(k, col);
        d[q] += s;
    }
    g_warp->bar.arrive_and_wait();
}

// The persistent implicit GEMM's barriers (igemm.cu, KILN_IG_PP). An mbarrier's 8 bytes hold
// its phase (bits 32-63), its count (16-31) and the arrivals its phase still waits for (0-15);
// a wait for parity p returns once the phase's parity is no longer p (phase p is complete).
inline void pp_init(unsigned long long* bar, int count) {
    std::atomic_ref<unsigned long long>(*bar).store(((unsigned long long)count << 16) | (unsigned long long)count);
}
inline void pp_arrive(unsigned long long* bar) {
    std::atomic_ref<unsigned long long> a(*bar);
    unsigned long long v = a.load(), next;
    do {
        const unsigned long long count = (v >> 16) & 0xffff;
        next = (v & 0xffff) == 1 ? (((v >> 32) + 1) << 32) | (count << 16) | count : v - 1;
    } while (!a.compare_exchange_weak(v, next));
}
inline void pp_wait(unsigned long long* bar, int parity) {
    std::atomic_ref<unsigned long long> a(*bar);
    while (((a.load() >> 32) & 1) == (unsigned long long)parity) std::this_thread::yield();
}
inline void pp_fence_async() {}
// Named barriers (`bar.sync id, count`), made at a block's first use of each id.
inline std::mutex g_named_mu;
inline std::unique_ptr<std::barrier<>> g_named_bar[16];
inline void pp_bar(int id, int count) {
    std::barrier<>* b;
    {
        std::lock_guard<std::mutex> lock(g_named_mu);
        if (!g_named_bar[id]) g_named_bar[id] = std::make_unique<std::barrier<>>(count);
        b = g_named_bar[id].get();
    }
    b->arrive_and_wait();
}

// Runs `body` for every thread of every block.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
    gridDim = grid; blockDim = block;
    unsigned nthreads = block.x * block.y * block.z;
    if (nthreads % 32) { fprintf(stderr, "block not a multiple of 32\n"); std::abort(); }
    for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> bar(nthreads);
        g_block_bar = &bar;
        for (auto& b : g_named_bar) b.reset();
        std::vector<std::unique_ptr<WarpCtx>> warps;
        for (unsigned w = 0; w < nthreads / 32; ++w) warps.emplace_back(new WarpCtx());
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < nthreads; ++t) {
            ts.emplace_back([&, t] {
                threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                blockIdx = dim3{bx, by, bz};
                g_warp = warps[t / 32].get();
                g_lane = t % 32;
                body();
            });
        }
        for (auto& th : ts) th.join();
    }
}
