// Causal Wan DiT vs the golden reference (tests/data/golden/README.md section 2): config handling, RoPE table,
// per-layer traces of calls 00/06/14, every call run in isolation for the three cache policies, cross-attn caches.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>

#include "cache/kv_cache.h"
#include "diffusion/scheduler.h"
#include "diffusion/wan_config.h"
#include "diffusion/wan_dit.h"
#include "tests/golden_util.h"
#include "weights/safetensors.h"

using namespace reel;

namespace {

struct Case {
    std::string name;
    int sink = 0, window = -1;  // window -1: global attention (full cache)
};
const Case kCases[] = {{"global", 0, -1}, {"local5_sink1", 1, 5}, {"local5_sink0", 0, 5}};

std::unique_ptr<KVCache> make_cache(const Case& c, int layers) {
    return c.window > 0 ? make_window_cache(layers, c.sink, c.window) : make_full_cache(layers);
}

std::string call_name(int c) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "call%02d", c);
    return buf;
}

// Runs golden call `c` of a rollout in isolation: a fresh cache filled by replaying the cache-update calls of
// the earlier chunks (their golden inputs at t=0), then the call itself.
at::Tensor run_isolated(WanDit& dit,
                        const Case& cs,
                        const TensorMap& g,
                        const nlohmann::json& calls,
                        int c,
                        TensorMap* trace = nullptr) {
    auto cache = make_cache(cs, dit.config().num_layers);
    const int chunk = calls[c].at("chunk").get<int>();
    for (int k = 0; k < chunk; ++k) {
        const int u = 5 * k + 4;
        dit.forward(g.at(call_name(u) + ".input"), g.at(call_name(u) + ".timestep"),
                    calls[u].at("start_frame").get<int64_t>(), *cache);
    }
    return dit.forward(g.at(call_name(c) + ".input"), g.at(call_name(c) + ".timestep"),
                       calls[c].at("start_frame").get<int64_t>(), *cache, trace);
}

}  // namespace

TEST(WanConfig, JsonDetectAndBuiltin) {
    WanDitConfig c = test::golden_dit_config();
    EXPECT_EQ(c.dim, 80);
    EXPECT_EQ(c.ffn_dim, 160);
    EXPECT_EQ(c.num_heads, 4);
    EXPECT_EQ(c.head_dim(), 20);
    EXPECT_EQ(c.text_len, 8);
    EXPECT_EQ(c.patch, (std::array<int64_t, 3>{1, 2, 2}));
    WanDitConfig r = WanDitConfig::from_json(c.to_json());
    EXPECT_EQ(r.to_json(), c.to_json());

    EXPECT_TRUE(looks_like_wan_dit(test::golden_dit_weights()));
    EXPECT_FALSE(looks_like_wan_dit(TensorMap{}));
    // dim 80 is not a multiple of 128: the head count cannot be guessed.
    EXPECT_THROW(detect_wan_dit_config(test::golden_dit_weights()), std::runtime_error);
    WanDitConfig d = detect_wan_dit_config(test::golden_dit_weights(), 4);
    d.text_len = c.text_len;  // not visible in shapes
    EXPECT_EQ(d.to_json(), c.to_json());

    // Wan2.1-T2V-1.3B's config.json (keys it has; the rest are WanModel defaults).
    auto wan = nlohmann::json::parse(R"({"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 1536,
        "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 12,
        "num_layers": 30, "out_dim": 16, "text_len": 512})");
    EXPECT_EQ(WanDitConfig::from_json(wan).to_json(), wan_t2v_1_3b().to_json());
    // Shapes alone give the 1.3B config (head_dim 128).
    WanDitConfig big = wan_t2v_1_3b();
    TensorMap shapes;
    for (const auto& ns : wan_dit_tensor_shapes(big))
        shapes[ns.first] = at::empty(ns.second, at::TensorOptions().dtype(at::kFloat));
    EXPECT_EQ(shapes.size(), 825u);  // the 1.3B state dict has 825 tensors
    EXPECT_EQ(detect_wan_dit_config(shapes).to_json(), big.to_json());
    EXPECT_THROW(WanDitConfig::from_json(nlohmann::json{{"dim", 100}, {"num_heads", 3}}), std::runtime_error);
}

TEST(WanDit, MismatchedCheckpointListsEveryProblem) {
    WanDitConfig c = test::golden_dit_config();
    c.ffn_dim = 96;
    c.num_layers = 3;
    try {
        WanDit dit(c, test::golden_dit_weights(), at::kCPU, at::kFloat);
        FAIL() << "no error for a mismatched checkpoint";
    } catch (const std::runtime_error& e) {
        std::string msg = e.what();
        std::printf("  error: %s\n", msg.substr(0, 300).c_str());
        EXPECT_NE(msg.find("shape of blocks.0.ffn.0.weight: expected [96, 80], found [160, 80]"), std::string::npos);
        EXPECT_NE(msg.find("missing blocks.2.self_attn.q.weight"), std::string::npos);
    }
    // Random weights from the shape list load strictly (the list and the loader agree).
    TensorMap rnd = random_wan_dit_weights(test::golden_dit_config(), 3);
    EXPECT_NO_THROW(WanDit(test::golden_dit_config(), rnd, at::kCPU, at::kFloat));
}

