// Bounded cache policies on the slot store: merged attention vs dense over the duplicates, RoPE at read vs at
// write, relative window positions after the window rolls and past 1024 frames, quantized storage error bounds,
// no reallocation once warm, budgets, TempCache merge rates, FlowCache bounds, and the policy parser.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "cache/cache_spec.h"
#include "cache/kv_cache.h"
#include "diffusion/rope.h"
#include "diffusion/wan_dit.h"
#include "golden_util.h"
#include "kernels/attention.h"

using namespace reel;

namespace {

const int64_t kB = 1, kN = 2, kD = 32, kHp = 2, kWp = 3, kS = kHp * kWp;

// Writes frames [start, start + n) to every layer: k, v [B, n*S, N, D].
void write_frames(KVCache& c, int64_t start, int64_t n, const at::Tensor& k, const at::Tensor& v) {
    c.set_frame_grid(kHp, kWp);
    for (int l = 0; l < c.num_layers(); ++l)
        c.write(l, start, n, k, v);
}

// Attention of q [B, N, Lq, D] over everything layer 0 holds, keys used as stored (no RoPE).
at::Tensor attend_raw(const KVCache& c, const at::Tensor& q, int64_t block = 4096) {
    AttentionAccumulator acc(q);
    c.read(0, block, [&](const KVBlock& b) { acc.add(b.k, b.v, b.bias); });
    return acc.finish();  // [B, Lq, N, D]
}

// Same, with keys roped at the positions the cache gives them and queries of frame `qframe` roped likewise.
at::Tensor attend_roped(const KVCache& c, const Rope3D& rope, const at::Tensor& q, int64_t qframe) {
    const int64_t lq = q.size(2);
    at::Tensor tq = at::full({lq, 1}, float(c.query_position(qframe)));
    at::Tensor sq = at::arange(lq, at::kLong).remainder(kS).view({lq, 1});
    at::Tensor qr = rope.apply_at(q.permute({0, 2, 1, 3}), rope.table_at(tq, sq, kHp, kWp)).permute({0, 2, 1, 3});
    AttentionAccumulator acc(qr.contiguous());
    c.read(0, 4096, [&](const KVBlock& b) {
        acc.add(rope.apply_at(b.k, rope.table_at(b.tpos, b.spos, kHp, kWp)), b.v, b.bias);
    });
    return acc.finish();
}

double max_abs(const at::Tensor& a, const at::Tensor& b) {
    return (a - b).abs().max().item<double>();
}

}  // namespace

// The merge identity: one entry (k, mean v, count n) with +log(n) equals n copies of (k, v_i) — through the
// store's TempCache on a static scene (identical keys every frame), against dense attention over every
// duplicated key. Keys are compared un-roped: the identity is about the keys, RoPE is tested separately.
TEST(CachePolicies, MergedAttentionEqualsDenseOverDuplicates) {
    at::manual_seed(1);
    at::Tensor k1 = at::randn({kB, kS, kN, kD});
    auto cache = make_cache(parse_cache_spec("full", "tempcache:tau=0.999"), 1);
    std::vector<at::Tensor> ks, vs;
    for (int64_t f = 0; f < 9; ++f) {
        at::Tensor v = at::randn({kB, kS, kN, kD});
        write_frames(*cache, f, 1, k1, v);
        ks.push_back(k1);
        vs.push_back(v);
    }
    // Frame 8 is still pending (the chunk being made); frames 1..7 merged into frame 0's entries.
    const KVCacheStats st = cache->stats();
    EXPECT_EQ(st.entries, kB * kN * kS * 2);
    EXPECT_EQ(st.tokens_merged, kB * kN * kS * 7);
    EXPECT_NEAR(st.merge_rate(), 7.0 / 8.0, 1e-9);
    at::Tensor q = at::randn({kB, kN, 5, kD}).mul(2);
    at::Tensor dense = attention(q.permute({0, 2, 1, 3}), at::cat(ks, 1), at::cat(vs, 1));
    at::Tensor merged = attend_raw(*cache, q);
    const double err = max_abs(dense, merged);
    std::printf("merged (%lld entries) vs dense (%lld keys): max abs %.2e\n", (long long)st.entries,
                (long long)(9 * kS * kN), err);
    EXPECT_LT(err, 1e-5);
    // Block-by-block reads (log-sum-exp merge across blocks) give the same result.
    EXPECT_LT(max_abs(merged, attend_raw(*cache, q, 5)), 1e-5);
}

