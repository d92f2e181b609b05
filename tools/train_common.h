// Helpers of the tinyworld training tool (header-only, used by tools/train_tinyworld.cpp only): seeded data from
// the procedural world, resumable checkpoints (weights + AdamW state + step, written atomically), a KV cache that
// never writes in place (so autograd can see every chunk's K/V), and the tiny model configs.
#pragma once
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <sys/stat.h>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cache/kv_cache.h"
#include "tinyworld/prompt.h"
#include "tinyworld/world.h"
#include "weights/safetensors.h"
#include "weights/tensor_map.h"

namespace reel {
namespace train {

// Copies src[name] into dst when src has a tensor of that name and dst's shape (dtype converted), for fresh runs
// started from another model's file; returns whether it did.
inline bool copy_if_same_shape(const TensorMap& src, const std::string& name, const at::Tensor& dst) {
    auto it = src.find(name);
    if (it == src.end() || it->second.sizes() != dst.sizes())
        return false;
    torch::NoGradGuard ng;
    dst.copy_(it->second);
    return true;
}

inline double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline bool file_exists(const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0;
}

inline void make_dirs(const std::string& path) {
    std::string cur;
    for (size_t i = 0; i <= path.size(); ++i) {
        if (i == path.size() || path[i] == '/') {
            if (!cur.empty())
                ::mkdir(cur.c_str(), 0755);
        }
        if (i < path.size())
            cur += path[i];
    }
}

inline void write_text_atomic(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp);
        if (!out)
            throw std::runtime_error("cannot write " + tmp);
        out << text;
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
        throw std::runtime_error("cannot rename " + tmp + " to " + path);
}

inline nlohmann::json read_json(const std::string& path) {
    std::ifstream in(path);
    if (!in)
        throw std::runtime_error("cannot read " + path);
    return nlohmann::json::parse(in);
}

// Per-step randomness: a function of (seed, stream, step) only, so a resumed run draws the same batches as an
// uninterrupted one.
inline uint64_t mix_seed(uint64_t seed, uint64_t stream, uint64_t step) {
    uint64_t z =
        seed * 0x9E3779B97F4A7C15ull ^ (stream + 1) * 0xBF58476D1CE4E5B9ull ^ (step + 7) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    z *= 0xD6E8FEB86672D3A5ull;
    z ^= z >> 29;
    return z;
}

inline at::Generator make_gen(uint64_t seed) {
    return at::make_generator<at::CPUGeneratorImpl>(seed);
}

// Trainable parameters: float32 CPU leaves. Modules are rebuilt from this map every step (WeightStore takes
// tensors of matching device/dtype without a copy), so gradients land on these leaves.
inline TensorMap make_trainable(const TensorMap& init) {
    TensorMap m;
    for (const auto& kv : init)
        m[kv.first] = kv.second.to(at::kFloat).contiguous().clone().detach().requires_grad_(true);
    return m;
}

inline std::vector<torch::Tensor> param_list(const TensorMap& m) {
    std::vector<torch::Tensor> v;
    for (const auto& kv : m)
        v.push_back(kv.second);
    return v;
}

inline TensorMap detached(const TensorMap& m) {
    TensorMap out;
    for (const auto& kv : m)
        out[kv.first] = kv.second.detach().clone();
    return out;
}

inline int64_t count_params(const TensorMap& m) {
    int64_t n = 0;
    for (const auto& kv : m)
        n += kv.second.numel();
    return n;
}

// A resumable checkpoint: <dir>/<name>.safetensors (weights), <name>.adam.pt (AdamW state), <name>.json (step,
// seconds trained, seed, extra). The json is renamed last, so a crash mid-save leaves the previous step's json,
// which still describes loadable files (weights and optimizer state of one step later at worst).
struct Checkpoint {
    std::string dir, name;
    std::string weights() const { return dir + "/" + name + ".safetensors"; }
    std::string adam() const { return dir + "/" + name + ".adam.pt"; }
    std::string meta() const { return dir + "/" + name + ".json"; }
    bool exists() const { return file_exists(meta()) && file_exists(weights()); }

