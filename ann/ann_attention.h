// ANN-sparse attention (FAST-AR's AnnSA / AnnCA). AnnSA: each query attends exactly to the local entries (sink
// frames, the chunk and the recent frames before it) plus the k entries an index retrieves for it from the rest
// of the cache; one softmax over both through a log-sum-exp merge (kernels/sparse_attention.h), cache biases
// (merged-entry multiplicity, -inf empty slots) included. AnnCA: each latent frame attends only to the k prompt
// tokens that score highest against its mean query.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ann/ann_index.h"

namespace reel {

struct AnnAttentionSpec {
    bool enabled = false;  // false: dense attention
    AnnIndexSpec index;
    int64_t k = 64;      // entries retrieved per query
    int64_t local = -1;  // frames before the chunk attended exactly; -1 = one chunk
    int64_t sink = 1;    // first frames always attended exactly (plus the frames before a window cache's gap)
    int64_t recall = 0;  // > 0: measure recall of each query's true top-`recall` keys and softmax mass (slow)
    std::string describe() const;
};

// "dense" | "ann[:index=ivf|hnsw|lsh|flat|topk,k=64,nprobe=8,nlist=N,local=F,sink=S,m=16,ef=64,bits=512,
// center=0|1]". Throws with the accepted syntax on anything else.
AnnAttentionSpec parse_attn_spec(const std::string& text);

struct AnnCrossSpec {
    bool enabled = false;
    int64_t k = 32;  // prompt tokens per frame
    std::string describe() const;
};
// "dense" | "ann[:k=32]".
AnnCrossSpec parse_cross_attn_spec(const std::string& text);

struct AnnStats {
    int64_t queries = 0, local_keys = 0, pool_keys = 0, added = 0, removed = 0;
    double search_s = 0, maintain_s = 0, attend_s = 0, gather_s = 0;
    // With spec.recall: sums over measured calls (divide by `measured`), pool queries only.
    double recall_sum = 0, mass_sum = 0;
    int64_t measured = 0;
};

// One layer's AnnSA state: an index per stream (batch x head), kept in step with the entries the cache holds by
// diffing entry ids at every call (new non-local ids are added, vanished ones removed; TempCache merges keep the
// surviving entry's id and key, so they need nothing).
//
// attend() runs the phases over materialized tensors (tests, benchmarks). The DiT runs them itself so that it
// copies out of the cache store only the keys it attends: sync() on every entry's metadata, add_keys() for the
// rows sync() lists as new, search(), then sparse_attention over the gathered local and selected rows.
class AnnSelfAttention {
  public:
    explicit AnnSelfAttention(const AnnAttentionSpec& spec) : spec_(spec) {}
    // id: [S, L] int64 stable entry ids (-1 empty); bias: [S, L] (-inf empty); local: [S, L] bool entries attended
    // exactly. Rows are the caller's numbering of the entries (the cache's read order). Removes vanished entries
    // from the indexes and lists, per stream, the rows of new pool entries and of local entries (ascending).
    void sync(const at::Tensor& id, const at::Tensor& bias, const at::Tensor& local, AnnStats* stats = nullptr);
    const std::vector<std::vector<int64_t>>& new_rows() const { return new_rows_; }
    const std::vector<std::vector<int64_t>>& local_rows() const { return local_rows_; }
    // keys: [S, R, D] the index keys of new_rows() (stream s: its first new_rows()[s].size() rows), roped at
    // positions that stay fixed over an entry's life.
    void add_keys(const at::Tensor& keys, AnnStats* stats = nullptr);
    // q: [S, Lq, D] roped queries -> [S, Lq, K] rows of the pool entries each query attends (-1 none),
    // K = min(k, largest pool). A stream whose pool fits in K attends to all of it without a search (exact).
    at::Tensor search(const at::Tensor& q, AnnStats* stats = nullptr);
    // With spec.recall: adds to stats the recall and softmax mass of what the last sync/search attends. q: the
    // searched queries; k, bias: [S, L, D] / [S, L] every entry in sync's row order (k roped); sel: search's result.
    // Calls with nothing to retrieve are not counted (their recall is trivially 1).
    void record_recall(const at::Tensor& q,
                       const at::Tensor& k,
                       const at::Tensor& bias,
                       const at::Tensor& sel,
                       AnnStats* stats) const;
    bool measures_recall() const { return spec_.recall > 0; }

