// umT5 text encoder (encoder only, as Wan2.1 uses it): T5 blocks with a per-layer bidirectional relative
// position bias, T5 RMSNorm, unscaled dot-product attention and a gated GELU(tanh) feed-forward.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "diffusion/nn.h"
#include "weights/tensor_map.h"

namespace reel {

struct UMT5Config {
    int vocab = 256384;
    int dim = 4096;
    int dim_attn = 4096;
    int dim_ffn = 10240;
    int num_heads = 64;
    int num_layers = 24;
    int num_buckets = 32;
    bool shared_pos = false;  // one bias table for all layers (`pos_embedding.*`) instead of one per layer
    int text_len = 512;       // what the pipeline pads prompts to
    int max_dist = 128;       // relative distance where the log buckets saturate
};

void to_json(nlohmann::json& j, const UMT5Config& c);
void from_json(const nlohmann::json& j, UMT5Config& c);

// From `token_embedding.weight` [vocab, dim], `blocks.0.ffn.fc1.weight` [ffn, dim], the number of blocks and
// the bias table [num_buckets, heads]; text_len keeps its default.
UMT5Config detect_umt5_config(const TensorMap& tensors);

// Bidirectional T5 bucket of rel = key_pos - query_pos.
int64_t umt5_relative_bucket(int64_t rel, int num_buckets, int max_dist);
// [Lq, Lk] int64 buckets (CPU).
at::Tensor umt5_relative_buckets(int64_t lq, int64_t lk, int num_buckets, int max_dist);

class UMT5Encoder {
  public:
    UMT5Encoder(const TensorMap& tensors, const UMT5Config& cfg, c10::Device device, c10::ScalarType dtype);

    // ids: [B, L] int64, mask: [B, L] (nonzero = real token) -> hidden [B, L, dim] (padded positions keep
    // whatever the encoder computed for them; see zero_padding)
    at::Tensor encode(const at::Tensor& ids, const at::Tensor& mask) const;

    // What the DiT receives: rows at or past each prompt's length (sum of its mask) set to 0.
    // hidden: [B, L, dim], mask: [B, L]
    static at::Tensor zero_padding(const at::Tensor& hidden, const at::Tensor& mask);

    // Layer `layer`'s position bias [1, heads, Lq, Lk] (the shared table when cfg.shared_pos).
    at::Tensor position_bias(int layer, int64_t lq, int64_t lk) const;

    const UMT5Config& config() const { return cfg_; }

  private:
    // buckets: [Lq, Lk] int64 on the device -> [1, heads, Lq, Lk]
    at::Tensor bias_from_buckets(int layer, const at::Tensor& buckets) const;
    struct Block {
        RMSNorm norm1, norm2;
        Linear q, k, v, o;
        Linear gate, fc1, fc2;
        at::Tensor pos_table;  // [num_buckets, heads]; undefined when shared
    };
    UMT5Config cfg_;
    c10::Device device_;
    c10::ScalarType dtype_;
    at::Tensor token_embedding_;  // [vocab, dim]
    at::Tensor shared_pos_table_;
    std::vector<Block> blocks_;
    RMSNorm norm_;
};

}  // namespace reel
