// KV-cache quantization kernels: token-wise INT8 / INT4 round trips within half a stored scale, exact zeros, the
// byte layout, in-place writes into strided pool views, KIVI channel-wise keys, the ATen fallback matching the CPU
// loops byte for byte, and input validation.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>

#include "kernels/aten_fallback.h"
#include "kernels/quant.h"

using namespace reel;

namespace {

struct Tokens {
    at::Tensor q, scale;
};

// x: [M, D] -> freshly allocated codes and scales.
Tokens quantize_new(const at::Tensor& x, int bits, int64_t group) {
    Tokens t{at::empty({x.size(0), quant_row_bytes(x.size(1), bits)}, at::kByte),
             at::empty({x.size(0), x.size(1) / group}, at::kHalf)};
    quantize_tokens(x, bits, group, t.q, t.scale);
    return t;
}

at::Tensor dequantize_new(const Tokens& t, int64_t d, int bits, int64_t group) {
    at::Tensor out = at::empty({t.q.size(0), d}, at::kFloat);
    dequantize_tokens(t.q, t.scale, bits, group, out);
    return out;
}

// scale: [M, D / group] -> the scale of every element, [M, D] float32.
at::Tensor per_element(const at::Tensor& scale, int64_t group) {
    return scale.to(at::kFloat).repeat_interleave(group, 1);
}

// Runs fn, expects a std::runtime_error whose message contains `part`.
void expect_error(const std::function<void()>& fn, const std::string& part) {
    try {
        fn();
        ADD_FAILURE() << "no error thrown, expected one mentioning '" << part << "'";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << "message: " << e.what();
    }
}

// Token-wise round trip at `bits`: every element within half its stored scale, scales as large as needed and no
// larger (absmax / qmax rounded up to float16).
void check_token_round_trip(int bits, int64_t group) {
    at::manual_seed(1);
    const int64_t m = 64, d = 192;
    at::Tensor x = at::randn({m, d}).mul(3);
    Tokens t = quantize_new(x, bits, group);
    at::Tensor y = dequantize_new(t, d, bits, group);
    const float qmax = static_cast<float>((1 << (bits - 1)) - 1);

    at::Tensor s = t.scale.to(at::kFloat);
    at::Tensor want = x.view({m, d / group, group}).abs().amax(-1).div(qmax);
    EXPECT_TRUE(s.ge(want).all().item<bool>()) << "a stored scale is below absmax / qmax";
    EXPECT_TRUE(s.le(want.mul(1 + 1e-3)).all().item<bool>()) << "a stored scale is more than fp16 rounding above";

    at::Tensor err = (y - x).abs();
    at::Tensor bound = per_element(t.scale, group).mul(0.5).add(1e-6);
    EXPECT_TRUE(err.le(bound).all().item<bool>())
        << "max excess " << (err - bound).max().item<float>() << " (bits " << bits << ")";
    // Quantization must actually happen: the error is a sizable fraction of the bound, not exactly zero.
    const double mean_ratio = err.div(bound).mean().item<double>();
    EXPECT_GT(mean_ratio, 0.1);
    std::printf("INT%d group %lld: max err %.4g, mean err / (scale/2) %.3f\n", bits, static_cast<long long>(group),
                err.max().item<float>(), mean_ratio);
}

}  // namespace

TEST(Quant, RowBytes) {
    EXPECT_EQ(quant_row_bytes(128, 8), 128);
    EXPECT_EQ(quant_row_bytes(128, 4), 64);
    EXPECT_EQ(quant_row_bytes(0, 4), 0);
    expect_error([] { quant_row_bytes(7, 4); }, "even");
    expect_error([] { quant_row_bytes(8, 3); }, "bits must be 4 or 8");
}

TEST(Quant, Int8RoundTripWithinHalfScale) {
    check_token_round_trip(8, 32);
    check_token_round_trip(8, 192);
}

TEST(Quant, Int4RoundTripWithinHalfScale) {
    check_token_round_trip(4, 32);
    check_token_round_trip(4, 192);
    check_token_round_trip(4, 3);  // odd groups straddle bytes
}

