// AnnSA at the real model's shape: one attention layer, 12 heads of 128, the queries of one latent frame (1,560
// tokens) against caches of 21, 60 and 180 latent frames of 1,560 tokens. Dense attention (the DiT's block-wise
// log-sum-exp accumulator) against AnnSA per index type, where AnnSA's time covers one chunk's index maintenance
// (3 frames leave the local window and enter the index, 3 evicted frames leave it), retrieval, gathering and the
// sparse kernel. Synthetic keys with video-like structure: each spatial token has a base key that drifts from
// frame to frame, queries are noisy copies of the current frame's keys. Recall on real caches: run
// `reel generate --attn ann:...,recall=32` (the run record's "ann" section).
//   bench_ann --frames 21,60,180 --index ivf,lsh,flat --threads 1
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <sstream>
#include <stdexcept>

#include "ann/ann_attention.h"
#include "kernels/attention.h"

using namespace reel;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty())
            out.push_back(item);
    return out;
}

struct Cache {
    at::Tensor k, v, bias, id, last;  // [S, L, D] x2, [S, L] x3
    at::Tensor base;                  // [S, T, D] per-token base key
};

// frames x tokens entries per stream; frame f's keys = base + drift * noise.
Cache make_cache(int64_t streams, int64_t frames, int64_t tokens, int64_t d, uint64_t seed) {
    at::manual_seed(seed);
    Cache c;
    c.base = at::randn({streams, tokens, d});
    const int64_t l = frames * tokens;
    c.k = at::empty({streams, l, d});
    c.v = at::randn({streams, l, d});
    for (int64_t f = 0; f < frames; ++f)
        c.k.narrow(1, f * tokens, tokens).copy_(c.base + at::randn({streams, tokens, d}).mul(0.3));
    c.bias = at::zeros({streams, l});
    c.id = at::arange(l, at::kLong).unsqueeze(0).repeat({streams, 1});
    c.last = at::arange(frames, at::kLong).repeat_interleave(tokens).unsqueeze(0).repeat({streams, 1});
    return c;
}

