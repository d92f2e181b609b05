// Self-Forcing chunked rollout vs the golden 3-chunk runs (global, local5_sink1, local5_sink0) with the golden
// noise injected: every call's input/flow/x0, the KV cache after each chunk, the output latents. Plus seeding.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>

#include "cache/kv_cache.h"
#include "diffusion/rollout.h"
#include "diffusion/wan_dit.h"
#include "tests/golden_util.h"
#include "weights/safetensors.h"

using namespace reel;

namespace {

// test::check_close without printing (a rollout compares ~60 tensors): returns the max abs error and
// folds the max relative error into *max_rel.
double check(const at::Tensor& got, const at::Tensor& ref, const std::string& what, double* max_rel) {
    test::CloseResult r = test::check_close(got, ref, what);
    *max_rel = std::max(*max_rel, r.max_rel);
    return r.max_abs;
}

std::string two(int i) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%02d", i);
    return buf;
}

RolloutConfig toy_rollout(uint64_t seed) {
    RolloutConfig rc;
    rc.latent_h = 8;
    rc.latent_w = 12;
    rc.seed = seed;
    return rc;
}

struct Case {
    std::string name;
    int sink, window;
};

void run_golden_case(const Case& cs) {
    TensorMap g = test::load_golden("dit_rollout_" + cs.name + ".safetensors");
    nlohmann::json meta = test::read_golden_json("dit_rollout_" + cs.name + ".json");
    WanDit dit(test::golden_dit_config(), test::golden_dit_weights(), at::kCPU, at::kFloat);
    auto cache = cs.window > 0 ? make_window_cache(2, cs.sink, cs.window) : make_full_cache(2);
    CausalRollout ro(dit, *cache, toy_rollout(0));
    ASSERT_EQ(ro.timesteps(), (std::vector<float>{1000.0f, 937.5f, 833.3333129882812f, 625.0f}));
    ro.set_context(g.at("context"));

    // Golden noise: the chunk's slice of `noise`, and renoiseNN.noise ([B*F, C, H, W]) for the re-noising.
    ro.set_noise_hook([&](const NoiseRequest& r) {
        if (r.kind == NoiseRequest::kInitial)
            return g.at("noise").narrow(1, r.chunk * 3, 3);
        EXPECT_EQ(r.kind, NoiseRequest::kRenoise);
        const int idx = static_cast<int>(r.chunk) * 3 + r.step;
        EXPECT_EQ(meta.at("renoise")[idx].at("after_call").get<int64_t>(), r.chunk * 5 + r.step);
        return g.at("renoise" + two(idx) + ".noise").view(r.shape);
    });
    double worst_call = 0, rel = 0;
    int64_t calls = 0;
    ro.set_call_observer([&](const CallRecord& c) {
        const std::string p = "call" + two(static_cast<int>(c.call)) + ".";
        const nlohmann::json& info = meta.at("calls")[c.call];
        EXPECT_EQ(info.at("chunk").get<int64_t>(), c.chunk);
        EXPECT_EQ(info.at("kind").get<std::string>(), c.step < 0 ? "cache_update" : "denoise");
        worst_call = std::max(worst_call, check(c.input, g.at(p + "input"), p + "input", &rel));
        EXPECT_TRUE(at::equal(c.timestep, g.at(p + "timestep"))) << p << "timestep";
        worst_call = std::max(worst_call, check(c.flow, g.at(p + "flow_pred"), p + "flow_pred", &rel));
        worst_call = std::max(worst_call, check(c.x0, g.at(p + "x0_pred"), p + "x0_pred", &rel));
        ++calls;
    });

    std::vector<at::Tensor> chunks;
    double worst_kv = 0, rel_kv = 0;
    for (int k = 0; k < 3; ++k) {
        chunks.push_back(ro.next_chunk());
        EXPECT_EQ(ro.frames_done(), 3 * (k + 1));
        auto expect_frames = meta.at("cache_slot_frames_after_chunk")[k].get<std::vector<int64_t>>();
        for (int i = 0; i < 2; ++i) {
            EXPECT_EQ(cache->frame_list(i), expect_frames) << cs.name << " chunk " << k << " layer " << i;
            KVView v = cache->view(i);
            const std::string p = "chunk" + std::to_string(k) + ".kv" + std::to_string(i);
            // The reference caches roped keys: rope ours at their stored positions.
            worst_kv = std::max(worst_kv, check(dit.roped_keys(v, 4, 6), g.at(p + ".k"), p + ".k", &rel_kv));
            worst_kv = std::max(worst_kv, check(v.v, g.at(p + ".v"), p + ".v", &rel_kv));
        }
    }
    EXPECT_EQ(calls, 15);
    double rel_lat = 0;
    double lat = check(at::cat(chunks, 1), g.at("latents_out"), "latents_out", &rel_lat);
    std::printf(
        "%-13s 15 calls (input/flow/x0): max abs %.3g rel %.3g | KV after chunks: max abs %.3g rel %.3g | "
        "latents_out: max abs %.3g rel %.3g\n",
        cs.name.c_str(), worst_call, rel, worst_kv, rel_kv, lat, rel_lat);
}

}  // namespace

