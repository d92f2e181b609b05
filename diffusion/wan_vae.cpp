#include "diffusion/wan_vae.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

namespace reel {

// ---- config --------------------------------------------------------------------------------------------------

std::vector<int64_t> WanVaeConfig::decoder_dims() const {
    const int64_t w = decoder_dim();
    std::vector<int64_t> d{w * dim_mult.back()};
    for (auto it = dim_mult.rbegin(); it != dim_mult.rend(); ++it)
        d.push_back(w * *it);
    return d;
}

std::vector<int64_t> WanVaeConfig::encoder_dims() const {
    std::vector<int64_t> d{int64_t(dim)};
    for (int m : dim_mult)
        d.push_back(int64_t(dim) * m);
    return d;
}

void WanVaeConfig::validate() const {
    std::ostringstream err;
    if (dim <= 0 || z_dim <= 0 || num_res_blocks <= 0 || dec_dim < 0)
        err << " dim, z_dim and num_res_blocks must be positive, dec_dim not negative;";
    // The reference halves the input width of decoder stages 1..3 (after each Resample): every stage after the
    // first for 2-4 stages (tinyworld's 4x-spatial VAE has 3), but not a fifth, so more are refused.
    if (dim_mult.size() < 2 || dim_mult.size() > 4)
        err << " dim_mult must have 2 to 4 entries (found " << dim_mult.size() << ");";
    if (temporal_downsample.size() + 1 != dim_mult.size())
        err << " temporal_downsample must have " << dim_mult.size() - 1 << " entries (found "
            << temporal_downsample.size() << ");";
    if (mean.size() != size_t(z_dim) || std_.size() != size_t(z_dim))
        err << " mean/std must have z_dim=" << z_dim << " entries (found " << mean.size() << "/" << std_.size() << ");";
    for (float s : std_)
        if (!(s > 0))
            err << " std entries must be positive;";
    if (!err.str().empty())
        throw std::runtime_error("WanVaeConfig:" + err.str());
}

void to_json(nlohmann::json& j, const WanVaeConfig& c) {
    j = nlohmann::json{{"dim", c.dim},
                       {"z_dim", c.z_dim},
                       {"dim_mult", c.dim_mult},
                       {"num_res_blocks", c.num_res_blocks},
                       {"temporal_downsample", c.temporal_downsample},
                       {"mean", c.mean},
                       {"std", c.std_}};
    if (c.dec_dim > 0 && c.dec_dim != c.dim)
        j["dec_dim"] = c.dec_dim;
}

void from_json(const nlohmann::json& j, WanVaeConfig& c) {
    WanVaeConfig d;  // missing keys keep the defaults
    c.dim = j.value("dim", d.dim);
    c.dec_dim = j.value("dec_dim", 0);
    c.z_dim = j.value("z_dim", d.z_dim);
    c.dim_mult = j.value("dim_mult", d.dim_mult);
    c.num_res_blocks = j.value("num_res_blocks", d.num_res_blocks);
    // The reference spells it "temperal_downsample"; accept both.
    if (j.contains("temporal_downsample"))
        c.temporal_downsample = j.at("temporal_downsample").get<std::vector<bool>>();
    else if (j.contains("temperal_downsample"))
        c.temporal_downsample = j.at("temperal_downsample").get<std::vector<bool>>();
    else
        c.temporal_downsample = d.temporal_downsample;
    c.mean = j.value("mean", d.mean);
    c.std_ = j.value("std", d.std_);
}

namespace {

const at::Tensor& need(const TensorMap& t, const std::string& name) {
    auto it = t.find(name);
    if (it == t.end())
        throw std::runtime_error("detect_wan_vae_config: tensor " + name + " not found");
    return it->second;
}

bool has(const TensorMap& t, const std::string& name) {
    return t.count(name) != 0;
}

}  // namespace

WanVaeConfig detect_wan_vae_config(const TensorMap& t) {
    WanVaeConfig c;
    const at::Tensor& conv1 = need(t, "decoder.conv1.weight");  // [dims0, z, 3, 3, 3]
    const at::Tensor& head = need(t, "decoder.head.2.weight");  // [3, dim, 3, 3, 3]
    if (conv1.dim() != 5 || head.dim() != 5)
        throw std::runtime_error("detect_wan_vae_config: decoder.conv1 / decoder.head.2 are not 5-D conv weights");
    c.z_dim = int(conv1.size(1));
    c.dim = int(head.size(1));

    // decoder.upsamples: groups of residual blocks, each but the last closed by a Resample.
    std::vector<int64_t> stage_out;
    std::vector<bool> temporal_up;
    int blocks_in_stage = 0, first_stage_blocks = -1;
    for (int j = 0;; ++j) {
        std::string p = "decoder.upsamples." + std::to_string(j) + ".";
        if (has(t, p + "residual.6.weight")) {
            ++blocks_in_stage;
            int64_t out = t.at(p + "residual.6.weight").size(0);
            if (blocks_in_stage == 1)
                stage_out.push_back(out);
        } else if (has(t, p + "resample.1.weight")) {
            temporal_up.push_back(has(t, p + "time_conv.weight"));
            if (first_stage_blocks < 0)
                first_stage_blocks = blocks_in_stage;
            blocks_in_stage = 0;
        } else {
            break;
        }
    }
    if (stage_out.empty() || first_stage_blocks < 1)
        throw std::runtime_error("detect_wan_vae_config: no decoder.upsamples.* residual blocks / resamples found");
    c.num_res_blocks = first_stage_blocks - 1;  // the decoder has num_res_blocks + 1 per stage
    c.dim_mult.clear();
    for (auto it = stage_out.rbegin(); it != stage_out.rend(); ++it) {
        if (*it % c.dim != 0)
            throw std::runtime_error("detect_wan_vae_config: decoder stage width " + std::to_string(*it) +
                                     " is not a multiple of dim " + std::to_string(c.dim));
        c.dim_mult.push_back(int(*it / c.dim));
    }
    c.temporal_downsample.assign(temporal_up.rbegin(), temporal_up.rend());
    if (has(t, "encoder.conv1.weight")) {
        const int enc_dim = int(t.at("encoder.conv1.weight").size(0));  // [dim, 3, 3, 3, 3]
        if (enc_dim != c.dim) {
            c.dec_dim = c.dim;
            c.dim = enc_dim;
        }
    }

    if (has(t, "scale.mean") && has(t, "scale.inv_std")) {
        at::Tensor m = t.at("scale.mean").to(at::kFloat).contiguous().cpu();
        at::Tensor s = t.at("scale.inv_std").to(at::kFloat).contiguous().cpu();
        c.mean.assign(m.data_ptr<float>(), m.data_ptr<float>() + m.numel());
        c.std_.clear();
        for (int64_t i = 0; i < s.numel(); ++i)
            c.std_.push_back(1.0f / s.data_ptr<float>()[i]);
    }
    c.validate();
    return c;
}

namespace {

// Mirrors the load functions below, tensor for tensor.
struct RandomWeights {
    TensorMap m;
    at::Generator gen;
    void conv(const std::string& name, int64_t in, int64_t out, int64_t kt, int64_t khw) {
        m[name + ".weight"] =
            at::normal(0.0, 1.0 / std::sqrt(double(in * kt * khw * khw)), {out, in, kt, khw, khw}, gen);
        m[name + ".bias"] = at::normal(0.0, 0.1, {out}, gen);
    }
    void conv2d(const std::string& name, int64_t in, int64_t out, int64_t k) {
        m[name + ".weight"] = at::normal(0.0, 1.0 / std::sqrt(double(in * k * k)), {out, in, k, k}, gen);
        m[name + ".bias"] = at::normal(0.0, 0.1, {out}, gen);
    }
    void norm(const std::string& name, int64_t c, bool images) {
        m[name + ".gamma"] = images ? at::ones({c, 1, 1}) : at::ones({c, 1, 1, 1});
    }
    void res(const std::string& name, int64_t in, int64_t out) {
        norm(name + ".residual.0", in, false);
        conv(name + ".residual.2", in, out, 3, 3);
        norm(name + ".residual.3", out, false);
        conv(name + ".residual.6", out, out, 3, 3);
        if (in != out)
            conv(name + ".shortcut", in, out, 1, 1);
    }
    void attn(const std::string& name, int64_t c) {
        norm(name + ".norm", c, true);
        conv2d(name + ".to_qkv", c, 3 * c, 1);
        conv2d(name + ".proj", c, c, 1);
    }
};

}  // namespace

TensorMap wan_vae_random_weights(const WanVaeConfig& cfg, bool with_encoder, uint64_t seed) {
    cfg.validate();
    RandomWeights r{TensorMap(), at::make_generator<at::CPUGeneratorImpl>(seed)};
    const int n = int(cfg.dim_mult.size());
    const int64_t z = cfg.z_dim;
    r.conv("conv2", z, z, 1, 1);
    const std::vector<int64_t> dd = cfg.decoder_dims();
    r.conv("decoder.conv1", z, dd[0], 3, 3);
    r.res("decoder.middle.0", dd[0], dd[0]);
    r.attn("decoder.middle.1", dd[0]);
    r.res("decoder.middle.2", dd[0], dd[0]);
    int idx = 0;
    for (int i = 0; i < n; ++i) {
        int64_t in = i > 0 ? dd[i] / 2 : dd[i];
        const int64_t out = dd[i + 1];
        for (int k = 0; k < cfg.num_res_blocks + 1; ++k, in = out)
            r.res("decoder.upsamples." + std::to_string(idx++), in, out);
        if (i != n - 1) {
            const std::string p = "decoder.upsamples." + std::to_string(idx++);
            r.conv2d(p + ".resample.1", out, out / 2, 3);
            if (cfg.temporal_downsample[cfg.temporal_downsample.size() - 1 - i])
                r.conv(p + ".time_conv", out, 2 * out, 3, 1);
        }
    }
    r.norm("decoder.head.0", dd.back(), false);
    r.conv("decoder.head.2", dd.back(), 3, 3, 3);
    if (with_encoder) {
        r.conv("conv1", 2 * z, 2 * z, 1, 1);
        const std::vector<int64_t> ed = cfg.encoder_dims();
        r.conv("encoder.conv1", 3, ed[0], 3, 3);
        idx = 0;
        for (int i = 0; i < n; ++i) {
            int64_t in = ed[i];
            const int64_t out = ed[i + 1];
            for (int k = 0; k < cfg.num_res_blocks; ++k, in = out)
                r.res("encoder.downsamples." + std::to_string(idx++), in, out);
            if (i != n - 1) {
                const std::string p = "encoder.downsamples." + std::to_string(idx++);
                r.conv2d(p + ".resample.1", out, out, 3);
                if (cfg.temporal_downsample[i])
                    r.conv(p + ".time_conv", out, out, 3, 1);
            }
        }
        const int64_t c = ed.back();
        r.res("encoder.middle.0", c, c);
        r.attn("encoder.middle.1", c);
        r.res("encoder.middle.2", c, c);
        r.norm("encoder.head.0", c, false);
        r.conv("encoder.head.2", c, 2 * z, 3, 3);
    }
    return r.m;
}

namespace wan_vae {

// ---- cache -------------------------------------------------------------------------------------------------

at::Tensor& Cache::next() {
    if (cursor == slots.size())
        slots.emplace_back();
    return slots[cursor++];
}

int64_t Cache::bytes() const {
    int64_t n = 0;
    for (const auto& s : slots)
        if (s.defined())
            n += int64_t(s.nbytes());
    return n;
}

// ---- blocks --------------------------------------------------------------------------------------------------

namespace {

// Conv3d without time padding, run as a conv2d: the kt time taps are folded into the channels and the output
// frames into the batch. LibTorch 1.13's CPU conv3d is far slower than its (oneDNN) conv2d at the decoder's shapes:
// measured 33.7 vs 1.6 ms for 16 channels at 64x64 and 4 output frames, 4.1 vs 1.4 ms for 32 at 32x32 (1 thread),
// and 5 vs 60 GFLOP/s for one output frame of 96 channels at 64x64 (2 threads). The unfold copies the input kt
// times, which at these sizes costs far less than the convolution it speeds up.
// x: [B, C, T, H, W], w: [O, C, kt, kh, kw] -> [B, O, T-kt+1, H', W']
at::Tensor conv3d_frames(const at::Tensor& x,
                         const at::Tensor& w,
                         const at::Tensor& b,
                         int64_t stride_hw,
                         int64_t pad_hw) {
    const int64_t kt = w.size(2), T = x.size(2), B = x.size(0), C = x.size(1), O = w.size(0);
    // [O, C, kt, kh, kw] -> [O, C*kt, kh, kw]: input channel c*kt + t.
    at::Tensor wf = w.reshape({O, C * kt, w.size(3), w.size(4)});
    if (T == kt) {
        // One output frame: [B, C, T, H, W] -> [B, C*T, H, W] is a view.
        at::Tensor xf = x.contiguous().view({B, C * T, x.size(3), x.size(4)});
        return at::conv2d(xf, wf, b, stride_hw, pad_hw).unsqueeze(2);
    }
    const int64_t To = T - kt + 1;
    // [B, C, T, H, W] -unfold-> [B, C, To, H, W, kt] -> [B, To, C, kt, H, W] -> [B*To, C*kt, H, W]
    at::Tensor xw = x.unfold(2, kt, 1).permute({0, 2, 1, 5, 3, 4}).reshape({B * To, C * kt, x.size(3), x.size(4)});
    at::Tensor y = at::conv2d(xw, wf, b, stride_hw, pad_hw);  // [B*To, O, H', W']
    return y.view({B, To, O, y.size(2), y.size(3)}).permute({0, 2, 1, 3, 4}).contiguous();
}

}  // namespace

void CausalConv3d::load(WeightStore& ws, const std::string& name, int64_t in, int64_t out, int64_t kt_, int64_t khw) {
    kt = kt_;
    pad_hw = khw / 2;
    weight = ws.take(name + ".weight", {out, in, kt, khw, khw});
    bias = ws.take(name + ".bias", {out});
}

at::Tensor CausalConv3d::forward(const at::Tensor& x, Cache* cache) const {
    if (kt == 1)
        return conv3d_frames(x, weight, bias, 1, pad_hw);
    at::Tensor local;  // no cache: this call is the start of a sequence
    return forward_with_history(x, cache ? cache->next() : local);
}

at::Tensor CausalConv3d::forward_with_history(const at::Tensor& x, at::Tensor& hist) const {
    const int64_t h = kt - 1;
    if (!hist.defined())
        hist = at::zeros({x.size(0), x.size(1), h, x.size(3), x.size(4)}, x.options());
    // x: [B, in, T, H, W] -> xin: [B, in, h+T, H, W]
    at::Tensor xin = at::cat({hist, x}, 2);
    at::Tensor y = conv3d_frames(xin, weight, bias, 1, pad_hw);
    // Copy so that the cache does not pin the whole concatenated chunk.
    hist = xin.narrow(2, xin.size(2) - h, h).clone();
    return y;
}

void RmsNormC::load(WeightStore& ws, const std::string& name, int64_t c, bool images) {
    at::Tensor g = images ? ws.take(name + ".gamma", {c, 1, 1}) : ws.take(name + ".gamma", {c, 1, 1, 1});
    if (g.defined())
        scale = g.reshape({c, 1, 1, 1}) * std::sqrt(double(c));
}

at::Tensor RmsNormC::forward(const at::Tensor& x) const {
    // F.normalize: x / max(||x||_2, 1e-12) over channels, per pixel. The sum of squares over dim 1 runs as a
    // [1, C] x [C, T*H*W] matmul: LibTorch 1.13's CPU linalg_vector_norm over a non-innermost dim is 15x slower
    // (measured 2.0 vs 0.12 ms for the whole norm at 16 channels x 4 frames x 64x64, 1 thread).
    // x: [B, C, ...]
    const int64_t B = x.size(0), C = x.size(1);
    at::Tensor ss = at::matmul(at::ones({1, 1, C}, x.options()), (x * x).reshape({B, C, -1}));  // [B, 1, T*H*W]
    std::vector<int64_t> shape = x.sizes().vec();
    shape[1] = 1;
    at::Tensor inv = ss.view(shape).clamp_min_(1e-24).rsqrt_();
    at::Tensor y = x * inv;
    return scale.defined() ? y.mul_(scale) : y;
}

void ResidualBlock::load(WeightStore& ws, const std::string& name, int64_t in, int64_t out) {
    norm0.load(ws, name + ".residual.0", in, false);
    conv2.load(ws, name + ".residual.2", in, out, 3, 3);
    norm3.load(ws, name + ".residual.3", out, false);
    conv6.load(ws, name + ".residual.6", out, out, 3, 3);
    if (in != out)
        shortcut.load(ws, name + ".shortcut", in, out, 1, 1);
}

at::Tensor ResidualBlock::forward(const at::Tensor& x, Cache* cache) const {
    // x: [B, in, T, H, W]
    at::Tensor r = norm0.forward(x);
    r = conv2.forward(at::silu_(r), cache);
    r = norm3.forward(r);
    r = conv6.forward(at::silu_(r), cache);  // [B, out, T, H, W]
    if (shortcut.weight.defined())
        return r.add_(shortcut.forward(x, nullptr));
    return r.add_(x);
}

void AttentionBlock::load(WeightStore& ws, const std::string& name, int64_t c_) {
    c = c_;
    norm.load(ws, name + ".norm", c, true);
    qkv_w = ws.take(name + ".to_qkv.weight", {3 * c, c, 1, 1});
    qkv_b = ws.take(name + ".to_qkv.bias", {3 * c});
    proj_w = ws.take(name + ".proj.weight", {c, c, 1, 1});
    proj_b = ws.take(name + ".proj.bias", {c});
    if (qkv_w.defined())
        qkv_w = qkv_w.unsqueeze(2);
    if (proj_w.defined())
        proj_w = proj_w.unsqueeze(2);
}

at::Tensor AttentionBlock::forward(const at::Tensor& x) const {
    // x: [B, C, T, H, W]; one single-head attention per frame over its H*W pixels.
    const int64_t B = x.size(0), T = x.size(2), H = x.size(3), W = x.size(4);
    at::Tensor qkv = conv3d_frames(norm.forward(x), qkv_w, qkv_b, 1, 0);  // [B, 3C, T, H, W]
    qkv = qkv.permute({0, 2, 3, 4, 1}).reshape({B * T, H * W, 3 * c});    // [BT, HW, 3C]
    at::Tensor q = qkv.narrow(2, 0, c), k = qkv.narrow(2, c, c), v = qkv.narrow(2, 2 * c, c);
    at::Tensor attn = at::bmm(q, k.transpose(1, 2)).mul_(1.0 / std::sqrt(double(c)));  // [BT, HW, HW]
    attn = at::softmax(attn, -1);
    at::Tensor o = at::bmm(attn, v);                                    // [BT, HW, C]
    o = o.view({B, T, H, W, c}).permute({0, 4, 1, 2, 3}).contiguous();  // [B, C, T, H, W]
    return conv3d_frames(o, proj_w, proj_b, 1, 0).add_(x);
}

void Resample::load(WeightStore& ws, const std::string& name, int64_t c_, ResampleMode mode_) {
    c = c_;
    mode = mode_;
    const bool up = mode == ResampleMode::Upsample2d || mode == ResampleMode::Upsample3d;
    const int64_t out = up ? c / 2 : c;
    conv_w = ws.take(name + ".resample.1.weight", {out, c, 3, 3});
    conv_b = ws.take(name + ".resample.1.bias", {out});
    if (conv_w.defined())
        conv_w = conv_w.unsqueeze(2);  // [out, c, 1, 3, 3]
    if (mode == ResampleMode::Upsample3d)
        time_conv.load(ws, name + ".time_conv", c, 2 * c, 3, 1);
    if (mode == ResampleMode::Downsample3d) {
        // stride 2 in time, no causal padding: handled in forward, not by CausalConv3d's history
        time_conv.kt = 3;
        time_conv.stride_t = 2;
        time_conv.weight = ws.take(name + ".time_conv.weight", {c, c, 3, 1, 1});
        time_conv.bias = ws.take(name + ".time_conv.bias", {c});
    }
}

at::Tensor Resample::forward(const at::Tensor& x_in, Cache* cache) const {
    at::Tensor local;
    at::Tensor x = x_in;
    if (mode == ResampleMode::Upsample3d) {
        // x: [B, C, T, H, W]. The first frame of a sequence passes through alone; every later frame becomes two
        // (time_conv's 2C channels, first half first) and the time_conv history never includes frame 0.
        at::Tensor& hist = cache ? cache->next() : local;
        at::Tensor first;
        at::Tensor rest = x;
        if (!hist.defined()) {
            first = x.narrow(2, 0, 1);
            rest = x.narrow(2, 1, x.size(2) - 1);
            hist = at::zeros({x.size(0), c, 2, x.size(3), x.size(4)}, x.options());
        }
        if (rest.size(2) > 0) {
            const int64_t B = rest.size(0), T = rest.size(2), H = rest.size(3), W = rest.size(4);
            at::Tensor tc = time_conv.forward_with_history(rest, hist);  // [B, 2C, T, H, W]
            tc = tc.view({B, 2, c, T, H, W}).permute({0, 2, 3, 1, 4, 5}).reshape({B, c, 2 * T, H, W});
            x = first.defined() ? at::cat({first, tc}, 2) : tc;
        } else {
            x = first;
        }
    }
    if (mode == ResampleMode::Upsample2d || mode == ResampleMode::Upsample3d) {
        // x: [B, C, T, H, W] -> nearest x2 per frame -> [B, C/2, T, 2H, 2W]
        at::Tensor up = at::upsample_nearest3d(x, {x.size(2), 2 * x.size(3), 2 * x.size(4)});
        return conv3d_frames(up, conv_w, conv_b, 1, 1);
    }

    // Downsample: zero pad right/bottom by 1, 3x3 stride 2 per frame. x: [B, C, T, H, W] -> [B, C, T, H/2, W/2]
    at::Tensor y = conv3d_frames(at::constant_pad_nd(x, {0, 1, 0, 1}), conv_w, conv_b, 2, 0);
    if (mode == ResampleMode::Downsample2d)
        return y;

    // Downsample3d: frame 0 of a sequence passes through; output j >= 1 = time_conv over frames
    // (2j-2, 2j-1, 2j) (frame 0 is part of the history). `pending` holds the frames not yet consumed.
    at::Tensor& pending = cache ? cache->next() : local;
    at::Tensor first;
    at::Tensor seq;
    if (!pending.defined()) {
        first = y.narrow(2, 0, 1);
        seq = y;
    } else {
        seq = at::cat({pending, y}, 2);
    }
    const int64_t n = seq.size(2);
    const int64_t n_out = n >= 3 ? (n - 3) / 2 + 1 : 0;
    std::vector<at::Tensor> parts;
    if (first.defined())
        parts.push_back(first);
    if (n_out > 0)
        parts.push_back(at::conv3d(seq, time_conv.weight, time_conv.bias, {2, 1, 1}));
    pending = seq.narrow(2, 2 * n_out, n - 2 * n_out).clone();
    if (parts.empty())
        return y.narrow(2, 0, 0);
    return parts.size() == 1 ? parts[0] : at::cat(parts, 2);
}

at::Tensor Layer::forward(const at::Tensor& x, Cache* cache) const {
    switch (kind) {
        case Res:
            return res.forward(x, cache);
        case Attn:
            return attn.forward(x);
        case Resamp:
            return resample.forward(x, cache);
    }
    return x;
}

namespace {

Layer make_res(WeightStore& ws, const std::string& name, int64_t in, int64_t out) {
    Layer l;
    l.kind = Layer::Res;
    l.res.load(ws, name, in, out);
    return l;
}

Layer make_attn(WeightStore& ws, const std::string& name, int64_t c) {
    Layer l;
    l.kind = Layer::Attn;
    l.attn.load(ws, name, c);
    return l;
}

Layer make_resample(WeightStore& ws, const std::string& name, int64_t c, ResampleMode mode) {
    Layer l;
    l.kind = Layer::Resamp;
    l.resample.load(ws, name, c, mode);
    return l;
}

at::Tensor run_head(const RmsNormC& norm, const CausalConv3d& conv, const at::Tensor& x, Cache* cache) {
    at::Tensor h = norm.forward(x);
    return conv.forward(at::silu_(h), cache);
}

}  // namespace

void Decoder::load(WeightStore& ws, const WanVaeConfig& cfg) {
    const std::vector<int64_t> dims = cfg.decoder_dims();
    const int n = int(cfg.dim_mult.size());
    conv1.load(ws, "decoder.conv1", cfg.z_dim, dims[0], 3, 3);
    middle = {make_res(ws, "decoder.middle.0", dims[0], dims[0]), make_attn(ws, "decoder.middle.1", dims[0]),
              make_res(ws, "decoder.middle.2", dims[0], dims[0])};
    upsamples.clear();
    int idx = 0;
    for (int i = 0; i < n; ++i) {
        // Stages after a Resample get half the width (the Resample's conv halves the channels).
        int64_t in = i > 0 ? dims[i] / 2 : dims[i];
        const int64_t out = dims[i + 1];
        for (int r = 0; r < cfg.num_res_blocks + 1; ++r) {
            upsamples.push_back(make_res(ws, "decoder.upsamples." + std::to_string(idx++), in, out));
            in = out;
        }
        if (i != n - 1) {
            // temporal_upsample = reversed temporal_downsample
            const bool t = cfg.temporal_downsample[cfg.temporal_downsample.size() - 1 - i];
            upsamples.push_back(make_resample(ws, "decoder.upsamples." + std::to_string(idx++), out,
                                              t ? ResampleMode::Upsample3d : ResampleMode::Upsample2d));
        }
    }
    head_norm.load(ws, "decoder.head.0", dims.back(), false);
    head_conv.load(ws, "decoder.head.2", dims.back(), 3, 3, 3);
}

at::Tensor Decoder::forward(const at::Tensor& x_in, Cache* cache) const {
    // x: [B, z, T, h, w]
    at::Tensor x = conv1.forward(x_in, cache);  // [B, dims0, T, h, w]
    for (const Layer& l : middle)
        x = l.forward(x, cache);
    for (const Layer& l : upsamples)
        x = l.forward(x, cache);                      // [B, dim, T', 8h, 8w]
    return run_head(head_norm, head_conv, x, cache);  // [B, 3, T', 8h, 8w]
}

void Encoder::load(WeightStore& ws, const WanVaeConfig& cfg) {
    const std::vector<int64_t> dims = cfg.encoder_dims();
    const int n = int(cfg.dim_mult.size());
    conv1.load(ws, "encoder.conv1", 3, dims[0], 3, 3);
    downsamples.clear();
    int idx = 0;
    for (int i = 0; i < n; ++i) {
        int64_t in = dims[i];
        const int64_t out = dims[i + 1];
        for (int r = 0; r < cfg.num_res_blocks; ++r) {
            downsamples.push_back(make_res(ws, "encoder.downsamples." + std::to_string(idx++), in, out));
            in = out;
        }
        if (i != n - 1)
            downsamples.push_back(
                make_resample(ws, "encoder.downsamples." + std::to_string(idx++), out,
                              cfg.temporal_downsample[i] ? ResampleMode::Downsample3d : ResampleMode::Downsample2d));
    }
    const int64_t c = dims.back();
    middle = {make_res(ws, "encoder.middle.0", c, c), make_attn(ws, "encoder.middle.1", c),
              make_res(ws, "encoder.middle.2", c, c)};
    head_norm.load(ws, "encoder.head.0", c, false);
    head_conv.load(ws, "encoder.head.2", c, 2 * cfg.z_dim, 3, 3);
}

at::Tensor Encoder::forward(const at::Tensor& x_in, Cache* cache) const {
    // x: [B, 3, T, H, W]
    at::Tensor x = conv1.forward(x_in, cache);
    for (const Layer& l : downsamples)
        x = l.forward(x, cache);  // [B, C, T', H/8, W/8]
    for (const Layer& l : middle)
        x = l.forward(x, cache);
    return run_head(head_norm, head_conv, x, cache);  // [B, 2z, T', H/8, W/8]
}

}  // namespace wan_vae

// ---- WanVae --------------------------------------------------------------------------------------------------

WanVae::WanVae(const TensorMap& tensors,
               const WanVaeConfig& cfg,
               c10::Device device,
               c10::ScalarType dtype,
               bool with_encoder)
    : cfg_(cfg), device_(device), dtype_(dtype), has_encoder_(with_encoder) {
    cfg_.validate();
    // Decoder-only: check against the decoder's tensors alone, so strictness still catches typos.
    TensorMap subset;
    if (!with_encoder)
        for (const auto& kv : tensors)
            if (kv.first.rfind("encoder.", 0) != 0 && kv.first.rfind("conv1.", 0) != 0)
                subset.insert(kv);
    WeightStore ws(with_encoder ? tensors : subset, device, dtype);

    const int64_t z = cfg_.z_dim;
    if (ws.has("scale.mean") || ws.has("scale.inv_std")) {
        mean_ = ws.take("scale.mean", {z});
        inv_std_ = ws.take("scale.inv_std", {z});
    } else {
        // float32 1/std, as the reference computes it (and divides by it: z / (1/std)).
        at::Tensor std_t = at::tensor(cfg_.std_, at::kFloat);
        mean_ = at::tensor(cfg_.mean, at::kFloat).to(device, dtype);
        inv_std_ = (1.0 / std_t).to(device, dtype);
    }
    conv2_.load(ws, "conv2", z, z, 1, 1);
    decoder_.load(ws, cfg_);
    if (with_encoder) {
        conv1_.load(ws, "conv1", 2 * z, 2 * z, 1, 1);
        encoder_.load(ws, cfg_);
    }
    ws.finish("WanVae", /*strict=*/true);
}

at::Tensor WanVae::decoder_input(const at::Tensor& z) const {
    // z: [B, z, T, h, w] normalized -> raw latents -> conv2 (1x1x1)
    if (z.dim() != 5 || z.size(1) != cfg_.z_dim)
        throw std::runtime_error("WanVae: latents must be [B, " + std::to_string(cfg_.z_dim) + ", T, h, w]");
    at::Tensor x = z.to(device_, dtype_) / inv_std_.view({1, -1, 1, 1, 1}) + mean_.view({1, -1, 1, 1, 1});
    return conv2_.forward(x, nullptr);
}

at::Tensor WanVae::decode(const at::Tensor& z) const {
    // z: [B, z, T, h, w] -> [B, 3, 1+4(T-1), 8h, 8w]; a fresh sequence, all frames in one pass
    return decoder_.forward(decoder_input(z), nullptr);
}

at::Tensor WanVae::encode_step(const at::Tensor& frames, wan_vae::Cache& cache) const {
    // frames: [B, 3, 1 or 4, H, W] -> [B, z, 1, H/8, W/8]
    cache.begin();
    at::Tensor h = conv1_.forward(encoder_.forward(frames.to(device_, dtype_), &cache), nullptr);  // [B, 2z, 1, h, w]
    at::Tensor mu = h.narrow(1, 0, cfg_.z_dim);
    return (mu - mean_.view({1, -1, 1, 1, 1})) * inv_std_.view({1, -1, 1, 1, 1});
}

at::Tensor WanVae::encode(const at::Tensor& video) const {
    if (video.dim() != 5 || (video.size(2) - 1) % 4 != 0)
        throw std::runtime_error("WanVae::encode: video must be [B, 3, 1+4k, H, W]");
    WanVaeEncodeStream stream(*this);
    return stream.push(video);
}

// ---- streaming encode ----------------------------------------------------------------------------------------

WanVaeEncodeStream::WanVaeEncodeStream(const WanVae& vae) : vae_(vae) {}

void WanVaeEncodeStream::reset() {
    cache_.clear();
    pending_ = at::Tensor();
    steps_ = 0;
}

int64_t WanVaeEncodeStream::cache_bytes() const {
    return cache_.bytes() + (pending_.defined() ? int64_t(pending_.nbytes()) : 0);
}

at::Tensor WanVaeEncodeStream::push(const at::Tensor& video) {
    // video: [B, 3, T, H, W] -> [B, z, T', h, w]
    if (!vae_.has_encoder())
        throw std::runtime_error("WanVae::encode: the VAE was loaded without its encoder");
    if (video.dim() != 5 || video.size(1) != 3 || video.size(2) < 1)
        throw std::runtime_error("WanVae::encode: video must be [B, 3, T>=1, H, W]");
    const int64_t stride = vae_.config().spatial_stride();
    if (video.size(3) % stride != 0 || video.size(4) % stride != 0)
        throw std::runtime_error("WanVae::encode: H and W must be multiples of " + std::to_string(stride));
    at::Tensor frames = pending_.defined() ? at::cat({pending_, video}, 2) : video;
    std::vector<at::Tensor> outs;
    int64_t t0 = 0;
    for (int64_t need = steps_ == 0 ? 1 : 4; frames.size(2) - t0 >= need; need = 4) {
        outs.push_back(vae_.encode_step(frames.narrow(2, t0, need), cache_));
        t0 += need;
        ++steps_;
    }
    const int64_t left = frames.size(2) - t0;
    pending_ = left > 0 ? frames.narrow(2, t0, left).clone() : at::Tensor();
    if (outs.empty()) {
        const int64_t z = vae_.config().z_dim;
        return at::empty({video.size(0), z, 0, video.size(3) / stride, video.size(4) / stride},
                         video.options().dtype(vae_.dtype()).device(vae_.device()));
    }
    return outs.size() == 1 ? outs[0] : at::cat(outs, 2);
}

// ---- streaming decode ----------------------------------------------------------------------------------------

WanVaeDecodeStream::WanVaeDecodeStream(const WanVae& vae) : vae_(vae) {}

void WanVaeDecodeStream::reset() {
    cache_.clear();
    frames_pushed_ = 0;
}

at::Tensor WanVaeDecodeStream::push(const at::Tensor& z) {
    // z: [B, z, T, h, w] -> [B, 3, T', 8h, 8w]; one latent frame per decoder pass bounds the activations.
    if (z.dim() != 5 || z.size(2) < 1)
        throw std::runtime_error("WanVaeDecodeStream::push: z must be [B, z, T>=1, h, w]");
    std::vector<at::Tensor> outs;
    for (int64_t t = 0; t < z.size(2); ++t) {
        cache_.begin();
        outs.push_back(vae_.decoder().forward(vae_.decoder_input(z.narrow(2, t, 1)), &cache_));
        ++frames_pushed_;
    }
    return outs.size() == 1 ? outs[0] : at::cat(outs, 2);
}

}  // namespace reel
