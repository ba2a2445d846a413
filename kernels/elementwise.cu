// elementwise.cu: the template of every generated elementwise and epilogue kernel.
// Code generation (crates/kiln-cuda/src/codegen.rs) replaces the two marked lines: DEFS defines
// KILN_KERNEL_NAME, KILN_NUM_INPUTS, KILN_VEC and the expression, BODY defines how one element
// (kiln_element) and one vector of KILN_VEC elements (kiln_vector) are loaded, computed and
// stored. The loops are here.
//
// Broadcasting is by strides: input k is read at sum(coord[d] * strides[k][d]) over the output
// coordinates, with stride 0 where it is broadcast. When every input is read in full in the
// output's order, is a single element, or is one row repeated for every row of the output (a
// bias), and every pointer is 16-byte aligned, the host sets `vec` and the kernel moves 16
// bytes per load and store.
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
};

// The offset of flat output index `i` in input `k`.
__device__ __forceinline__ i64 kiln_offset(const ElemArgs& a, int k, i64 i) {
    i64 off = 0;
    for (int d = a.rank - 1; d >= 0; --d) {
        const i64 c = i % a.dims[d];
        i /= a.dims[d];
        off += c * a.strides[k][d];
    }
    return off;
}

/*{{BODY}}*/

extern "C" __global__ void KILN_KERNEL_NAME(const ElemArgs a) {
    i64 start = 0;
    if (a.vec) {
        const i64 nvec = a.n / KILN_VEC;
        KILN_GRID_STRIDE(v, nvec) kiln_vector(a, v);
        start = nvec * KILN_VEC;
    }
    for (i64 i = start + (i64)blockIdx.x * blockDim.x + threadIdx.x; i < a.n; i += (i64)blockDim.x * gridDim.x)
        kiln_element(a, i);
}
