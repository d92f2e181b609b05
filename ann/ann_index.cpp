#include "ann/ann_index.h"

#include <ATen/ATen.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexLSH.h>
#include <faiss/impl/IDSelector.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <unordered_map>
#include <vector>

namespace reel {

AnnIndex::~AnnIndex() = default;

namespace {

at::Tensor cpu_f32(const at::Tensor& t) {
    return t.to(at::kCPU, at::kFloat).contiguous();
}
at::Tensor cpu_i64(const at::Tensor& t) {
    return t.to(at::kCPU, at::kLong).contiguous();
}

// Fixed centring: the mean of the first batch. Stored vectors are not revisited, so mu never changes afterwards.
struct Centre {
    bool on = true;
    at::Tensor mu;  // [D]
    // keys: [n, D] float32 CPU -> centred copy (or keys itself when off)
    at::Tensor apply(const at::Tensor& keys) {
        if (!on)
            return keys;
        if (!mu.defined())
            mu = keys.size(0) ? keys.mean(0) : at::zeros({keys.size(1)}, keys.options());
        return (keys - mu).contiguous();
    }
};

// (labels, distances) buffers of a FAISS search -> tensors, with FAISS's -1 labels mapped to -inf scores.
std::pair<at::Tensor, at::Tensor> faiss_search(const faiss::Index& index, const at::Tensor& q, int64_t k) {
    // q: [nq, D] float32 CPU contiguous
    const int64_t nq = q.size(0);
    at::Tensor ids = at::full({nq, k}, -1, at::kLong);
    at::Tensor sc = at::full({nq, k}, -std::numeric_limits<float>::infinity(), at::kFloat);
    if (index.ntotal == 0 || nq == 0 || k == 0)
        return {ids, sc};
    index.search(nq, q.data_ptr<float>(), k, sc.data_ptr<float>(), ids.data_ptr<int64_t>());
    sc.masked_fill_(ids.lt(0), -std::numeric_limits<float>::infinity());
    return {ids, sc};
}

// Exact inner product, FAISS's flat index under an id map (removal compacts in place).
class FlatIndex : public AnnIndex {
  public:
    explicit FlatIndex(int64_t d, bool center) : flat_(d), map_(&flat_) { centre_.on = center; }
    void add(const at::Tensor& ids, const at::Tensor& keys) override {
        at::Tensor k = centre_.apply(cpu_f32(keys)), i = cpu_i64(ids);
        map_.add_with_ids(k.size(0), k.data_ptr<float>(), i.data_ptr<int64_t>());
    }
    void remove(const at::Tensor& ids) override {
        at::Tensor i = cpu_i64(ids);
        if (i.numel() == 0)
            return;
        faiss::IDSelectorBatch sel(i.numel(), i.data_ptr<int64_t>());
        map_.remove_ids(sel);
    }
    std::pair<at::Tensor, at::Tensor> search(const at::Tensor& q, int64_t k) const override {
        return faiss_search(map_, cpu_f32(q), k);
    }
    int64_t size() const override { return map_.ntotal; }
    std::string name() const override { return "flat"; }

