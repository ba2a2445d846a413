// index.cu: indexing ops and the training losses.
// Kernels that only move elements are instantiated per element width (u8, u16, u32, u64):
//   gather_elements  GatherElements, indices shaped like the output;
//   gather_nd        GatherND, one index tuple per chunk of the output;
//   trilu            Trilu over the last two dims;
//   eyelike          EyeLike, the `one` given as its bits;
//   onehot           OneHot with i64 indices and the (off, on) pair read from the device.
// Kernels that look at values are instantiated per element type:
//   scatter_elements ScatterElements (and the old Scatter), one thread per line along the axis
//                    that applies its updates in index order, so duplicates resolve as the
//                    reference does (the last write wins) without racing;
//   scatter_nd       ScatterND, one thread per element of a chunk that walks the index tuples
//                    in order, for the same reason;
//   cumsum           CumSum, one thread per line;
//   topk             TopK, one thread per element that counts the elements ranked before it
//                    (NaN ranks as the largest value, ties go to the lower index);
//   hardmax          Hardmax, one thread per row, 1 at the first maximum;
//   nll_loss         NegativeLogLikelihoodLoss over [N, C, D] log-probabilities (also the
//                    second half of SoftmaxCrossEntropyLoss); a reduced loss runs in one block.
// Indices are i64 (the host casts others first); negative ones count from the end. An index
// out of range sets *error to 1, which the host checks, and its element is skipped (written
// as zero by the gathers). Float math is in f32 (f64 for f64), integer math wraps.
#include "common.cuh"

#define SCATTER_NONE 0
#define SCATTER_ADD 1
#define SCATTER_MUL 2
#define SCATTER_MAX 3
#define SCATTER_MIN 4

#define LOSS_NONE 0
#define LOSS_SUM 1
#define LOSS_MEAN 2

// The compute type of an element type and its arithmetic: integers add and multiply with
// wrapping (through u64, as signed overflow is undefined in C++), floats in f32 or f64.
template <typename T> struct Num {
    typedef T A;
    static __device__ __forceinline__ A up(T x) { return x; }
    static __device__ __forceinline__ T down(A x) { return x; }
    static __device__ __forceinline__ A add(A a, A b) { return (A)(i64)((u64)(i64)a + (u64)(i64)b); }
    static __device__ __forceinline__ A mul(A a, A b) { return (A)(i64)((u64)(i64)a * (u64)(i64)b); }
};
template <> struct Num<float> {
    typedef float A;
    static __device__ __forceinline__ A up(float x) { return x; }
    static __device__ __forceinline__ float down(A x) { return x; }
    static __device__ __forceinline__ A add(A a, A b) { return a + b; }
    static __device__ __forceinline__ A mul(A a, A b) { return a * b; }
};
template <> struct Num<double> {
    typedef double A;
    static __device__ __forceinline__ A up(double x) { return x; }
    static __device__ __forceinline__ double down(A x) { return x; }
    static __device__ __forceinline__ A add(A a, A b) { return a + b; }
    static __device__ __forceinline__ A mul(A a, A b) { return a * b; }
};
template <> struct Num<__half> {
    typedef float A;
    static __device__ __forceinline__ A up(__half x) { return __half2float(x); }
    static __device__ __forceinline__ __half down(A x) { return __float2half_rn(x); }
    static __device__ __forceinline__ A add(A a, A b) { return a + b; }
    static __device__ __forceinline__ A mul(A a, A b) { return a * b; }
};
template <> struct Num<__nv_bfloat16> {
    typedef float A;
    static __device__ __forceinline__ A up(__nv_bfloat16 x) { return __bfloat162float(x); }
    static __device__ __forceinline__ __nv_bfloat16 down(A x) { return __float2bfloat16_rn(x); }
    static __device__ __forceinline__ A add(A a, A b) { return a + b; }
    static __device__ __forceinline__ A mul(A a, A b) { return a * b; }
};

// `k` wrapped into [0, len), or -1 when it is outside [-len, len).
__device__ __forceinline__ i64 wrap_index(i64 k, i64 len) {
    if (k < 0) k += len;
    return (k < 0 || k >= len) ? -1 : k;
}

