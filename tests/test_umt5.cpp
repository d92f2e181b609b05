// umT5 encoder against the golden reference (tests/data/golden/README.md section 4).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "diffusion/umt5.h"
#include "tests/golden_util.h"
#include "weights/safetensors.h"

namespace reel {
namespace {

// This file reports the relative error against max(|ref|, 1e-6), as it always has (the DiT, rollout and
// scheduler tests use 0.01); it is only printed, never asserted.
constexpr double kRelFloor = 1e-6;

struct Golden {
    TensorMap weights = test::load_golden("t5_weights.safetensors");
    TensorMap c = test::load_golden("t5_case.safetensors");
};

const Golden& golden() {
    static Golden g;
    return g;
}

TEST(UMT5, DetectsTinyConfig) {
    UMT5Config c = detect_umt5_config(golden().weights);
    EXPECT_EQ(c.vocab, 64);
    EXPECT_EQ(c.dim, 32);
    EXPECT_EQ(c.dim_attn, 32);
    EXPECT_EQ(c.dim_ffn, 64);
    EXPECT_EQ(c.num_heads, 4);
    EXPECT_EQ(c.num_layers, 2);
    EXPECT_EQ(c.num_buckets, 32);
    EXPECT_FALSE(c.shared_pos);
    nlohmann::json j = c;
    UMT5Config back = j.get<UMT5Config>();
    EXPECT_EQ(back.dim_ffn, 64);
    EXPECT_EQ(back.num_layers, 2);
    // Defaults are the real umT5-xxl.
    UMT5Config def = nlohmann::json::object().get<UMT5Config>();
    EXPECT_EQ(def.vocab, 256384);
    EXPECT_EQ(def.dim_ffn, 10240);
    EXPECT_EQ(def.text_len, 512);
}

TEST(UMT5, RelativeBucketsMatchGolden) {
    at::Tensor got = umt5_relative_buckets(160, 160, 32, 128);
    const at::Tensor& ref = golden().c.at("rel_buckets");
    const int64_t mismatches = (got != ref).sum().item<int64_t>();
    std::printf("  rel_buckets: %lld mismatches of %lld\n", (long long)mismatches, (long long)ref.numel());
    EXPECT_EQ(mismatches, 0);
    // README's table of |rel| -> bucket for keys before the query.
    EXPECT_EQ(umt5_relative_bucket(-7, 32, 128), 7);
    EXPECT_EQ(umt5_relative_bucket(-11, 32, 128), 8);
    EXPECT_EQ(umt5_relative_bucket(-12, 32, 128), 9);
    EXPECT_EQ(umt5_relative_bucket(-22, 32, 128), 10);
    EXPECT_EQ(umt5_relative_bucket(-90, 32, 128), 14);
    EXPECT_EQ(umt5_relative_bucket(-91, 32, 128), 15);
    EXPECT_EQ(umt5_relative_bucket(5, 32, 128), 21);
    EXPECT_EQ(umt5_relative_bucket(1000, 32, 128), 31);
}

TEST(UMT5, PositionBiasMatchesGolden) {
    UMT5Encoder enc(golden().weights, detect_umt5_config(golden().weights), c10::kCPU, at::kFloat);
    test::expect_close(enc.position_bias(0, 160, 160), golden().c.at("blocks.0.pos_bias"), "blocks.0.pos_bias", 0, 0,
                       kRelFloor);
}

TEST(UMT5, EncodeMatchesGolden) {
    UMT5Encoder enc(golden().weights, detect_umt5_config(golden().weights), c10::kCPU, at::kFloat);
    const at::Tensor& ids = golden().c.at("ids");
    const at::Tensor& mask = golden().c.at("mask");
    at::Tensor raw = enc.encode(ids, mask);
    test::expect_close(raw, golden().c.at("hidden_raw"), "hidden_raw", 1e-4, 1e-4, kRelFloor);
    at::Tensor zeroed = UMT5Encoder::zero_padding(raw, mask);
    test::expect_close(zeroed, golden().c.at("hidden_zeroed"), "hidden_zeroed", 1e-4, 1e-4, kRelFloor);
    EXPECT_EQ(zeroed.narrow(1, 7, 153).select(0, 1).abs().max().item<float>(), 0.0f);
    // A batch of one gives the same rows as inside the batch of two.
    at::Tensor one = enc.encode(ids.narrow(0, 1, 1), mask.narrow(0, 1, 1));
    test::expect_close(one, golden().c.at("hidden_raw").narrow(0, 1, 1), "hidden_raw[1] alone", 1e-4, 1e-4, kRelFloor);
}

TEST(UMT5, ReportsBadCheckpoint) {
    TensorMap w = golden().weights;
    w.erase("blocks.1.ffn.fc2.weight");
    w["blocks.0.attn.o.weight"] = at::zeros({32, 31});
    try {
        UMT5Encoder enc(w, detect_umt5_config(golden().weights), c10::kCPU, at::kFloat);
        FAIL() << "expected an error";
    } catch (const std::runtime_error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("blocks.1.ffn.fc2.weight"), std::string::npos) << msg;
        EXPECT_NE(msg.find("blocks.0.attn.o.weight"), std::string::npos) << msg;
    }
}

}  // namespace
}  // namespace reel
