// Which of reel's architectures a checkpoint holds, told from tensor names and shapes alone.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "weights/tensor_map.h"

namespace reel {

struct ModelDetection {
    std::string type;         // "wan-dit", "wan-vae", "umt5-encoder" or "unknown"
    std::string description;  // human words
    nlohmann::json config;    // detected config, null when unknown
    std::string note;         // e.g. why a config could not be completed
};

// `heads`: attention heads for the DiT (shapes can't tell; 0 = assume head_dim 128 like every Wan2.1 model).
ModelDetection detect_model(const TensorMap& tensors, int64_t heads = 0);

}  // namespace reel
