// The generation pipeline behind `reel generate` and `reel profile`: prompt -> umT5 -> causal DiT rollout chunk by
// chunk against a KV cache -> streaming VAE decode -> video writers, with a JSON run record. Nothing grows with
// the video's length except what the KV cache policy allows: chunks are decoded and written as they are made.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "src/engine/model_files.h"
#include "src/engine/progress.h"

namespace reel {

struct LoadOptions {
    std::string device = "cpu";  // "cpu", "cuda", "cuda:N"
    std::string dtype = "auto";  // auto (f32 on CPU, bf16 on CUDA), f32, bf16, f16
    bool ema = true;             // Self-Forcing checkpoints: generator_ema (else generator)
    int64_t heads = 0;           // DiT heads when neither config.json nor the manifest says (0: head_dim 128)
    int threads = 0;             // LibTorch intra-op threads (0: all cores)
};

struct GenerateSettings {
    std::string prompt;
    int64_t frames = 0;  // pixel frames asked for (rounded up to whole chunks); 0: use seconds or the default
    double seconds = 0;  // alternative to frames
    uint64_t seed = 0;
    std::string output;         // .mp4 / .y4m / "-" (y4m on stdout); "" for none
    std::string frames_dir;     // PNG frames; "" for none
    std::string record_path;    // run record; "" = <output>.json ("-" or no output: none unless given)
    std::vector<double> steps;  // empty: the model's recommended (reel.json), else 1000,750,500,250
    std::string sampler;        // renoise | euler; "": the model's recommended (reel.json), else renoise
    double shift = 5.0;
    double guidance = -1;  // classifier-free guidance scale; < 0: the model's recommended (reel.json), else 1 (off)
    // The guidance's negative prompt: text, or swap:a=b,... (the prompt with words swapped; negative_prompt.h). Unset:
    // the model's recommended (reel.json), else the empty prompt.
    std::string negative_prompt;
    bool negative_prompt_set = false;
    // > 0: the negative prompt gets a branch of its own, flow += S * (cond - negative), and the empty prompt keeps the
    // guidance's; 0: the negative prompt takes the empty prompt's place; < 0: the model's recommended, else 0.
    double negative_guidance = -1;
    double context_noise = -1;  // timestep of the cache pass; < 0: the model's recommended (reel.json), else 0
    bool warp = true;
    int chunk = 3;   // latent frames per chunk
    int fps = 0;     // 0: the model's
    int width = 0;   // 0: the model's
    int height = 0;  // 0: the model's
    int crf = 18;
    std::string cache;         // --cache: "full" or "window:sink=S,recent=R"; "" = the model's recommended, else full
    std::string merge;         // --merge: none | tempcache[:tau=..,radius=..] | flowcache[:keep=..]
    std::string kv_quant;      // --kv-quant: none | int8 | int4 | int4-kivi | int4-hadamard
    std::string cache_budget;  // --cache-budget: 256M, 1G, 21f (latent frames); "" = from the window
    std::string attn;          // --attn: dense | ann:index=ivf,k=64,nprobe=8,... ("" = dense)
    std::string cross_attn;    // --cross-attn: dense | ann:k=32 ("" = dense)
    std::string decode_thread = "auto";  // --decode-thread: auto | on | off (VAE decode overlapping the DiT)
};

// What one run measured, also written as the run record.
struct RunResult {
    nlohmann::json record;
    bool interrupted = false;
    int64_t frames_written = 0;
};

// Called after every chunk (for `reel profile`): the chunk's record row.
using ChunkObserver = std::function<void(const nlohmann::json& row)>;

class Engine {
  public:
    // Loads every part of the model once; a single Engine serves many prompts.
    Engine(const ModelFiles& files, const LoadOptions& opts);
    ~Engine();

    RunResult generate(const GenerateSettings& s, Progress& progress, const ChunkObserver& on_chunk = nullptr);

    const ModelFiles& files() const;
    int default_width() const;
    int default_height() const;
    int default_fps() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Pixel frames produced by `chunks` chunks of `chunk` latent frames: the VAE turns T latent frames into
// 1 + 4(T-1) pixel frames.
int64_t pixel_frames_for_chunks(int64_t chunks, int chunk);
// The fewest chunks giving at least `frames` pixel frames.
int64_t chunks_for_pixel_frames(int64_t frames, int chunk);

c10::Device parse_device(const std::string& s);

// How a run splits its intra-op threads. With `overlap`, the VAE decodes chunk k in a thread of its own while the
// DiT makes chunk k+1; "auto" turns it on for CPU runs with at least two threads.
struct ThreadSplit {
    bool overlap = false;
    int dit_threads = 1;
    int decode_threads = 0;  // 0 without overlap
};
ThreadSplit split_threads(const std::string& mode, const c10::Device& device, int threads);

}  // namespace reel