  private:
    faiss::IndexFlatIP flat_;
    faiss::IndexIDMap2 map_;
    Centre centre_;
};

// IVF-Flat, inner product. Trained once, on the keys present when there are first min_train of them; until then
// searched exactly. Removal is in place (list scan).
class IvfIndex : public AnnIndex {
  public:
    IvfIndex(int64_t d, const AnnIndexSpec& spec) : d_(d), spec_(spec), quantizer_(d) { centre_.on = spec.center; }
    void add(const at::Tensor& ids, const at::Tensor& keys) override {
        at::Tensor k = cpu_f32(keys), i = cpu_i64(ids);
        if (ivf_) {
            k = centre_.apply(k);
            ivf_->add_with_ids(k.size(0), k.data_ptr<float>(), i.data_ptr<int64_t>());
            if (ivf_->ntotal > 8 * trained_n_)
                retrain();  // lists sized for a much smaller cache would make every probe scan too much
            return;
        }
        pend_keys_ = pend_keys_.defined() ? at::cat({pend_keys_, k}) : k.clone();
        pend_ids_ = pend_ids_.defined() ? at::cat({pend_ids_, i}) : i.clone();
        if (pend_ids_.numel() >= spec_.min_train)
            train();
    }
    void remove(const at::Tensor& ids) override {
        at::Tensor i = cpu_i64(ids);
        if (i.numel() == 0)
            return;
        if (ivf_) {
            faiss::IDSelectorBatch sel(i.numel(), i.data_ptr<int64_t>());
            ivf_->remove_ids(sel);
        } else if (pend_ids_.defined()) {
            at::Tensor keep = at::isin(pend_ids_, i).logical_not();
            pend_ids_ = pend_ids_.masked_select(keep);
            pend_keys_ = pend_keys_.index({keep});
        }
    }
    std::pair<at::Tensor, at::Tensor> search(const at::Tensor& q_in, int64_t k) const override {
        at::Tensor q = cpu_f32(q_in);
        if (ivf_)
            return faiss_search(*ivf_, q, k);
        const int64_t nq = q.size(0), n = pend_ids_.defined() ? pend_ids_.numel() : 0;
        at::Tensor ids = at::full({nq, k}, -1, at::kLong);
        at::Tensor sc = at::full({nq, k}, -std::numeric_limits<float>::infinity(), at::kFloat);
        if (n == 0)
            return {ids, sc};
        const int64_t kk = std::min(k, n);
        auto top = at::matmul(q, pend_keys_.t()).topk(kk, 1);
        ids.narrow(1, 0, kk).copy_(pend_ids_.index({std::get<1>(top)}));
        sc.narrow(1, 0, kk).copy_(std::get<0>(top));
        return {ids, sc};
    }
    int64_t size() const override { return ivf_ ? ivf_->ntotal : (pend_ids_.defined() ? pend_ids_.numel() : 0); }
    int64_t rebuilds() const override { return rebuilds_; }
    std::string name() const override { return "ivf"; }

  private:
    // Trains on pend_keys_ (not yet centred) and adds them.
    void train() {
        at::Tensor k = centre_.apply(pend_keys_);
        build(k, pend_ids_);
        pend_keys_ = at::Tensor();
        pend_ids_ = at::Tensor();
    }
    // keys: [n, D] centred, ids: [n]
    void build(const at::Tensor& keys, const at::Tensor& ids) {
        const int64_t n = ids.numel();
        int64_t nlist = spec_.nlist;
        if (nlist <= 0)
            nlist = std::clamp<int64_t>(int64_t(std::sqrt(double(n))), 16, 4096);
        nlist = std::min<int64_t>(nlist, std::max<int64_t>(1, n / 8));
        ivf_.reset();
        quantizer_.reset();
        ivf_ = std::make_unique<faiss::IndexIVFFlat>(&quantizer_, d_, nlist, faiss::METRIC_INNER_PRODUCT);
        ivf_->cp.niter = 10;
        ivf_->cp.max_points_per_centroid = 32;  // subsample: training cost stays ~ nlist^2, not n * nlist
        ivf_->cp.verbose = false;
        ivf_->cp.min_points_per_centroid = 4;  // small caches train few lists on few points: no warning
        ivf_->nprobe = std::max<int64_t>(1, spec_.nprobe);
        ivf_->train(n, keys.data_ptr<float>());
        ivf_->add_with_ids(n, keys.data_ptr<float>(), ids.data_ptr<int64_t>());
        trained_n_ = std::max<int64_t>(n, spec_.min_train);
    }
    // Rebuild with lists for the current size, from the stored (centred) vectors.
    void retrain() {
        const int64_t n = ivf_->ntotal;
        at::Tensor keys = at::empty({n, d_}, at::kFloat);
        at::Tensor ids = at::empty({n}, at::kLong);
        int64_t c = 0;
        for (size_t l = 0; l < ivf_->nlist; ++l) {
            const size_t m = ivf_->invlists->list_size(l);
            if (m == 0)
                continue;
            const float* codes = reinterpret_cast<const float*>(ivf_->invlists->get_codes(l));
            const faiss::Index::idx_t* lid = ivf_->invlists->get_ids(l);
            std::copy(codes, codes + m * size_t(d_), keys.data_ptr<float>() + c * d_);
            std::copy(lid, lid + m, ids.data_ptr<int64_t>() + c);
            ivf_->invlists->release_codes(l, reinterpret_cast<const uint8_t*>(codes));
            ivf_->invlists->release_ids(l, lid);
            c += int64_t(m);
        }
        build(keys.narrow(0, 0, c).contiguous(), ids.narrow(0, 0, c).contiguous());
        ++rebuilds_;
    }

