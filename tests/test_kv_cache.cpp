// KV cache policies: full (reference) overwrite/append semantics and growth, window eviction order with sinks,
// byte accounting.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "cache/kv_cache.h"
#include "kernels/attention.h"

using namespace reel;

namespace {

const int64_t kB = 1, kS = 4, kN = 2, kD = 6;

// k = frame index + `offset`, v = -(frame index + offset), per token, for frames [start, start + n).
std::pair<at::Tensor, at::Tensor> frames_kv(int64_t start, int64_t n, double offset = 0) {
    at::Tensor f = at::arange(start, start + n, at::kFloat).add(offset).repeat_interleave(kS);  // [n*S]
    at::Tensor k = f.view({1, n * kS, 1, 1}).expand({kB, n * kS, kN, kD}).contiguous();
    return {k, -k};
}

// The frame value each slot of the view holds (k is constant per frame).
std::vector<int64_t> slot_values(const KVView& v) {
    std::vector<int64_t> out;
    for (int64_t t = 0; t < v.k.size(1); t += kS)
        out.push_back(static_cast<int64_t>(v.k[0][t][0][0].item<float>()));
    return out;
}

void write_all(KVCache& c, int64_t start, int64_t n, double offset = 0) {
    auto kv = frames_kv(start, n, offset);
    for (int l = 0; l < c.num_layers(); ++l)
        c.write(l, start, n, kv.first, kv.second);
}

}  // namespace

TEST(KVCache, FullOverwriteAndAppend) {
    auto c = make_full_cache(2, /*initial_frames=*/2);
    EXPECT_EQ(c->frames(), 0);
    EXPECT_EQ(c->bytes(), 0);
    EXPECT_FALSE(c->view(0).k.defined());
    write_all(*c, 0, 3);
    EXPECT_EQ(c->frames(), 3);
    EXPECT_EQ(c->frame_list(1), (std::vector<int64_t>{0, 1, 2}));
    // Same frames again (a later denoising step): overwritten in place, nothing appended.
    write_all(*c, 0, 3, 100);
    EXPECT_EQ(c->frames(), 3);
    KVView v = c->view(0);
    EXPECT_EQ(v.k.sizes(), (at::IntArrayRef{kB, 3 * kS, kN, kD}));
    EXPECT_EQ(slot_values(v), (std::vector<int64_t>{100, 101, 102}));
    EXPECT_TRUE(at::equal(v.v, -v.k));
    EXPECT_FALSE(v.bias.defined());
    // New frames are appended.
    write_all(*c, 3, 3);
    v = c->view(1);
    EXPECT_EQ(slot_values(v), (std::vector<int64_t>{100, 101, 102, 3, 4, 5}));
    at::Tensor expect_pos = at::arange(6, at::kLong).repeat_interleave(kS);
    EXPECT_TRUE(at::equal(v.frame_pos, expect_pos));
    // A write that straddles held and new frames.
    write_all(*c, 5, 2, 50);
    EXPECT_EQ(slot_values(c->view(0)), (std::vector<int64_t>{100, 101, 102, 3, 4, 55, 56}));
    c->reset();
    EXPECT_EQ(c->frames(), 0);
    EXPECT_EQ(c->view(0).k.size(1), 0);
}

TEST(KVCache, FullGrowsByDoubling) {
    const int64_t frame_bytes = kB * kS * kN * kD * 4 * 2;  // k and v, fp32
    auto c = make_full_cache(3, 2);
    write_all(*c, 0, 1);
    EXPECT_EQ(c->bytes(), 3 * 2 * frame_bytes);  // initial capacity 2 frames
    write_all(*c, 1, 2);
    EXPECT_EQ(c->bytes(), 3 * 4 * frame_bytes);  // 3 frames -> 4
    write_all(*c, 3, 2);
    EXPECT_EQ(c->bytes(), 3 * 8 * frame_bytes);                                 // 5 frames -> 8
    EXPECT_EQ(slot_values(c->view(2)), (std::vector<int64_t>{0, 1, 2, 3, 4}));  // contents survive growth
    c->reset();
    EXPECT_EQ(c->bytes(), 3 * 8 * frame_bytes);  // allocation kept
}

