#include "ann/ann_attention.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "kernels/sparse_attention.h"

namespace reel {

namespace {

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// "key=value,key=value" after "ann:" -> pairs; throws `usage` on a malformed item.
std::vector<std::pair<std::string, std::string>> split_options(const std::string& text, const std::string& usage) {
    std::vector<std::pair<std::string, std::string>> out;
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ',')) {
        if (item.empty())
            continue;
        const size_t eq = item.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == item.size())
            throw std::runtime_error(usage);
        out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
    }
    return out;
}

int64_t parse_int(const std::string& v, const std::string& usage, int64_t min_value) {
    size_t used = 0;
    int64_t x = 0;
    try {
        x = std::stoll(v, &used);
    } catch (const std::exception&) {
        throw std::runtime_error(usage);
    }
    if (used != v.size() || x < min_value)
        throw std::runtime_error(usage);
    return x;
}

const char* kAttnUsage =
    "--attn: expected 'dense' or 'ann[:index=ivf|hnsw|lsh|flat|topk,k=64,nprobe=8,nlist=N,local=F,sink=S,m=16,"
    "ef=64,bits=512,center=0|1,recall=N]'";
const char* kCrossUsage = "--cross-attn: expected 'dense' or 'ann[:k=32]'";

}  // namespace

std::string AnnAttentionSpec::describe() const {
    if (!enabled)
        return "dense";
    std::ostringstream o;
    o << "ann:index=" << index.type << ",k=" << k;
    if (index.type == "ivf")
        o << ",nprobe=" << index.nprobe << (index.nlist > 0 ? ",nlist=" + std::to_string(index.nlist) : "");
    if (index.type == "hnsw")
        o << ",m=" << index.hnsw_m << ",ef=" << index.ef_search;
    if (index.type == "lsh")
        o << ",bits=" << index.lsh_bits;
    if (local >= 0)
        o << ",local=" << local;
    o << ",sink=" << sink;
    if (!index.center)
        o << ",center=0";
    if (recall > 0)
        o << ",recall=" << recall;
    return o.str();
}

AnnAttentionSpec parse_attn_spec(const std::string& text) {
    AnnAttentionSpec s;
    if (text.empty() || text == "dense")
        return s;
    if (text.rfind("ann", 0) != 0 || (text.size() > 3 && text[3] != ':'))
        throw std::runtime_error(kAttnUsage);
    s.enabled = true;
    for (const auto& [key, v] : split_options(text.size() > 4 ? text.substr(4) : "", kAttnUsage)) {
        if (key == "index") {
            if (v != "ivf" && v != "hnsw" && v != "lsh" && v != "flat" && v != "topk")
                throw std::runtime_error(kAttnUsage);
            s.index.type = v;
        } else if (key == "k") {
            s.k = parse_int(v, kAttnUsage, 1);
        } else if (key == "nprobe") {
            s.index.nprobe = parse_int(v, kAttnUsage, 1);
        } else if (key == "nlist") {
            s.index.nlist = parse_int(v, kAttnUsage, 1);
        } else if (key == "local") {
            s.local = parse_int(v, kAttnUsage, 0);
        } else if (key == "sink") {
            s.sink = parse_int(v, kAttnUsage, 0);
        } else if (key == "m") {
            s.index.hnsw_m = parse_int(v, kAttnUsage, 2);
        } else if (key == "ef") {
            s.index.ef_search = parse_int(v, kAttnUsage, 1);
        } else if (key == "bits") {
            s.index.lsh_bits = parse_int(v, kAttnUsage, 8);
        } else if (key == "recall") {
            s.recall = parse_int(v, kAttnUsage, 0);
        } else if (key == "center") {
            s.index.center = parse_int(v, kAttnUsage, 0) != 0;
        } else {
            throw std::runtime_error(kAttnUsage);
        }
    }
    return s;
}

std::string AnnCrossSpec::describe() const {
    return enabled ? "ann:k=" + std::to_string(k) : "dense";
}