// ---------------------------------------------------------------------------------------------
// Element movers.

// y[i] = x[off(i) + k * axis_stride] with k = idx[i] wrapped into [0, axis_len): `s` has the
// index (= output) dims and the data strides, with the stride of the axis set to 0.
template <typename W>
__device__ __forceinline__ void gather_elements_impl(const W* __restrict__ x, const i64* __restrict__ idx,
                                                     W* __restrict__ y, i64 n, int rank, const Strided s,
                                                     i64 axis_len, i64 axis_stride, int* error) {
    KILN_GRID_STRIDE(i, n) {
        const i64 k = wrap_index(idx[i], axis_len);
        if (k < 0) {
            y[i] = W(0);
            *error = 1;
        } else {
            y[i] = x[strided_offset(i, rank, s.dims, s.strides) + k * axis_stride];
        }
    }
}

// Output element i is element j of chunk t; tuple t (k indices) picks the chunk in batch
// t / tuples: `s` has the k data dims the tuple indexes and their strides.
template <typename W>
__device__ __forceinline__ void gather_nd_impl(const W* __restrict__ x, const i64* __restrict__ idx, W* __restrict__ y,
                                               i64 n, i64 chunk, int k, i64 tuples, i64 batch_stride, const Strided s,
                                               int* error) {
    KILN_GRID_STRIDE(i, n) {
        const i64 t = i / chunk, j = i % chunk;
        i64 off = (t / tuples) * batch_stride;
        bool bad = false;
        for (int m = 0; m < k; ++m) {
            const i64 c = wrap_index(idx[t * k + m], s.dims[m]);
            if (c < 0) bad = true;
            else off += c * s.strides[m];
        }
        if (bad) {
            y[i] = W(0);
            *error = 1;
        } else {
            y[i] = x[off + j];
        }
    }
}

// Keeps element (r, c) of each [rows, cols] matrix where c - r >= k (upper) or <= k (lower);
// k is *k_ptr where the graph computes it, else k_const.
template <typename W>
__device__ __forceinline__ void trilu_impl(const W* __restrict__ x, W* __restrict__ y, i64 n, i64 rows, i64 cols,
                                           const i64* k_ptr, i64 k_const, int upper) {
    const i64 k = k_ptr ? *k_ptr : k_const;
    KILN_GRID_STRIDE(i, n) {
        const i64 c = i % cols, r = (i / cols) % rows;
        const i64 d = c - r;
        const bool keep = upper ? d >= k : d <= k;
        y[i] = keep ? x[i] : W(0);
    }
}

template <typename W>
__device__ __forceinline__ void eyelike_impl(W* __restrict__ y, i64 n, i64 cols, i64 k, u64 one_bits) {
    W one;
    memcpy(&one, &one_bits, sizeof(W));
    KILN_GRID_STRIDE(i, n) {
        const i64 c = i % cols, r = i / cols;
        y[i] = c - r == k ? one : W(0);
    }
}

// y[o, d, i] = on where idx[o, i] (wrapped by depth) is d, off elsewhere; values = (off, on).
template <typename W>
__device__ __forceinline__ void onehot_impl(const i64* __restrict__ idx, const W* __restrict__ values,
                                            W* __restrict__ y, i64 outer, i64 depth, i64 inner) {
    const W off = values[0], on = values[1];
    KILN_GRID_STRIDE(e, outer * depth * inner) {
        const i64 in_ = e % inner, d = (e / inner) % depth, o = e / (inner * depth);
        i64 j = idx[o * inner + in_];
        if (j < 0) j += depth;
        y[e] = j == d ? on : off;
    }
}