// Keys are stored before RoPE and roped at read: with absolute positions this equals roping at write time.
TEST(CachePolicies, RopeAtReadEqualsRopeAtWrite) {
    at::manual_seed(2);
    Rope3D rope(kD, at::kCPU);
    auto cache = make_full_cache(1);
    std::vector<at::Tensor> roped, vs;
    for (int64_t f = 0; f < 6; f += 2) {
        at::Tensor k = at::randn({kB, 2 * kS, kN, kD}), v = at::randn({kB, 2 * kS, kN, kD});
        write_frames(*cache, f, 2, k, v);
        roped.push_back(rope.apply(k, rope.table_for_range(f, 2, kHp, kWp)));
        vs.push_back(v);
    }
    at::Tensor q = at::randn({kB, kN, kS, kD});
    at::Tensor qr = rope.apply(q.permute({0, 2, 1, 3}), rope.table_for_range(5, 1, kHp, kWp));
    at::Tensor expect = attention(qr, at::cat(roped, 1), at::cat(vs, 1));
    EXPECT_LT(max_abs(attend_roped(*cache, rope, q, 5), expect), 1e-5);
}

// A window without sinks: relative positions only shift every entry and the query by the same amount, and RoPE
// depends on differences, so relative and absolute windows attend identically, also after the window has rolled
// many times and past the reference's 1024-frame table.
TEST(CachePolicies, RelativeWindowEqualsAbsoluteAfterRolling) {
    at::manual_seed(3);
    Rope3D rope(kD, at::kCPU);
    auto rel = make_cache(parse_cache_spec("window:sink=0,recent=4"), 1);
    auto abs = make_cache(parse_cache_spec("window:sink=0,recent=4,rope=absolute"), 1);
    double worst = 0;
    for (int64_t f = 0; f < 1200; f += 2) {
        at::Tensor k = at::randn({kB, 2 * kS, kN, kD}), v = at::randn({kB, 2 * kS, kN, kD});
        write_frames(*rel, f, 2, k, v);
        write_frames(*abs, f, 2, k, v);
        if (f % 200 == 0 || f >= 1190) {
            at::Tensor q = at::randn({kB, kN, kS, kD});
            worst = std::max(worst, max_abs(attend_roped(*rel, rope, q, f + 1), attend_roped(*abs, rope, q, f + 1)));
        }
    }
    EXPECT_EQ(rel->frame_list(), (std::vector<int64_t>{1196, 1197, 1198, 1199}));
    EXPECT_LE(rel->query_position(1199), 3.0);  // positions stay inside the window
    EXPECT_EQ(abs->query_position(1199), 1199.0);
    std::printf("relative vs absolute window, 600 chunks: max abs %.2e\n", worst);
    EXPECT_LT(worst, 1e-4);
}

