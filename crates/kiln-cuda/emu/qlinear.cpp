// Host runs of qlinear.cu's tensor-core convolutions (through shim.h's WMMA emulation)
// against a naive reference and, for QLinearConv, exactly against the direct kernel; see run.sh.
#include "shim.h"
#include <random>
namespace Q {
#include "qlinear_full.inc"
}
typedef long long i64;
static std::mt19937 rng(7);
static int fails = 0;

struct Case { i64 n, c, h, w, m, kh, kw, sh, sw, ph, pw, dh, dw; bool misalign; };

static void run(const Case& k) {
    const i64 oh = (k.h + 2 * k.ph - k.dh * (k.kh - 1) - 1) / k.sh + 1;
    const i64 ow = (k.w + 2 * k.pw - k.dw * (k.kw - 1) - 1) / k.sw + 1;
    const i64 K = k.c * k.kh * k.kw, rows = k.n * oh * ow, total = rows * k.m;
    std::vector<signed char> x(k.n * k.c * k.h * k.w), ws(k.m * K + 16);
    signed char* w = ws.data() + (k.misalign ? 1 : 0);
    for (auto& v : x) v = (signed char)(rng() % 256);
    for (i64 i = 0; i < k.m * K; ++i) w[i] = (signed char)(rng() % 256);
    x[0] = -128; w[0] = -128;
    Q::QlConvArgs g{total, k.c, k.h, k.w, k.m, k.kh, k.kw, oh, ow, k.sh, k.sw, k.dh, k.dw, k.ph, k.pw, 1, 1};
    std::vector<int> y(total, 0x7eadbeef);
    const dim3 grid{(unsigned)((rows + 127) / 128), (unsigned)((k.m + 63) / 64)}, block{256};
    launch(grid, block, [&] { Q::conv_integer_tc_i8_i8(x.data(), w, y.data(), g); });
    int bad = 0;
    for (i64 b = 0; b < k.n; ++b) for (i64 oc = 0; oc < k.m; ++oc) for (i64 oy = 0; oy < oh; ++oy) for (i64 ox = 0; ox < ow; ++ox) {
        int acc = 0;
        for (i64 c = 0; c < k.c; ++c) for (i64 ky = 0; ky < k.kh; ++ky) for (i64 kx = 0; kx < k.kw; ++kx) {
            const i64 iy = oy * k.sh - k.ph + ky * k.dh, ix = ox * k.sw - k.pw + kx * k.dw;
            if (iy < 0 || iy >= k.h || ix < 0 || ix >= k.w) continue;
            acc += x[((b * k.c + c) * k.h + iy) * k.w + ix] * w[((oc * k.c + c) * k.kh + ky) * k.kw + kx];
        }
        const int got = y[((b * k.m + oc) * oh + oy) * ow + ox];
        if (got != acc && bad++ < 5) printf("FAIL conv_integer_tc [%lld %lld %lld %lld] y[%lld, %lld, %lld, %lld] = %d, want %d\n", k.n, k.c, k.h, k.w, b, oc, oy, ox, got, acc);
    }
    // QLinearConv to i8 with a bias and per-channel scales: the tensor-core kernel against the direct one.
    std::vector<int> bias(k.m); for (auto& v : bias) v = (int)(rng() % 20001) - 10000;
    std::vector<float> wsc(k.m); for (auto& v : wsc) v = 0.001f + (rng() % 1000) * 1e-5f;
    const float xsc = 0.02f, ysc = 0.5f; const signed char yzp = 3;
    std::vector<signed char> y1(total), y2(total);
    launch(grid, block, [&] { Q::qlinear_conv_tc_i8_i8_i8(x.data(), w, y1.data(), g, bias.data(), &xsc, wsc.data(), &ysc, &yzp, k.m, 0); });
    launch(dim3{(unsigned)std::min<i64>((total + 255) / 256, 4)}, block, [&] {
        Q::qlinear_conv_i8_i8_i8(x.data(), w, nullptr, nullptr, y2.data(), g, bias.data(), &xsc, wsc.data(), &ysc, &yzp, k.m, 0);
    });
    for (i64 i = 0; i < total; ++i) if (y1[i] != y2[i] && bad++ < 5) printf("FAIL qlinear_conv_tc element %lld: %d, want %d\n", i, y1[i], y2[i]);
    printf("conv [%lld, %lld, %lld, %lld] * [%lld, %lld, %lld, %lld] stride %lldx%lld pad %lldx%lld dil %lldx%lld%s: %s\n", k.n, k.c, k.h, k.w, k.m, k.c, k.kh, k.kw,
           k.sh, k.sw, k.ph, k.pw, k.dh, k.dw, k.misalign ? " (weight misaligned)" : "", bad ? "FAIL" : "ok");
    fails += bad;
}

int main() {
    const Case cases[] = {
        {2, 40, 9, 9, 70, 1, 1, 1, 1, 0, 0, 1, 1, false},   // 1x1: row, column and k tails
        {1, 64, 12, 12, 64, 1, 1, 1, 1, 0, 0, 1, 1, false}, // 1x1, K a multiple of 16 (vector B)
        {1, 64, 12, 12, 64, 1, 1, 1, 1, 0, 0, 1, 1, true},  // the same with a misaligned weight
        {2, 32, 10, 10, 16, 1, 1, 2, 2, 0, 0, 1, 1, false}, // 1x1 stride 2
        {1, 16, 8, 8, 24, 3, 3, 1, 1, 1, 1, 1, 1, false},   // 3x3 pad 1
        {3, 5, 9, 7, 33, 3, 3, 2, 2, 1, 1, 1, 1, false},    // 3x3 pad 1 stride 2
        {1, 3, 16, 16, 8, 7, 7, 2, 2, 3, 3, 1, 1, false},   // a 7x7 stem
        {1, 6, 9, 9, 10, 3, 3, 1, 1, 2, 2, 2, 2, false},    // dilation 2
        {2, 7, 1, 50, 20, 1, 5, 1, 1, 0, 2, 1, 1, false},   // 1-D
    };
    for (const Case& k : cases) run(k);
    printf("qlinear done, %d fails\n", fails);
    return fails != 0;
}
