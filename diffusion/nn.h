// Small building blocks shared by the DiT, the VAE and the text encoder. Each module is loaded by its
// checkpoint name through a WeightStore, which collects every missing or mis-shaped tensor so that a bad
// checkpoint is reported once, completely, instead of failing on the first name.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <set>
#include <string>
#include <vector>

#include "weights/tensor_map.h"

namespace reel {

class WeightStore {
  public:
    // Tensors are moved to `device` and cast to `dtype` (floating tensors only) as they are taken.
    WeightStore(const TensorMap& tensors, c10::Device device, c10::ScalarType dtype);

    // Returns the tensor `name` with exactly `shape`; records a problem (and returns an undefined tensor)
    // when it is missing or shaped differently.
    at::Tensor take(const std::string& name, const std::vector<int64_t>& shape);
    bool has(const std::string& name) const { return tensors_.count(name) != 0; }

    // Throws std::runtime_error listing every missing/mismatched tensor (expected vs found) and, when
    // `strict`, every checkpoint tensor nothing asked for.
    void finish(const std::string& what, bool strict = true) const;

    c10::Device device() const { return device_; }
    c10::ScalarType dtype() const { return dtype_; }

  private:
    const TensorMap& tensors_;
    c10::Device device_;
    c10::ScalarType dtype_;
    std::set<std::string> used_;
    std::vector<std::string> problems_;
};

// y = x W^T + b; weight [out, in] as in nn.Linear.
struct Linear {
    at::Tensor weight, bias;
    void load(WeightStore& ws, const std::string& name, int64_t in, int64_t out, bool has_bias = true);
    // x: [..., in] -> [..., out]
    at::Tensor forward(const at::Tensor& x) const;
};

// RMSNorm over the last dim, computed in fp32: x * rsqrt(mean(x^2) + eps) * weight.
struct RMSNorm {
    at::Tensor weight;
    double eps = 1e-6;
    void load(WeightStore& ws, const std::string& name, int64_t dim, double eps_ = 1e-6);
    // x: [..., dim]
    at::Tensor forward(const at::Tensor& x) const;
};

// LayerNorm over the last dim; affine when loaded with weights, plain when `load_plain` is used.
struct LayerNorm {
    at::Tensor weight, bias;  // undefined when not affine
    int64_t dim = 0;
    double eps = 1e-6;
    void load(WeightStore& ws, const std::string& name, int64_t dim_, double eps_ = 1e-6);
    void load_plain(int64_t dim_, double eps_ = 1e-6);
    // x: [..., dim]
    at::Tensor forward(const at::Tensor& x) const;
};

// GELU with the tanh approximation (what Wan and umT5 use).
at::Tensor gelu_tanh(const at::Tensor& x);

}  // namespace reel
