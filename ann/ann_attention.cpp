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

at::Tensor pad_rows(const std::vector<std::vector<int64_t>>& rows) {
    size_t r = 0;
    for (const auto& l : rows)
        r = std::max(r, l.size());
    at::Tensor out = at::full({int64_t(rows.size()), int64_t(r)}, -1, at::kLong);
    int64_t* p = out.data_ptr<int64_t>();
    for (size_t s = 0; s < rows.size(); ++s)
        std::copy(rows[s].begin(), rows[s].end(), p + s * r);
    return out;
}

at::Tensor compact_selection(const at::Tensor& sel, std::vector<std::vector<int64_t>>* rows) {
    // sel: [S, Lq, K]
    const int64_t S = sel.size(0), n = sel.size(1) * sel.size(2);
    at::Tensor out = sel.to(at::kCPU, at::kLong).clone().contiguous();
    int64_t* p = out.data_ptr<int64_t>();
    rows->assign(size_t(S), {});
    for (int64_t s = 0; s < S; ++s) {
        std::vector<int64_t>& rs = (*rows)[size_t(s)];
        int64_t* r = p + s * n;
        for (int64_t i = 0; i < n; ++i)
            if (r[i] >= 0)
                rs.push_back(r[i]);
        std::sort(rs.begin(), rs.end());
        rs.erase(std::unique(rs.begin(), rs.end()), rs.end());
        for (int64_t i = 0; i < n; ++i)
            if (r[i] >= 0)
                r[i] = std::lower_bound(rs.begin(), rs.end(), r[i]) - rs.begin();
    }
    return out;
}

void AnnSelfAttention::sync(const at::Tensor& id, const at::Tensor& bias, const at::Tensor& local, AnnStats* stats) {
    // id, bias, local: [S, L]
    const int64_t S = id.size(0), L = id.size(1);
    if (id.dim() != 2 || bias.sizes() != id.sizes() || local.sizes() != id.sizes())
        throw std::runtime_error("AnnSA: expected id, bias and local as [S, L]");
    const double t0 = now_s();
    const at::Tensor idc = id.to(at::kCPU, at::kLong).contiguous();
    const at::Tensor bc = bias.to(at::kCPU, at::kFloat).contiguous();
    const at::Tensor lc = local.to(at::kCPU, at::kBool).contiguous();
    const int64_t* ip = idc.data_ptr<int64_t>();
    const float* bp = bc.data_ptr<float>();
    const bool* lp = lc.data_ptr<bool>();
    if (int64_t(streams_.size()) != S)
        streams_.resize(size_t(S));
    new_rows_.assign(size_t(S), {});
    local_rows_.assign(size_t(S), {});
    int64_t removed = 0, pool = 0;
    for (int64_t s = 0; s < S; ++s) {
        Stream& st = streams_[size_t(s)];
        st.pool.clear();
        for (int64_t j = 0; j < L; ++j) {
            const int64_t e = s * L + j;
            if (ip[e] < 0 || !(bp[e] > -std::numeric_limits<float>::infinity()))
                continue;
            if (lp[e])
                local_rows_[size_t(s)].push_back(j);
            else
                st.pool.emplace_back(ip[e], j);
        }
        std::sort(st.pool.begin(), st.pool.end());
        pool += int64_t(st.pool.size());
        // Diff against what the index holds: both sorted by id.
        std::vector<int64_t> gone, held;
        std::vector<std::pair<int64_t, int64_t>> fresh;  // (row, id): added in row order
        held.reserve(st.pool.size());
        size_t a = 0, b = 0;
        while (a < st.pool.size() || b < st.held.size()) {
            if (b == st.held.size() || (a < st.pool.size() && st.pool[a].first < st.held[b])) {
                fresh.emplace_back(st.pool[a].second, st.pool[a].first);
                held.push_back(st.pool[a].first);
                ++a;
            } else if (a == st.pool.size() || st.held[b] < st.pool[a].first) {
                gone.push_back(st.held[b]);
                ++b;
            } else {
                held.push_back(st.pool[a].first);
                ++a, ++b;
            }
        }
        if (!gone.empty()) {
            if (!st.index)
                throw std::runtime_error("AnnSA: index state lost");
            st.index->remove(at::tensor(gone));
        }
        std::sort(fresh.begin(), fresh.end());
        st.pending.clear();
        for (const auto& [row, eid] : fresh) {
            new_rows_[size_t(s)].push_back(row);
            st.pending.push_back(eid);
        }
        st.held = std::move(held);
        removed += int64_t(gone.size());
    }
    if (stats) {
        stats->removed += removed;
        stats->pool_keys += pool;
        stats->maintain_s += now_s() - t0;
    }
}

