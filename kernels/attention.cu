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
    // attention_mma_q only: the output quantized to i8 as well (laid out as `o`), by
    // QuantizeLinear's Cast<i8>(Clip(Round(o / oq_c))) of the stored (rounded) output, with
    // oq_r = 1 / oq_c for kiln_div_k; null for none. `o` itself may then be null (nothing
    // else reads it).
    signed char* oq;
    float oq_c, oq_r;
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

// attention_mma[_w1]_d{64,128}_{f16,bf16}: the same attention on tensor cores for f16 and bf16
// with D = DV = 64 or 128, flash-attention-2 style with `mma.sync` m16n8k16 (f32 accumulation).
// A block of W warps (4, or 1 for launches too small to fill the GPU) takes 16 * W query rows of
// one (batch, head), 16 per warp, and walks the keys in tiles of 64 that it loads into shared
// memory in 16-byte pieces. Each warp keeps its Q fragments, its scores and its 16 x D output in
// registers: S = Q K^T from K tiles read with ldmatrix, the bias, the running maximum and sum of
// each row (a row's scores live in the four lanes of a quad), P converted in registers from the
// score accumulators into the A operand of P V (V read with ldmatrix.trans), and the output
// rescaled in place. Lane l holds rows l / 4 and l / 4 + 8 of the warp's 16, and columns
// (l % 4) * 2 and + 1 of every 8-wide tile (the PTX fragment layout of m16n8k16).
//
// The per-score work is what bounds these kernels (BERT-base: 128 keys, two tiles), so it is
// kept small. Scores go to log2 units with the scale folded in (one multiply, or one multiply
// and one FMA with an additive mask). An additive mask over all keys, with nothing else to add,
// is read from row pointers computed once, two keys per 4-byte load where keys are contiguous,
// and once for both of a lane's rows where it broadcasts over rows; any other bias (bool mask,
// causal, key padding, softcap) goes through attn_bias as the other kernels do. Only the last
// tile checks keys against sk. Rows past sq are computed, from zero Q, but never stored.

// The host emulation (crates/kiln-cuda/emu) has no tensor cores for these: the GPU tests run
// them (gpu_attention).
#ifndef KILN_HOST_EMU
#define ATTN_MMA_KT 64
// log2(e): scores are kept in log2 units for exp2.
#define ATTN_LOG2E 1.4426950408889634f

// c += a b for one m16n8k16 tile: a four registers of the A fragment, b two of the B fragment.
template <typename T> __device__ __forceinline__ void attn_mma(float* c, const unsigned* a, const unsigned* b);
template <> __device__ __forceinline__ void attn_mma<__half>(float* c, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void attn_mma<__nv_bfloat16>(float* c, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ unsigned attn_smem_addr(const void* p) {
    unsigned addr;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }\n" : "=r"(addr) : "l"(p));
    return addr;
}

// Four 8x8 matrices of 16-bit elements from shared memory; lane l gives the address of row
// l % 8 of matrix l / 8. `trans` delivers them transposed.
template <bool TRANS> __device__ __forceinline__ void attn_ldsm4(unsigned* r, const void* p) {
    if (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(attn_smem_addr(p)));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(attn_smem_addr(p)));
    }
}

// Elements p[0] and p[1] as one register, p[0] in the low half.
template <typename T> __device__ __forceinline__ unsigned attn_ld2(const T* p, bool aligned) {
    if (aligned) return *(const unsigned*)p;
    const unsigned short* u = (const unsigned short*)p;
    return (unsigned)u[0] | ((unsigned)u[1] << 16);
}

