#include "src/cli/common_options.h"

#include <CLI/CLI.hpp>

#include <sstream>
#include <stdexcept>

#include "diffusion/sampler_names.h"
#include "src/engine/negative_prompt.h"

namespace reel {

LoadOptions ModelOptions::load_options() const {
    LoadOptions l;
    l.device = device;
    l.dtype = dtype;
    l.ema = !no_ema;
    l.heads = heads;
    l.threads = threads;
    return l;
}

ProgressMode OutputOptions::mode() const {
    if (json)
        return ProgressMode::Json;
    if (quiet)
        return ProgressMode::Quiet;
    return ProgressMode::Auto;
}

void add_model_options(CLI::App* sub, ModelOptions& o) {
    sub->add_option("-m,--model", o.model,
                    "model folder (reel.json, or the Wan2.1 / Self-Forcing layout) or the name of a shipped model")
        ->capture_default_str();
    sub->add_option("--dit", o.dit, "DiT weights to use instead of the folder's (e.g. self_forcing_dmd.pt)");
    sub->add_flag("--no-ema", o.no_ema, "Self-Forcing checkpoints: use 'generator' instead of 'generator_ema'");
    sub->add_flag(
        "--ema", [&o](int64_t) { o.no_ema = false; }, "use 'generator_ema' when present (default)");
    sub->add_option("--device", o.device, "cpu, cuda or cuda:N")->capture_default_str();
    sub->add_option("--dtype", o.dtype, "auto (f32 on CPU, bf16 on CUDA), f32, bf16, f16")->capture_default_str();
    sub->add_option("--threads", o.threads, "CPU threads for LibTorch (default: all cores)")
        ->check(CLI::NonNegativeNumber);
    sub->add_option("--heads", o.heads, "DiT attention heads when no config says (default: head_dim 128)")
        ->check(CLI::NonNegativeNumber);
}

void add_generation_options(CLI::App* sub, GenerateSettings& s, std::string& steps) {
    sub->add_option("-p,--prompt", s.prompt, "text prompt")->required();
    auto* n = sub->add_option("-n,--frames", s.frames, "pixel frames (rounded up to whole chunks; default 81)")
                  ->check(CLI::PositiveNumber);
    sub->add_option("--seconds", s.seconds, "length in seconds instead of --frames")
        ->check(CLI::PositiveNumber)
        ->excludes(n);
    sub->add_option("--seed", s.seed, "random seed (same seed, same video)")->capture_default_str();
    sub->add_option("--steps", steps,
                    "denoising timesteps per chunk, comma-separated (e.g. 1000,750,500,250); default: the model's "
                    "recommended, else 1000,750,500,250");
    sub->add_option("--sampler", s.sampler,
                    "how a chunk goes from one timestep to the next: renoise (x0 re-noised with fresh noise, "
                    "Self-Forcing's few-step sampler) or euler (the flow ODE's Euler step, for models trained by "
                    "plain flow matching); default: the model's recommended, else renoise")
        ->check(CLI::IsMember(rollout_sampler_names()));
    sub->add_option("--shift", s.shift, "timestep shift of the flow-matching schedule")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    sub->add_option("--guidance,--cfg", s.guidance,
                    "classifier-free guidance scale (1: off; the model's unconditional branch is the empty prompt, "
                    "and each step runs the DiT on a doubled batch); default: the model's recommended, else 1")
        ->check(CLI::Range(0.0, 100.0));
    sub->add_option_function<std::string>(
           "--negative-prompt",
           [&s](const std::string& v) {
               s.negative_prompt = v;
               s.negative_prompt_set = true;
           },
           "the guidance's negative prompt: text, or swap:word=other[,word=other...] for the prompt itself with "
           "those words swapped (e.g. swap:square=circle: guidance then pushes on shape alone); default: the "
           "model's recommended, else the empty prompt")
        ->check(negative_prompt_problem);
    sub->add_option("--negative-guidance", s.negative_guidance,
                    "scale of the negative prompt's own guidance branch, flow += S * (cond - negative), beside the "
                    "empty prompt's (a third DiT branch per step); 0: the negative prompt replaces the empty one in "
                    "--guidance; default: the model's recommended, else 0")
        ->check(CLI::Range(0.0, 100.0));
    sub->add_option("--context-noise", s.context_noise,
                    "timestep (0-999) at which each finished chunk is re-noised before the pass that writes its K/V "
                    "to the cache, for models trained on noised context (their errors weigh less as context); "
                    "default: the model's recommended, else 0 (clean)")
        ->check(CLI::Range(0.0, 999.0));
    sub->add_flag("!--no-warp", s.warp, "use the step list as given instead of Self-Forcing's warped timesteps");
    sub->add_option("--chunk", s.chunk, "latent frames per chunk")->capture_default_str()->check(CLI::PositiveNumber);
    sub->add_option("--fps", s.fps, "frames per second of the video (default: the model's)")
        ->check(CLI::PositiveNumber);
    sub->add_option("--width", s.width, "video width in pixels, a multiple of 16 (default: the model's)")
        ->check(CLI::PositiveNumber);
    sub->add_option("--height", s.height, "video height in pixels, a multiple of 16 (default: the model's)")
        ->check(CLI::PositiveNumber);
    sub->add_option("--crf", s.crf, "H.264 quality, 0 (lossless) to 51")
        ->capture_default_str()
        ->check(CLI::Range(0, 51));
    sub->add_option("--cache", s.cache,
                    "KV cache policy: full, or window:sink=S,recent=R[,rope=relative|absolute] (latent frames; "
                    "recent includes the chunk being made; rope=relative by default keeps positions inside the "
                    "window); default: the model's recommended policy (reel.json), else full");
    sub->add_option("--merge", s.merge,
                    "merge near-duplicate cache entries: none, tempcache[:tau=0.95,radius=0] (keys of consecutive "
                    "frames with cosine >= tau share one entry with a +log(count) logit bias) or flowcache[:keep=0.1] "
                    "(old low-importance frames collapse to one mean entry; window caches, without --kv-quant)");
    sub->add_option("--kv-quant", s.kv_quant,
                    "quantized cache storage: none, int8, int4, int4-kivi (keys per channel, values per token, "
                    "recent frames in full precision) or int4-hadamard (block Hadamard rotation, then token-wise "
                    "INT4)");
    sub->add_option("--cache-budget", s.cache_budget,
                    "cache capacity per run: bytes (256M, 1G) or latent frames (21f); the store is allocated once "
                    "at this size and evicts the oldest entries when full; default: sized from the window, "
                    "unbounded for full");
    sub->add_option("--attn", s.attn,
                    "self-attention: dense (default), or ann[:index=ivf|hnsw|lsh|flat|topk,k=64,nprobe=8,nlist=N,"
                    "local=F,sink=S,m=16,ef=64,bits=512,center=1] (AnnSA: each query attends exactly to the sink "
                    "frames and the chunk plus `local` latent frames before it (default one chunk), and to the k "
                    "older cache entries an approximate nearest-neighbour index retrieves for it; ivf probes nprobe "
                    "of nlist lists, hnsw has m links and search breadth ef, lsh uses `bits`-bit codes, flat and "
                    "topk are exact)");
    sub->add_option("--decode-thread", s.decode_thread,
                    "run the VAE decoder in its own thread, one chunk behind the DiT, each with half the threads: "
                    "auto (on for CPU runs with 2+ threads), on, off")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "on", "off"}));
    sub->add_option("--cross-attn", s.cross_attn,
                    "cross-attention to the prompt: dense (default), or ann[:k=32] (AnnCA: each latent frame "
                    "attends only to the k prompt tokens that score highest against its mean query; the prompt's zero "
                    "padding counts as one token with a +log(count) bias, exactly)");
}

void add_output_options(CLI::App* sub, OutputOptions& o) {
    auto* q = sub->add_flag("-q,--quiet", o.quiet, "no progress output");
    sub->add_flag("--json", o.json, "progress as JSON lines on stderr, for scripts")->excludes(q);
}

std::vector<double> parse_step_list(const std::string& s) {
    std::vector<double> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        size_t used = 0;
        double v = 0;
        try {
            v = std::stod(item, &used);
        } catch (...) {
            used = 0;
        }
        if (used == 0 || item.find_first_not_of(" \t", used) != std::string::npos || v < 0 || v > 1000)
            throw std::runtime_error("--steps: '" + item + "' is not a timestep in [0, 1000] (e.g. 1000,750,500,250)");
        out.push_back(v);
    }
    if (out.empty())
        throw std::runtime_error("--steps is empty (e.g. 1000,750,500,250)");
    for (size_t i = 1; i < out.size(); ++i)
        if (out[i] >= out[i - 1])
            throw std::runtime_error("--steps must decrease (got " + s + ")");
    return out;
}

}  // namespace reel
