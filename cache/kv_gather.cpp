#include "cache/kv_gather.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace reel {

KVMeta read_meta(const KVCache& cache, int layer, int64_t max_block) {
    std::vector<at::Tensor> ids, biases, lasts;
    cache.read(layer, max_block, [&](const KVBlock& blk) {
        // blk.id: [B, N, Lb] -> [S, Lb]; the block's tensors are views, so keep copies.
        const int64_t s = blk.id.size(0) * blk.id.size(1), lb = blk.id.size(2);
        ids.push_back(blk.id.reshape({s, lb}).to(at::kCPU, at::kLong, false, true));
        biases.push_back(blk.bias.reshape({s, lb}).to(at::kCPU, at::kFloat, false, true));
        lasts.push_back(blk.last.reshape({s, lb}).to(at::kCPU, at::kLong, false, true));
    });
    if (ids.empty())
        throw std::runtime_error("read_meta: the cache holds nothing for layer " + std::to_string(layer));
    KVMeta m;
    m.id = ids.size() == 1 ? ids[0] : at::cat(ids, 1);
    m.bias = biases.size() == 1 ? biases[0] : at::cat(biases, 1);
    m.last = lasts.size() == 1 ? lasts[0] : at::cat(lasts, 1);
    return m;
}

std::vector<KVRows> gather_rows(const KVCache& cache,
                                int layer,
                                int64_t max_block,
                                const std::vector<const RowLists*>& sets) {
    std::vector<KVRows> out(sets.size());
    std::vector<std::vector<size_t>> next(sets.size());  // per set and stream: first row not yet copied
    int64_t offset = 0;
    bool first = true;
    cache.read(layer, max_block, [&](const KVBlock& blk) {
        // blk.k: [B, N, Lb, D] -> [S, Lb, D]
        const int64_t S = blk.k.size(0) * blk.k.size(1), lb = blk.k.size(2), d = blk.k.size(3);
        if (first) {
            for (size_t i = 0; i < sets.size(); ++i) {
                const RowLists& rows = *sets[i];
                if (int64_t(rows.size()) != S)
                    throw std::runtime_error("gather_rows: row lists do not match the cache's streams");
                size_t r = 0;
                for (const auto& l : rows)
                    r = std::max(r, l.size());
                const int64_t R = int64_t(r);
                out[i].k = at::zeros({S, R, d}, blk.k.options());
                out[i].v = at::zeros({S, R, d}, blk.v.options());
                out[i].tpos = at::zeros({S, R}, blk.tpos.options());
                out[i].spos = at::zeros({S, R}, blk.spos.options());
                out[i].bias = at::full({S, R}, -std::numeric_limits<float>::infinity(), blk.bias.options());
                next[i].assign(size_t(S), 0);
            }
            first = false;
        }
        const at::Tensor k = blk.k.reshape({S, lb, d}), v = blk.v.reshape({S, lb, d});
        const at::Tensor tp = blk.tpos.reshape({S, lb}), sp = blk.spos.reshape({S, lb}), bs = blk.bias.reshape({S, lb});
        for (size_t i = 0; i < sets.size(); ++i) {
            const RowLists& rows = *sets[i];
            for (int64_t s = 0; s < S; ++s) {
                const std::vector<int64_t>& rs = rows[size_t(s)];
                const size_t a = next[i][size_t(s)];
                size_t b = a;
                while (b < rs.size() && rs[b] < offset + lb)
                    ++b;
                if (b == a)
                    continue;
                std::vector<int64_t> local(b - a);
                for (size_t j = a; j < b; ++j)
                    local[j - a] = rs[j] - offset;
                const at::Tensor idx = at::tensor(local).to(k.device());
                const int64_t n = int64_t(b - a), at0 = int64_t(a);
                out[i].k[s].narrow(0, at0, n).copy_(k[s].index_select(0, idx));
                out[i].v[s].narrow(0, at0, n).copy_(v[s].index_select(0, idx));
                out[i].tpos[s].narrow(0, at0, n).copy_(tp[s].index_select(0, idx));
                out[i].spos[s].narrow(0, at0, n).copy_(sp[s].index_select(0, idx));
                out[i].bias[s].narrow(0, at0, n).copy_(bs[s].index_select(0, idx));
                next[i][size_t(s)] = b;
            }
        }
        offset += lb;
    });
    for (size_t i = 0; i < sets.size(); ++i)
        for (size_t s = 0; s < next[i].size(); ++s)
            if (next[i][s] != (*sets[i])[s].size())
                throw std::runtime_error("gather_rows: a row lies past the cache's last entry");
    return out;
}

}  // namespace reel