    // q: [S, Lq, D] roped queries; k, v: [S, L, D] every entry as attention sees it (k roped); bias: [S, L] (-inf =
    // empty); id: [S, L] int64 stable entry ids (-1 empty); local: [S, L] bool entries attended exactly;
    // index_k: [S, L, D] the keys the index should hold (roped at absolute-equivalent positions, stable over an
    // entry's life) or undefined (= k). Returns [S, Lq, D] float32.
    at::Tensor attend(const at::Tensor& q,
                      const at::Tensor& k,
                      const at::Tensor& v,
                      const at::Tensor& bias,
                      const at::Tensor& id,
                      const at::Tensor& local,
                      const at::Tensor& index_k = at::Tensor(),
                      AnnStats* stats = nullptr);
    // Rows of k selected for each query by the last attend(): [S, Lq, K] int64 (-1 none); local rows: [S, Ll]
    // (-1 padding). For recall measurements.
    const at::Tensor& last_selection() const { return last_sel_; }
    const at::Tensor& last_local_rows() const { return last_local_; }
    void reset() { streams_.clear(); }
    int64_t index_size(int64_t stream) const;

  private:
    struct Stream {
        std::unique_ptr<AnnIndex> index;
        std::vector<int64_t> held;                      // ids in the index, sorted
        std::vector<std::pair<int64_t, int64_t>> pool;  // (id, row) of the live pool entries, sorted by id
        std::vector<int64_t> pending;                   // ids of new_rows, awaiting add_keys
    };
    AnnAttentionSpec spec_;
    std::vector<Stream> streams_;
    std::vector<std::vector<int64_t>> new_rows_, local_rows_;
    at::Tensor last_sel_, last_local_;
};

// Rows per stream as one [S, R] int64 tensor, -1 padding.
at::Tensor pad_rows(const std::vector<std::vector<int64_t>>& rows);
// sel: [S, Lq, K] rows (-1 none) -> per stream the distinct rows any query selected (ascending), and sel renumbered
// to positions in that list (what a gather of those rows produces).
at::Tensor compact_selection(const at::Tensor& sel, std::vector<std::vector<int64_t>>* rows);

// Cross-attention restricted per frame. q: [B, L, N, D] with L = frames * tokens_per_frame (frame-major);
// k, v: [B, T, N, D] prompt keys/values; bias: [B, T] logit bias (log multiplicity of a row standing for several
// identical ones, -inf for none) or undefined. Returns [B, L, N, D]. k >= T gives dense attention exactly.
at::Tensor ann_cross_attention(const at::Tensor& q,
                               const at::Tensor& k,
                               const at::Tensor& v,
                               int64_t tokens_per_frame,
                               int64_t top_k,
                               const at::Tensor& bias = at::Tensor());

struct RecallStats {
    double recall = 0;  // share of each query's true top-n keys among those it attends, averaged
    double mass = 0;    // share of each query's dense softmax mass on the keys it attends, averaged
};
// q: [S, Lq, D]; k: [S, L, D]; bias: [S, L] or undefined; attended: [S, Lq, K] rows each query attends (-1 none;
// local rows included by the caller). top_n: true top keys counted for recall.
RecallStats measure_recall(const at::Tensor& q,
                           const at::Tensor& k,
                           const at::Tensor& bias,
                           const at::Tensor& attended,
                           int64_t top_n);

}  // namespace reel
