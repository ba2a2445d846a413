// reduce.cu: reductions, arg-reductions and softmax over one axis.
// Every kernel views its input as [outer, n, inner] with the reduced axis in the middle (the
// host multiplies the dims before and after the axis), and reduces one row (o, i) per block
// iteration: the block's threads stride over the n elements, then combine with warp shuffles
// and one pass through shared memory. Outputs are [outer, inner], row-major. Softmax and
// LogSoftmax over contiguous rows that fit a warp's registers also have a warp-per-row path
// (`*_warp`, one row per warp, no shared memory).
// f32, f16 and bf16 accumulate in f32, f64 in f64; integer types in their own type (wrapping);
// bool (max and min only) in int.
#include "common.cuh"

#define COMB_SUM 0
#define COMB_MAX 1
#define COMB_MIN 2
#define COMB_PROD 3

template <typename A, int C>
__device__ __forceinline__ A comb(A a, A b) {
    if (C == COMB_SUM) return a + b;
    if (C == COMB_MAX) return (a > b || a != a) ? a : b;
    if (C == COMB_MIN) return (a < b || a != a) ? a : b;
    return a * b;
}

// Reduces `v` across the block; every thread gets the result. `identity` fills the lanes past
// the warp count.
template <typename A, int C>
__device__ __forceinline__ A block_comb(A v, A identity) {
    __shared__ A scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = comb<A, C>(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    A r = lane < nwarps ? scratch[lane] : identity;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) r = comb<A, C>(r, __shfl_xor_sync(0xffffffffu, r, o));
    __syncthreads();
    return r;
}

// What each reducer does: a map before combining, the combination, a map after.
#define RED_SUM 0
#define RED_MEAN 1
#define RED_MAX 2
#define RED_MIN 3
#define RED_PROD 4
#define RED_L1 5
#define RED_L2 6
#define RED_SUMSQUARE 7
#define RED_LOGSUM 8

template <int R> struct Reducer;
template <> struct Reducer<RED_SUM> { static const int C = COMB_SUM; };
template <> struct Reducer<RED_MEAN> { static const int C = COMB_SUM; };
template <> struct Reducer<RED_MAX> { static const int C = COMB_MAX; };
template <> struct Reducer<RED_MIN> { static const int C = COMB_MIN; };
template <> struct Reducer<RED_PROD> { static const int C = COMB_PROD; };
template <> struct Reducer<RED_L1> { static const int C = COMB_SUM; };
template <> struct Reducer<RED_L2> { static const int C = COMB_SUM; };
template <> struct Reducer<RED_SUMSQUARE> { static const int C = COMB_SUM; };
template <> struct Reducer<RED_LOGSUM> { static const int C = COMB_SUM; };

template <typename A> __device__ __forceinline__ A red_identity(int c);
template <> __device__ __forceinline__ float red_identity<float>(int c) {
    return c == COMB_SUM ? 0.0f : c == COMB_PROD ? 1.0f : c == COMB_MAX ? -__int_as_float(0x7f800000) : __int_as_float(0x7f800000);
}
template <> __device__ __forceinline__ int red_identity<int>(int c) {
    return c == COMB_SUM ? 0 : c == COMB_PROD ? 1 : c == COMB_MAX ? (int)0x80000000 : 0x7fffffff;
}
template <> __device__ __forceinline__ i64 red_identity<i64>(int c) {
    return c == COMB_SUM ? 0 : c == COMB_PROD ? 1 : c == COMB_MAX ? (i64)0x8000000000000000ull : 0x7fffffffffffffffll;
}
template <> __device__ __forceinline__ double red_identity<double>(int c) {
    const double inf = __longlong_as_double(0x7ff0000000000000ll);
    return c == COMB_SUM ? 0.0 : c == COMB_PROD ? 1.0 : c == COMB_MAX ? -inf : inf;
}
// The identity for element type T accumulated in A: bool's max starts at false, its min at true.
template <typename T, typename A> __device__ __forceinline__ A identity_of(int c) { return red_identity<A>(c); }
template <> __device__ __forceinline__ int identity_of<bool, int>(int c) { return c == COMB_MAX ? 0 : 1; }