__device__ __forceinline__ void attn_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N of the committed groups are still in flight.
template <int N> __device__ __forceinline__ void attn_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Starts loading keys t0 .. t0 + ATTN_MMA_KT of X (K or V, row stride `ss`) into `tile` (rows
// of pitch D + 8): 16-byte cp.async pieces where `vec`, zeros (src-size 0) past `sk`; element
// by element, synchronously, where rows are not 16-byte aligned.
template <typename T, int D, int W>
__device__ __forceinline__ void attn_load_tile(T* tile, const T* X, i64 ss, i64 t0, i64 sk, bool vec) {
    constexpr int LD = D + 8, CH = D / 8;
    if (vec) {
#pragma unroll
        for (int c = threadIdx.x; c < ATTN_MMA_KT * CH; c += W * 32) {
            const int r = c / CH, col = (c % CH) * 8;
            const i64 key = t0 + r;
            const bool in = key < sk;
            const T* src = in ? X + key * ss + col : X;
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(attn_smem_addr(&tile[r * LD + col])),
                         "l"(src), "r"(in ? 16 : 0));
        }
    } else {
        // One piece at a time: unrolled, the loads of all of them would hold registers at once.
#pragma unroll 1
        for (int c = threadIdx.x; c < ATTN_MMA_KT * CH; c += W * 32) {
            const int r = c / CH, col = (c % CH) * 8;
            const i64 key = t0 + r;
            const unsigned short* p = (const unsigned short*)X + key * ss + col;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (key < sk)
                v = make_uint4(p[0] | ((unsigned)p[1] << 16), p[2] | ((unsigned)p[3] << 16),
                               p[4] | ((unsigned)p[5] << 16), p[6] | ((unsigned)p[7] << 16));
            *(uint4*)&tile[r * LD + col] = v;
        }
    }
}

// Additive mask elements k and k + 1 of a row, `m` at the tile's first key and `ms` the key
// stride, as one register with element k in the low half. Those at or past `lim` (keys past
// sk) are not read and give 0.
__device__ __forceinline__ unsigned attn_mask2(const unsigned short* m, i64 ms, int k, int lim) {
    const unsigned lo = k < lim ? m[k * ms] : 0u;
    const unsigned hi = k + 1 < lim ? m[(k + 1) * ms] : 0u;
    return lo | hi << 16;
}

// QUANT: the output is also stored quantized (`a.oq`; the `attention_mma_q_*` kernels), a
// separate instantiation so that the plain kernels' code stays as it was.
template <typename T, int D, int W, bool QUANT>
__device__ __forceinline__ void attention_mma(const AttnArgs a) {
    constexpr int KT = ATTN_MMA_KT;
    constexpr int LD = D + 8;  // row pitch in elements: 16 bytes over D, off the banks for ldmatrix
    constexpr int NK = D / 16;  // k-steps of Q K^T
    constexpr int ND = D / 8;   // 8-wide column tiles of the output
    constexpr int NS = KT / 8;  // 8-wide key tiles of the scores
    __align__(16) __shared__ T ks[KT * LD];
    __align__(16) __shared__ T vs[KT * LD];
    const float ninf = attn_ninf();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, q4 = lane & 3;
    const i64 b = blockIdx.z, h = blockIdx.y, hkv = h / a.kv_group;
    const i64 row_a = ((i64)blockIdx.x * W + warp) * 16 + g, row_b = row_a + 8;
    const T* Q = (const T*)a.q + b * a.q_sb + h * a.q_sh;
    const T* K = (const T*)a.k + b * a.k_sb + hkv * a.k_sh;
    const T* V = (const T*)a.v + b * a.v_sb + hkv * a.v_sh;
    const void* M = (a.mask_kind == ATTN_MASK_BOOL ? (const char*)a.mask + (b * a.m_sb + h * a.m_sh)
                                                   : (const char*)a.mask + (b * a.m_sb + h * a.m_sh) * (i64)sizeof(T));
    const bool add_only = a.mask_kind == ATTN_MASK_ADD && a.mask_len >= a.sk && !a.is_causal &&
                          a.nonpad == nullptr && !(a.softcap > 0.0f);
    const bool biased = !add_only && attn_biased(a);
    // K and V rows move in 16-byte pieces where they are aligned so; else element by element.
    const bool kv_vec = (((unsigned long long)K | (unsigned long long)V) & 15) == 0 && a.k_ss % 8 == 0 &&
                        a.v_ss % 8 == 0;
    const bool q_pair = ((unsigned long long)Q & 3) == 0 && a.q_ss % 2 == 0;
    // Causal without softcap: keys past the block's last row + offset weigh exactly 0.
    i64 kend = a.sk;
    if (a.is_causal && !(a.softcap > 0.0f)) {
        const i64 last = ((i64)blockIdx.x + 1) * W * 16 - 1 + a.causal_offset + 1;
        kend = last < kend ? (last < 0 ? 0 : last) : kend;
    }

    // Tiles move with cp.async: K of the next tile loads while this one's softmax and P V
    // run, V while its scores are computed (groups in order: K0 V0 K1 V1 ...). The first
    // tile's loads start before Q's, so that their latencies overlap.
    attn_load_tile<T, D, W>(ks, K, a.k_ss, 0, a.sk, kv_vec);
    attn_commit();
    attn_load_tile<T, D, W>(vs, V, a.v_ss, 0, a.sk, kv_vec);
    attn_commit();
    // Rows past sq are computed like the others, from zero Q, but never stored: no other row
    // reads them. Where they address the mask they read the last row's, within bounds.
    const bool in_a = row_a < a.sq, in_b = row_b < a.sq;
    const i64 mrow_a = in_a ? row_a : a.sq - 1, mrow_b = in_b ? row_b : a.sq - 1;
    // The warp's Q rows as A fragments, for every k-step over the head dim.
    const T* qa = Q + row_a * a.q_ss + q4 * 2;
    const T* qb = Q + row_b * a.q_ss + q4 * 2;
    unsigned qf[NK][4];
#pragma unroll
    for (int kk = 0; kk < NK; ++kk) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int col = kk * 16 + (r >> 1) * 8;
            qf[kk][r] = (r & 1) ? (in_b ? attn_ld2<T>(qb + col, q_pair) : 0u)
                                : (in_a ? attn_ld2<T>(qa + col, q_pair) : 0u);
        }
    }
    float o[ND][4];