// The next chunk: new frames [frames, frames + 3) written over the slots of frames 1..3 (the window evicts its
// oldest non-sink frames), with new ids.
void next_chunk(Cache& c, int64_t frames, int64_t tokens, int64_t chunk) {
    at::manual_seed(1000 + uint64_t(frames));  // the same new frames for the dense reference and every index
    const int64_t l = c.k.size(1);
    for (int64_t j = 0; j < chunk; ++j) {
        const int64_t slot = (1 + j) * tokens, f = frames + j;
        c.k.narrow(1, slot, tokens).copy_(c.base + at::randn(c.base.sizes()).mul(0.3));
        c.v.narrow(1, slot, tokens).normal_();
        c.id.narrow(1, slot, tokens).copy_(at::arange(l + j * tokens, l + (j + 1) * tokens, at::kLong).unsqueeze(0));
        c.last.narrow(1, slot, tokens).fill_(f);
    }
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"reel AnnSA benchmark at the real model's attention shape"};
    std::string frames_list = "21,60,180", index_list = "ivf,lsh,flat,topk,hnsw";
    int threads = 1, heads = 12, dim = 128, tokens = 1560, k = 64, nprobe = 8, chunk = 3, recall_q = 128;
    int hnsw_max = 21, lsh_bits = 128, recall_n = 32, dense_q = 0;
    app.add_option("--frames", frames_list, "cache sizes in latent frames")->capture_default_str();
    app.add_option("--index", index_list, "index types: ivf, hnsw, lsh, flat, topk")->capture_default_str();
    app.add_option("--threads", threads, "threads (LibTorch and OpenMP)")->capture_default_str();
    app.add_option("--heads", heads, "heads")->capture_default_str();
    app.add_option("--dim", dim, "head dim")->capture_default_str();
    app.add_option("--tokens", tokens, "tokens per latent frame (= queries)")->capture_default_str();
    app.add_option("--k", k, "keys retrieved per query")->capture_default_str();
    app.add_option("--nprobe", nprobe, "IVF lists probed")->capture_default_str();
    app.add_option("--lsh-bits", lsh_bits, "LSH code bits")->capture_default_str();
    app.add_option("--hnsw-max-frames", hnsw_max, "skip HNSW above this cache size (its build is slow)")
        ->capture_default_str();
    app.add_option("--recall-queries", recall_q, "queries per stream used for recall")->capture_default_str();
    app.add_option("--recall-n", recall_n, "true top keys counted for recall")->capture_default_str();
    app.add_option("--dense-queries", dense_q,
                   "time dense attention on the first N queries only and scale the time by tokens / N (its cost is "
                   "linear in the queries; for slow machines); 0 = all")
        ->capture_default_str();
    CLI11_PARSE(app, argc, argv);
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    try {
        at::set_num_threads(threads);
        omp_set_num_threads(threads);
        std::printf("# threads %d, %d heads x %d, %d queries, k %d, local = sink frame 0 + chunk + previous chunk%s\n",
                    threads, heads, dim, tokens, k,
                    dense_q > 0 ? (", dense timed on " + std::to_string(dense_q) + " queries, scaled").c_str() : "");
        std::printf("%-7s %-6s %9s %9s %8s %9s %9s %9s %9s %9s %8s %8s %9s\n", "frames", "index", "dense_s", "ann_s",
                    "speedup", "maint_s", "search_s", "gather_s", "kernel_s", "build_s", "recall", "mass", "rel_err");
        for (const std::string& fs : split(frames_list)) {
            const int64_t frames = std::stoll(fs);
            // Dense reference on the state after the chunk update.
            at::Tensor ref;
            double dense_s = 0;
            {
                Cache c = make_cache(heads, frames, tokens, dim, 1);
                next_chunk(c, frames, tokens, chunk);
                at::manual_seed(2);
                at::Tensor q = (c.base + at::randn(c.base.sizes()).mul(0.3)).contiguous();  // [S, T, D]
                if (dense_q > 0 && dense_q < tokens)
                    q = q.narrow(1, 0, dense_q).contiguous();
                auto t0 = std::chrono::steady_clock::now();
                AttentionAccumulator acc(q.unsqueeze(0));
                const int64_t l = c.k.size(1);
                for (int64_t a = 0; a < l; a += 4096) {
                    const int64_t n = std::min<int64_t>(4096, l - a);
                    acc.add(c.k.narrow(1, a, n).unsqueeze(0), c.v.narrow(1, a, n).unsqueeze(0),
                            c.bias.narrow(1, a, n).unsqueeze(0));
                }
                ref = acc.finish().squeeze(0).permute({1, 0, 2}).contiguous();  // [S, T, D]
                dense_s = seconds_since(t0) * double(tokens) / double(q.size(1));
            }
            for (const std::string& type : split(index_list)) {
                if (type == "hnsw" && frames > hnsw_max) {
                    std::printf("%-7ld %-6s %9.3f %9s (skipped: build over --hnsw-max-frames)\n", long(frames),
                                type.c_str(), dense_s, "-");
                    continue;
                }
                AnnAttentionSpec spec = parse_attn_spec("ann:index=" + type + ",k=" + std::to_string(k) + ",nprobe=" +
                                                        std::to_string(nprobe) + ",bits=" + std::to_string(lsh_bits));
                AnnSelfAttention ann(spec);
                Cache c = make_cache(heads, frames, tokens, dim, 1);
                at::manual_seed(3);
                at::Tensor q0 = (c.base + at::randn(c.base.sizes()).mul(0.3)).contiguous();
                // First call: builds the index over everything older than the local window.
                auto t0 = std::chrono::steady_clock::now();
                at::Tensor local = c.last.ge(frames - 2 * chunk).logical_or(c.last.eq(0));
                ann.attend(q0, c.k, c.v, c.bias, c.id, local);
                const double build_s = seconds_since(t0);
                next_chunk(c, frames, tokens, chunk);
                at::manual_seed(2);
                at::Tensor q = (c.base + at::randn(c.base.sizes()).mul(0.3)).contiguous();
                local = c.last.ge(frames + chunk - 2 * chunk).logical_or(c.last.eq(0));
                AnnStats st;
                t0 = std::chrono::steady_clock::now();
                at::Tensor out = ann.attend(q, c.k, c.v, c.bias, c.id, local, at::Tensor(), &st);
                const double ann_s = seconds_since(t0);
                at::Tensor outr = out.narrow(1, 0, ref.size(1));
                const double rel = ((outr - ref).norm() / ref.norm()).item<double>();
                const int64_t rq = std::min<int64_t>(recall_q, tokens);
                at::Tensor attended =
                    at::cat({ann.last_selection().narrow(1, 0, rq),
                             ann.last_local_rows().unsqueeze(1).expand({heads, rq, ann.last_local_rows().size(1)})},
                            2);
                RecallStats r = measure_recall(q.narrow(1, 0, rq), c.k, c.bias, attended, recall_n);
                std::printf("%-7ld %-6s %9.3f %9.3f %8.2f %9.3f %9.3f %9.3f %9.3f %9.3f %8.3f %8.3f %9.2e\n",
                            long(frames), type.c_str(), dense_s, ann_s, dense_s / ann_s, st.maintain_s, st.search_s,
                            st.gather_s, st.attend_s, build_s, r.recall, r.mass, rel);
            }
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_ann: %s\n", e.what());
        return 1;
    }
    return 0;
}
