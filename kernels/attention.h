// Exact scaled dot-product attention on CPU/GPU tensors with LibTorch ops (no SDPA: LibTorch 1.13 lacks it).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace reel {

// q: [B, Lq, N, D], k, v: [B, Lk, N, D], bias: [Lk] logit bias added to every query row, or undefined.
// Returns softmax(q k^T / sqrt(D) + bias) v as [B, Lq, N, D]. The logits are computed in blocks of query rows so
// that one block's [B, N, rows, Lk] score matrix stays under `max_score_bytes` (long caches would otherwise need
// gigabytes for the full matrix).
at::Tensor attention(const at::Tensor& q,
                     const at::Tensor& k,
                     const at::Tensor& v,
                     const at::Tensor& bias = at::Tensor(),
                     int64_t max_score_bytes = int64_t(256) << 20);

}  // namespace reel
