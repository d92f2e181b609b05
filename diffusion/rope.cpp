#include "diffusion/rope.h"

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>

namespace reel {

namespace {
// Angles pos * 1/theta^(2i/width) for pos < max_pos, i < width/2, in float64: [max_pos, width/2].
at::Tensor axis_angles(int64_t max_pos, int64_t width, double theta) {
    auto opts = at::TensorOptions().dtype(at::kDouble);
    at::Tensor inv = 1.0 / at::pow(theta, at::arange(0, width, 2, opts).div(static_cast<double>(width)));
    return at::outer(at::arange(max_pos, opts), inv);
}
}  // namespace

Rope3D::Rope3D(int64_t head_dim, c10::Device device, int64_t max_pos, double theta)
    : max_pos_(max_pos), device_(device), theta_(theta) {
    if (head_dim % 2 != 0)
        throw std::runtime_error("RoPE: head_dim " + std::to_string(head_dim) + " is odd");
    c_ = head_dim / 2;
    c1_ = c_ / 3;
    c0_ = c_ - 2 * c1_;
    at::Tensor at_t = axis_angles(max_pos, 2 * c0_, theta);
    at::Tensor at_h = axis_angles(max_pos, 2 * c1_, theta);
    cos_t_ = at::cos(at_t).to(device);
    sin_t_ = at::sin(at_t).to(device);
    cos_h_ = at::cos(at_h).to(device);
    sin_h_ = at::sin(at_h).to(device);
}

at::Tensor Rope3D::freq_table_f64(int64_t n) const {
    at::Tensor c = at::cat({cos_t_.slice(0, 0, n), cos_h_.slice(0, 0, n), cos_h_.slice(0, 0, n)}, 1);
    at::Tensor s = at::cat({sin_t_.slice(0, 0, n), sin_h_.slice(0, 0, n), sin_h_.slice(0, 0, n)}, 1);
    return at::stack({c, s}, -1);  // [n, c, 2]
}

at::Tensor Rope3D::hw_table(int64_t hp, int64_t wp, bool want_sin) const {
    if (hp != grid_hp_ || wp != grid_wp_) {
        if (hp > max_pos_ || wp > max_pos_)
            throw std::runtime_error("RoPE: latent grid larger than the table");
        auto idx = at::TensorOptions().dtype(at::kLong).device(device_);
        at::Tensor hi = at::arange(hp, idx).repeat_interleave(wp);  // token s -> row s / wp
        at::Tensor wi = at::arange(wp, idx).repeat({hp});           // token s -> column s % wp
        grid_cos_ = at::cat({cos_h_.index_select(0, hi), cos_h_.index_select(0, wi)}, 1);
        grid_sin_ = at::cat({sin_h_.index_select(0, hi), sin_h_.index_select(0, wi)}, 1);
        grid_hp_ = hp;
        grid_wp_ = wp;
    }
    return want_sin ? grid_sin_ : grid_cos_;
}

RopeTable Rope3D::table_for_frames(const at::Tensor& frame_pos, int64_t hp, int64_t wp) const {
    at::Tensor fp = frame_pos.to(device_, at::kLong);
    const int64_t nf = fp.numel();
    if (nf > 0 && fp.max().item<int64_t>() >= max_pos_)
        throw std::runtime_error("RoPE: frame position " + std::to_string(fp.max().item<int64_t>()) +
                                 " is beyond the table (" + std::to_string(max_pos_) + " frames)");
    const int64_t s = hp * wp;
    // [F, S, c] = per-frame t part broadcast over the grid, then the grid's (h, w) part.
    at::Tensor ct = cos_t_.index_select(0, fp).unsqueeze(1).expand({nf, s, c0_});
    at::Tensor st = sin_t_.index_select(0, fp).unsqueeze(1).expand({nf, s, c0_});
    at::Tensor chw = hw_table(hp, wp, false).unsqueeze(0).expand({nf, s, 2 * c1_});
    at::Tensor shw = hw_table(hp, wp, true).unsqueeze(0).expand({nf, s, 2 * c1_});
    RopeTable t;
    t.cos = at::cat({ct, chw}, 2).reshape({nf * s, 1, c_});
    t.sin = at::cat({st, shw}, 2).reshape({nf * s, 1, c_});
    return t;
}

RopeTable Rope3D::table_for_tokens(const at::Tensor& token_frame_pos, int64_t hp, int64_t wp) const {
    const int64_t s = hp * wp;
    if (token_frame_pos.numel() % s != 0)
        throw std::runtime_error("RoPE: token count is not a multiple of the frame size");
    // Positions are constant per frame: take every s-th entry.
    return table_for_frames(token_frame_pos.reshape({-1, s}).select(1, 0), hp, wp);
}

RopeTable Rope3D::table_for_range(int64_t start_frame, int64_t n_frames, int64_t hp, int64_t wp) const {
    return table_for_frames(at::arange(start_frame, start_frame + n_frames, at::TensorOptions().dtype(at::kLong)), hp,
                            wp);
}

at::Tensor Rope3D::apply(const at::Tensor& x, const RopeTable& table) const {
    // x: [B, T, N, D] viewed as [B, T, N, c, 2] (real, imag) pairs
    const int64_t b = x.size(0), t = x.size(1), n = x.size(2);
    if (table.tokens() != t)
        throw std::runtime_error("RoPE: table has a different token count than the input");
    at::Tensor xd = x.to(at::kDouble).reshape({b, t, n, c_, 2});
    at::Tensor re = xd.select(-1, 0), im = xd.select(-1, 1);
    at::Tensor out_re = re * table.cos - im * table.sin;
    at::Tensor out_im = re * table.sin + im * table.cos;
    return at::stack({out_re, out_im}, -1).reshape({b, t, n, 2 * c_}).to(x.scalar_type());
}

RopeTable Rope3D::table_at(const at::Tensor& tpos, const at::Tensor& spos, int64_t hp, int64_t wp) const {
    at::Tensor half = tpos.to(device_, at::kFloat).mul(2.0f).round().to(at::kLong);
    const int64_t need = half.numel() > 0 ? half.max().item<int64_t>() + 1 : 1;
    if (half.numel() > 0 && half.min().item<int64_t>() < 0)
        throw std::runtime_error("RoPE: negative time position");
    if (!half_cos_.defined() || half_cos_.size(0) < need) {
        int64_t rows = half_cos_.defined() ? half_cos_.size(0) : 64;
        while (rows < need)
            rows *= 2;
        // Angle (i / 2) * inv_freq: for even i this is bit-identical to the integer-position table.
        auto opts = at::TensorOptions().dtype(at::kDouble);
        at::Tensor inv = 1.0 / at::pow(theta_, at::arange(0, 2 * c0_, 2, opts).div(static_cast<double>(2 * c0_)));
        at::Tensor ang = at::outer(at::arange(rows, opts).mul(0.5), inv);
        half_cos_ = at::cos(ang).to(device_);
        half_sin_ = at::sin(ang).to(device_);
    }
    at::Tensor hi = half.reshape({-1});
    at::Tensor si = spos.to(device_, at::kLong).reshape({-1});
    std::vector<int64_t> shape = tpos.sizes().vec();
    shape.push_back(c_);
    RopeTable t;
    t.cos = at::cat({half_cos_.index_select(0, hi), hw_table(hp, wp, false).index_select(0, si)}, 1).view(shape);
    t.sin = at::cat({half_sin_.index_select(0, hi), hw_table(hp, wp, true).index_select(0, si)}, 1).view(shape);
    return t;
}

at::Tensor Rope3D::apply_at(const at::Tensor& x, const RopeTable& table) const {
    // x: [..., D] viewed as [..., c, 2] (real, imag) pairs
    std::vector<int64_t> pairs = x.sizes().vec();
    pairs.back() = c_;
    pairs.push_back(2);
    at::Tensor xd = x.to(at::kDouble).reshape(pairs);
    at::Tensor re = xd.select(-1, 0), im = xd.select(-1, 1);
    at::Tensor out = at::stack({re * table.cos - im * table.sin, re * table.sin + im * table.cos}, -1);
    return out.reshape(x.sizes()).to(x.scalar_type());
}

}  // namespace reel
