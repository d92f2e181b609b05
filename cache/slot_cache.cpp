#include "cache/slot_cache.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <stdexcept>
#include <unordered_map>

#include "kernels/hadamard.h"
#include "kernels/quant.h"

namespace reel {

KVCache::~KVCache() = default;

namespace {

constexpr int64_t kPage = 16;  // slots per quantized page (KIVI's token group)

// Min-heap of free slot (or page) ids: the lowest id is reused first, which keeps the read range compact.
struct FreeList {
    std::vector<int32_t> heap;
    void push(int32_t s) {
        heap.push_back(s);
        std::push_heap(heap.begin(), heap.end(), std::greater<int32_t>());
    }
    int32_t pop() {
        std::pop_heap(heap.begin(), heap.end(), std::greater<int32_t>());
        int32_t s = heap.back();
        heap.pop_back();
        return s;
    }
    bool empty() const { return heap.empty(); }
    size_t size() const { return heap.size(); }
};

// Entry metadata of one pool, structure of arrays over stream * cap + slot.
struct Meta {
    std::vector<int64_t> id;
    std::vector<int32_t> first, last, spos;
    std::vector<float> count, weight;
    std::vector<uint8_t> live;
    void resize(size_t n) {
        id.assign(n, -1);
        first.assign(n, 0);
        last.assign(n, 0);
        spos.assign(n, 0);
        count.assign(n, 0.f);
        weight.assign(n, 1.f);
        live.assign(n, 0);
    }
    // Re-lays out from `old_cap` to `new_cap` slots per stream.
    void grow(int64_t streams, int64_t old_cap, int64_t new_cap) {
        Meta m;
        m.resize(size_t(streams * new_cap));
        for (int64_t st = 0; st < streams; ++st)
            for (int64_t i = 0; i < old_cap; ++i) {
                const size_t a = size_t(st * old_cap + i), b = size_t(st * new_cap + i);
                m.id[b] = id[a];
                m.first[b] = first[a];
                m.last[b] = last[a];
                m.spos[b] = spos[a];
                m.count[b] = count[a];
                m.weight[b] = weight[a];
                m.live[b] = live[a];
            }
        *this = std::move(m);
    }
};

// A reference to an entry: fp slot s >= 0, quantized slot q as -(q + 2), none = -1.
inline int32_t quant_ref(int32_t q) {
    return -(q + 2);
}
inline bool is_quant_ref(int32_t r) {
    return r <= -2;
}
inline int32_t quant_slot(int32_t r) {
    return -r - 2;
}

struct Layer {
    bool ready = false;
    int64_t b = 0, n = 0, s = 0, d = 0, streams = 0;
    at::TensorOptions opts;
    // fp pool
    int64_t fcap = 0, fmax = 0;  // fmax 0: unbounded
    at::Tensor fk, fv;           // [streams, fcap, D]
    Meta fm;
    std::vector<FreeList> ffree;
    // quant pool (pages of kPage slots)
    int64_t qpages = 0, qmax_pages = 0;
    at::Tensor qk, qv;         // [streams, qpages * G, bytes] uint8
    at::Tensor qks, qkz, qvs;  // key scales ([streams, slots, D/g] token-wise or [streams, qpages, D] KIVI), KIVI
                               // key zeros, value scales [streams, slots, D/g]; float16
    Meta qm;
    std::vector<FreeList> qfree;
    std::vector<int32_t> qpage_live;  // [streams * qpages]
    // Frames written but not committed (the chunk being generated): slot per (stream, token).
    std::map<int64_t, std::vector<int32_t>> pending;
    // The last committed frame and the entry now holding each of its tokens (tempcache matching).
    int64_t prev_frame = -1;
    std::vector<int32_t> prev_entry;
    // Device-side metadata for reads, rebuilt after any change.
    bool dirty = true;
    at::Tensor f_tpos, f_spos, f_bias, f_id, f_last, q_tpos, q_spos, q_bias, q_id, q_last;
    int64_t f_hwm = 0, q_hwm_pages = 0;
    at::Tensor scratch_k, scratch_v;  // dequantized pages
    // FlowCache: per stream, the importance of every frame that left the window so far (running quantile).
    std::vector<std::vector<float>> flow_history;
    int64_t tokens_committed = 0, tokens_merged = 0;
};

class SlotCache : public KVCache {
  public:
    SlotCache(const CacheSpec& spec, int num_layers) : spec_(spec), layers_(size_t(num_layers)) {
        if (num_layers <= 0)
            throw std::runtime_error("KV cache: num_layers must be positive");
        if (spec_.window && spec_.recent <= 0)
            throw std::runtime_error("KV cache: a window needs recent frames > 0");
        if (spec_.sink < 0)
            throw std::runtime_error("KV cache: sink frames must be >= 0");
        switch (spec_.quant) {
            case KVQuant::none:
                bits_ = 0;
                break;
            case KVQuant::int8:
                bits_ = 8;
                break;
            default:
                bits_ = 4;
        }
    }

    void set_frame_grid(int64_t hp, int64_t wp) override {
        hp_ = hp;
        wp_ = wp;
    }

    void write(int layer, int64_t start, int64_t nf, const at::Tensor& k, const at::Tensor& v) override {
        Layer& L = at_layer(layer);
        if (k.dim() != 4 || k.sizes() != v.sizes() || nf <= 0 || k.size(1) % nf != 0)
            throw std::runtime_error("KV cache: write expects k, v [B, F*S, N, D] with F = n_frames");
        if (start < 0)
            throw std::runtime_error("KV cache: negative frame");
        const int64_t s = k.size(1) / nf;
        const bool same = L.ready && s == L.s && k.size(0) == L.b && k.size(2) == L.n && k.size(3) == L.d &&
                          k.scalar_type() == L.opts.dtype().toScalarType() && k.device() == L.opts.device();
        if (!same) {
            if (holds_anything(L))
                throw std::runtime_error("KV cache: write shape/dtype/device differs from what the cache holds");
            init_layer(L, k, s, nf);
        }
        // Which frames are new: a write of new frames makes every pending frame final.
        bool has_new = false;
        for (int64_t i = 0; i < nf; ++i)
            if (!L.pending.count(start + i)) {
                if (start + i <= L.prev_frame)
                    throw std::runtime_error("KV cache: frame " + std::to_string(start + i) +
                                             " was already committed; only the chunk being generated can be "
                                             "rewritten");
                has_new = true;
            }
        if (has_new) {
            // Frames pending after `start` are rewritten by this write too; those before it are final.
            std::vector<int64_t> done;
            for (auto& kv : L.pending)
                if (kv.first < start)
                    done.push_back(kv.first);
            for (int64_t fr : done)
                commit_frame(L, fr);
            if (bits_ > 0)
                move_to_quant(L);
            const int64_t new_end = std::max(newest_end_layer(L), start + nf);
            note_frames(start, nf);
            if (spec_.window) {
                int64_t non_sink = 0;
                for (int64_t i = 0; i < nf; ++i)
                    non_sink += !is_sink(start + i);
                if (non_sink > spec_.recent)
                    throw std::runtime_error("KV cache: window of " + std::to_string(spec_.recent) +
                                             " recent frames (+" + std::to_string(spec_.sink) + " sink) cannot take " +
                                             std::to_string(non_sink) + " new frames");
                evict_window(L, new_end);
            }
        }
        // k: [B, F*S, N, D] -> per frame [streams * S, D] rows in stream-major order.
        at::Tensor rows = k.view({L.b, nf, s, L.n, L.d}).permute({1, 0, 3, 2, 4}).reshape({nf, L.streams * s, L.d});
        at::Tensor vrows = v.view({L.b, nf, s, L.n, L.d}).permute({1, 0, 3, 2, 4}).reshape({nf, L.streams * s, L.d});
        for (int64_t i = 0; i < nf; ++i) {
            const int64_t fr = start + i;
            auto it = L.pending.find(fr);
            if (it == L.pending.end())
                it = L.pending.emplace(fr, allocate_frame(L, fr)).first;
            at::Tensor idx = flat_rows(L, it->second, L.fcap);
            L.fk.view({-1, L.d}).index_copy_(0, idx, rows[i]);
            L.fv.view({-1, L.d}).index_copy_(0, idx, vrows[i]);
        }
        // Overwriting the chunk being made changes no metadata: reads keep the device tables they built.
    }

