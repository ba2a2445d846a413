// attention.cu: fused multi-head attention, softmax(scale * Q K^T + bias) V, in one kernel
// with online softmax (flash-attention style): the scores are never written to memory.
//
// Q, K, V and the output are addressed by strides per (batch, head, row), with unit stride in
// the head dim, so [B, H, S, D], [B, S, H, D] and the packed [B, S, 3 * H * D] projection of
// FusedOp::PackedAttention (Q, K, V at column offsets 0, H*D and 2*H*D, row stride 3*H*D) are
// read in place. Query head h reads key/value head h / kv_group (grouped-query attention; 1
// for plain multi-head attention). V's head size DV may differ from Q's and K's, D.
//
// The bias of ONNX Attention (opset 23, as the ONNX 1.19 reference computes it) is the sum of:
// an optional mask with its own strides over [B, H, Sq, Sk], 0 where broadcast, either additive
// in the inputs' type or bool (true attends, false adds -inf), covering the first mask_len keys
// (later keys get -inf); the causal mask (key j hidden from row i when j > i + causal_offset,
// the past sequence length); and the key padding of nonpad_kv_seqlen (keys at or past
// nonpad[b] get -inf). When softcap > 0 the biased scores become softcap * tanh(s / softcap)
// before the softmax, so a masked key then weighs exp(-softcap - max), as in the reference.
//
// A block of 8 warps handles 8 * R query rows of one (batch, head), R rows per warp (R = 4, or
// 2 for f32 with D > 64 to fit static shared memory), so every key and value the block loads
// into shared memory serves R rows from registers. It walks the keys in tiles of 32: lane t
// scores key t of the tile against the warp's R rows, the warp updates each row's running
// maximum and sum, and lane l keeps output dims l, l + 32, ... (ceil(DV / 32) of them, the last
// partial for DV = 8, 16 or 80) of each row in f32 registers. Inputs are f16, bf16 or f32; all
// arithmetic is f32. A row whose scores are all -inf comes out NaN, as the reference does.
//
// `attention_d{D}_{dt}` and `attention_r1_d{D}_{dt}` are compiled for one head size D = DV each
// (the fast paths); `attention_generic_{dt}` takes any D and DV up to 128 at run time, one row
// per warp. `attention_scores_{dt}` writes the optional qk_matmul_output, and `rotary_{dt}` is
// RotaryEmbedding.
#include "common.cuh"
#include <mma.h>

#define ATTN_MASK_NONE 0
#define ATTN_MASK_ADD 1
#define ATTN_MASK_BOOL 2

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
    int mask_kind;  // ATTN_MASK_*
    const i64* nonpad;  // valid keys per batch, or null
    i64 kv_group;       // query heads per key/value head
    i64 d, dv;          // head sizes of Q and K, and of V
    i64 mask_len;       // keys the mask covers
    i64 causal_offset;  // the past sequence length
    float softcap;      // 0: none
    int is_causal;
};

#define ATTN_WARPS 8
#define ATTN_KT 32

__device__ __forceinline__ float attn_ninf() { return -__int_as_float(0x7f800000); }

// The bias of (row, key) of batch b, with `m` the mask at (b, h): mask, causal mask and key
// padding, summed in the reference's order. Only for key < sk.
template <typename T>
__device__ __forceinline__ float attn_bias(const AttnArgs& a, const void* m, i64 b, i64 row, i64 key) {
    float bias = 0.0f;
    if (a.mask_kind != ATTN_MASK_NONE) {
        if (key >= a.mask_len) {
            bias = attn_ninf();
        } else {
            const i64 at = row * a.m_sq + key * a.m_sk;
            bias = a.mask_kind == ATTN_MASK_BOOL ? (((const unsigned char*)m)[at] ? 0.0f : attn_ninf())
                                                 : to_f32(((const T*)m)[at]);
        }
    }
    if (a.is_causal && key > row + a.causal_offset) bias += attn_ninf();
    if (a.nonpad != nullptr && key >= a.nonpad[b]) bias += attn_ninf();
    return bias;
}

