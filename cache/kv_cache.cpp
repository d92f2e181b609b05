#include "cache/kv_cache.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <stdexcept>

namespace reel {

KVCache::~KVCache() = default;

namespace {

// Storage shared by the frame-addressed policies: per layer, K and V buffers of `capacity` frames and the
// absolute frame held by each slot. `window` <= 0 means unbounded (grow by doubling).
class FrameSlotCache : public KVCache {
  public:
    FrameSlotCache(int num_layers, int64_t initial_frames, int sink_frames, int window_frames)
        : layers_(num_layers),
          initial_frames_(std::max<int64_t>(1, initial_frames)),
          sink_(sink_frames),
          window_(window_frames) {
        if (num_layers <= 0)
            throw std::runtime_error("KV cache: num_layers must be positive");
        if (window_ > 0 && (sink_ < 0 || sink_ >= window_))
            throw std::runtime_error("KV cache: sink_frames " + std::to_string(sink_) +
                                     " must be in [0, window_frames " + std::to_string(window_) + ")");
    }

    void write(int layer, int64_t start_frame, int64_t n_frames, const at::Tensor& k, const at::Tensor& v) override {
        Layer& L = at_layer(layer);
        if (k.dim() != 4 || k.sizes() != v.sizes() || n_frames <= 0 || k.size(1) % n_frames != 0)
            throw std::runtime_error("KV cache: write expects k, v [B, F*S, N, D] with F = n_frames");
        const int64_t s = k.size(1) / n_frames;
        const bool same_shape = L.k.defined() && s == L.s && k.size(0) == L.k.size(0) && k.size(2) == L.k.size(2) &&
                                k.size(3) == L.k.size(3) && k.options().dtype() == L.k.options().dtype() &&
                                k.device() == L.k.device();
        if (!same_shape) {
            if (!L.frames.empty())
                throw std::runtime_error("KV cache: write shape/dtype/device differs from what the cache holds");
            // First write, or the first after reset() of a video with another latent size: (re)allocate.
            L.s = s;
            allocate(L, k, window_ > 0 ? window_ : std::max(initial_frames_, n_frames));
        }
        // Which frames are new; present ones are overwritten in place.
        std::vector<int64_t> fresh;
        for (int64_t i = 0; i < n_frames; ++i) {
            auto it = std::find(L.frames.begin(), L.frames.end(), start_frame + i);
            if (it != L.frames.end())
                copy_frame(L, it - L.frames.begin(), k, v, i);
            else
                fresh.push_back(i);
        }
        if (fresh.empty())
            return;
        const int64_t held = static_cast<int64_t>(L.frames.size());
        const int64_t add = static_cast<int64_t>(fresh.size());
        if (window_ > 0) {
            const int64_t sinks = std::min<int64_t>(sink_, held);
            const int64_t evict = std::max<int64_t>(0, held + add - window_);
            if (evict > held - sinks)
                throw std::runtime_error("KV cache: window of " + std::to_string(window_) + " frames with " +
                                         std::to_string(sink_) + " sink frames cannot take " + std::to_string(add) +
                                         " new frames");
            // Drop the oldest non-sink frames by moving the kept ones left, frame by frame in increasing slot
            // order (source is always right of the destination, so no frame overwrites one not yet moved).
            for (int64_t dst = sinks; dst + evict < held; ++dst) {
                move_slot(L, dst + evict, dst);
                L.frames[dst] = L.frames[dst + evict];
            }
            L.frames.resize(held - evict);
        } else if (held + add > L.capacity) {
            int64_t cap = L.capacity;
            while (cap < held + add)
                cap *= 2;
            grow(L, cap);
        }
        for (int64_t i : fresh) {
            const int64_t slot = static_cast<int64_t>(L.frames.size());
            L.frames.push_back(start_frame + i);
            copy_frame(L, slot, k, v, i);
        }
        L.frame_pos = at::Tensor();  // rebuilt lazily by view()
    }

