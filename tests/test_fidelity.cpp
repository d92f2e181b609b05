// reel eval fidelity's measures: SSIM is 1 for identical frames, drops with noise and with a shifted image, and
// agrees with PSNR's ordering; PSNR of identical frames is capped at 100 dB.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "src/video/fidelity.h"

using namespace reel;

namespace {

std::vector<uint8_t> pattern(int w, int h, int shift) {
    std::vector<uint8_t> f(size_t(w) * size_t(h) * 3);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c)
                f[(size_t(y) * size_t(w) + size_t(x)) * 3 + size_t(c)] =
                    uint8_t(((x + shift) / 8 + y / 8) % 2 ? 200 : 40 + 30 * c);
    return f;
}

std::vector<uint8_t> noisy(std::vector<uint8_t> f, double sigma, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> n(0, sigma);
    for (auto& v : f)
        v = uint8_t(std::min(255.0, std::max(0.0, v + n(rng))));
    return f;
}

}  // namespace

TEST(Fidelity, SsimAndPsnr) {
    const int w = 64, h = 48;
    const auto a = pattern(w, h, 0);
    EXPECT_NEAR(ssim_rgb(a.data(), a.data(), w, h), 1.0, 1e-12);
    const double s_small = ssim_rgb(a.data(), noisy(a, 3, 1).data(), w, h);
    const double s_big = ssim_rgb(a.data(), noisy(a, 30, 1).data(), w, h);
    const double s_shift = ssim_rgb(a.data(), pattern(w, h, 4).data(), w, h);
    EXPECT_GT(s_small, 0.9);
    EXPECT_LT(s_big, s_small);
    EXPECT_LT(s_shift, 0.5);
    const auto r = compare_frames({a, a}, {a, noisy(a, 30, 2)}, w, h);
    EXPECT_EQ(r.frames, 2);
    EXPECT_LT(r.psnr_min, 30);   // the noisy frame
    EXPECT_GT(r.psnr_mean, 50);  // (100 + ~18) / 2
    EXPECT_LT(r.ssim_min, r.ssim_mean);
    EXPECT_THROW(ssim_rgb(a.data(), a.data(), 8, 8), std::runtime_error);
    EXPECT_THROW(compare_frames({}, {}, w, h), std::runtime_error);
}