#define MOVE_KERNELS(W, sfx)                                                                                 \
    extern "C" __global__ void gather_elements_##sfx(const W* x, const i64* idx, W* y, i64 n, int rank,      \
                                                     const Strided s, i64 axis_len, i64 axis_stride,         \
                                                     int* error) {                                           \
        gather_elements_impl<W>(x, idx, y, n, rank, s, axis_len, axis_stride, error);                        \
    }                                                                                                        \
    extern "C" __global__ void gather_nd_##sfx(const W* x, const i64* idx, W* y, i64 n, i64 chunk, int k,    \
                                               i64 tuples, i64 batch_stride, const Strided s, int* error) {  \
        gather_nd_impl<W>(x, idx, y, n, chunk, k, tuples, batch_stride, s, error);                           \
    }                                                                                                        \
    extern "C" __global__ void trilu_##sfx(const W* x, W* y, i64 n, i64 rows, i64 cols, const i64* k_ptr,    \
                                           i64 k_const, int upper) {                                         \
        trilu_impl<W>(x, y, n, rows, cols, k_ptr, k_const, upper);                                           \
    }                                                                                                        \
    extern "C" __global__ void eyelike_##sfx(W* y, i64 n, i64 cols, i64 k, u64 one_bits) {                   \
        eyelike_impl<W>(y, n, cols, k, one_bits);                                                            \
    }                                                                                                        \
    extern "C" __global__ void onehot_##sfx(const i64* idx, const W* values, W* y, i64 outer, i64 depth,     \
                                            i64 inner) {                                                     \
        onehot_impl<W>(idx, values, y, outer, depth, inner);                                                 \
    }

MOVE_KERNELS(unsigned char, u8)
MOVE_KERNELS(unsigned short, u16)
MOVE_KERNELS(unsigned int, u32)
MOVE_KERNELS(u64, u64)

// ---------------------------------------------------------------------------------------------
// Value kernels.

template <typename T>
__device__ __forceinline__ T scatter_combine(T a, T b, int reduction) {
    typedef Num<T> N;
    if (reduction == SCATTER_NONE) return b;
    const typename N::A x = N::up(a), u = N::up(b);
    // As the reference: the update replaces the value only when strictly larger (smaller).
    if (reduction == SCATTER_MAX) return u > x ? b : a;
    if (reduction == SCATTER_MIN) return u < x ? b : a;
    return N::down(reduction == SCATTER_ADD ? N::add(x, u) : N::mul(x, u));
}

// `y` already holds the data. Line (o, in) of the indices, [outer, len, inner] around the
// axis, applies its `len` updates in order. `s` has the index dims and the output strides,
// with the stride of the axis set to 0.
template <typename T>
__device__ __forceinline__ void scatter_elements_impl(const i64* __restrict__ idx, const T* __restrict__ upd,
                                                      T* __restrict__ y, i64 outer, i64 len, i64 inner, int rank,
                                                      const Strided s, i64 axis_len, i64 axis_stride, int reduction,
                                                      int* error) {
    KILN_GRID_STRIDE(line, outer * inner) {
        const i64 o = line / inner, in_ = line % inner;
        const i64 first = o * len * inner + in_;
        const i64 base = strided_offset(first, rank, s.dims, s.strides);
        for (i64 j = 0; j < len; ++j) {
            const i64 e = first + j * inner;
            const i64 k = wrap_index(idx[e], axis_len);
            if (k < 0) {
                *error = 1;
                continue;
            }
            T* dst = y + base + k * axis_stride;
            *dst = scatter_combine<T>(*dst, upd[e], reduction);
        }
    }
}

// `y` already holds the data. Thread j applies element j of every update chunk, tuple by
// tuple; `s` has the k data dims a tuple indexes and their strides.
template <typename T>
__device__ __forceinline__ void scatter_nd_impl(const i64* __restrict__ idx, const T* __restrict__ upd,
                                                T* __restrict__ y, i64 chunk, i64 ntuples, int k, const Strided s,
                                                int reduction, int* error) {
    KILN_GRID_STRIDE(j, chunk) {
        for (i64 t = 0; t < ntuples; ++t) {
            i64 off = 0;
            bool bad = false;
            for (int m = 0; m < k; ++m) {
                const i64 c = wrap_index(idx[t * k + m], s.dims[m]);
                if (c < 0) bad = true;
                else off += c * s.strides[m];
            }
            if (bad) {
                *error = 1;
                continue;
            }
            y[off + j] = scatter_combine<T>(y[off + j], upd[t * chunk + j], reduction);
        }
    }
}