template <int R, typename A> __device__ __forceinline__ A red_pre(A x) {
    if (R == RED_L1) return x < (A)0 ? -x : x;
    if (R == RED_L2 || R == RED_SUMSQUARE) return x * x;
    return x;
}
template <int R> __device__ __forceinline__ float red_post(float acc, i64 n) {
    if (R == RED_MEAN) return acc / (float)n;
    if (R == RED_L2) return sqrtf(acc);
    if (R == RED_LOGSUM) return logf(acc);
    return acc;
}
template <int R> __device__ __forceinline__ double red_post(double acc, i64 n) {
    if (R == RED_MEAN) return acc / (double)n;
    if (R == RED_L2) return sqrt(acc);
    if (R == RED_LOGSUM) return log(acc);
    return acc;
}
template <int R> __device__ __forceinline__ int red_post(int acc, i64 n) { return R == RED_MEAN ? (int)(acc / n) : acc; }
template <int R> __device__ __forceinline__ i64 red_post(i64 acc, i64 n) { return R == RED_MEAN ? acc / n : acc; }

// The accumulator type of an element type.
template <typename T> struct Acc { typedef float type; };
template <> struct Acc<int> { typedef int type; };
template <> struct Acc<i64> { typedef i64 type; };
template <> struct Acc<double> { typedef double type; };
template <> struct Acc<bool> { typedef int type; };
__device__ __forceinline__ int acc_load(int x) { return x; }
__device__ __forceinline__ double acc_load(double x) { return x; }
__device__ __forceinline__ int acc_load(bool x) { return x ? 1 : 0; }
__device__ __forceinline__ i64 acc_load(i64 x) { return x; }
template <typename T> __device__ __forceinline__ float acc_load(T x) { return to_f32(x); }
__device__ __forceinline__ int acc_store_int(int x) { return x; }
template <typename T> __device__ __forceinline__ T acc_store(float x) { return from_f32<T>(x); }
template <> __device__ __forceinline__ int acc_store<int>(float x) { return (int)x; }
template <> __device__ __forceinline__ i64 acc_store<i64>(float x) { return (i64)x; }
template <typename T> __device__ __forceinline__ T acc_store(int x) { return (T)x; }
template <typename T> __device__ __forceinline__ T acc_store(i64 x) { return (T)x; }
template <typename T> __device__ __forceinline__ T acc_store(double x) { return (T)x; }

// exp and log in the accumulator's precision.
__device__ __forceinline__ float acc_exp(float x) { return expf(x); }
__device__ __forceinline__ double acc_exp(double x) { return exp(x); }
__device__ __forceinline__ float acc_log(float x) { return logf(x); }
__device__ __forceinline__ double acc_log(double x) { return log(x); }

template <typename T, int R>
__device__ __forceinline__ void reduce_rows(const T* __restrict__ x, T* __restrict__ y, i64 outer, i64 n, i64 inner) {
    typedef typename Acc<T>::type A;
    const int C = Reducer<R>::C;
    const A id = identity_of<T, A>(C);
    for (i64 row = blockIdx.x; row < outer * inner; row += gridDim.x) {
        const T* base = x + (row / inner) * n * inner + row % inner;
        A acc = id;
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) acc = comb<A, C>(acc, red_pre<R>(acc_load(base[k * inner])));
        acc = block_comb<A, C>(acc, id);
        if (threadIdx.x == 0) y[row] = acc_store<T>(red_post<R>(acc, n));
    }
}

