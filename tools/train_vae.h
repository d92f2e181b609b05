// A differentiable twin of the engine's Wan VAE (diffusion/wan_vae.*) for training: the same architecture and
// tensor names, run over a whole clip at once without in-place ops. The engine's modules cannot be trained
// directly: RmsNormC::forward clamps the norm in place (clamp_min_) and the residual blocks use silu_ / add_, which
// autograd rejects ("modified by an inplace operation"). The check stage verifies that this twin's encode and
// decode equal WanVae's on the same weights, so exported tensors load into the engine unchanged.
#pragma once
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "diffusion/wan_vae.h"
#include "weights/tensor_map.h"

namespace reel {
namespace train {

class TrainVae {
  public:
    TrainVae(const TensorMap& w, const WanVaeConfig& cfg) : w_(w), cfg_(cfg) {}

    // video [B, 3, 1+4k, H, W] in [-1, 1] -> raw mu [B, z, 1+k, H/8, W/8] (no latent normalization)
    at::Tensor encode(const at::Tensor& video) const {
        const int n = int(cfg_.dim_mult.size());
        const std::vector<int64_t> dims = cfg_.encoder_dims();
        at::Tensor x = causal_conv(video, "encoder.conv1");
        int idx = 0;
        for (int i = 0; i < n; ++i) {
            for (int r = 0; r < cfg_.num_res_blocks; ++r)
                x = res(x, "encoder.downsamples." + std::to_string(idx++));
            if (i != n - 1)
                x = downsample(x, "encoder.downsamples." + std::to_string(idx++), cfg_.temporal_downsample[size_t(i)]);
        }
        x = res(x, "encoder.middle.0");
        x = attn(x, "encoder.middle.1");
        x = res(x, "encoder.middle.2");
        x = causal_conv(at::silu(norm(x, "encoder.head.0")), "encoder.head.2");  // [B, 2z, T', h, w]
        x = conv1x1(x, "conv1");
        return x.narrow(1, 0, cfg_.z_dim);
    }

    // raw latents [B, z, T, h, w] -> pixels [B, 3, 1+4(T-1), 8h, 8w] (a fresh sequence, as WanVae::decode)
    at::Tensor decode(const at::Tensor& z) const {
        const int n = int(cfg_.dim_mult.size());
        at::Tensor x = causal_conv(conv1x1(z, "conv2"), "decoder.conv1");
        x = res(x, "decoder.middle.0");
        x = attn(x, "decoder.middle.1");
        x = res(x, "decoder.middle.2");
        int idx = 0;
        for (int i = 0; i < n; ++i) {
            for (int r = 0; r < cfg_.num_res_blocks + 1; ++r)
                x = res(x, "decoder.upsamples." + std::to_string(idx++));
            if (i != n - 1) {
                const bool t = cfg_.temporal_downsample[cfg_.temporal_downsample.size() - 1 - size_t(i)];
                x = upsample(x, "decoder.upsamples." + std::to_string(idx++), t);
            }
        }
        return causal_conv(at::silu(norm(x, "decoder.head.0")), "decoder.head.2");
    }

  private:
    const at::Tensor& t(const std::string& name) const {
        auto it = w_.find(name);
        if (it == w_.end())
            throw std::runtime_error("TrainVae: tensor " + name + " missing");
        return it->second;
    }
    bool has(const std::string& name) const { return w_.count(name) != 0; }

