// Self-Forcing inference: the video is generated chunk by chunk (F latent frames each). Per chunk: denoise with
// the few-step list (x0 from flow, then re-noise between steps: with fresh noise, as Self-Forcing's distilled
// generators expect, or with the noise the model inferred, the flow ODE's Euler step, which a model trained by
// plain flow matching needs to keep detail; see RolloutSampler), then one t=0 pass over the final x0
// that writes the clean chunk's K/V into the cache, and advance. Chunks come out one at a time so a caller can
// stream them to a VAE decoder.
#pragma once
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cache/kv_cache.h"
#include "diffusion/sampler_names.h"
#include "diffusion/scheduler.h"
#include "diffusion/wan_dit.h"

namespace reel {

// How a chunk goes from one timestep to the next. kRenoise (Self-Forcing): x0 re-noised with fresh Gaussian noise.
// Right for a few-step distilled generator, whose x0 is a sample; for a flow-matching model x0 is the posterior
// mean, and fresh noise throws away what the model had decided, so the chunk ends as the mean of many videos (a
// blur). kEuler: x0 re-noised with the noise the model inferred, (x - x0) / sigma + x0, which is the Euler step of
// the flow ODE (DDIM): the chunk stays one sample all the way down.
enum class RolloutSampler { kRenoise, kEuler };
// "renoise" | "euler" (rollout_sampler_names()); throws on anything else, naming the choices.
RolloutSampler parse_rollout_sampler(const std::string& name);

struct RolloutConfig {
    int chunk_frames = 3;
    std::vector<double> steps{1000, 750, 500, 250};
    double shift = 5.0;
    bool warp = true;  // Self-Forcing's warp_denoising_step
    RolloutSampler sampler = RolloutSampler::kRenoise;
    double context_noise = 0.0;  // timestep of the cache pass (x0 re-noised to it when > 0)
    int64_t batch = 1;
    // Classifier-free guidance: flow = uncond + guidance * (cond - uncond). At 1 the model runs once per step;
    // otherwise it runs on a doubled batch (conditional rows, then unconditional), and the context must hold 2B rows.
    double guidance = 1.0;
    // Negative-prompt guidance on top: flow += negative_guidance * (cond - negative). When > 0 the model runs on a
    // batch with one more set of B rows, the negative prompt's, after the others: the context holds cond, [uncond,]
    // negative. Unlike a negative prompt in place of the empty one, it steers away from what the negative prompt
    // says without giving up the guidance towards the prompt.
    double negative_guidance = 0.0;
    int64_t latent_h = 60, latent_w = 104, channels = 16;  // 480x832 video
    uint64_t seed = 0;
};

struct ChunkTiming {
    double denoise_ms = 0;     // all denoising calls of the chunk, with the scheduler math
    double cache_pass_ms = 0;  // the t=context_noise pass that writes the clean K/V
};

// Where fresh Gaussian noise is needed: the chunk's initial noise (step -1), the re-noise after denoising step
// `step`, or the context noise of the cache pass (step = number of steps).
struct NoiseRequest {
    enum Kind { kInitial, kRenoise, kContext } kind;
    int64_t chunk;
    int step;
    std::vector<int64_t> shape;  // [B, F, C, H, W]
};
// Returns a tensor of `shape` (any device/dtype); replaces the seeded generator (tests inject golden noise).
using NoiseHook = std::function<at::Tensor(const NoiseRequest&)>;

// One model call, for tests and tracing: input [B,F,C,H,W], timestep [B,F], flow and x0 [B,F,C,H,W].
struct CallRecord {
    int64_t call, chunk;
    int step;  // -1 for the cache pass
    at::Tensor input, timestep, flow, x0;
};
using CallObserver = std::function<void(const CallRecord&)>;

class CausalRollout {
  public:
    CausalRollout(WanDit& dit, KVCache& cache, RolloutConfig cfg);

    // ctx: [B, <= text_len, text_dim] text encoder output ([2B, ...] with guidance: conditional rows first, then the
    // empty prompt's; then the negative prompt's with negative_guidance); its cross-attention K/V is computed once.
    void set_context(const at::Tensor& ctx);
    void set_noise_hook(NoiseHook hook) { noise_hook_ = std::move(hook); }
    void set_call_observer(CallObserver obs) { observer_ = std::move(obs); }

    // Generates the next chunk; returns its clean latents [B, F, C, H, W] (pipeline layout, model dtype).
    at::Tensor next_chunk();
    // Appends a given clean chunk x0 [B, F, C, H, W] (e.g. an existing video's latents, to continue it) as if it had
    // been generated: only its cache pass runs.
    void push_chunk(const at::Tensor& x0);
    ChunkTiming last_timing() const { return timing_; }
    int64_t frames_done() const { return chunks_done_ * cfg_.chunk_frames; }
    int64_t chunks_done() const { return chunks_done_; }

    // Starts a new video at frame 0 (clears the cache, reseeds); the context stays.
    void reset(uint64_t seed);

    const RolloutConfig& config() const { return cfg_; }
    // The timesteps the model sees, after warping: [1000, 937.5, 833.33, 625] by default.
    const std::vector<float>& timesteps() const { return steps_; }
    const FlowMatchScheduler& scheduler() const { return sched_; }

  private:
    at::Tensor noise(NoiseRequest::Kind kind, int step);
    at::Tensor call(const at::Tensor& x, float t, int step, at::Tensor* flow_out = nullptr);
    void write_chunk(const at::Tensor& x0);  // the cache pass of a finished chunk, then advance
    bool guided() const { return cfg_.guidance != 1.0; }
    bool negative() const { return cfg_.negative_guidance > 0.0; }
    int64_t branches() const { return 1 + (guided() ? 1 : 0) + (negative() ? 1 : 0); }

    WanDit& dit_;
    KVCache& cache_;
    RolloutConfig cfg_;
    FlowMatchScheduler sched_;
    std::vector<float> steps_;
    at::Generator gen_;
    NoiseHook noise_hook_;
    CallObserver observer_;
    ChunkTiming timing_;
    int64_t chunks_done_ = 0;
    int64_t calls_done_ = 0;
};

}  // namespace reel
