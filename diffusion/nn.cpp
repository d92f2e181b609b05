#include "diffusion/nn.h"

#include <ATen/ATen.h>

#include <sstream>
#include <stdexcept>

namespace reel {

namespace {
std::string shape_str(at::IntArrayRef s) {
    std::ostringstream os;
    os << "[";
    for (size_t i = 0; i < s.size(); ++i)
        os << (i ? ", " : "") << s[i];
    os << "]";
    return os.str();
}
}  // namespace

WeightStore::WeightStore(const TensorMap& tensors, c10::Device device, c10::ScalarType dtype)
    : tensors_(tensors), device_(device), dtype_(dtype) {}

at::Tensor WeightStore::take(const std::string& name, const std::vector<int64_t>& shape) {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
        problems_.push_back("missing " + name + " " + shape_str(shape));
        return at::Tensor();
    }
    used_.insert(name);
    const at::Tensor& t = it->second;
    if (t.sizes() != at::IntArrayRef(shape)) {
        problems_.push_back("shape of " + name + ": expected " + shape_str(shape) + ", found " + shape_str(t.sizes()));
        return at::Tensor();
    }
    at::ScalarType dt = at::isFloatingType(t.scalar_type()) ? dtype_ : t.scalar_type();
    return t.to(device_, dt).contiguous();
}

void WeightStore::finish(const std::string& what, bool strict) const {
    std::vector<std::string> all = problems_;
    if (strict) {
        for (const auto& kv : tensors_)
            if (!used_.count(kv.first))
                all.push_back("unexpected " + kv.first + " " + shape_str(kv.second.sizes()));
    }
    if (all.empty())
        return;
    std::ostringstream os;
    os << what << ": checkpoint does not match the model (" << all.size() << " problem" << (all.size() > 1 ? "s" : "")
       << ")";
    const size_t show = 40;
    for (size_t i = 0; i < all.size() && i < show; ++i)
        os << "\n  " << all[i];
    if (all.size() > show)
        os << "\n  ... and " << all.size() - show << " more";
    throw std::runtime_error(os.str());
}

void Linear::load(WeightStore& ws, const std::string& name, int64_t in, int64_t out, bool has_bias) {
    weight = ws.take(name + ".weight", {out, in});
    if (has_bias)
        bias = ws.take(name + ".bias", {out});
}

at::Tensor Linear::forward(const at::Tensor& x) const {
    return bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
}

void RMSNorm::load(WeightStore& ws, const std::string& name, int64_t dim, double eps_) {
    weight = ws.take(name + ".weight", {dim});
    eps = eps_;
}

at::Tensor RMSNorm::forward(const at::Tensor& x) const {
    at::Tensor xf = x.to(at::kFloat);
    at::Tensor y = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
    return (y * weight.to(at::kFloat)).to(x.scalar_type());
}

void LayerNorm::load(WeightStore& ws, const std::string& name, int64_t dim_, double eps_) {
    dim = dim_;
    eps = eps_;
    weight = ws.take(name + ".weight", {dim});
    bias = ws.take(name + ".bias", {dim});
}

void LayerNorm::load_plain(int64_t dim_, double eps_) {
    dim = dim_;
    eps = eps_;
}

at::Tensor LayerNorm::forward(const at::Tensor& x) const {
    return at::layer_norm(x, {dim}, weight, bias, eps);
}

at::Tensor gelu_tanh(const at::Tensor& x) {
    return at::gelu(x, "tanh");
}

}  // namespace reel
