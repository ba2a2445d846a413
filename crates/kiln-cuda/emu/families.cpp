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
        a.scale = 1.0f / std::sqrt((float)D); a.mask_kind = masked != 0;
        a.kv_group = 1; a.d = D; a.dv = D; a.mask_len = S; a.nonpad = nullptr; a.causal_offset = 0; a.is_causal = 0; a.softcap = 0;
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
    // Attention's extras: grouped-query heads, causal masking after a past, soft-capping,
    // additive and bool masks shorter than the keys, key padding, a V head size of its own
    // (the generic kernel) and head size 8 (both compiled kernels); then qk_matmul_output.
    {
        const i64 B = 2, HQ = 6, HK = 2, SQ = 5, SK = 37, PAST = 32, ML = 30;
        for (int variant : {0, 1, 2}) for (int masked : {0, 1, 2}) for (int causal : {0, 1}) for (float cap : {0.0f, 2.0f}) for (int padded : {0, 1}) {
            const int D = 8, DV = variant == 2 ? 10 : 8;
            std::vector<float> q(B * HQ * SQ * D), k(B * HK * SK * D), v(B * HK * SK * DV), o(B * HQ * SQ * DV), m(B * HQ * SQ * ML);
            std::vector<unsigned char> mb(m.size());
            for (auto& t : q) t = U(-2, 2); for (auto& t : k) t = U(-2, 2); for (auto& t : v) t = U(-1, 1);
            for (auto& t : m) t = U(-2, 2) < -1.5f ? -INFINITY : U(-2, 2);
            for (auto& t : mb) t = U(0, 1) < 0.7f;
            std::vector<i64> np{20, 37};
            A::AttnArgs a{};
            a.q = q.data(); a.k = k.data(); a.v = v.data(); a.o = o.data();
            a.mask = masked == 1 ? (const void*)m.data() : masked == 2 ? (const void*)mb.data() : nullptr;
            a.batch = B; a.heads = HQ; a.sq = SQ; a.sk = SK;
            a.q_sb = HQ * SQ * D; a.q_sh = SQ * D; a.q_ss = D;
            a.k_sb = HK * SK * D; a.k_sh = SK * D; a.k_ss = D;
            a.v_sb = HK * SK * DV; a.v_sh = SK * DV; a.v_ss = DV;
            a.o_sb = HQ * SQ * DV; a.o_sh = SQ * DV; a.o_ss = DV;
            a.m_sb = HQ * SQ * ML; a.m_sh = SQ * ML; a.m_sq = ML; a.m_sk = 1;
            a.scale = 0.3f; a.mask_kind = masked; a.nonpad = padded ? np.data() : nullptr;
            a.kv_group = HQ / HK; a.d = D; a.dv = DV; a.mask_len = ML; a.causal_offset = PAST; a.softcap = cap; a.is_causal = causal;
            const int R = variant == 1 ? 4 : 1;
            dim3 g{(unsigned)((SQ + 8 * R - 1) / (8 * R)), (unsigned)HQ, (unsigned)B};
            auto kernel = variant == 0 ? A::attention_r1_d8_f32 : variant == 1 ? A::attention_d8_f32 : A::attention_generic_f32;
            launch(g, dim3{256}, [&] { kernel(a); });
            std::vector<double> scores(B * HQ * SQ * SK), probs(scores.size()), masked_s(scores.size());
            for (i64 bq = 0; bq < B; ++bq) for (i64 h = 0; h < HQ; ++h) for (i64 i = 0; i < SQ; ++i) {
                const i64 hk = h / (HQ / HK), row = (bq * HQ + h) * SQ + i;
                std::vector<double> sc(SK); double mx = -INFINITY;
                for (i64 j = 0; j < SK; ++j) {
                    double d = 0; for (int e = 0; e < D; ++e) d += (double)q[row * D + e] * k[((bq * HK + hk) * SK + j) * D + e];
                    d *= a.scale;
                    scores[row * SK + j] = d;
                    double bias = 0;
                    if (masked) bias = j >= ML ? -INFINITY : masked == 1 ? (double)m[row * ML + j] : (mb[row * ML + j] ? 0.0 : -INFINITY);
                    if (causal && j > i + PAST) bias += -INFINITY;
                    if (padded && j >= np[bq]) bias += -INFINITY;
                    d = bias + d;
                    masked_s[row * SK + j] = d;
                    if (cap > 0) d = cap * std::tanh(d / cap);
                    sc[j] = d; mx = std::max(mx, d);
                }
                double sum = 0; for (auto& t : sc) { t = std::exp(t - mx); sum += t; }
                for (i64 j = 0; j < SK; ++j) probs[row * SK + j] = sc[j] / sum;
                for (int e = 0; e < DV; ++e) {
                    double acc = 0; for (i64 j = 0; j < SK; ++j) acc += sc[j] / sum * v[((bq * HK + hk) * SK + j) * DV + e];
                    check("attention extras", o[row * DV + e], acc, 1e-4);
                }
            }
            if (variant == 2 && padded == 1) {
                for (int mode : {0, 1, 2, 3}) {
                    std::vector<float> qk(scores.size());
                    launch(dim3{(unsigned)(B * HQ * SQ)}, dim3{64}, [&] { A::attention_scores_f32(a, qk.data(), mode); });
                    for (size_t t = 0; t < qk.size(); ++t) {
                        double want = mode == 0 ? scores[t] : mode == 1 ? masked_s[t]
                                    : mode == 2 ? (cap > 0 ? cap * std::tanh(masked_s[t] / cap) : masked_s[t]) : probs[t];
                        check("qk_matmul_output", qk[t], want, 1e-4);
                    }
                }
            }
        }
        printf("attention extras done, %d fails\n", fails);
    }
    // RotaryEmbedding: 4-D and 3-D, interleaved or not, partial rotation, with position ids
    // (one out of range) and without.
    for (int three_d : {0, 1}) for (int inter : {0, 1}) for (i64 rd : {4, 8}) for (int with_pos : {0, 1}) {
        const i64 B = 2, H = 3, S = 5, Dh = 8, half = rd / 2, MAXP = 50;
        std::vector<float> x(B * H * S * Dh), y(x.size());
        for (auto& t : x) t = U(-2, 2);
        const i64 rows = with_pos ? MAXP : B * S;
        std::vector<float> c(rows * half), sn(rows * half);
        for (auto& t : c) t = U(-1, 1); for (auto& t : sn) t = U(-1, 1);
        std::vector<i64> pos(B * S); for (auto& t : pos) t = (i64)U(0, 49.99f);
        if (with_pos) pos[3] = MAXP;
        int err = 0;
        A::RopeArgs p{(i64)x.size(), S, H, Dh, three_d ? 0 : 1, rd, inter, S, MAXP};
        launch(dim3{2}, dim3{64}, [&] { A::rotary_f32(x.data(), c.data(), sn.data(), with_pos ? pos.data() : nullptr, y.data(), p, &err); });
        check("rotary error flag", err, with_pos, 0);
        for (i64 bq = 0; bq < B; ++bq) for (i64 si = 0; si < S; ++si) for (i64 h = 0; h < H; ++h) {
            const i64 base = three_d ? ((bq * S + si) * H + h) * Dh : ((bq * H + h) * S + si) * Dh;
            const i64 r = with_pos ? pos[bq * S + si] : bq * S + si;
            for (i64 ch = 0; ch < Dh; ++ch) {
                double want = x[base + ch];
                if (with_pos && (r < 0 || r >= MAXP)) { if (ch < rd) want = 0; }
                else if (ch < rd) {
                    const bool first = inter ? ch % 2 == 0 : ch < half;
                    const i64 kk = inter ? ch / 2 : (first ? ch : ch - half);
                    const i64 i1 = inter ? 2 * kk : kk, i2 = inter ? 2 * kk + 1 : kk + half;
                    const double x1 = x[base + i1], x2 = x[base + i2], cc = c[r * half + kk], ss = sn[r * half + kk];
                    want = first ? cc * x1 - ss * x2 : ss * x1 + cc * x2;
                }
                check("rotary", y[base + ch], want, 1e-5);
            }
        }
    }
    printf("rotary done, %d fails\n", fails);
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
