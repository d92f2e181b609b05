#include "src/engine/model_files.h"

#include "src/engine/fs_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <dirent.h>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace reel {

namespace {

std::string exe_dir() {
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    if (n <= 0)
        return "";
    std::string p(buf, n);
    return p.substr(0, p.find_last_of('/'));
}

std::string first_existing(const std::string& dir, const std::vector<std::string>& names) {
    for (const auto& n : names)
        if (path_exists(dir + "/" + n))
            return dir + "/" + n;
    return "";
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i)
        s += (i ? ", " : "") + v[i];
    return s;
}

std::string require_part(const std::string& dir, const std::string& part, const std::vector<std::string>& names) {
    std::string p = first_existing(dir, names);
    if (p.empty())
        throw std::runtime_error("model folder " + dir + " has no " + part + " (looked for " + join(names) + ")");
    return p;
}

// A Self-Forcing / CausVid training checkpoint dropped into a Wan2.1 folder is the causal DiT to use.
std::string find_causal_pt(const std::string& dir) {
    std::vector<std::string> found;
    if (DIR* d = opendir(dir.c_str())) {
        while (dirent* e = readdir(d)) {
            std::string n = e->d_name;
            if (n.size() > 3 && n.compare(n.size() - 3, 3, ".pt") == 0)
                found.push_back(dir + "/" + n);
        }
        closedir(d);
    }
    std::sort(found.begin(), found.end());
    return found.empty() ? "" : found[0];
}

}  // namespace

std::vector<std::string> model_search_dirs() {
    std::vector<std::string> dirs;
    if (const char* env = std::getenv("REEL_MODEL_PATH")) {
        std::string s = env;
        size_t start = 0;
        while (start <= s.size()) {
            size_t end = s.find(':', start);
            if (end == std::string::npos)
                end = s.size();
            if (end > start)
                dirs.push_back(s.substr(start, end - start));
            start = end + 1;
        }
    }
    std::string ed = exe_dir();
    if (!ed.empty())
        dirs.push_back(ed + "/../share/reel/weights");
#ifdef REEL_SOURCE_DIR
    dirs.push_back(std::string(REEL_SOURCE_DIR) + "/weights");
#endif
    return dirs;
}

ModelFiles find_model_files(const std::string& name_or_dir, const std::string& dit_override) {
    if (name_or_dir.empty())
        throw std::runtime_error("empty model name");
    std::string dir;
    // A bare name is a shipped model first (so `-m tinyworld` run from the source tree is not the tinyworld/
    // source folder); a path (anything with a '/') or a bare name no search folder knows is a folder.
    const bool bare = name_or_dir.find('/') == std::string::npos;
    if (bare) {
        for (const auto& d : model_search_dirs())
            if (path_exists(d + "/" + name_or_dir + "/reel.json")) {
                dir = d + "/" + name_or_dir;
                break;
            }
    }
    if (dir.empty() && is_directory(name_or_dir))
        dir = name_or_dir;
    if (dir.empty() && bare) {
        std::string hint;
        for (const auto& d : model_search_dirs())
            if (is_directory(d + "/" + name_or_dir))
                hint = " (" + d + "/" + name_or_dir + " has no reel.json yet)";
        throw std::runtime_error("unknown model '" + name_or_dir + "': not a folder, and no model of that name in " +
                                 join(model_search_dirs()) + hint + "; pass -m with a model folder");
    }
    if (dir.empty())
        throw std::runtime_error("model folder " + name_or_dir + " does not exist");
    while (dir.size() > 1 && dir.back() == '/')
        dir.pop_back();

    ModelFiles m;
    m.dir = dir;
    m.name = dir.substr(dir.find_last_of('/') + 1);
    const std::string manifest_path = dir + "/reel.json";
    if (path_exists(manifest_path)) {
        std::ifstream in(manifest_path);
        try {
            m.manifest = nlohmann::json::parse(in);
        } catch (const std::exception& e) {
            throw std::runtime_error(manifest_path + " is not valid JSON: " + e.what());
        }
        m.layout = "reel";
        m.name = m.manifest.value("name", m.name);
        auto part = [&](const char* key) {
            if (!m.manifest.contains(key) || !m.manifest[key].contains("file"))
                throw std::runtime_error(manifest_path + " has no \"" + std::string(key) + "\": {\"file\": ...}");
            std::string f = m.manifest[key]["file"].get<std::string>();
            std::string p = !f.empty() && f[0] == '/' ? f : dir + "/" + f;
            if (!path_exists(p))
                throw std::runtime_error("model " + m.name + " is missing its " + key + " file " + p);
            return p;
        };
        m.dit = part("dit");
        m.vae = part("vae");
        m.text_encoder = part("text_encoder");
        m.tokenizer = part("tokenizer");
    } else {
        m.layout = "wan";
        std::string pt = find_causal_pt(dir);
        m.dit = !pt.empty()
                    ? pt
                    : require_part(dir, "DiT weights",
                                   {"diffusion_pytorch_model.safetensors", "model.safetensors", "dit.safetensors"});
        m.dit_config = first_existing(dir, {"config.json"});
        m.vae = require_part(dir, "VAE", {"Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors", "vae.safetensors"});
        m.text_encoder =
            require_part(dir, "text encoder",
                         {"models_t5_umt5-xxl-enc-bf16.pth", "umt5-xxl-enc.safetensors", "text_encoder.safetensors"});
        m.tokenizer =
            require_part(dir, "tokenizer", {"google/umt5-xxl/spiece.model", "spiece.model", "tokenizer.model"});
    }
    if (!dit_override.empty()) {
        if (!path_exists(dit_override))
            throw std::runtime_error("DiT checkpoint " + dit_override + " does not exist");
        m.dit = dit_override;
    }
    return m;
}

}  // namespace reel
