// AnnSA / AnnCA: the gathered kernel and the ANN path equal dense attention when k covers every key, for each
// index type; indexes stay consistent with the cache through additions, evictions, merges and HNSW rebuilds;
// the DiT with --attn ann and --cross-attn ann matches the dense DiT over a rollout with a merging window cache.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>
#include <tuple>

#include "ann/ann_attention.h"
#include "ann/ann_index.h"
#include "cache/cache_spec.h"
#include "cache/kv_cache.h"
#include "cache/kv_gather.h"
#include "diffusion/wan_dit.h"
#include "kernels/attention.h"
#include "kernels/sparse_attention.h"

using namespace reel;

namespace {

// Dense reference for [S, Lq, D] queries over [S, L, D] keys with [S, L] bias.
at::Tensor dense_ref(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias) {
    // attention() takes [B, L, N, D]: one batch, S heads.
    at::Tensor o = attention(q.permute({1, 0, 2}).unsqueeze(0), k.permute({1, 0, 2}).unsqueeze(0),
                             v.permute({1, 0, 2}).unsqueeze(0), bias.unsqueeze(0));
    return o.squeeze(0).permute({1, 0, 2});
}

// Random bias: log multiplicities, and some empty (-inf) slots.
at::Tensor random_bias(int64_t s, int64_t l) {
    at::Tensor b = at::rand({s, l}).mul(3).add(1).floor().log();
    return b.masked_fill(at::rand({s, l}).lt(0.1), -std::numeric_limits<float>::infinity());
}

// A 2-layer, 4-head DiT small enough for exactness tests; text_dim 32.
WanDitConfig tiny_dit_config(int64_t text_len) {
    WanDitConfig cfg;
    cfg.dim = 64, cfg.ffn_dim = 128, cfg.freq_dim = 32, cfg.text_dim = 32, cfg.text_len = text_len;
    cfg.num_heads = 4, cfg.num_layers = 2;
    return cfg;
}

}  // namespace

TEST(SparseAttention, AllPoolRowsEqualDense) {
    at::manual_seed(1);
    const int64_t S = 3, lq = 17, ll = 9, lg = 40, d = 16;
    at::Tensor q = at::randn({S, lq, d}), kl = at::randn({S, ll, d}), vl = at::randn({S, ll, d});
    at::Tensor kg = at::randn({S, lg, d}), vg = at::randn({S, lg, d});
    at::Tensor bl = random_bias(S, ll), bg = random_bias(S, lg);
    // Every query selects every pool row, in a per-query shuffled order, plus -1 padding.
    at::Tensor sel = at::full({S, lq, lg + 5}, -1, at::kLong);
    for (int64_t s = 0; s < S; ++s)
        for (int64_t i = 0; i < lq; ++i)
            sel[s][i].narrow(0, 0, lg).copy_(at::randperm(lg));
    at::Tensor out = sparse_attention(q, kl, vl, bl, kg, vg, bg, sel);
    at::Tensor ref = dense_ref(q, at::cat({kl, kg}, 1), at::cat({vl, vg}, 1), at::cat({bl, bg}, 1));
    EXPECT_LT((out - ref).abs().max().item<double>(), 1e-5);
    // A partial selection differs (the test can fail).
    at::Tensor part = sparse_attention(q, kl, vl, bl, kg, vg, bg, sel.narrow(2, 0, lg / 2));
    EXPECT_GT((part - ref).abs().max().item<double>(), 1e-3);
    // No local keys at all: only the gathered part.
    at::Tensor none = sparse_attention(q, kl.narrow(1, 0, 0), vl.narrow(1, 0, 0), bl.narrow(1, 0, 0), kg, vg, bg, sel);
    EXPECT_LT((none - dense_ref(q, kg, vg, bg)).abs().max().item<double>(), 1e-5);
}

class AnnTypes : public ::testing::TestWithParam<std::string> {};