    void read(int layer, int64_t max_block, const std::function<void(const KVBlock&)>& fn) const override {
        Layer& L = const_cast<SlotCache*>(this)->at_layer(layer);
        if (!L.ready)
            return;
        rebuild_meta(L);
        max_block = std::max<int64_t>(1, max_block);
        for (int64_t a = 0; a < L.f_hwm; a += max_block) {
            const int64_t len = std::min(max_block, L.f_hwm - a);
            KVBlock blk;
            blk.k = L.fk.view({L.b, L.n, L.fcap, L.d}).narrow(2, a, len);
            blk.v = L.fv.view({L.b, L.n, L.fcap, L.d}).narrow(2, a, len);
            blk.tpos = L.f_tpos.view({L.b, L.n, L.fcap}).narrow(2, a, len);
            blk.spos = L.f_spos.view({L.b, L.n, L.fcap}).narrow(2, a, len);
            blk.bias = L.f_bias.view({L.b, L.n, L.fcap}).narrow(2, a, len);
            blk.id = L.f_id.view({L.b, L.n, L.fcap}).narrow(2, a, len);
            blk.last = L.f_last.view({L.b, L.n, L.fcap}).narrow(2, a, len);
            fn(blk);
        }
        if (L.q_hwm_pages == 0)
            return;
        const int64_t pages_per_block = std::max<int64_t>(1, max_block / kPage);
        const int64_t qslots = L.qpages * kPage;
        for (int64_t p = 0; p < L.q_hwm_pages; p += pages_per_block) {
            const int64_t np = std::min(pages_per_block, L.q_hwm_pages - p);
            const int64_t len = np * kPage;
            dequant_pages(L, p, np);
            KVBlock blk;
            blk.k = L.scratch_k.narrow(1, 0, len).view({L.b, L.n, len, L.d});
            blk.v = L.scratch_v.narrow(1, 0, len).view({L.b, L.n, len, L.d});
            blk.tpos = L.q_tpos.view({L.b, L.n, qslots}).narrow(2, p * kPage, len);
            blk.spos = L.q_spos.view({L.b, L.n, qslots}).narrow(2, p * kPage, len);
            blk.bias = L.q_bias.view({L.b, L.n, qslots}).narrow(2, p * kPage, len);
            blk.id = L.q_id.view({L.b, L.n, qslots}).narrow(2, p * kPage, len);
            blk.last = L.q_last.view({L.b, L.n, qslots}).narrow(2, p * kPage, len);
            fn(blk);
        }
    }

    double query_position(int64_t frame) const override { return position(double(frame), false); }

    KVView view(int layer) const override {
        const Layer& L = at_layer(layer);
        KVView out;
        if (!L.ready)
            return out;
        // Live entries of each stream in (first, spos) order; every stream must hold as many.
        std::vector<std::vector<int32_t>> refs(size_t(L.streams));
        for (int64_t st = 0; st < L.streams; ++st) {
            auto& r = refs[size_t(st)];
            for (int64_t i = 0; i < L.fcap; ++i)
                if (L.fm.live[size_t(st * L.fcap + i)])
                    r.push_back(int32_t(i));
            for (int64_t i = 0; i < L.qpages * kPage; ++i)
                if (L.qm.live[size_t(st * L.qpages * kPage + i)])
                    r.push_back(quant_ref(int32_t(i)));
            std::stable_sort(r.begin(), r.end(), [&](int32_t x, int32_t y) {
                return std::make_pair(meta_of(L, st, x).first, meta_of(L, st, x).second) <
                       std::make_pair(meta_of(L, st, y).first, meta_of(L, st, y).second);
            });
            if (r.size() != refs[0].size())
                throw std::runtime_error("KV cache: view() needs every head to hold the same entries");
        }
        const int64_t t = int64_t(refs[0].size());
        std::vector<int32_t> all;
        for (auto& r : refs)
            all.insert(all.end(), r.begin(), r.end());
        at::Tensor k = gather_rows(L, all, /*values=*/false).view({L.b, L.n, t, L.d});
        at::Tensor v = gather_rows(L, all, /*values=*/true).view({L.b, L.n, t, L.d});
        out.k = k.permute({0, 2, 1, 3}).contiguous().to(L.opts.dtype());
        out.v = v.permute({0, 2, 1, 3}).contiguous().to(L.opts.dtype());
        std::vector<int64_t> pos;
        std::vector<float> bias;
        bool any_bias = false;
        for (int32_t r : refs[0]) {
            pos.push_back(meta_of(L, 0, r).first);
            const float bb = entry_bias(L, 0, r);
            any_bias = any_bias || bb != 0.f;
            bias.push_back(bb);
        }
        out.frame_pos = at::tensor(pos, at::kLong).to(L.opts.device());
        if (any_bias)
            out.bias = at::tensor(bias, at::kFloat).to(L.opts.device());
        return out;
    }

    int64_t bytes() const override {
        int64_t total = 0;
        for (const Layer& L : layers_)
            for (const at::Tensor* t : {&L.fk, &L.fv, &L.qk, &L.qv, &L.qks, &L.qkz, &L.qvs})
                if (t->defined())
                    total += int64_t(t->nbytes());
        return total;
    }

    KVCacheStats stats() const override {
        KVCacheStats st;
        for (const Layer& L : layers_) {
            for (const at::Tensor* t : {&L.fk, &L.fv})
                if (t->defined())
                    st.bytes_fp += int64_t(t->nbytes());
            for (const at::Tensor* t : {&L.qk, &L.qv, &L.qks, &L.qkz, &L.qvs})
                if (t->defined())
                    st.bytes_quant += int64_t(t->nbytes());
            if (!L.ready)
                continue;
            const int64_t fp_entry = L.fcap ? int64_t(L.fk.nbytes() + L.fv.nbytes()) / (L.streams * L.fcap) : 0;
            const int64_t q_entry = L.qpages ? quant_bytes(L) / (L.streams * L.qpages * kPage) : 0;
            auto count = [&](const Meta& m, int64_t per_entry) {
                for (size_t i = 0; i < m.live.size(); ++i)
                    if (m.live[i]) {
                        ++st.entries;
                        st.bytes_live += per_entry;
                        if (m.count[i] > 1.f) {
                            ++st.merged_entries;
                            st.bytes_merged += per_entry;
                        }
                    }
            };
            count(L.fm, fp_entry);
            count(L.qm, q_entry);
            st.tokens_committed += L.tokens_committed;
            st.tokens_merged += L.tokens_merged;
        }
        st.bytes = st.bytes_fp + st.bytes_quant;
        st.allocations = allocations_;
        st.frames = int64_t(frame_list(0).size());
        return st;
    }

    int64_t frames() const override { return int64_t(frame_list(0).size()); }

    std::vector<int64_t> frame_list(int layer) const override {
        const Layer& L = at_layer(layer);
        std::vector<std::pair<int32_t, int32_t>> ranges;
        auto add = [&](const Meta& m, int64_t cap) {
            for (int64_t i = 0; i < cap; ++i)  // stream 0
                if (m.live[size_t(i)])
                    ranges.push_back({m.first[size_t(i)], m.last[size_t(i)]});
        };
        if (!L.ready)
            return {};
        add(L.fm, L.fcap);
        add(L.qm, L.qpages * kPage);
        std::sort(ranges.begin(), ranges.end());
        std::vector<int64_t> out;
        for (auto& r : ranges)
            for (int64_t f = std::max<int64_t>(r.first, out.empty() ? r.first : out.back() + 1); f <= r.second; ++f)
                out.push_back(f);
        return out;
    }

    void reset() override {
        for (Layer& L : layers_) {
            if (!L.ready)
                continue;
            L.fm.live.assign(L.fm.live.size(), 0);
            L.qm.live.assign(L.qm.live.size(), 0);
            reset_free_lists(L);
            L.pending.clear();
            L.prev_frame = -1;
            L.prev_entry.clear();
            L.flow_history.assign(size_t(L.streams), {});
            L.tokens_committed = L.tokens_merged = 0;
            L.dirty = true;
        }
        sinks_.clear();
        newest_end_ = 0;
        next_id_ = 0;
    }

