// Host runs of the generated INT8 implicit-GEMM kernels (kernels/igemm.cu, written by
// examples/emu_dump.rs with the epilogue f16(relu(f32(acc) * scale[c] + bias[c] + res[r, c])),
// res f16 laid out as the output) against a naive NHWC convolution; see run.sh. Channel counts
// a multiple of 4 run the vectorized kernels, the others the element-by-element ones.
#include "shim.h"
#include <random>
// Each file defines its switches (KILN_IG_DENSE, KILN_IG_PP) for the whole translation unit:
// they are undone before the next.
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace G64 {
#include "igemm64w32v.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace G128 {
#include "igemm128w32v.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace G128W {
#include "igemm128w64v.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace S64 {
#include "igemm64w32s.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace S128 {
#include "igemm128w32s.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace S128W {
#include "igemm128w64s.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace D64 {
#include "igemm64w32d.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace D128 {
#include "igemm128w32d.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace D128W {
#include "igemm128w64d.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace D256 {
#include "igemm256w64d.inc"
}
#undef KILN_IG_SMEM_LAUNCH
#undef KILN_IG_DENSE
namespace D192 {
#include "igemm192w32d.inc"
}
#undef KILN_IG_SMEM_LAUNCH
#undef KILN_IG_DENSE
namespace T192 {
#include "igemm192w32td.inc"
}
#undef KILN_IG_SMEM_LAUNCH
#undef KILN_IG_LOOP
#undef KILN_IG_DENSE
namespace T256 {
#include "igemm256w64td.inc"
}
#undef KILN_IG_SMEM_LAUNCH
#undef KILN_IG_LOOP
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace N64 {
#include "igemm64w32n.inc"
}
#undef KILN_IG_NARROW
namespace N128 {
#include "igemm128w32n.inc"
}
#undef KILN_IG_NARROW
namespace PV {
#include "igemm128w64pv.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace PS {
#include "igemm128w64ps.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace PD {
#include "igemm128w64pd.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace PV32 {
#include "igemm128w32pv.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace PS32 {
#include "igemm128w32ps.inc"
}
#undef KILN_IG_DENSE
#undef KILN_IG_PP
namespace PD32 {
#include "igemm128w32pd.inc"
}
typedef long long i64;
static std::mt19937 rng(11);
static int fails = 0;

// `dense`: run the plain-product kernels (1x1, stride 1, no padding, or a matrix product).
// `pp`: the persistent ping-pong kernel (128-channel tiles), on `pp` blocks. `narrow`: the
// narrow loader (c at most 4, the input NHWC padded to 4 channels, the filter [m][k] with k
// kh * kw * 4 rounded up to 16).
// `loop`: a wide block taking tile after tile, on `loop` blocks.
struct Case { i64 n, c, h, w, m, kh, kw, sh, sw, ph, pw, dh, dw; int bn, wn; bool dense = false; unsigned pp = 0; bool narrow = false; unsigned loop = 0; };