#pragma unroll
    for (int n = 0; n < ND; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_a = ninf, m_b = ninf, l_a = 0.0f, l_b = 0.0f;
    // The additive mask (add_only) of rows a and b, read two keys at a time as one word where
    // keys are contiguous and pairs 4-byte aligned; one row's for both when it broadcasts over
    // rows (BERT's padding mask).
    const unsigned short* ma = (const unsigned short*)M + mrow_a * a.m_sq;
    const unsigned short* mb = (const unsigned short*)M + mrow_b * a.m_sq;
    const bool m_pair = a.m_sk == 1 && a.m_sq % 2 == 0 && ((unsigned long long)M & 3) == 0;
    // Scores go to log2 units with the scale in one multiply: the exponentials are exp2.
    const float scale2 = a.scale * ATTN_LOG2E;

    for (i64 t0 = 0; t0 < kend; t0 += KT) {
        const bool more = t0 + KT < kend;
        // Keys of this tile below sk; only the last tile can have fewer than KT.
        const int lim = a.sk - t0 < KT ? (int)(a.sk - t0) : KT;
        // The mask loads start before the scores' tensor-core work, which hides their latency.
        unsigned mka[NS] = {}, mkb[NS] = {};
        if (add_only) {
            const unsigned short* pa = ma + t0 * a.m_sk;
            const unsigned short* pb = mb + t0 * a.m_sk;
            if (m_pair && lim == KT) {
#pragma unroll
                for (int j = 0; j < NS; ++j) mka[j] = *(const unsigned*)(pa + j * 8 + q4 * 2);
                if (a.m_sq != 0) {
#pragma unroll
                    for (int j = 0; j < NS; ++j) mkb[j] = *(const unsigned*)(pb + j * 8 + q4 * 2);
                }
            } else {
#pragma unroll
                for (int j = 0; j < NS; ++j) {
                    mka[j] = attn_mask2(pa, a.m_sk, j * 8 + q4 * 2, lim);
                    mkb[j] = attn_mask2(pb, a.m_sk, j * 8 + q4 * 2, lim);
                }
            }
        }
        attn_wait<1>();  // K of this tile (V of it may still be on its way)
        __syncthreads();
        // S = Q K^T: key tile j's B fragments are rows j * 8.. of K, two k-steps per ldmatrix.
        float s[NS][4];
#pragma unroll
        for (int j = 0; j < NS; ++j) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < NK; kk += 2) {
                unsigned kb[4];
                attn_ldsm4<false>(kb, &ks[(j * 8 + (lane & 7)) * LD + kk * 16 + (lane >> 3) * 8]);
                attn_mma<T>(s[j], qf[kk], kb);
                attn_mma<T>(s[j], qf[kk + 1], kb + 2);
            }
        }
        __syncthreads();  // every warp has read this K tile
        if (more) attn_load_tile<T, D, W>(ks, K, a.k_ss, t0 + KT, a.sk, kv_vec);
        attn_commit();
        // Scale and bias. Lane l holds keys j * 8 + (l % 4) * 2 and + 1 of the tile, rows a (e < 2)
        // and b.
        if (add_only) {
            if (m_pair && lim == KT && a.m_sq == 0) {
#pragma unroll
                for (int j = 0; j < NS; ++j) mkb[j] = mka[j];
            }
#pragma unroll
            for (int j = 0; j < NS; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float mk = Vec16<T>::get(e < 2 ? mka[j] : mkb[j], e & 1);
                    s[j][e] = fmaf(mk, ATTN_LOG2E, s[j][e] * scale2);
                }
            }
        } else if (biased) {
            // The scores rotate through s[0], so that the bias code (large, with the softcap's
            // tanh) appears once and not for every score; this path is not BERT's.
#pragma unroll 1
            for (int j = 0; j < NS; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int k = j * 8 + q4 * 2 + (e & 1);
                    float v = s[0][e] * a.scale;
                    if (k < lim) v = attn_softcap(a, attn_bias<T>(a, M, b, e < 2 ? mrow_a : mrow_b, t0 + k) + v);
                    v *= ATTN_LOG2E;
#pragma unroll
                    for (int jj = 0; jj + 1 < NS; ++jj) s[jj][e] = s[jj + 1][e];
                    s[NS - 1][e] = v;
                }
            }
        } else {
#pragma unroll
            for (int j = 0; j < NS; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) s[j][e] *= scale2;
            }
        }
        if (lim < KT) {
#pragma unroll
            for (int j = 0; j < NS; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (j * 8 + q4 * 2 + (e & 1) >= lim) s[j][e] = ninf;
            }
        }
        // The tile's maximum of rows a and b, over the quad.
        float tmax_a = ninf, tmax_b = ninf;