// Sinks keep their positions 0..S-1 and the window follows right after them.
TEST(CachePolicies, RelativePositionsWithSinks) {
    auto c = make_cache(parse_cache_spec("window:sink=1,recent=4"), 1);
    at::Tensor k = at::randn({kB, 3 * kS, kN, kD});
    for (int64_t f = 0; f < 30; f += 3)
        write_frames(*c, f, 3, k, k);
    EXPECT_EQ(c->frame_list(), (std::vector<int64_t>{0, 26, 27, 28, 29}));
    EXPECT_EQ(c->query_position(27), 2.0);
    EXPECT_EQ(c->query_position(29), 4.0);
    std::vector<float> tpos;
    c->read(0, 4096, [&](const KVBlock& b) {
        at::Tensor live = b.bias.isfinite();
        at::Tensor t = b.tpos.masked_select(live);
        tpos.insert(tpos.end(), t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
    });
    std::sort(tpos.begin(), tpos.end());
    tpos.erase(std::unique(tpos.begin(), tpos.end()), tpos.end());
    EXPECT_EQ(tpos, (std::vector<float>{0, 1, 2, 3, 4}));
}

// Warm stores never reallocate; bytes stay flat; budgets bound the allocation.
TEST(CachePolicies, NoReallocationOnceWarm) {
    for (const std::string policy :
         {"window:sink=1,recent=6", "window:sink=1,recent=6+tempcache", "window:sink=1,recent=6+int8",
          "window:sink=1,recent=6+tempcache+int4-hadamard", "window:sink=1,recent=6+int4-kivi",
          "window:sink=1,recent=6+flowcache:keep=0.3", "full+int4"}) {
        SCOPED_TRACE(policy);
        const bool budget = policy.rfind("full", 0) == 0;
        auto c = make_cache(parse_policy(policy, budget ? "40f" : ""), 2);
        at::manual_seed(4);
        int64_t warm_alloc = -1, warm_bytes = -1;
        for (int64_t f = 0; f < 150; f += 3) {
            at::Tensor k = at::randn({kB, 3 * kS, kN, kD}), v = at::randn({kB, 3 * kS, kN, kD});
            for (int rep = 0; rep < 2; ++rep)  // a denoising step and the cache pass rewrite the chunk
                write_frames(*c, f, 3, k, v);
            if (f == 60) {
                warm_alloc = c->stats().allocations;
                warm_bytes = c->bytes();
            }
        }
        EXPECT_EQ(c->stats().allocations, warm_alloc);
        EXPECT_EQ(c->bytes(), warm_bytes);
        EXPECT_GT(c->stats().entries, 0);
    }
}

TEST(CachePolicies, ByteBudgetIsRespected) {
    auto c = make_cache(parse_cache_spec("full", "", "", "64K"), 2);
    at::manual_seed(5);
    for (int64_t f = 0; f < 90; f += 3) {
        at::Tensor k = at::randn({kB, 3 * kS, kN, kD});
        write_frames(*c, f, 3, k, k);
    }
    EXPECT_LE(c->bytes(), 64 * 1024);
    EXPECT_GT(c->bytes(), 48 * 1024);
    const auto frames = c->frame_list();
    EXPECT_EQ(frames.back(), 89);  // the newest frames are kept, the oldest evicted
    EXPECT_LT(frames.size(), 90u);
    EXPECT_THROW(make_cache(parse_cache_spec("full", "", "", "1K"), 2)
                     ->write(0, 0, 3, at::zeros({1, 18, 2, 32}), at::zeros({1, 18, 2, 32})),
                 std::runtime_error);
}

// Quantized storage: reads come back within the quantizer's error; Hadamard lowers INT4 error when a few
// channels carry outliers; INT4 takes about a quarter of fp16's... here fp32's bytes per entry.
TEST(CachePolicies, QuantizedStorageError) {
    at::manual_seed(6);
    at::Tensor k = at::randn({kB, 3 * kS, kN, kD}), v = at::randn({kB, 3 * kS, kN, kD});
    k.select(3, 5).mul_(30);  // outlier channels
    k.select(3, 17).mul_(-25);
    auto error_of = [&](const std::string& quant) {
        auto c = make_cache(parse_cache_spec("full", "", quant), 1);
        write_frames(*c, 0, 3, k, v);
        for (int64_t f = 3; f < 12; f += 3)  // commits frames 0..2 and ages them past KIVI's full-precision frames
            write_frames(*c, f, 3, at::zeros_like(k), at::zeros_like(v));
        KVView view = c->view(0);
        at::Tensor kk = view.k.narrow(1, 0, 3 * kS), vv = view.v.narrow(1, 0, 3 * kS);
        const double ek = (kk - k).pow(2).mean().item<double>(), ev = (vv - v).pow(2).mean().item<double>();
        std::printf("%-14s key mse %.5f  value mse %.5f  bytes %lld\n", quant.c_str(), ek, ev,
                    (long long)c->stats().bytes_quant);
        return std::make_pair(ek, ev);
    };
    const auto none = error_of("none");
    EXPECT_EQ(none.first, 0.0);
    const auto i8 = error_of("int8");
    const auto i4 = error_of("int4");
    const auto kivi = error_of("int4-kivi");
    const auto had = error_of("int4-hadamard");
    EXPECT_LT(i8.first, i4.first / 50);
    EXPECT_LT(i8.second, 1e-3);
    EXPECT_LT(had.first, i4.first / 2);   // rotation spreads the outliers
    EXPECT_LT(kivi.first, i4.first / 2);  // per-channel key scales isolate them
    EXPECT_LT(i4.second, 0.05);
}

// TempCache merges a static scene almost entirely and random frames not at all.
TEST(CachePolicies, TempCacheMergeRate) {
    at::manual_seed(7);
    auto stat = make_cache(parse_cache_spec("window:sink=0,recent=12", "tempcache:tau=0.95"), 1);
    auto noise = make_cache(parse_cache_spec("window:sink=0,recent=12", "tempcache:tau=0.95"), 1);
    at::Tensor base = at::randn({kB, kS, kN, kD});
    for (int64_t f = 0; f < 60; f += 3) {
        at::Tensor k = base.repeat({1, 3, 1, 1}).add(at::randn({kB, 3 * kS, kN, kD}).mul(0.01));
        write_frames(*stat, f, 3, k, k);
        at::Tensor r = at::randn({kB, 3 * kS, kN, kD});
        write_frames(*noise, f, 3, r, r);
    }
    std::printf("merge rate static %.3f random %.3f; entries %lld vs %lld\n", stat->stats().merge_rate(),
                noise->stats().merge_rate(), (long long)stat->stats().entries, (long long)noise->stats().entries);
    EXPECT_GT(stat->stats().merge_rate(), 0.9);
    EXPECT_EQ(noise->stats().merge_rate(), 0.0);
    // The chunk being made (3 frames, not merged yet) plus one merged frame's worth of entries.
    EXPECT_LE(stat->stats().entries, kB * kN * kS * 4);
    EXPECT_EQ(noise->stats().entries, kB * kN * kS * 12);
    // A merged entry's multiplicity counts only its frames inside the window: bias <= log(window frames).
    float max_bias = -1e30f;
    stat->read(0, 4096, [&](const KVBlock& b) { max_bias = std::max(max_bias, b.bias.max().item<float>()); });
    EXPECT_LE(max_bias, std::log(12.0f) + 1e-4f);
    EXPECT_GT(max_bias, std::log(8.0f));
}

TEST(CachePolicies, FlowCacheIsBounded) {
    at::manual_seed(8);
    auto c = make_cache(parse_cache_spec("window:sink=1,recent=6", "flowcache:keep=0.2"), 1);
    for (int64_t f = 0; f < 120; f += 3) {
        at::Tensor k = at::randn({kB, 3 * kS, kN, kD});
        write_frames(*c, f, 3, k, k);
    }
    const KVCacheStats st = c->stats();
    // sinks + window + at most ceil(0.2*6)=2 kept frames + one frame's worth of summaries, per stream
    EXPECT_LE(st.entries, kB * kN * kS * (1 + 6 + 2 + 1));
    EXPECT_GT(st.merged_entries, 0);
}

TEST(CachePolicies, PolicyParsing) {
    EXPECT_EQ(parse_policy("window:sink=3,recent=12+tempcache:tau=0.9+int4-hadamard").describe(),
              "window:sink=3,recent=12+tempcache:tau=0.9,radius=0+int4-hadamard");
    EXPECT_EQ(parse_policy("full").describe(), "full");
    EXPECT_EQ(split_policy_list("full,window:sink=3,recent=12,window+tempcache+int4"),
              (std::vector<std::string>{"full", "window:sink=3,recent=12", "window+tempcache+int4"}));
    int64_t bytes = 0, frames = 0;
    parse_budget("256M", bytes, frames);
    EXPECT_EQ(bytes, int64_t(256) << 20);
    parse_budget("21f", bytes, frames);
    EXPECT_EQ(frames, 21);
    EXPECT_THROW(parse_policy("window+bogus"), std::runtime_error);
    EXPECT_THROW(parse_policy("int4+int8"), std::runtime_error);
    EXPECT_THROW(parse_cache_spec("full", "flowcache"), std::runtime_error);
    EXPECT_THROW(parse_cache_spec("window:sink=1,recent=6", "flowcache", "int4"), std::runtime_error);
    EXPECT_THROW(parse_cache_spec("window:recent=0"), std::runtime_error);
    EXPECT_THROW(parse_cache_spec("full", "tempcache:tau=2"), std::runtime_error);
    EXPECT_THROW(parse_cache_spec("full", "", "int3"), std::runtime_error);
    EXPECT_THROW(parse_cache_spec("full", "", "", "12X"), std::runtime_error);
    EXPECT_THROW(parse_cache_spec("full", "", "", "0f"), std::runtime_error);
}