TEST(Rollout, GoldenGlobal) {
    run_golden_case({"global", 0, -1});
}
TEST(Rollout, GoldenLocal5Sink1) {
    run_golden_case({"local5_sink1", 1, 5});
}
TEST(Rollout, GoldenLocal5Sink0) {
    run_golden_case({"local5_sink0", 0, 5});
}

TEST(Rollout, SeedMakesRunsReproducible) {
    TensorMap g = test::load_golden("dit_rollout_global.safetensors");
    WanDit dit(test::golden_dit_config(), test::golden_dit_weights(), at::kCPU, at::kFloat);
    auto run = [&](uint64_t seed) {
        auto cache = make_full_cache(2);
        CausalRollout ro(dit, *cache, toy_rollout(seed));
        ro.set_context(g.at("context"));
        at::Tensor a = ro.next_chunk();
        at::Tensor b = ro.next_chunk();
        ChunkTiming t = ro.last_timing();
        EXPECT_GT(t.denoise_ms, 0);
        EXPECT_GT(t.cache_pass_ms, 0);
        return at::cat({a, b}, 1);
    };
    at::Tensor a = run(7), b = run(7), c = run(8);
    EXPECT_EQ(a.sizes(), (at::IntArrayRef{1, 6, 16, 8, 12}));
    EXPECT_TRUE(at::equal(a, b)) << "same seed, different output";
    EXPECT_FALSE(at::equal(a, c)) << "different seed, same output";
    EXPECT_GT((a - c).abs().max().item<double>(), 1e-2);

    // reset() restarts the video from frame 0 with the new seed.
    auto cache = make_full_cache(2);
    CausalRollout ro(dit, *cache, toy_rollout(8));
    ro.set_context(g.at("context"));
    ro.next_chunk();
    ro.reset(7);
    EXPECT_EQ(ro.frames_done(), 0);
    EXPECT_EQ(cache->frames(), 0);
    at::Tensor r0 = ro.next_chunk();
    EXPECT_TRUE(at::equal(r0, a.narrow(1, 0, 3)));
}

// The dtype comes from the caller: the same rollout in float64 lands within the README's 2.1e-6 of the fp32
// golden latents, and bfloat16 runs end to end (loose bound: bf16 rounds every activation).
TEST(Rollout, OtherDtypes) {
    TensorMap g = test::load_golden("dit_rollout_global.safetensors");
    for (at::ScalarType dt : {at::kDouble, at::kBFloat16}) {
        WanDit dit(test::golden_dit_config(), test::golden_dit_weights(), at::kCPU, dt);
        auto cache = make_full_cache(2);
        CausalRollout ro(dit, *cache, toy_rollout(0));
        ro.set_context(g.at("context"));
        int renoise = 0;
        ro.set_noise_hook([&](const NoiseRequest& r) {
            if (r.kind == NoiseRequest::kInitial)
                return g.at("noise").narrow(1, r.chunk * 3, 3);
            return g.at("renoise" + two(renoise++) + ".noise").view(r.shape);
        });
        std::vector<at::Tensor> chunks;
        for (int k = 0; k < 3; ++k)
            chunks.push_back(ro.next_chunk());
        at::Tensor lat = at::cat(chunks, 1);
        EXPECT_EQ(lat.scalar_type(), dt);
        double err = (lat.to(at::kDouble) - g.at("latents_out").to(at::kDouble)).abs().max().item<double>();
        std::printf("%s rollout vs fp32 golden latents_out: max abs %.3g\n", c10::toString(dt), err);
        EXPECT_LE(err, dt == at::kDouble ? 1e-5 : 0.1);  // bf16 measured 0.037
    }
}