#pragma unroll
        for (int j = 0; j < NS; ++j) {
            tmax_a = fmaxf(tmax_a, fmaxf(s[j][0], s[j][1]));
            tmax_b = fmaxf(tmax_b, fmaxf(s[j][2], s[j][3]));
        }
#pragma unroll
        for (int x = 1; x < 4; x <<= 1) {
            tmax_a = fmaxf(tmax_a, __shfl_xor_sync(0xffffffffu, tmax_a, x));
            tmax_b = fmaxf(tmax_b, __shfl_xor_sync(0xffffffffu, tmax_b, x));
        }
        const float mn_a = fmaxf(m_a, tmax_a), mn_b = fmaxf(m_b, tmax_b);
        // A row with no finite score yet subtracts 0 rather than -inf, so that its exponentials
        // are exp2(-inf) = 0 rather than NaN; its output and sum are still all 0.
        const float mz_a = mn_a == ninf ? 0.0f : mn_a, mz_b = mn_b == ninf ? 0.0f : mn_b;
        const float al_a = exp2f(m_a - mz_a), al_b = exp2f(m_b - mz_b);
        float ps_a = 0.0f, ps_b = 0.0f;
#pragma unroll
        for (int j = 0; j < NS; ++j) {
            s[j][0] = exp2f(s[j][0] - mz_a);
            s[j][1] = exp2f(s[j][1] - mz_a);
            s[j][2] = exp2f(s[j][2] - mz_b);
            s[j][3] = exp2f(s[j][3] - mz_b);
            ps_a += s[j][0] + s[j][1];
            ps_b += s[j][2] + s[j][3];
        }
        // Each lane's share of its rows' sums; the quad adds them up at the end.
        l_a = l_a * al_a + ps_a;
        l_b = l_b * al_b + ps_b;
        m_a = mn_a;
        m_b = mn_b;
#pragma unroll
        for (int n = 0; n < ND; ++n) {
            o[n][0] *= al_a;
            o[n][1] *= al_a;
            o[n][2] *= al_b;
            o[n][3] *= al_b;
        }
        attn_wait<1>();  // V of this tile (the next K may still be on its way)
        __syncthreads();
        // O += P V: the score accumulators of key tiles 2kk and 2kk + 1 are the A fragment of
        // k-step kk; V's B fragments come transposed, two output tiles per ldmatrix.