template <class Args, class Epi, class Kernel>
static void run(const Case& k, Kernel kernel) {
    const i64 oh = (k.h + 2 * k.ph - k.dh * (k.kh - 1) - 1) / k.sh + 1;
    const i64 ow = (k.w + 2 * k.pw - k.dw * (k.kw - 1) - 1) / k.sw + 1;
    // The stored channels and the filter rows' length.
    const i64 C = k.narrow ? 4 : k.c;
    const i64 K = k.narrow ? (k.kh * k.kw * 4 + 15) / 16 * 16 : k.kh * k.kw * k.c, rows = k.n * oh * ow;
    // Input NHWC, filter OHWI ([m][kh][kw][c]), both 16-byte aligned as the arena's are; a
    // narrow one's padding channels and filter tail zero.
    std::vector<int4> xs((k.n * k.h * k.w * C) / 16 + 1), ws((k.m * K) / 16 + 1);
    signed char* x = (signed char*)xs.data();
    signed char* w = (signed char*)ws.data();
    for (i64 i = 0; i < k.n * k.h * k.w * C; ++i) x[i] = i % C < k.c ? (signed char)(rng() % 256) : 0;
    for (i64 i = 0; i < k.m * K; ++i) w[i] = !k.narrow || (i % K < k.kh * k.kw * 4 && i % 4 < k.c) ? (signed char)(rng() % 256) : 0;
    x[0] = -128; w[0] = -128;
    // Element (ky, kx, c) of filter row oc.
    auto widx = [&](i64 oc, i64 ky, i64 kx, i64 c) { return k.narrow ? oc * K + (ky * k.kw + kx) * 4 + c : ((oc * k.kh + ky) * k.kw + kx) * k.c + c; };
    std::vector<float> scale(k.m), bias(k.m);
    std::vector<__half> res(rows * k.m), y(rows * k.m, __float2half_rn(-7.0f));
    for (auto& v : scale) v = 1e-4f * (1 + rng() % 100);
    for (auto& v : bias) v = ((int)(rng() % 2001) - 1000) * 1e-3f;
    for (auto& v : res) v = __float2half_rn(((int)(rng() % 2001) - 1000) * 1e-3f);
    Args g{rows, k.n, k.h, k.w, C, k.m, k.kh, k.kw, oh, ow, k.sh, k.sw, k.dh, k.dw, k.ph, k.pw, K};
    Epi e{};
    e.in[0] = scale.data(); e.in[1] = bias.data(); e.in[2] = res.data();
    e.st[0][3] = 1; e.st[1][3] = 1;
    e.st[2][0] = oh * ow * k.m; e.st[2][1] = ow * k.m; e.st[2][2] = k.m; e.st[2][3] = 1;
    dim3 grid{(unsigned)((rows + 127) / 128), (unsigned)((k.m + k.bn - 1) / k.bn)}, block{(unsigned)(64 * k.bn / k.wn)};
    if (k.loop) grid = dim3{k.loop, 1};
    if (k.pp) {
        grid = dim3{k.pp, 1};
        block = dim3{(unsigned)(2 * 64 * 128 / k.wn + 128)};
    }
    launch(grid, block, [&] { kernel(x, w, y.data(), g, e); });
    int bad = 0;
    for (i64 b = 0; b < k.n; ++b) for (i64 oy = 0; oy < oh; ++oy) for (i64 ox = 0; ox < ow; ++ox) for (i64 oc = 0; oc < k.m; ++oc) {
        int acc = 0;
        for (i64 ky = 0; ky < k.kh; ++ky) for (i64 kx = 0; kx < k.kw; ++kx) {
            const i64 iy = oy * k.sh - k.ph + ky * k.dh, ix = ox * k.sw - k.pw + kx * k.dw;
            if (iy < 0 || iy >= k.h || ix < 0 || ix >= k.w) continue;
            for (i64 c = 0; c < k.c; ++c)
                acc += x[((b * k.h + iy) * k.w + ix) * C + c] * w[widx(oc, ky, kx, c)];
        }
        const i64 at = ((b * oh + oy) * ow + ox) * k.m + oc;
        const float want = std::max((float)acc * scale[oc] + bias[oc] + __half2float(res[at]), 0.0f);
        const float got = __half2float(y[at]);
        // f16 keeps 11 bits.
        if (std::fabs(got - want) > 1e-3f * (1 + std::fabs(want)) && bad++ < 5)
            printf("FAIL igemm%dw%d [%lld %lld %lld %lld] y[%lld, %lld, %lld, %lld] = %g, want %g\n", k.bn, k.wn, k.n, k.h, k.w, k.c,
                   b, oy, ox, oc, got, want);
    }
    fails += bad;
    printf("igemm%dw%d%s%s%s n=%lld c=%lld %lldx%lld m=%lld k=%lldx%lld s=%lld p=%lld d=%lld: %s\n", k.bn, k.wn, k.pp ? "p" : "", k.loop ? "t" : "", k.dense ? "d" : k.narrow ? "n" : k.m % 4 ? "s" : "v", k.n, k.c,
           k.h, k.w, k.m, k.kh, k.kw, k.sh, k.ph, k.dh, bad ? "FAIL" : "ok");
}