TEST(KVCache, WindowWithSinkEvictsOldestNonSink) {
    // Self-Forcing local_attn_size 5, sink 1: slot frames after each 3-frame chunk (golden json).
    auto c = make_window_cache(2, 1, 5);
    write_all(*c, 0, 3);
    EXPECT_EQ(c->frame_list(0), (std::vector<int64_t>{0, 1, 2}));
    write_all(*c, 3, 3);
    EXPECT_EQ(c->frame_list(0), (std::vector<int64_t>{0, 2, 3, 4, 5}));
    EXPECT_EQ(slot_values(c->view(1)), (std::vector<int64_t>{0, 2, 3, 4, 5}));
    write_all(*c, 3, 3, 10);  // a later step of the same chunk: overwrite, no eviction
    EXPECT_EQ(slot_values(c->view(0)), (std::vector<int64_t>{0, 2, 13, 14, 15}));
    write_all(*c, 6, 3);
    EXPECT_EQ(c->frame_list(1), (std::vector<int64_t>{0, 5, 6, 7, 8}));
    KVView v = c->view(0);
    EXPECT_EQ(slot_values(v), (std::vector<int64_t>{0, 15, 6, 7, 8}));
    EXPECT_TRUE(at::equal(v.v, -v.k));
    EXPECT_TRUE(at::equal(v.frame_pos, at::tensor(std::vector<int64_t>{0, 5, 6, 7, 8}).repeat_interleave(kS)));
    EXPECT_EQ(c->bytes(), 2 * 5 * kB * kS * kN * kD * 4 * 2);  // fixed capacity
}

TEST(KVCache, WindowWithoutSink) {
    auto c = make_window_cache(1, 0, 5);
    write_all(*c, 0, 3);
    write_all(*c, 3, 3);
    EXPECT_EQ(c->frame_list(), (std::vector<int64_t>{1, 2, 3, 4, 5}));
    write_all(*c, 6, 3);
    EXPECT_EQ(c->frame_list(), (std::vector<int64_t>{4, 5, 6, 7, 8}));
    EXPECT_EQ(slot_values(c->view(0)), (std::vector<int64_t>{4, 5, 6, 7, 8}));
    c->reset();
    write_all(*c, 0, 2);
    EXPECT_EQ(c->frame_list(), (std::vector<int64_t>{0, 1}));
    // Mixing shapes is refused while frames are held; after reset a new latent size reallocates.
    at::Tensor big = at::ones({kB, 2 * 2 * kS, kN, kD});
    EXPECT_THROW(c->write(0, 2, 2, big, big), std::runtime_error);
    c->reset();
    c->write(0, 0, 2, big, big);
    EXPECT_EQ(c->view(0).k.size(1), 2 * 2 * kS);
    EXPECT_EQ(c->view(0).frame_pos.numel(), 2 * 2 * kS);
}

TEST(KVCache, RejectsWhatCannotFit) {
    EXPECT_THROW(make_window_cache(1, 5, 5), std::runtime_error);
    auto c = make_window_cache(1, 1, 3);
    write_all(*c, 0, 3);
    EXPECT_THROW(write_all(*c, 3, 3), std::runtime_error);  // needs 3 slots besides the sink
    EXPECT_THROW(c->write(1, 0, 1, frames_kv(0, 1).first, frames_kv(0, 1).second), std::runtime_error);
    auto f = make_full_cache(1);
    auto kv = frames_kv(0, 2);
    EXPECT_THROW(f->write(0, 0, 3, kv.first, kv.second), std::runtime_error);  // 8 tokens are not 3 frames
}

// The attention kernel the caches feed: a logit bias of log(n) on one key equals that key appearing n times
// (what merged entries rely on), and blocking the query rows changes nothing.
TEST(Attention, LogCountBiasAndQueryBlocking) {
    at::manual_seed(0);
    at::Tensor q = at::randn({1, 5, 2, 8}), k = at::randn({1, 3, 2, 8}), v = at::randn({1, 3, 2, 8});
    at::Tensor k_dup = at::cat({k.narrow(1, 0, 1), k}, 1), v_dup = at::cat({v.narrow(1, 0, 1), v}, 1);
    at::Tensor bias = at::tensor(std::vector<float>{std::log(2.0f), 0.0f, 0.0f});
    at::Tensor a = attention(q, k, v, bias), b = attention(q, k_dup, v_dup);
    EXPECT_LE((a - b).abs().max().item<double>(), 1e-6);
    // Reference: softmax(q k^T / sqrt(D)) v per head.
    at::Tensor s = at::matmul(q.permute({0, 2, 1, 3}), k.permute({0, 2, 3, 1})) / std::sqrt(8.0);
    at::Tensor ref = at::matmul(at::softmax(s, -1), v.permute({0, 2, 1, 3})).permute({0, 2, 1, 3});
    EXPECT_LE((attention(q, k, v) - ref).abs().max().item<double>(), 1e-6);
    EXPECT_LE((attention(q, k, v, at::Tensor(), /*max_score_bytes=*/1) - ref).abs().max().item<double>(), 1e-6);
    EXPECT_THROW(attention(q, k.narrow(3, 0, 4), v), std::runtime_error);
}
