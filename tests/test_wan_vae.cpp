// Wan VAE against the golden reference (tests/data/golden/README.md section 3): whole-clip decode, streaming
// decode in chunks, encode, config detection.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "diffusion/wan_vae.h"
#include "tests/golden_util.h"
#include "weights/safetensors.h"

namespace reel {
namespace {

// This file reports the relative error against max(|ref|, 1e-6), as it always has (the DiT, rollout and
// scheduler tests use 0.01); it is only printed, never asserted.
constexpr double kRelFloor = 1e-6;

struct Golden {
    TensorMap weights = test::load_golden("vae_weights.safetensors");
    TensorMap cases = test::load_golden("vae_cases.safetensors");
    TensorMap all() const {
        TensorMap m = weights;
        m["scale.mean"] = cases.at("scale.mean");
        m["scale.inv_std"] = cases.at("scale.inv_std");
        return m;
    }
};

const Golden& golden() {
    static Golden g;
    return g;
}

WanVae& tiny_vae() {
    static WanVae vae(golden().weights, detect_wan_vae_config(golden().weights), c10::kCPU, at::kFloat);
    return vae;
}

TEST(WanVae, DetectsTinyConfig) {
    WanVaeConfig c = detect_wan_vae_config(golden().weights);
    EXPECT_EQ(c.dim, 4);
    EXPECT_EQ(c.z_dim, 16);
    EXPECT_EQ(c.dim_mult, (std::vector<int>{1, 2, 4, 4}));
    EXPECT_EQ(c.num_res_blocks, 2);
    EXPECT_EQ(c.temporal_downsample, (std::vector<bool>{false, true, true}));
    EXPECT_EQ(c.decoder_dims(), (std::vector<int64_t>{16, 16, 16, 8, 4}));
    EXPECT_EQ(c.encoder_dims(), (std::vector<int64_t>{4, 4, 8, 16, 16}));
    // scale.* tensors override the defaults; they hold the real Wan2.1 statistics.
    WanVaeConfig d = detect_wan_vae_config(golden().all());
    WanVaeConfig def;
    for (int i = 0; i < 16; ++i) {
        EXPECT_NEAR(d.mean[i], def.mean[i], 1e-6);
        EXPECT_NEAR(d.std_[i], def.std_[i], 1e-5);
    }
}

TEST(WanVae, ConfigJsonRoundTrip) {
    WanVaeConfig c = detect_wan_vae_config(golden().weights);
    nlohmann::json j = c;
    WanVaeConfig back = j.get<WanVaeConfig>();
    EXPECT_EQ(back.dim, 4);
    EXPECT_EQ(back.dim_mult, c.dim_mult);
    EXPECT_EQ(back.temporal_downsample, c.temporal_downsample);
    EXPECT_EQ(back.mean, c.mean);
    // The reference's spelling and defaults.
    WanVaeConfig r = nlohmann::json::parse(R"({"dim": 4, "temperal_downsample": [false, false, true]})");
    EXPECT_EQ(r.dim, 4);
    EXPECT_EQ(r.temporal_downsample, (std::vector<bool>{false, false, true}));
    EXPECT_EQ(r.z_dim, 16);
}

TEST(WanVae, DefaultNormalizationMatchesGoldenScale) {
    // The golden scale tensors are the real statistics: the defaults must reproduce them exactly.
    const WanVae& vae = tiny_vae();
    test::expect_close(vae.latent_mean(), golden().cases.at("scale.mean"), "scale.mean", 0, 0, kRelFloor);
    test::expect_close(vae.latent_inv_std(), golden().cases.at("scale.inv_std"), "scale.inv_std", 0, 0, kRelFloor);
}

TEST(WanVae, DecodeWholeClipMatchesGolden) {
    const WanVae& vae = tiny_vae();
    for (int T : {1, 3, 9}) {
        const std::string p = "decode_T" + std::to_string(T);
        at::Tensor out = vae.decode(golden().cases.at(p + ".z"));
        EXPECT_EQ(out.size(2), 1 + 4 * (T - 1));
        test::expect_close(out, golden().cases.at(p + ".out"), p, 1e-4, 1e-4, kRelFloor);
    }
}

TEST(WanVae, LoadsWithScaleTensorsAndDecoderOnly) {
    WanVae vae(golden().all(), detect_wan_vae_config(golden().all()), c10::kCPU, at::kFloat, /*with_encoder=*/false);
    EXPECT_FALSE(vae.has_encoder());
    test::expect_close(vae.decode(golden().cases.at("decode_T3.z")), golden().cases.at("decode_T3.out"),
                       "decode_T3 (decoder only)", 1e-4, 1e-4, kRelFloor);
    EXPECT_THROW(vae.encode(golden().cases.at("encode_T1.video")), std::runtime_error);
}

TEST(WanVae, StreamingDecodeMatchesGoldenAndWholeClip) {
    const WanVae& vae = tiny_vae();
    const at::Tensor& z = golden().cases.at("decode_T9.z");
    const at::Tensor& ref = golden().cases.at("decode_T9.out");

    // The reference's cached_decode: chunks of 3 latent frames -> 9, 12, 12 pixel frames.
    WanVaeDecodeStream s(vae);
    std::vector<at::Tensor> outs;
    for (int c = 0; c < 3; ++c) {
        outs.push_back(s.push(z.narrow(2, 3 * c, 3)));
        EXPECT_EQ(outs.back().size(2), c == 0 ? 9 : 12);
    }
    test::expect_close(at::cat(outs, 2), ref, "stream 3+3+3 vs decode_T9", 1e-4, 1e-4, kRelFloor);

    // Uneven chunks equal the whole-clip decode of this implementation (up to conv summation order: a conv
    // over 1 frame and over T frames may block its GEMM differently).
    at::Tensor whole = vae.decode(z);
    s.reset();
    outs.clear();
    int64_t t0 = 0;
    for (int n : {1, 2, 5, 1}) {
        at::Tensor o = s.push(z.narrow(2, t0, n));
        EXPECT_EQ(o.size(2), t0 == 0 ? 1 + 4 * (n - 1) : 4 * n);
        outs.push_back(o);
        t0 += n;
    }
    at::Tensor chunked = at::cat(outs, 2);
    test::expect_close(chunked, whole, "stream 1+2+5+1 vs whole clip", 2e-5, 2e-5, kRelFloor);
    std::printf("  max |stream - whole| = %.3g\n", (chunked - whole).abs().max().item<double>());
}

TEST(WanVae, StreamingCacheDoesNotGrow) {
    const WanVae& vae = tiny_vae();
    const at::Tensor& z = golden().cases.at("decode_T9.z");
    WanVaeDecodeStream s(vae);
    s.push(z.narrow(2, 0, 1));
    s.push(z.narrow(2, 1, 1));
    const int64_t bytes = s.cache_bytes();
    EXPECT_GT(bytes, 0);
    for (int rep = 0; rep < 3; ++rep)
        for (int t = 0; t < 9; ++t) {
            at::Tensor o = s.push(z.narrow(2, t, 1));
            EXPECT_EQ(o.size(2), 4);
            EXPECT_EQ(s.cache_bytes(), bytes);
        }
    std::printf("  tiny config: stream cache %lld bytes after %lld latent frames\n", (long long)bytes,
                (long long)s.frames_pushed());
    EXPECT_EQ(s.frames_pushed(), 29);
}

TEST(WanVae, EncodeMatchesGolden) {
    const WanVae& vae = tiny_vae();
    for (int T : {1, 9}) {
        const std::string p = "encode_T" + std::to_string(T);
        at::Tensor mu = vae.encode(golden().cases.at(p + ".video"));
        test::expect_close(mu, golden().cases.at(p + ".mu"), p, 1e-4, 1e-4, kRelFloor);
    }
    EXPECT_THROW(vae.encode(at::zeros({1, 3, 4, 32, 48})), std::runtime_error);
}

TEST(WanVae, NarrowerDecoderIsDetectedAndSerialized) {
    // tinyworld's fast decoder: dec_dim below the encoder's dim, as Wan2.2's dec_dim (there wider).
    WanVaeConfig c;
    c.dim = 4;
    c.dec_dim = 2;
    c.num_res_blocks = 1;
    TensorMap w = wan_vae_random_weights(c, true, 3);
    EXPECT_EQ(w.at("encoder.conv1.weight").size(0), 4);
    EXPECT_EQ(w.at("decoder.head.2.weight").size(1), 2);
    WanVaeConfig d = detect_wan_vae_config(w);
    EXPECT_EQ(d.dim, 4);
    EXPECT_EQ(d.dec_dim, 2);
    EXPECT_EQ(d.decoder_dims(), (std::vector<int64_t>{8, 8, 8, 4, 2}));
    EXPECT_EQ(d.encoder_dims(), (std::vector<int64_t>{4, 4, 8, 16, 16}));
    const nlohmann::json j = d;
    EXPECT_EQ(j.at("dec_dim"), 2);
    EXPECT_EQ(j.get<WanVaeConfig>().decoder_dim(), 2);
    // Without the encoder the decoder's width is all there is: it becomes dim.
    TensorMap dec_only;
    for (const auto& kv : w)
        if (kv.first.rfind("decoder.", 0) == 0 || kv.first.rfind("conv2.", 0) == 0)
            dec_only.insert(kv);
    WanVaeConfig e = detect_wan_vae_config(dec_only);
    EXPECT_EQ(e.decoder_dim(), 2);
    EXPECT_FALSE(nlohmann::json(e).contains("dec_dim"));
    WanVae vae(w, d, c10::kCPU, at::kFloat);
    at::Tensor mu = vae.encode(at::rand({1, 3, 5, 16, 16}) * 2 - 1);
    EXPECT_EQ(mu.sizes(), (at::IntArrayRef{1, 16, 2, 2, 2}));
    EXPECT_EQ(vae.decode(mu).sizes(), (at::IntArrayRef{1, 3, 5, 16, 16}));
    // A dim-2 decoder does not load tensors made for dim 4.
    WanVaeConfig wrong = d;
    wrong.dec_dim = 0;
    EXPECT_THROW(WanVae(w, wrong, c10::kCPU, at::kFloat), std::runtime_error);
}

TEST(WanVae, RandomWeightsRoundTripThroughDetection) {
    // A non-default config: the generator, detection and the strict loader must agree tensor for tensor.
    WanVaeConfig c;
    c.dim = 2;
    c.dim_mult = {1, 2, 2, 4};
    c.num_res_blocks = 1;
    c.temporal_downsample = {true, false, true};
    TensorMap w = wan_vae_random_weights(c, true, 7);
    WanVaeConfig d = detect_wan_vae_config(w);
    EXPECT_EQ(d.dim, 2);
    EXPECT_EQ(d.dim_mult, c.dim_mult);
    EXPECT_EQ(d.num_res_blocks, 1);
    EXPECT_EQ(d.temporal_downsample, c.temporal_downsample);
    // float64, so that streaming vs whole clip is exact up to rounding whatever the random weights amplify.
    WanVae vae(w, d, c10::kCPU, at::kDouble);
    // Two temporal stages -> 1 + 4(T-1) frames; whole clip equals streaming.
    at::Tensor z = at::randn({1, 16, 3, 2, 3}, at::kDouble);
    at::Tensor whole = vae.decode(z);
    EXPECT_EQ(whole.sizes(), (at::IntArrayRef{1, 3, 9, 16, 24}));
    WanVaeDecodeStream s(vae);
    at::Tensor a = s.push(z.narrow(2, 0, 2));
    at::Tensor b = s.push(z.narrow(2, 2, 1));
    test::expect_close(at::cat({a, b}, 2), whole, "random config stream vs whole (f64)", 1e-10, 1e-10, kRelFloor);
    EXPECT_EQ(vae.encode(at::rand({1, 3, 9, 16, 24}, at::kDouble) * 2 - 1).sizes(), (at::IntArrayRef{1, 16, 3, 2, 3}));
}

TEST(WanVae, ThreeStageConfigIsFourTimesSpatial) {
    // tinyworld's 4x-spatial VAE: 3 stages, both temporal, so time stays 4x and space is 4x; 2-4 stages load, 5
    // are refused (the reference's channel plan stops at 4).
    WanVaeConfig c;
    c.dim = 2;
    c.dim_mult = {1, 2, 4};
    c.num_res_blocks = 1;
    c.temporal_downsample = {true, true};
    EXPECT_EQ(c.spatial_stride(), 4);
    TensorMap w = wan_vae_random_weights(c, true, 5);
    WanVaeConfig d = detect_wan_vae_config(w);
    EXPECT_EQ(d.dim_mult, c.dim_mult);
    EXPECT_EQ(d.temporal_downsample, c.temporal_downsample);
    EXPECT_EQ(d.spatial_stride(), 4);
    WanVae vae(w, d, c10::kCPU, at::kDouble);
    at::Tensor mu = vae.encode(at::rand({1, 3, 9, 16, 24}, at::kDouble) * 2 - 1);
    EXPECT_EQ(mu.sizes(), (at::IntArrayRef{1, 16, 3, 4, 6}));
    at::Tensor whole = vae.decode(mu);
    EXPECT_EQ(whole.sizes(), (at::IntArrayRef{1, 3, 9, 16, 24}));
    WanVaeDecodeStream s(vae);
    at::Tensor a = s.push(mu.narrow(2, 0, 1));
    at::Tensor b = s.push(mu.narrow(2, 1, 2));
    test::expect_close(at::cat({a, b}, 2), whole, "3-stage stream vs whole (f64)", 1e-10, 1e-10, kRelFloor);
    // Frames must tile the 4x grid, not Wan's 8x one.
    EXPECT_THROW(vae.encode(at::zeros({1, 3, 1, 18, 24}, at::kDouble)), std::runtime_error);
    WanVaeConfig five = c;
    five.dim_mult = {1, 1, 2, 4, 4};
    five.temporal_downsample = {false, false, true, true};
    EXPECT_THROW(five.validate(), std::runtime_error);
}

TEST(WanVae, StreamingEncodeMatchesGolden) {
    const WanVae& vae = tiny_vae();
    const at::Tensor& video = golden().cases.at("encode_T9.video");
    WanVaeEncodeStream s(vae);
    std::vector<at::Tensor> outs;
    int64_t t0 = 0;
    for (int n : {2, 3, 1, 3}) {
        outs.push_back(s.push(video.narrow(2, t0, n)));
        t0 += n;
    }
    // 2 frames -> latent 0 (1 pending); +3 -> 4 pending -> latent 1; +1 -> 1 pending; +3 -> latent 2.
    EXPECT_EQ(outs[0].size(2), 1);
    EXPECT_EQ(outs[1].size(2), 1);
    EXPECT_EQ(outs[2].size(2), 0);
    EXPECT_EQ(outs[3].size(2), 1);
    EXPECT_EQ(s.pending_frames(), 0);
    test::expect_close(at::cat(outs, 2), golden().cases.at("encode_T9.mu"), "encode stream 2+3+1+3", 1e-4, 1e-4,
                       kRelFloor);
}

TEST(WanVae, ReportsMissingAndMisshapedTensors) {
    TensorMap w = golden().weights;
    w.erase("decoder.upsamples.3.time_conv.weight");
    w["decoder.conv1.bias"] = at::zeros({7});
    try {
        WanVae vae(w, detect_wan_vae_config(golden().weights), c10::kCPU, at::kFloat);
        FAIL() << "expected an error";
    } catch (const std::runtime_error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("decoder.upsamples.3.time_conv.weight"), std::string::npos) << msg;
        EXPECT_NE(msg.find("decoder.conv1.bias"), std::string::npos) << msg;
    }
}

}  // namespace
}  // namespace reel