TEST(WanDit, RopeTable) {
    TensorMap g = test::load_golden("dit_rollout_global.safetensors");
    Rope3D rope(20, at::kCPU);
    EXPECT_EQ(rope.pairs_t(), 4);
    EXPECT_EQ(rope.pairs_hw(), 3);
    at::Tensor ref = g.at("rope_freqs_f64_first16");
    at::Tensor got = rope.freq_table_f64(16);
    test::expect_close(got, ref, "rope_freqs_f64_first16");
    EXPECT_LE((got - ref).abs().max().item<double>(), 1e-15);
    Rope3D big(128, at::kCPU);
    EXPECT_EQ(big.pairs_t(), 22);
    EXPECT_EQ(big.pairs_hw(), 21);
    EXPECT_THROW(rope.table_for_range(1023, 2, 2, 2), std::runtime_error);  // past the 1024-frame table
}

TEST(WanDit, TracesOfCalls00_06_14) {
    TensorMap g = test::load_golden("dit_rollout_global.safetensors");
    nlohmann::json calls = test::read_golden_json("dit_rollout_global.json").at("calls");
    WanDit dit(test::golden_dit_config(), test::golden_dit_weights(), at::kCPU, at::kFloat);
    dit.set_context(g.at("context"));
    for (int c : {0, 6, 14}) {
        TensorMap trace;
        at::Tensor flow = run_isolated(dit, kCases[0], g, calls, c, &trace);
        const std::string prefix = call_name(c) + ".trace.";
        int compared = 0;
        for (const auto& kv : g) {
            if (kv.first.compare(0, prefix.size(), prefix) != 0)
                continue;
            const std::string name = kv.first.substr(prefix.size());
            ASSERT_TRUE(trace.count(name)) << "no trace for " << name;
            test::expect_close(trace.at(name), kv.second, call_name(c) + " " + name);
            ++compared;
        }
        EXPECT_EQ(compared, 4 + 2 * 8 + 1) << "trace tensors of " << call_name(c);
        test::expect_close(flow, g.at(call_name(c) + ".flow_pred"), call_name(c) + " flow_pred");
    }
}

TEST(WanDit, EveryCallInIsolation) {
    FlowMatchScheduler sched(5.0);
    WanDit dit(test::golden_dit_config(), test::golden_dit_weights(), at::kCPU, at::kFloat);
    for (const Case& cs : kCases) {
        TensorMap g = test::load_golden("dit_rollout_" + cs.name + ".safetensors");
        nlohmann::json calls = test::read_golden_json("dit_rollout_" + cs.name + ".json").at("calls");
        dit.set_context(g.at("context"));
        double worst = 0;
        for (int c = 0; c < static_cast<int>(calls.size()); ++c) {
            at::Tensor flow = run_isolated(dit, cs, g, calls, c);
            at::Tensor x0 = sched.flow_to_x0(flow, g.at(call_name(c) + ".input"), g.at(call_name(c) + ".timestep"));
            const std::string tag = cs.name + " " + call_name(c);
            worst = std::max(worst,
                             test::expect_close(flow, g.at(call_name(c) + ".flow_pred"), tag + " flow_pred").max_abs);
            worst = std::max(worst, test::expect_close(x0, g.at(call_name(c) + ".x0_pred"), tag + " x0_pred").max_abs);
        }
        std::printf("%s: worst max abs over %zu calls %.3g\n", cs.name.c_str(), calls.size(), worst);
    }
}

TEST(WanDit, CrossAttentionCaches) {
    TensorMap g = test::load_golden("dit_rollout_global.safetensors");
    WanDit dit(test::golden_dit_config(), test::golden_dit_weights(), at::kCPU, at::kFloat);
    EXPECT_FALSE(dit.has_context());
    auto cache = make_full_cache(2);
    EXPECT_THROW(dit.forward(g.at("call00.input"), g.at("call00.timestep"), 0, *cache), std::runtime_error);
    dit.set_context(g.at("context"));
    for (int i = 0; i < 2; ++i) {
        auto kv = dit.cross_kv(i);
        test::expect_close(kv.first, g.at("crossattn" + std::to_string(i) + ".k"),
                           "crossattn" + std::to_string(i) + ".k");
        test::expect_close(kv.second, g.at("crossattn" + std::to_string(i) + ".v"),
                           "crossattn" + std::to_string(i) + ".v");
    }
    // A shorter prompt is padded with zero rows to text_len, like the reference.
    dit.set_context(g.at("context").narrow(1, 0, 5));
    test::expect_close(dit.cross_kv(1).first, g.at("crossattn1.k"), "crossattn1.k (5-row context)");
}
