// attention.cu: fused multi-head attention, softmax(scale * Q K^T + mask) V, in one kernel
// with online softmax (flash-attention style): the scores are never written to memory.
//
// Q, K, V and the output are addressed by strides per (batch, head, row), with unit stride in
// the head dim, so [B, H, S, D], [B, S, H, D] and the packed [B, S, 3 * H * D] projection of
// FusedOp::PackedAttention (Q, K, V at column offsets 0, H*D and 2*H*D, row stride 3*H*D) are
// read in place. The optional additive mask has its own strides over [B, H, Sq, Sk], 0 where
// broadcast, which covers [B, 1, 1, Sk] key-padding masks and full [B, H, Sq, Sk] masks.
//
// A block of 8 warps handles 8 * R query rows of one (batch, head), R rows per warp (R = 4, or
// 2 for f32 with D > 64 to fit static shared memory), so every key and value the block loads
// into shared memory serves R rows from registers. It walks the keys in tiles of 32: lane t
// scores key t of the tile against the warp's R rows, the warp updates each row's running
// maximum and sum, and lane l keeps output dims l, l + 32, ... (ceil(D / 32) of them, the last
// partial for D = 16 or 80) of each row in f32 registers. Inputs are f16, bf16 or f32; all
// arithmetic is f32. A row whose scores are all -inf comes out NaN, as the reference does.
#include "common.cuh"

struct AttnArgs {
    const void* q;
    const void* k;
    const void* v;
    void* o;
    const void* mask;
    i64 batch, heads, sq, sk;
    i64 q_sb, q_sh, q_ss;
    i64 k_sb, k_sh, k_ss;
    i64 v_sb, v_sh, v_ss;
    i64 o_sb, o_sh, o_ss;
    i64 m_sb, m_sh, m_sq, m_sk;
    float scale;
    int has_mask;
};

#define ATTN_WARPS 8
#define ATTN_KT 32

template <typename T, int D, int R>
__device__ __forceinline__ void attention_impl(const AttnArgs a) {
    // K rows padded by one word against bank conflicts when lane t reads row t.
    constexpr int DP = D + (sizeof(T) == 2 ? 2 : 1);
    constexpr int J = (D + 31) / 32;
    __shared__ T ks[ATTN_KT][DP];
    __shared__ T vs[ATTN_KT][D];
    __shared__ float qs[ATTN_WARPS][R][D];
    const float ninf = -__int_as_float(0x7f800000);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const i64 b = blockIdx.z, h = blockIdx.y;
    const i64 row0 = ((i64)blockIdx.x * ATTN_WARPS + warp) * R;
    const T* K = (const T*)a.k + b * a.k_sb + h * a.k_sh;
    const T* V = (const T*)a.v + b * a.v_sb + h * a.v_sh;
    const T* M = (const T*)a.mask + b * a.m_sb + h * a.m_sh;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const i64 row = row0 + r;
        const T* q = (const T*)a.q + b * a.q_sb + h * a.q_sh + row * a.q_ss;
        for (int d = lane; d < D; d += 32) qs[warp][r][d] = row < a.sq ? to_f32(q[d]) * a.scale : 0.0f;
    }
    float m[R], l[R], acc[R][J];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        m[r] = ninf;
        l[r] = 0.0f;
#pragma unroll
        for (int j = 0; j < J; ++j) acc[r][j] = 0.0f;
    }
    const T zero = from_f32<T>(0.0f);

    for (i64 t0 = 0; t0 < a.sk; t0 += ATTN_KT) {
        __syncthreads();  // the previous tile is consumed (and, the first time, qs is written)
        for (int e = threadIdx.x; e < ATTN_KT * D; e += blockDim.x) {
            const int t = e / D, d = e % D;
            const i64 key = t0 + t;
            const bool in = key < a.sk;
            ks[t][d] = in ? K[key * a.k_ss + d] : zero;
            vs[t][d] = in ? V[key * a.v_ss + d] : zero;
        }
        __syncthreads();
        const i64 key = t0 + lane;
        float s[R];
#pragma unroll
        for (int r = 0; r < R; ++r) s[r] = 0.0f;
        if (key < a.sk) {
#pragma unroll 8
            for (int d = 0; d < D; ++d) {
                const float kd = to_f32(ks[lane][d]);
#pragma unroll
                for (int r = 0; r < R; ++r) s[r] += qs[warp][r][d] * kd;
            }
#pragma unroll
            for (int r = 0; r < R; ++r)
                if (a.has_mask && row0 + r < a.sq) s[r] += to_f32(M[(row0 + r) * a.m_sq + key * a.m_sk]);
        } else {
#pragma unroll
            for (int r = 0; r < R; ++r) s[r] = ninf;
        }
        float p[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const float m_new = fmaxf(m[r], warp_max(s[r]));
            p[r] = m_new == ninf ? 0.0f : expf(s[r] - m_new);
            const float alpha = m_new == ninf ? 1.0f : expf(m[r] - m_new);
            l[r] = l[r] * alpha + warp_sum(p[r]);
#pragma unroll
            for (int j = 0; j < J; ++j) acc[r][j] *= alpha;
            m[r] = m_new;
        }
        for (int t = 0; t < ATTN_KT; ++t) {
            float vt[J];
#pragma unroll
            for (int j = 0; j < J; ++j) vt[j] = (D % 32 == 0 || lane + 32 * j < D) ? to_f32(vs[t][lane + 32 * j]) : 0.0f;
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float pt = __shfl_sync(0xffffffffu, p[r], t);
#pragma unroll
                for (int j = 0; j < J; ++j) acc[r][j] += pt * vt[j];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const i64 row = row0 + r;
        if (row >= a.sq) continue;
        T* o = (T*)a.o + b * a.o_sb + h * a.o_sh + row * a.o_ss;
#pragma unroll
        for (int j = 0; j < J; ++j)
            if (D % 32 == 0 || lane + 32 * j < D) o[lane + 32 * j] = from_f32<T>(acc[r][j] / l[r]);
    }
}

// One kernel per head size: 16, 32, 64, 80, 96 and 128 cover the common models. The `_r1`
// variants take one row per warp: four times the blocks, for launches too small to fill the GPU.
#define ATTN_KERNEL(D, T, sfx)                                                                                      \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) attention_d##D##_##sfx(const AttnArgs a) {        \
        attention_impl<T, D, (sizeof(T) == 4 && D > 64) ? 2 : 4>(a);                                                \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) attention_r1_d##D##_##sfx(const AttnArgs a) {     \
        attention_impl<T, D, 1>(a);                                                                                 \
    }
#define ATTN_KERNELS(T, sfx) \
    ATTN_KERNEL(16, T, sfx)  \
    ATTN_KERNEL(32, T, sfx)  \
    ATTN_KERNEL(64, T, sfx)  \
    ATTN_KERNEL(80, T, sfx)  \
    ATTN_KERNEL(96, T, sfx)  \
    ATTN_KERNEL(128, T, sfx)

ATTN_KERNELS(float, f32)
ATTN_KERNELS(__half, f16)
ATTN_KERNELS(__nv_bfloat16, bf16)
