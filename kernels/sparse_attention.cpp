#include "kernels/sparse_attention.h"

#include <ATen/ATen.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

namespace reel {

namespace {

// Bounds the [S, rows, Ll] score block of the local part.
constexpr int64_t kMaxScoreBytes = int64_t(128) << 20;

inline float dot(const float* a, const float* b, int64_t d) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < d; ++i)
        s += a[i] * b[i];
    return s;
}

}  // namespace

at::Tensor sparse_attention(const at::Tensor& q_in,
                            const at::Tensor& kl_in,
                            const at::Tensor& vl_in,
                            const at::Tensor& bl_in,
                            const at::Tensor& kg_in,
                            const at::Tensor& vg_in,
                            const at::Tensor& bg_in,
                            const at::Tensor& sel_in) {
    if (q_in.dim() != 3 || kl_in.dim() != 3 || kg_in.dim() != 3 || sel_in.dim() != 3)
        throw std::runtime_error("sparse_attention: expected q [S,Lq,D], k [S,L,D], sel [S,Lq,K]");
    const int64_t S = q_in.size(0), lq = q_in.size(1), d = q_in.size(2), ll = kl_in.size(1), lg = kg_in.size(1);
    const int64_t kk = sel_in.size(2);
    if (kl_in.size(0) != S || kg_in.size(0) != S || sel_in.size(0) != S || sel_in.size(1) != lq || kl_in.size(2) != d ||
        kg_in.size(2) != d || vl_in.sizes() != kl_in.sizes() || vg_in.sizes() != kg_in.sizes())
        throw std::runtime_error("sparse_attention: shapes do not match");
    const float scale = float(1.0 / std::sqrt(double(d)));
    const auto cpu_f = [](const at::Tensor& t) { return t.to(at::kCPU, at::kFloat).contiguous(); };
    at::Tensor q = cpu_f(q_in), kl = cpu_f(kl_in), vl = cpu_f(vl_in), kg = cpu_f(kg_in), vg = cpu_f(vg_in);
    at::Tensor sel = sel_in.to(at::kCPU, at::kLong).contiguous();
    at::Tensor bg = bg_in.defined() ? cpu_f(bg_in) : at::Tensor();
    at::Tensor out = at::zeros({S, lq, d}, q.options());

    const int64_t row_bytes = std::max<int64_t>(1, S * std::max<int64_t>(ll, 1) * 4 * 2);
    const int64_t block = std::max<int64_t>(1, std::min<int64_t>(lq, kMaxScoreBytes / row_bytes));
    const float* kgp = kg.data_ptr<float>();
    const float* vgp = vg.data_ptr<float>();
    const float* bgp = bg.defined() ? bg.data_ptr<float>() : nullptr;
    const int64_t* selp = sel.data_ptr<int64_t>();
    const float* qp = q.data_ptr<float>();
    float* op = out.data_ptr<float>();
    const int nthreads = std::max(1, omp_get_max_threads());
    std::vector<float> scratch(size_t(nthreads) * size_t(std::max<int64_t>(kk, 1)));

    for (int64_t r0 = 0; r0 < lq; r0 += block) {
        const int64_t rows = std::min(block, lq - r0);
        // Local part with BLAS: running max m, sum l and unnormalized output acc per query row.
        at::Tensor m, l, acc;  // [S, rows], [S, rows], [S, rows, D]
        if (ll > 0) {
            at::Tensor s = at::bmm(q.narrow(1, r0, rows), kl.transpose(1, 2)).mul_(scale);  // [S, rows, Ll]
            if (bl_in.defined())
                s.add_(cpu_f(bl_in).unsqueeze(1));
            m = std::get<0>(s.max(-1)).clamp_min(-1e30f);
            s.sub_(m.unsqueeze(-1)).exp_();
            l = s.sum(-1);
            acc = at::bmm(s, vl);
        } else {
            m = at::full({S, rows}, -1e30f, q.options());
            l = at::zeros({S, rows}, q.options());
            acc = at::zeros({S, rows, d}, q.options());
        }
        m = m.contiguous(), l = l.contiguous(), acc = acc.contiguous();
        const float* mp = m.data_ptr<float>();
        const float* lp = l.data_ptr<float>();
        const float* ap = acc.data_ptr<float>();
#pragma omp parallel for schedule(dynamic, 16)
        for (int64_t t = 0; t < S * rows; ++t) {
            const int64_t st = t / rows, i = t % rows, qi = r0 + i;
            float* sc = scratch.data() + size_t(omp_get_thread_num()) * size_t(std::max<int64_t>(kk, 1));
            const float* qv = qp + (st * lq + qi) * d;
            const int64_t* rs = selp + (st * lq + qi) * kk;
            float mx = mp[t];
            for (int64_t j = 0; j < kk; ++j) {
                const int64_t r = rs[j];
                if (r < 0 || r >= lg) {
                    sc[j] = -std::numeric_limits<float>::infinity();
                    continue;
                }
                float v = dot(qv, kgp + (st * lg + r) * d, d) * scale;
                if (bgp)
                    v += bgp[st * lg + r];
                sc[j] = v;
                mx = std::max(mx, v);
            }
            const float alpha = std::exp(mp[t] - mx);
            float denom = lp[t] * alpha;
            float* o = op + (st * lq + qi) * d;
            const float* a = ap + t * d;
            for (int64_t c = 0; c < d; ++c)
                o[c] = a[c] * alpha;
            for (int64_t j = 0; j < kk; ++j) {
                if (!(sc[j] > -std::numeric_limits<float>::infinity()))
                    continue;
                const float p = std::exp(sc[j] - mx);
                denom += p;
                const float* vv = vgp + (st * lg + rs[j]) * d;
#pragma omp simd
                for (int64_t c = 0; c < d; ++c)
                    o[c] += p * vv[c];
            }
            const float inv = denom > 0.f ? 1.f / denom : 0.f;
            for (int64_t c = 0; c < d; ++c)
                o[c] *= inv;
        }
    }
    return out.to(q_in.device());
}

}  // namespace reel
