// Approximate nearest-neighbour (maximum inner product) indexes over attention keys, one per (layer, stream),
// maintained as cache entries come and go. FAISS (Debian's CPU library) backs the exact reference (flat), IVF,
// HNSW and LSH; a LibTorch exact top-k works on any device (CUDA included) and is the test reference.
//
// Query/key mismatch: queries are not drawn from the key distribution, so nearest-neighbour structures built on
// keys alone place them badly. Two transforms that leave the inner-product ranking of every query unchanged are
// applied where they help: centring (k - mu: shifts each query's scores by the constant q.mu) and, for LSH, the
// inner-product-to-cosine lift [k - mu, sqrt(M^2 - |k - mu|^2)] with queries [q, 0] (all keys then have norm M,
// so the largest inner product is the smallest angle, which sign random projections estimate).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

namespace reel {

struct AnnIndexSpec {
    std::string type = "ivf";  // flat | ivf | hnsw | lsh | topk
    int64_t nlist = 0;         // IVF lists; 0 = about 4 sqrt(n) at training time, in [16, 4096]
    int64_t nprobe = 8;        // IVF lists probed per query
    int64_t min_train = 1024;  // IVF: keys needed before training (searched exactly until then)
    int64_t hnsw_m = 16;       // HNSW neighbours per node
    int64_t ef_search = 64;    // HNSW search breadth (raised to k when smaller)
    int64_t lsh_bits = 512;    // LSH code bits
    bool center = true;        // centre keys by the mean of the first batch added (ranking unchanged)
};

class AnnIndex {
  public:
    virtual ~AnnIndex();
    // ids: [n] int64 (unique, not already present), keys: [n, D].
    virtual void add(const at::Tensor& ids, const at::Tensor& keys) = 0;
    // ids: [n] int64; absent ids are ignored.
    virtual void remove(const at::Tensor& ids) = 0;
    // queries: [nq, D] -> (ids [nq, k] int64, scores [nq, k] float32), best first; -1 / -inf where fewer than k
    // keys are found. Scores are the index's own (after its transforms): use them for ranking only.
    virtual std::pair<at::Tensor, at::Tensor> search(const at::Tensor& queries, int64_t k) const = 0;
    virtual int64_t size() const = 0;
    // Full rebuilds so far (indexes that cannot remove in place rebuild once enough entries are dead).
    virtual int64_t rebuilds() const { return 0; }
    virtual std::string name() const = 0;
};

// dim: key dimension. Throws on an unknown type.
std::unique_ptr<AnnIndex> make_ann_index(const AnnIndexSpec& spec, int64_t dim);

}  // namespace reel
