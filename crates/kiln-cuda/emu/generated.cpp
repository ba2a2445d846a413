// Host runs of generated elementwise kernels (written by examples/emu_dump.rs); see run.sh.
#include "shim.h"
#include <random>
namespace S {
#include "silu.inc"
}
namespace B {
#include "brr.inc"
}
namespace M {
#include "pymod.inc"
}
typedef long long i64;
static std::mt19937 rng(2);
static float U(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }
static int fails = 0;
static void check(const char* what, double got, double want, double tol) {
    bool ok = (std::isnan(got) && std::isnan(want)) || got == want || std::fabs(got - want) <= tol * (1 + std::fabs(want));
    if (!ok) { if (fails < 30) printf("FAIL %s: got %g want %g\n", what, got, want); ++fails; }
}
int main() {
    for (i64 n : {1, 3, 50, 64, 783, 4096}) {
        // SiLU f16, vector path (aligned, contiguous) with a scalar tail.
        std::vector<__half> x(n + 8), y(n + 8);
        for (auto& v : x) v = __float2half_rn(U(-6, 6));
        for (int vec : {1, 0}) {
            S::ElemArgs a{};
            a.in[0] = x.data(); a.out = y.data(); a.n = n; a.rank = 1; a.dims[0] = n; a.strides[0][0] = 1; a.vec = vec; a.scalar_mask = 0;
            for (int d = 1; d < 8; ++d) a.dims[d] = 1;
            launch(dim3{(unsigned)std::min<i64>((n + 255) / 256, 4)}, dim3{256}, [&] { S::kernel_silu(a); });
            for (i64 i = 0; i < n; ++i) { float xv = __half2float(x[i]); float s = 1.0f / (1.0f + std::exp(-xv)); check("silu", __half2float(y[i]), __half2float(__float2half_rn(xv * s)), 0); }
        }
        // relu(acc + bias) + residual^T over [3, n], strided path; and the same with bias a
        // scalar and residual contiguous on the vector path.
        std::vector<float> acc(3 * n), bias(n), res(3 * n), out(3 * n);
        for (auto& v : acc) v = U(-2, 2); for (auto& v : bias) v = U(-1, 1); for (auto& v : res) v = U(-1, 1);
        B::ElemArgs a{};
        a.in[0] = acc.data(); a.in[1] = bias.data(); a.in[2] = res.data(); a.out = out.data(); a.n = 3 * n; a.rank = 2;
        a.dims[0] = 3; a.dims[1] = n; for (int d = 2; d < 8; ++d) a.dims[d] = 1;
        a.strides[0][0] = n; a.strides[0][1] = 1; a.strides[1][0] = 0; a.strides[1][1] = 1; a.strides[2][0] = 1; a.strides[2][1] = 3;
        launch(dim3{2}, dim3{256}, [&] { B::kernel_brr(a); });
        for (i64 r = 0; r < 3; ++r) for (i64 c = 0; c < n; ++c) check("brr", out[r * n + c], std::max(0.0f, acc[r * n + c] + bias[c]) + res[c * 3 + r], 0);
        B::ElemArgs v = a;
        v.rank = 1; v.dims[0] = 3 * n; v.dims[1] = 1; v.strides[0][0] = 1; v.strides[1][0] = 0; v.strides[2][0] = 1; v.vec = 1; v.scalar_mask = 2;
        launch(dim3{2}, dim3{256}, [&] { B::kernel_brr(v); });
        for (i64 i = 0; i < 3 * n; ++i) check("brr vec", out[i], std::max(0.0f, acc[i] + bias[0]) + res[i], 0);
        // A bias row over [3, n] on the vector path (n a whole number of 4-float vectors).
        if (n % 4 == 0) {
            B::ElemArgs r = a;
            r.strides[0][0] = n; r.strides[0][1] = 1; r.strides[1][0] = 0; r.strides[1][1] = 1;
            r.strides[2][0] = n; r.strides[2][1] = 1; r.vec = 1; r.scalar_mask = 0; r.row_mask = 2; r.row_len = n;
            launch(dim3{2}, dim3{256}, [&] { B::kernel_brr(r); });
            for (i64 i = 0; i < 3 * n; ++i) check("brr row", out[i], std::max(0.0f, acc[i] + bias[i % n]) + res[i], 0);
        }
        // Python modulo on i32.
        std::vector<int> p(n), q(n), m(n);
        for (i64 i = 0; i < n; ++i) { p[i] = (int)(rng() % 2001) - 1000; q[i] = ((int)(rng() % 50) + 1) * ((rng() & 1) ? -1 : 1); }
        M::ElemArgs ma{};
        ma.in[0] = p.data(); ma.in[1] = q.data(); ma.out = m.data(); ma.n = n; ma.rank = 1; ma.dims[0] = n; ma.strides[0][0] = 1; ma.strides[1][0] = 1; ma.vec = 1;
        for (int d = 1; d < 8; ++d) ma.dims[d] = 1;
        launch(dim3{1}, dim3{256}, [&] { M::kernel_pymod(ma); });
        for (i64 i = 0; i < n; ++i) { int r = p[i] % q[i]; if (r != 0 && ((r < 0) != (q[i] < 0))) r += q[i]; check("pymod", m[i], r, 0); }
    }
    printf("elementwise: %d fails\n", fails);
    return fails != 0;
}
