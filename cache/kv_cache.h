// Per-layer self-attention K/V cache of the causal DiT, addressed by latent frame.
//
// Keys enter the cache BEFORE RoPE (after the q/k RMSNorm), each frame tagged with its absolute frame position;
// attention ropes them when it reads them. With absolute positions this equals the reference (which stores
// roped keys), and it lets bounded policies (windows with sinks, merged entries, quantized blocks) move, merge or
// re-position entries without un-rotating anything.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace reel {

struct KVView {
    at::Tensor k, v;       // [B, T, N, D], k pre-RoPE (T = held frames * tokens per frame, slot order)
    at::Tensor frame_pos;  // [T] int64 absolute frame position of each token, used for RoPE
    at::Tensor bias;       // [T] float logit bias (e.g. +log(count) for merged entries) or undefined
};

class KVCache {
  public:
    virtual ~KVCache();
    // k, v: [B, F*S, N, D] for frames [start_frame, start_frame + F). Frames already present are overwritten in
    // place (the denoising calls and the t=0 pass of one chunk write the same frames); new frames are appended,
    // evicting per policy. Storage takes device and dtype from the first write.
    virtual void write(int layer, int64_t start_frame, int64_t n_frames, const at::Tensor& k, const at::Tensor& v) = 0;
    // What attention reads for `layer`: views into the storage, valid until the next write to that layer.
    virtual KVView view(int layer) const = 0;
    // Bytes of K/V storage actually allocated (capacity, all layers).
    virtual int64_t bytes() const = 0;
    // Frames held (per layer; every layer holds the same frames).
    virtual int64_t frames() const = 0;
    // Absolute frame position of each held frame, in slot order.
    virtual std::vector<int64_t> frame_list(int layer = 0) const = 0;
    // Drops everything (a new video); keeps the allocation where the policy can.
    virtual void reset() = 0;
    virtual int num_layers() const = 0;
    virtual std::string describe() const = 0;
};

// Unbounded cache, the reference behaviour of global attention. Capacity grows by doubling (amortized), starting
// at `initial_frames` frames per layer.
std::unique_ptr<KVCache> make_full_cache(int num_layers, int64_t initial_frames = 8);

// Self-Forcing's local attention: holds at most `window_frames` frames in total, the first `sink_frames` frames
// ever written stay for good (attention sinks), the rest is the most recent frames. Like local_attn_size /
// sink_size in the reference: eviction moves the kept frames left, so slot order is sinks then oldest to newest.
// Throws at write time when a write cannot fit (window_frames < sink_frames + new frames).
std::unique_ptr<KVCache> make_window_cache(int num_layers, int sink_frames, int window_frames);

}  // namespace reel