__device__ __forceinline__ float attn_softcap(const AttnArgs& a, float s) {
    return a.softcap > 0.0f ? a.softcap * tanhf(s / a.softcap) : s;
}

// Whether any bias term is present: the plain path (BERT) skips attn_bias altogether.
__device__ __forceinline__ bool attn_biased(const AttnArgs& a) {
    return a.mask_kind != ATTN_MASK_NONE || a.is_causal || a.nonpad != nullptr || a.softcap > 0.0f;
}

// EXACT: the head sizes are D and DV; else they are a.d <= D and a.dv <= DV.
template <typename T, int D, int DV, int R, bool EXACT>
__device__ __forceinline__ void attention_impl(const AttnArgs a) {
    // K rows padded by one word against bank conflicts when lane t reads row t.
    constexpr int DP = D + (sizeof(T) == 2 ? 2 : 1);
    constexpr int J = (DV + 31) / 32;
    __shared__ T ks[ATTN_KT][DP];
    __shared__ T vs[ATTN_KT][DV];
    __shared__ float qs[ATTN_WARPS][R][D];
    const int d = EXACT ? D : (int)a.d;
    const int dv = EXACT ? DV : (int)a.dv;
    const float ninf = attn_ninf();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const i64 b = blockIdx.z, h = blockIdx.y, hkv = h / a.kv_group;
    const i64 row0 = ((i64)blockIdx.x * ATTN_WARPS + warp) * R;
    const T* K = (const T*)a.k + b * a.k_sb + hkv * a.k_sh;
    const T* V = (const T*)a.v + b * a.v_sb + hkv * a.v_sh;
    const void* M = (a.mask_kind == ATTN_MASK_BOOL ? (const char*)a.mask + (b * a.m_sb + h * a.m_sh)
                                                   : (const char*)a.mask + (b * a.m_sb + h * a.m_sh) * (i64)sizeof(T));
    // Only an additive mask over all keys (BERT's padding mask): the plain add, as before the
    // other bias terms existed; anything else goes through attn_bias.
    const bool add_only = a.mask_kind == ATTN_MASK_ADD && a.mask_len >= a.sk && !a.is_causal &&
                          a.nonpad == nullptr && !(a.softcap > 0.0f);
    const bool biased = !add_only && attn_biased(a);
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const i64 row = row0 + r;
        const T* q = (const T*)a.q + b * a.q_sb + h * a.q_sh + row * a.q_ss;
        for (int dd = lane; dd < d; dd += 32) qs[warp][r][dd] = row < a.sq ? to_f32(q[dd]) * a.scale : 0.0f;
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
    // Causal without softcap: keys past the block's last row + offset weigh exactly 0.
    i64 kend = a.sk;
    if (a.is_causal && !(a.softcap > 0.0f)) {
        const i64 last = ((i64)blockIdx.x + 1) * ATTN_WARPS * R - 1 + a.causal_offset + 1;
        kend = last < kend ? (last < 0 ? 0 : last) : kend;
    }

    for (i64 t0 = 0; t0 < kend; t0 += ATTN_KT) {
        __syncthreads();  // the previous tile is consumed (and, the first time, qs is written)
        if (EXACT && D == DV) {
            for (int e = threadIdx.x; e < ATTN_KT * D; e += blockDim.x) {
                const int t = e / D, dd = e % D;
                const i64 key = t0 + t;
                const bool in = key < a.sk;
                ks[t][dd] = in ? K[key * a.k_ss + dd] : zero;
                vs[t][dd] = in ? V[key * a.v_ss + dd] : zero;
            }
        } else {
            for (int e = threadIdx.x; e < ATTN_KT * d; e += blockDim.x) {
                const int t = e / d, dd = e % d;
                const i64 key = t0 + t;
                ks[t][dd] = key < a.sk ? K[key * a.k_ss + dd] : zero;
            }
            for (int e = threadIdx.x; e < ATTN_KT * dv; e += blockDim.x) {
                const int t = e / dv, dd = e % dv;
                const i64 key = t0 + t;
                vs[t][dd] = key < a.sk ? V[key * a.v_ss + dd] : zero;
            }
        }
        __syncthreads();
        const i64 key = t0 + lane;
        float s[R];
#pragma unroll
        for (int r = 0; r < R; ++r) s[r] = 0.0f;
        if (key < a.sk) {
#pragma unroll 8
            for (int dd = 0; dd < d; ++dd) {
                const float kd = to_f32(ks[lane][dd]);
#pragma unroll
                for (int r = 0; r < R; ++r) s[r] += qs[warp][r][dd] * kd;
            }
            if (add_only) {
#pragma unroll
                for (int r = 0; r < R; ++r)
                    if (row0 + r < a.sq) s[r] += to_f32(((const T*)M)[(row0 + r) * a.m_sq + key * a.m_sk]);
            } else if (biased) {
#pragma unroll
                for (int r = 0; r < R; ++r)
                    if (row0 + r < a.sq) s[r] = attn_softcap(a, attn_bias<T>(a, M, b, row0 + r, key) + s[r]);
            }
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
            for (int j = 0; j < J; ++j)
                vt[j] = ((EXACT && DV % 32 == 0) || lane + 32 * j < dv) ? to_f32(vs[t][lane + 32 * j]) : 0.0f;
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
            if ((EXACT && DV % 32 == 0) || lane + 32 * j < dv) o[lane + 32 * j] = from_f32<T>(acc[r][j] / l[r]);
    }
}

// One kernel per head size: 8, 16, 32, 64, 80, 96 and 128 cover the common models. The `_r1`
// variants take one row per warp: four times the blocks, for launches too small to fill the GPU.
#define ATTN_KERNEL(D, T, sfx)                                                                                      \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) attention_d##D##_##sfx(const AttnArgs a) {        \
        attention_impl<T, D, D, (sizeof(T) == 4 && D > 64) ? 2 : 4, true>(a);                                       \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) attention_r1_d##D##_##sfx(const AttnArgs a) {     \
        attention_impl<T, D, D, 1, true>(a);                                                                        \
    }