    int num_layers() const override { return int(layers_.size()); }
    std::string describe() const override { return spec_.describe(); }

  private:
    // ---------------------------------------------------------------- setup

    Layer& at_layer(int layer) {
        if (layer < 0 || layer >= int(layers_.size()))
            throw std::runtime_error("KV cache: layer " + std::to_string(layer) + " out of range");
        return layers_[size_t(layer)];
    }
    const Layer& at_layer(int layer) const { return const_cast<SlotCache*>(this)->at_layer(layer); }

    static bool holds_anything(const Layer& L) {
        if (!L.ready)
            return false;
        for (uint8_t x : L.fm.live)
            if (x)
                return true;
        for (uint8_t x : L.qm.live)
            if (x)
                return true;
        return false;
    }

    int64_t quant_bytes(const Layer& L) const {
        int64_t t = 0;
        for (const at::Tensor* x : {&L.qk, &L.qv, &L.qks, &L.qkz, &L.qvs})
            if (x->defined())
                t += int64_t(x->nbytes());
        return t;
    }

    // Bytes one entry costs per stream in each pool (for budgets).
    int64_t fp_entry_bytes(const Layer& L) const { return 2 * L.d * int64_t(L.opts.dtype().itemsize()); }
    int64_t quant_entry_bytes(const Layer& L) const {
        const int64_t g = group_;
        int64_t e = quant_row_bytes(L.d, bits_) + quant_row_bytes(L.d, value_bits()) + 2 * (L.d / g);  // + v scales
        e += spec_.quant == KVQuant::int4_kivi ? (2 * 2 * L.d + kPage - 1) / kPage : 2 * (L.d / g);
        return e;
    }
    int value_bits() const { return bits_ == 8 ? 8 : 4; }
    int64_t fp_recent_frames() const { return spec_.quant == KVQuant::int4_kivi ? spec_.kivi_recent : 0; }

    void init_layer(Layer& L, const at::Tensor& k, int64_t s, int64_t nf) {
        L = Layer();
        L.ready = true;
        L.b = k.size(0);
        L.n = k.size(2);
        L.d = k.size(3);
        L.s = s;
        L.streams = L.b * L.n;
        L.opts = k.options();
        if (bits_ > 0) {
            // Scale groups must tile the head: fall back to the largest common divisor (e.g. 4 for a head of 20).
            group_ = spec_.quant_group;
            while (L.d % group_ != 0)
                group_ = std::gcd(group_, L.d);
            if (bits_ == 4 && (L.d % 2 != 0 || group_ % 2 != 0))
                throw std::runtime_error("KV cache: INT4 needs an even head dim (got " + std::to_string(L.d) + ")");
        }
        // Capacity in entries per stream, from budget and window (0 = unbounded).
        const int64_t layers = int64_t(layers_.size());
        int64_t max_entries = 0;
        auto cap_with = [&](int64_t e) { max_entries = max_entries ? std::min(max_entries, e) : e; };
        if (spec_.window) {
            int64_t frames = spec_.sink + spec_.recent;
            if (spec_.merge == CacheSpec::Merge::flowcache)
                frames += int64_t(std::ceil(spec_.keep * spec_.recent)) + 1;  // kept old frames + summaries
            cap_with(frames * s);
        }
        if (spec_.budget_frames > 0)
            cap_with(spec_.budget_frames * s);
        const int64_t fp_reserve = bits_ > 0 ? (nf + fp_recent_frames()) * s + kPage : 0;
        if (spec_.budget_bytes > 0) {
            const int64_t per_stream = spec_.budget_bytes / (layers * L.streams);
            int64_t e = bits_ > 0 ? (per_stream - fp_reserve * fp_entry_bytes(L)) / quant_entry_bytes(L)
                                  : per_stream / fp_entry_bytes(L);
            if (e < (nf + spec_.sink) * s)
                throw std::runtime_error("KV cache: --cache-budget of " + std::to_string(spec_.budget_bytes) +
                                         " bytes is too small for one chunk (" + std::to_string(nf) +
                                         " frames) plus the sinks");
            cap_with(e);
        }
        if (bits_ > 0) {
            L.fmax = 0;  // recent entries move to pages at every commit: the fp pool stays small by itself
            L.qmax_pages = max_entries ? (max_entries + kPage - 1) / kPage + 1 : 0;
        } else {
            L.fmax = max_entries;
        }
        // Quantized modes keep only the chunk being made, KIVI's recent frames and less than a page per stream in
        // full precision: size the fp pool for exactly that (it grows if a policy ever needs more).
        const bool partial_pages = s % kPage != 0 || spec_.merge != CacheSpec::Merge::none;
        int64_t first_cap = bits_ > 0 ? (nf + fp_recent_frames()) * s + (partial_pages ? kPage : 0) : 2 * nf * s;
        if (L.fmax)
            first_cap = std::min(L.fmax, first_cap);
        grow_fp(L, std::max<int64_t>(first_cap, nf * s));
        if (bits_ > 0)
            grow_quant(L, L.qmax_pages ? std::min<int64_t>(L.qmax_pages, 4) : 4);
        L.flow_history.assign(size_t(L.streams), {});
    }

    void reset_free_lists(Layer& L) {
        L.ffree.assign(size_t(L.streams), FreeList());
        L.qfree.assign(size_t(L.streams), FreeList());
        for (int64_t st = 0; st < L.streams; ++st) {
            for (int64_t i = L.fcap - 1; i >= 0; --i)
                if (!L.fm.live[size_t(st * L.fcap + i)])
                    L.ffree[size_t(st)].push(int32_t(i));
            for (int64_t p = L.qpages - 1; p >= 0; --p) {
                L.qpage_live[size_t(st * L.qpages + p)] = 0;
                for (int64_t g = 0; g < kPage; ++g)
                    L.qpage_live[size_t(st * L.qpages + p)] += L.qm.live[size_t((st * L.qpages + p) * kPage + g)];
                if (!L.qpage_live[size_t(st * L.qpages + p)])
                    L.qfree[size_t(st)].push(int32_t(p));
            }
        }
    }

    void grow_fp(Layer& L, int64_t cap) {
        ++allocations_;
        at::Tensor nk = at::zeros({L.streams, cap, L.d}, L.opts), nv = at::zeros({L.streams, cap, L.d}, L.opts);
        if (L.fcap > 0) {
            nk.narrow(1, 0, L.fcap).copy_(L.fk);
            nv.narrow(1, 0, L.fcap).copy_(L.fv);
            L.fm.grow(L.streams, L.fcap, cap);
        } else {
            L.fm.resize(size_t(L.streams * cap));
            L.ffree.assign(size_t(L.streams), FreeList());
        }
        for (int64_t st = 0; st < L.streams; ++st)
            for (int64_t i = L.fcap; i < cap; ++i)
                L.ffree[size_t(st)].push(int32_t(i));
        L.fk = nk;
        L.fv = nv;
        L.fcap = cap;
        L.dirty = true;
    }

