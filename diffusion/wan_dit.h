// Causal Wan2.1 DiT (Self-Forcing's CausalWanModel) driven by a frame-addressed KV cache. The same code runs the
// golden 2-layer toy and the 30-layer 1.3B model: everything comes from WanDitConfig, modules are loaded by
// checkpoint names (blocks.{i}.self_attn.q, ...).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ann/ann_attention.h"
#include "cache/kv_cache.h"
#include "diffusion/nn.h"
#include "diffusion/rope.h"
#include "diffusion/wan_config.h"
#include "weights/tensor_map.h"

namespace reel {

struct WanBlock {
    at::Tensor modulation;  // [1, 6, dim]: shift1, scale1, gate1, shift2, scale2, gate2
    Linear q, k, v, o;
    RMSNorm norm_q, norm_k;  // undefined weights when qk_norm is off
    LayerNorm norm3;         // affine when cross_attn_norm, else identity (dim 0)
    Linear cross_q, cross_k, cross_v, cross_o;
    RMSNorm cross_norm_q, cross_norm_k;
    Linear ffn0, ffn2;
    at::Tensor cross_kc, cross_vc;  // cached text K, V [B, text_len, N, D] (set_context)
    // The same with the zero padding rows (identical K, V) folded into one row per batch: [B, T', N, D], attended
    // with WanDit::cross_bias_ (AnnCA: padding then costs one candidate, exactly).
    at::Tensor cross_kc_folded, cross_vc_folded;
};

class WanDit {
  public:
    // Takes every tensor by its Wan name, moved to `device` and cast to `dtype`; throws the WeightStore report
    // (every missing / mis-shaped / unexpected tensor, expected vs found) when the checkpoint does not match.
    WanDit(const WanDitConfig& cfg, const TensorMap& weights, c10::Device device, c10::ScalarType dtype);

    const WanDitConfig& config() const { return cfg_; }
    c10::Device device() const { return device_; }
    c10::ScalarType dtype() const { return dtype_; }
    const Rope3D& rope() const { return rope_; }

    // ctx: [B, <= text_len, text_dim] (rows past the prompt zeroed, padded with zeros to text_len here).
    // Computes the text embedding and every layer's cross-attention K/V once; reused by all later calls until
    // the next set_context (a new prompt).
    void set_context(const at::Tensor& ctx);
    bool has_context() const { return context_emb_.defined(); }
    // Layer's cached cross-attention K, V: [B, text_len, N, D].
    std::pair<at::Tensor, at::Tensor> cross_kv(int layer) const;

    // x: [B, F, C, H, W] (pipeline layout) latents of frames [start_frame, start_frame + F);
    // t: [B, F] float timestep per frame. Writes this call's self-attention K/V (pre-RoPE) into `cache`, then
    // attends over everything the cache holds for that layer (no mask: the chunk sees itself bidirectionally).
    // Returns the predicted flow (noise - x0), [B, F, C, H, W] in the model dtype.
    // `trace`, when given, receives the per-layer activations under the golden names (patch_embedding.out,
    // blocks.{i}.self_attn.in, ..., head.out).
    at::Tensor forward(const at::Tensor& x,
                       const at::Tensor& t,
                       int64_t start_frame,
                       KVCache& cache,
                       TensorMap* trace = nullptr);

    // Self- and cross-attention mode (default dense). AnnSA keeps one index set per layer; a call at frame 0 (a new
    // video) starts them afresh.
    void set_attention(const AnnAttentionSpec& self_attn, const AnnCrossSpec& cross_attn);
    const AnnAttentionSpec& attention_spec() const { return ann_spec_; }
    const AnnCrossSpec& cross_attention_spec() const { return cross_spec_; }
    // AnnSA counters and times summed over every call since set_attention.
    const AnnStats& ann_stats() const { return ann_stats_; }

    // The keys attention sees for a cache view: view.k roped at view.frame_pos. hp, wp: token grid per frame.
    at::Tensor roped_keys(const KVView& view, int64_t hp, int64_t wp) const;

  private:
    // AnnSA for layer `layer`: q [B, L, N, D] pre-RoPE queries of frames [start_frame, start_frame + f), q_table
    // their RoPE table -> [B, L, N, D] in q's dtype.
    at::Tensor ann_self_attention(int layer,
                                  const at::Tensor& q,
                                  const RopeTable& q_table,
                                  int64_t start_frame,
                                  int64_t f,
                                  int64_t hp,
                                  int64_t wp,
                                  int64_t sink_end,
                                  const KVCache& cache);
    // Frames [0, result) that AnnSA always attends exactly: the spec's first frames, and a window cache's sinks
    // (the frames before the first gap in what it holds).
    int64_t ann_sink_end(const KVCache& cache) const;

    // t: [B*F] -> float64 sinusoid [B*F, freq_dim] (cos first) cast to the model dtype
    at::Tensor sinusoid(const at::Tensor& t) const;

    WanDitConfig cfg_;
    c10::Device device_;
    c10::ScalarType dtype_;
    Rope3D rope_;
    at::Tensor patch_w_, patch_b_;  // [dim, in*pt*ph*pw] (the Conv3d as a linear over patches), [dim]
    Linear text0_, text2_, time0_, time2_, time_proj_;
    std::vector<WanBlock> blocks_;
    at::Tensor head_modulation_;  // [1, 2, dim]
    Linear head_;
    at::Tensor context_emb_;  // [B, text_len, dim]
    at::Tensor cross_bias_;   // [B, T'] log multiplicity of the folded cross K/V rows, -inf padding
    // RoPE table of the cached keys, reused while the held frames do not change (same for every layer).
    mutable at::Tensor key_pos_memo_;
    mutable RopeTable key_table_memo_;
    mutable int64_t key_grid_memo_ = -1;
    AnnAttentionSpec ann_spec_;
    AnnCrossSpec cross_spec_;
    std::vector<std::unique_ptr<AnnSelfAttention>> ann_layers_;
    AnnStats ann_stats_;
};

// Every tensor of a Wan DiT state dict with its shape, in load order.
std::vector<std::pair<std::string, std::vector<int64_t>>> wan_dit_tensor_shapes(const WanDitConfig& cfg);

// Seeded random weights with the golden data's scheme (Linear/conv N(0,1)/sqrt(fan_in), biases N(0, 0.1^2), norm
// scales 1 + N(0, 0.1^2), modulation N(0,1)/sqrt(dim)), for benchmarks and tests. CPU tensors of `dtype`.
// `gaussian` false draws uniform values of the same variance instead: several times faster for the 1.4B-parameter
// model, where the values do not matter (benchmarks).
TensorMap random_wan_dit_weights(const WanDitConfig& cfg,
                                 uint64_t seed,
                                 c10::ScalarType dtype = c10::kFloat,
                                 bool gaussian = true);

}  // namespace reel