    int64_t d_;
    AnnIndexSpec spec_;
    faiss::IndexFlatIP quantizer_;
    std::unique_ptr<faiss::IndexIVFFlat> ivf_;
    at::Tensor pend_keys_, pend_ids_;  // [n, D], [n] before training
    int64_t trained_n_ = 0, rebuilds_ = 0;
    Centre centre_;
};

// HNSW (inner product) cannot remove: removed entries become tombstones that searches skip (over-fetching), and
// the graph is rebuilt from the live vectors once tombstones outnumber them.
class HnswIndex : public AnnIndex {
  public:
    HnswIndex(int64_t d, const AnnIndexSpec& spec) : d_(d), spec_(spec) {
        centre_.on = spec.center;
        fresh();
    }
    void add(const at::Tensor& ids, const at::Tensor& keys) override {
        at::Tensor k = centre_.apply(cpu_f32(keys)), i = cpu_i64(ids);
        const int64_t* ip = i.data_ptr<int64_t>();
        for (int64_t j = 0; j < i.numel(); ++j) {
            slot_of_[ip[j]] = int64_t(label_.size());
            label_.push_back(ip[j]);
            dead_.push_back(0);
        }
        hnsw_->add(k.size(0), k.data_ptr<float>());
    }
    void remove(const at::Tensor& ids) override {
        at::Tensor i = cpu_i64(ids);
        const int64_t* ip = i.data_ptr<int64_t>();
        for (int64_t j = 0; j < i.numel(); ++j) {
            auto it = slot_of_.find(ip[j]);
            if (it == slot_of_.end())
                continue;
            dead_[size_t(it->second)] = 1;
            slot_of_.erase(it);
            ++n_dead_;
        }
        // Rebuild once the dead outnumber the live: searches over-fetch by total / live, which must stay small
        // (a window cache replaces its whole pool every few chunks).
        if (n_dead_ > std::max<int64_t>(64, int64_t(slot_of_.size())))
            rebuild();
    }
    std::pair<at::Tensor, at::Tensor> search(const at::Tensor& q_in, int64_t k) const override {
        at::Tensor q = cpu_f32(q_in);
        const int64_t nq = q.size(0);
        // Over-fetch in proportion to the dead share so that about k live results remain.
        const int64_t total = int64_t(label_.size());
        const double live = std::max<double>(1.0, double(total - n_dead_));
        const int64_t kf = std::min<int64_t>(total, int64_t(std::ceil(double(k) * double(total) / live)) + 1);
        hnsw_->hnsw.efSearch = int(std::max<int64_t>(spec_.ef_search, kf));
        auto raw = faiss_search(*hnsw_, q, std::max<int64_t>(kf, 1));
        at::Tensor ids = at::full({nq, k}, -1, at::kLong);
        at::Tensor sc = at::full({nq, k}, -std::numeric_limits<float>::infinity(), at::kFloat);
        const int64_t* rp = raw.first.data_ptr<int64_t>();
        const float* rs = raw.second.data_ptr<float>();
        int64_t* op = ids.data_ptr<int64_t>();
        float* os = sc.data_ptr<float>();
        const int64_t kr = raw.first.size(1);
        for (int64_t a = 0; a < nq; ++a) {
            int64_t c = 0;
            for (int64_t j = 0; j < kr && c < k; ++j) {
                const int64_t r = rp[a * kr + j];
                if (r < 0 || dead_[size_t(r)])
                    continue;
                op[a * k + c] = label_[size_t(r)];
                os[a * k + c] = rs[a * kr + j];
                ++c;
            }
        }
        return {ids, sc};
    }
    int64_t size() const override { return int64_t(slot_of_.size()); }
    int64_t rebuilds() const override { return rebuilds_; }
    std::string name() const override { return "hnsw"; }