    void grow_quant(Layer& L, int64_t pages) {
        ++allocations_;
        const int64_t slots = pages * kPage, old_slots = L.qpages * kPage, g = group_;
        auto u8 = L.opts.dtype(at::kByte), f16 = L.opts.dtype(at::kHalf);
        at::Tensor qk = at::zeros({L.streams, slots, quant_row_bytes(L.d, bits_)}, u8);
        at::Tensor qv = at::zeros({L.streams, slots, quant_row_bytes(L.d, value_bits())}, u8);
        at::Tensor qvs = at::zeros({L.streams, slots, L.d / g}, f16);
        at::Tensor qks, qkz;
        if (spec_.quant == KVQuant::int4_kivi) {
            qks = at::zeros({L.streams, pages, L.d}, f16);
            qkz = at::zeros({L.streams, pages, L.d}, f16);
        } else {
            qks = at::zeros({L.streams, slots, L.d / g}, f16);
        }
        std::vector<int32_t> live(size_t(L.streams * pages), 0);
        if (L.qpages > 0) {
            qk.narrow(1, 0, old_slots).copy_(L.qk);
            qv.narrow(1, 0, old_slots).copy_(L.qv);
            qvs.narrow(1, 0, old_slots).copy_(L.qvs);
            if (qkz.defined()) {
                qks.narrow(1, 0, L.qpages).copy_(L.qks);
                qkz.narrow(1, 0, L.qpages).copy_(L.qkz);
            } else {
                qks.narrow(1, 0, old_slots).copy_(L.qks);
            }
            L.qm.grow(L.streams, old_slots, slots);
            for (int64_t st = 0; st < L.streams; ++st)
                for (int64_t p = 0; p < L.qpages; ++p)
                    live[size_t(st * pages + p)] = L.qpage_live[size_t(st * L.qpages + p)];
        } else {
            L.qm.resize(size_t(L.streams * slots));
            L.qfree.assign(size_t(L.streams), FreeList());
        }
        for (int64_t st = 0; st < L.streams; ++st)
            for (int64_t p = L.qpages; p < pages; ++p)
                L.qfree[size_t(st)].push(int32_t(p));
        L.qk = qk;
        L.qv = qv;
        L.qks = qks;
        L.qkz = qkz;
        L.qvs = qvs;
        L.qpage_live = live;
        L.qpages = pages;
        L.dirty = true;
    }

    // ---------------------------------------------------------------- frames and positions

    void note_frames(int64_t start, int64_t nf) {
        for (int64_t f = start; f < start + nf; ++f) {
            if (int64_t(sinks_.size()) < spec_.sink && std::find(sinks_.begin(), sinks_.end(), f) == sinks_.end())
                sinks_.push_back(f);
            newest_end_ = std::max(newest_end_, f + 1);
        }
    }
    int64_t newest_end_layer(const Layer& L) const {
        int64_t e = newest_end_;
        if (!L.pending.empty())
            e = std::max(e, L.pending.rbegin()->first + 1);
        return e;
    }
    bool is_sink(int64_t f) const { return std::find(sinks_.begin(), sinks_.end(), f) != sinks_.end(); }
    int64_t sink_end() const {
        int64_t e = 0;
        for (int64_t f : sinks_)
            e = std::max(e, f + 1);
        return e;
    }
    // First frame of the recent window (frames before it, other than sinks, are out of the window).
    int64_t window_start() const {
        if (!spec_.window)
            return 0;
        return std::max(sink_end(), newest_end_ - spec_.recent);
    }
    bool has_old() const { return spec_.merge == CacheSpec::Merge::flowcache && window_start() > sink_end(); }

    // RoPE time position of (possibly fractional) frame f; `old` marks an entry older than the window (FlowCache).
    double position(double f, bool old) const {
        if (!spec_.relative_rope || !spec_.window)
            return f;
        const int64_t ns = int64_t(sinks_.size());
        for (int64_t i = 0; i < ns; ++i)
            if (double(sinks_[size_t(i)]) == f)
                return double(i);
        const double band = has_old() ? 1.0 : 0.0;  // old summaries sit one frame before the window
        if (old)
            return double(ns);
        return double(ns) + band + (f - double(window_start()));
    }

    std::pair<int64_t, int64_t> meta_of(const Layer& L, int64_t st, int32_t ref) const {
        if (is_quant_ref(ref)) {
            const size_t i = size_t(st * L.qpages * kPage + quant_slot(ref));
            return {L.qm.first[i], L.qm.spos[i]};
        }
        const size_t i = size_t(st * L.fcap + ref);
        return {L.fm.first[i], L.fm.spos[i]};
    }

    // Multiplicity an entry counts for now: tokens merged into it, scaled to the part of its frames still inside
    // the window.
    double multiplicity(int32_t first, int32_t last, float count) const {
        if (!spec_.window || is_sink(first) || first == last)
            return count;
        const int64_t ws = window_start();
        if (last < ws)
            return count;  // an old FlowCache summary: all its tokens
        const double inside = double(last - std::max<int64_t>(first, ws) + 1);
        return double(count) * inside / double(last - first + 1);
    }
    double entry_tpos(int32_t first, int32_t last) const {
        if (!spec_.window)
            return 0.5 * (double(first) + double(last));
        if (is_sink(first))
            return position(double(first), false);
        const int64_t ws = window_start();
        if (last < ws)
            return position(double(last), true);
        const double a = double(std::max<int64_t>(first, ws));
        return position(0.5 * (a + double(last)), false);
    }
    float entry_bias(const Layer& L, int64_t st, int32_t ref) const {
        const Meta& m = is_quant_ref(ref) ? L.qm : L.fm;
        const size_t i =
            is_quant_ref(ref) ? size_t(st * L.qpages * kPage + quant_slot(ref)) : size_t(st * L.fcap + ref);
        return float(std::log(multiplicity(m.first[i], m.last[i], m.count[i]) * m.weight[i]));
    }

    void rebuild_meta(Layer& L) const {
        if (!L.dirty)
            return;
        auto build = [&](const Meta& m, int64_t cap, at::Tensor& tpos, at::Tensor& spos, at::Tensor& bias,
                         at::Tensor& ids, at::Tensor& lasts) {
            const int64_t total = L.streams * cap;
            at::Tensor tp = at::zeros({total}, at::kFloat), sp = at::zeros({total}, at::kLong);
            at::Tensor idt = at::full({total}, -1, at::kLong), lt = at::full({total}, -1, at::kLong);
            int64_t* idp = idt.data_ptr<int64_t>();
            int64_t* lp = lt.data_ptr<int64_t>();
            at::Tensor bi = at::full({total}, -std::numeric_limits<float>::infinity(), at::kFloat);
            float* tpp = tp.data_ptr<float>();
            int64_t* spp = sp.data_ptr<int64_t>();
            float* bip = bi.data_ptr<float>();
            int64_t hwm = 0;
            for (int64_t i = 0; i < total; ++i) {
                spp[i] = m.spos[size_t(i)];
                if (!m.live[size_t(i)])
                    continue;
                tpp[i] = float(entry_tpos(m.first[size_t(i)], m.last[size_t(i)]));
                idp[i] = m.id[size_t(i)];
                lp[i] = m.last[size_t(i)];
                bip[i] = float(std::log(multiplicity(m.first[size_t(i)], m.last[size_t(i)], m.count[size_t(i)]) *
                                        m.weight[size_t(i)]));
                hwm = std::max(hwm, i % cap + 1);
            }
            tpos = tp.to(L.opts.device());
            spos = sp.to(L.opts.device());
            bias = bi.to(L.opts.device());
            ids = idt.to(L.opts.device());
            lasts = lt.to(L.opts.device());
            return hwm;
        };
        L.f_hwm = build(L.fm, L.fcap, L.f_tpos, L.f_spos, L.f_bias, L.f_id, L.f_last);
        if (L.qpages > 0) {
            const int64_t hwm = build(L.qm, L.qpages * kPage, L.q_tpos, L.q_spos, L.q_bias, L.q_id, L.q_last);
            L.q_hwm_pages = (hwm + kPage - 1) / kPage;
        } else {
            L.q_hwm_pages = 0;
        }
        L.dirty = false;
    }

    // ---------------------------------------------------------------- slots

    at::Tensor flat_rows(const Layer& L, const std::vector<int32_t>& slots_per_stream_token, int64_t cap) const {
        // slots: [streams * S] slot of each (stream, token) -> flat row stream * cap + slot
        std::vector<int64_t> rows(slots_per_stream_token.size());
        for (size_t i = 0; i < rows.size(); ++i)
            rows[i] = int64_t(i / size_t(L.s)) * cap + slots_per_stream_token[i];
        return at::tensor(rows, at::kLong).to(L.opts.device());
    }