    void save(const TensorMap& params, torch::optim::Optimizer& opt, const nlohmann::json& meta_json) const {
        make_dirs(dir);
        save_safetensors(weights(), detached(params));
        const std::string tmp = adam() + ".tmp";
        torch::save(opt, tmp);
        if (std::rename(tmp.c_str(), adam().c_str()) != 0)
            throw std::runtime_error("cannot rename " + tmp);
        write_text_atomic(meta(), meta_json.dump(2));
    }

    // Copies the saved weights into the trainable leaves (same names and shapes required) and loads AdamW state.
    nlohmann::json load(TensorMap& params, torch::optim::Optimizer* opt) const {
        TensorMap w = load_safetensors(weights());
        torch::NoGradGuard ng;
        for (auto& kv : params) {
            auto it = w.find(kv.first);
            if (it == w.end() || it->second.sizes() != kv.second.sizes())
                throw std::runtime_error("checkpoint " + weights() + ": tensor " + kv.first +
                                         " missing or of another shape (was the config changed?)");
            kv.second.copy_(it->second);
        }
        if (opt && file_exists(adam()))
            torch::load(*opt, adam());
        return read_json(meta());
    }
};

// Self-attention K/V per layer and chunk, kept as separate tensors (never copied into a preallocated buffer), so
// rewriting a chunk's frames (denoising call, then the clean-context pass) replaces a map entry instead of
// overwriting storage autograd still needs. view() concatenates in frame order.
class GraphKVCache : public KVCache {
  public:
    explicit GraphKVCache(int layers) : layers_(layers), data_(size_t(layers)) {}
    void write(int layer, int64_t start, int64_t n, const at::Tensor& k, const at::Tensor& v) override {
        Entry e;
        e.k = k;
        e.v = v;
        e.n = n;
        data_[size_t(layer)][start] = e;
    }
    KVView view(int layer) const override {
        // k, v: [B, T, N, D] with T = sum of held frames * tokens per frame
        std::vector<at::Tensor> ks, vs, pos;
        for (const auto& kv : data_[size_t(layer)]) {
            ks.push_back(kv.second.k);
            vs.push_back(kv.second.v);
            const int64_t s = kv.second.k.size(1) / kv.second.n;
            pos.push_back(at::arange(kv.first, kv.first + kv.second.n, at::kLong).repeat_interleave(s));
        }
        KVView out;
        out.k = at::cat(ks, 1);
        out.v = at::cat(vs, 1);
        out.frame_pos = at::cat(pos, 0);
        return out;
    }
    void read(int layer, int64_t, const std::function<void(const KVBlock&)>& fn) const override {
        // One block with everything, out of place, so gradients reach every chunk's K/V.
        KVView all = view(layer);
        const int64_t b = all.k.size(0), t = all.k.size(1), n = all.k.size(2);
        int64_t s = 1;
        for (const auto& kv : data_[size_t(layer)])
            s = kv.second.k.size(1) / kv.second.n;
        KVBlock blk;
        blk.k = all.k.permute({0, 2, 1, 3});
        blk.v = all.v.permute({0, 2, 1, 3});
        blk.tpos = all.frame_pos.to(at::kFloat).view({1, 1, t}).expand({b, n, t});
        blk.spos = at::arange(s, at::kLong).repeat({t / s}).view({1, 1, t}).expand({b, n, t});
        blk.id = at::arange(t, at::kLong).view({1, 1, t}).expand({b, n, t});
        blk.last = all.frame_pos.view({1, 1, t}).expand({b, n, t});
        fn(blk);
    }
    double query_position(int64_t frame) const override { return double(frame); }
    KVCacheStats stats() const override { return KVCacheStats(); }
    int64_t bytes() const override { return 0; }
    int64_t frames() const override {
        int64_t n = 0;
        for (const auto& kv : data_[0])
            n += kv.second.n;
        return n;
    }
    std::vector<int64_t> frame_list(int layer) const override {
        std::vector<int64_t> f;
        for (const auto& kv : data_[size_t(layer)])
            for (int64_t i = 0; i < kv.second.n; ++i)
                f.push_back(kv.first + i);
        return f;
    }
    void reset() override {
        for (auto& d : data_)
            d.clear();
    }
    int num_layers() const override { return layers_; }
    std::string describe() const override { return "graph (training)"; }

