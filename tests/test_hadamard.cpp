// Block Walsh-Hadamard transform: equals the explicit Sylvester matrix, is its own inverse and orthonormal, the ATen
// fallback agrees with the CPU loop, and rotating before token-wise INT4 tames outlier channels (SAW-INT4).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "kernels/aten_fallback.h"
#include "kernels/hadamard.h"
#include "kernels/quant.h"

using namespace reel;

namespace {

// x: [..., D] -> x with every block of `block` channels multiplied by H (symmetric, so x H = (H x^T)^T).
at::Tensor rotate_by_matrix(const at::Tensor& x, int64_t block) {
    return x.reshape({-1, block}).matmul(hadamard_matrix(block)).view(x.sizes());
}

// x: [M, D] -> token-wise INT4 round trip (group = D).
at::Tensor int4_round_trip(const at::Tensor& x) {
    const int64_t m = x.size(0), d = x.size(1);
    at::Tensor q = at::empty({m, quant_row_bytes(d, 4)}, at::kByte), s = at::empty({m, 1}, at::kHalf);
    quantize_tokens(x, 4, d, q, s);
    at::Tensor y = at::empty({m, d});
    dequantize_tokens(q, s, 4, d, y);
    return y;
}

}  // namespace

TEST(Hadamard, MatrixIsSylvesterAndOrthonormal) {
    const float r2 = 1.f / std::sqrt(2.f);
    EXPECT_TRUE(at::allclose(hadamard_matrix(2), at::tensor({r2, r2, r2, -r2}).view({2, 2})));
    EXPECT_TRUE(at::equal(hadamard_matrix(1), at::ones({1, 1})));
    // Sylvester recursion H_2n = [[H_n, H_n], [H_n, -H_n]] / sqrt(2).
    at::Tensor h4 = hadamard_matrix(4), h8 = hadamard_matrix(8);
    at::Tensor top = at::cat({h4, h4}, 1), bottom = at::cat({h4, -h4}, 1);
    EXPECT_TRUE(at::allclose(h8, at::cat({top, bottom}, 0).mul(r2), 1e-6, 1e-7));
    for (int64_t n : {2, 16, 128}) {
        at::Tensor h = hadamard_matrix(n);
        EXPECT_TRUE(at::allclose(h, h.t()));
        EXPECT_LT((h.matmul(h.t()) - at::eye(n)).abs().max().item<float>(), 1e-5) << "n " << n;
    }
    EXPECT_THROW(hadamard_matrix(12), std::runtime_error);
}

TEST(Hadamard, FwhtEqualsMatrixProduct) {
    at::manual_seed(1);
    for (int64_t block = 2; block <= 128; block *= 2) {
        at::Tensor x = at::randn({3, 5, 256});
        at::Tensor y = x.clone();
        fwht_(y, block);
        const float err = (y - rotate_by_matrix(x, block)).abs().max().item<float>();
        EXPECT_LT(err, 1e-5) << "block " << block;
        // Orthonormal: the norm of every block (hence every row) is preserved.
        const float norm_err =
            (y.view({-1, block}).norm(2, 1) - x.view({-1, block}).norm(2, 1)).abs().max().item<float>();
        EXPECT_LT(norm_err, 1e-4) << "block " << block;
        // Its own inverse.
        fwht_(y, block);
        EXPECT_LT((y - x).abs().max().item<float>(), 1e-5) << "block " << block;
    }
}

TEST(Hadamard, DoubleAndFallbackAgree) {
    at::manual_seed(2);
    at::Tensor x = at::randn({64, 192}, at::kDouble);
    at::Tensor y = x.clone();
    fwht_(y, 64);
    EXPECT_LT((y - rotate_by_matrix(x.to(at::kFloat), 64).to(at::kDouble)).abs().max().item<double>(), 1e-5);
    for (int64_t block : {2, 32, 64}) {
        at::Tensor a = at::randn({1000, 128}), b = a.clone();
        fwht_(a, block);
        aten_fallback::fwht_(b, block);
        EXPECT_LT((a - b).abs().max().item<float>(), 1e-6) << "block " << block;
    }
    // Non-contiguous input (a strided view) takes the fallback and is rotated in place.
    at::Tensor pool = at::randn({8, 2, 64});
    at::Tensor view = pool.select(1, 0), ref = view.clone(), other = pool.select(1, 1).clone();
    fwht_(view, 64);
    EXPECT_LT((pool.select(1, 0) - rotate_by_matrix(ref, 64)).abs().max().item<float>(), 1e-5);
    EXPECT_TRUE(at::equal(pool.select(1, 1), other));
}

TEST(Hadamard, Validation) {
    at::Tensor x = at::randn({4, 96});
    auto message = [&](int64_t block) {
        try {
            fwht_(x, block);
        } catch (const std::runtime_error& e) {
            return std::string(e.what());
        }
        return std::string();
    };
    EXPECT_NE(message(12).find("block must be a power of two dividing D = 96, got 12"), std::string::npos);
    EXPECT_NE(message(64).find("got 64"), std::string::npos);
    EXPECT_NE(message(0).find("got 0"), std::string::npos);
    EXPECT_EQ(message(32), "");
}

TEST(Hadamard, RotationTamesOutlierChannelsForInt4) {
    at::manual_seed(3);
    const int64_t m = 4096, d = 64;
    at::Tensor x = at::randn({m, d});
    x.select(1, 5).mul_(30);
    x.select(1, 40).mul_(30);
    const double plain_mse = (int4_round_trip(x) - x).pow(2).mean().item<double>();

    at::Tensor xr = x.clone();
    fwht_(xr, d);
    at::Tensor y = int4_round_trip(xr);
    fwht_(y, d);  // back to the original basis: the rotation is its own inverse
    const double rotated_mse = (y - x).pow(2).mean().item<double>();
    std::printf("INT4 with 2 of 64 channels x30: plain MSE %.4g, Hadamard-rotated MSE %.4g (%.1fx lower)\n", plain_mse,
                rotated_mse, plain_mse / rotated_mse);
    EXPECT_LT(rotated_mse * 2, plain_mse);
}