    std::vector<int32_t> allocate_frame(Layer& L, int64_t fr) {
        std::vector<int32_t> out(size_t(L.streams * L.s));
        for (int64_t st = 0; st < L.streams; ++st) {
            FreeList& fl = L.ffree[size_t(st)];
            if (int64_t(fl.size()) < L.s) {
                if (L.fmax == 0 || L.fcap < L.fmax) {
                    int64_t want = std::max(L.fcap * 2, L.fcap + L.s - int64_t(fl.size()));
                    if (L.fmax)
                        want = std::min(want, L.fmax);
                    grow_fp(L, want);
                }
                if (int64_t(fl.size()) < L.s)
                    evict_oldest_fp(L, st, L.s - int64_t(fl.size()));
            }
            for (int64_t t = 0; t < L.s; ++t) {
                const int32_t slot = fl.pop();
                const size_t i = size_t(st * L.fcap + slot);
                L.fm.id[i] = next_id_++;
                L.fm.first[i] = L.fm.last[i] = int32_t(fr);
                L.fm.spos[i] = int32_t(t);
                L.fm.count[i] = 1.f;
                L.fm.weight[i] = 1.f;
                L.fm.live[i] = 1;
                out[size_t(st * L.s + t)] = slot;
            }
        }
        L.dirty = true;
        return out;
    }

    void free_fp(Layer& L, int64_t st, int32_t slot) {
        const size_t i = size_t(st * L.fcap + slot);
        if (!L.fm.live[i])
            return;
        L.fm.live[i] = 0;
        L.ffree[size_t(st)].push(slot);
    }
    void free_quant(Layer& L, int64_t st, int32_t slot) {
        const size_t i = size_t(st * L.qpages * kPage + slot);
        if (!L.qm.live[i])
            return;
        L.qm.live[i] = 0;
        const size_t p = size_t(st * L.qpages + slot / kPage);
        if (--L.qpage_live[p] == 0)
            L.qfree[size_t(st)].push(int32_t(slot / kPage));
    }

    // Capacity eviction: the `need` committed, non-sink entries with the oldest last frame.
    void evict_oldest_fp(Layer& L, int64_t st, int64_t need) {
        std::vector<std::pair<int32_t, int32_t>> cand;  // (last, slot)
        std::vector<uint8_t> is_pending(size_t(L.fcap), 0);
        for (auto& kv : L.pending)
            for (int64_t t = 0; t < L.s; ++t)
                is_pending[size_t(kv.second[size_t(st * L.s + t)])] = 1;
        for (int64_t i = 0; i < L.fcap; ++i) {
            const size_t j = size_t(st * L.fcap + i);
            if (L.fm.live[j] && !is_pending[size_t(i)] && !is_sink(L.fm.first[j]))
                cand.push_back({L.fm.last[j], int32_t(i)});
        }
        if (int64_t(cand.size()) < need)
            throw std::runtime_error("KV cache: the budget cannot hold one chunk besides the sink frames");
        std::partial_sort(cand.begin(), cand.begin() + need, cand.end());
        for (int64_t i = 0; i < need; ++i)
            free_fp(L, st, cand[size_t(i)].second);
        drop_prev_refs(L);
    }

    // Entries freed by eviction may be targets of the next tempcache match: forget refs to dead entries.
    void drop_prev_refs(Layer& L) {
        for (size_t i = 0; i < L.prev_entry.size(); ++i) {
            const int32_t r = L.prev_entry[i];
            if (r == -1)
                continue;
            const int64_t st = int64_t(i) / L.s;
            const bool live = is_quant_ref(r) ? L.qm.live[size_t(st * L.qpages * kPage + quant_slot(r))]
                                              : L.fm.live[size_t(st * L.fcap + r)];
            if (!live)
                L.prev_entry[i] = -1;
        }
    }

    // Window eviction before frames up to new_end are added.
    void evict_window(Layer& L, int64_t new_end) {
        const int64_t ws = std::max(sink_end(), new_end - spec_.recent);
        const bool flow = spec_.merge == CacheSpec::Merge::flowcache;
        if (flow)
            flow_collapse(L, ws);
        for (int64_t st = 0; st < L.streams; ++st) {
            for (int64_t i = 0; i < L.fcap; ++i) {
                const size_t j = size_t(st * L.fcap + i);
                if (L.fm.live[j] && L.fm.last[j] < ws && !is_sink(L.fm.first[j]) &&
                    !(flow && (is_old_kept(L.fm, j) || L.fm.count[j] > 1.f)))
                    free_fp(L, st, int32_t(i));
            }
            for (int64_t i = 0; i < L.qpages * kPage; ++i) {
                const size_t j = size_t(st * L.qpages * kPage + i);
                if (L.qm.live[j] && L.qm.last[j] < ws && !is_sink(L.qm.first[j]) &&
                    !(flow && (is_old_kept(L.qm, j) || L.qm.count[j] > 1.f)))
                    free_quant(L, st, int32_t(i));
            }
        }
        drop_prev_refs(L);
        L.dirty = true;
    }

    // FlowCache marks entries it keeps past the window with weight slightly below 1 (never used otherwise):
    // weight is the entry's decay field; FlowCache's kept entries carry exactly 1 - 2^-20.
    static constexpr float kKeptWeight = 1.0f - 1.0f / 1048576.0f;
    static bool is_old_kept(const Meta& m, size_t j) { return m.weight[j] == kKeptWeight; }

    // FlowCache soft prune (33-method study): a frame leaving the window is kept whole when its importance (key
    // change against the frame before it, 0.7 delta + 0.3 recency) is in the top `keep` share of the frames seen
    // leaving, otherwise it collapses to one entry (mean key, mean value, multiplicity S). Kept frames and
    // summaries are bounded: the oldest go first when the store is full. Full-precision pool only.
    void flow_collapse(Layer& L, int64_t ws) {
        if (bits_ > 0)
            return;  // parse_cache_spec refuses flowcache with quantization
        const int64_t keep_frames = int64_t(std::ceil(spec_.keep * spec_.recent));
        for (int64_t st = 0; st < L.streams; ++st) {
            // Leaving frames of this stream: window entries with last < ws, grouped by frame.
            std::map<int32_t, std::vector<int32_t>> leaving;
            for (int64_t i = 0; i < L.fcap; ++i) {
                const size_t j = size_t(st * L.fcap + i);
                if (L.fm.live[j] && L.fm.last[j] < ws && !is_sink(L.fm.first[j]) && L.fm.count[j] == 1.f &&
                    !is_old_kept(L.fm, j))
                    leaving[L.fm.last[j]].push_back(int32_t(i));
            }
            for (auto& kv : leaving) {
                const std::vector<int32_t>& slots = kv.second;
                at::Tensor idx = at::tensor(std::vector<int64_t>(slots.begin(), slots.end()), at::kLong)
                                     .add(st * L.fcap)
                                     .to(L.opts.device());
                at::Tensor kf = L.fk.view({-1, L.d}).index_select(0, idx).to(at::kFloat);
                at::Tensor vf = L.fv.view({-1, L.d}).index_select(0, idx).to(at::kFloat);
                at::Tensor kmean = kf.mean(0), vmean = vf.mean(0);
                // delta: 1 - cos(mean key, mean key of the frame after it, still in the window)
                float delta = 0.f;
                {
                    std::vector<int64_t> nxt;
                    for (int64_t i = 0; i < L.fcap; ++i) {
                        const size_t j = size_t(st * L.fcap + i);
                        if (L.fm.live[j] && L.fm.first[j] == kv.first + 1 && L.fm.count[j] == 1.f)
                            nxt.push_back(st * L.fcap + i);
                    }
                    if (!nxt.empty()) {
                        at::Tensor kn =
                            L.fk.view({-1, L.d}).index_select(0, at::tensor(nxt).to(L.opts.device())).to(at::kFloat);
                        delta = 1.f - at::cosine_similarity(kmean, kn.mean(0), 0).item<float>();
                    }
                }
                const float importance = 0.7f * delta + 0.3f;  // recency is the same for every frame leaving now
                // The running quantile looks at the last 256 frames that left: bounded memory and time.
                auto& hist = L.flow_history[size_t(st)];
                if (hist.size() >= 256)
                    hist.erase(hist.begin());
                hist.push_back(importance);
                std::vector<float> sorted = hist;
                std::sort(sorted.begin(), sorted.end());
                const float thr = sorted[size_t(std::floor((1.0 - spec_.keep) * double(sorted.size() - 1)))];
                int64_t kept_now = 0;
                for (int64_t i = 0; i < L.fcap; ++i)
                    kept_now += L.fm.live[size_t(st * L.fcap + i)] && is_old_kept(L.fm, size_t(st * L.fcap + i));
                if (importance >= thr && keep_frames > 0 && importance > 0.3f) {
                    if (kept_now + L.s > keep_frames * L.s)
                        evict_oldest_kept(L, st, kept_now + L.s - keep_frames * L.s);
                    for (int32_t sl : slots)
                        L.fm.weight[size_t(st * L.fcap + sl)] = kKeptWeight;
                    continue;
                }
                // Collapse into the first slot of the frame, free the rest.
                const int32_t dst = slots[0];
                const size_t j = size_t(st * L.fcap + dst);
                L.fk.view({-1, L.d})[st * L.fcap + dst].copy_(kmean);
                L.fv.view({-1, L.d})[st * L.fcap + dst].copy_(vmean);
                L.fm.count[j] = float(slots.size());
                L.fm.spos[j] = int32_t(L.s / 2);
                for (size_t t = 1; t < slots.size(); ++t)
                    free_fp(L, st, slots[t]);
                L.tokens_merged += int64_t(slots.size()) - 1;
                // Summaries are bounded by one frame's worth of entries per stream.
                std::vector<std::pair<int32_t, int32_t>> summ;
                for (int64_t i = 0; i < L.fcap; ++i) {
                    const size_t q = size_t(st * L.fcap + i);
                    if (L.fm.live[q] && L.fm.last[q] < ws && L.fm.count[q] > 1.f && !is_sink(L.fm.first[q]))
                        summ.push_back({L.fm.last[q], int32_t(i)});
                }
                std::sort(summ.begin(), summ.end());
                for (size_t t = 0; int64_t(summ.size() - t) > L.s; ++t)
                    free_fp(L, st, summ[t].second);
            }
        }
    }
    void evict_oldest_kept(Layer& L, int64_t st, int64_t need) {
        std::vector<std::pair<int32_t, int32_t>> kept;
        for (int64_t i = 0; i < L.fcap; ++i) {
            const size_t j = size_t(st * L.fcap + i);
            if (L.fm.live[j] && is_old_kept(L.fm, j))
                kept.push_back({L.fm.last[j], int32_t(i)});
        }
        std::sort(kept.begin(), kept.end());
        for (int64_t i = 0; i < need && i < int64_t(kept.size()); ++i)
            free_fp(L, st, kept[size_t(i)].second);
    }

