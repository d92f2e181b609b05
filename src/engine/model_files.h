// Where a model's parts are: reel's own folders (reel.json manifest) and the Wan2.1 / Self-Forcing layout.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace reel {

struct ModelFiles {
    std::string dir;           // the model folder
    std::string name;          // manifest name, or the folder's name
    std::string layout;        // "reel" (reel.json) or "wan" (Wan2.1 / Self-Forcing files)
    std::string dit;           // DiT weights (.safetensors, .pt, .pth)
    std::string dit_config;    // config.json beside the DiT, or "" (then detected from shapes)
    std::string vae;           // Wan2.1_VAE.pth or vae.safetensors
    std::string text_encoder;  // umT5 weights
    std::string tokenizer;     // SentencePiece .model
    nlohmann::json manifest;   // reel.json contents (null for the wan layout)
};

// Folders searched for a model given by name: $REEL_MODEL_PATH (colon-separated), the installed
// share/reel/weights beside the binary, and the source tree's weights/.
std::vector<std::string> model_search_dirs();

// `name_or_dir` is a folder, or the name of a folder under one of model_search_dirs(). `dit_override` replaces
// the folder's DiT weights (e.g. Self-Forcing's checkpoints/self_forcing_dmd.pt over the Wan2.1 folder).
// Throws naming what is missing: the model (with the places searched) or the part (with the file names tried).
ModelFiles find_model_files(const std::string& name_or_dir, const std::string& dit_override = "");

}  // namespace reel