TEST(Quant, ZeroGroupsAreExactZeros) {
    at::manual_seed(2);
    for (int bits : {4, 8}) {
        at::Tensor x = at::randn({4, 64});
        x.narrow(1, 16, 16).zero_();  // one all-zero group per row
        x[2].zero_();                 // one all-zero row
        Tokens t = quantize_new(x, bits, 16);
        EXPECT_EQ(t.scale[2].to(at::kFloat).abs().max().item<float>(), 0.f);
        EXPECT_EQ(t.scale[0][1].item<float>(), 0.f);
        at::Tensor y = dequantize_new(t, 64, bits, 16);
        EXPECT_FALSE(y.isnan().any().item<bool>());
        EXPECT_TRUE(y[2].eq(0).all().item<bool>());
        EXPECT_TRUE(y.narrow(1, 16, 16).eq(0).all().item<bool>());
    }
    // KIVI: an all-zero page and a constant channel.
    at::Tensor k = at::randn({2, 8, 6});
    k.select(2, 3).fill_(0.3f);
    k[0].zero_();
    at::Tensor q = at::empty({2, 8, 3}, at::kByte), s = at::empty({2, 6}, at::kHalf), z = at::empty({2, 6}, at::kHalf);
    quantize_channels(k, 4, q, s, z);
    at::Tensor y = at::empty({2, 8, 6});
    dequantize_channels(q, s, z, 4, y);
    EXPECT_FALSE(y.isnan().any().item<bool>());
    EXPECT_TRUE(y[0].eq(0).all().item<bool>());
    EXPECT_LT((y[1].select(1, 3) - 0.3f).abs().max().item<float>(), 1e-3);
}

TEST(Quant, PackingLayout) {
    // absmax 7 at INT4 (and 127 at INT8) makes the scale exactly 1, so the codes are the values.
    at::Tensor x4 = at::tensor({7.f, -7.f, 1.f, 0.f, -1.f, 2.f}).view({1, 6});
    Tokens t4 = quantize_new(x4, 4, 6);
    EXPECT_EQ(t4.scale.item<float>(), 1.f);
    // low nibble first; -7 is the 4-bit two's complement 0x9, -1 is 0xF
    EXPECT_EQ(t4.q[0][0].item<uint8_t>(), 0x97);
    EXPECT_EQ(t4.q[0][1].item<uint8_t>(), 0x01);
    EXPECT_EQ(t4.q[0][2].item<uint8_t>(), 0x2F);
    EXPECT_TRUE(at::equal(dequantize_new(t4, 6, 4, 6), x4));

    at::Tensor x8 = at::tensor({127.f, -127.f, -1.f, 3.f}).view({1, 4});
    Tokens t8 = quantize_new(x8, 8, 4);
    EXPECT_EQ(t8.scale.item<float>(), 1.f);
    EXPECT_TRUE(at::equal(t8.q, at::tensor({127, 129, 255, 3}, at::kByte).view({1, 4})));
    EXPECT_TRUE(at::equal(dequantize_new(t8, 4, 8, 4), x8));

    // KIVI INT4: channel 0 spans [0, 15] (scale 1, zero 0), channel 1 is [-2, 13]; codes low nibble = channel 0.
    at::Tensor k =
        at::stack({at::arange(16, at::kFloat), at::arange(16, at::kFloat).flip(0).sub(2)}, 1).view({1, 16, 2});
    at::Tensor q = at::empty({1, 16, 1}, at::kByte), s = at::empty({1, 2}, at::kHalf), z = at::empty({1, 2}, at::kHalf);
    quantize_channels(k, 4, q, s, z);
    EXPECT_TRUE(at::equal(s.to(at::kFloat), at::ones({1, 2})));
    EXPECT_EQ(z[0][1].item<float>(), -2.f);
    EXPECT_EQ(q[0][0][0].item<uint8_t>(), 0xF0);  // token 0: channel 0 code 0, channel 1 code 15
    EXPECT_EQ(q[0][15][0].item<uint8_t>(), 0x0F);
}