TEST_P(AnnTypes, FullKEqualsDenseThroughMaintenance) {
    at::manual_seed(2);
    const int64_t S = 2, lq = 12, d = 16;
    AnnAttentionSpec spec = parse_attn_spec("ann:index=" + GetParam() + ",k=400,nprobe=1000");
    spec.index.min_train = 64;  // IVF trains on the first call's keys
    AnnSelfAttention ann(spec);
    // Entries: ids 0..L-1 per stream; the first `nl` rows are local.
    int64_t next_id = 0;
    at::Tensor k = at::randn({S, 300, d}), v = at::randn({S, 300, d}), bias = random_bias(S, 300);
    at::Tensor id = at::arange(300, at::kLong).unsqueeze(0).repeat({S, 1});
    next_id = 300;
    for (int step = 0; step < 4; ++step) {
        at::Tensor local = at::zeros({S, k.size(1)}, at::kBool);
        local.narrow(1, k.size(1) - 20, 20).fill_(true);  // the newest rows
        at::Tensor q = at::randn({S, lq, d});
        at::Tensor out = ann.attend(q, k, v, bias, id, local);
        at::Tensor ref = dense_ref(q, k, v, bias);
        EXPECT_LT((out - ref).abs().max().item<double>(), 1e-5) << GetParam() << " step " << step;
        // The index holds exactly the live non-local entries.
        const int64_t live = (bias[0].gt(-1e30) & local[0].logical_not()).sum().item<int64_t>();
        EXPECT_EQ(ann.index_size(0), live) << GetParam() << " step " << step;
        // Next chunk: evict 50 random rows, append 30 new entries (new ids), merge-like bias changes.
        at::Tensor keep = std::get<0>(at::randperm(k.size(1)).narrow(0, 0, k.size(1) - 50).sort());
        k = at::cat({k.index_select(1, keep), at::randn({S, 30, d})}, 1);
        v = at::cat({v.index_select(1, keep), at::randn({S, 30, d})}, 1);
        bias = at::cat({bias.index_select(1, keep).add(0.1), random_bias(S, 30)}, 1);
        id = at::cat({id.index_select(1, keep), at::arange(next_id, next_id + 30).unsqueeze(0).repeat({S, 1})}, 1);
        next_id += 30;
    }
}

INSTANTIATE_TEST_SUITE_P(Ann, AnnTypes, ::testing::Values("flat", "ivf", "hnsw", "lsh", "topk"));

TEST(AnnIndex, SearchFindsNearestAndForgetsRemoved) {
    at::manual_seed(3);
    const int64_t d = 32, n = 3000;
    at::Tensor keys = at::randn({n, d});
    at::Tensor ids = at::arange(1000, 1000 + n, at::kLong);
    for (std::string type : {"flat", "ivf", "hnsw", "lsh", "topk"}) {
        AnnIndexSpec spec;
        spec.type = type;
        spec.nprobe = 16;
        auto index = make_ann_index(spec, d);
        index->add(ids, keys);
        EXPECT_EQ(index->size(), n) << type;
        // Queries near stored keys: the key itself (scaled up) must top an exact search, and be found by the
        // approximate ones most of the time.
        at::Tensor q = keys.narrow(0, 0, 50).mul(3);
        auto [found, score] = index->search(q, 10);
        int hits = 0;
        for (int64_t i = 0; i < 50; ++i)
            for (int64_t j = 0; j < 10; ++j)
                hits += found[i][j].item<int64_t>() == 1000 + i;
        EXPECT_GE(hits, type == "lsh" ? 30 : 45) << type;
        // Remove 2500 (HNSW rebuilds), then nothing removed comes back.
        at::Tensor gone = ids.narrow(0, 0, 2500);
        index->remove(gone);
        EXPECT_EQ(index->size(), n - 2500) << type;
        auto after = index->search(at::randn({40, d}), 20).first;
        std::set<int64_t> seen;
        for (int64_t x : std::vector<int64_t>(after.data_ptr<int64_t>(), after.data_ptr<int64_t>() + after.numel()))
            if (x >= 0) {
                EXPECT_GE(x, 1000 + 2500) << type;
                seen.insert(x);
            }
        EXPECT_FALSE(seen.empty()) << type;
        if (type == "hnsw") {
            EXPECT_EQ(index->rebuilds(), 1);
        }
    }
}

TEST(AnnCrossAttention, FullKEqualsDenseAndPartialDiffers) {
    at::manual_seed(4);
    const int64_t b = 2, f = 3, s = 5, n = 2, d = 8, t = 11;
    at::Tensor q = at::randn({b, f * s, n, d}), k = at::randn({b, t, n, d}), v = at::randn({b, t, n, d});
    at::Tensor ref = attention(q, k, v);
    EXPECT_LT((ann_cross_attention(q, k, v, s, t) - ref).abs().max().item<double>(), 1e-5);
    EXPECT_LT((ann_cross_attention(q, k, v, s, 100) - ref).abs().max().item<double>(), 1e-5);
    EXPECT_GT((ann_cross_attention(q, k, v, s, 3) - ref).abs().max().item<double>(), 1e-3);
}