    // F.normalize over channels * sqrt(C) * gamma. x: [B, C, T, H, W]
    at::Tensor norm(const at::Tensor& x, const std::string& name) const {
        const int64_t c = x.size(1);
        at::Tensor g = t(name + ".gamma").reshape({1, c, 1, 1, 1}) * std::sqrt(double(c));
        at::Tensor n = at::linalg_vector_norm(x, 2, at::IntArrayRef{1}, true).clamp_min(1e-12);
        return x / n * g;
    }
    // Conv3d without time padding as one conv2d over time windows folded into the channels: LibTorch 1.13's CPU
    // conv3d (and its backward) is several times slower than conv2d at these sizes.
    // x: [B, C, Tp, H, W], w: [O, C, kt, kh, kw] -> [B, O, (Tp - kt) / st + 1, H', W']
    static at::Tensor conv3d_fold(const at::Tensor& x,
                                  const at::Tensor& w,
                                  const at::Tensor& b,
                                  int64_t st,
                                  int64_t s_hw,
                                  int64_t p_hw) {
        const int64_t B = x.size(0), C = x.size(1), kt = w.size(2), O = w.size(0);
        at::Tensor win = x.unfold(2, kt, st);  // [B, C, T', H, W, kt]
        const int64_t T = win.size(2);
        win = win.permute({0, 2, 1, 5, 3, 4}).reshape({B * T, C * kt, x.size(3), x.size(4)});
        at::Tensor y = at::conv2d(win, w.reshape({O, C * kt, w.size(3), w.size(4)}), b, s_hw, p_hw);
        return y.view({B, T, O, y.size(2), y.size(3)}).permute({0, 2, 1, 3, 4});
    }
    // Causal conv: 2 zero frames in front (kt = 3), spatial padding k/2. x: [B, in, T, H, W] -> [B, out, T, H, W]
    at::Tensor causal_conv(const at::Tensor& x, const std::string& name) const {
        const at::Tensor& w = t(name + ".weight");
        const int64_t kt = w.size(2), p = w.size(3) / 2;
        at::Tensor xin = kt > 1 ? at::constant_pad_nd(x, {0, 0, 0, 0, kt - 1, 0}) : x;
        return conv3d_fold(xin, w, t(name + ".bias"), 1, 1, p);
    }
    at::Tensor conv1x1(const at::Tensor& x, const std::string& name) const {
        return conv3d_fold(x, t(name + ".weight"), t(name + ".bias"), 1, 1, 0);
    }
    // Per-frame 2-D conv with a [out, in, k, k] weight. x: [B, C, T, H, W]
    at::Tensor conv2d_frames(const at::Tensor& x, const std::string& name, int64_t stride, int64_t pad) const {
        return conv3d_fold(x, t(name + ".weight").unsqueeze(2), t(name + ".bias"), 1, stride, pad);
    }
    at::Tensor res(const at::Tensor& x, const std::string& name) const {
        at::Tensor r = causal_conv(at::silu(norm(x, name + ".residual.0")), name + ".residual.2");
        r = causal_conv(at::silu(norm(r, name + ".residual.3")), name + ".residual.6");
        return r + (has(name + ".shortcut.weight") ? conv1x1(x, name + ".shortcut") : x);
    }
    // Single-head attention over each frame's pixels. x: [B, C, T, H, W]
    at::Tensor attn(const at::Tensor& x, const std::string& name) const {
        const int64_t B = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
        at::Tensor qkv = conv2d_frames(norm(x, name + ".norm"), name + ".to_qkv", 1, 0);
        qkv = qkv.permute({0, 2, 3, 4, 1}).reshape({B * T, H * W, 3 * C});
        at::Tensor q = qkv.narrow(2, 0, C), k = qkv.narrow(2, C, C), v = qkv.narrow(2, 2 * C, C);
        at::Tensor a = at::softmax(at::bmm(q, k.transpose(1, 2)) / std::sqrt(double(C)), -1);
        at::Tensor o = at::bmm(a, v).view({B, T, H, W, C}).permute({0, 4, 1, 2, 3});
        return conv2d_frames(o, name + ".proj", 1, 0) + x;
    }
    // x: [B, C, T, H, W] -> [B, C/2, T (or 1 + 2(T-1)), 2H, 2W]
    at::Tensor upsample(const at::Tensor& x_in, const std::string& name, bool temporal) const {
        at::Tensor x = x_in;
        if (temporal) {
            // frame 0 alone, every later frame becomes two (time_conv's 2C channels, first half first)
            const int64_t B = x.size(0), C = x.size(1), T = x.size(2) - 1, H = x.size(3), W = x.size(4);
            if (T > 0) {
                at::Tensor tc = causal_conv(x.narrow(2, 1, T), name + ".time_conv");  // [B, 2C, T, H, W]
                tc = tc.view({B, 2, C, T, H, W}).permute({0, 2, 3, 1, 4, 5}).reshape({B, C, 2 * T, H, W});
                x = at::cat({x.narrow(2, 0, 1), tc}, 2);
            }
        }
        at::Tensor up = at::upsample_nearest3d(x, {x.size(2), 2 * x.size(3), 2 * x.size(4)});
        return conv2d_frames(up, name + ".resample.1", 1, 1);
    }
    // x: [B, C, T, H, W] -> [B, C, T (or 1 + (T-1)/2), H/2, W/2]
    at::Tensor downsample(const at::Tensor& x, const std::string& name, bool temporal) const {
        at::Tensor y = conv2d_frames(at::constant_pad_nd(x, {0, 1, 0, 1}), name + ".resample.1", 2, 0);
        if (!temporal || y.size(2) < 3)
            return temporal ? y.narrow(2, 0, 1) : y;
        // frame 0 passes; output j >= 1 = time_conv over frames (2j-2, 2j-1, 2j)
        at::Tensor tc = conv3d_fold(y, t(name + ".time_conv.weight"), t(name + ".time_conv.bias"), 2, 1, 0);
        return at::cat({y.narrow(2, 0, 1), tc}, 2);
    }

    const TensorMap& w_;
    WanVaeConfig cfg_;
};

}  // namespace train
}  // namespace reel
