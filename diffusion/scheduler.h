// Flow-matching scheduler as Self-Forcing uses it (FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True),
// set_timesteps(1000, training=True)). Tables are float32 like the reference, because the exact float values
// (e.g. 833.3333129882812) are what the model sees as timesteps.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace reel {

class FlowMatchScheduler {
  public:
    explicit FlowMatchScheduler(double shift = 5.0, int64_t num_train_timesteps = 1000);

    double shift() const { return shift_; }
    // [num_train_timesteps] float32, sigmas[0] = 1, decreasing.
    const std::vector<float>& sigmas() const { return sigmas_; }
    // sigmas * 1000, float32.
    const std::vector<float>& timesteps() const { return timesteps_; }
    at::Tensor sigmas_tensor() const;     // [1000] float32 CPU
    at::Tensor timesteps_tensor() const;  // [1000] float32 CPU

    // Index of the nearest timestep, argmin |timesteps[i] - t| in float32, first index on ties.
    int64_t index_of(float t) const;
    float sigma_at(float t) const { return sigmas_[index_of(t)]; }

    // Self-Forcing's warp_denoising_step: steps = concat(timesteps, [0])[1000 - list].
    // [1000, 750, 500, 250] -> [1000, 937.5, 833.33331, 625]. Entries must be integers in [0, 1000].
    std::vector<float> warp_steps(const std::vector<double>& step_list) const;

    // x0 = x_t - sigma(t) * flow in float64, cast back to flow's dtype.
    // flow, xt: [B, F, ...]; t: [B, F] (one timestep per frame) or [B*F].
    at::Tensor flow_to_x0(const at::Tensor& flow, const at::Tensor& xt, const at::Tensor& t) const;
    // flow = (x_t - x0) / sigma(t) in float64 (the inverse; not used at inference).
    at::Tensor x0_to_flow(const at::Tensor& x0, const at::Tensor& xt, const at::Tensor& t) const;
    // x_t = (1 - sigma(t)) * x0 + sigma(t) * noise in float32 (the activation dtype).
    // x0, noise: [N, ...] with t: [N], or [B, F, ...] with t: [B, F].
    at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t) const;

  private:
    // sigma per leading element of t, shaped to broadcast against x ([B, F, 1, 1, ...]).
    at::Tensor sigma_for(const at::Tensor& t, const at::Tensor& x, at::ScalarType dtype) const;

    double shift_;
    std::vector<float> sigmas_, timesteps_;
};

}  // namespace reel
