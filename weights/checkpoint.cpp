#include "weights/checkpoint.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <stdexcept>

#include "weights/mapped_file.h"
#include "weights/safetensors.h"
#include "weights/torch_pickle.h"

namespace reel {

CheckpointFormat detect_checkpoint_format(const std::string& path) {
    std::vector<uint8_t> h = read_file_head(path, 512);
    if (h.size() >= 4 && h[0] == 'P' && h[1] == 'K' && ((h[2] == 3 && h[3] == 4) || (h[2] == 5 && h[3] == 6)))
        return CheckpointFormat::TorchZip;
    // Legacy torch.save starts with the pickle of its magic number: PROTO 2, LONG1 10 bytes, 0x1950a86a20f9469cfc6c.
    static const uint8_t legacy[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c,
                                     0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
    if (h.size() >= sizeof(legacy) && std::memcmp(h.data(), legacy, sizeof(legacy)) == 0)
        return CheckpointFormat::TorchLegacy;
    if (h.size() >= 262 && std::memcmp(h.data() + 257, "ustar", 5) == 0)
        return CheckpointFormat::TorchLegacy;  // the tar-based format of torch < 0.4 (refused on load)
    if (h.size() >= 10) {
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--)
            n = (n << 8) | h[i];
        // A JSON object follows the 8-byte length (possibly after whitespace, which no writer emits).
        if (n >= 2 && h[8] == '{')
            return CheckpointFormat::Safetensors;
    }
    return CheckpointFormat::Unknown;
}

const char* checkpoint_format_name(CheckpointFormat f) {
    switch (f) {
        case CheckpointFormat::Safetensors:
            return "safetensors";
        case CheckpointFormat::TorchZip:
            return "torch.save zip";
        case CheckpointFormat::TorchLegacy:
            return "legacy torch.save";
        case CheckpointFormat::Unknown:
            return "unknown";
    }
    return "unknown";
}

namespace {

std::string normalize_level(const std::string& level) {
    static const char* wrappers[] = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"};
    std::vector<std::string> parts;
    size_t start = 0;
    while (true) {
        size_t dot = level.find('.', start);
        std::string part = level.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        bool wrapper = false;
        for (const char* w : wrappers)
            wrapper = wrapper || part == w;
        if (!wrapper)
            parts.push_back(part);
        if (dot == std::string::npos)
            break;
        start = dot + 1;
    }
    // "model." is the Self-Forcing wrapper module around the Wan model; a bare "model" name stays.
    if (parts.size() > 1 && parts[0] == "model")
        parts.erase(parts.begin());
    std::string out;
    for (size_t i = 0; i < parts.size(); i++)
        out += (i ? "." : "") + parts[i];
    return out;
}

}  // namespace

std::string normalize_wan_key(const std::string& key) {
    std::string out;
    size_t start = 0;
    while (true) {
        size_t slash = key.find('/', start);
        out += normalize_level(key.substr(start, slash == std::string::npos ? std::string::npos : slash - start));
        if (slash == std::string::npos)
            break;
        out += '/';
        start = slash + 1;
    }
    return out;
}

TensorMap load_checkpoint(const std::string& path, const CheckpointOptions& opts, std::string* chosen_group) {
    CheckpointFormat fmt = detect_checkpoint_format(path);
    TensorMap raw;
    std::string group;
    if (fmt == CheckpointFormat::Safetensors) {
        raw = load_safetensors(path);
    } else if (fmt == CheckpointFormat::TorchZip || fmt == CheckpointFormat::TorchLegacy) {
        // The pickle alone tells the structure; only the chosen group's storages are then read.
        std::set<std::string> groups;
        bool top_level_tensors = false;
        for (const auto& e : list_torch_checkpoint(path)) {
            size_t slash = e.name.find('/');
            if (slash == std::string::npos)
                top_level_tensors = true;
            else
                groups.insert(e.name.substr(0, slash));
        }
        const char* order_ema[] = {"generator_ema", "generator"};
        const char* order_plain[] = {"generator", "generator_ema"};
        for (const char* g : opts.ema ? order_ema : order_plain) {
            if (groups.count(g)) {
                group = g;
                break;
            }
        }
        if (group.empty() && !top_level_tensors && groups.size() == 1)
            group = *groups.begin();
        raw = load_torch_checkpoint(path, group);
    } else {
        if (read_file_head(path, 1).empty())
            throw std::runtime_error("cannot load " + path + ": the file is empty");
        throw std::runtime_error("unknown checkpoint format: " + path +
                                 " (expected safetensors or a torch.save .pt/.pth; the extension is not used)");
    }
    if (chosen_group)
        *chosen_group = group;
    if (raw.empty())
        throw std::runtime_error("checkpoint " + path + (group.empty() ? "" : " (group '" + group + "')") +
                                 " contains no tensors");
    TensorMap out;
    std::map<std::string, std::string> origin;
    for (auto& kv : raw) {
        std::string name = normalize_wan_key(kv.first);
        auto prev = origin.find(name);
        if (prev != origin.end())
            throw std::runtime_error("checkpoint " + path + ": tensors '" + prev->second + "' and '" + kv.first +
                                     "' both normalize to '" + name + "'");
        origin[name] = kv.first;
        out[name] = kv.second;
    }
    return out;
}

std::vector<CheckpointEntry> list_checkpoint(const std::string& path) {
    CheckpointFormat fmt = detect_checkpoint_format(path);
    std::vector<CheckpointEntry> out;
    if (fmt == CheckpointFormat::Safetensors) {
        for (const auto& t : read_safetensors_header(path))
            out.push_back({t.name, t.dtype, t.shape, t.nbytes});
    } else if (fmt == CheckpointFormat::TorchZip || fmt == CheckpointFormat::TorchLegacy) {
        for (const auto& t : list_torch_checkpoint(path))
            out.push_back({t.name, t.dtype, t.shape, t.nbytes});
    } else {
        throw std::runtime_error("unknown checkpoint format: " + path +
                                 " (expected safetensors or a torch.save .pt/.pth; the extension is not used)");
    }
    std::sort(out.begin(), out.end(),
              [](const CheckpointEntry& a, const CheckpointEntry& b) { return a.name < b.name; });
    return out;
}

}  // namespace reel
