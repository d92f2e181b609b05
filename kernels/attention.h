// Exact scaled dot-product attention on CPU/GPU tensors with LibTorch ops (no SDPA: LibTorch 1.13 lacks it).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace reel {

// q: [B, Lq, N, D], k, v: [B, Lk, N, D], bias: [Lk] or [B, N, Lk] logit bias added to every query row, or
// undefined.
// Returns softmax(q k^T / sqrt(D) + bias) v as [B, Lq, N, D]. The logits are computed in blocks of query rows so
// that one block's [B, N, rows, Lk] score matrix stays under `max_score_bytes` (long caches would otherwise need
// gigabytes for the full matrix).
at::Tensor attention(const at::Tensor& q,
                     const at::Tensor& k,
                     const at::Tensor& v,
                     const at::Tensor& bias = at::Tensor(),
                     int64_t max_score_bytes = int64_t(256) << 20);

// Attention over keys that arrive in blocks (a cache read block by block: quantized pages dequantized one at a
// time, never the whole cache), merged with a running log-sum-exp: per query row the running max m, the sum of
// exp(s - m) and the weighted value sum, rescaled when m grows. Equals attention() over the concatenated blocks.
// Out-of-place when autograd is recording, so training can backpropagate through it.
class AttentionAccumulator {
  public:
    // q: [B, N, Lq, D] head-major, already roped. The score matrix of one step stays under max_score_bytes by
    // splitting the query rows.
    explicit AttentionAccumulator(const at::Tensor& q, int64_t max_score_bytes = int64_t(256) << 20);
    // k, v: [B, N, L, D], bias: [B, N, L] (or broadcastable, -inf masks a slot) or undefined.
    void add(const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias = at::Tensor());
    // -> [B, Lq, N, D]. Rows that saw no unmasked key are zero.
    at::Tensor finish();

  private:
    at::Tensor q_;
    double scale_;
    int64_t max_score_bytes_;
    struct Rows {
        int64_t start, count;
        at::Tensor m, l, acc;  // [B, N, rows], [B, N, rows], [B, N, rows, D]
    };
    std::vector<Rows> rows_;
};

}  // namespace reel
