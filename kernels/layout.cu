// layout.cu: data movement. Kernels that only move elements are instantiated per element
// width (u8, u16, u32, u64), since they never look at the values:
//   permute     out[i] = in[offset + sum(coord[d] * strides[d])]: transpose, slice (with
//               negative steps), expand, NCHW<->NHWC and any strided view made contiguous;
//   copy_rows   a 2-D block copy between row-strided tensors: one launch per input of a
//               Concat, per output of a Split;
//   pad         constant, reflect, edge and wrap padding;
//   gather      Gather along one axis with i64 indices (negative ones count from the end);
//               gather_rows copies whole rows as 16-byte vectors when they are a multiple of 16
//               bytes long;
//   where       Where with its three operands broadcast by strides;
//   transpose2d a batched 2-D transpose through 32x32 shared-memory tiles, the fast path of
//               the NCHW<->NHWC conversions ([N, C, HW] <-> [N, HW, C]);
//   transpose_narrow the same where one side is under 16 (an image's channels): a thread per
//               element of the long side.
// nhwc4_u8 an NCHW byte input of at most 4 channels channels-last, padded to 4 (INT8 stems).
// cast_<from>_<to> converts between element types.
#include "common.cuh"

template <typename W>
__device__ __forceinline__ void permute_impl(const W* __restrict__ x, W* __restrict__ y, i64 n, int rank,
                                             const Strided s, i64 offset) {
    KILN_GRID_STRIDE(i, n) y[i] = x[offset + strided_offset(i, rank, s.dims, s.strides)];
}

template <typename W>
__device__ __forceinline__ void copy_rows_impl(const W* __restrict__ x, W* __restrict__ y, i64 rows, i64 len,
                                               i64 src_stride, i64 src_off, i64 dst_stride, i64 dst_off) {
    KILN_GRID_STRIDE(i, rows * len) {
        const i64 r = i / len, j = i % len;
        y[r * dst_stride + dst_off + j] = x[r * src_stride + src_off + j];
    }
}

// Input and output are contiguous; `begin[d]` is the padding before dim d (negative crops).
struct PadArgs {
    i64 in_dims[KILN_MAX_RANK];
    i64 out_dims[KILN_MAX_RANK];
    i64 begin[KILN_MAX_RANK];
};
#define PAD_CONSTANT 0
#define PAD_REFLECT 1
#define PAD_EDGE 2
#define PAD_WRAP 3

template <typename W>
__device__ __forceinline__ void pad_impl(const W* __restrict__ x, W* __restrict__ y, i64 n, int rank, const PadArgs p,
                                         int mode, u64 value_bits) {
    W value;
    memcpy(&value, &value_bits, sizeof(W));
    KILN_GRID_STRIDE(i, n) {
        i64 rem = i, off = 0, mul = 1;
        bool outside = false;
        for (int d = rank - 1; d >= 0; --d) {
            const i64 len = p.in_dims[d];
            i64 c = rem % p.out_dims[d] - p.begin[d];
            rem /= p.out_dims[d];
            if (c < 0 || c >= len) {
                if (mode == PAD_CONSTANT || len == 0) {
                    outside = true;
                } else if (mode == PAD_EDGE) {
                    c = c < 0 ? 0 : len - 1;
                } else if (mode == PAD_WRAP) {
                    c = ((c % len) + len) % len;
                } else {
                    // Reflect without repeating the edge; period 2(len - 1).
                    if (len == 1) {
                        c = 0;
                    } else {
                        const i64 period = 2 * (len - 1);
                        c = ((c % period) + period) % period;
                        if (c >= len) c = period - c;
                    }
                }
            }
            off += c * mul;
            mul *= len;
        }
        y[i] = outside ? value : x[off];
    }
}

// out[o, j, i] = in[o, idx[j], i]; an index outside [-axis_len, axis_len) writes zero and sets
// *error to 1, which the host checks.
template <typename W>
__device__ __forceinline__ void gather_impl(const W* __restrict__ x, const i64* __restrict__ idx, W* __restrict__ y,
                                            i64 outer, i64 axis_len, i64 nidx, i64 inner, int* error) {
    KILN_GRID_STRIDE(i, outer * nidx * inner) {
        const i64 in_ = i % inner, j = (i / inner) % nidx, o = i / (inner * nidx);
        i64 k = idx[j];
        if (k < 0) k += axis_len;
        if (k < 0 || k >= axis_len) {
            y[i] = W(0);
            *error = 1;
        } else {
            y[i] = x[(o * axis_len + k) * inner + in_];
        }
    }
}