#pragma unroll
        for (int kk = 0; kk < KT / 16; ++kk) {
            const unsigned pa[4] = {Vec16<T>::put(s[2 * kk][0], s[2 * kk][1]),
                                    Vec16<T>::put(s[2 * kk][2], s[2 * kk][3]),
                                    Vec16<T>::put(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    Vec16<T>::put(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            const int mi = lane >> 3;
#pragma unroll
            for (int n = 0; n < ND; n += 2) {
                unsigned vb[4];
                attn_ldsm4<true>(vb, &vs[(kk * 16 + (mi & 1) * 8 + (lane & 7)) * LD + (n + (mi >> 1)) * 8]);
                attn_mma<T>(o[n], pa, vb);
                attn_mma<T>(o[n + 1], pa, vb + 2);
            }
        }
        __syncthreads();  // every warp has read this V tile
        if (more) attn_load_tile<T, D, W>(vs, V, a.v_ss, t0 + KT, a.sk, kv_vec);
        attn_commit();
    }
    attn_wait<0>();
#pragma unroll
    for (int x = 1; x < 4; x <<= 1) {
        l_a += __shfl_xor_sync(0xffffffffu, l_a, x);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, x);
    }
    // A row whose scores are all -inf has l = 0 and comes out NaN (0 * inf), as the reference
    // does.
    T* O = (T*)a.o + b * a.o_sb + h * a.o_sh;
    const bool o_pair = ((unsigned long long)O & 3) == 0 && a.o_ss % 2 == 0;
    signed char* OQ = a.oq + b * a.o_sb + h * a.o_sh;
    const bool oq_pair = ((unsigned long long)OQ & 1) == 0 && a.o_ss % 2 == 0;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        if (!(half ? in_b : in_a)) continue;
        const i64 row = half ? row_b : row_a;
        const float r = 1.0f / (half ? l_b : l_a);
        T* orow = O + row * a.o_ss + q4 * 2;
        signed char* qrow = OQ + row * a.o_ss + q4 * 2;
#pragma unroll
        for (int n = 0; n < ND; ++n) {
            const float x = o[n][2 * half] * r, y = o[n][2 * half + 1] * r;
            if constexpr (QUANT) {
                // The quantize reads the output as stored: rounded to T first.
                const signed char qx = kiln_rni_sat_s8(kiln_div_k(to_f32(from_f32<T>(x)), a.oq_c, a.oq_r));
                const signed char qy = kiln_rni_sat_s8(kiln_div_k(to_f32(from_f32<T>(y)), a.oq_c, a.oq_r));
                if (oq_pair) {
                    *(unsigned short*)(qrow + n * 8) =
                        (unsigned short)((unsigned char)qx | (unsigned)(unsigned char)qy << 8);
                } else {
                    qrow[n * 8] = qx;
                    qrow[n * 8 + 1] = qy;
                }
                if (!a.o) continue;
            }
            if (o_pair) {
                *(unsigned*)(orow + n * 8) = Vec16<T>::put(x, y);
            } else {
                orow[n * 8] = from_f32<T>(x);
                orow[n * 8 + 1] = from_f32<T>(y);
            }
        }
    }
}

#define ATTN_MMA_KERNELS(D, T, sfx, MINB)                                                                    \
    extern "C" __global__ void __launch_bounds__(128, MINB) attention_mma_d##D##_##sfx(const AttnArgs a) {   \
        attention_mma<T, D, 4, false>(a);                                                                    \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(32) attention_mma_w1_d##D##_##sfx(const AttnArgs a) {       \
        attention_mma<T, D, 1, false>(a);                                                                    \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(128, MINB) attention_mma_q_d##D##_##sfx(const AttnArgs a) { \
        attention_mma<T, D, 4, true>(a);                                                                     \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(32) attention_mma_q_w1_d##D##_##sfx(const AttnArgs a) {     \
        attention_mma<T, D, 1, true>(a);                                                                     \
    }

// MINB: blocks of four warps an SM holds at least. Three for D = 64 caps a thread at 168
// registers (left free, the compiler takes over 200, which fits only two; four would spill);
// D = 128 needs about 250 and so fits two.
ATTN_MMA_KERNELS(64, __half, f16, 3)
ATTN_MMA_KERNELS(128, __half, f16, 2)
ATTN_MMA_KERNELS(64, __nv_bfloat16, bf16, 3)
ATTN_MMA_KERNELS(128, __nv_bfloat16, bf16, 2)
#endif  // KILN_HOST_EMU