void AnnSelfAttention::add_keys(const at::Tensor& keys, AnnStats* stats) {
    // keys: [S, R, D]
    const double t0 = now_s();
    int64_t added = 0;
    for (size_t s = 0; s < streams_.size(); ++s) {
        Stream& st = streams_[s];
        if (st.pending.empty())
            continue;
        const int64_t n = int64_t(st.pending.size());
        if (keys.dim() != 3 || keys.size(0) != int64_t(streams_.size()) || keys.size(1) < n)
            throw std::runtime_error("AnnSA: add_keys expects [S, R, D] with a row per new entry");
        if (!st.index)
            st.index = make_ann_index(spec_.index, keys.size(2));
        st.index->add(at::tensor(st.pending), keys[int64_t(s)].narrow(0, 0, n));
        added += n;
        st.pending.clear();
    }
    if (stats) {
        stats->added += added;
        stats->maintain_s += now_s() - t0;
    }
}

at::Tensor AnnSelfAttention::search(const at::Tensor& q, AnnStats* stats) {
    // q: [S, Lq, D]
    const int64_t S = q.size(0), lq = q.size(1);
    if (int64_t(streams_.size()) != S)
        throw std::runtime_error("AnnSA: search before sync, or with another stream count");
    const double t0 = now_s();
    size_t max_pool = 0;
    for (const Stream& st : streams_)
        max_pool = std::max(max_pool, st.pool.size());
    // No query can retrieve more than the pool holds: k beyond it only costs.
    const int64_t kk = std::min<int64_t>(spec_.k, int64_t(max_pool));
    at::Tensor sel = at::full({S, lq, kk}, -1, at::kLong);
    int64_t* selp = sel.data_ptr<int64_t>();
    for (int64_t s = 0; s < S && kk > 0; ++s) {
        const Stream& st = streams_[size_t(s)];
        if (st.pool.empty())
            continue;
        int64_t* row = selp + s * lq * kk;
        if (int64_t(st.pool.size()) <= kk) {
            // The whole pool fits: every query attends to all of it, which is what an exact search returns.
            for (int64_t i = 0; i < lq; ++i)
                for (size_t j = 0; j < st.pool.size(); ++j)
                    row[i * kk + int64_t(j)] = st.pool[j].second;
            continue;
        }
        if (!st.index || !st.pending.empty())
            throw std::runtime_error("AnnSA: search before add_keys");
        // Retrieve, then map entry ids back to rows.
        auto found = st.index->search(q[s], kk);
        const at::Tensor fid = found.first.contiguous();
        const int64_t* fp = fid.data_ptr<int64_t>();
        for (int64_t i = 0; i < lq * kk; ++i) {
            const int64_t want = fp[i];
            if (want < 0)
                continue;
            auto it = std::lower_bound(st.pool.begin(), st.pool.end(), std::make_pair(want, int64_t(-1)));
            if (it != st.pool.end() && it->first == want)
                row[i] = it->second;
        }
    }
    if (stats) {
        stats->queries += S * lq;
        stats->search_s += now_s() - t0;
    }
    return sel;
}

