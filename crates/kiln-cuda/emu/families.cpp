// Host runs of the kernel families against naive references; see run.sh.
#include "shim.h"
#include <random>
#include <algorithm>
#include <limits>
namespace R {
#include "reduce_full.inc"
}
namespace N {
#include "norm_full.inc"
}
namespace A {
#include "attention_full.inc"
}
namespace L {
#include "layout_full.inc"
}
namespace P {
#include "pool_full.inc"
}
typedef long long i64;
static std::mt19937 rng(1);
static float U(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }
static int fails = 0;
static void check(const char* what, double got, double want, double tol) {
    bool ok = (std::isnan(got) && std::isnan(want)) || got == want || std::fabs(got - want) <= tol * (1 + std::fabs(want));
    if (!ok) { if (fails < 30) printf("FAIL %s: got %g want %g\n", what, got, want); ++fails; }
}
static unsigned row_threads(i64 n) { i64 t = (n + 31) / 32 * 32; return (unsigned)std::min<i64>(std::max<i64>(t, 32), 256); }

int main() {
    for (i64 n : {1, 3, 50, 783}) for (i64 inner : {1, 5}) {
        i64 outer = 3, rows = outer * inner;
        std::vector<float> x(outer * n * inner); for (auto& v : x) v = U(-1, 1);
        if (n > 3) { x[(0 * n + 2) * inner] = 5.0f; x[(0 * n + n - 1) * inner] = 5.0f; } // a tie in row 0
        std::vector<float> y(rows); std::vector<i64> yi(rows); std::vector<float> ys(x.size());
        dim3 g{(unsigned)rows}, b{row_threads(n)};
        auto at = [&](i64 r, i64 k) { return x[((r / inner) * n + k) * inner + r % inner]; };
        launch(g, b, [&] { R::reduce_sum_f32(x.data(), y.data(), outer, n, inner); });
        for (i64 r = 0; r < rows; ++r) { double s = 0; for (i64 k = 0; k < n; ++k) s += at(r, k); check("sum", y[r], s, 1e-5); }
        launch(g, b, [&] { R::reduce_max_f32(x.data(), y.data(), outer, n, inner); });
        for (i64 r = 0; r < rows; ++r) { float m = -INFINITY; for (i64 k = 0; k < n; ++k) m = std::max(m, at(r, k)); check("max", y[r], m, 0); }
        launch(g, b, [&] { R::reduce_logsumexp_f32(x.data(), y.data(), outer, n, inner); });
        for (i64 r = 0; r < rows; ++r) { double s = 0; for (i64 k = 0; k < n; ++k) s += std::exp((double)at(r, k)); check("lse", y[r], std::log(s), 1e-5); }
        for (int last : {0, 1}) {
            launch(g, b, [&] { R::argmax_f32(x.data(), yi.data(), outer, n, inner, last); });
            for (i64 r = 0; r < rows; ++r) { i64 bi = 0; for (i64 k = 1; k < n; ++k) if (at(r, k) > at(r, bi) || (last && at(r, k) == at(r, bi))) bi = k; check("argmax", yi[r], bi, 0); }
        }
        launch(g, b, [&] { R::argmin_f32(x.data(), yi.data(), outer, n, inner, 0); });
        for (i64 r = 0; r < rows; ++r) { i64 bi = 0; for (i64 k = 1; k < n; ++k) if (at(r, k) < at(r, bi)) bi = k; check("argmin", yi[r], bi, 0); }
        launch(g, b, [&] { R::softmax_f32(x.data(), ys.data(), outer, n, inner); });
        for (i64 r = 0; r < rows; ++r) {
            double m = -1e30, s = 0; for (i64 k = 0; k < n; ++k) m = std::max(m, (double)at(r, k));
            for (i64 k = 0; k < n; ++k) s += std::exp(at(r, k) - m);
            for (i64 k = 0; k < n; ++k) check("softmax", ys[((r / inner) * n + k) * inner + r % inner], std::exp(at(r, k) - m) / s, 1e-5);
        }
        std::vector<int> xi(x.size()); for (auto& v : xi) v = (int)(rng() % 2001) - 1000;
        std::vector<int> yint(rows);
        launch(g, b, [&] { R::reduce_sum_i32(xi.data(), yint.data(), outer, n, inner); });
        for (i64 r = 0; r < rows; ++r) { long s = 0; for (i64 k = 0; k < n; ++k) s += xi[((r / inner) * n + k) * inner + r % inner]; check("sum_i32", yint[r], s, 0); }
        launch(g, b, [&] { R::reduce_min_i32(xi.data(), yint.data(), outer, n, inner); });
        for (i64 r = 0; r < rows; ++r) { int s = 1 << 30; for (i64 k = 0; k < n; ++k) s = std::min(s, xi[((r / inner) * n + k) * inner + r % inner]); check("min_i32", yint[r], s, 0); }
    }
    printf("reduce done, %d fails\n", fails);
    // Norm.
    for (i64 n : {1, 3, 50, 783, 4096}) {
        i64 rows = 3;
        std::vector<float> x(rows * n), s(n), bb(n), y(rows * n), mean(rows), inv(rows);
        for (auto& v : x) v = U(99, 101); for (auto& v : s) v = U(0.5, 1.5); for (auto& v : bb) v = U(-1, 1);
        launch(dim3{(unsigned)rows}, dim3{row_threads(n)}, [&] { N::layernorm_f32(x.data(), s.data(), bb.data(), y.data(), rows, n, 1e-5f, mean.data(), inv.data()); });
        for (i64 r = 0; r < rows; ++r) {
            double m = 0, v = 0; for (i64 k = 0; k < n; ++k) m += x[r * n + k]; m /= n;
            for (i64 k = 0; k < n; ++k) v += (x[r * n + k] - m) * (x[r * n + k] - m); v /= n;
            check("ln mean", mean[r], m, 1e-6);
            check("ln inv", inv[r], 1 / std::sqrt(v + 1e-5), 1e-4);
            for (i64 k = 0; k < n; ++k) check("layernorm", y[r * n + k], (x[r * n + k] - m) / std::sqrt(v + 1e-5) * s[k] + bb[k], 2e-4);
        }
        std::vector<__half> xh(rows * n), sh(n), yh(rows * n);
        for (auto& v : xh) v = __float2half_rn(U(-3, 3)); for (auto& v : sh) v = __float2half_rn(U(0.5, 1.5));
        launch(dim3{(unsigned)rows}, dim3{row_threads(n)}, [&] { N::rmsnorm_f16(xh.data(), sh.data(), yh.data(), rows, n, 1e-6f); });
        for (i64 r = 0; r < rows; ++r) {
            double q = 0; for (i64 k = 0; k < n; ++k) q += (double)__half2float(xh[r * n + k]) * __half2float(xh[r * n + k]);
            double inv = 1 / std::sqrt(q / n + 1e-6);
            for (i64 k = 0; k < n; ++k) check("rmsnorm", __half2float(yh[r * n + k]), __half2float(xh[r * n + k]) * inv * __half2float(sh[k]), 2e-3);
        }
    }
    printf("norm done, %d fails\n", fails);
    // Attention [B, H, S, D] f32 with a key-padding mask, and a packed-stride f16 case.
    for (int D : {16, 32, 64, 80, 96, 128}) for (i64 S : {1, 3, 50}) for (int masked : {0, 1, 2}) {
        i64 B = 2, H = 2;
        std::vector<float> q(B * H * S * D), k(q.size()), v(q.size()), o(q.size()), m(B * H * S * S);
        for (auto& t : q) t = U(-1, 1); for (auto& t : k) t = U(-1, 1); for (auto& t : v) t = U(-1, 1);
        for (auto& t : m) t = U(-2, 2);
        if (masked == 1) for (i64 bq = 0; bq < B; ++bq) m[bq * S + S - 1] = (S > 1) ? -INFINITY : 0.0f;
        A::AttnArgs a{};
        a.q = q.data(); a.k = k.data(); a.v = v.data(); a.o = o.data(); a.mask = masked ? m.data() : nullptr;
        a.batch = B; a.heads = H; a.sq = S; a.sk = S;
        a.q_sb = a.k_sb = a.v_sb = a.o_sb = H * S * D; a.q_sh = a.k_sh = a.v_sh = a.o_sh = S * D; a.q_ss = a.k_ss = a.v_ss = a.o_ss = D;
        if (masked == 1) { a.m_sb = S; a.m_sh = 0; a.m_sq = 0; a.m_sk = 1; }
        if (masked == 2) { a.m_sb = H * S * S; a.m_sh = S * S; a.m_sq = S; a.m_sk = 1; }
        a.scale = 1.0f / std::sqrt((float)D); a.has_mask = masked != 0;
        dim3 g{(unsigned)((S + 7) / 8), (unsigned)H, (unsigned)B};
        auto kernel = D == 16 ? A::attention_d16_f32 : D == 32 ? A::attention_d32_f32 : D == 64 ? A::attention_d64_f32
                    : D == 80 ? A::attention_d80_f32 : D == 96 ? A::attention_d96_f32 : A::attention_d128_f32;
        launch(g, dim3{256}, [&] { kernel(a); });
        for (i64 bq = 0; bq < B; ++bq) for (i64 h = 0; h < H; ++h) for (i64 i = 0; i < S; ++i) {
            std::vector<double> sc(S); double mx = -1e300;
            for (i64 j = 0; j < S; ++j) {
                double d = 0; for (int e = 0; e < D; ++e) d += (double)q[((bq * H + h) * S + i) * D + e] * k[((bq * H + h) * S + j) * D + e];
                d *= a.scale;
                if (masked == 1) d += m[bq * S + j];
                if (masked == 2) d += m[((bq * H + h) * S + i) * S + j];
                sc[j] = d; mx = std::max(mx, d);
            }
            double sum = 0; for (auto& t : sc) { t = std::exp(t - mx); sum += t; }
            for (int e = 0; e < D; ++e) {
                double acc = 0; for (i64 j = 0; j < S; ++j) acc += sc[j] / sum * v[((bq * H + h) * S + j) * D + e];
                check("attention", o[((bq * H + h) * S + i) * D + e], acc, 1e-4);
            }
        }
    }
    printf("attention done, %d fails\n", fails);
    // Layout: transpose2d, pad reflect, permute with a negative stride, gather.
    for (i64 n : {1, 3, 50, 783}) {
        i64 batch = 2, rows = 3, cols = n;
        std::vector<unsigned> x(batch * rows * cols), y(x.size());
        for (size_t i = 0; i < x.size(); ++i) x[i] = (unsigned)i;
        launch(dim3{(unsigned)((cols + 31) / 32), (unsigned)((rows + 31) / 32), (unsigned)batch}, dim3{32, 8}, [&] { L::transpose2d_u32(x.data(), y.data(), batch, rows, cols); });
        for (i64 bq = 0; bq < batch; ++bq) for (i64 r = 0; r < rows; ++r) for (i64 c = 0; c < cols; ++c) check("transpose2d", y[(bq * cols + c) * rows + r], x[(bq * rows + r) * cols + c], 0);
        if (n >= 3) {
            L::PadArgs p{}; for (int d = 0; d < 8; ++d) { p.in_dims[d] = 1; p.out_dims[d] = 1; p.begin[d] = 0; }
            p.in_dims[0] = 2; p.in_dims[1] = n; p.out_dims[0] = 5; p.out_dims[1] = n + 3; p.begin[0] = 1; p.begin[1] = 2;
            std::vector<unsigned> xp(2 * n), yp(5 * (n + 3)); for (size_t i = 0; i < xp.size(); ++i) xp[i] = (unsigned)i;
            i64 total = 5 * (n + 3);
            launch(dim3{(unsigned)((total + 255) / 256)}, dim3{256}, [&] { L::pad_u32(xp.data(), yp.data(), total, 2, p, 1, 0); });
            auto refl = [](i64 c, i64 len) { while (c < 0 || c >= len) { if (c < 0) c = -c; if (c >= len) c = 2 * (len - 1) - c; } return c; };
            for (i64 r = 0; r < 5; ++r) for (i64 c = 0; c < n + 3; ++c) check("pad reflect", yp[r * (n + 3) + c], xp[refl(r - 1, 2) * n + refl(c - 2, n)], 0);
        }
        L::Strided s{}; for (int d = 0; d < 8; ++d) { s.dims[d] = 1; s.strides[d] = 0; }
        i64 oc = (n + 1) / 2; s.dims[0] = 2; s.dims[1] = oc; s.strides[0] = n; s.strides[1] = -2;
        std::vector<unsigned> xs(3 * n), ysl(2 * oc); for (size_t i = 0; i < xs.size(); ++i) xs[i] = (unsigned)i;
        launch(dim3{1}, dim3{256}, [&] { L::permute_u32(xs.data(), ysl.data(), 2 * oc, 2, s, n + n - 1); });
        for (i64 r = 0; r < 2; ++r) for (i64 j = 0; j < oc; ++j) check("slice", ysl[r * oc + j], xs[(r + 1) * n + n - 1 - 2 * j], 0);
    }
    printf("layout done, %d fails\n", fails);
    // Pool: global average and 3x3/2 max pool with padding.
    for (i64 hw : {1, 3, 50, 783, 4096}) {
        std::vector<float> x(6 * hw), y(6); for (auto& v : x) v = U(-4, 4);
        launch(dim3{6}, dim3{row_threads(hw)}, [&] { P::globalavgpool_f32(x.data(), y.data(), 6, hw); });
        for (int p = 0; p < 6; ++p) { double s = 0; for (i64 k = 0; k < hw; ++k) s += x[p * hw + k]; check("globalavg", y[p], s / hw, 1e-5); }
    }
    printf("pool done, %d fails\n", fails);
    return fails != 0;
}