    // ---------------------------------------------------------------- gathering (any pool, full precision)

    // Keys or values of entries `refs` (one per row, stream = row / (refs.size() / streams) when grouped by stream;
    // here the caller passes refs laid out [streams, M/streams]) -> [refs.size(), D] float32; ref -1 gives zeros.
    at::Tensor gather_rows(const Layer& L, const std::vector<int32_t>& refs, bool values) const {
        const int64_t m = int64_t(refs.size()), per = m / L.streams;
        at::Tensor out = at::zeros({m, L.d}, L.opts.dtype(at::kFloat));
        std::vector<int64_t> fp_dst, fp_src, q_dst, q_src;
        for (int64_t i = 0; i < m; ++i) {
            const int32_t r = refs[size_t(i)];
            const int64_t st = i / per;
            if (r == -1)
                continue;
            if (is_quant_ref(r)) {
                q_dst.push_back(i);
                q_src.push_back(st * L.qpages * kPage + quant_slot(r));
            } else {
                fp_dst.push_back(i);
                fp_src.push_back(st * L.fcap + r);
            }
        }
        auto dev = [&](const std::vector<int64_t>& x) { return at::tensor(x, at::kLong).to(L.opts.device()); };
        if (!fp_src.empty()) {
            const at::Tensor& pool = values ? L.fv : L.fk;
            out.index_copy_(0, dev(fp_dst), pool.view({-1, L.d}).index_select(0, dev(fp_src)).to(at::kFloat));
        }
        if (!q_src.empty())
            out.index_copy_(0, dev(q_dst), dequant_rows(L, dev(q_src), values));
        return out;
    }

    // Dequantized rows of the quant pool (flat slot indices) -> [M, D] float32, un-rotated.
    at::Tensor dequant_rows(const Layer& L, const at::Tensor& rows, bool values) const {
        const int64_t m = rows.numel(), g = group_;
        at::Tensor out = at::empty({m, L.d}, L.opts.dtype(at::kFloat));
        if (values || spec_.quant != KVQuant::int4_kivi) {
            const at::Tensor& q = values ? L.qv : L.qk;
            const at::Tensor& sc = values ? L.qvs : L.qks;
            at::Tensor qr = q.view({-1, q.size(2)}).index_select(0, rows);
            at::Tensor sr = sc.view({-1, L.d / g}).index_select(0, rows);
            dequantize_tokens(qr, sr, values ? value_bits() : bits_, g, out);
        } else {
            // KIVI keys: each row with its page's per-channel scale and zero, as pages of one token.
            at::Tensor qr = L.qk.view({-1, L.qk.size(2)}).index_select(0, rows).unsqueeze(1);
            at::Tensor page = rows.div(kPage, "floor");
            at::Tensor sc = L.qks.view({-1, L.d}).index_select(0, page);
            at::Tensor zr = L.qkz.view({-1, L.d}).index_select(0, page);
            at::Tensor o3 = out.view({m, 1, L.d});
            dequantize_channels(qr, sc, zr, bits_, o3);
        }
        if (spec_.quant == KVQuant::int4_hadamard)
            fwht_(out, hadamard_block(L));
        return out;
    }

    int64_t hadamard_block(const Layer& L) const {
        int64_t b = 1;
        while (b * 2 <= L.d && L.d % (b * 2) == 0 && b * 2 <= 128)
            b *= 2;
        return b;
    }

    // Pages [p, p + np) of every stream -> scratch_k / scratch_v [streams, np * G, D] in the model dtype.
    void dequant_pages(Layer& L, int64_t p, int64_t np) const {
        const int64_t len = np * kPage, g = group_;
        if (!L.scratch_k.defined() || L.scratch_k.size(1) < len) {
            L.scratch_k = at::empty({L.streams, len, L.d}, L.opts.dtype(at::kFloat));
            L.scratch_v = at::empty({L.streams, len, L.d}, L.opts.dtype(at::kFloat));
        }
        for (int64_t st = 0; st < L.streams; ++st) {
            at::Tensor ok = L.scratch_k[st].narrow(0, 0, len), ov = L.scratch_v[st].narrow(0, 0, len);
            at::Tensor qv = L.qv[st].narrow(0, p * kPage, len), sv = L.qvs[st].narrow(0, p * kPage, len);
            dequantize_tokens(qv, sv, value_bits(), g, ov);
            at::Tensor qk = L.qk[st].narrow(0, p * kPage, len);
            if (spec_.quant == KVQuant::int4_kivi) {
                at::Tensor o3 = ok.view({np, kPage, L.d});
                dequantize_channels(qk.view({np, kPage, -1}), L.qks[st].narrow(0, p, np), L.qkz[st].narrow(0, p, np),
                                    bits_, o3);
            } else {
                dequantize_tokens(qk, L.qks[st].narrow(0, p * kPage, len), bits_, g, ok);
            }
        }
        if (spec_.quant == KVQuant::int4_hadamard) {
            at::Tensor k = L.scratch_k.narrow(1, 0, len), v = L.scratch_v.narrow(1, 0, len);
            if (L.scratch_k.size(1) == len) {
                fwht_(L.scratch_k, hadamard_block(L));
                fwht_(L.scratch_v, hadamard_block(L));
            } else {
                at::Tensor kc = k.contiguous(), vc = v.contiguous();
                fwht_(kc, hadamard_block(L));
                fwht_(vc, hadamard_block(L));
                k.copy_(kc);
                v.copy_(vc);
            }
        }
    }

    // ---------------------------------------------------------------- commit: merging and quantization