template <typename T>
__device__ __forceinline__ void cumsum_impl(const T* __restrict__ x, T* __restrict__ y, i64 outer, i64 n, i64 inner,
                                            int exclusive, int reverse) {
    typedef Num<T> N;
    KILN_GRID_STRIDE(line, outer * inner) {
        const i64 o = line / inner, in_ = line % inner;
        typename N::A acc = 0;
        for (i64 step = 0; step < n; ++step) {
            const i64 j = reverse ? n - 1 - step : step;
            const i64 at = (o * n + j) * inner + in_;
            const typename N::A v = N::up(x[at]);
            if (exclusive) y[at] = N::down(acc);
            acc = N::add(acc, v);
            if (!exclusive) y[at] = N::down(acc);
        }
    }
}

// Whether a ranks above b: NaN is the largest value, NaNs tie.
template <typename A>
__device__ __forceinline__ bool topk_greater(A a, A b) {
    if (b != b) return false;
    if (a != a) return true;
    return a > b;
}

template <typename T>
__device__ __forceinline__ void topk_impl(const T* __restrict__ x, T* __restrict__ values, i64* __restrict__ indices,
                                          i64 outer, i64 n, i64 inner, i64 k, int largest) {
    typedef Num<T> N;
    KILN_GRID_STRIDE(e, outer * n * inner) {
        const i64 in_ = e % inner, j = (e / inner) % n, o = e / (inner * n);
        const T* row = x + o * n * inner + in_;
        const typename N::A v = N::up(row[j * inner]);
        i64 rank = 0;
        for (i64 m = 0; m < n && rank < k; ++m) {
            if (m == j) continue;
            const typename N::A w = N::up(row[m * inner]);
            const bool better = largest ? topk_greater(w, v) : topk_greater(v, w);
            const bool tie = !topk_greater(w, v) && !topk_greater(v, w);
            if (better || (tie && m < j)) ++rank;
        }
        if (rank < k) {
            const i64 at = (o * k + rank) * inner + in_;
            values[at] = row[j * inner];
            indices[at] = j;
        }
    }
}

template <typename T>
__device__ __forceinline__ void hardmax_impl(const T* __restrict__ x, T* __restrict__ y, i64 outer, i64 n, i64 inner) {
    typedef Num<T> N;
    KILN_GRID_STRIDE(line, outer * inner) {
        const i64 o = line / inner, in_ = line % inner;
        const i64 base = o * n * inner + in_;
        // The first maximum: a later element wins only when strictly larger.
        i64 best = 0;
        typename N::A bv = N::up(x[base]);
        for (i64 j = 1; j < n; ++j) {
            const typename N::A v = N::up(x[base + j * inner]);
            if (v > bv) {
                bv = v;
                best = j;
            }
        }
        for (i64 j = 0; j < n; ++j) y[base + j * inner] = N::down(j == best ? 1 : 0);
    }
}

// Sums `v` across the block; every thread gets the result. Ends with a barrier.
template <typename A>
__device__ __forceinline__ A block_sum(A v) {
    __shared__ A scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    A r = lane < nwarps ? scratch[lane] : A(0);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
    __syncthreads();
    return r;
}

// Loss and weight of target element i of [N, D] over log-probabilities [N, C, D]; an ignored
// target weighs 0, an out-of-range one raises the error and weighs 0.
template <typename T>
__device__ __forceinline__ void nll_term(const T* __restrict__ x, const i64* __restrict__ target,
                                         const T* __restrict__ weight, i64 i, i64 c, i64 d, i64 ignore_index,
                                         int has_ignore, int* error, typename Num<T>::A* loss,
                                         typename Num<T>::A* w) {
    typedef Num<T> N;
    const i64 t = target[i];
    *loss = 0;
    *w = 0;
    if (has_ignore && t == ignore_index) return;
    if (t < 0 || t >= c) {
        *error = 1;
        return;
    }
    const i64 b = i / d, j = i % d;
    *w = weight ? N::up(weight[t]) : (typename N::A)1;
    *loss = -N::up(x[(b * c + t) * d + j]) * *w;
}

