// elementwise.cu: the template of every generated elementwise and epilogue kernel.
// Code generation (crates/kiln-cuda/src/codegen.rs) replaces the two marked lines: DEFS defines
// KILN_KERNEL_NAME, KILN_NUM_INPUTS, KILN_VEC and the expression, BODY defines how one element
// (kiln_element) and one vector of KILN_VEC elements (kiln_vector) are loaded, computed and
// stored. The loops are here.
//
// Broadcasting is by strides: input k is read at sum(coord[d] * strides[k][d]) over the output
// coordinates, with stride 0 where it is broadcast. The host collapses the dims first, so the
// rank is as small as the reads allow. When every input is read in full in the output's order,
// is a single element, or is one row repeated for every row of the output (a bias), and every
// pointer is 16-byte aligned, the host sets `vec` and the kernel moves 16 bytes per load and
// store. When n and every offset fit in 31 bits the host sets `idx32` and all index math is
// 32-bit unsigned (a 64-bit division is a long software sequence; a 32-bit one much shorter).
#include "common.cuh"

/*{{DEFS}}*/

struct ElemArgs {
    const void* in[KILN_NUM_INPUTS];
    void* out;
    i64 n;
    i64 dims[KILN_MAX_RANK];
    i64 strides[KILN_NUM_INPUTS][KILN_MAX_RANK];
    int rank;
    // 1: the vector path may be taken (see above).
    int vec;
    // Bit k: input k is a single element.
    int scalar_mask;
    // Bit k: input k is one row of `row_len` elements read again for every row of the output
    // (a bias); `row_len` is a multiple of KILN_VEC, so no vector straddles two rows.
    int row_mask;
    i64 row_len;
    // 1: n and every input's largest offset are below 2^31, so indices may be 32-bit.
    int idx32;
    int unused;
};

// The offset of flat output index `i` in every input, from one pass over the dims (the
// coordinates are shared by all inputs). Dim 0 needs no division: what is left of `i` there is
// its coordinate, since i < n = the product of the dims.
template <typename I>
__device__ __forceinline__ void kiln_offsets(const ElemArgs& a, I i, I (&off)[KILN_NUM_INPUTS]) {
#pragma unroll
    for (int k = 0; k < KILN_NUM_INPUTS; ++k) off[k] = 0;
    for (int d = a.rank - 1; d > 0; --d) {
        const I dim = (I)a.dims[d];
        const I q = i / dim;
        const I c = i - q * dim;
#pragma unroll
        for (int k = 0; k < KILN_NUM_INPUTS; ++k) off[k] += c * (I)a.strides[k][d];
        i = q;
    }
#pragma unroll
    for (int k = 0; k < KILN_NUM_INPUTS; ++k) off[k] += i * (I)a.strides[k][0];
}

/*{{BODY}}*/

// Both loops are grid-stride loops; the grid is sized for the path taken (a vector or an
// element per thread, capped at a few waves), and any grid covers every element.
template <typename I>
__device__ __forceinline__ void kiln_run(const ElemArgs& a) {
    const I n = (I)a.n;
    const I step = (I)blockDim.x * gridDim.x;
    const I tid = (I)blockIdx.x * blockDim.x + threadIdx.x;
    I start = 0;
    if (a.vec) {
        const I nvec = n / KILN_VEC;
        // The vector's column within a row input, advanced with the loop instead of divided
        // out per vector: col == v % row_vecs throughout.
        const I row_vecs = a.row_mask ? (I)(a.row_len / KILN_VEC) : (I)1;
        const I col_step = step % row_vecs;
        I col = tid % row_vecs;
        for (I v = tid; v < nvec; v += step) {
            kiln_vector<I>(a, v, col);
            col += col_step;
            if (col >= row_vecs) col -= row_vecs;
        }
        start = nvec * KILN_VEC;
    }
    for (I i = start + tid; i < n; i += step) kiln_element<I>(a, i);
}

extern "C" __global__ void KILN_KERNEL_NAME(const ElemArgs a) {
    if (a.idx32) kiln_run<unsigned int>(a);
    else kiln_run<i64>(a);
}
