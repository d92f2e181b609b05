// Wan2.1 DiT hyper-parameters: from Wan's config.json, from a checkpoint's tensor shapes, or built in.
#pragma once
#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>

#include "weights/tensor_map.h"

namespace reel {

struct WanDitConfig {
    int64_t dim = 1536;
    int64_t ffn_dim = 8960;
    int64_t freq_dim = 256;
    int64_t text_dim = 4096;
    int64_t text_len = 512;
    int64_t in_dim = 16;
    int64_t out_dim = 16;
    int64_t num_heads = 12;
    int64_t num_layers = 30;
    std::array<int64_t, 3> patch{1, 2, 2};  // (t, h, w)
    double eps = 1e-6;
    bool qk_norm = true;
    bool cross_attn_norm = true;

    int64_t head_dim() const { return dim / num_heads; }
    int64_t patch_volume() const { return patch[0] * patch[1] * patch[2]; }
    // Throws std::runtime_error naming the inconsistent fields (e.g. dim not divisible by heads).
    void validate() const;

    // Accepts Wan's config.json keys (dim, ffn_dim, freq_dim, text_dim, text_len, in_dim, out_dim, num_heads,
    // num_layers, patch_size, eps, qk_norm, cross_attn_norm); unknown keys (model_type, _class_name, ...) are
    // ignored. Missing keys take WanModel's constructor defaults, as the Python code does.
    static WanDitConfig from_json(const nlohmann::json& j);
    nlohmann::json to_json() const;
};

// Wan2.1-T2V-1.3B (what Self-Forcing fine-tunes).
WanDitConfig wan_t2v_1_3b();

// True when the map holds a Wan DiT state dict (original key names, no "model." prefix).
bool looks_like_wan_dit(const TensorMap& tensors);

// Infers layers, dim, ffn, freq, text dim, patch, in/out channels and the norms from tensor names and shapes.
// The head count is not visible in any shape: pass it (from config.json) as `num_heads`, or leave 0 to use
// head_dim 128, which every released Wan2.1 model uses; that guess is refused when dim % 128 != 0.
// text_len is not visible either and stays 512 (Wan's value). Throws naming the missing tensor.
WanDitConfig detect_wan_dit_config(const TensorMap& tensors, int64_t num_heads = 0);

}  // namespace reel
