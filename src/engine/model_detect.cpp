#include "src/engine/model_detect.h"

#include <ATen/ATen.h>

#include "diffusion/umt5.h"
#include "diffusion/wan_config.h"
#include "diffusion/wan_vae.h"

namespace reel {

ModelDetection detect_model(const TensorMap& tensors, int64_t heads) {
    ModelDetection d;
    d.type = "unknown";
    d.description = "no architecture reel knows";
    try {
        if (looks_like_wan_dit(tensors)) {
            d.type = "wan-dit";
            d.description = "Wan2.1 DiT";
            WanDitConfig c = detect_wan_dit_config(tensors, heads);
            d.config = c.to_json();
            d.description = "Wan2.1 DiT, " + std::to_string(c.num_layers) + " layers, dim " + std::to_string(c.dim) +
                            ", " + std::to_string(c.num_heads) + " heads";
            if (heads == 0)
                d.note = "head count assumed from head_dim 128 (pass --heads or a config.json to override)";
        } else if (tensors.count("decoder.conv1.weight")) {
            d.type = "wan-vae";
            d.description = "Wan2.1 VAE";
            WanVaeConfig c = detect_wan_vae_config(tensors);
            d.config = c;
            d.description = "Wan2.1 VAE, base width " + std::to_string(c.dim) +
                            (c.decoder_dim() != c.dim ? " (decoder " + std::to_string(c.decoder_dim()) + ")" : "") +
                            ", " + std::to_string(c.z_dim) + " latent channels" +
                            (tensors.count("encoder.conv1.weight") ? "" : " (decoder only)");
        } else if (tensors.count("token_embedding.weight") && tensors.count("blocks.0.attn.q.weight")) {
            d.type = "umt5-encoder";
            d.description = "umT5 encoder";
            UMT5Config c = detect_umt5_config(tensors);
            d.config = c;
            d.description = "umT5 encoder, " + std::to_string(c.num_layers) + " layers, dim " + std::to_string(c.dim);
        }
    } catch (const std::exception& e) {
        d.note = std::string("recognized as ") + d.type + " but its config is incomplete: " + e.what();
    }
    return d;
}

}  // namespace reel