// log(sum(exp(x))) with the maximum taken out first, so that large inputs do not overflow.
template <typename T>
__device__ __forceinline__ void logsumexp_rows(const T* __restrict__ x, T* __restrict__ y, i64 outer, i64 n, i64 inner) {
    typedef typename Acc<T>::type A;
    const A ninf = red_identity<A>(COMB_MAX);
    for (i64 row = blockIdx.x; row < outer * inner; row += gridDim.x) {
        const T* base = x + (row / inner) * n * inner + row % inner;
        A m = ninf;
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) m = comb<A, COMB_MAX>(m, acc_load(base[k * inner]));
        m = block_comb<A, COMB_MAX>(m, ninf);
        A s = (A)0;
        // An all -inf row sums exp(x - 0) = 0 and gives -inf, as the definition does.
        const A shift = (m == ninf) ? (A)0 : m;
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) s += acc_exp(acc_load(base[k * inner]) - shift);
        s = block_comb<A, COMB_SUM>(s, (A)0);
        if (threadIdx.x == 0) y[row] = acc_store<T>(acc_log(s) + shift);
    }
}

// The index of the first (or with `select_last` the last) maximum or minimum, as i64. A NaN
// counts as larger than everything for ArgMax and smaller for ArgMin, as numpy does.
template <typename T, bool MAX>
__device__ __forceinline__ void arg_rows(const T* __restrict__ x, i64* __restrict__ y, i64 outer, i64 n, i64 inner, int select_last) {
    typedef typename Acc<T>::type A;
    __shared__ A sv[32];
    __shared__ i64 si[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    for (i64 row = blockIdx.x; row < outer * inner; row += gridDim.x) {
        const T* base = x + (row / inner) * n * inner + row % inner;
        A best = acc_load(base[0]);
        i64 bi = -1;
        // `better(a, ia, b, ib)`: whether candidate a at index ia beats b at index ib.
        auto better = [&](A a, i64 ia, A b, i64 ib) -> bool {
            if (ib < 0) return ia >= 0;
            if (ia < 0) return false;
            const bool an = a != a, bn = b != b;
            if (an || bn) {
                if (an && bn) return select_last ? ia > ib : ia < ib;
                return an;
            }
            if (MAX ? a > b : a < b) return true;
            if (a == b) return select_last ? ia > ib : ia < ib;
            return false;
        };
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
            const A v = acc_load(base[k * inner]);
            if (better(v, k, best, bi)) { best = v; bi = k; }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const A ov = __shfl_xor_sync(0xffffffffu, best, o);
            const i64 oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (better(ov, oi, best, bi)) { best = ov; bi = oi; }
        }
        if (lane == 0) { sv[warp] = best; si[warp] = bi; }
        __syncthreads();
        if (warp == 0) {
            best = lane < nwarps ? sv[lane] : best;
            bi = lane < nwarps ? si[lane] : -1;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const A ov = __shfl_xor_sync(0xffffffffu, best, o);
                const i64 oi = __shfl_xor_sync(0xffffffffu, bi, o);
                if (better(ov, oi, best, bi)) { best = ov; bi = oi; }
            }
            if (lane == 0) y[row] = bi < 0 ? 0 : bi;
        }
        __syncthreads();
    }
}

// Softmax and LogSoftmax: one pass for the running maximum and the sum of exponentials
// (merged pairwise as in online softmax), one pass to write.
template <typename T, bool LOG>
__device__ __forceinline__ void softmax_rows(const T* __restrict__ x, T* __restrict__ y, i64 outer, i64 n, i64 inner) {
    __shared__ float sm[32], ss[32];
    const float ninf = -__int_as_float(0x7f800000);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    auto merge = [&](float& m, float& s, float om, float os) {
        const float nm = fmaxf(m, om);
        if (nm == ninf) { s = 0.0f; m = nm; return; }
        s = s * expf(m - nm) + os * expf(om - nm);
        m = nm;
    };
    for (i64 row = blockIdx.x; row < outer * inner; row += gridDim.x) {
        const i64 off = (row / inner) * n * inner + row % inner;
        const T* base = x + off;
        float m = ninf, s = 0.0f;
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) merge(m, s, to_f32(base[k * inner]), 1.0f);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
        if (lane == 0) { sm[warp] = m; ss[warp] = s; }
        __syncthreads();
        m = lane < nwarps ? sm[lane] : ninf;
        s = lane < nwarps ? ss[lane] : 0.0f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
        __syncthreads();
        const float ls = logf(s);
        const float inv = 1.0f / s;
        for (i64 k = threadIdx.x; k < n; k += blockDim.x) {
            const float v = to_f32(base[k * inner]) - m;
            y[off + k * inner] = from_f32<T>(LOG ? v - ls : expf(v) * inv);
        }
    }
}