// Classifier-free guidance runs both branches as one doubled batch sharing the cache row for row: every call's flow
// equals uncond + g * (cond - uncond) from two separate single-branch models with their own caches, fed the guided
// run's inputs. With identical branches guidance changes nothing.
TEST(Rollout, ClassifierFreeGuidance) {
    TensorMap g = test::load_golden("dit_rollout_global.safetensors");
    at::Tensor cond = g.at("context");
    at::Tensor uncond = at::randn(cond.sizes(), at::make_generator<at::CPUGeneratorImpl>(3));
    WanDit dit(test::golden_dit_config(), test::golden_dit_weights(), at::kCPU, at::kFloat);
    auto cache = make_window_cache(2, 1, 6);
    RolloutConfig rc = toy_rollout(5);
    rc.guidance = 3.0;
    CausalRollout ro(dit, *cache, rc);
    EXPECT_THROW(ro.set_context(cond), std::runtime_error);  // one row: the unconditional one is missing
    ro.set_context(at::cat({cond, uncond}, 0));
    std::vector<CallRecord> calls;
    ro.set_call_observer([&](const CallRecord& r) { calls.push_back(r); });
    for (int k = 0; k < 3; ++k)
        ro.next_chunk();
    ASSERT_EQ(calls.size(), 15u);

    WanDit dc(test::golden_dit_config(), test::golden_dit_weights(), at::kCPU, at::kFloat);
    WanDit du(test::golden_dit_config(), test::golden_dit_weights(), at::kCPU, at::kFloat);
    dc.set_context(cond);
    du.set_context(uncond);
    auto cc = make_window_cache(2, 1, 6), cu = make_window_cache(2, 1, 6);
    double worst = 0, spread = 0;
    for (const CallRecord& r : calls) {
        const int64_t start = r.chunk * 3;
        at::Tensor fc = dc.forward(r.input, r.timestep, start, *cc);
        at::Tensor fu = du.forward(r.input, r.timestep, start, *cu);
        worst = std::max(worst, (r.flow - (fu + (fc - fu) * 3.0)).abs().max().item<double>());
        spread = std::max(spread, (fc - fu).abs().max().item<double>());
    }
    std::printf("guided flow vs two single-branch models: max abs %.3g (branches differ by %.3g)\n", worst, spread);
    EXPECT_LT(worst, 1e-4);
    EXPECT_GT(spread, 1e-2) << "the branches must differ for the test to mean anything";

    // Identical branches: the guided video equals the unguided one.
    auto c1 = make_window_cache(2, 1, 6), c2 = make_window_cache(2, 1, 6);
    CausalRollout plain(dit, *c1, toy_rollout(5));
    plain.set_context(cond);
    at::Tensor a = plain.next_chunk();
    CausalRollout same(dit, *c2, rc);
    same.set_context(at::cat({cond, cond}, 0));
    at::Tensor b = same.next_chunk();
    EXPECT_LT((a - b).abs().max().item<double>(), 1e-4);
}