AnnCrossSpec parse_cross_attn_spec(const std::string& text) {
    AnnCrossSpec s;
    if (text.empty() || text == "dense")
        return s;
    if (text.rfind("ann", 0) != 0 || (text.size() > 3 && text[3] != ':'))
        throw std::runtime_error(kCrossUsage);
    s.enabled = true;
    for (const auto& [key, v] : split_options(text.size() > 4 ? text.substr(4) : "", kCrossUsage)) {
        if (key != "k")
            throw std::runtime_error(kCrossUsage);
        s.k = parse_int(v, kCrossUsage, 1);
    }
    return s;
}

int64_t AnnSelfAttention::index_size(int64_t stream) const {
    return stream < int64_t(streams_.size()) && streams_[size_t(stream)].index ? streams_[size_t(stream)].index->size()
                                                                               : 0;
}

at::Tensor AnnSelfAttention::attend(const at::Tensor& q,
                                    const at::Tensor& k,
                                    const at::Tensor& v,
                                    const at::Tensor& bias,
                                    const at::Tensor& id,
                                    const at::Tensor& local,
                                    const at::Tensor& index_k_in,
                                    AnnStats* stats) {
    // q: [S, Lq, D], k, v, index_k: [S, L, D], bias: [S, L], id: [S, L], local: [S, L]
    const int64_t S = q.size(0), lq = q.size(1), d = q.size(2), L = k.size(1);
    if (k.size(0) != S || bias.sizes() != id.sizes() || id.size(0) != S || id.size(1) != L ||
        local.sizes() != id.sizes())
        throw std::runtime_error("AnnSA: expected q [S,Lq,D], k/v [S,L,D], bias/id/local [S,L]");
    const at::Tensor& index_k = index_k_in.defined() ? index_k_in : k;
    double t0 = now_s();
    at::Tensor idc = id.to(at::kCPU, at::kLong).contiguous();
    at::Tensor bc = bias.to(at::kCPU, at::kFloat).contiguous();
    at::Tensor lc = local.to(at::kCPU, at::kBool).contiguous();
    const int64_t* ip = idc.data_ptr<int64_t>();
    const float* bp = bc.data_ptr<float>();
    const bool* lp = lc.data_ptr<bool>();
    if (int64_t(streams_.size()) != S)
        streams_.resize(size_t(S));

    std::vector<std::vector<int64_t>> local_rows(static_cast<size_t>(S));
    double maintain = 0, search = 0;
    int64_t added = 0, removed = 0, pool = 0, max_pool = 0;
    // Per stream: (id, row) of the live non-local entries, sorted by id; the index is brought in step with them.
    std::vector<std::vector<std::pair<int64_t, int64_t>>> curs(static_cast<size_t>(S));
    for (int64_t s = 0; s < S; ++s) {
        double ta = now_s();
        auto& cur = curs[size_t(s)];
        for (int64_t j = 0; j < L; ++j) {
            const int64_t e = s * L + j;
            if (ip[e] < 0 || !(bp[e] > -std::numeric_limits<float>::infinity()))
                continue;
            if (lp[e])
                local_rows[size_t(s)].push_back(j);
            else
                cur.emplace_back(ip[e], j);
        }
        std::sort(cur.begin(), cur.end());
        pool += int64_t(cur.size());
        max_pool = std::max<int64_t>(max_pool, int64_t(cur.size()));
        // Diff against what the index holds: both sorted by id.
        Stream& st = streams_[size_t(s)];
        if (!st.index)
            st.index = make_ann_index(spec_.index, d);
        std::vector<int64_t> add_ids, add_rows, gone, held;
        held.reserve(cur.size());
        size_t a = 0, b = 0;
        while (a < cur.size() || b < st.held.size()) {
            if (b == st.held.size() || (a < cur.size() && cur[a].first < st.held[b])) {
                add_ids.push_back(cur[a].first);
                add_rows.push_back(cur[a].second);
                held.push_back(cur[a].first);
                ++a;
            } else if (a == cur.size() || st.held[b] < cur[a].first) {
                gone.push_back(st.held[b]);
                ++b;
            } else {
                held.push_back(cur[a].first);
                ++a, ++b;
            }
        }
        if (!gone.empty())
            st.index->remove(at::tensor(gone));
        if (!add_ids.empty())
            st.index->add(at::tensor(add_ids), index_k[s].index_select(0, at::tensor(add_rows).to(k.device())));
        st.held = std::move(held);
        added += int64_t(add_ids.size());
        removed += int64_t(gone.size());
        maintain += now_s() - ta;
    }
    // No query can retrieve more than the pool holds: k beyond it only costs.
    const int64_t kk = std::min(spec_.k, max_pool);
    at::Tensor sel = at::full({S, lq, kk}, -1, at::kLong);
    int64_t* selp = sel.data_ptr<int64_t>();
    for (int64_t s = 0; s < S && kk > 0; ++s) {
        const auto& cur = curs[size_t(s)];
        if (cur.empty())
            continue;
        double tb = now_s();
        // Retrieve, then map entry ids back to rows of k.
        auto found = streams_[size_t(s)].index->search(q[s], kk);
        const at::Tensor fid = found.first.contiguous();
        const int64_t* fp = fid.data_ptr<int64_t>();
        for (int64_t i = 0; i < lq * kk; ++i) {
            const int64_t want = fp[i];
            if (want < 0)
                continue;
            auto it = std::lower_bound(cur.begin(), cur.end(), std::make_pair(want, int64_t(-1)));
            if (it != cur.end() && it->first == want)
                selp[s * lq * kk + i] = it->second;
        }
        search += now_s() - tb;
    }
    double tg = now_s();
    // Local rows gathered into [S, Ll, D] (padding rows carry bias -inf).
    int64_t ll = 0;
    for (const auto& r : local_rows)
        ll = std::max<int64_t>(ll, int64_t(r.size()));
    at::Tensor lrows = at::full({S, ll}, -1, at::kLong);
    for (int64_t s = 0; s < S; ++s)
        if (!local_rows[size_t(s)].empty())
            lrows[s].narrow(0, 0, int64_t(local_rows[size_t(s)].size())).copy_(at::tensor(local_rows[size_t(s)]));
    at::Tensor safe = lrows.clamp_min(0).to(k.device());
    at::Tensor kl = k.gather(1, safe.unsqueeze(-1).expand({S, ll, d}));
    at::Tensor vl = v.gather(1, safe.unsqueeze(-1).expand({S, ll, d}));
    at::Tensor bl = bias.to(at::kFloat)
                        .gather(1, safe)
                        .masked_fill(lrows.lt(0).to(k.device()), -std::numeric_limits<float>::infinity());
    double ts = now_s();
    at::Tensor out = sparse_attention(q, kl, vl, bl, k, v, bias, sel);
    double te = now_s();
    last_sel_ = sel;
    last_local_ = lrows;
    if (stats && spec_.recall > 0 && pool > 0) {
        // Everything a query attends: its retrieved rows and the local rows.
        at::Tensor attended = at::cat({sel, lrows.unsqueeze(1).expand({S, lq, ll})}, 2);
        RecallStats r = measure_recall(q, k, bias, attended, spec_.recall);
        stats->recall_sum += r.recall;
        stats->mass_sum += r.mass;
        stats->measured += 1;
    }
    if (stats) {
        stats->queries += S * lq;
        stats->local_keys += ll;
        stats->pool_keys += pool;
        stats->added += added;
        stats->removed += removed;
        stats->maintain_s += maintain;
        stats->search_s += search;
        stats->gather_s += (ts - tg) + (tg - t0 - maintain - search);
        stats->attend_s += te - ts;
    }
    return out;
}