    void commit_frame(Layer& L, int64_t fr) {
        std::vector<int32_t> slots = L.pending.at(fr);
        L.pending.erase(fr);
        const int64_t total = L.streams * L.s;
        L.tokens_committed += total;
        std::vector<int32_t> next(size_t(total), -1);
        const bool sink = is_sink(fr);
        const bool match = spec_.merge == CacheSpec::Merge::tempcache && !sink && L.prev_frame == fr - 1 &&
                           int64_t(L.prev_entry.size()) == total;
        if (!match) {
            for (int64_t i = 0; i < total; ++i)
                next[size_t(i)] = sink ? -1 : slots[size_t(i)];
        } else {
            merge_frame(L, fr, slots, next);
        }
        L.prev_frame = fr;
        L.prev_entry = next;
        L.dirty = true;
    }

    // TempCache: each token of frame fr against the entries holding the previous frame's tokens in its spatial
    // neighbourhood (same head); above tau it joins the most similar one: the key stays, values are averaged,
    // the multiplicity grows, and the token's own slot is freed.
    void merge_frame(Layer& L, int64_t fr, const std::vector<int32_t>& slots, std::vector<int32_t>& next) {
        const int64_t total = L.streams * L.s;
        const int64_t r = spec_.radius;
        int64_t hp = hp_, wp = wp_;
        if (hp * wp != L.s) {  // grid unknown: treat the frame as one row
            hp = 1;
            wp = L.s;
        }
        at::Tensor kn = L.fk.view({-1, L.d}).index_select(0, flat_rows(L, slots, L.fcap)).to(at::kFloat);
        at::Tensor knorm = kn.norm(2, 1).clamp_min(1e-12);
        at::Tensor best = at::full({total}, -2.f, at::kFloat);
        std::vector<int32_t> best_ref(size_t(total), -1);
        for (int64_t dh = -r; dh <= r; ++dh)
            for (int64_t dw = -r; dw <= r; ++dw) {
                std::vector<int32_t> cand(size_t(total), -1);
                bool any = false;
                for (int64_t st = 0; st < L.streams; ++st)
                    for (int64_t h = 0; h < hp; ++h)
                        for (int64_t w = 0; w < wp; ++w) {
                            const int64_t h2 = h + dh, w2 = w + dw;
                            if (h2 < 0 || h2 >= hp || w2 < 0 || w2 >= wp)
                                continue;
                            const int32_t ref = L.prev_entry[size_t(st * L.s + h2 * wp + w2)];
                            cand[size_t(st * L.s + h * wp + w)] = ref;
                            any = any || ref != -1;
                        }
                if (!any)
                    continue;
                at::Tensor kc = gather_rows(L, cand, /*values=*/false);
                at::Tensor cos = (kn * kc).sum(1) / (knorm * kc.norm(2, 1).clamp_min(1e-12));
                at::Tensor valid = at::tensor(std::vector<uint8_t>(cand.size(), 0), at::kByte);
                for (size_t i = 0; i < cand.size(); ++i)
                    valid.data_ptr<uint8_t>()[i] = cand[i] != -1;
                cos = at::where(valid.to(at::kBool).to(cos.device()), cos, at::full_like(cos, -2.f)).cpu();
                const float* cp = cos.data_ptr<float>();
                float* bp = best.data_ptr<float>();
                for (int64_t i = 0; i < total; ++i)
                    if (cp[i] > bp[i]) {
                        bp[i] = cp[i];
                        best_ref[size_t(i)] = cand[size_t(i)];
                    }
            }
        // Group merged tokens by target entry.
        const float* bp = best.data_ptr<float>();
        std::unordered_map<int64_t, int64_t> target_index;  // (stream, ref) -> u
        std::vector<int32_t> targets;                       // refs laid out per stream below
        std::vector<int64_t> target_stream, tok_u, tok_src;
        for (int64_t i = 0; i < total; ++i) {
            const int64_t st = i / L.s;
            if (best_ref[size_t(i)] == -1 || bp[i] < float(spec_.tau)) {
                next[size_t(i)] = slots[size_t(i)];
                continue;
            }
            const int32_t ref = best_ref[size_t(i)];
            const int64_t key = st * (int64_t(1) << 32) + int64_t(uint32_t(ref));
            auto it = target_index.find(key);
            if (it == target_index.end()) {
                it = target_index.emplace(key, int64_t(targets.size())).first;
                targets.push_back(ref);
                target_stream.push_back(st);
            }
            tok_u.push_back(it->second);
            tok_src.push_back(st * L.fcap + slots[size_t(i)]);
            next[size_t(i)] = ref;
        }
        if (targets.empty())
            return;
        const int64_t u = int64_t(targets.size());
        auto dev = [&](const std::vector<int64_t>& x) { return at::tensor(x, at::kLong).to(L.opts.device()); };
        // Current values and multiplicities of the targets.
        at::Tensor tv = at::empty({u, L.d}, L.opts.dtype(at::kFloat));
        std::vector<float> counts(static_cast<size_t>(u)), adds(static_cast<size_t>(u), 0.f);
        {
            std::vector<int64_t> fp_u, fp_rows, q_u, q_rows;
            for (int64_t j = 0; j < u; ++j) {
                const int64_t st = target_stream[size_t(j)];
                const int32_t ref = targets[size_t(j)];
                if (is_quant_ref(ref)) {
                    q_u.push_back(j);
                    q_rows.push_back(st * L.qpages * kPage + quant_slot(ref));
                    counts[size_t(j)] = L.qm.count[size_t(q_rows.back())];
                } else {
                    fp_u.push_back(j);
                    fp_rows.push_back(st * L.fcap + ref);
                    counts[size_t(j)] = L.fm.count[size_t(fp_rows.back())];
                }
            }
            if (!fp_rows.empty())
                tv.index_copy_(0, dev(fp_u), L.fv.view({-1, L.d}).index_select(0, dev(fp_rows)).to(at::kFloat));
            if (!q_rows.empty())
                tv.index_copy_(0, dev(q_u), dequant_rows(L, dev(q_rows), true));
            for (int64_t t : tok_u)
                adds[size_t(t)] += 1.f;
            at::Tensor cnt = at::tensor(counts, at::kFloat).to(L.opts.device()).unsqueeze(1);
            at::Tensor add = at::tensor(adds, at::kFloat).to(L.opts.device()).unsqueeze(1);
            at::Tensor sum = tv * cnt;
            sum.index_add_(0, dev(tok_u), L.fv.view({-1, L.d}).index_select(0, dev(tok_src)).to(at::kFloat));
            tv = sum / (cnt + add);
            // Write back.
            if (!fp_rows.empty())
                L.fv.view({-1, L.d}).index_copy_(0, dev(fp_rows), tv.index_select(0, dev(fp_u)).to(L.fv.dtype()));
            if (!q_rows.empty())
                store_quant_values(L, dev(q_rows), tv.index_select(0, dev(q_u)));
        }
        for (int64_t j = 0; j < u; ++j) {
            const int64_t st = target_stream[size_t(j)];
            const int32_t ref = targets[size_t(j)];
            Meta& m = is_quant_ref(ref) ? L.qm : L.fm;
            const size_t i =
                is_quant_ref(ref) ? size_t(st * L.qpages * kPage + quant_slot(ref)) : size_t(st * L.fcap + ref);
            m.count[i] = counts[size_t(j)] + adds[size_t(j)];
            m.last[i] = int32_t(fr);
        }
        for (int64_t i = 0; i < total; ++i)
            if (next[size_t(i)] != slots[size_t(i)])
                free_fp(L, i / L.s, slots[size_t(i)]);
        L.tokens_merged += int64_t(tok_u.size());
    }

    // Token-wise quantized values (un-rotated input) into quant rows.
    void store_quant_values(Layer& L, const at::Tensor& rows, const at::Tensor& v) {
        at::Tensor x = v.contiguous();
        if (spec_.quant == KVQuant::int4_hadamard)
            fwht_(x, hadamard_block(L));
        at::Tensor q = at::empty({x.size(0), L.qv.size(2)}, L.opts.dtype(at::kByte));
        at::Tensor s = at::empty({x.size(0), L.d / group_}, L.opts.dtype(at::kHalf));
        quantize_tokens(x, value_bits(), group_, q, s);
        L.qv.view({-1, L.qv.size(2)}).index_copy_(0, rows, q);
        L.qvs.view({-1, L.d / group_}).index_copy_(0, rows, s);
    }