// Gather of whole rows as 16-byte vectors: out[o, j, :] = in[o, idx[j], :] where a row of
// `inner` elements is `vpr` vectors (the host only launches this when inner * sizeof(W) is a
// multiple of 16, and the entry point checks that x and y are 16-byte aligned). Each thread
// copies whole vectors; the index math is 32-bit when the output's vector count allows, since
// 64-bit division is what the element kernel spends its time on.
__device__ __forceinline__ void gather_rows_impl(const uint4* __restrict__ x, const i64* __restrict__ idx,
                                                 uint4* __restrict__ y, i64 outer, i64 axis_len, i64 nidx, i64 vpr,
                                                 int* error) {
    const i64 total = outer * nidx * vpr;
    // Below 2^31 the 32-bit index plus the grid's stride (at most 65535 * 1024) cannot wrap.
    if (total <= 0x7fffffffLL) {
        const unsigned int tv = (unsigned int)total, nv = (unsigned int)vpr, ni = (unsigned int)nidx;
        const unsigned int stride = blockDim.x * gridDim.x;
        for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < tv; i += stride) {
            const unsigned int row = i / nv, c = i - row * nv;
            const unsigned int o = row / ni, j = row - o * ni;
            i64 k = idx[j];
            if (k < 0) k += axis_len;
            if (k < 0 || k >= axis_len) {
                y[i] = make_uint4(0u, 0u, 0u, 0u);
                *error = 1;
            } else {
                y[i] = x[((i64)o * axis_len + k) * vpr + c];
            }
        }
    } else {
        KILN_GRID_STRIDE(i, total) {
            const i64 row = i / vpr, c = i - row * vpr;
            const i64 o = row / nidx, j = row - o * nidx;
            i64 k = idx[j];
            if (k < 0) k += axis_len;
            if (k < 0 || k >= axis_len) {
                y[i] = make_uint4(0u, 0u, 0u, 0u);
                *error = 1;
            } else {
                y[i] = x[(o * axis_len + k) * vpr + c];
            }
        }
    }
}

struct WhereArgs {
    i64 dims[KILN_MAX_RANK];
    i64 cond[KILN_MAX_RANK];
    i64 a[KILN_MAX_RANK];
    i64 b[KILN_MAX_RANK];
};

template <typename W>
__device__ __forceinline__ void where_impl(const bool* __restrict__ c, const W* __restrict__ a, const W* __restrict__ b,
                                           W* __restrict__ y, i64 n, int rank, const WhereArgs s) {
    KILN_GRID_STRIDE(i, n) {
        y[i] = c[strided_offset(i, rank, s.dims, s.cond)] ? a[strided_offset(i, rank, s.dims, s.a)]
                                                          : b[strided_offset(i, rank, s.dims, s.b)];
    }
}

// The same transpose where one side is narrow (an image's 3 channels): a thread per element
// of the long side loops over the narrow one, so reads and writes stay coalesced without
// launching a block per 32x32 tile that is mostly empty.
template <typename W>
__device__ __forceinline__ void transpose_narrow_impl(const W* __restrict__ x, W* __restrict__ y, i64 batch, i64 rows,
                                                      i64 cols) {
    const bool narrow_rows = rows <= cols;
    const i64 along = narrow_rows ? cols : rows, across = narrow_rows ? rows : cols;
    KILN_GRID_STRIDE(i, batch * along) {
        const i64 b = i / along, l = i - b * along;
        const W* xb = x + b * rows * cols;
        W* yb = y + b * rows * cols;
        for (i64 k = 0; k < across; ++k) {
            const i64 r = narrow_rows ? k : l, c = narrow_rows ? l : k;
            yb[c * rows + r] = xb[r * cols + c];
        }
    }
}

