// One entry point for every checkpoint format reel reads (safetensors, torch.save zip and legacy
// .pt/.pth), the choice of the generator inside Self-Forcing training checkpoints, and the mapping of
// wrapper-decorated names (FSDP, activation checkpointing, torch.compile) to Wan's plain names.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "weights/tensor_map.h"

namespace reel {

enum class CheckpointFormat { Safetensors, TorchZip, TorchLegacy, Unknown };

// By magic bytes, not by extension. Throws std::runtime_error if the file can't be opened.
CheckpointFormat detect_checkpoint_format(const std::string& path);
const char* checkpoint_format_name(CheckpointFormat f);

struct CheckpointOptions {
    bool ema = true;  // prefer "generator_ema" over "generator" in nested training checkpoints
};

// Loads any supported format. For nested torch checkpoints the group is "generator_ema" when
// opts.ema and present, else "generator" (else "generator_ema"), else the only top-level group when
// there is exactly one and no top-level tensors, else the whole checkpoint as is. The group actually
// used ("" for none) is written to `chosen_group`, so the caller can say when --ema fell back.
// Names then go through normalize_wan_key. Throws std::runtime_error for a missing or unreadable
// file, an unknown format, a checkpoint without tensors, or two names that normalize to one.
TensorMap load_checkpoint(const std::string& path,
                          const CheckpointOptions& opts = {},
                          std::string* chosen_group = nullptr);

// Strips wrapper components from a parameter name: a leading "model." and "_fsdp_wrapped_module.",
// "_checkpoint_wrapped_module.", "_orig_mod." wherever they are whole components. Each '/'-separated
// level is treated alone. "model._fsdp_wrapped_module.blocks.0.ffn.0.weight" -> "blocks.0.ffn.0.weight".
std::string normalize_wan_key(const std::string& key);

struct CheckpointEntry {
    std::string name, dtype;  // dtype in safetensors spelling ("F32", "BF16", ...)
    std::vector<int64_t> shape;
    uint64_t nbytes = 0;
};

// Every tensor with its raw (un-normalized, '/'-joined) name, sorted by name, without reading tensor
// data (for `reel inspect`).
std::vector<CheckpointEntry> list_checkpoint(const std::string& path);

}  // namespace reel