// A row standing for m identical rows, with bias log(m), is attended exactly like the m rows (the DiT folds the
// prompt's zero padding that way); and the selection counts its multiplicity.
TEST(AnnCrossAttention, FoldedRowsWithLogBiasEqualDense) {
    at::manual_seed(6);
    const int64_t b = 1, f = 2, s = 4, n = 2, d = 8, t = 5, copies = 9;
    at::Tensor q = at::randn({b, f * s, n, d}), k = at::randn({b, t, n, d}), v = at::randn({b, t, n, d});
    // Dense reference: row t-1 repeated `copies` times.
    at::Tensor kr = at::cat({k, k.narrow(1, t - 1, 1).expand({b, copies - 1, n, d})}, 1);
    at::Tensor vr = at::cat({v, v.narrow(1, t - 1, 1).expand({b, copies - 1, n, d})}, 1);
    at::Tensor ref = attention(q, kr, vr);
    at::Tensor bias = at::zeros({b, t});
    bias[0][t - 1] = std::log(double(copies));
    EXPECT_LT((ann_cross_attention(q, k, v, s, t, bias) - ref).abs().max().item<double>(), 1e-5);
    EXPECT_GT((ann_cross_attention(q, k, v, s, t) - ref).abs().max().item<double>(), 1e-3);  // the bias matters
}

// The DiT folds the zero rows of a short prompt: AnnCA with k = prompt tokens + 1 is exact.
TEST(AnnCrossAttention, DitShortPromptFoldsPadding) {
    const WanDitConfig cfg = tiny_dit_config(12);
    TensorMap w = random_wan_dit_weights(cfg, 8);
    WanDit dense(cfg, w, at::kCPU, at::kFloat), ann(cfg, w, at::kCPU, at::kFloat), small(cfg, w, at::kCPU, at::kFloat);
    ann.set_attention(AnnAttentionSpec(), parse_cross_attn_spec("ann:k=4"));
    small.set_attention(AnnAttentionSpec(), parse_cross_attn_spec("ann:k=2"));
    at::manual_seed(9);
    at::Tensor ctx = at::randn({1, 3, 32});  // 3 tokens, 9 rows of padding
    for (WanDit* m : {&dense, &ann, &small})
        m->set_context(ctx);
    auto c1 = make_full_cache(2), c2 = make_full_cache(2), c3 = make_full_cache(2);
    at::Tensor x = at::randn({1, 2, 16, 8, 8});
    at::Tensor t = at::full({1, 2}, 500.0);
    at::Tensor yd = dense.forward(x, t, 0, *c1);
    EXPECT_LT((ann.forward(x, t, 0, *c2) - yd).abs().max().item<double>(), 1e-4);
    EXPECT_GT((small.forward(x, t, 0, *c3) - yd).abs().max().item<double>(), 1e-3);
}

TEST(AnnSpec, ParsesAndRejects) {
    EXPECT_FALSE(parse_attn_spec("dense").enabled);
    EXPECT_FALSE(parse_attn_spec("").enabled);
    AnnAttentionSpec a = parse_attn_spec("ann:index=hnsw,k=32,local=6,sink=2,ef=100");
    EXPECT_TRUE(a.enabled);
    EXPECT_EQ(a.index.type, "hnsw");
    EXPECT_EQ(a.k, 32);
    EXPECT_EQ(a.local, 6);
    EXPECT_EQ(a.sink, 2);
    EXPECT_EQ(a.index.ef_search, 100);
    EXPECT_EQ(parse_attn_spec(a.describe()).describe(), a.describe());
    EXPECT_EQ(parse_attn_spec("ann").index.type, "ivf");
    EXPECT_THROW(parse_attn_spec("ann:index=kd"), std::runtime_error);
    EXPECT_THROW(parse_attn_spec("ann:k=0"), std::runtime_error);
    EXPECT_THROW(parse_attn_spec("ann:k=x"), std::runtime_error);
    EXPECT_THROW(parse_attn_spec("sparse"), std::runtime_error);
    EXPECT_EQ(parse_cross_attn_spec("ann:k=8").k, 8);
    EXPECT_THROW(parse_cross_attn_spec("ann:n=8"), std::runtime_error);
}

// The DiT over a rollout-like sequence of chunks, with a window cache that evicts and with a cache that merges
// (TempCache): AnnSA with k covering every entry, and AnnCA with k = text_len, equal the dense DiT; a small k does
// not.
// Params: --cache, --merge, AnnSA's local frames (0 with TempCache: its chains of merged entries reach the newest
// committed frame, so only a local window of 0 leaves entries to the index).
class AnnDitPolicies : public ::testing::TestWithParam<std::tuple<std::string, std::string, int>> {};