// Any head sizes up to ATTN_GENERIC_MAX, one row per warp.
#define ATTN_GENERIC_MAX 128

// qk_matmul_output: one block per (batch, head, row) in a grid-stride loop, a thread per key.
// The stage is that of QkOutputMode: 0 the scaled product, 1 plus the bias, 2 then softcapped,
// 3 the softmax. The product is (Q . K) * scale, in the reference's order.
#define ATTN_QK_SCORES 0
#define ATTN_QK_MASKED 1
#define ATTN_QK_SOFTCAPPED 2
#define ATTN_QK_PROBS 3

template <typename T>
__device__ __forceinline__ float attn_score(const AttnArgs& a, const void* M, i64 b, i64 h, i64 row, i64 key,
                                            int stage) {
    const T* q = (const T*)a.q + b * a.q_sb + h * a.q_sh + row * a.q_ss;
    const T* k = (const T*)a.k + b * a.k_sb + (h / a.kv_group) * a.k_sh + key * a.k_ss;
    float s = 0.0f;
    for (i64 dd = 0; dd < a.d; ++dd) s += to_f32(q[dd]) * to_f32(k[dd]);
    // Head size 0 (scale inf) scores 0, as the CPU reference has it.
    s = a.d > 0 ? s * a.scale : 0.0f;
    if (stage == ATTN_QK_SCORES) return s;
    s = attn_bias<T>(a, M, b, row, key) + s;
    if (stage == ATTN_QK_MASKED) return s;
    return attn_softcap(a, s);
}