    KVView view(int layer) const override {
        const Layer& L = at_layer(layer);
        KVView out;
        if (!L.k.defined())
            return out;
        const int64_t t = static_cast<int64_t>(L.frames.size()) * L.s;
        out.k = L.k.narrow(1, 0, t);
        out.v = L.v.narrow(1, 0, t);
        if (!L.frame_pos.defined())
            L.frame_pos = at::tensor(L.frames, at::kLong).repeat_interleave(L.s).to(L.k.device());
        out.frame_pos = L.frame_pos;
        return out;
    }

    int64_t bytes() const override {
        int64_t total = 0;
        for (const Layer& L : layers_)
            if (L.k.defined())
                total += L.k.nbytes() + L.v.nbytes();
        return total;
    }

    int64_t frames() const override { return static_cast<int64_t>(layers_[0].frames.size()); }

    std::vector<int64_t> frame_list(int layer) const override { return at_layer(layer).frames; }

    void reset() override {
        for (Layer& L : layers_) {
            L.frames.clear();
            L.frame_pos = at::Tensor();
        }
    }

    int num_layers() const override { return static_cast<int>(layers_.size()); }

    std::string describe() const override {
        if (window_ <= 0)
            return "full";
        return "window " + std::to_string(window_) + " frames, " + std::to_string(sink_) + " sink";
    }

  private:
    struct Layer {
        at::Tensor k, v;  // [B, capacity * S, N, D]
        int64_t capacity = 0;
        int64_t s = 0;                // tokens per frame
        std::vector<int64_t> frames;  // absolute frame per slot
        mutable at::Tensor frame_pos;
    };

    Layer& at_layer(int layer) {
        if (layer < 0 || layer >= static_cast<int>(layers_.size()))
            throw std::runtime_error("KV cache: layer " + std::to_string(layer) + " out of range");
        return layers_[layer];
    }
    const Layer& at_layer(int layer) const { return const_cast<FrameSlotCache*>(this)->at_layer(layer); }

    void allocate(Layer& L, const at::Tensor& like, int64_t cap) {
        L.k = at::empty({like.size(0), cap * L.s, like.size(2), like.size(3)}, like.options());
        L.v = at::empty_like(L.k);
        L.capacity = cap;
    }

    void grow(Layer& L, int64_t cap) {
        at::Tensor ok = L.k, ov = L.v;
        allocate(L, ok, cap);
        const int64_t t = static_cast<int64_t>(L.frames.size()) * L.s;
        L.k.narrow(1, 0, t).copy_(ok.narrow(1, 0, t));
        L.v.narrow(1, 0, t).copy_(ov.narrow(1, 0, t));
    }

    void copy_frame(Layer& L, int64_t slot, const at::Tensor& k, const at::Tensor& v, int64_t i) {
        const int64_t s = L.s;
        L.k.narrow(1, slot * s, s).copy_(k.narrow(1, i * s, s));
        L.v.narrow(1, slot * s, s).copy_(v.narrow(1, i * s, s));
    }

    void move_slot(Layer& L, int64_t from, int64_t to) {
        const int64_t s = L.s;
        L.k.narrow(1, to * s, s).copy_(L.k.narrow(1, from * s, s));
        L.v.narrow(1, to * s, s).copy_(L.v.narrow(1, from * s, s));
    }

    std::vector<Layer> layers_;
    int64_t initial_frames_;
    int sink_, window_;
};

}  // namespace

std::unique_ptr<KVCache> make_full_cache(int num_layers, int64_t initial_frames) {
    return std::make_unique<FrameSlotCache>(num_layers, initial_frames, 0, 0);
}

std::unique_ptr<KVCache> make_window_cache(int num_layers, int sink_frames, int window_frames) {
    if (window_frames <= 0)
        throw std::runtime_error("KV cache: window_frames must be positive");
    return std::make_unique<FrameSlotCache>(num_layers, window_frames, sink_frames, window_frames);
}

}  // namespace reel