void AnnSelfAttention::record_recall(const at::Tensor& q,
                                     const at::Tensor& k,
                                     const at::Tensor& bias,
                                     const at::Tensor& sel,
                                     AnnStats* stats) const {
    // q: [S, Lq, D], k: [S, L, D], bias: [S, L], sel: [S, Lq, K]
    if (!stats || spec_.recall <= 0 || sel.size(2) == 0)
        return;
    // Everything a query attends: its retrieved rows and the local rows.
    const at::Tensor lrows = pad_rows(local_rows_);
    const at::Tensor attended = at::cat({sel, lrows.unsqueeze(1).expand({sel.size(0), sel.size(1), lrows.size(1)})}, 2);
    const RecallStats r = measure_recall(q, k, bias, attended, spec_.recall);
    stats->recall_sum += r.recall;
    stats->mass_sum += r.mass;
    stats->measured += 1;
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
    const int64_t S = q.size(0), d = q.size(2), L = k.size(1);
    if (k.size(0) != S || id.size(0) != S || id.size(1) != L)
        throw std::runtime_error("AnnSA: expected q [S,Lq,D], k/v [S,L,D], bias/id/local [S,L]");
    const at::Tensor& index_k = index_k_in.defined() ? index_k_in : k;
    sync(id, bias, local, stats);
    const at::Tensor nrows = pad_rows(new_rows_);
    if (nrows.size(1) > 0)
        add_keys(index_k.gather(1, nrows.clamp_min(0).to(k.device()).unsqueeze(-1).expand({S, nrows.size(1), d})),
                 stats);
    at::Tensor sel = search(q, stats);
    const double tg = now_s();
    // Local rows gathered into [S, Ll, D] (padding rows carry bias -inf).
    const at::Tensor lrows = pad_rows(local_rows_);
    const int64_t ll = lrows.size(1);
    at::Tensor safe = lrows.clamp_min(0).to(k.device());
    at::Tensor kl = k.gather(1, safe.unsqueeze(-1).expand({S, ll, d}));
    at::Tensor vl = v.gather(1, safe.unsqueeze(-1).expand({S, ll, d}));
    at::Tensor bl = bias.to(at::kFloat)
                        .gather(1, safe)
                        .masked_fill(lrows.lt(0).to(k.device()), -std::numeric_limits<float>::infinity());
    const double ts = now_s();
    at::Tensor out = sparse_attention(q, kl, vl, bl, k, v, bias, sel);
    const double te = now_s();
    last_sel_ = sel;
    last_local_ = lrows;
    record_recall(q, k, bias, sel, stats);
    if (stats) {
        stats->local_keys += ll;
        stats->gather_s += ts - tg;
        stats->attend_s += te - ts;
    }
    return out;
}

at::Tensor ann_cross_attention(const at::Tensor& q,
                               const at::Tensor& k,
                               const at::Tensor& v,
                               int64_t tokens_per_frame,
                               int64_t top_k,
                               const at::Tensor& bias) {
    // q: [B, L, N, D], k, v: [B, T, N, D], bias: [B, T]
    const int64_t b = q.size(0), l = q.size(1), n = q.size(2), d = q.size(3), t = k.size(1);
    const int64_t s = tokens_per_frame, f = l / s;
    if (f * s != l)
        throw std::runtime_error("AnnCA: query count is not a multiple of the tokens per frame");
    if (bias.defined() && (bias.dim() != 2 || bias.size(0) != b || bias.size(1) != t))
        throw std::runtime_error("AnnCA: bias must be [B, T]");
    const int64_t kk = std::min(top_k, t);
    const double scale = 1.0 / std::sqrt(double(d));
    at::Tensor qh = q.permute({0, 2, 1, 3}).reshape({b, n, f, s, d});  // [B, N, F, S, D]
    at::Tensor kh = k.permute({0, 2, 1, 3});                           // [B, N, T, D]
    at::Tensor vh = v.permute({0, 2, 1, 3});
    at::Tensor bh = bias.defined() ? bias.to(q.scalar_type()).view({b, 1, 1, t}) : at::Tensor();
    // Token relevance for a frame: its mean query against each prompt key (a sketch of the frame's queries), plus
    // the row's bias, so a row standing for many identical ones weighs what they weigh together.
    at::Tensor score = at::matmul(qh.mean(3), kh.transpose(2, 3)).mul_(scale);  // [B, N, F, T]
    if (bh.defined())
        score = score + bh;
    at::Tensor idx = std::get<1>(score.topk(kk, -1));  // [B, N, F, kk]
    at::Tensor gi = idx.unsqueeze(-1).expand({b, n, f, kk, d});
    at::Tensor ks = kh.unsqueeze(2).expand({b, n, f, t, d}).gather(3, gi);  // [B, N, F, kk, D]
    at::Tensor vs = vh.unsqueeze(2).expand({b, n, f, t, d}).gather(3, gi);
    at::Tensor logits = at::matmul(qh, ks.transpose(3, 4)).mul_(scale);  // [B, N, F, S, kk]
    if (bh.defined())
        logits = logits + bh.expand({b, n, f, t}).gather(3, idx).unsqueeze(3);
    at::Tensor o = at::matmul(at::softmax(logits, -1), vs);  // [B, N, F, S, D]
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
