// Per-layer self-attention K/V cache of the causal DiT.
//
// Keys enter the cache BEFORE RoPE (after the q/k RMSNorm), each write tagged with the absolute frame it belongs
// to; attention ropes them when it reads them, at positions the policy chooses (absolute like the reference, or
// relative to the window, which removes the reference's 1024-frame ceiling). Entries are addressed by slot in a
// preallocated per-layer store, one slot occupancy per (batch, head) stream, because merging is decided per head.
// An entry is a key, a value, the frames it stands for (first..last: more than one after a merge), its spatial
// token, a weight, and its storage precision (full, or quantized in pages).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace reel {

// One block of entries as attention reads it. Tensors are views of the store or scratch buffers reused between
// reads; valid only inside the read callback.
struct KVBlock {
    at::Tensor k;     // [B, N, L, D] keys before RoPE (dequantized when stored quantized)
    at::Tensor v;     // [B, N, L, D]
    at::Tensor tpos;  // [B, N, L] float32 time position for RoPE, in frames (multiples of 0.5)
    at::Tensor spos;  // [B, N, L] int64 token index inside the frame's latent grid (h * wp + w)
    at::Tensor bias;  // [B, N, L] float32 logit bias: log(multiplicity * weight), -inf for empty slots
    at::Tensor id;    // [B, N, L] int64 stable entry id (unique per cache until reset), -1 for empty slots
    at::Tensor last;  // [B, N, L] int64 newest absolute frame the entry stands for (-1 for empty slots)
};

// Materialized full-precision contents, for tests and tools (allocates; not for the hot path).
struct KVView {
    at::Tensor k, v;       // [B, T, N, D], k pre-RoPE, entries in slot order (every stream must hold the same frames)
    at::Tensor frame_pos;  // [T] int64 absolute frame of each entry
    at::Tensor bias;       // [T] float logit bias or undefined when all zero
};

struct KVCacheStats {
    int64_t bytes = 0;             // storage allocated, all layers (K/V pools, quantization scales)
    int64_t bytes_fp = 0;          // full-precision entry storage allocated
    int64_t bytes_quant = 0;       // quantized page storage allocated (data + scales)
    int64_t bytes_merged = 0;      // bytes held by live entries standing for more than one frame
    int64_t bytes_live = 0;        // bytes held by live entries (what the cache uses of what it allocated)
    int64_t entries = 0;           // live entries, all layers and streams
    int64_t merged_entries = 0;    // live entries with multiplicity > 1
    int64_t frames = 0;            // distinct frames with a live entry (layer 0)
    int64_t tokens_committed = 0;  // tokens offered to merging so far
    int64_t tokens_merged = 0;     // of which merged into an existing entry
    int64_t allocations = 0;       // pool (re)allocations so far: constant once the store is warm
    double merge_rate() const { return tokens_committed ? double(tokens_merged) / double(tokens_committed) : 0.0; }
};

class KVCache {
  public:
    virtual ~KVCache();
    // k, v: [B, F*S, N, D] for frames [start_frame, start_frame + F), S tokens per frame. Frames already present
    // are overwritten in place (the denoising calls and the t=0 pass of one chunk write the same frames); a write
    // of new frames first commits the earlier ones (merging, quantization) and evicts per policy. Storage takes
    // device and dtype from the first write.
    virtual void write(int layer, int64_t start_frame, int64_t n_frames, const at::Tensor& k, const at::Tensor& v) = 0;
    // Calls fn on the entries of `layer` in blocks of at most max_block slots (fp entries first, then quantized
    // pages). Empty slots inside a block carry bias -inf.
    virtual void read(int layer, int64_t max_block, const std::function<void(const KVBlock&)>& fn) const = 0;
    // The latent token grid of a frame (hp x wp = tokens per frame), for policies that search spatial
    // neighbourhoods; the DiT calls it before writing.
    virtual void set_frame_grid(int64_t hp, int64_t wp) { (void)hp, (void)wp; }
    // Time position (for RoPE) of the queries of absolute frame `frame`, consistent with read()'s tpos.
    virtual double query_position(int64_t frame) const = 0;
    // Full-precision copy of what `layer` holds (tests, tools).
    virtual KVView view(int layer) const = 0;
    // Storage allocated (all layers), in bytes.
    virtual int64_t bytes() const = 0;
    virtual KVCacheStats stats() const = 0;
    // Distinct frames with live entries (layer 0).
    virtual int64_t frames() const = 0;
    // Absolute frames with live entries, ascending (layer 0 unless given).
    virtual std::vector<int64_t> frame_list(int layer = 0) const = 0;
    // Drops everything (a new video); keeps the allocation.
    virtual void reset() = 0;
    virtual int num_layers() const = 0;
    virtual std::string describe() const = 0;
};

// Unbounded cache, the reference behaviour of global attention (absolute RoPE). Capacity grows by doubling,
// starting at `initial_frames` frames per layer.
std::unique_ptr<KVCache> make_full_cache(int num_layers, int64_t initial_frames = 8);

// Self-Forcing's local attention with absolute RoPE (the reference): at most `window_frames` frames, the first
// `sink_frames` frames ever written stay for good, the rest are the most recent frames.
std::unique_ptr<KVCache> make_window_cache(int num_layers, int sink_frames, int window_frames);

}  // namespace reel