template <typename T>
__device__ __forceinline__ void attention_scores_impl(const AttnArgs a, T* __restrict__ out, int mode) {
    __shared__ float scratch[32];
    const i64 rows = a.batch * a.heads * a.sq;
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const i64 row = r % a.sq, h = (r / a.sq) % a.heads, b = r / (a.sq * a.heads);
        const i64 moff = b * a.m_sb + h * a.m_sh;
        const void* M = a.mask_kind == ATTN_MASK_BOOL ? (const void*)((const char*)a.mask + moff)
                                                      : (const void*)((const T*)a.mask + moff);
        T* y = out + r * a.sk;
        if (mode != ATTN_QK_PROBS) {
            for (i64 j = threadIdx.x; j < a.sk; j += blockDim.x) y[j] = from_f32<T>(attn_score<T>(a, M, b, h, row, j, mode));
            continue;
        }
        float mx = attn_ninf();
        for (i64 j = threadIdx.x; j < a.sk; j += blockDim.x) mx = nan_max(mx, attn_score<T>(a, M, b, h, row, j, mode));
        mx = block_reduce<warp_max>(mx, scratch);
        float sum = 0.0f;
        for (i64 j = threadIdx.x; j < a.sk; j += blockDim.x) sum += expf(attn_score<T>(a, M, b, h, row, j, mode) - mx);
        sum = block_reduce<warp_sum>(sum, scratch);
        for (i64 j = threadIdx.x; j < a.sk; j += blockDim.x)
            y[j] = from_f32<T>(expf(attn_score<T>(a, M, b, h, row, j, mode) - mx) / sum);
    }
}

// RotaryEmbedding over X of [B, H, S, Dh] (heads_first) or [B, S, H * Dh], one thread per
// element of Y (same layout as X). Channel c < rd of a head rotates with its partner: (2k,
// 2k + 1) when interleaved, else (k, k + rd / 2), by the angle of cache row `row` and column k:
//   y1 = cos * x1 - sin * x2,  y2 = sin * x1 + cos * x2.
// The row is position_ids[b, s] when given (ids outside [0, max_pos) write 0 and raise *error),
// else b * cache_sb + s. Channels past rd are copied.
struct RopeArgs {
    i64 n;          // elements of X
    i64 seq, heads, dh;
    i64 heads_first;
    i64 rd;         // rotary channels per head (even)
    i64 interleaved;
    i64 cache_sb;   // cache rows between batches without position ids (0 or seq)
    i64 max_pos;    // rows of the caches
};

template <typename T>
__device__ __forceinline__ void rotary_impl(const T* __restrict__ x, const T* __restrict__ cosc,
                                            const T* __restrict__ sinc, const i64* __restrict__ pos,
                                            T* __restrict__ y, const RopeArgs p, int* error) {
    KILN_GRID_STRIDE(i, p.n) {
        const i64 c = i % p.dh, rest = i / p.dh;
        i64 s, b;
        if (p.heads_first) {
            s = rest % p.seq;
            b = rest / p.seq / p.heads;
        } else {
            s = (rest / p.heads) % p.seq;
            b = rest / p.heads / p.seq;
        }
        if (c >= p.rd) {
            y[i] = x[i];
            continue;
        }
        const i64 half = p.rd / 2;
        i64 row;
        if (pos != nullptr) {
            row = pos[b * p.seq + s];
            if (row < 0 || row >= p.max_pos) {
                *error = 1;
                y[i] = from_f32<T>(0.0f);
                continue;
            }
        } else {
            row = b * p.cache_sb + s;
        }
        const bool first = p.interleaved ? (c % 2 == 0) : (c < half);
        const i64 k = p.interleaved ? c / 2 : (first ? c : c - half);
        const i64 partner = p.interleaved ? (first ? c + 1 : c - 1) : (first ? c + half : c - half);
        const float xs = to_f32(x[i]), xp = to_f32(x[i - c + partner]);
        const float cs = to_f32(cosc[row * half + k]), sn = to_f32(sinc[row * half + k]);
        y[i] = from_f32<T>(first ? cs * xs - sn * xp : sn * xp + cs * xs);
    }
}