// y[b][c][r] = x[b][r][c]; blocks of 32x8 threads move 32x32 tiles, padded against bank
// conflicts.
template <typename W>
__device__ __forceinline__ void transpose2d_impl(const W* __restrict__ x, W* __restrict__ y, i64 batch, i64 rows,
                                                 i64 cols) {
    __shared__ W tile[32][33];
    const i64 c0 = (i64)blockIdx.x * 32, r0 = (i64)blockIdx.y * 32;
    for (i64 b = blockIdx.z; b < batch; b += gridDim.z) {
        const W* xb = x + b * rows * cols;
        W* yb = y + b * rows * cols;
        for (int k = threadIdx.y; k < 32; k += blockDim.y) {
            const i64 r = r0 + k, c = c0 + threadIdx.x;
            if (r < rows && c < cols) tile[k][threadIdx.x] = xb[r * cols + c];
        }
        __syncthreads();
        for (int k = threadIdx.y; k < 32; k += blockDim.y) {
            const i64 c = c0 + k, r = r0 + threadIdx.x;
            if (r < rows && c < cols) yb[c * rows + r] = tile[threadIdx.x][k];
        }
        __syncthreads();
    }
}

#define MOVE_KERNELS(W, sfx)                                                                                  \
    extern "C" __global__ void permute_##sfx(const W* x, W* y, i64 n, int rank, const Strided s, i64 offset) { \
        permute_impl<W>(x, y, n, rank, s, offset);                                                            \
    }                                                                                                         \
    extern "C" __global__ void copy_rows_##sfx(const W* x, W* y, i64 rows, i64 len, i64 src_stride,           \
                                               i64 src_off, i64 dst_stride, i64 dst_off) {                    \
        copy_rows_impl<W>(x, y, rows, len, src_stride, src_off, dst_stride, dst_off);                         \
    }                                                                                                         \
    extern "C" __global__ void pad_##sfx(const W* x, W* y, i64 n, int rank, const PadArgs p, int mode,        \
                                         u64 value_bits) {                                                    \
        pad_impl<W>(x, y, n, rank, p, mode, value_bits);                                                      \
    }                                                                                                         \
    /* Pad with the constant read from device memory (a value that is a graph input). */                     \
    extern "C" __global__ void pad_from_##sfx(const W* x, W* y, i64 n, int rank, const PadArgs p, int mode,   \
                                              const W* value) {                                               \
        u64 bits = 0;                                                                                         \
        memcpy(&bits, value, sizeof(W));                                                                      \
        pad_impl<W>(x, y, n, rank, p, mode, bits);                                                            \
    }                                                                                                         \
    extern "C" __global__ void gather_##sfx(const W* x, const i64* idx, W* y, i64 outer, i64 axis_len,        \
                                            i64 nidx, i64 inner, int* error) {                                \
        gather_impl<W>(x, idx, y, outer, axis_len, nidx, inner, error);                                       \
    }                                                                                                         \
    /* Gather with inner * sizeof(W) a multiple of 16: whole rows as 16-byte vectors when x and y */       \
    /* are aligned, else the element kernel (which covers any grid, being grid-stride). */                 \
    extern "C" __global__ void gather_rows_##sfx(const W* x, const i64* idx, W* y, i64 outer, i64 axis_len,   \
                                                 i64 nidx, i64 inner, int* error) {                           \
        if (aligned16(x) && aligned16(y) && (inner * (i64)sizeof(W)) % 16 == 0)                               \
            gather_rows_impl(reinterpret_cast<const uint4*>(x), idx, reinterpret_cast<uint4*>(y), outer,      \
                             axis_len, nidx, inner * (i64)sizeof(W) / 16, error);                             \
        else                                                                                                  \
            gather_impl<W>(x, idx, y, outer, axis_len, nidx, inner, error);                                   \
    }                                                                                                         \
    extern "C" __global__ void where_##sfx(const bool* c, const W* a, const W* b, W* y, i64 n, int rank,      \
                                           const WhereArgs s) {                                               \
        where_impl<W>(c, a, b, y, n, rank, s);                                                                \
    }                                                                                                         \
    extern "C" __global__ void transpose2d_##sfx(const W* x, W* y, i64 batch, i64 rows, i64 cols) {           \
        transpose2d_impl<W>(x, y, batch, rows, cols);                                                         \
    }                                                                                                         \
    extern "C" __global__ void transpose_narrow_##sfx(const W* x, W* y, i64 batch, i64 rows, i64 cols) {      \
        transpose_narrow_impl<W>(x, y, batch, rows, cols);                                                    \
    }