// The warp-per-row path of Softmax and LogSoftmax over contiguous rows (inner == 1) that fit a
// warp's registers: n * sizeof(T) a multiple of 16 and at most 32 * KILN_ROW_VECS * 16 bytes
// (the host checks both). As norm.cu's warp path: lane l loads vectors l, l + 32, ... once,
// then the maximum and the sum of exponentials are warp reductions over the registers. The
// maximum drops NaN as the block path's fmaxf does; a NaN still reaches the output through
// the sum. VEC picks 16-byte loads and stores when both pointers are 16-byte aligned.
template <typename T, bool LOG, bool VEC>
__device__ __forceinline__ void softmax_warp_rows(const T* __restrict__ x, T* __restrict__ y, i64 rows, i64 n) {
    constexpr int N = Vec16<T>::N;
    const float ninf = -__int_as_float(0x7f800000);
    const int lane = threadIdx.x & 31;
    const int nvec = (int)(n / N);
    const i64 warps = (i64)gridDim.x * (blockDim.x >> 5);
    // The row index is the same across the warp, so every lane takes the shuffles below.
    for (i64 r = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
        const T* xr = x + r * n;
        float v[KILN_ROW_VECS][N];
        float m = ninf;
#pragma unroll
        for (int i = 0; i < KILN_ROW_VECS; ++i) {
            const int c = i * 32 + lane;
            if (c < nvec) {
                load_vec16<T, VEC>(xr, c, v[i]);
#pragma unroll
                for (int e = 0; e < N; ++e) m = fmaxf(m, v[i][e]);
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < KILN_ROW_VECS; ++i) {
            if (i * 32 + lane < nvec) {
#pragma unroll
                for (int e = 0; e < N; ++e) {
                    // Softmax keeps exp(x - max) for the write; LogSoftmax keeps x - max.
                    const float ex = expf(v[i][e] - m);
                    s += ex;
                    v[i][e] = LOG ? v[i][e] - m : ex;
                }
            }
        }
        s = warp_sum(s);
        const float ls = logf(s), inv = 1.0f / s;
        T* yr = y + r * n;
#pragma unroll
        for (int i = 0; i < KILN_ROW_VECS; ++i) {
            const int c = i * 32 + lane;
            if (c < nvec) {
                float o[N];
#pragma unroll
                for (int e = 0; e < N; ++e) o[e] = LOG ? v[i][e] - ls : v[i][e] * inv;
                store_vec16<T, VEC>(yr, c, o);
            }
        }
    }
}

template <typename T, bool LOG>
__device__ __forceinline__ void softmax_warp(const T* x, T* y, i64 rows, i64 n) {
    if (aligned16(x) && aligned16(y))
        softmax_warp_rows<T, LOG, true>(x, y, rows, n);
    else
        softmax_warp_rows<T, LOG, false>(x, y, rows, n);
}

#define REDUCE_KERNEL(name, R, T, sfx)                                                                     \
    extern "C" __global__ void name##_##sfx(const T* x, T* y, i64 outer, i64 n, i64 inner) {              \
        reduce_rows<T, R>(x, y, outer, n, inner);                                                          \
    }
#define ARG_KERNELS(T, sfx)                                                                                \
    extern "C" __global__ void argmax_##sfx(const T* x, i64* y, i64 outer, i64 n, i64 inner, int last) {  \
        arg_rows<T, true>(x, y, outer, n, inner, last);                                                    \
    }                                                                                                      \
    extern "C" __global__ void argmin_##sfx(const T* x, i64* y, i64 outer, i64 n, i64 inner, int last) {  \
        arg_rows<T, false>(x, y, outer, n, inner, last);                                                   \
    }