TEST(Quant, WritesIntoStridedPoolViews) {
    at::manual_seed(3);
    const int64_t t = 8, heads = 3, d = 64, group = 32;
    for (int bits : {4, 8}) {
        const int64_t bytes = quant_row_bytes(d, bits);
        // Pool [T, H, bytes]; head 1 is a view with row stride H * bytes. Rows 2..5 of it are written.
        at::Tensor qpool = at::full({t, heads, bytes}, 0xAB, at::kByte);
        at::Tensor spool = at::full({t, heads, d / group}, 42.f, at::kHalf);
        at::Tensor qv = qpool.select(1, 1).narrow(0, 2, 4), sv = spool.select(1, 1).narrow(0, 2, 4);
        ASSERT_EQ(qv.stride(0), heads * bytes);
        at::Tensor x = at::randn({4, d});
        quantize_tokens(x, bits, group, qv, sv);

        Tokens ref = quantize_new(x, bits, group);
        EXPECT_TRUE(at::equal(qv, ref.q));
        EXPECT_TRUE(at::equal(sv, ref.scale));
        at::Tensor written = at::zeros({t, heads}, at::kBool);
        written.select(1, 1).narrow(0, 2, 4).fill_(true);
        at::Tensor untouched_q = qpool.eq(0xAB).all(-1), untouched_s = spool.eq(42.f).all(-1);
        EXPECT_TRUE(untouched_q.logical_or(written).all().item<bool>()) << "a row outside the view was written";
        EXPECT_TRUE(untouched_s.logical_or(written).all().item<bool>());

        // Dequantize into a strided view of a float pool too.
        at::Tensor opool = at::full({4, 2, d}, -5.f);
        at::Tensor ov = opool.select(1, 0);
        dequantize_tokens(qv, sv, bits, group, ov);
        EXPECT_TRUE(at::equal(ov, dequantize_new(ref, d, bits, group)));
        EXPECT_TRUE(opool.select(1, 1).eq(-5.f).all().item<bool>());

        // KIVI pages from a layer pool [L, P, G, bytes].select(0, l), written through pool.narrow on pages.
        at::Tensor kpool = at::full({2, 3, 8, bytes}, 0xAB, at::kByte);
        at::Tensor kspool = at::full({2, 3, d}, 42.f, at::kHalf), kzpool = at::full({2, 3, d}, 42.f, at::kHalf);
        at::Tensor kq = kpool.select(0, 1).narrow(0, 1, 2), ks = kspool.select(0, 1).narrow(0, 1, 2),
                   kz = kzpool.select(0, 1).narrow(0, 1, 2);
        at::Tensor keys = at::randn({2, 8, d});
        quantize_channels(keys, bits, kq, ks, kz);
        EXPECT_TRUE(kpool[0].eq(0xAB).all().item<bool>());
        EXPECT_TRUE(kpool[1][0].eq(0xAB).all().item<bool>());
        EXPECT_TRUE(kspool[0].eq(42.f).all().item<bool>());
        EXPECT_TRUE(kzpool[1][0].eq(42.f).all().item<bool>());
        at::Tensor kq2 = at::empty({2, 8, bytes}, at::kByte), ks2 = at::empty({2, d}, at::kHalf),
                   kz2 = at::empty({2, d}, at::kHalf);
        quantize_channels(keys, bits, kq2, ks2, kz2);
        EXPECT_TRUE(at::equal(kq, kq2));
        EXPECT_TRUE(at::equal(ks, ks2));
        EXPECT_TRUE(at::equal(kz, kz2));
    }
}

TEST(Quant, ChannelRoundTripWithinHalfScale) {
    at::manual_seed(4);
    const int64_t p = 3, g = 16, d = 64;
    at::Tensor x = at::randn({p, g, d}).mul(2).add(at::randn({1, 1, d}).mul(4));  // per-channel offsets
    for (int bits : {4, 8}) {
        at::Tensor q = at::empty({p, g, quant_row_bytes(d, bits)}, at::kByte);
        at::Tensor s = at::empty({p, d}, at::kHalf), z = at::empty({p, d}, at::kHalf);
        quantize_channels(x, bits, q, s, z);
        at::Tensor y = at::empty({p, g, d});
        dequantize_channels(q, s, z, bits, y);
        // Zero points at or below the channel minimum; scales cover the range.
        const float qmax = static_cast<float>((1 << bits) - 1);
        at::Tensor sf = s.to(at::kFloat), zf = z.to(at::kFloat);
        EXPECT_TRUE(zf.le(x.amin(1)).all().item<bool>());
        EXPECT_TRUE(zf.add(sf.mul(qmax)).ge(x.amax(1).sub(1e-5)).all().item<bool>());
        at::Tensor err = (y - x).abs();
        at::Tensor bound = sf.unsqueeze(1).mul(0.5).add(x.abs().mul(1e-6)).add(1e-6);
        EXPECT_TRUE(err.le(bound).all().item<bool>()) << "max excess " << (err - bound).max().item<float>();
        std::printf("KIVI INT%d: max err %.4g, mean scale %.4g\n", bits, err.max().item<float>(),
                    sf.mean().item<float>());
    }
}

