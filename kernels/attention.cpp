#include "kernels/attention.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

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
        bias_row = bias.dim() == 1 ? bias.to(q.scalar_type()).view({1, 1, 1, lk})
                                   : bias.to(q.scalar_type()).reshape({b, n, 1, lk});

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

AttentionAccumulator::AttentionAccumulator(const at::Tensor& q, int64_t max_score_bytes)
    : q_(q), scale_(1.0 / std::sqrt(static_cast<double>(q.size(3)))), max_score_bytes_(max_score_bytes) {
    if (q.dim() != 4)
        throw std::runtime_error("attention: expected q [B, N, Lq, D]");
}

void AttentionAccumulator::add(const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias) {
    // k, v: [B, N, L, D]
    const int64_t b = q_.size(0), n = q_.size(1), lq = q_.size(2), d = q_.size(3);
    if (k.dim() != 4 || k.sizes() != v.sizes() || k.size(0) != b || k.size(1) != n || k.size(3) != d)
        throw std::runtime_error("attention: block k, v must be [B, N, L, D] matching q");
    const int64_t lk = k.size(2);
    if (lk == 0)
        return;
    if (rows_.empty()) {
        const int64_t row_bytes = std::max<int64_t>(1, b * n * lk * static_cast<int64_t>(q_.element_size()) * 2);
        const int64_t block = std::max<int64_t>(1, std::min<int64_t>(lq, max_score_bytes_ / row_bytes));
        for (int64_t r = 0; r < lq; r += block)
            rows_.push_back({r, std::min(block, lq - r), at::Tensor(), at::Tensor(), at::Tensor()});
    }
    at::Tensor kt = k.transpose(2, 3);  // [B, N, D, L]
    at::Tensor bias4;
    if (bias.defined())
        bias4 = bias.to(q_.scalar_type()).unsqueeze(-2);  // [B, N, 1, L]
    const bool grad = at::GradMode::is_enabled();
    for (Rows& r : rows_) {
        at::Tensor s = at::matmul(q_.narrow(2, r.start, r.count), kt).mul(scale_);  // [B, N, rows, L]
        if (bias4.defined())
            s = s + bias4;
        // A finite floor keeps exp() of fully masked rows at 0 instead of NaN (-inf - -inf).
        at::Tensor bm = std::get<0>(s.max(-1)).clamp_min(-1e30);  // [B, N, rows]
        if (!r.m.defined()) {
            at::Tensor p = at::exp(s - bm.unsqueeze(-1));
            r.m = bm;
            r.l = p.sum(-1);
            r.acc = at::matmul(p, v);
            continue;
        }
        at::Tensor m_new = at::maximum(r.m, bm);
        at::Tensor alpha = at::exp(r.m - m_new);  // rescale of what was accumulated
        at::Tensor p = at::exp(s - m_new.unsqueeze(-1));
        if (grad) {
            r.l = r.l * alpha + p.sum(-1);
            r.acc = r.acc * alpha.unsqueeze(-1) + at::matmul(p, v);
        } else {
            r.l.mul_(alpha).add_(p.sum(-1));
            r.acc.mul_(alpha.unsqueeze(-1)).add_(at::matmul(p, v));
        }
        r.m = m_new;
    }
}

at::Tensor AttentionAccumulator::finish() {
    const int64_t b = q_.size(0), n = q_.size(1), lq = q_.size(2), d = q_.size(3);
    if (rows_.empty())
        return at::zeros({b, lq, n, d}, q_.options());
    std::vector<at::Tensor> parts;
    for (Rows& r : rows_)
        parts.push_back(r.acc / r.l.clamp_min(1e-30).unsqueeze(-1));  // [B, N, rows, D]
    at::Tensor out = parts.size() == 1 ? parts[0] : at::cat(parts, 2);
    rows_.clear();
    return out.permute({0, 2, 1, 3}).contiguous();  // [B, Lq, N, D]
}

}  // namespace reel