int main() {
    const Case cases[] = {
        // 3x3, padding, K = 288 (four and a half 64-byte steps), a row tail and a channel tail.
        {2, 32, 7, 6, 40, 3, 3, 1, 1, 1, 1, 1, 1, 64, 32},
        // 1x1 stride 2 (a ResNet downsample), two channel blocks with a tail.
        {3, 16, 9, 9, 136, 1, 1, 2, 2, 0, 0, 1, 1, 128, 64},
        // Dilation 2, asymmetric kernel, more rows than one block.
        {3, 48, 11, 10, 24, 3, 2, 1, 1, 2, 1, 2, 2, 64, 32},
        // 3x3 over 64 channels (a ResNet stage), two channel blocks.
        {2, 64, 6, 5, 70, 3, 3, 1, 1, 1, 1, 1, 1, 64, 32},
        // 3x3 stride 2 (a ResNet stage's first block), 128 channels: two pieces of K per pixel.
        {2, 128, 9, 9, 40, 3, 3, 2, 2, 1, 1, 1, 1, 64, 32},
        {2, 64, 7, 7, 136, 3, 3, 1, 1, 1, 1, 1, 1, 128, 64},
        // A matrix product: 150 rows of k = 96 by 72 columns, both 128-channel shapes.
        {150, 96, 1, 1, 72, 1, 1, 1, 1, 0, 0, 1, 1, 128, 64},
        {150, 96, 1, 1, 200, 1, 1, 1, 1, 0, 0, 1, 1, 128, 32},
        // Channels not a multiple of 4 in 128-channel blocks: the element-by-element epilogue.
        {2, 32, 5, 6, 130, 3, 3, 1, 1, 1, 1, 1, 1, 128, 64},
        {150, 48, 1, 1, 66, 1, 1, 1, 1, 0, 0, 1, 1, 128, 32},
        // The plain-product loader: a 1x1 convolution over 64 channels (a ResNet bottleneck's)
        // with a row tail, and matrix products with K not a multiple of 64.
        {3, 64, 7, 9, 136, 1, 1, 1, 1, 0, 0, 1, 1, 128, 32, true},
        {150, 96, 1, 1, 72, 1, 1, 1, 1, 0, 0, 1, 1, 128, 64, true},
        {200, 208, 1, 1, 40, 1, 1, 1, 1, 0, 0, 1, 1, 64, 32, true},
        // Wide blocks (128 x 256 and 128 x 192): a channel tail in the second block, 11.25
        // steps (more than the six stages), three and a quarter, and one step (fewer than the
        // copies run ahead).
        {300, 720, 1, 1, 300, 1, 1, 1, 1, 0, 0, 1, 1, 256, 64, true},
        {130, 208, 1, 1, 256, 1, 1, 1, 1, 0, 0, 1, 1, 256, 64, true},
        {150, 64, 1, 1, 520, 1, 1, 1, 1, 0, 0, 1, 1, 256, 64, true},
        {300, 720, 1, 1, 200, 1, 1, 1, 1, 0, 0, 1, 1, 192, 32, true},
        {130, 208, 1, 1, 192, 1, 1, 1, 1, 0, 0, 1, 1, 192, 32, true},
        {150, 64, 1, 1, 400, 1, 1, 1, 1, 0, 0, 1, 1, 192, 32, true},
        // The same taking tile after tile: 12 tiles (the last channel block partial) on 2
        // blocks, 6 of 11.25 steps on 4 (two take one tile more), 3 of one step on 2.
        {300, 208, 1, 1, 600, 1, 1, 1, 1, 0, 0, 1, 1, 192, 32, true, 0, false, 2},
        {300, 720, 1, 1, 300, 1, 1, 1, 1, 0, 0, 1, 1, 256, 64, true, 0, false, 4},
        {150, 64, 1, 1, 520, 1, 1, 1, 1, 0, 0, 1, 1, 256, 64, true, 0, false, 2},
        // The persistent kernel: 9 tiles of 4.5 64-byte steps on 2 blocks (the ring of stages
        // wraps, each warpgroup takes turns more than once), an element-by-element epilogue,
        // and plain products with 2 and 1 steps a tile.
        {3, 32, 9, 10, 260, 3, 3, 1, 1, 1, 1, 1, 1, 128, 64, false, 2},
        {2, 32, 5, 6, 130, 3, 3, 1, 1, 1, 1, 1, 1, 128, 64, false, 2},
        {300, 96, 1, 1, 200, 1, 1, 1, 1, 0, 0, 1, 1, 128, 64, true, 2},
        {3, 64, 7, 9, 260, 1, 1, 1, 1, 0, 0, 1, 1, 128, 64, true, 3},
        // The same with two warpgroups a turn.
        {3, 32, 9, 10, 260, 3, 3, 1, 1, 1, 1, 1, 1, 128, 32, false, 2},
        {2, 32, 5, 6, 130, 3, 3, 1, 1, 1, 1, 1, 1, 128, 32, false, 2},
        {300, 96, 1, 1, 200, 1, 1, 1, 1, 0, 0, 1, 1, 128, 32, true, 2},
        {3, 64, 7, 9, 260, 1, 1, 1, 1, 0, 0, 1, 1, 128, 32, true, 3},
        // The narrow loader: a ResNet stem (7x7 stride 2, padding 3, 3 channels: k = 147 of
        // 208 bytes, four 64-byte steps) with a row tail, a one-channel 3x3 over 128-channel
        // blocks, and two channels with dilation 2 and an asymmetric kernel.
        {2, 3, 19, 17, 64, 7, 7, 2, 2, 3, 3, 1, 1, 64, 32, false, 0, true},
        {2, 1, 11, 13, 136, 3, 3, 1, 1, 1, 1, 1, 1, 128, 32, false, 0, true},
        {3, 2, 9, 8, 40, 3, 2, 1, 1, 2, 1, 2, 2, 64, 32, false, 0, true},
    };
    for (const Case& k : cases) {
        const bool v = k.m % 4 == 0;
        if (k.narrow && k.bn == 64) run<N64::IgemmArgs, N64::EpiArgs>(k, [](auto... a) { N64::kernel_igemm64w32n(a...); });
        else if (k.narrow) run<N128::IgemmArgs, N128::EpiArgs>(k, [](auto... a) { N128::kernel_igemm128w32n(a...); });
        else if (k.pp && k.wn == 32 && k.dense) run<PD32::IgemmArgs, PD32::EpiArgs>(k, [](auto... a) { PD32::kernel_igemm128w32pd(a...); });
        else if (k.pp && k.wn == 32 && v) run<PV32::IgemmArgs, PV32::EpiArgs>(k, [](auto... a) { PV32::kernel_igemm128w32pv(a...); });
        else if (k.pp && k.wn == 32) run<PS32::IgemmArgs, PS32::EpiArgs>(k, [](auto... a) { PS32::kernel_igemm128w32ps(a...); });
        else if (k.pp && k.dense) run<PD::IgemmArgs, PD::EpiArgs>(k, [](auto... a) { PD::kernel_igemm128w64pd(a...); });
        else if (k.pp && v) run<PV::IgemmArgs, PV::EpiArgs>(k, [](auto... a) { PV::kernel_igemm128w64pv(a...); });
        else if (k.pp) run<PS::IgemmArgs, PS::EpiArgs>(k, [](auto... a) { PS::kernel_igemm128w64ps(a...); });
        else if (k.loop && k.bn == 192) run<T192::IgemmArgs, T192::EpiArgs>(k, [](auto... a) { T192::kernel_igemm192w32td(a...); });
        else if (k.loop) run<T256::IgemmArgs, T256::EpiArgs>(k, [](auto... a) { T256::kernel_igemm256w64td(a...); });
        else if (k.dense && k.bn == 192) run<D192::IgemmArgs, D192::EpiArgs>(k, [](auto... a) { D192::kernel_igemm192w32d(a...); });
        else if (k.dense && k.bn == 256) run<D256::IgemmArgs, D256::EpiArgs>(k, [](auto... a) { D256::kernel_igemm256w64d(a...); });
        else if (k.dense && k.bn == 64) run<D64::IgemmArgs, D64::EpiArgs>(k, [](auto... a) { D64::kernel_igemm64w32d(a...); });
        else if (k.dense && k.wn == 32) run<D128::IgemmArgs, D128::EpiArgs>(k, [](auto... a) { D128::kernel_igemm128w32d(a...); });
        else if (k.dense) run<D128W::IgemmArgs, D128W::EpiArgs>(k, [](auto... a) { D128W::kernel_igemm128w64d(a...); });
        else if (k.bn == 64 && v) run<G64::IgemmArgs, G64::EpiArgs>(k, [](auto... a) { G64::kernel_igemm64w32v(a...); });
        else if (k.bn == 64) run<S64::IgemmArgs, S64::EpiArgs>(k, [](auto... a) { S64::kernel_igemm64w32s(a...); });
        else if (k.wn == 32 && v) run<G128::IgemmArgs, G128::EpiArgs>(k, [](auto... a) { G128::kernel_igemm128w32v(a...); });
        else if (k.wn == 32) run<S128::IgemmArgs, S128::EpiArgs>(k, [](auto... a) { S128::kernel_igemm128w32s(a...); });
        else if (v) run<G128W::IgemmArgs, G128W::EpiArgs>(k, [](auto... a) { G128W::kernel_igemm128w64v(a...); });
        else run<S128W::IgemmArgs, S128W::EpiArgs>(k, [](auto... a) { S128W::kernel_igemm128w64s(a...); });
    }
    if (fails) { printf("%d failures\n", fails); return 1; }
    printf("igemm: all ok\n");
    return 0;
}