#define ATTN_KERNELS(T, sfx)                                                                                    \
    ATTN_KERNEL(8, T, sfx)                                                                                      \
    ATTN_KERNEL(16, T, sfx)                                                                                     \
    ATTN_KERNEL(32, T, sfx)                                                                                     \
    ATTN_KERNEL(64, T, sfx)                                                                                     \
    ATTN_KERNEL(80, T, sfx)                                                                                     \
    ATTN_KERNEL(96, T, sfx)                                                                                     \
    ATTN_KERNEL(128, T, sfx)                                                                                    \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) attention_generic_##sfx(const AttnArgs a) {   \
        attention_impl<T, ATTN_GENERIC_MAX, ATTN_GENERIC_MAX, 1, false>(a);                                     \
    }                                                                                                           \
    extern "C" __global__ void attention_scores_##sfx(const AttnArgs a, T* out, int mode) {                     \
        attention_scores_impl<T>(a, out, mode);                                                                 \
    }                                                                                                           \
    extern "C" __global__ void rotary_##sfx(const T* x, const T* cosc, const T* sinc, const i64* pos, T* y,     \
                                            const RopeArgs p, int* error) {                                     \
        rotary_impl<T>(x, cosc, sinc, pos, y, p, error);                                                        \
    }

ATTN_KERNELS(float, f32)
ATTN_KERNELS(__half, f16)
ATTN_KERNELS(__nv_bfloat16, bf16)

// attention_tc_d64_f16: the same attention on tensor cores, for f16 with D = DV = 64 (BERT's
// heads). A block of 4 warps takes 64 query rows of one (batch, head), 16 per warp, and walks
// the keys in tiles of 32 that the block loads into shared memory. Each warp computes its
// 16 x 32 scores with WMMA (f16 in, f32 accumulation) into shared memory; two lanes per row
// then add the bias, update the row's running maximum and sum and write the probabilities
// back as f16; the warp rescales its 16 x 64 f32 output tile and adds P V with WMMA. The
// output tile lives in shared memory because WMMA's fragment layout is opaque.

#define ATTN_TC_ROWS 64
#define ATTN_TC_KT 32
#define ATTN_TC_LQ 72  // f16 row pitch of Q, K and V tiles (a multiple of 8, off the banks)
#define ATTN_TC_LS 36  // f32 row pitch of a warp's scores
#define ATTN_TC_LP 40  // f16 row pitch of a warp's probabilities, stored over its scores
#define ATTN_TC_LO 68  // f32 row pitch of a warp's output tile

__device__ __forceinline__ void attention_tc_d64(const AttnArgs a) {
    using namespace nvcuda;
    __shared__ __align__(32) __half qs[ATTN_TC_ROWS][ATTN_TC_LQ];
    __shared__ __align__(32) __half ks[ATTN_TC_KT][ATTN_TC_LQ];
    __shared__ __align__(32) __half vs[ATTN_TC_KT][ATTN_TC_LQ];
    __shared__ __align__(32) float ss[4][16 * ATTN_TC_LS];
    __shared__ __align__(32) float os[4][16 * ATTN_TC_LO];
    const float ninf = attn_ninf();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const i64 b = blockIdx.z, h = blockIdx.y, hkv = h / a.kv_group;
    const i64 row0 = (i64)blockIdx.x * ATTN_TC_ROWS;
    const __half* Q = (const __half*)a.q + b * a.q_sb + h * a.q_sh;
    const __half* K = (const __half*)a.k + b * a.k_sb + hkv * a.k_sh;
    const __half* V = (const __half*)a.v + b * a.v_sb + hkv * a.v_sh;
    const void* M = (a.mask_kind == ATTN_MASK_BOOL ? (const char*)a.mask + (b * a.m_sb + h * a.m_sh)
                                                   : (const char*)a.mask + (b * a.m_sb + h * a.m_sh) * 2);
    const bool add_only = a.mask_kind == ATTN_MASK_ADD && a.mask_len >= a.sk && !a.is_causal &&
                          a.nonpad == nullptr && !(a.softcap > 0.0f);
    const bool biased = !add_only && attn_biased(a);
    const __half zero = __float2half(0.0f);
    for (int e = threadIdx.x; e < ATTN_TC_ROWS * 64; e += blockDim.x) {
        const int r = e / 64, d = e % 64;
        const i64 row = row0 + r;
        qs[r][d] = row < a.sq ? Q[row * a.q_ss + d] : zero;
    }
    // This lane's half row of the warp's tiles: row `r`, score columns c0.., output columns o0...
    const int r = lane >> 1, c0 = (lane & 1) * 16, o0 = (lane & 1) * 32;
    const i64 row = row0 + warp * 16 + r;
    float* S = ss[warp];
    __half* P = (__half*)ss[warp];
    float* O = os[warp];
    for (int c = 0; c < 32; ++c) O[r * ATTN_TC_LO + o0 + c] = 0.0f;
    float m = ninf, l = 0.0f;
    for (i64 t0 = 0; t0 < a.sk; t0 += ATTN_TC_KT) {
        __syncthreads();  // the previous tile is consumed (and, the first time, qs is written)
        for (int e = threadIdx.x; e < ATTN_TC_KT * 64; e += blockDim.x) {
            const int t = e / 64, d = e % 64;
            const i64 key = t0 + t;
            const bool in = key < a.sk;
            ks[t][d] = in ? K[key * a.k_ss + d] : zero;
            vs[t][d] = in ? V[key * a.v_ss + d] : zero;
        }
        __syncthreads();
        // S = Q K^T for the warp's 16 rows and the tile's 32 keys.
#pragma unroll
        for (int n = 0; n < 2; ++n) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> qa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> kb;
                wmma::load_matrix_sync(qa, &qs[warp * 16][kk * 16], ATTN_TC_LQ);
                wmma::load_matrix_sync(kb, &ks[n * 16][kk * 16], ATTN_TC_LQ);
                wmma::mma_sync(acc, qa, kb, acc);
            }
            wmma::store_matrix_sync(S + n * 16, acc, ATTN_TC_LS, wmma::mem_row_major);
        }
        __syncwarp();
        float s[16];
        float tmax = ninf;
