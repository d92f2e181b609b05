#include "diffusion/rollout.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <sstream>
#include <stdexcept>

namespace reel {

namespace {
// Waits for an asynchronous device (CUDA) so a timing covers the work, not just its launch; free on the CPU.
void sync(const at::Tensor& t) {
    if (!t.device().is_cpu())
        t.sum().item<double>();
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

const std::vector<std::string>& rollout_sampler_names() {
    static const std::vector<std::string> names{"renoise", "euler"};
    return names;
}

RolloutSampler parse_rollout_sampler(const std::string& name) {
    if (name == "renoise")
        return RolloutSampler::kRenoise;
    if (name == "euler")
        return RolloutSampler::kEuler;
    std::string choices;
    for (const std::string& n : rollout_sampler_names())
        choices += (choices.empty() ? "" : ", ") + n;
    throw std::runtime_error("sampler '" + name + "' is not one of: " + choices);
}

CausalRollout::CausalRollout(WanDit& dit, KVCache& cache, RolloutConfig cfg)
    : dit_(dit),
      cache_(cache),
      cfg_(std::move(cfg)),
      sched_(cfg_.shift),
      gen_(at::make_generator<at::CPUGeneratorImpl>(cfg_.seed)) {
    if (cfg_.chunk_frames <= 0 || cfg_.steps.empty() || cfg_.batch <= 0)
        throw std::runtime_error("rollout: chunk_frames, batch and the step list must be non-empty");
    if (cfg_.channels != dit_.config().in_dim)
        throw std::runtime_error("rollout: latent channels " + std::to_string(cfg_.channels) +
                                 " differ from the model's in_dim " + std::to_string(dit_.config().in_dim));
    if (cache_.num_layers() != dit_.config().num_layers)
        throw std::runtime_error("rollout: cache has " + std::to_string(cache_.num_layers()) + " layers, model " +
                                 std::to_string(dit_.config().num_layers));
    if (cfg_.warp) {
        steps_ = sched_.warp_steps(cfg_.steps);
    } else {
        for (double s : cfg_.steps)
            steps_.push_back(static_cast<float>(s));
    }
}

void CausalRollout::set_context(const at::Tensor& ctx) {
    const int64_t rows = branches() * cfg_.batch;
    if (ctx.size(0) != rows)
        throw std::runtime_error("rollout: context has " + std::to_string(ctx.size(0)) + " rows, expected " +
                                 std::to_string(rows) + " (conditional" + (guided() ? " + unconditional" : "") +
                                 (negative() ? " + negative" : "") + ")");
    dit_.set_context(ctx);
}

void CausalRollout::reset(uint64_t seed) {
    cache_.reset();
    gen_ = at::make_generator<at::CPUGeneratorImpl>(seed);
    cfg_.seed = seed;
    chunks_done_ = 0;
    calls_done_ = 0;
}

at::Tensor CausalRollout::noise(NoiseRequest::Kind kind, int step) {
    NoiseRequest req{
        kind, chunks_done_, step, {cfg_.batch, cfg_.chunk_frames, cfg_.channels, cfg_.latent_h, cfg_.latent_w}};
    at::Tensor n;
    if (noise_hook_) {
        n = noise_hook_(req);
        if (n.sizes() != at::IntArrayRef(req.shape))
            throw std::runtime_error("rollout: noise hook returned a wrong shape");
    } else {
        // Drawn on the CPU so a seed gives the same video on every device.
        n = at::randn(req.shape, gen_, at::TensorOptions().dtype(at::kFloat));
    }
    return n.to(dit_.device(), dit_.dtype());
}

at::Tensor CausalRollout::call(const at::Tensor& x, float t, int step, at::Tensor* flow_out) {
    // x: [B, F, C, H, W] -> flow [B, F, C, H, W]; returns x0
    at::Tensor ts = at::full({cfg_.batch, cfg_.chunk_frames}, t, at::TensorOptions().dtype(at::kFloat));
    at::Tensor flow;
    if (branches() > 1) {
        // One call on [x; x(; x)] keeps every branch's K/V in the same cache, row for row.
        const int64_t B = cfg_.batch, n = branches();
        std::vector<at::Tensor> xs(size_t(n), x), tss(size_t(n), ts);
        at::Tensor all = dit_.forward(at::cat(xs, 0), at::cat(tss, 0), chunks_done_ * cfg_.chunk_frames,
                                      cache_);  // [nB, F, C, H, W]
        at::Tensor cond = all.narrow(0, 0, B);
        flow = guided() ? all.narrow(0, B, B) + (cond - all.narrow(0, B, B)) * cfg_.guidance : cond;
        if (negative())
            flow = flow + (cond - all.narrow(0, (n - 1) * B, B)) * cfg_.negative_guidance;
    } else {
        flow = dit_.forward(x, ts, chunks_done_ * cfg_.chunk_frames, cache_);
    }
    at::Tensor x0 = sched_.flow_to_x0(flow, x, ts);
    if (observer_)
        observer_(CallRecord{calls_done_, chunks_done_, step, x, ts, flow, x0});
    ++calls_done_;
    if (flow_out)
        *flow_out = flow;
    return x0;
}

at::Tensor CausalRollout::next_chunk() {
    if (!dit_.has_context())
        throw std::runtime_error("rollout: set_context before next_chunk");
    const int n_steps = static_cast<int>(steps_.size());
    const auto t0 = std::chrono::steady_clock::now();
    at::Tensor x = noise(NoiseRequest::kInitial, -1);
    at::Tensor x0, flow;
    const bool euler = cfg_.sampler == RolloutSampler::kEuler;
    for (int i = 0; i < n_steps; ++i) {
        x0 = call(x, steps_[i], i, euler ? &flow : nullptr);
        if (i + 1 < n_steps) {
            at::Tensor tn =
                at::full({cfg_.batch, cfg_.chunk_frames}, steps_[i + 1], at::TensorOptions().dtype(at::kFloat));
            if (euler) {
                // The noise the model sees in x: flow = noise - x0 (guided flow included).
                x = sched_.add_noise(x0, x0 + flow, tn);
            } else {
                // Fresh noise at the next level, not the chunk's initial noise.
                x = sched_.add_noise(x0, noise(NoiseRequest::kRenoise, i), tn);
            }
        }
    }
    sync(x0);
    timing_.denoise_ms = ms_since(t0);
    write_chunk(x0);
    return x0;
}

void CausalRollout::push_chunk(const at::Tensor& x0) {
    if (!dit_.has_context())
        throw std::runtime_error("rollout: set_context before push_chunk");
    const std::vector<int64_t> want{cfg_.batch, cfg_.chunk_frames, cfg_.channels, cfg_.latent_h, cfg_.latent_w};
    if (x0.sizes().vec() != want) {
        std::ostringstream msg;
        msg << "rollout: push_chunk wants latents of shape [B, F, C, H, W] = " << c10::IntArrayRef(want) << ", got "
            << x0.sizes();
        throw std::runtime_error(msg.str());
    }
    timing_.denoise_ms = 0;
    write_chunk(x0.to(dit_.device(), dit_.dtype()));
}

void CausalRollout::write_chunk(const at::Tensor& x0) {
    const int n_steps = static_cast<int>(steps_.size());
    // Cache pass: write the K/V of the clean chunk (outputs discarded).
    const auto t1 = std::chrono::steady_clock::now();
    at::Tensor xc = x0;
    const float tc = static_cast<float>(cfg_.context_noise);
    if (tc > 0) {
        at::Tensor tn = at::full({cfg_.batch, cfg_.chunk_frames}, tc, at::TensorOptions().dtype(at::kFloat));
        xc = sched_.add_noise(x0, noise(NoiseRequest::kContext, n_steps), tn);
    }
    sync(call(xc, tc, -1));
    timing_.cache_pass_ms = ms_since(t1);
    ++chunks_done_;
}

}  // namespace reel