    // Moves committed fp entries old enough into quantized pages, kPage at a time per stream.
    void move_to_quant(Layer& L) {
        const int64_t limit = L.prev_frame - fp_recent_frames();  // entries whose first frame <= limit move
        if (L.prev_frame < 0)
            return;
        std::vector<uint8_t> pend(size_t(L.streams * L.fcap), 0);
        for (auto& kv : L.pending)
            for (size_t i = 0; i < kv.second.size(); ++i)
                pend[size_t(int64_t(i) / L.s * L.fcap + kv.second[i])] = 1;
        std::vector<int64_t> src_rows, dst_slots, dst_pages;
        std::vector<std::pair<int64_t, int32_t>> moved;  // (stream, fp slot) -> refs update
        std::vector<int32_t> moved_to;
        for (int64_t st = 0; st < L.streams; ++st) {
            std::vector<std::pair<std::pair<int32_t, int32_t>, int32_t>> cand;  // ((first, spos), slot)
            for (int64_t i = 0; i < L.fcap; ++i) {
                const size_t j = size_t(st * L.fcap + i);
                if (L.fm.live[j] && !pend[j] && L.fm.first[j] <= limit)
                    cand.push_back({{L.fm.first[j], L.fm.spos[j]}, int32_t(i)});
            }
            std::sort(cand.begin(), cand.end());
            const int64_t np = int64_t(cand.size()) / kPage;
            for (int64_t p = 0; p < np; ++p) {
                const int32_t page = take_page(L, st);
                dst_pages.push_back(st * L.qpages + page);
                for (int64_t g = 0; g < kPage; ++g) {
                    const int32_t slot = cand[size_t(p * kPage + g)].second;
                    src_rows.push_back(st * L.fcap + slot);
                    const int32_t qslot = int32_t(page * kPage + g);
                    dst_slots.push_back(st * L.qpages * kPage + qslot);
                    moved.push_back({st, slot});
                    moved_to.push_back(qslot);
                }
            }
        }
        if (src_rows.empty())
            return;
        auto dev = [&](const std::vector<int64_t>& x) { return at::tensor(x, at::kLong).to(L.opts.device()); };
        at::Tensor src = dev(src_rows), dst = dev(dst_slots);
        const int64_t m = int64_t(src_rows.size()), g = group_;
        at::Tensor k = L.fk.view({-1, L.d}).index_select(0, src).to(at::kFloat).contiguous();
        at::Tensor v = L.fv.view({-1, L.d}).index_select(0, src).to(at::kFloat).contiguous();
        if (spec_.quant == KVQuant::int4_hadamard)
            fwht_(k, hadamard_block(L));
        if (spec_.quant == KVQuant::int4_kivi) {
            const int64_t np = m / kPage;
            at::Tensor q = at::empty({np, kPage, L.qk.size(2)}, L.opts.dtype(at::kByte));
            at::Tensor sc = at::empty({np, L.d}, L.opts.dtype(at::kHalf)), zr = at::empty_like(sc);
            quantize_channels(k.view({np, kPage, L.d}), bits_, q, sc, zr);
            L.qk.view({-1, L.qk.size(2)}).index_copy_(0, dst, q.view({m, -1}));
            L.qks.view({-1, L.d}).index_copy_(0, dev(dst_pages), sc);
            L.qkz.view({-1, L.d}).index_copy_(0, dev(dst_pages), zr);
        } else {
            at::Tensor q = at::empty({m, L.qk.size(2)}, L.opts.dtype(at::kByte));
            at::Tensor sc = at::empty({m, L.d / g}, L.opts.dtype(at::kHalf));
            quantize_tokens(k, bits_, g, q, sc);
            L.qk.view({-1, L.qk.size(2)}).index_copy_(0, dst, q);
            L.qks.view({-1, L.d / g}).index_copy_(0, dst, sc);
        }
        store_quant_values(L, dst, v);
        // Metadata, and references of the last frame's tokens to moved entries.
        std::unordered_map<int64_t, int32_t> remap;
        for (size_t i = 0; i < moved.size(); ++i) {
            const int64_t st = moved[i].first;
            const int32_t slot = moved[i].second;
            const size_t a = size_t(st * L.fcap + slot), b = size_t(st * L.qpages * kPage + moved_to[i]);
            L.qm.id[b] = L.fm.id[a];
            L.qm.first[b] = L.fm.first[a];
            L.qm.last[b] = L.fm.last[a];
            L.qm.spos[b] = L.fm.spos[a];
            L.qm.count[b] = L.fm.count[a];
            L.qm.weight[b] = L.fm.weight[a];
            L.qm.live[b] = 1;
            L.qpage_live[size_t(st * L.qpages + moved_to[i] / kPage)] += 1;
            free_fp(L, st, slot);
            remap[st * (int64_t(1) << 32) + slot] = quant_ref(moved_to[i]);
        }
        for (size_t i = 0; i < L.prev_entry.size(); ++i) {
            const int32_t r = L.prev_entry[i];
            if (r < 0)
                continue;
            auto it = remap.find(int64_t(i) / L.s * (int64_t(1) << 32) + r);
            if (it != remap.end())
                L.prev_entry[i] = it->second;
        }
        L.dirty = true;
    }

    int32_t take_page(Layer& L, int64_t st) {
        FreeList& fl = L.qfree[size_t(st)];
        if (fl.empty()) {
            if (L.qmax_pages == 0 || L.qpages < L.qmax_pages)
                grow_quant(L, L.qmax_pages ? std::min(L.qmax_pages, L.qpages * 2) : L.qpages * 2);
            if (fl.empty())
                evict_oldest_page(L, st);
        }
        return fl.pop();
    }

    // Budget eviction in the quantized pool: the page whose newest entry is oldest (sinks excluded).
    void evict_oldest_page(Layer& L, int64_t st) {
        int64_t best = -1;
        int32_t best_last = std::numeric_limits<int32_t>::max();
        for (int64_t p = 0; p < L.qpages; ++p) {
            int32_t newest = -1;
            bool sink = false;
            for (int64_t g = 0; g < kPage; ++g) {
                const size_t j = size_t((st * L.qpages + p) * kPage + g);
                if (L.qm.live[j]) {
                    newest = std::max(newest, L.qm.last[j]);
                    sink = sink || is_sink(L.qm.first[j]);
                }
            }
            if (newest >= 0 && !sink && newest < best_last) {
                best_last = newest;
                best = p;
            }
        }
        if (best < 0)
            throw std::runtime_error("KV cache: the budget cannot hold the sink frames");
        for (int64_t g = 0; g < kPage; ++g)
            free_quant(L, st, int32_t(best * kPage + g));
        drop_prev_refs(L);
    }

    CacheSpec spec_;
    int bits_ = 0;
    mutable std::vector<Layer> layers_;
    std::vector<int64_t> sinks_;  // the first `sink` frames written since reset
    int64_t newest_end_ = 0;
    int64_t hp_ = 0, wp_ = 0;
    int64_t allocations_ = 0;
    int64_t next_id_ = 0;
    int64_t group_ = 32;  // channels per quantization scale for this head size
};

}  // namespace

std::unique_ptr<KVCache> make_slot_cache(const CacheSpec& spec, int num_layers) {
    return std::make_unique<SlotCache>(spec, num_layers);
}

std::unique_ptr<KVCache> make_full_cache(int num_layers, int64_t initial_frames) {
    (void)initial_frames;
    return make_slot_cache(CacheSpec(), num_layers);
}

std::unique_ptr<KVCache> make_window_cache(int num_layers, int sink_frames, int window_frames) {
    if (window_frames <= 0)
        throw std::runtime_error("KV cache: window_frames must be positive");
    if (sink_frames < 0 || sink_frames >= window_frames)
        throw std::runtime_error("KV cache: sink_frames " + std::to_string(sink_frames) +
                                 " must be in [0, window_frames " + std::to_string(window_frames) + ")");
    CacheSpec s;
    s.window = true;
    s.sink = sink_frames;
    s.recent = window_frames - sink_frames;
    s.relative_rope = false;
    return make_slot_cache(s, num_layers);
}

}  // namespace reel