// Negative-prompt guidance adds a third branch in the same batch: every call's flow equals
// uncond + g * (cond - uncond) + n * (cond - neg) from three single-branch models, and a negative prompt that is the
// empty one again adds n to the guidance scale.
TEST(Rollout, NegativeGuidance) {
    TensorMap g = test::load_golden("dit_rollout_global.safetensors");
    at::Tensor cond = g.at("context");
    at::Tensor uncond = at::randn(cond.sizes(), at::make_generator<at::CPUGeneratorImpl>(3));
    at::Tensor neg = at::randn(cond.sizes(), at::make_generator<at::CPUGeneratorImpl>(4));
    WanDit dit(test::golden_dit_config(), test::golden_dit_weights(), at::kCPU, at::kFloat);
    auto cache = make_window_cache(2, 1, 6);
    RolloutConfig rc = toy_rollout(5);
    rc.guidance = 2.0;
    rc.negative_guidance = 1.5;
    CausalRollout ro(dit, *cache, rc);
    EXPECT_THROW(ro.set_context(at::cat({cond, uncond}, 0)), std::runtime_error);  // the negative rows are missing
    ro.set_context(at::cat({cond, uncond, neg}, 0));
    std::vector<CallRecord> calls;
    ro.set_call_observer([&](const CallRecord& r) { calls.push_back(r); });
    for (int k = 0; k < 2; ++k)
        ro.next_chunk();
    ASSERT_EQ(calls.size(), 10u);

    std::vector<std::unique_ptr<WanDit>> single;
    std::vector<std::unique_ptr<KVCache>> caches;
    for (const at::Tensor& c : {cond, uncond, neg}) {
        single.push_back(
            std::make_unique<WanDit>(test::golden_dit_config(), test::golden_dit_weights(), at::kCPU, at::kFloat));
        single.back()->set_context(c);
        caches.push_back(make_window_cache(2, 1, 6));
    }
    double worst = 0, spread = 0;
    for (const CallRecord& r : calls) {
        const int64_t start = r.chunk * 3;
        at::Tensor fc = single[0]->forward(r.input, r.timestep, start, *caches[0]);
        at::Tensor fu = single[1]->forward(r.input, r.timestep, start, *caches[1]);
        at::Tensor fn = single[2]->forward(r.input, r.timestep, start, *caches[2]);
        worst = std::max(worst, (r.flow - (fu + (fc - fu) * 2.0 + (fc - fn) * 1.5)).abs().max().item<double>());
        spread = std::max(spread, (fu - fn).abs().max().item<double>());
    }
    std::printf(
        "negative-guided flow vs three single-branch models: max abs %.3g (uncond and negative differ by "
        "%.3g)\n",
        worst, spread);
    EXPECT_LT(worst, 1e-4);
    EXPECT_GT(spread, 1e-2) << "the branches must differ for the test to mean anything";

    // The empty prompt as the negative one: guidance 2 + negative 1.5 is guidance 3.5.
    auto c1 = make_window_cache(2, 1, 6), c2 = make_window_cache(2, 1, 6);
    RolloutConfig plain_rc = toy_rollout(5);
    plain_rc.guidance = 3.5;
    CausalRollout plain(dit, *c1, plain_rc);
    plain.set_context(at::cat({cond, uncond}, 0));
    at::Tensor a = plain.next_chunk();
    CausalRollout same(dit, *c2, rc);
    same.set_context(at::cat({cond, uncond, uncond}, 0));
    at::Tensor b = same.next_chunk();
    EXPECT_LT((a - b).abs().max().item<double>(), 1e-4);
}

