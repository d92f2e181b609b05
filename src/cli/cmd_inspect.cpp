// reel inspect PATH: what a checkpoint holds and which model reel sees in it.
#include <ATen/ATen.h>
#include <sys/stat.h>
#include <CLI/CLI.hpp>

#include <dirent.h>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "src/cli/commands.h"
#include "src/engine/fs_util.h"
#include "src/engine/model_detect.h"
#include "weights/checkpoint.h"

namespace reel {

namespace {

struct InspectOptions {
    std::string path;
    bool no_ema = false;
    bool json = false;
    int64_t heads = 0;
};

std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i)
        out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

std::string human_bytes(double b) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4)
        b /= 1024, ++u;
    char buf[32];
    std::snprintf(buf, sizeof(buf), u ? "%.2f %s" : "%.0f %s", b, units[u]);
    return buf;
}

nlohmann::json inspect_file(const std::string& path, const InspectOptions& o) {
    CheckpointFormat fmt = detect_checkpoint_format(path);
    std::vector<CheckpointEntry> entries = list_checkpoint(path);
    int64_t params = 0, bytes = 0;
    nlohmann::json tensors = nlohmann::json::array();
    for (const auto& e : entries) {
        int64_t n = 1;
        for (int64_t d : e.shape)
            n *= d;
        params += n;
        bytes += static_cast<int64_t>(e.nbytes);
        tensors.push_back({{"name", e.name}, {"dtype", e.dtype}, {"shape", e.shape}, {"bytes", e.nbytes}});
    }
    CheckpointOptions copts;
    copts.ema = !o.no_ema;
    std::string group;
    TensorMap map = load_checkpoint(path, copts, &group);
    ModelDetection det = detect_model(map, o.heads);
    nlohmann::json j = {{"file", path},           {"format", checkpoint_format_name(fmt)},
                        {"tensors", tensors},     {"count", entries.size()},
                        {"parameters", params},   {"bytes", bytes},
                        {"model_type", det.type}, {"model_description", det.description}};
    if (!group.empty())
        j["group"] = group;
    if (!det.config.is_null())
        j["config"] = det.config;
    if (!det.note.empty())
        j["note"] = det.note;
    return j;
}

void print_text(const nlohmann::json& j) {
    std::printf("%s  (%s)\n", j["file"].get<std::string>().c_str(), j["format"].get<std::string>().c_str());
    size_t wname = 4;
    for (const auto& t : j["tensors"])
        wname = std::max(wname, t["name"].get<std::string>().size());
    std::printf("  %-*s  %-5s  %-22s  %s\n", (int)wname, "name", "dtype", "shape", "bytes");
    for (const auto& t : j["tensors"]) {
        std::printf("  %-*s  %-5s  %-22s  %s\n", (int)wname, t["name"].get<std::string>().c_str(),
                    t["dtype"].get<std::string>().c_str(), shape_str(t["shape"].get<std::vector<int64_t>>()).c_str(),
                    human_bytes(t["bytes"].get<double>()).c_str());
    }
    std::printf("total: %zu tensors, %lld parameters, %s\n", j["count"].get<size_t>(),
                (long long)j["parameters"].get<int64_t>(), human_bytes(j["bytes"].get<double>()).c_str());
    if (j.contains("group"))
        std::printf("group used: %s\n", j["group"].get<std::string>().c_str());
    std::printf("model: %s (%s)\n", j["model_type"].get<std::string>().c_str(),
                j["model_description"].get<std::string>().c_str());
    if (j.contains("config"))
        std::printf("config: %s\n", j["config"].dump().c_str());
    if (j.contains("note"))
        std::printf("note: %s\n", j["note"].get<std::string>().c_str());
}

int run_inspect(const InspectOptions& o) {
    std::vector<std::string> files;
    if (is_directory(o.path)) {
        DIR* d = opendir(o.path.c_str());
        if (!d)
            throw std::runtime_error("cannot open folder " + o.path);
        while (dirent* e = readdir(d)) {
            std::string n = e->d_name;
            for (const char* ext : {".safetensors", ".pt", ".pth"}) {
                std::string x = ext;
                if (n.size() > x.size() && n.compare(n.size() - x.size(), x.size(), x) == 0)
                    files.push_back(o.path + "/" + n);
            }
        }
        closedir(d);
        std::sort(files.begin(), files.end());
        if (files.empty())
            throw std::runtime_error("no checkpoint (.safetensors, .pt, .pth) in folder " + o.path);
    } else {
        files.push_back(o.path);
    }
    InspectOptions file_opts = o;
    // A Wan folder's config.json knows the head count that shapes can't tell.
    if (is_directory(o.path) && o.heads == 0) {
        std::ifstream cfg(o.path + "/config.json");
        if (cfg) {
            try {
                file_opts.heads = nlohmann::json::parse(cfg).value("num_heads", 0);
            } catch (...) {
            }
        }
    }
    nlohmann::json all = nlohmann::json::array();
    for (const auto& f : files) {
        nlohmann::json j = inspect_file(f, file_opts);
        if (o.json)
            all.push_back(j);
        else
            print_text(j);
    }
    if (o.json)
        std::printf("%s\n", (all.size() == 1 ? all[0] : all).dump(2).c_str());
    return 0;
}

}  // namespace

CommandRunner register_inspect(CLI::App& app) {
    auto o = std::make_shared<InspectOptions>();
    CLI::App* sub = app.add_subcommand(
        "inspect",
        "Print what a checkpoint (or every checkpoint in a model folder) holds: tensor names, dtypes, shapes, "
        "bytes, total parameters, and the detected model type and config");
    sub->add_option("path", o->path, "checkpoint file (.safetensors, .pt, .pth) or model folder")->required();
    sub->add_flag("--no-ema", o->no_ema, "in Self-Forcing checkpoints, use 'generator' rather than 'generator_ema'");
    sub->add_flag(
        "--ema", [o](int64_t) { o->no_ema = false; }, "use 'generator_ema' when present (default)");
    sub->add_option("--heads", o->heads, "attention heads, for configs that shapes can't tell (default: head_dim 128)");
    sub->add_flag("--json", o->json, "print JSON instead of a table");
    return [o]() { return run_inspect(*o); };
}

}  // namespace reel