TEST_P(AnnDitPolicies, FullKMatchesDense) {
    const WanDitConfig cfg = tiny_dit_config(8);
    TensorMap w = random_wan_dit_weights(cfg, 7);
    WanDit dense(cfg, w, at::kCPU, at::kFloat), ann(cfg, w, at::kCPU, at::kFloat), small(cfg, w, at::kCPU, at::kFloat);
    const auto& [cache_arg, merge_arg, local] = GetParam();
    ann.set_attention(parse_attn_spec("ann:index=flat,k=100000,local=" + std::to_string(local)),
                      parse_cross_attn_spec("ann:k=8"));
    small.set_attention(parse_attn_spec("ann:index=ivf,k=2,local=0,sink=0"), parse_cross_attn_spec("ann:k=2"));
    at::manual_seed(5);
    at::Tensor ctx = at::randn({1, 8, 32});
    for (WanDit* m : {&dense, &ann, &small})
        m->set_context(ctx);
    const CacheSpec spec = parse_cache_spec(cache_arg, merge_arg);
    auto c_dense = make_cache(spec, 2), c_ann = make_cache(spec, 2), c_small = make_cache(spec, 2);
    double worst = 0, small_diff = 0;
    for (int64_t chunk = 0; chunk < 6; ++chunk) {
        // Slowly varying latents so that TempCache finds matches; two denoising calls per chunk, like a rollout.
        at::Tensor x = at::randn({1, 2, 16, 8, 8}).mul(0.1).add(at::ones({1, 2, 16, 8, 8}));
        for (double tv : {750.0, 0.0}) {
            at::Tensor t = at::full({1, 2}, tv);
            at::Tensor yd = dense.forward(x, t, chunk * 2, *c_dense);
            at::Tensor ya = ann.forward(x, t, chunk * 2, *c_ann);
            at::Tensor ys = small.forward(x, t, chunk * 2, *c_small);
            worst = std::max(worst, (ya - yd).abs().max().item<double>());
            small_diff = std::max(small_diff, (ys - yd).abs().max().item<double>());
        }
    }
    if (merge_arg.empty())
        EXPECT_GT(ann.ann_stats().removed, 0);  // evictions reached the index
    else
        EXPECT_GT(c_ann->stats().merged_entries, 0);
    EXPECT_GT(ann.ann_stats().added, 0);
    EXPECT_LT(worst, 1e-4);
    EXPECT_GT(small_diff, 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Ann,
                         AnnDitPolicies,
                         ::testing::Values(std::make_tuple(std::string("window:sink=1,recent=6"), std::string(), 2),
                                           std::make_tuple(std::string("full"), std::string("tempcache:tau=0.5"), 0)));

TEST(AnnRecall, AllKeysOneNoneZeroTopHalf) {
    at::manual_seed(6);
    const int64_t S = 2, lq = 5, L = 30, d = 8;
    at::Tensor q = at::randn({S, lq, d}), k = at::randn({S, L, d});
    at::Tensor all = at::arange(L, at::kLong).view({1, 1, L}).expand({S, lq, L}).contiguous();
    RecallStats r = measure_recall(q, k, at::Tensor(), all, 4);
    EXPECT_NEAR(r.recall, 1.0, 1e-6);
    EXPECT_NEAR(r.mass, 1.0, 1e-5);
    RecallStats none = measure_recall(q, k, at::Tensor(), at::full({S, lq, 3}, -1, at::kLong), 4);
    EXPECT_NEAR(none.recall, 0.0, 1e-6);
    EXPECT_NEAR(none.mass, 0.0, 1e-6);
    // Each query's own exact top 4: full recall, mass strictly between.
    at::Tensor top = std::get<1>(at::matmul(q, k.transpose(1, 2)).topk(4, -1));
    RecallStats t = measure_recall(q, k, at::Tensor(), top, 4);
    EXPECT_NEAR(t.recall, 1.0, 1e-6);
    EXPECT_GT(t.mass, 0.0);
    EXPECT_LT(t.mass, 1.0);
    EXPECT_LT(measure_recall(q, k, at::Tensor(), top, 8).recall, 1.0);
}

// The DiT's AnnSA path copies only chosen entries out of the store: the metadata pass and gathered rows must agree
// with a plain read of every block, over full-precision and quantized pages and merged entries.
TEST(KVGather, RowsEqualTheBlocksTheyComeFrom) {
    auto cache = make_cache(parse_policy("window:sink=1,recent=6+tempcache:tau=0.5+int4-kivi"), 1);
    at::manual_seed(3);
    const int64_t n = 2, d = 16, s = 4;
    cache->set_frame_grid(2, 2);
    for (int64_t f = 0; f < 12; f += 2)
        cache->write(0, f, 2, at::randn({1, 2 * s, n, d}).mul(0.1).add(1), at::randn({1, 2 * s, n, d}));
    std::vector<at::Tensor> ks, vs, ts, ss, bs, ids;
    cache->read(0, 5, [&](const KVBlock& b) {
        const int64_t lb = b.k.size(2);
        ks.push_back(b.k.reshape({n, lb, d}).clone());
        vs.push_back(b.v.reshape({n, lb, d}).clone());
        ts.push_back(b.tpos.reshape({n, lb}).clone());
        ss.push_back(b.spos.reshape({n, lb}).clone());
        bs.push_back(b.bias.reshape({n, lb}).clone());
        ids.push_back(b.id.reshape({n, lb}).clone());
    });
    ASSERT_GT(ks.size(), 1u);  // several blocks, so rows cross block boundaries
    const at::Tensor k = at::cat(ks, 1), v = at::cat(vs, 1), tp = at::cat(ts, 1), sp = at::cat(ss, 1);
    const at::Tensor bias = at::cat(bs, 1), id = at::cat(ids, 1);
    const KVMeta meta = read_meta(*cache, 0, 5);
    EXPECT_TRUE(meta.id.equal(id));
    EXPECT_TRUE(meta.bias.equal(bias));
    EXPECT_GT(cache->stats().merged_entries, 0);
    EXPECT_GT(cache->stats().bytes_quant, 0);
    // Stream 0: every third row; stream 1: rows from both ends; a second set, empty for stream 0.
    const int64_t L = k.size(1);
    RowLists a(2), b(2);
    for (int64_t j = 0; j < L; j += 3)
        a[0].push_back(j);
    a[1] = {0, 1, L - 2, L - 1};
    b[1] = {2};
    const std::vector<KVRows> got = gather_rows(*cache, 0, 5, {&a, &b});
    for (int64_t st = 0; st < 2; ++st) {
        const at::Tensor idx = at::tensor(a[size_t(st)]);
        const int64_t m = idx.size(0);
        EXPECT_TRUE(got[0].k[st].narrow(0, 0, m).equal(k[st].index_select(0, idx)));
        EXPECT_TRUE(got[0].v[st].narrow(0, 0, m).equal(v[st].index_select(0, idx)));
        EXPECT_TRUE(got[0].tpos[st].narrow(0, 0, m).equal(tp[st].index_select(0, idx)));
        EXPECT_TRUE(got[0].spos[st].narrow(0, 0, m).equal(sp[st].index_select(0, idx)));
        EXPECT_TRUE(got[0].bias[st].narrow(0, 0, m).equal(bias[st].index_select(0, idx)));
        // Padding rows are masked out.
        if (m < got[0].bias.size(1)) {
            EXPECT_TRUE(std::isinf(got[0].bias[st][m].item<float>()));
        }
    }
    EXPECT_EQ(got[1].k.size(1), 1);
    EXPECT_TRUE(got[1].k[1][0].equal(k[1][2]));
    EXPECT_TRUE(std::isinf(got[1].bias[0][0].item<float>()));
    // A row past the end is an error, not a silent zero.
    RowLists bad(2);
    bad[0] = {L};
    EXPECT_THROW(gather_rows(*cache, 0, 5, {&bad}), std::runtime_error);
}

TEST(AnnSelection, CompactRenumbersIntoDistinctRows) {
    // [S=2, Lq=2, K=3]
    const at::Tensor sel = at::tensor(std::vector<int64_t>{7, 3, -1, 3, 9, 7, 5, -1, -1, -1, -1, -1}).view({2, 2, 3});
    std::vector<std::vector<int64_t>> rows;
    const at::Tensor c = compact_selection(sel, &rows);
    EXPECT_EQ(rows[0], (std::vector<int64_t>{3, 7, 9}));
    EXPECT_EQ(rows[1], (std::vector<int64_t>{5}));
    const at::Tensor want = at::tensor(std::vector<int64_t>{1, 0, -1, 0, 2, 1, 0, -1, -1, -1, -1, -1}).view({2, 2, 3});
    EXPECT_TRUE(c.equal(want));
}