TEST(Quant, ChannelWiseBeatsTokenWiseOnOutlierKeyChannels) {
    // Keys have a few channels of large magnitude, consistent across tokens (KIVI's observation): token-wise scales
    // are set by those channels and flatten the rest, per-channel scales are not.
    at::manual_seed(5);
    const int64_t p = 16, g = 32, d = 128, group = 32;
    at::Tensor k = at::randn({p, g, d});
    for (int64_t c : {5, 70, 100})
        k.select(2, c).mul_(10).add_(15);
    at::Tensor rows = k.reshape({p * g, d});
    Tokens t = quantize_new(rows, 4, group);
    const double token_mse = (dequantize_new(t, d, 4, group) - rows).pow(2).mean().item<double>();

    at::Tensor q = at::empty({p, g, d / 2}, at::kByte), s = at::empty({p, d}, at::kHalf),
               z = at::empty({p, d}, at::kHalf);
    quantize_channels(k, 4, q, s, z);
    at::Tensor y = at::empty({p, g, d});
    dequantize_channels(q, s, z, 4, y);
    const double kivi_mse = (y - k).pow(2).mean().item<double>();
    std::printf("INT4 keys with outlier channels: token-wise MSE %.4g, KIVI channel-wise MSE %.4g (%.1fx lower)\n",
                token_mse, kivi_mse, token_mse / kivi_mse);
    EXPECT_LT(kivi_mse * 2, token_mse);
}

TEST(Quant, AtenFallbackMatchesCpuLoops) {
    at::manual_seed(6);
    const int64_t m = 48, d = 96;
    for (int bits : {4, 8})
        for (int64_t group : {int64_t(3), int64_t(32), int64_t(96)}) {
            at::Tensor x = at::randn({m, d}).mul(at::rand({m, 1}).mul(10));
            x[3].zero_();
            x = x.to(at::kBFloat16);  // non-float32 input goes through the conversion in both paths
            Tokens a = quantize_new(x, bits, group);
            Tokens b{at::empty_like(a.q), at::empty_like(a.scale)};
            aten_fallback::quantize_tokens(x, bits, group, b.q, b.scale);
            EXPECT_TRUE(at::equal(a.q, b.q)) << "bits " << bits << " group " << group;
            EXPECT_TRUE(at::equal(a.scale, b.scale));
            at::Tensor ya = dequantize_new(a, d, bits, group), yb = at::empty_like(ya);
            aten_fallback::dequantize_tokens(a.q, a.scale, bits, group, yb);
            EXPECT_TRUE(at::equal(ya, yb));
            // Another output dtype goes through the temporary on the CPU path.
            at::Tensor yh = at::empty({m, d}, at::kDouble);
            dequantize_tokens(a.q, a.scale, bits, group, yh);
            EXPECT_TRUE(at::equal(yh.to(at::kFloat), ya));
        }
    for (int bits : {4, 8}) {
        at::Tensor k = at::randn({5, 12, 32}).mul(3).add(at::randn({1, 1, 32}).mul(10));
        k.select(2, 7).fill_(-0.1f);
        const int64_t bytes = quant_row_bytes(32, bits);
        at::Tensor qa = at::empty({5, 12, bytes}, at::kByte), sa = at::empty({5, 32}, at::kHalf),
                   za = at::empty({5, 32}, at::kHalf);
        at::Tensor qb = at::empty_like(qa), sb = at::empty_like(sa), zb = at::empty_like(za);
        quantize_channels(k, bits, qa, sa, za);
        aten_fallback::quantize_channels(k, bits, qb, sb, zb);
        EXPECT_TRUE(at::equal(qa, qb)) << "bits " << bits;
        EXPECT_TRUE(at::equal(sa, sb));
        EXPECT_TRUE(at::equal(za, zb));
        at::Tensor ya = at::empty({5, 12, 32}), yb = at::empty({5, 12, 32});
        dequantize_channels(qa, sa, za, bits, ya);
        aten_fallback::dequantize_channels(qa, sa, za, bits, yb);
        EXPECT_TRUE(at::equal(ya, yb));
    }
}

