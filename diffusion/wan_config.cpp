#include "diffusion/wan_config.h"

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>

namespace reel {

namespace {

// WanModel.__init__ defaults: what a config.json without a key means.
WanDitConfig wan_model_defaults() {
    WanDitConfig c;
    c.dim = 2048;
    c.ffn_dim = 8192;
    c.freq_dim = 256;
    c.text_dim = 4096;
    c.text_len = 512;
    c.in_dim = 16;
    c.out_dim = 16;
    c.num_heads = 16;
    c.num_layers = 32;
    return c;
}

const at::Tensor& need(const TensorMap& t, const std::string& name, int64_t ndim) {
    auto it = t.find(name);
    if (it == t.end())
        throw std::runtime_error("Wan DiT checkpoint: missing tensor " + name);
    if (it->second.dim() != ndim)
        throw std::runtime_error("Wan DiT checkpoint: tensor " + name + " has " + std::to_string(it->second.dim()) +
                                 " dims, expected " + std::to_string(ndim));
    return it->second;
}

}  // namespace

void WanDitConfig::validate() const {
    std::string err;
    if (dim <= 0 || num_heads <= 0 || dim % num_heads != 0)
        err += " dim " + std::to_string(dim) + " is not divisible by num_heads " + std::to_string(num_heads) + ";";
    else if (head_dim() % 2 != 0)
        err += " head_dim " + std::to_string(head_dim()) + " is odd (RoPE needs pairs);";
    if (freq_dim <= 0 || freq_dim % 2 != 0)
        err += " freq_dim " + std::to_string(freq_dim) + " must be even;";
    if (num_layers <= 0)
        err += " num_layers " + std::to_string(num_layers) + ";";
    for (int64_t p : patch)
        if (p <= 0)
            err += " patch_size entries must be positive;";
    if (!err.empty())
        throw std::runtime_error("invalid Wan DiT config:" + err);
}

WanDitConfig WanDitConfig::from_json(const nlohmann::json& j) {
    WanDitConfig c = wan_model_defaults();
    auto get_i = [&](const char* k, int64_t& v) {
        if (j.contains(k))
            v = j.at(k).get<int64_t>();
    };
    get_i("dim", c.dim);
    get_i("ffn_dim", c.ffn_dim);
    get_i("freq_dim", c.freq_dim);
    get_i("text_dim", c.text_dim);
    get_i("text_len", c.text_len);
    get_i("in_dim", c.in_dim);
    get_i("out_dim", c.out_dim);
    get_i("num_heads", c.num_heads);
    get_i("num_layers", c.num_layers);
    if (j.contains("patch_size")) {
        auto p = j.at("patch_size").get<std::vector<int64_t>>();
        if (p.size() != 3)
            throw std::runtime_error("Wan DiT config: patch_size must have 3 entries");
        c.patch = {p[0], p[1], p[2]};
    }
    if (j.contains("eps"))
        c.eps = j.at("eps").get<double>();
    if (j.contains("qk_norm"))
        c.qk_norm = j.at("qk_norm").get<bool>();
    if (j.contains("cross_attn_norm"))
        c.cross_attn_norm = j.at("cross_attn_norm").get<bool>();
    c.validate();
    return c;
}

nlohmann::json WanDitConfig::to_json() const {
    return nlohmann::json{{"dim", dim},
                          {"ffn_dim", ffn_dim},
                          {"freq_dim", freq_dim},
                          {"text_dim", text_dim},
                          {"text_len", text_len},
                          {"in_dim", in_dim},
                          {"out_dim", out_dim},
                          {"num_heads", num_heads},
                          {"num_layers", num_layers},
                          {"patch_size", {patch[0], patch[1], patch[2]}},
                          {"eps", eps},
                          {"qk_norm", qk_norm},
                          {"cross_attn_norm", cross_attn_norm}};
}

WanDitConfig wan_t2v_1_3b() {
    return WanDitConfig{};  // the struct defaults are the 1.3B model
}

bool looks_like_wan_dit(const TensorMap& tensors) {
    return tensors.count("patch_embedding.weight") && tensors.count("blocks.0.self_attn.q.weight") &&
           tensors.count("time_projection.1.weight") && tensors.count("head.head.weight");
}

WanDitConfig detect_wan_dit_config(const TensorMap& t, int64_t num_heads) {
    WanDitConfig c;
    const at::Tensor& pe = need(t, "patch_embedding.weight", 5);  // [dim, in, pt, ph, pw]
    c.dim = pe.size(0);
    c.in_dim = pe.size(1);
    c.patch = {pe.size(2), pe.size(3), pe.size(4)};
    c.ffn_dim = need(t, "blocks.0.ffn.0.weight", 2).size(0);
    c.freq_dim = need(t, "time_embedding.0.weight", 2).size(1);
    c.text_dim = need(t, "text_embedding.0.weight", 2).size(1);
    const int64_t head_out = need(t, "head.head.weight", 2).size(0);
    if (head_out % c.patch_volume() != 0)
        throw std::runtime_error("Wan DiT checkpoint: head.head.weight rows " + std::to_string(head_out) +
                                 " are not a multiple of the patch volume " + std::to_string(c.patch_volume()));
    c.out_dim = head_out / c.patch_volume();
    int64_t layers = 0;
    while (t.count("blocks." + std::to_string(layers) + ".self_attn.q.weight"))
        ++layers;
    c.num_layers = layers;
    c.qk_norm = t.count("blocks.0.self_attn.norm_q.weight") != 0;
    c.cross_attn_norm = t.count("blocks.0.norm3.weight") != 0;
    if (num_heads > 0) {
        c.num_heads = num_heads;
    } else {
        if (c.dim % 128 != 0)
            throw std::runtime_error("Wan DiT checkpoint: dim " + std::to_string(c.dim) +
                                     " is not a multiple of 128, so the head count cannot be guessed; give the "
                                     "model's config.json (num_heads)");
        c.num_heads = c.dim / 128;
    }
    c.validate();
    return c;
}

}  // namespace reel