// y[b][p] = x[b][0..c][p] as one 4-byte word, the bytes past c zero: an NCHW input of at most 4
// byte channels (an image's) copied channels-last with its channels padded to 4, as the INT8
// implicit GEMM's narrow loader reads it.
extern "C" __global__ void nhwc4_u8(const unsigned char* __restrict__ x, unsigned* __restrict__ y, i64 batch, i64 c,
                                    i64 hw) {
#pragma unroll 1
    KILN_GRID_STRIDE(i, batch * hw) {
        // 32-bit division where the sizes allow (an image batch's pixels do).
        const i64 b = batch * hw <= 0xffffffffll ? (i64)((unsigned)i / (unsigned)hw) : i / hw, p = i - b * hw;
        unsigned v = 0;
        for (i64 ch = 0; ch < c && ch < 4; ++ch) v |= (unsigned)x[(b * c + ch) * hw + p] << (8 * ch);
        y[i] = v;
    }
}

MOVE_KERNELS(unsigned char, u8)
MOVE_KERNELS(unsigned short, u16)
MOVE_KERNELS(unsigned int, u32)
MOVE_KERNELS(u64, u64)

// Conversions go through a wide type: f32 for the half types, the value itself otherwise.
__device__ __forceinline__ float cast_wide(__half x) { return __half2float(x); }
__device__ __forceinline__ float cast_wide(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T cast_wide(T x) { return x; }

template <typename To> struct CastTo {
    template <typename W> static __device__ __forceinline__ To from(W w) {
        // Float to integer: NaN becomes 0 (the conversion saturates otherwise).
        if (w != w) return To(0);
        return (To)w;
    }
};
template <> struct CastTo<__half> {
    template <typename W> static __device__ __forceinline__ __half from(W w) { return __float2half_rn((float)w); }
};
template <> struct CastTo<__nv_bfloat16> {
    template <typename W> static __device__ __forceinline__ __nv_bfloat16 from(W w) { return __float2bfloat16_rn((float)w); }
};
template <> struct CastTo<bool> {
    template <typename W> static __device__ __forceinline__ bool from(W w) { return w != W(0); }
};
template <> struct CastTo<float> {
    template <typename W> static __device__ __forceinline__ float from(W w) { return (float)w; }
};
template <> struct CastTo<double> {
    template <typename W> static __device__ __forceinline__ double from(W w) { return (double)w; }
};

#define CAST_KERNEL(F, fs, T, ts)                                                                     \
    extern "C" __global__ void cast_##fs##_##ts(const F* __restrict__ x, T* __restrict__ y, i64 n) {  \
        KILN_GRID_STRIDE(i, n) y[i] = CastTo<T>::from(cast_wide(x[i]));                               \
    }
#define CAST_FROM(F, fs)                          \
    CAST_KERNEL(F, fs, float, f32)                \
    CAST_KERNEL(F, fs, __half, f16)               \
    CAST_KERNEL(F, fs, __nv_bfloat16, bf16)       \
    CAST_KERNEL(F, fs, double, f64)               \
    CAST_KERNEL(F, fs, signed char, i8)           \
    CAST_KERNEL(F, fs, unsigned char, u8)         \
    CAST_KERNEL(F, fs, int, i32)                  \
    CAST_KERNEL(F, fs, i64, i64)                  \
    CAST_KERNEL(F, fs, bool, bool)

CAST_FROM(float, f32)
CAST_FROM(__half, f16)
CAST_FROM(__nv_bfloat16, bf16)
CAST_FROM(double, f64)
CAST_FROM(signed char, i8)
CAST_FROM(unsigned char, u8)
CAST_FROM(int, i32)
CAST_FROM(i64, i64)
CAST_FROM(bool, bool)
