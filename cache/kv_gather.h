// Reading chosen entries of a cache without materializing it: sparse attention needs the metadata of every entry
// (to keep its index in step and to know which entries are local), but keys and values only for the few entries
// it attends. Rows are numbered in KVCache::read's order, which stays fixed while nothing is written; streams are
// s = b * N + n.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "cache/kv_cache.h"

namespace reel {

struct KVMeta {
    at::Tensor id;    // [S, L] int64 stable entry id, -1 empty
    at::Tensor bias;  // [S, L] float32 logit bias, -inf empty
    at::Tensor last;  // [S, L] int64 newest frame the entry stands for, -1 empty
};
KVMeta read_meta(const KVCache& cache, int layer, int64_t max_block);

// Gathered entries: stream s holds rows[s].size() of them, then padding (bias -inf, zero k/v, tpos 0, spos 0).
struct KVRows {
    at::Tensor k, v;  // [S, R, D] store dtype, k before RoPE
    at::Tensor tpos;  // [S, R] float32 RoPE time position
    at::Tensor spos;  // [S, R] int64 token inside the frame
    at::Tensor bias;  // [S, R] float32
};
using RowLists = std::vector<std::vector<int64_t>>;  // per stream, ascending rows in read order

// One read pass for several row sets: returns one KVRows per set. Copies only the rows asked for.
std::vector<KVRows> gather_rows(const KVCache& cache,
                                int layer,
                                int64_t max_block,
                                const std::vector<const RowLists*>& sets);

}  // namespace reel
