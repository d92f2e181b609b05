// Wan2.1 3D rotary position embedding. A head of D dims is c = D/2 complex pairs (x[2j], x[2j+1]) split into
// c0 = c - 2*(c/3) pairs rotated by the frame index, then c/3 by the row h and c/3 by the column w; each axis
// has its own frequencies 10000^(-2i/(2n)). Rotation is done in float64 like the reference.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>

namespace reel {

// Per-token rotation for a token set: cos/sin [T, 1, c] float64, ready to broadcast over heads.
struct RopeTable {
    at::Tensor cos, sin;
    int64_t tokens() const { return cos.defined() ? cos.size(0) : 0; }
};

class Rope3D {
  public:
    // max_pos: rows per axis of the angle table (1024 in Wan: frame positions >= 1024 are refused).
    Rope3D(int64_t head_dim, c10::Device device, int64_t max_pos = 1024, double theta = 10000.0);

    int64_t pairs() const { return c_; }
    int64_t pairs_t() const { return c0_; }
    int64_t pairs_hw() const { return c1_; }
    int64_t max_pos() const { return max_pos_; }

    // (cos, sin) of the angle table for positions 0..n-1, column j using the axis it belongs to: [n, c, 2]
    // float64 (the reference's `freqs` for the first n rows; for checking).
    at::Tensor freq_table_f64(int64_t n) const;

    // Table for tokens laid out frame by frame, each frame an hp x wp grid in (h, w) order (w fastest).
    // frame_pos: [T / (hp*wp)] int64 absolute frame index of each frame.
    RopeTable table_for_frames(const at::Tensor& frame_pos, int64_t hp, int64_t wp) const;
    // Same, for per-token frame positions ([T] int64, constant over each frame's hp*wp tokens).
    RopeTable table_for_tokens(const at::Tensor& token_frame_pos, int64_t hp, int64_t wp) const;
    // Consecutive frames [start_frame, start_frame + n_frames).
    RopeTable table_for_range(int64_t start_frame, int64_t n_frames, int64_t hp, int64_t wp) const;

    // x: [B, T, N, D] -> rotated [B, T, N, D] in x's dtype (computed in float64).
    at::Tensor apply(const at::Tensor& x, const RopeTable& table) const;

    // Tables for arbitrary token positions, any leading shape: tpos [...] float time position in frames (a
    // multiple of 0.5: merged cache entries sit at the middle of the frames they stand for), spos [...] int64 token
    // index in the hp x wp grid. cos/sin [..., c] float64. No ceiling: the time table grows on demand.
    RopeTable table_at(const at::Tensor& tpos, const at::Tensor& spos, int64_t hp, int64_t wp) const;
    // x: [..., D] with leading dims broadcast-compatible with the table's -> rotated, x's dtype.
    at::Tensor apply_at(const at::Tensor& x, const RopeTable& table) const;

  private:
    at::Tensor hw_table(int64_t hp, int64_t wp, bool want_sin) const;

    int64_t c_, c0_, c1_, max_pos_;
    c10::Device device_;
    at::Tensor cos_t_, sin_t_;  // [max_pos, c0] float64
    at::Tensor cos_h_, sin_h_;  // [max_pos, c1] (w uses the same table as h: same width)
    // Cached (h, w) part for the last grid, [hp*wp, 2*c1]: every call of a rollout has the same grid.
    mutable int64_t grid_hp_ = -1, grid_wp_ = -1;
    mutable at::Tensor grid_cos_, grid_sin_;
    // Time part by half-frame index 2*tpos, [rows, c0] float64, grown by doubling.
    mutable at::Tensor half_cos_, half_sin_;
    double theta_;
};

}  // namespace reel