at::Tensor ann_cross_attention(const at::Tensor& q,
                               const at::Tensor& k,
                               const at::Tensor& v,
                               int64_t tokens_per_frame,
                               int64_t top_k) {
    // q: [B, L, N, D], k, v: [B, T, N, D]
    const int64_t b = q.size(0), l = q.size(1), n = q.size(2), d = q.size(3), t = k.size(1);
    const int64_t s = tokens_per_frame, f = l / s;
    if (f * s != l)
        throw std::runtime_error("AnnCA: query count is not a multiple of the tokens per frame");
    const int64_t kk = std::min(top_k, t);
    at::Tensor qh = q.permute({0, 2, 1, 3}).reshape({b, n, f, s, d});  // [B, N, F, S, D]
    at::Tensor kh = k.permute({0, 2, 1, 3});                           // [B, N, T, D]
    at::Tensor vh = v.permute({0, 2, 1, 3});
    // Token relevance for a frame: its mean query against each prompt key (a sketch of the frame's queries).
    at::Tensor score = at::matmul(qh.mean(3), kh.transpose(2, 3));  // [B, N, F, T]
    at::Tensor idx = std::get<1>(score.topk(kk, -1));               // [B, N, F, kk]
    at::Tensor gi = idx.unsqueeze(-1).expand({b, n, f, kk, d});
    at::Tensor ks = kh.unsqueeze(2).expand({b, n, f, t, d}).gather(3, gi);  // [B, N, F, kk, D]
    at::Tensor vs = vh.unsqueeze(2).expand({b, n, f, t, d}).gather(3, gi);
    at::Tensor p = at::softmax(at::matmul(qh, ks.transpose(3, 4)).mul_(1.0 / std::sqrt(double(d))), -1);
    at::Tensor o = at::matmul(p, vs);  // [B, N, F, S, D]
    return o.reshape({b, n, l, d}).permute({0, 2, 1, 3}).contiguous();
}