  private:
    void fresh() {
        hnsw_ = std::make_unique<faiss::IndexHNSWFlat>(int(d_), int(spec_.hnsw_m), faiss::METRIC_INNER_PRODUCT);
        hnsw_->hnsw.efConstruction = 40;
    }
    void rebuild() {
        std::vector<int64_t> live_label;
        std::vector<float> live(size_t(slot_of_.size()) * size_t(d_));
        size_t c = 0;
        for (size_t r = 0; r < label_.size(); ++r) {
            if (dead_[r])
                continue;
            hnsw_->storage->reconstruct(int64_t(r), live.data() + c * size_t(d_));  // stored (centred) vector
            live_label.push_back(label_[r]);
            ++c;
        }
        fresh();
        label_ = live_label;
        dead_.assign(label_.size(), 0);
        slot_of_.clear();
        for (size_t r = 0; r < label_.size(); ++r)
            slot_of_[label_[r]] = int64_t(r);
        n_dead_ = 0;
        hnsw_->add(int64_t(c), live.data());
        ++rebuilds_;
    }

    int64_t d_;
    AnnIndexSpec spec_;
    std::unique_ptr<faiss::IndexHNSWFlat> hnsw_;
    std::vector<int64_t> label_;  // internal row -> entry id
    std::vector<char> dead_;      // internal row removed
    std::unordered_map<int64_t, int64_t> slot_of_;
    int64_t n_dead_ = 0, rebuilds_ = 0;
    Centre centre_;
};

// Sign random projections (FAISS IndexLSH, random rotation) of the lifted keys [k - mu, sqrt(M^2 - |k - mu|^2)];
// queries [q, 0]. Hamming distance ranks by angle, which the lift turns into inner-product order.
class LshIndex : public AnnIndex {
  public:
    LshIndex(int64_t d, const AnnIndexSpec& spec) : d_(d), lsh_(d + 1, int(spec.lsh_bits), true, false), map_(&lsh_) {
        centre_.on = spec.center;
    }
    void add(const at::Tensor& ids, const at::Tensor& keys) override {
        at::Tensor k = centre_.apply(cpu_f32(keys)), i = cpu_i64(ids);
        at::Tensor n2 = k.pow(2).sum(1);  // [n]
        if (m2_ < 0)  // headroom over the first batch; later keys beyond it get a zero extra coordinate
            m2_ = n2.numel() ? 2.25 * n2.max().item<double>() : 1.0;
        at::Tensor lifted = at::cat({k, (m2_ - n2).clamp_min(0).sqrt().unsqueeze(1)}, 1).contiguous();
        map_.add_with_ids(k.size(0), lifted.data_ptr<float>(), i.data_ptr<int64_t>());
    }
    void remove(const at::Tensor& ids) override {
        at::Tensor i = cpu_i64(ids);
        if (i.numel() == 0)
            return;
        faiss::IDSelectorBatch sel(i.numel(), i.data_ptr<int64_t>());
        map_.remove_ids(sel);
    }
    std::pair<at::Tensor, at::Tensor> search(const at::Tensor& q_in, int64_t k) const override {
        at::Tensor q = cpu_f32(q_in);
        at::Tensor lifted = at::cat({q, at::zeros({q.size(0), 1}, q.options())}, 1).contiguous();
        auto r = faiss_search(map_, lifted, k);
        // Hamming distances: smaller is better; return negated so that larger is better like the others.
        r.second.neg_();
        return r;
    }
    int64_t size() const override { return map_.ntotal; }
    std::string name() const override { return "lsh"; }