  private:
    struct Entry {
        at::Tensor k, v;
        int64_t n = 0;
    };
    int layers_;
    std::vector<std::map<int64_t, Entry>> data_;
};

// Pixels clearly off the background colour: frames [3, T, H, W] in [0, 255] -> [1, T, H, W] in {0, 1}.
inline at::Tensor object_pixel_mask(const at::Tensor& frames, Background background) {
    const Rgb bg = background_rgb(background);
    const at::Tensor bgt = at::tensor({float(bg[0]), float(bg[1]), float(bg[2])}).view({3, 1, 1, 1});
    return ((frames - bgt).abs().sum(0, true) > 40.0f).to(at::kFloat);
}

// One world clip: frames [start, start + t) of world w -> [3, T, H, W] float in [-1, 1], plus the object
// mask [1, T, H, W] (pixels clearly off the background colour) used to up-weight object pixels in the loss.
inline void render_world_clip(const World& w, int64_t start, int t, at::Tensor* video, at::Tensor* mask) {
    const int size = w.width();
    at::Tensor rgb = at::empty({t, size, size, 3}, at::kByte);
    uint8_t* p = rgb.data_ptr<uint8_t>();
    for (int i = 0; i < t; ++i)
        w.render(start + i, p + int64_t(i) * size * size * 3);
    at::Tensor f = rgb.to(at::kFloat).permute({3, 0, 1, 2}).contiguous();  // [3, T, H, W] in [0, 255]
    if (mask)
        *mask = object_pixel_mask(f, w.scene().background);  // [1, T, H, W]
    *video = f.div(127.5f).sub(1.0f);
}

// Where the clip's pixels would change if every object had another shape in the same place: a square's corners, a
// circle's flanks, a triangle's apex and base. [1, T, H, W] in {0, 1}, against `mask` (render_world_clip's of the same
// clip). What tells one shape from the others is this thin part of the object, and a loss spread over all of the
// object's pixels hardly sees it (--contrast-weight, --dit-contrast-weight).
inline at::Tensor shape_contrast_mask(const World& w, int64_t start, int t, const at::Tensor& mask) {
    at::Tensor out = at::zeros_like(mask);
    for (int alt = 1; alt < kNumShapes; ++alt) {
        SceneSpec s = w.scene();
        for (auto& ob : s.objects)
            ob.shape = Shape((int(ob.shape) + alt) % kNumShapes);
        at::Tensor v, m;
        render_world_clip(w.with_scene(s), start, t, &v, &m);
        out = at::maximum(out, (m - mask).abs());
    }
    return out;
}

// The same from (scene, seed).
inline void render_clip(const SceneSpec& scene,
                        uint64_t seed,
                        int64_t start,
                        int t,
                        at::Tensor* video,
                        at::Tensor* mask,
                        int size = kTinyworldSize) {
    render_world_clip(World(scene, seed, size, size), start, t, video, mask);
}

// render_clip, and the clip's shape_contrast_mask into `contrast` when that is not null.
inline void render_clip_contrast(const SceneSpec& scene,
                                 uint64_t seed,
                                 int64_t start,
                                 int t,
                                 at::Tensor* video,
                                 at::Tensor* mask,
                                 at::Tensor* contrast) {
    const World w(scene, seed);
    render_world_clip(w, start, t, video, mask);
    if (contrast)
        *contrast = shape_contrast_mask(w, start, t, *mask);
}

// uint8 frames from a [3, T, H, W] tensor in [-1, 1].
inline std::vector<std::vector<uint8_t>> to_frames(const at::Tensor& video) {
    at::Tensor x = video.detach().to(at::kFloat).clamp(-1, 1).add(1).mul(127.5).round().to(at::kByte);
    x = x.permute({1, 2, 3, 0}).contiguous();  // [T, H, W, 3]
    std::vector<std::vector<uint8_t>> out;
    const int64_t n = x[0].numel();
    for (int64_t i = 0; i < x.size(0); ++i) {
        const uint8_t* p = x[i].data_ptr<uint8_t>();
        out.emplace_back(p, p + n);
    }
    return out;
}

}  // namespace train
}  // namespace reel
