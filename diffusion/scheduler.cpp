#include "diffusion/scheduler.h"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace reel {

FlowMatchScheduler::FlowMatchScheduler(double shift, int64_t num_train_timesteps) : shift_(shift) {
    // torch.linspace(1, 0, N+1)[:-1] in float32, then the shift formula in float32 tensor arithmetic: using the
    // same ATen ops keeps the tables bit-identical to the reference.
    at::Tensor lin = at::linspace(1.0, 0.0, num_train_timesteps + 1, at::kFloat).slice(0, 0, num_train_timesteps);
    at::Tensor sig = (lin * shift) / ((lin * (shift - 1.0)) + 1.0);
    at::Tensor ts = sig * 1000.0;
    sig = sig.contiguous();
    ts = ts.contiguous();
    sigmas_.assign(sig.data_ptr<float>(), sig.data_ptr<float>() + num_train_timesteps);
    timesteps_.assign(ts.data_ptr<float>(), ts.data_ptr<float>() + num_train_timesteps);
}

at::Tensor FlowMatchScheduler::sigmas_tensor() const {
    return at::tensor(sigmas_, at::kFloat);
}

at::Tensor FlowMatchScheduler::timesteps_tensor() const {
    return at::tensor(timesteps_, at::kFloat);
}

int64_t FlowMatchScheduler::index_of(float t) const {
    int64_t best = 0;
    float best_d = std::fabs(timesteps_[0] - t);
    for (size_t i = 1; i < timesteps_.size(); ++i) {
        float d = std::fabs(timesteps_[i] - t);
        if (d < best_d) {  // strict: first index wins ties, like argmin
            best_d = d;
            best = static_cast<int64_t>(i);
        }
    }
    return best;
}

std::vector<float> FlowMatchScheduler::warp_steps(const std::vector<double>& step_list) const {
    const int64_t n = static_cast<int64_t>(timesteps_.size());
    std::vector<float> out;
    for (double s : step_list) {
        if (s < 0 || s > n || s != std::floor(s))
            throw std::runtime_error("scheduler: warped step list entries must be integers in [0, " +
                                     std::to_string(n) + "], got " + std::to_string(s));
        int64_t idx = n - static_cast<int64_t>(s);
        out.push_back(idx == n ? 0.0f : timesteps_[idx]);  // concat(timesteps, [0])
    }
    return out;
}

at::Tensor FlowMatchScheduler::sigma_for(const at::Tensor& t, const at::Tensor& x, at::ScalarType dtype) const {
    at::Tensor tc = t.to(at::kCPU, at::kFloat).contiguous();
    std::vector<float> s(tc.numel());
    const float* tp = tc.data_ptr<float>();
    for (int64_t i = 0; i < tc.numel(); ++i)
        s[i] = sigma_at(tp[i]);
    std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
    if (x.dim() < t.dim() || x.sizes().slice(0, t.dim()) != t.sizes())
        throw std::runtime_error("scheduler: timestep shape does not match the leading dims of the latents");
    while (static_cast<int64_t>(shape.size()) < x.dim())
        shape.push_back(1);
    return at::tensor(s, at::kFloat).view(shape).to(x.device(), dtype);
}

at::Tensor FlowMatchScheduler::flow_to_x0(const at::Tensor& flow, const at::Tensor& xt, const at::Tensor& t) const {
    at::Tensor sigma = sigma_for(t, flow, at::kDouble);
    return (xt.to(at::kDouble) - sigma * flow.to(at::kDouble)).to(flow.scalar_type());
}

at::Tensor FlowMatchScheduler::x0_to_flow(const at::Tensor& x0, const at::Tensor& xt, const at::Tensor& t) const {
    at::Tensor sigma = sigma_for(t, x0, at::kDouble);
    return ((xt.to(at::kDouble) - x0.to(at::kDouble)) / sigma).to(x0.scalar_type());
}

at::Tensor FlowMatchScheduler::add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t) const {
    at::Tensor sigma = sigma_for(t, x0, at::kFloat);
    return ((1.0 - sigma) * x0.to(at::kFloat) + sigma * noise.to(at::kFloat)).to(x0.scalar_type());
}

}  // namespace reel