  private:
    int64_t d_;
    faiss::IndexLSH lsh_;
    faiss::IndexIDMap2 map_;
    double m2_ = -1;
    Centre centre_;
};

// Exact top-k by matmul with LibTorch on the keys' device (CUDA included). Rows freed by removal are reused.
class TopkIndex : public AnnIndex {
  public:
    explicit TopkIndex(int64_t d) : d_(d) {}
    void add(const at::Tensor& ids_in, const at::Tensor& keys) override {
        at::Tensor ids = cpu_i64(ids_in);
        const int64_t n = ids.numel();
        if (n == 0)
            return;
        if (!keys_.defined()) {
            keys_ = at::zeros({std::max<int64_t>(64, n), d_}, keys.options().dtype(at::kFloat));
            row_id_ = at::full({keys_.size(0)}, -1, at::kLong);
            for (int64_t r = keys_.size(0) - 1; r >= 0; --r)
                free_.push_back(r);
        }
        if (int64_t(free_.size()) < n)
            grow(keys_.size(0) + n);
        std::vector<int64_t> rows(static_cast<size_t>(n));
        const int64_t* ip = ids.data_ptr<int64_t>();
        int64_t* rp = row_id_.data_ptr<int64_t>();
        for (int64_t j = 0; j < n; ++j) {
            rows[size_t(j)] = free_.back();
            free_.pop_back();
            row_of_[ip[j]] = rows[size_t(j)];
            rp[rows[size_t(j)]] = ip[j];
        }
        at::Tensor rt = at::tensor(rows).to(keys_.device());
        keys_.index_copy_(0, rt, keys.to(keys_.device(), at::kFloat));
        dirty_ = true;
    }
    void remove(const at::Tensor& ids_in) override {
        at::Tensor ids = cpu_i64(ids_in);
        const int64_t* ip = ids.data_ptr<int64_t>();
        int64_t* rp = row_id_.defined() ? row_id_.data_ptr<int64_t>() : nullptr;
        for (int64_t j = 0; j < ids.numel(); ++j) {
            auto it = row_of_.find(ip[j]);
            if (it == row_of_.end())
                continue;
            rp[it->second] = -1;
            free_.push_back(it->second);
            row_of_.erase(it);
            dirty_ = true;
        }
    }
    std::pair<at::Tensor, at::Tensor> search(const at::Tensor& q, int64_t k) const override {
        const int64_t nq = q.size(0);
        at::Tensor ids = at::full({nq, k}, -1, at::kLong);
        at::Tensor sc = at::full({nq, k}, -std::numeric_limits<float>::infinity(), at::kFloat);
        const int64_t n = int64_t(row_of_.size());
        if (n == 0 || k == 0)
            return {ids, sc};
        if (dirty_) {  // additive mask of free rows, rebuilt only after a change
            mask_ = row_id_.lt(0).to(at::kFloat).mul(-1e30f).to(keys_.device());
            dirty_ = false;
        }
        const int64_t kk = std::min(k, n);
        at::Tensor s = at::matmul(q.to(keys_.device(), at::kFloat), keys_.t()).add_(mask_);  // [nq, cap]
        auto top = s.topk(kk, 1);
        ids.narrow(1, 0, kk).copy_(row_id_.index({std::get<1>(top).cpu()}));
        sc.narrow(1, 0, kk).copy_(std::get<0>(top).cpu());
        return {ids, sc};
    }
    int64_t size() const override { return int64_t(row_of_.size()); }
    std::string name() const override { return "topk"; }

  private:
    void grow(int64_t need) {
        const int64_t old = keys_.size(0);
        int64_t cap = old;
        while (cap < need)
            cap *= 2;
        at::Tensor nk = at::zeros({cap, d_}, keys_.options());
        nk.narrow(0, 0, old).copy_(keys_);
        keys_ = nk;
        at::Tensor nr = at::full({cap}, -1, at::kLong);
        nr.narrow(0, 0, old).copy_(row_id_);
        row_id_ = nr;
        for (int64_t r = cap - 1; r >= old; --r)
            free_.push_back(r);
        dirty_ = true;
    }

    int64_t d_;
    at::Tensor keys_;    // [cap, D] on the keys' device
    at::Tensor row_id_;  // [cap] int64 CPU entry id per row, -1 free
    mutable at::Tensor mask_;
    mutable bool dirty_ = true;
    std::vector<int64_t> free_;
    std::unordered_map<int64_t, int64_t> row_of_;
};

}  // namespace

std::unique_ptr<AnnIndex> make_ann_index(const AnnIndexSpec& spec, int64_t dim) {
    if (spec.type == "flat")
        return std::make_unique<FlatIndex>(dim, spec.center);
    if (spec.type == "ivf")
        return std::make_unique<IvfIndex>(dim, spec);
    if (spec.type == "hnsw")
        return std::make_unique<HnswIndex>(dim, spec);
    if (spec.type == "lsh")
        return std::make_unique<LshIndex>(dim, spec);
    if (spec.type == "topk")
        return std::make_unique<TopkIndex>(dim);
    throw std::runtime_error("ann: unknown index type '" + spec.type + "' (flat, ivf, hnsw, lsh, topk)");
}

}  // namespace reel
