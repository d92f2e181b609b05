#include "kernels/attention.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace reel {

at::Tensor attention(const at::Tensor& q,
                     const at::Tensor& k,
                     const at::Tensor& v,
                     const at::Tensor& bias,
                     int64_t max_score_bytes) {
    if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || k.sizes() != v.sizes() || q.size(0) != k.size(0) ||
        q.size(2) != k.size(2) || q.size(3) != k.size(3))
        throw std::runtime_error("attention: expected q [B,Lq,N,D] and k, v [B,Lk,N,D] with matching B, N, D");
    const int64_t b = q.size(0), lq = q.size(1), n = q.size(2), d = q.size(3), lk = k.size(1);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    // Head-major copies made once: matmul would otherwise copy the permuted K/V again for every query block.
    // kt is a transposed view, which batched GEMM takes without a copy.
    at::Tensor kt = k.permute({0, 2, 1, 3}).contiguous().transpose(2, 3);  // [B, N, D, Lk]
    at::Tensor vh = v.permute({0, 2, 1, 3}).contiguous();                  // [B, N, Lk, D]
    at::Tensor qh = q.permute({0, 2, 1, 3}).contiguous();                  // [B, N, Lq, D]
    at::Tensor bias_row;
    if (bias.defined())
        bias_row = bias.to(q.scalar_type()).view({1, 1, 1, lk});

    const int64_t row_bytes = std::max<int64_t>(1, b * n * lk * static_cast<int64_t>(q.element_size()));
    const int64_t block = std::max<int64_t>(1, std::min<int64_t>(lq, max_score_bytes / row_bytes));
    at::Tensor out = at::empty({b, lq, n, d}, q.options());
    for (int64_t r = 0; r < lq; r += block) {
        const int64_t rows = std::min(block, lq - r);
        at::Tensor s = at::matmul(qh.narrow(2, r, rows), kt).mul_(scale);  // [B, N, rows, Lk]
        if (bias_row.defined())
            s.add_(bias_row);
        at::Tensor p = at::softmax(s, -1);
        at::Tensor o = at::matmul(p, vh);  // [B, N, rows, D]
        out.narrow(1, r, rows).copy_(o.permute({0, 2, 1, 3}));
    }
    return out;
}

}  // namespace reel
