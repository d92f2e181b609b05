// Benchmark of the causal Wan DiT rollout: per-chunk latency split into the denoising steps and the cache pass.
// Random weights (or a checkpoint with --weights), reduced latent sizes so the 1.3B model fits a CPU run.
//   bench_dit --model toy
//   bench_dit --model 1.3b --latent 8x8 --chunks 2 --threads 2
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <stdexcept>

#include "cache/kv_cache.h"
#include "diffusion/rollout.h"
#include "diffusion/wan_config.h"
#include "diffusion/wan_dit.h"
#include "weights/safetensors.h"

using namespace reel;

namespace {

// The golden data's 2-layer toy (tests/data/golden/dit_weights.json).
WanDitConfig toy_config() {
    WanDitConfig c;
    c.dim = 80;
    c.ffn_dim = 160;
    c.freq_dim = 32;
    c.text_dim = 32;
    c.text_len = 8;
    c.num_heads = 4;
    c.num_layers = 2;
    return c;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"reel DiT rollout benchmark (per-chunk denoise / cache-pass latency)"};
    std::string model = "toy", weights_path, latent = "8x12", cache_kind = "full";
    int layers = 0, chunks = 3, threads = 2, chunk_frames = 3, sink = 0, window = 0, heads = 0;
    uint64_t seed = 1;
    app.add_option("--model", model, "toy (golden 2-layer config) or 1.3b (Wan2.1-T2V-1.3B)")
        ->check(CLI::IsMember({"toy", "1.3b"}))
        ->capture_default_str();
    app.add_option("--weights", weights_path, "Wan DiT .safetensors instead of random weights (config detected)");
    app.add_option("--heads", heads, "head count for --weights when dim is not a multiple of 128");
    app.add_option("--layers", layers, "override the number of blocks (0 = the model's)")->capture_default_str();
    app.add_option("--latent", latent, "latent HxW per frame (pixels / 8)")->capture_default_str();
    app.add_option("--chunks", chunks, "chunks to generate")->capture_default_str();
    app.add_option("--chunk-frames", chunk_frames, "latent frames per chunk")->capture_default_str();
    app.add_option("--threads", threads, "intra-op threads (at::set_num_threads)")->capture_default_str();
    app.add_option("--cache", cache_kind, "full or window")
        ->check(CLI::IsMember({"full", "window"}))
        ->capture_default_str();
    app.add_option("--window", window, "window frames (with --cache window)")->capture_default_str();
    app.add_option("--sink", sink, "sink frames (with --cache window)")->capture_default_str();
    app.add_option("--seed", seed, "noise / weight seed")->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // rows appear as chunks finish, even through a pipe
    try {
        at::set_num_threads(threads);
        int64_t lh = 0, lw = 0;
        if (std::sscanf(latent.c_str(), "%ldx%ld", &lh, &lw) != 2 || lh <= 0 || lw <= 0)
            throw std::runtime_error("--latent must be HxW, got " + latent);

        auto t0 = std::chrono::steady_clock::now();
        WanDitConfig cfg;
        TensorMap weights;
        if (!weights_path.empty()) {
            weights = load_safetensors(weights_path);
            cfg = detect_wan_dit_config(weights, heads);
        } else {
            cfg = model == "toy" ? toy_config() : wan_t2v_1_3b();
            if (layers > 0)
                cfg.num_layers = layers;
            weights = random_wan_dit_weights(cfg, seed, at::kFloat, /*gaussian=*/false);
        }
        WanDit dit(cfg, weights, at::kCPU, at::kFloat);
        int64_t params = 0;
        for (const auto& kv : weights)
            params += kv.second.numel();
        std::printf("model: %d layers, dim %ld, ffn %ld, heads %ld, %.3f B params; load %.1f s; threads %d\n",
                    static_cast<int>(cfg.num_layers), cfg.dim, cfg.ffn_dim, cfg.num_heads, params / 1e9,
                    seconds_since(t0), at::get_num_threads());

        auto cache = cache_kind == "full" ? make_full_cache(static_cast<int>(cfg.num_layers))
                                          : make_window_cache(static_cast<int>(cfg.num_layers), sink,
                                                              window > 0 ? window : sink + 2 * chunk_frames);
        RolloutConfig rc;
        rc.chunk_frames = chunk_frames;
        rc.latent_h = lh;
        rc.latent_w = lw;
        rc.channels = cfg.in_dim;
        rc.seed = seed;
        CausalRollout ro(dit, *cache, rc);
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
        auto t1 = std::chrono::steady_clock::now();
        ro.set_context(at::randn({1, cfg.text_len, cfg.text_dim}, gen, at::TensorOptions().dtype(at::kFloat)));
        const double ctx_ms = seconds_since(t1) * 1e3;
        const int64_t tokens = chunk_frames * (lh / cfg.patch[1]) * (lw / cfg.patch[2]);
        std::printf(
            "latent %ldx%ld, %d frames/chunk = %ld tokens/call, %zu steps + cache pass, cache %s; "
            "set_context %.1f ms\n",
            lh, lw, chunk_frames, tokens, ro.timesteps().size(), cache->describe().c_str(), ctx_ms);
        std::printf("%5s %8s %12s %12s %14s %12s %12s\n", "chunk", "frames", "denoise_ms", "per_step_ms",
                    "cache_pass_ms", "total_ms", "kv_MiB");
        double sum_d = 0, sum_c = 0;
        for (int k = 0; k < chunks; ++k) {
            ro.next_chunk();
            ChunkTiming t = ro.last_timing();
            sum_d += t.denoise_ms;
            sum_c += t.cache_pass_ms;
            std::printf("%5d %8ld %12.1f %12.1f %14.1f %12.1f %12.2f\n", k, static_cast<long>(ro.frames_done()),
                        t.denoise_ms, t.denoise_ms / ro.timesteps().size(), t.cache_pass_ms,
                        t.denoise_ms + t.cache_pass_ms, cache->bytes() / 1048576.0);
        }
        std::printf("mean per chunk: denoise %.1f ms, cache pass %.1f ms, total %.1f ms (%.2f latent frames/s)\n",
                    sum_d / chunks, sum_c / chunks, (sum_d + sum_c) / chunks,
                    chunks * chunk_frames / ((sum_d + sum_c) / 1e3));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_dit: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
