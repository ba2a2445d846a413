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
namespace I {
#include "index_full.inc"
}
namespace C {
#include "conv_full.inc"
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

// Depthwise NHWC convolution: the vector kernels against a naive reference and, exactly,
// against the one-element-per-thread kernel (they sum the taps in the same order). Shapes hit
// the vector path (strides 1 and 2, pads even and not, widths not a multiple of DW_OX) and
// the fallbacks inside the vector kernel (channels not a multiple of the vector, 5x5, dilation,
// stride 3, a misaligned pointer).
struct DwCase { i64 n, c, ih, iw, kh, kw, sh, sw, dh, dw, ph0, pw0, ph1, pw1, act; bool bias; };
template <typename T, typename K1, typename K2>
static void dw_case(const char* what, const DwCase& k, int vec, K1 scalar, K2 vector, bool misalign, bool one_block) {
    using C::from_f32;
    using C::to_f32;
    const i64 oh = (k.ih + k.ph0 + k.ph1 - k.dh * (k.kh - 1) - 1) / k.sh + 1;
    const i64 ow = (k.iw + k.pw0 + k.pw1 - k.dw * (k.kw - 1) - 1) / k.sw + 1;
    const i64 nx = k.n * k.ih * k.iw * k.c, ny = k.n * oh * ow * k.c;
    // Spare elements in front, so that x + 1 is a misaligned input.
    std::vector<T> xs(nx + 16), w(k.kh * k.kw * k.c), b(k.c), y1(ny), y2(ny);
    std::vector<float> xf(nx), wf(w.size()), bf(k.c);
    T* x = xs.data() + (misalign ? 1 : 16 / sizeof(T));
    for (i64 i = 0; i < nx; ++i) { x[i] = from_f32<T>(U(-4, 4)); xf[i] = to_f32(x[i]); }
    if (nx > 5) { x[3] = from_f32<T>(NAN); xf[3] = NAN; }
    for (size_t i = 0; i < w.size(); ++i) { w[i] = from_f32<T>(U(-1, 1)); wf[i] = to_f32(w[i]); }
    for (i64 i = 0; i < k.c; ++i) { b[i] = from_f32<T>(U(-1, 1)); bf[i] = to_f32(b[i]); }
    C::DwArgs p{k.n, k.c, k.ih, k.iw, oh, ow, k.kh, k.kw, k.sh, k.sw, k.dh, k.dw, k.ph0, k.pw0, k.act, 0.0, 6.0};
    const T* bp = k.bias ? b.data() : nullptr;
    auto blocks = [](i64 t) { return (unsigned)std::min<i64>(std::max<i64>((t + 255) / 256, 1), 65535); };
    launch(dim3{blocks(ny)}, dim3{256}, [&] { scalar(x, w.data(), bp, y1.data(), p); });
    const i64 vt = k.n * oh * ((ow + 3) / 4) * ((k.c + vec - 1) / vec);
    launch(dim3{one_block ? 1u : blocks(vt)}, dim3{one_block ? 64u : 256u}, [&] { vector(x, w.data(), bp, y2.data(), p); });
    for (i64 n = 0; n < k.n; ++n) for (i64 oy = 0; oy < oh; ++oy) for (i64 ox = 0; ox < ow; ++ox) for (i64 ch = 0; ch < k.c; ++ch) {
        double acc = k.bias ? bf[ch] : 0.0;
        for (i64 ky = 0; ky < k.kh; ++ky) for (i64 kx = 0; kx < k.kw; ++kx) {
            const i64 iy = oy * k.sh - k.ph0 + ky * k.dh, ix = ox * k.sw - k.pw0 + kx * k.dw;
            if (iy < 0 || iy >= k.ih || ix < 0 || ix >= k.iw) continue;
            acc += (double)xf[((n * k.ih + iy) * k.iw + ix) * k.c + ch] * wf[(ky * k.kw + kx) * k.c + ch];
        }
        if (k.act == 1) acc = acc < 0 ? 0 : acc;
        if (k.act == 2) acc = acc < 0 ? 0 : (acc > 6 ? 6 : acc);
        const i64 i = ((n * oh + oy) * ow + ox) * k.c + ch;
        check(what, to_f32(y2[i]), to_f32(from_f32<T>((float)acc)), sizeof(T) == 4 ? 1e-5 : 1e-2);
        // The same f32 sums, so the same bits (NaN matches NaN).
        check(what, to_f32(y2[i]), to_f32(y1[i]), 0);
    }
}

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
    // The warp-per-row paths (rows of whole 16-byte vectors up to 4096 bytes): LayerNorm with
    // and without bias, RMSNorm, Softmax and LogSoftmax, on aligned rows and on rows one
    // element off alignment (the element-load branch), with the planned grid and with 2 blocks
    // of 2 warps striding over 37 rows.
    for (i64 n : {8, 16, 64, 768, 1024, 2048}) for (int half : {0, 1}) for (int shift : {0, 1}) for (int small : {0, 1}) {
        const i64 rows = 37, esz = half ? 2 : 4;
        if (n * esz > 4096) continue;
        dim3 g{small ? 2u : (unsigned)((rows + 7) / 8)}, b{small ? 64u : 256u};
        std::vector<float> xf(rows * n), sf(n), bf(n), out(rows * n), mean(rows), inv(rows);
        for (auto& v : xf) v = U(99, 101); for (auto& v : sf) v = U(0.5, 1.5); for (auto& v : bf) v = U(-1, 1);
        std::vector<__half> xh(rows * n + 1), sh(n + 1), bh(n + 1), yh(rows * n + 1);
        std::vector<float> xs(rows * n + 1), ss(n + 1), bs(n + 1), ysf(rows * n + 1);
        for (i64 i = 0; i < rows * n; ++i) { xh[i + shift] = __float2half_rn(xf[i]); if (half) xf[i] = __half2float(xh[i + shift]); xs[i + shift] = xf[i]; }
        for (i64 k = 0; k < n; ++k) {
            sh[k + shift] = __float2half_rn(sf[k]); bh[k + shift] = __float2half_rn(bf[k]);
            if (half) { sf[k] = __half2float(sh[k + shift]); bf[k] = __half2float(bh[k + shift]); }
            ss[k + shift] = sf[k]; bs[k + shift] = bf[k];
        }
        auto get = [&](i64 i) { return half ? __half2float(yh[i + shift]) : ysf[i + shift]; };
        const double tol = half ? 4e-3 : 2e-4;
        for (int with_bias : {1, 0}) {
            launch(g, b, [&] {
                if (half) N::layernorm_warp_f16(xh.data() + shift, sh.data() + shift, with_bias ? bh.data() + shift : nullptr, yh.data() + shift, rows, n, 1e-5f, mean.data(), inv.data());
                else N::layernorm_warp_f32(xs.data() + shift, ss.data() + shift, with_bias ? bs.data() + shift : nullptr, ysf.data() + shift, rows, n, 1e-5f, mean.data(), inv.data());
            });
            for (i64 r = 0; r < rows; ++r) {
                double m = 0, v = 0; for (i64 k = 0; k < n; ++k) m += xf[r * n + k]; m /= n;
                for (i64 k = 0; k < n; ++k) v += (xf[r * n + k] - m) * (xf[r * n + k] - m); v /= n;
                check("ln_warp mean", mean[r], m, 1e-6);
                check("ln_warp inv", inv[r], 1 / std::sqrt(v + 1e-5), 1e-4);
                for (i64 k = 0; k < n; ++k) check("layernorm_warp", get(r * n + k), (xf[r * n + k] - m) / std::sqrt(v + 1e-5) * sf[k] + (with_bias ? bf[k] : 0), tol);
            }
        }
        // The quantizing LayerNorm: the same output, and its i8 copy exactly the quantization of
        // the stored value (round half to even, saturated: the scale makes some values clip).
        {
            std::vector<signed char> q(rows * n + 16, 99);
            const float qc = 0.0123f, qr = (float)(1.0 / (double)qc);
            launch(g, b, [&] {
                if (half) N::layernorm_warp_q_f16(xh.data() + shift, sh.data() + shift, bh.data() + shift, yh.data() + shift, rows, n, 1e-5f, nullptr, nullptr, q.data() + shift, qc, qr);
                else N::layernorm_warp_q_f32(xs.data() + shift, ss.data() + shift, bs.data() + shift, ysf.data() + shift, rows, n, 1e-5f, nullptr, nullptr, q.data() + shift, qc, qr);
            });
            for (i64 r = 0; r < rows; ++r) {
                double m = 0, v = 0; for (i64 k = 0; k < n; ++k) m += xf[r * n + k]; m /= n;
                for (i64 k = 0; k < n; ++k) v += (xf[r * n + k] - m) * (xf[r * n + k] - m); v /= n;
                for (i64 k = 0; k < n; ++k) {
                    const float y = get(r * n + k);
                    check("layernorm_warp_q", y, (xf[r * n + k] - m) / std::sqrt(v + 1e-5) * sf[k] + bf[k], tol);
                    const float want = std::fmin(std::fmax(std::nearbyint(y / qc), -128.0f), 127.0f);
                    check("layernorm_warp_q i8", q[r * n + k + shift], want, 0);
                }
            }
        }
        launch(g, b, [&] {
            if (half) N::rmsnorm_warp_f16(xh.data() + shift, sh.data() + shift, yh.data() + shift, rows, n, 1e-6f);
            else N::rmsnorm_warp_f32(xs.data() + shift, ss.data() + shift, ysf.data() + shift, rows, n, 1e-6f);
        });
        for (i64 r = 0; r < rows; ++r) {
            double q = 0; for (i64 k = 0; k < n; ++k) q += (double)xf[r * n + k] * xf[r * n + k];
            for (i64 k = 0; k < n; ++k) check("rmsnorm_warp", get(r * n + k), xf[r * n + k] / std::sqrt(q / n + 1e-6) * sf[k], tol);
        }
        for (int log : {0, 1}) {
            launch(g, b, [&] {
                if (half && log) R::logsoftmax_warp_f16(xh.data() + shift, yh.data() + shift, rows, n);
                else if (half) R::softmax_warp_f16(xh.data() + shift, yh.data() + shift, rows, n);
                else if (log) R::logsoftmax_warp_f32(xs.data() + shift, ysf.data() + shift, rows, n);
                else R::softmax_warp_f32(xs.data() + shift, ysf.data() + shift, rows, n);
            });
            for (i64 r = 0; r < rows; ++r) {
                double m = -1e30, s = 0; for (i64 k = 0; k < n; ++k) m = std::max(m, (double)xf[r * n + k]);
                for (i64 k = 0; k < n; ++k) s += std::exp(xf[r * n + k] - m);
                for (i64 k = 0; k < n; ++k) {
                    const double e = xf[r * n + k] - m;
                    check(log ? "logsoftmax_warp" : "softmax_warp", get(r * n + k), log ? e - std::log(s) : std::exp(e) / s, tol);
                }
            }
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
        // The narrow transpose, both ways round: [3, n] and [n, 3].
        for (int flip = 0; flip < 2; ++flip) {
            const i64 rr = flip ? cols : rows, cc = flip ? rows : cols;
            std::fill(y.begin(), y.end(), 0u);
            launch(dim3{4}, dim3{64}, [&] { L::transpose_narrow_u32(x.data(), y.data(), batch, rr, cc); });
            for (i64 bq = 0; bq < batch; ++bq) for (i64 r = 0; r < rr; ++r) for (i64 c = 0; c < cc; ++c) check("transpose_narrow", y[(bq * cc + c) * rr + r], x[(bq * rr + r) * cc + c], 0);
        }
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
    // gather_rows: whole rows as 16-byte vectors, aligned and one element off (the element
    // kernel), a bad index zeroing its row and setting the flag.
    for (i64 inner : {8, 64, 768}) for (i64 outer : {1, 3}) for (int shift : {0, 1}) {
        const i64 len = 40, nidx = 13;
        std::vector<unsigned short> x(outer * len * inner + 1), y(outer * nidx * inner + 1);
        for (size_t i = 0; i < x.size(); ++i) x[i] = (unsigned short)(i * 7 + 3);
        std::vector<i64> idx(nidx); for (auto& v : idx) v = (i64)(rng() % (2 * len)) - len;
        for (int bad : {0, 1}) {
            std::vector<i64> id = idx; if (bad) id[5] = len;
            int err = 0;
            launch(dim3{2}, dim3{64}, [&] { L::gather_rows_u16(x.data() + shift, id.data(), y.data() + shift, outer, len, nidx, inner, &err); });
            check("gather_rows error", err, bad, 0);
            for (i64 o = 0; o < outer; ++o) for (i64 j = 0; j < nidx; ++j) for (i64 c = 0; c < inner; ++c) {
                i64 k = id[j] < 0 ? id[j] + len : id[j];
                double want = (bad && j == 5) ? 0 : x[shift + (o * len + k) * inner + c];
                check("gather_rows", y[shift + (o * nidx + j) * inner + c], want, 0);
            }
        }
    }
    printf("layout done, %d fails\n", fails);
    // Pool: global average and 3x3/2 max pool with padding.
    for (i64 hw : {1, 3, 50, 783, 4096}) {
        std::vector<float> x(6 * hw), y(6); for (auto& v : x) v = U(-4, 4);
        launch(dim3{6}, dim3{row_threads(hw)}, [&] { P::globalavgpool_f32(x.data(), y.data(), 6, hw); });
        for (int p = 0; p < 6; ++p) { double s = 0; for (i64 k = 0; k < hw; ++k) s += x[p * hw + k]; check("globalavg", y[p], s / hw, 1e-5); }
    }
    // 3x3/2 max pool with padding, channels-last, one channel a thread and 16 bytes of them
    // (i8 over 32 channels, f16 over 16), against a naive loop.
    {
        const i64 N = 2, H = 7, W = 6, OH = 4, OW = 3;
        P::PoolArgs a{};
        a.ih = H; a.iw = W; a.oh = OH; a.ow = OW; a.kh = a.kw = 3; a.sh = a.sw = 2; a.dh = a.dw = 1;
        a.ph0 = a.pw0 = a.ph1 = a.pw1 = 1;
        auto want = [&](auto& x, i64 c, i64 n, i64 oy, i64 ox, i64 ch) {
            double m = -1e30;
            for (i64 ky = 0; ky < 3; ++ky) for (i64 kx = 0; kx < 3; ++kx) {
                const i64 yy = oy * 2 - 1 + ky, xx = ox * 2 - 1 + kx;
                if (yy >= 0 && yy < H && xx >= 0 && xx < W) m = std::max(m, (double)P::to_f32(x[((n * H + yy) * W + xx) * c + ch]));
            }
            return m;
        };
        for (int vec : {0, 1}) {
            const i64 c8 = 32;
            a.planes = N * c8;
            std::vector<signed char> x(N * H * W * c8), y(N * OH * OW * c8);
            for (auto& v : x) v = (signed char)(rng() % 256);
            const unsigned threads = (unsigned)(N * OH * OW * c8 / (vec ? 16 : 1));
            launch(dim3{(threads + 63) / 64}, dim3{64}, [&] { (vec ? P::maxpool2d_nhwc16_i8 : P::maxpool2d_nhwc_i8)(x.data(), y.data(), a, c8); });
            for (i64 n = 0; n < N; ++n) for (i64 oy = 0; oy < OH; ++oy) for (i64 ox = 0; ox < OW; ++ox) for (i64 ch = 0; ch < c8; ++ch)
                check("maxpool nhwc i8", y[((n * OH + oy) * OW + ox) * c8 + ch], want(x, c8, n, oy, ox, ch), 0);
            const i64 c16 = 16;
            a.planes = N * c16;
            std::vector<__half> xh(N * H * W * c16), yh(N * OH * OW * c16);
            for (auto& v : xh) v = __float2half_rn(U(-4, 4));
            const unsigned th = (unsigned)(N * OH * OW * c16 / (vec ? 8 : 1));
            launch(dim3{(th + 63) / 64}, dim3{64}, [&] { (vec ? P::maxpool2d_nhwc16_f16 : P::maxpool2d_nhwc_f16)(xh.data(), yh.data(), a, c16); });
            for (i64 n = 0; n < N; ++n) for (i64 oy = 0; oy < OH; ++oy) for (i64 ox = 0; ox < OW; ++ox) for (i64 ch = 0; ch < c16; ++ch)
                check("maxpool nhwc f16", __half2float(yh[((n * OH + oy) * OW + ox) * c16 + ch]), want(xh, c16, n, oy, ox, ch), 0);
        }
    }
    printf("pool done, %d fails\n", fails);
    // Index: the gathers, scatters (duplicates resolve in index order), CumSum, TopK (ties and
    // NaN), Hardmax, the NLL loss, OneHot, Trilu and EyeLike.
    const dim3 G{2}, B{64};  // few threads, so the grid-stride loops wrap
    auto strided = [](std::vector<i64> dims, std::vector<i64> strides) {
        I::Strided s{}; for (int d = 0; d < 8; ++d) { s.dims[d] = 1; s.strides[d] = 0; }
        for (size_t d = 0; d < dims.size(); ++d) { s.dims[d] = dims[d]; s.strides[d] = strides[d]; }
        return s;
    };
    for (i64 n : {1, 3, 50, 783}) {
        // GatherElements along axis 1 of [3, n, 4] with indices [2, m, 3]; one bad index.
        i64 m = 5, len = 2 * m * 3;
        std::vector<unsigned> x(3 * n * 4), y(len); for (size_t i = 0; i < x.size(); ++i) x[i] = (unsigned)i;
        std::vector<i64> idx(len); for (auto& v : idx) v = (i64)(rng() % (2 * n)) - n;
        int err = 0;
        launch(G, B, [&] { I::gather_elements_u32(x.data(), idx.data(), y.data(), len, 3, strided({2, m, 3}, {n * 4, 0, 1}), n, 4, &err); });
        for (i64 i = 0; i < len; ++i) { i64 a = i / (m * 3), c = i % 3, k = idx[i] < 0 ? idx[i] + n : idx[i]; check("gather_elements", y[i], x[(a * n + k) * 4 + c], 0); }
        check("gather_elements ok", err, 0, 0);
        idx[len - 1] = n;
        launch(G, B, [&] { I::gather_elements_u32(x.data(), idx.data(), y.data(), len, 3, strided({2, m, 3}, {n * 4, 0, 1}), n, 4, &err); });
        check("gather_elements error", err, 1, 0);
        // GatherND, batch_dims 1: [3, n, 4] with indices [3, 7, 1] picks rows of 4.
        std::vector<i64> nd(21); for (auto& v : nd) v = (i64)(rng() % (2 * n)) - n;
        std::vector<unsigned> ynd(21 * 4); err = 0;
        launch(G, B, [&] { I::gather_nd_u32(x.data(), nd.data(), ynd.data(), 84, 4, 1, 7, n * 4, strided({n}, {4}), &err); });
        for (i64 t = 0; t < 21; ++t) for (i64 j = 0; j < 4; ++j) { i64 k = nd[t] < 0 ? nd[t] + n : nd[t]; check("gather_nd", ynd[t * 4 + j], x[((t / 7) * n + k) * 4 + j], 0); }
        check("gather_nd ok", err, 0, 0);
        // ScatterElements along axis 0 of [4, n], indices [6, c]: none and add, in order.
        i64 c = (n + 1) / 2;
        std::vector<float> d(4 * n), u(6 * c); for (auto& v : d) v = U(-3, 3); for (auto& v : u) v = U(-3, 3);
        std::vector<i64> si(6 * c); for (auto& v : si) v = (i64)(rng() % 8) - 4;
        for (int red : {0, 1, 2, 3, 4}) {
            std::vector<float> out = d, want = d;
            launch(G, B, [&] { I::scatter_elements_f32(si.data(), u.data(), out.data(), 1, 6, c, 2, strided({6, c}, {0, 1}), 4, n, red, &err); });
            for (i64 j = 0; j < 6; ++j) for (i64 q = 0; q < c; ++q) {
                i64 k = si[j * c + q] < 0 ? si[j * c + q] + 4 : si[j * c + q]; float& o = want[k * n + q]; float v = u[j * c + q];
                o = red == 0 ? v : red == 1 ? o + v : red == 2 ? o * v : red == 3 ? (v > o ? v : o) : (v < o ? v : o);
            }
            for (size_t i = 0; i < out.size(); ++i) check("scatter_elements", out[i], want[i], 1e-6);
        }
        // ScatterND add of [3] rows into [n, 3] i32 with duplicate tuples.
        std::vector<int> dn(n * 3), un(7 * 3); for (auto& v : dn) v = (int)(rng() % 100); for (auto& v : un) v = (int)(rng() % 100);
        std::vector<i64> ti(7); for (auto& v : ti) v = (i64)(rng() % (2 * n)) - n;
        std::vector<int> on = dn, wn = dn;
        launch(G, B, [&] { I::scatter_nd_i32(ti.data(), un.data(), on.data(), 3, 7, 1, strided({n}, {3}), 1, &err); });
        for (i64 t = 0; t < 7; ++t) for (i64 j = 0; j < 3; ++j) wn[(ti[t] < 0 ? ti[t] + n : ti[t]) * 3 + j] += un[t * 3 + j];
        for (size_t i = 0; i < on.size(); ++i) check("scatter_nd", on[i], wn[i], 0);
        // CumSum over the middle axis of [3, n, 2], exclusive and reverse.
        std::vector<float> cx(3 * n * 2), cy(cx.size()); for (auto& v : cx) v = U(-1, 1);
        for (int ex : {0, 1}) for (int rv : {0, 1}) {
            launch(G, B, [&] { I::cumsum_f32(cx.data(), cy.data(), 3, n, 2, ex, rv); });
            for (i64 o = 0; o < 3; ++o) for (i64 q = 0; q < 2; ++q) {
                double acc = 0;
                for (i64 st = 0; st < n; ++st) { i64 j = rv ? n - 1 - st : st; i64 at = (o * n + j) * 2 + q; if (ex) check("cumsum", cy[at], acc, 1e-5); acc += cx[at]; if (!ex) check("cumsum", cy[at], acc, 1e-5); }
            }
        }
        // TopK over the middle axis of [3, n, 2] with ties and a NaN (the largest value).
        std::vector<float> tx(3 * n * 2); for (auto& v : tx) v = (float)(rng() % 5);
        if (n > 2) tx[2] = NAN;
        for (int largest : {0, 1}) {
            i64 k = std::min<i64>(n, 3);
            std::vector<float> tv(3 * k * 2); std::vector<i64> tix(3 * k * 2);
            launch(G, B, [&] { I::topk_f32(tx.data(), tv.data(), tix.data(), 3, n, 2, k, largest); });
            for (i64 o = 0; o < 3; ++o) for (i64 q = 0; q < 2; ++q) {
                std::vector<i64> ord(n); for (i64 j = 0; j < n; ++j) ord[j] = j;
                auto val = [&](i64 j) { return tx[(o * n + j) * 2 + q]; };
                auto gt = [&](float a, float b) { return std::isnan(b) ? false : std::isnan(a) ? true : a > b; };
                std::stable_sort(ord.begin(), ord.end(), [&](i64 p, i64 r) { return largest ? gt(val(p), val(r)) : gt(val(r), val(p)); });
                for (i64 j = 0; j < k; ++j) { check("topk index", tix[(o * k + j) * 2 + q], ord[j], 0); check("topk value", tv[(o * k + j) * 2 + q], val(ord[j]), 0); }
            }
        }
        // Hardmax in f16: 1 at the first maximum.
        std::vector<__half> hx(3 * n * 2), hy(hx.size()); for (auto& v : hx) v = __float2half_rn((float)(rng() % 4));
        launch(G, B, [&] { I::hardmax_f16(hx.data(), hy.data(), 3, n, 2); });
        for (i64 o = 0; o < 3; ++o) for (i64 q = 0; q < 2; ++q) {
            i64 best = 0; for (i64 j = 1; j < n; ++j) if (__half2float(hx[(o * n + j) * 2 + q]) > __half2float(hx[(o * n + best) * 2 + q])) best = j;
            for (i64 j = 0; j < n; ++j) check("hardmax", __half2float(hy[(o * n + j) * 2 + q]), j == best ? 1 : 0, 0);
        }
        // NLL over [2, 5, n] log-probabilities, weighted, ignore_index -1: none, sum, mean.
        std::vector<float> lx(2 * 5 * n), w(5); for (auto& v : lx) v = U(-4, 0); for (auto& v : w) v = U(0.1f, 2);
        std::vector<i64> tg(2 * n); for (auto& v : tg) v = (i64)(rng() % 6) - 1;
        double s = 0, ws = 0; std::vector<double> per(2 * n);
        for (i64 i = 0; i < 2 * n; ++i) { if (tg[i] < 0) { per[i] = 0; continue; } i64 b = i / n, j = i % n; per[i] = -lx[(b * 5 + tg[i]) * n + j] * w[tg[i]]; s += per[i]; ws += w[tg[i]]; }
        std::vector<float> ly(2 * n); err = 0;
        launch(G, B, [&] { I::nll_loss_f32(lx.data(), tg.data(), w.data(), ly.data(), 2 * n, 5, n, -1, 1, 0, &err); });
        for (i64 i = 0; i < 2 * n; ++i) check("nll none", ly[i], per[i], 1e-6);
        for (int red : {1, 2}) {
            float r = 0;
            launch(dim3{1}, dim3{256}, [&] { I::nll_loss_f32(lx.data(), tg.data(), w.data(), &r, 2 * n, 5, n, -1, 1, red, &err); });
            check("nll reduced", r, red == 1 ? s : s / ws, 1e-5);
        }
        check("nll ok", err, 0, 0);
        tg[0] = 5;
        launch(G, B, [&] { I::nll_loss_f32(lx.data(), tg.data(), nullptr, ly.data(), 2 * n, 5, n, -1, 1, 0, &err); });
        check("nll error", err, 1, 0);
        // OneHot along axis 1 of [3, n] -> [3, 4, n]; Trilu; EyeLike.
        std::vector<i64> oi(3 * n); for (auto& v : oi) v = (i64)(rng() % 12) - 6;
        unsigned vals[2] = {7, 9}; std::vector<unsigned> oh(3 * 4 * n);
        launch(G, B, [&] { I::onehot_u32(oi.data(), vals, oh.data(), 3, 4, n); });
        for (i64 o = 0; o < 3; ++o) for (i64 dd = 0; dd < 4; ++dd) for (i64 j = 0; j < n; ++j) { i64 v = oi[o * n + j]; if (v < 0) v += 4; check("onehot", oh[(o * 4 + dd) * n + j], v == dd ? 9 : 7, 0); }
        std::vector<unsigned> tr(2 * n * 5); i64 kk = -1;
        for (int up : {0, 1}) {
            launch(G, B, [&] { I::trilu_u32(x.data(), tr.data(), 2 * n * 5, n, 5, up ? &kk : nullptr, 2, up); });
            for (i64 i = 0; i < 2 * n * 5; ++i) { i64 cc = i % 5, r = (i / 5) % n; bool keep = up ? cc - r >= -1 : cc - r <= 2; check("trilu", tr[i], keep ? x[i] : 0, 0); }
        }
        std::vector<unsigned> ey(n * 5);
        launch(G, B, [&] { I::eyelike_u32(ey.data(), n * 5, 5, 1, 0x3f800000u); });
        for (i64 i = 0; i < n * 5; ++i) check("eyelike", ey[i], i % 5 - i / 5 == 1 ? 0x3f800000u : 0, 0);
    }
    printf("index done, %d fails\n", fails);
    {
        // Widths 7, 13 and 112 (ow 7, 13, 112 at stride 1; 4, 7, 56 at stride 2 with pad 1).
        std::vector<DwCase> cases;
        for (i64 c : {8, 16, 24, 12}) for (i64 iw : {7, 13}) for (i64 s : {1, 2}) for (int act = 0; act < 3; ++act)
            cases.push_back({2, c, 5, iw, 3, 3, s, s, 1, 1, 1, 1, 1, 1, act, act != 1});
        cases.push_back({1, 8, 3, 112, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2, true});
        cases.push_back({1, 16, 4, 112, 3, 3, 2, 2, 1, 1, 0, 1, 1, 0, 2, true});  // asymmetric
        cases.push_back({2, 8, 6, 9, 3, 3, 2, 2, 1, 1, 0, 0, 1, 1, 2, true});     // SAME_UPPER-like
        cases.push_back({1, 8, 6, 9, 3, 3, 1, 2, 1, 1, 2, 0, 0, 2, 1, false});    // mixed strides, pad 2
        cases.push_back({1, 8, 6, 9, 3, 3, 2, 1, 1, 1, 1, 1, 1, 1, 0, true});
        cases.push_back({1, 8, 5, 6, 2, 3, 1, 1, 1, 1, 0, 1, 1, 1, 0, true});     // 2 x 3 kernel
        cases.push_back({1, 8, 5, 6, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1, true});     // 1 x 1
        cases.push_back({1, 8, 7, 7, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 2, true});     // 5 x 5: fallback
        cases.push_back({1, 8, 7, 7, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2, 2, true});     // dilation: fallback
        cases.push_back({1, 8, 7, 10, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 2, true});    // stride 3: fallback
        cases.push_back({1, 8, 2, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2, true});     // input smaller than the kernel
        for (size_t i = 0; i < cases.size(); ++i) {
            const DwCase& k = cases[i];
            const bool one_block = i % 5 == 0; // a grid smaller than the work: the grid-stride loop
            dw_case<float>("dw f32", k, 4, C::dwconv2d_nhwc_f32, C::dwconv2d_nhwc_v4_f32, false, one_block);
            dw_case<__half>("dw f16", k, 8, C::dwconv2d_nhwc_f16, C::dwconv2d_nhwc_v8_f16, false, one_block);
            dw_case<__nv_bfloat16>("dw bf16", k, 8, C::dwconv2d_nhwc_bf16, C::dwconv2d_nhwc_v8_bf16, false, one_block);
        }
        dw_case<__half>("dw f16 misaligned", cases[0], 8, C::dwconv2d_nhwc_f16, C::dwconv2d_nhwc_v8_f16, true, false);
        dw_case<float>("dw f32 misaligned", cases[0], 4, C::dwconv2d_nhwc_f32, C::dwconv2d_nhwc_v4_f32, true, false);
    }
    printf("conv done, %d fails\n", fails);
    return fails != 0;
}