#pragma unroll
        for (int c = 0; c < 16; ++c) {
            const i64 key = t0 + c0 + c;
            float v = S[r * ATTN_TC_LS + c0 + c] * a.scale;
            if (key >= a.sk || row >= a.sq) {
                v = ninf;
            } else if (add_only) {
                v += to_f32(((const __half*)M)[row * a.m_sq + key * a.m_sk]);
            } else if (biased) {
                v = attn_softcap(a, attn_bias<__half>(a, M, b, row, key) + v);
            }
            s[c] = v;
            tmax = fmaxf(tmax, v);
        }
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        const float m_new = fmaxf(m, tmax);
        const float alpha = m_new == ninf ? 1.0f : expf(m - m_new);
        float psum = 0.0f;
#pragma unroll
        for (int c = 0; c < 16; ++c) {
            s[c] = m_new == ninf ? 0.0f : expf(s[c] - m_new);
            psum += s[c];
        }
        psum += __shfl_xor_sync(0xffffffffu, psum, 1);
        l = l * alpha + psum;
        m = m_new;
        __syncwarp();  // every lane has read its scores before P overwrites them
#pragma unroll
        for (int c = 0; c < 16; ++c) P[r * ATTN_TC_LP + c0 + c] = __float2half(s[c]);
#pragma unroll
        for (int c = 0; c < 32; ++c) O[r * ATTN_TC_LO + o0 + c] *= alpha;
        __syncwarp();
        // O += P V.
#pragma unroll
        for (int n = 0; n < 4; ++n) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, O + n * 16, ATTN_TC_LO, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < 2; ++kk) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> pa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> vb;
                wmma::load_matrix_sync(pa, P + kk * 16, ATTN_TC_LP);
                wmma::load_matrix_sync(vb, &vs[kk * 16][n * 16], ATTN_TC_LQ);
                wmma::mma_sync(acc, pa, vb, acc);
            }
            wmma::store_matrix_sync(O + n * 16, acc, ATTN_TC_LO, wmma::mem_row_major);
        }
        __syncwarp();
    }
    if (row < a.sq) {
        __half* out = (__half*)a.o + b * a.o_sb + h * a.o_sh + row * a.o_ss;
        // A row whose scores are all -inf has l = 0 and comes out NaN, as the reference does.
        for (int c = 0; c < 32; ++c) out[o0 + c] = __float2half(O[r * ATTN_TC_LO + o0 + c] / l);
    }
}

extern "C" __global__ void attention_tc_d64_f16(const AttnArgs a) { attention_tc_d64(a); }