TEST(Quant, Validation) {
    at::Tensor x = at::randn({4, 64});
    at::Tensor q8 = at::empty({4, 64}, at::kByte), q4 = at::empty({4, 32}, at::kByte);
    at::Tensor s = at::empty({4, 2}, at::kHalf);
    expect_error([&] { quantize_tokens(x, 8, 24, q8, s); }, "group 24 must divide D = 64");
    expect_error([&] { quantize_tokens(x, 5, 32, q8, s); }, "bits must be 4 or 8, got 5");
    expect_error([&] { quantize_tokens(x, 4, 32, q8, s); }, "q must have shape [4, 32], got [4, 64]");
    expect_error([&] { quantize_tokens(x, 8, 16, q8, s); }, "scale must have shape [4, 4]");
    at::Tensor s32 = at::empty({4, 2});
    expect_error([&] { quantize_tokens(x, 4, 32, q4, s32); }, "scale must be Half");
    at::Tensor xo = at::randn({4, 63}), qo = at::empty({4, 32}, at::kByte), so = at::empty({4, 1}, at::kHalf);
    expect_error([&] { quantize_tokens(xo, 4, 63, qo, so); }, "D must be even");
    at::Tensor xi = at::ones({4, 64}, at::kInt);
    expect_error([&] { quantize_tokens(xi, 4, 32, q4, s); }, "x must be a floating tensor");
    at::Tensor qt = at::empty({32, 4}, at::kByte).t();
    expect_error([&] { quantize_tokens(x, 4, 32, qt, s); }, "rows must be contiguous");
    at::Tensor out = at::empty({4, 32});
    expect_error([&] { dequantize_tokens(q4, s, 4, 32, out); }, "dequantize_tokens: q must have shape [4, 16]");

    at::Tensor k = at::randn({2, 8, 16});
    at::Tensor kq = at::empty({2, 8, 8}, at::kByte), ks = at::empty({2, 16}, at::kHalf),
               kz = at::empty({2, 16}, at::kHalf);
    expect_error([&] { quantize_channels(k, 8, kq, ks, kz); }, "q must have shape [2, 8, 16]");
    expect_error([&] { quantize_channels(k.view({16, 16}), 4, kq, ks, kz); }, "must be [P, G, D]");
    at::Tensor kz_bad = at::empty({1, 16}, at::kHalf);
    expect_error([&] { quantize_channels(k, 4, kq, ks, kz_bad); }, "zero must have shape [2, 16]");
}

TEST(Quant, Benchmark) {
    // Numbers only, no assertion on time: a 16k-token x 128-channel block, one K or V head of a long cache. Best of
    // several runs, since the machine is shared.
    const int64_t m = 16384, d = 128, group = 32;
    auto best_ms = [](const std::function<void()>& fn) {
        double best = 1e30;
        for (int i = 0; i < 7; ++i) {
            auto t0 = std::chrono::steady_clock::now();
            fn();
            best = std::min(best,
                            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }
        return best;
    };
    at::Tensor x = at::randn({m, d});
    for (int bits : {8, 4}) {
        Tokens t = quantize_new(x, bits, group);
        at::Tensor y = at::empty({m, d});
        const double tq = best_ms([&] { quantize_tokens(x, bits, group, t.q, t.scale); });
        const double td = best_ms([&] { dequantize_tokens(t.q, t.scale, bits, group, y); });
        std::printf("token-wise INT%d %lld x %lld: quantize %.2f ms, dequantize %.2f ms\n", bits,
                    static_cast<long long>(m), static_cast<long long>(d), tq, td);
    }
    at::Tensor k = x.view({m / 32, 32, d});
    at::Tensor q = at::empty({m / 32, 32, d / 2}, at::kByte), s = at::empty({m / 32, d}, at::kHalf),
               z = at::empty({m / 32, d}, at::kHalf);
    at::Tensor y = at::empty({m / 32, 32, d});
    const double tq = best_ms([&] { quantize_channels(k, 4, q, s, z); });
    const double td = best_ms([&] { dequantize_channels(q, s, z, 4, y); });
    std::printf("KIVI INT4 %lld pages of 32 x %lld: quantize %.2f ms, dequantize %.2f ms\n",
                static_cast<long long>(m / 32), static_cast<long long>(d), tq, td);
}