#define FLOAT_KERNELS(T, sfx)                                                                              \
    REDUCE_KERNEL(reduce_sum, RED_SUM, T, sfx)                                                             \
    REDUCE_KERNEL(reduce_mean, RED_MEAN, T, sfx)                                                           \
    REDUCE_KERNEL(reduce_max, RED_MAX, T, sfx)                                                             \
    REDUCE_KERNEL(reduce_min, RED_MIN, T, sfx)                                                             \
    REDUCE_KERNEL(reduce_prod, RED_PROD, T, sfx)                                                           \
    REDUCE_KERNEL(reduce_l1, RED_L1, T, sfx)                                                               \
    REDUCE_KERNEL(reduce_l2, RED_L2, T, sfx)                                                               \
    REDUCE_KERNEL(reduce_sumsquare, RED_SUMSQUARE, T, sfx)                                                 \
    REDUCE_KERNEL(reduce_logsum, RED_LOGSUM, T, sfx)                                                       \
    extern "C" __global__ void reduce_logsumexp_##sfx(const T* x, T* y, i64 outer, i64 n, i64 inner) {    \
        logsumexp_rows<T>(x, y, outer, n, inner);                                                          \
    }                                                                                                      \
    ARG_KERNELS(T, sfx)                                                                                    \
    extern "C" __global__ void softmax_##sfx(const T* x, T* y, i64 outer, i64 n, i64 inner) {             \
        softmax_rows<T, false>(x, y, outer, n, inner);                                                     \
    }                                                                                                      \
    extern "C" __global__ void logsoftmax_##sfx(const T* x, T* y, i64 outer, i64 n, i64 inner) {          \
        softmax_rows<T, true>(x, y, outer, n, inner);                                                      \
    }                                                                                                      \
    extern "C" __global__ void softmax_warp_##sfx(const T* x, T* y, i64 rows, i64 n) {                    \
        softmax_warp<T, false>(x, y, rows, n);                                                             \
    }                                                                                                      \
    extern "C" __global__ void logsoftmax_warp_##sfx(const T* x, T* y, i64 rows, i64 n) {                 \
        softmax_warp<T, true>(x, y, rows, n);                                                              \
    }
#define F64_KERNELS(T, sfx)                                                                                \
    REDUCE_KERNEL(reduce_sum, RED_SUM, T, sfx)                                                             \
    REDUCE_KERNEL(reduce_mean, RED_MEAN, T, sfx)                                                           \
    REDUCE_KERNEL(reduce_max, RED_MAX, T, sfx)                                                             \
    REDUCE_KERNEL(reduce_min, RED_MIN, T, sfx)                                                             \
    REDUCE_KERNEL(reduce_prod, RED_PROD, T, sfx)                                                           \
    REDUCE_KERNEL(reduce_l1, RED_L1, T, sfx)                                                               \
    REDUCE_KERNEL(reduce_l2, RED_L2, T, sfx)                                                               \
    REDUCE_KERNEL(reduce_sumsquare, RED_SUMSQUARE, T, sfx)                                                 \
    REDUCE_KERNEL(reduce_logsum, RED_LOGSUM, T, sfx)                                                       \
    extern "C" __global__ void reduce_logsumexp_##sfx(const T* x, T* y, i64 outer, i64 n, i64 inner) {    \
        logsumexp_rows<T>(x, y, outer, n, inner);                                                          \
    }                                                                                                      \
    ARG_KERNELS(T, sfx)
#define INT_KERNELS(T, sfx)                                                                                \
    REDUCE_KERNEL(reduce_sum, RED_SUM, T, sfx)                                                             \
    REDUCE_KERNEL(reduce_max, RED_MAX, T, sfx)                                                             \
    REDUCE_KERNEL(reduce_min, RED_MIN, T, sfx)                                                             \
    ARG_KERNELS(T, sfx)

FLOAT_KERNELS(float, f32)
FLOAT_KERNELS(__half, f16)
FLOAT_KERNELS(__nv_bfloat16, bf16)
F64_KERNELS(double, f64)
INT_KERNELS(int, i32)
INT_KERNELS(i64, i64)
REDUCE_KERNEL(reduce_max, RED_MAX, bool, bool)
REDUCE_KERNEL(reduce_min, RED_MIN, bool, bool)