// reduction none: one loss per target element (any grid). Sum and mean: the launch is one
// block, which writes the scalar.
template <typename T>
__device__ __forceinline__ void nll_loss_impl(const T* __restrict__ x, const i64* __restrict__ target,
                                              const T* __restrict__ weight, T* __restrict__ y, i64 total, i64 c,
                                              i64 d, i64 ignore_index, int has_ignore, int reduction, int* error) {
    typedef Num<T> N;
    typedef typename N::A A;
    if (reduction == LOSS_NONE) {
        KILN_GRID_STRIDE(i, total) {
            A loss, w;
            nll_term<T>(x, target, weight, i, c, d, ignore_index, has_ignore, error, &loss, &w);
            y[i] = N::down(loss);
        }
        return;
    }
    if (blockIdx.x != 0) return;
    A sum = 0, wsum = 0;
    for (i64 i = threadIdx.x; i < total; i += blockDim.x) {
        A loss, w;
        nll_term<T>(x, target, weight, i, c, d, ignore_index, has_ignore, error, &loss, &w);
        sum += loss;
        wsum += w;
    }
    sum = block_sum<A>(sum);
    wsum = block_sum<A>(wsum);
    if (threadIdx.x == 0) y[0] = N::down(reduction == LOSS_MEAN ? sum / wsum : sum);
}

#define VALUE_KERNELS(T, sfx)                                                                                  \
    extern "C" __global__ void scatter_elements_##sfx(const i64* idx, const T* upd, T* y, i64 outer, i64 len,  \
                                                      i64 inner, int rank, const Strided s, i64 axis_len,      \
                                                      i64 axis_stride, int reduction, int* error) {            \
        scatter_elements_impl<T>(idx, upd, y, outer, len, inner, rank, s, axis_len, axis_stride, reduction,    \
                                 error);                                                                       \
    }                                                                                                          \
    extern "C" __global__ void scatter_nd_##sfx(const i64* idx, const T* upd, T* y, i64 chunk, i64 ntuples,    \
                                                int k, const Strided s, int reduction, int* error) {           \
        scatter_nd_impl<T>(idx, upd, y, chunk, ntuples, k, s, reduction, error);                               \
    }                                                                                                          \
    extern "C" __global__ void cumsum_##sfx(const T* x, T* y, i64 outer, i64 n, i64 inner, int exclusive,      \
                                            int reverse) {                                                     \
        cumsum_impl<T>(x, y, outer, n, inner, exclusive, reverse);                                             \
    }                                                                                                          \
    extern "C" __global__ void topk_##sfx(const T* x, T* values, i64* indices, i64 outer, i64 n, i64 inner,    \
                                          i64 k, int largest) {                                                \
        topk_impl<T>(x, values, indices, outer, n, inner, k, largest);                                         \
    }

#define FLOAT_KERNELS(T, sfx)                                                                                  \
    extern "C" __global__ void hardmax_##sfx(const T* x, T* y, i64 outer, i64 n, i64 inner) {                  \
        hardmax_impl<T>(x, y, outer, n, inner);                                                                \
    }                                                                                                          \
    extern "C" __global__ void nll_loss_##sfx(const T* x, const i64* target, const T* weight, T* y, i64 total, \
                                              i64 c, i64 d, i64 ignore_index, int has_ignore, int reduction,   \
                                              int* error) {                                                    \
        nll_loss_impl<T>(x, target, weight, y, total, c, d, ignore_index, has_ignore, reduction, error);       \
    }

VALUE_KERNELS(float, f32)
VALUE_KERNELS(__half, f16)
VALUE_KERNELS(__nv_bfloat16, bf16)
VALUE_KERNELS(double, f64)
VALUE_KERNELS(signed char, i8)
VALUE_KERNELS(unsigned char, u8)
VALUE_KERNELS(int, i32)
VALUE_KERNELS(unsigned int, u32)
VALUE_KERNELS(i64, i64)
VALUE_KERNELS(u64, u64)

FLOAT_KERNELS(float, f32)
FLOAT_KERNELS(__half, f16)
FLOAT_KERNELS(__nv_bfloat16, bf16)
FLOAT_KERNELS(double, f64)
