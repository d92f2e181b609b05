// Wan VAE throughput and memory: streaming decode of short vs long videos (the peak RSS must not grow with
// length) and encode, for the real config (dim 96) and the golden tiny config (dim 4), random weights unless
// --weights is given.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "diffusion/wan_vae.h"
#include "weights/checkpoint.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// VmHWM (peak resident set) in MiB.
double peak_rss_mib() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("VmHWM:", 0) == 0)
            return std::stod(line.substr(6)) / 1024.0;
    return -1;
}

double rss_mib() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("VmRSS:", 0) == 0)
            return std::stod(line.substr(6)) / 1024.0;
    return -1;
}

// Resets VmHWM to the current RSS (Linux >= 4.0), so each run reports its own peak.
bool reset_peak_rss() {
    std::ofstream f("/proc/self/clear_refs");
    f << "5";
    return bool(f);
}

std::vector<int> parse_list(const std::string& s) {
    std::vector<int> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty())
            out.push_back(std::stoi(item));
    return out;
}

void bench_config(const std::string& label,
                  const reel::WanVae& vae,
                  int lh,
                  int lw,
                  const std::vector<int>& frames,
                  int encode_frames) {
    const reel::WanVaeConfig& c = vae.config();
    std::printf("\n== %s: dim %d, latent %dx%d -> %dx%d pixels ==\n", label.c_str(), c.dim, lh, lw, 8 * lh, 8 * lw);
    at::manual_seed(0);
    for (int n : frames) {
        // n pixel frames need 1 + ceil((n-1)/4) latent frames.
        const int64_t T = 1 + (std::max(n, 1) - 1 + 3) / 4;
        reel::WanVaeDecodeStream stream(vae);
        const bool reset = reset_peak_rss();
        const double rss0 = rss_mib();
        int64_t pixel_frames = 0;
        double first_s = 0;
        const auto t0 = Clock::now();
        for (int64_t t = 0; t < T; ++t) {
            // A latent frame as the rollout would hand it over; the pixels are dropped like a writer would.
            at::Tensor z = at::randn({1, c.z_dim, 1, lh, lw});
            at::Tensor px = stream.push(z);
            pixel_frames += px.size(2);
            if (t == 0)
                first_s = seconds_since(t0);
        }
        const double s = seconds_since(t0);
        std::printf(
            "stream decode %5lld pixel frames (%4lld latent): %7.2f s  %7.2f frames/s  (first frame %.3f s)  "
            "peak RSS %7.1f MiB%s (start %.1f)  cache %.2f MiB\n",
            (long long)pixel_frames, (long long)T, s, pixel_frames / s, first_s, peak_rss_mib(),
            reset ? "" : " (process peak)", rss0, stream.cache_bytes() / 1048576.0);
    }
    if (encode_frames > 0 && vae.has_encoder()) {
        const int64_t n = 1 + 4 * ((encode_frames - 1) / 4);
        at::Tensor video = at::rand({1, 3, n, 8 * lh, 8 * lw}) * 2 - 1;
        const bool reset = reset_peak_rss();
        const auto t0 = Clock::now();
        at::Tensor mu = vae.encode(video);
        const double s = seconds_since(t0);
        std::printf("encode        %5lld pixel frames -> %lld latent: %7.2f s  %7.2f frames/s  peak RSS %7.1f MiB%s\n",
                    (long long)n, (long long)mu.size(2), s, n / s, peak_rss_mib(), reset ? "" : " (process peak)");
    }
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Wan VAE benchmark: streaming decode and encode throughput, peak RSS"};
    std::string config = "both";
    std::string weights;
    // 1 thread by default: on a shared 2-core machine two OpenMP threads wait on each other (small convs measured
    // 60x slower, the real config 3x slower than with one thread at load ~4).
    int lh = 8, lw = 8, threads = 1, encode_frames = 33;
    int real_lh = 0, real_lw = 0;
    int tiny_dim = 4, tiny_res_blocks = 2;
    std::string frames_s = "100,1000", real_frames_s = "100,1000";
    app.add_option("--config", config, "tiny | real | both")->capture_default_str();
    app.add_option("--weights", weights, "VAE checkpoint (.pth/.safetensors) instead of random weights for 'real'");
    app.add_option("--latent-h", lh, "latent height (pixels = 8x)")->capture_default_str();
    app.add_option("--latent-w", lw, "latent width")->capture_default_str();
    app.add_option("--real-latent-h", real_lh, "latent height for the real config (default: --latent-h)");
    app.add_option("--real-latent-w", real_lw, "latent width for the real config (default: --latent-w)");
    app.add_option("--frames", frames_s, "pixel frame counts for the tiny config, comma separated")
        ->capture_default_str();
    app.add_option("--real-frames", real_frames_s, "pixel frame counts for the real config")->capture_default_str();
    app.add_option("--encode-frames", encode_frames, "pixel frames to encode (1+4k; 0 = skip)")->capture_default_str();
    app.add_option("--tiny-dim", tiny_dim, "base width of the tiny config (tinyworld: 16)")->capture_default_str();
    app.add_option("--tiny-res-blocks", tiny_res_blocks, "residual blocks per stage of the tiny config (tinyworld: 1)")
        ->capture_default_str();
    app.add_option("--threads", threads, "intra-op threads (at::set_num_threads)")->capture_default_str();
    CLI11_PARSE(app, argc, argv);
    if (real_lh <= 0)
        real_lh = lh;
    if (real_lw <= 0)
        real_lw = lw;
    at::set_num_threads(threads);
    std::printf("threads %d, start RSS %.1f MiB\n", at::get_num_threads(), rss_mib());

    try {
        if (config == "tiny" || config == "both") {
            reel::WanVaeConfig c;
            c.dim = tiny_dim;
            c.num_res_blocks = tiny_res_blocks;
            reel::WanVae vae(reel::wan_vae_random_weights(c, true, 1), c, c10::kCPU, at::kFloat);
            bench_config(tiny_dim == 4 && tiny_res_blocks == 2 ? "tiny (golden config)" : "tiny config", vae, lh, lw,
                         parse_list(frames_s), encode_frames);
        }
        if (config == "real" || config == "both") {
            reel::TensorMap w;
            reel::WanVaeConfig c;
            if (!weights.empty()) {
                w = reel::load_checkpoint(weights);
                c = reel::detect_wan_vae_config(w);
            } else {
                w = reel::wan_vae_random_weights(c, true, 1);
            }
            reel::WanVae vae(w, c, c10::kCPU, at::kFloat);
            w.clear();
            bench_config(weights.empty() ? "real config, random weights" : weights, vae, real_lh, real_lw,
                         parse_list(real_frames_s), encode_frames);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_vae: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