RecallStats measure_recall(const at::Tensor& q_in,
                           const at::Tensor& k_in,
                           const at::Tensor& bias_in,
                           const at::Tensor& attended_in,
                           int64_t top_n) {
    // q: [S, Lq, D], k: [S, L, D], bias: [S, L], attended: [S, Lq, K]
    at::Tensor q = q_in.to(at::kCPU, at::kFloat), k = k_in.to(at::kCPU, at::kFloat);
    at::Tensor att = attended_in.to(at::kCPU, at::kLong);
    const int64_t S = q.size(0), lq = q.size(1), L = k.size(1);
    const double scale = 1.0 / std::sqrt(double(q.size(2)));
    double rsum = 0, msum = 0;
    int64_t count = 0;
    constexpr int64_t kRows = 128;
    for (int64_t s = 0; s < S; ++s) {
        for (int64_t r = 0; r < lq; r += kRows) {
            const int64_t rows = std::min(kRows, lq - r);
            at::Tensor sc = at::matmul(q[s].narrow(0, r, rows), k[s].t()).mul_(scale);  // [rows, L]
            if (bias_in.defined())
                sc.add_(bias_in[s].to(at::kCPU, at::kFloat).unsqueeze(0));
            at::Tensor p = at::softmax(sc, -1);
            at::Tensor a = att[s].narrow(0, r, rows);
            at::Tensor mask = at::zeros({rows, L + 1}, at::kFloat);
            mask.scatter_(1, at::where(a.lt(0), at::full_like(a, L), a), 1.0f);
            mask = mask.narrow(1, 0, L);
            const int64_t n = std::min(top_n, L);
            at::Tensor top = std::get<1>(sc.topk(n, 1));
            // Only keys with a finite score can be "true top" keys.
            at::Tensor valid = std::get<0>(sc.topk(n, 1)).gt(-1e30);
            at::Tensor hit = mask.gather(1, top).mul(valid.to(at::kFloat));
            rsum += (hit.sum(1) / valid.sum(1).clamp_min(1).to(at::kFloat)).sum().item<double>();
            msum += (p * mask).sum(1).sum().item<double>();
            count += rows;
        }
    }
    RecallStats out;
    out.recall = count ? rsum / double(count) : 0;
    out.mass = count ? msum / double(count) : 0;
    return out;
}

}  // namespace reel