// The Euler sampler: every denoising call after the first sees x_{i+1} = x_i + (sigma_{i+1} - sigma_i) flow_i (the
// flow ODE's step, guided flow included), and no fresh noise is drawn past the chunk's initial noise.
TEST(Rollout, EulerSamplerFollowsTheFlow) {
    TensorMap g = test::load_golden("dit_rollout_global.safetensors");
    WanDit dit(test::golden_dit_config(), test::golden_dit_weights(), at::kCPU, at::kFloat);
    auto cache = make_full_cache(2);
    RolloutConfig rc = toy_rollout(4);
    rc.sampler = RolloutSampler::kEuler;
    CausalRollout ro(dit, *cache, rc);
    ro.set_context(g.at("context"));
    std::vector<NoiseRequest::Kind> kinds;
    ro.set_noise_hook([&](const NoiseRequest& r) {
        kinds.push_back(r.kind);
        return at::randn(r.shape, at::make_generator<at::CPUGeneratorImpl>(100 + r.chunk));
    });
    std::vector<CallRecord> calls;
    ro.set_call_observer([&](const CallRecord& r) { calls.push_back(r); });
    ro.next_chunk();
    ro.next_chunk();
    ASSERT_EQ(calls.size(), 10u);  // 2 chunks x (4 steps + cache pass)
    EXPECT_EQ(kinds, (std::vector<NoiseRequest::Kind>{NoiseRequest::kInitial, NoiseRequest::kInitial}));
    double worst = 0, moved = 0;
    for (size_t i = 0; i + 1 < calls.size(); ++i) {
        const CallRecord &a = calls[i], &b = calls[i + 1];
        if (a.step < 0 || b.step != a.step + 1)
            continue;
        const double ds = (b.timestep[0][0].item<double>() - a.timestep[0][0].item<double>()) / 1000.0;
        worst = std::max(worst, (b.input - (a.input + ds * a.flow)).abs().max().item<double>());
        moved = std::max(moved, (b.input - a.input).abs().max().item<double>());
    }
    EXPECT_LT(worst, 1e-4);
    EXPECT_GT(moved, 1e-2) << "the steps must move x for the test to mean anything";

    // The default sampler re-noises: its second call does not follow the flow.
    auto c2 = make_full_cache(2);
    CausalRollout rn(dit, *c2, toy_rollout(4));
    rn.set_context(g.at("context"));
    std::vector<CallRecord> rcalls;
    rn.set_call_observer([&](const CallRecord& r) { rcalls.push_back(r); });
    rn.next_chunk();
    const double ds = (rcalls[1].timestep[0][0].item<double>() - rcalls[0].timestep[0][0].item<double>()) / 1000.0;
    EXPECT_GT((rcalls[1].input - (rcalls[0].input + ds * rcalls[0].flow)).abs().max().item<double>(), 1e-2);

    EXPECT_EQ(parse_rollout_sampler("euler"), RolloutSampler::kEuler);
    EXPECT_EQ(parse_rollout_sampler("renoise"), RolloutSampler::kRenoise);
    EXPECT_THROW(parse_rollout_sampler("ddpm"), std::runtime_error);
}

// push_chunk continues a given video: pushing the chunk a rollout generated leaves the cache, and so the next chunk,
// exactly as generating it did (noise keyed by chunk and step, so both runs draw the same); a wrong shape is refused.
TEST(Rollout, PushChunkContinuesAGivenVideo) {
    TensorMap g = test::load_golden("dit_rollout_global.safetensors");
    WanDit dit(test::golden_dit_config(), test::golden_dit_weights(), at::kCPU, at::kFloat);
    auto keyed = [](const NoiseRequest& r) {
        return at::randn(r.shape, at::make_generator<at::CPUGeneratorImpl>(1000 * r.chunk + 10 * r.kind + r.step + 5));
    };
    auto c1 = make_full_cache(2);
    CausalRollout gen(dit, *c1, toy_rollout(3));
    gen.set_context(g.at("context"));
    gen.set_noise_hook(keyed);
    at::Tensor first = gen.next_chunk(), second = gen.next_chunk();

    auto c2 = make_full_cache(2);
    CausalRollout cont(dit, *c2, toy_rollout(3));
    cont.set_context(g.at("context"));
    cont.set_noise_hook(keyed);
    int calls = 0;
    cont.set_call_observer([&](const CallRecord&) { ++calls; });
    cont.push_chunk(first);
    EXPECT_EQ(calls, 1) << "a pushed chunk runs only its cache pass";
    EXPECT_EQ(cont.frames_done(), 3);
    EXPECT_EQ(c2->frames(), c1->frames() - 3);
    at::Tensor next = cont.next_chunk();
    EXPECT_TRUE(at::allclose(next, second, 1e-5, 1e-5)) << (next - second).abs().max().item<double>();

    // Another first chunk changes what follows: the context is used.
    auto c3 = make_full_cache(2);
    CausalRollout other(dit, *c3, toy_rollout(3));
    other.set_context(g.at("context"));
    other.set_noise_hook(keyed);
    other.push_chunk(first.flip(3));
    EXPECT_GT((other.next_chunk() - second).abs().max().item<double>(), 1e-3);
    EXPECT_THROW(other.push_chunk(first.narrow(1, 0, 2)), std::runtime_error);
}
