#include "src/engine/pipeline.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "cache/cache_spec.h"
#include "cache/kv_cache.h"
#include "diffusion/rollout.h"
#include "diffusion/tokenizer.h"
#include "diffusion/umt5.h"
#include "diffusion/wan_config.h"
#include "diffusion/wan_dit.h"
#include "diffusion/wan_vae.h"
#include "src/engine/cuda_stats.h"
#include "src/engine/interrupt.h"
#include "src/engine/negative_prompt.h"
#include "src/engine/sys_stats.h"
#include "src/video/video_writer.h"
#include "weights/checkpoint.h"

namespace reel {

int64_t pixel_frames_for_chunks(int64_t chunks, int chunk) {
    const int64_t latent = chunks * chunk;
    return latent <= 0 ? 0 : 1 + 4 * (latent - 1);
}

int64_t chunks_for_pixel_frames(int64_t frames, int chunk) {
    if (frames <= 1)
        return 1;
    const int64_t latent = (frames - 1 + 3) / 4 + 1;  // ceil((frames-1)/4) + 1
    return (latent + chunk - 1) / chunk;
}

c10::Device parse_device(const std::string& s) {
    if (s == "cpu")
        return c10::Device(c10::kCPU);
    if (s == "cuda" || s.rfind("cuda:", 0) == 0) {
        if (!at::hasCUDA())
            throw std::runtime_error("--device " + s + ": this build of reel has no CUDA (LibTorch " +
                                     "was built for CPU only, or no GPU is visible)");
        return c10::Device(s);
    }
    throw std::runtime_error("--device must be cpu, cuda or cuda:N (got '" + s + "')");
}

namespace {

c10::ScalarType parse_dtype(const std::string& s, const c10::Device& dev) {
    if (s == "auto")
        return dev.is_cuda() ? at::kBFloat16 : at::kFloat;
    if (s == "f32" || s == "fp32" || s == "float32")
        return at::kFloat;
    if (s == "bf16" || s == "bfloat16")
        return at::kBFloat16;
    if (s == "f16" || s == "fp16" || s == "float16")
        return at::kHalf;
    throw std::runtime_error("--dtype must be auto, f32, bf16 or f16 (got '" + s + "')");
}

nlohmann::json read_json_file(const std::string& path) {
    std::ifstream in(path);
    if (!in)
        throw std::runtime_error("cannot read " + path);
    try {
        return nlohmann::json::parse(in);
    } catch (const std::exception& e) {
        throw std::runtime_error(path + " is not valid JSON: " + e.what());
    }
}

// RGB uint8 frames [T, H, W, 3] from raw decoder output [B=1, 3, T, H, W] in [-1, 1].
at::Tensor to_rgb8(const at::Tensor& pixels) {
    at::Tensor x = pixels[0].to(at::kCPU, at::kFloat).clamp(-1, 1).mul(0.5).add(0.5).mul(255.0).round_();
    return x.to(at::kByte).permute({1, 2, 3, 0}).contiguous();
}

// Token ids -> [1, text_len, dim] context, zero past the prompt (what the reference hands the DiT). Only the
// prompt's own tokens go through the encoder: padded keys are masked out and relative position buckets depend on
// distance alone, so the real tokens' outputs equal those of a run padded to text_len.
at::Tensor encode_prompt(const UMT5Encoder& enc, const TokenBatch& tokens, int64_t text_len) {
    const int64_t n = tokens.length;
    if (n <= 0)
        throw std::runtime_error("the prompt produced no tokens");
    at::Tensor ids = tokens.ids.narrow(1, 0, n);
    at::Tensor hidden = enc.encode(ids, at::ones_like(ids)).to(at::kFloat);  // [1, n, dim]
    at::Tensor ctx = at::zeros({1, text_len, hidden.size(2)}, hidden.options());
    ctx.narrow(1, 0, n).copy_(hidden);
    return ctx;
}

// One chunk made by the DiT, on its way to the decoder.
struct MadeChunk {
    int64_t index = 0;
    at::Tensor latent;  // [B, F, C, h, w]
    ChunkTiming timing;
    // The cache right after this chunk, read on the DiT's thread, which owns the cache. The full stats walk the
    // cache's entries, so they are taken only when a chunk observer asks for them.
    int64_t kv_bytes = 0;
    KVCacheStats stats;
};

// A one-slot hand-off between the DiT thread and the decode thread: the DiT runs at most one chunk ahead, so
// memory stays what it is without the thread.
class ChunkHandoff {
  public:
    // Blocks while the slot is full; false once the consumer has failed.
    bool push(MadeChunk&& mc) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !full_ || failed_; });
        if (failed_)
            return false;
        slot_ = std::move(mc);
        full_ = true;
        cv_.notify_all();
        return true;
    }
    // Blocks until a chunk arrives; false when the producer has closed and the slot is empty.
    bool pop(MadeChunk& out) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return full_ || closed_; });
        if (!full_)
            return false;
        out = std::move(slot_);
        slot_ = MadeChunk();
        full_ = false;
        cv_.notify_all();
        return true;
    }
    void close() {
        std::lock_guard<std::mutex> lock(mu_);
        closed_ = true;
        cv_.notify_all();
    }
    void fail() {
        std::lock_guard<std::mutex> lock(mu_);
        failed_ = true;
        cv_.notify_all();
    }

  private:
    std::mutex mu_;
    std::condition_variable cv_;
    MadeChunk slot_;
    bool full_ = false, closed_ = false, failed_ = false;
};

}  // namespace

ThreadSplit split_threads(const std::string& mode, const c10::Device& device, int threads) {
    if (mode != "auto" && mode != "on" && mode != "off")
        throw std::runtime_error("--decode-thread must be auto, on or off (got '" + mode + "')");
    ThreadSplit t;
    t.dit_threads = threads;
    // On a GPU both stages queue work on one device; the thread would only add contention. On the CPU two
    // stages of one intra-op thread each beat both ops split over two threads (small ops scale poorly).
    t.overlap = mode == "on" || (mode == "auto" && !device.is_cuda() && threads >= 2);
    if (t.overlap) {
        t.dit_threads = std::max(1, (threads + 1) / 2);
        t.decode_threads = std::max(1, threads - t.dit_threads);
    }
    return t;
}

struct Engine::Impl {
    ModelFiles files;
    LoadOptions opts;
    c10::Device device{c10::kCPU};
    c10::ScalarType dtype = at::kFloat;
    WanDitConfig dit_cfg;
    std::unique_ptr<WanDit> dit;
    std::unique_ptr<WanVae> vae;
    std::unique_ptr<UMT5Encoder> text;
    std::unique_ptr<Tokenizer> tokenizer;
    int64_t text_len = 512;
    int width = 832, height = 480, fps = 16;
    int64_t vae_stride = 8;  // pixels per latent cell (the VAE's spatial downsampling)
    double load_s = 0;
    std::string dit_group;
};

Engine::Engine(const ModelFiles& files, const LoadOptions& opts) : impl_(new Impl) {
    Impl& m = *impl_;
    m.files = files;
    m.opts = opts;
    m.device = parse_device(opts.device);
    m.dtype = parse_dtype(opts.dtype, m.device);
    at::set_num_threads(opts.threads > 0 ? opts.threads : std::max(1u, std::thread::hardware_concurrency()));
    const double t0 = now_seconds();
    const nlohmann::json& man = files.manifest;

    // DiT: config from the manifest, a config.json beside the weights, or the tensor shapes.
    CheckpointOptions copts;
    copts.ema = opts.ema;
    {
        TensorMap w = load_checkpoint(files.dit, copts, &m.dit_group);
        if (!looks_like_wan_dit(w))
            throw std::runtime_error(files.dit + " does not hold a Wan DiT (try 'reel inspect " + files.dit + "')");
        if (man.is_object() && man["dit"].contains("config"))
            m.dit_cfg = WanDitConfig::from_json(man["dit"]["config"]);
        else if (!files.dit_config.empty())
            m.dit_cfg = WanDitConfig::from_json(read_json_file(files.dit_config));
        else
            m.dit_cfg = detect_wan_dit_config(w, opts.heads);
        m.dit_cfg.validate();
        m.dit.reset(new WanDit(m.dit_cfg, w, m.device, m.dtype));
    }
    {
        TensorMap w = load_checkpoint(files.vae);
        WanVaeConfig cfg = man.is_object() && man["vae"].contains("config") ? man["vae"]["config"].get<WanVaeConfig>()
                                                                            : detect_wan_vae_config(w);
        m.vae.reset(new WanVae(w, cfg, m.device, m.dtype, /*with_encoder=*/false));
        m.vae_stride = cfg.spatial_stride();
        if (cfg.z_dim != m.dit_cfg.in_dim)
            throw std::runtime_error("the VAE has " + std::to_string(cfg.z_dim) +
                                     " latent channels but the DiT expects " + std::to_string(m.dit_cfg.in_dim));
    }
    {
        TensorMap w = load_checkpoint(files.text_encoder);
        UMT5Config cfg = man.is_object() && man["text_encoder"].contains("config")
                             ? man["text_encoder"]["config"].get<UMT5Config>()
                             : detect_umt5_config(w);
        // The text encoder runs once per prompt: keep it in f32 on CPU unless the DiT lives on the GPU.
        m.text.reset(new UMT5Encoder(w, cfg, m.device, m.device.is_cuda() ? m.dtype : at::kFloat));
        if (cfg.dim != m.dit_cfg.text_dim)
            throw std::runtime_error("the text encoder's width " + std::to_string(cfg.dim) +
                                     " does not match the DiT's text_dim " + std::to_string(m.dit_cfg.text_dim));
        m.text_len = m.dit_cfg.text_len;
    }
    m.tokenizer.reset(new Tokenizer(Tokenizer::load(files.tokenizer)));
    if (man.is_object() && man.contains("video")) {
        m.width = man["video"].value("width", m.width);
        m.height = man["video"].value("height", m.height);
        m.fps = man["video"].value("fps", m.fps);
    }
    m.load_s = now_seconds() - t0;
}

Engine::~Engine() = default;

const ModelFiles& Engine::files() const {
    return impl_->files;
}
int Engine::default_width() const {
    return impl_->width;
}
int Engine::default_height() const {
    return impl_->height;
}
int Engine::default_fps() const {
    return impl_->fps;
}

RunResult Engine::generate(const GenerateSettings& s_in, Progress& progress, const ChunkObserver& on_chunk) {
    Impl& m = *impl_;
    GenerateSettings s = s_in;
    if (s.prompt.find_first_not_of(" \t\r\n") == std::string::npos)
        throw std::runtime_error("the prompt is empty");
    if (s.chunk < 1)
        throw std::runtime_error("--chunk must be at least 1 latent frame");
    // What the model folder's reel.json recommends, for settings left at their default.
    const nlohmann::json& man = m.files.manifest;
    const nlohmann::json recommended =
        man.is_object() && man.contains("recommended") ? man["recommended"] : nlohmann::json::object();
    if (s.steps.empty())
        s.steps = recommended.value("steps", std::vector<double>{1000, 750, 500, 250});
    if (s.steps.empty())
        throw std::runtime_error("--steps needs at least one timestep");
    if (s.sampler.empty())
        s.sampler = recommended.value("sampler", std::string("renoise"));
    const RolloutSampler sampler = parse_rollout_sampler(s.sampler);
    if (s.cache.empty())  // a model trained on a bounded context says which cache it expects
        s.cache = recommended.value("cache", "full");
    if (s.guidance < 0)
        s.guidance = recommended.value("guidance", 1.0);
    if (!s.negative_prompt_set)
        s.negative_prompt = recommended.value("negative_prompt", std::string());
    check_negative_prompt(s.negative_prompt);
    if (s.negative_guidance < 0)
        s.negative_guidance = recommended.value("negative_guidance", 0.0);
    if (s.context_noise < 0)  // a model trained on noised context is run the way it was trained
        s.context_noise = recommended.value("context_noise", 0.0);
    if (s.context_noise >= 1000)
        throw std::runtime_error("--context-noise must be a timestep below 1000");
    if (s.fps <= 0)
        s.fps = m.fps;
    if (s.width <= 0)
        s.width = m.width;
    if (s.height <= 0)
        s.height = m.height;
    // The VAE's downsampling (8x for Wan), then the DiT's patches (2x2 for Wan).
    const int64_t align = m.vae_stride * std::max(m.dit_cfg.patch[1], m.dit_cfg.patch[2]);
    if (s.width % align || s.height % align)
        throw std::runtime_error("video size " + std::to_string(s.width) + "x" + std::to_string(s.height) +
                                 " must be a multiple of " + std::to_string(align) + " in both directions");
    if (s.frames <= 0)
        s.frames = s.seconds > 0 ? static_cast<int64_t>(std::ceil(s.seconds * s.fps)) : 81;
    const int64_t chunks = chunks_for_pixel_frames(s.frames, s.chunk);
    const int64_t total_frames = pixel_frames_for_chunks(chunks, s.chunk);
    if (total_frames != s.frames)
        progress.note("reel: " + std::to_string(s.frames) + " frames rounded up to " + std::to_string(total_frames) +
                      " (" + std::to_string(chunks) + " whole chunks of " + std::to_string(s.chunk) +
                      " latent frames)");

    // Open outputs first: a bad path fails before any model work.
    VideoFormat fmt;
    fmt.width = s.width;
    fmt.height = s.height;
    fmt.fps = s.fps;
    fmt.crf = s.crf;
    std::vector<std::unique_ptr<VideoWriter>> writers;
    if (!s.output.empty())
        writers.push_back(open_video_writer(s.output, fmt));
    if (!s.frames_dir.empty())
        writers.push_back(open_png_dir_writer(s.frames_dir, fmt));
    std::string record_path = s.record_path;
    if (record_path.empty() && !s.output.empty() && s.output != "-")
        record_path = s.output + ".json";

    const double t_start = now_seconds();
    cuda_reset_peak(m.device);
    double t_text = 0, t_denoise = 0, t_cache = 0, t_decode = 0, t_encode = 0;
    int64_t peak_kv = 0, written = 0, chunks_done = 0;
    bool interrupted = false;
    std::string error;

    const CacheSpec spec = parse_cache_spec(s.cache, s.merge, s.kv_quant, s.cache_budget);
    std::unique_ptr<KVCache> cache = make_cache(spec, static_cast<int>(m.dit_cfg.num_layers));
    RolloutConfig rc;
    rc.chunk_frames = s.chunk;
    rc.steps = s.steps;
    rc.shift = s.shift;
    rc.warp = s.warp;
    rc.sampler = sampler;
    rc.latent_h = s.height / m.vae_stride;
    rc.latent_w = s.width / m.vae_stride;
    rc.channels = m.dit_cfg.in_dim;
    rc.seed = s.seed;
    rc.guidance = s.guidance;
    rc.negative_guidance = s.negative_guidance;
    rc.context_noise = s.context_noise;
    const AnnAttentionSpec attn_spec = parse_attn_spec(s.attn);
    const AnnCrossSpec cross_spec = parse_cross_attn_spec(s.cross_attn);
    m.dit->set_attention(attn_spec, cross_spec);
    CausalRollout rollout(*m.dit, *cache, rc);
    WanVaeDecodeStream decoder(*m.vae);

    // Decode and write, the second stage. With a decode thread it runs there, one chunk behind the DiT; the two
    // stages share nothing mutable: the producer hands over the latent and a snapshot of its own numbers.
    ProgressEvent ev;
    ev.frames_total = total_frames;
    auto consume = [&](const MadeChunk& mc) {
        double t0 = now_seconds();
        at::Tensor rgb;
        {
            at::NoGradGuard ng;
            rgb = to_rgb8(decoder.push(mc.latent.permute({0, 2, 1, 3, 4})));  // [T, H, W, 3]
        }
        const double dt_decode = now_seconds() - t0;
        t_decode += dt_decode;

        t0 = now_seconds();
        const int64_t n = rgb.size(0);
        for (int64_t i = 0; i < n; ++i)
            for (auto& w : writers)
                w->write(rgb[i].data_ptr<uint8_t>());
        written += n;
        const double dt_encode = now_seconds() - t0;
        t_encode += dt_encode;
        chunks_done = mc.index + 1;

        ev.chunk = mc.index;
        ev.frames_done = written;
        ev.elapsed_s = now_seconds() - t_start;
        ev.kv_bytes = mc.kv_bytes;
        ev.rss_bytes = current_rss_bytes();
        progress.update(ev);
        if (on_chunk) {
            const KVCacheStats& st = mc.stats;
            on_chunk({{"chunk", mc.index},
                      {"frame", written},
                      {"denoise_ms", mc.timing.denoise_ms},
                      {"cache_pass_ms", mc.timing.cache_pass_ms},
                      {"decode_ms", dt_decode * 1000},
                      {"encode_ms", dt_encode * 1000},
                      {"kv_bytes", st.bytes},
                      {"kv_bytes_fp", st.bytes_fp},
                      {"kv_bytes_quant", st.bytes_quant},
                      {"kv_bytes_merged", st.bytes_merged},
                      {"kv_bytes_live", st.bytes_live},
                      {"kv_entries", st.entries},
                      {"kv_merged_entries", st.merged_entries},
                      {"merge_rate", st.merge_rate()},
                      {"kv_frames", st.frames},
                      {"rss_bytes", ev.rss_bytes},
                      {"peak_rss_bytes", peak_rss_bytes()},
                      {"gpu_allocated_bytes", cuda_allocated_bytes(m.device)},
                      {"gpu_peak_bytes", cuda_peak_bytes(m.device)}});
        }
    };

    const int threads_before = at::get_num_threads();
    const ThreadSplit split = split_threads(s.decode_thread, m.device, threads_before);
    ChunkHandoff handoff;  // used only with split.overlap
    std::thread decode_worker;
    std::string decode_error;
    if (split.overlap) {
        at::set_num_threads(split.dit_threads);
        decode_worker = std::thread([&, dec_threads = split.decode_threads]() {
            at::set_num_threads(dec_threads);
            MadeChunk mc;
            try {
                while (handoff.pop(mc))
                    consume(mc);
            } catch (const std::exception& e) {
                decode_error = e.what();
                handoff.fail();  // the producer stops at its next hand-off
            } catch (...) {
                decode_error = "unknown error while decoding or writing a chunk";
                handoff.fail();
            }
        });
    }

    try {
        double t0 = now_seconds();
        {
            at::NoGradGuard ng;
            const int text_len = static_cast<int>(m.text_len);
            // The unconditional branch is the empty prompt the model was trained to drop to, unless a negative prompt
            // takes its place; with negative guidance the negative prompt has a third branch of its own.
            std::vector<at::Tensor> rows;
            for (const std::string& text :
                 guidance_prompts(s.prompt, rc.guidance, s.negative_prompt, rc.negative_guidance))
                rows.push_back(encode_prompt(*m.text, m.tokenizer->tokenize(text, text_len), m.text_len));
            rollout.set_context(at::cat(rows, 0).to(m.device, m.dtype));
        }
        t_text = now_seconds() - t0;

        for (int64_t c = 0; c < chunks; ++c) {
            if (interrupt_requested()) {
                interrupted = true;
                break;
            }
            MadeChunk mc;
            mc.index = c;
            mc.latent = rollout.next_chunk();  // [B, F, C, h, w]
            mc.timing = rollout.last_timing();
            mc.kv_bytes = cache->bytes();
            if (on_chunk)
                mc.stats = cache->stats();
            t_denoise += mc.timing.denoise_ms / 1000.0;
            t_cache += mc.timing.cache_pass_ms / 1000.0;
            peak_kv = std::max(peak_kv, mc.kv_bytes);
            if (!split.overlap)
                consume(mc);
            else if (!handoff.push(std::move(mc)))
                break;  // the decode thread failed; its error is reported below
        }
    } catch (const std::exception& e) {
        error = e.what();
    }
    if (split.overlap) {
        handoff.close();  // the decoder finishes what it was handed: every chunk made reaches the video
        decode_worker.join();
        at::set_num_threads(threads_before);
        if (error.empty())
            error = decode_error;
    }
    for (auto& w : writers)
        w->close();  // finalizes what was made, even after an error or Ctrl-C
    const double total = now_seconds() - t_start;

    nlohmann::json settings = {{"frames_requested", s_in.frames > 0 ? s_in.frames : s.frames},
                               {"seconds", s.seconds},
                               {"steps", s.steps},
                               {"sampler", s.sampler},
                               {"shift", s.shift},
                               {"guidance", s.guidance},
                               {"negative_prompt", s.negative_prompt},
                               {"negative_guidance", s.negative_guidance},
                               {"context_noise", s.context_noise},
                               {"warp", s.warp},
                               {"chunk", s.chunk},
                               {"fps", s.fps},
                               {"width", s.width},
                               {"height", s.height},
                               {"crf", s.crf},
                               {"cache", s.cache},
                               {"cache_policy", spec.describe()},
                               {"merge", s.merge},
                               {"kv_quant", s.kv_quant},
                               {"cache_budget", s.cache_budget},
                               {"attn", attn_spec.describe()},
                               {"cross_attn", cross_spec.describe()},
                               {"device", m.opts.device},
                               {"dtype", c10::toString(m.dtype)},
                               {"threads", threads_before},
                               {"decode_thread", split.overlap},
                               {"dit_threads", split.dit_threads},
                               {"decode_threads", split.decode_threads},
                               {"ema", m.opts.ema},
                               {"output", s.output},
                               {"frames_dir", s.frames_dir}};
    nlohmann::json rec = {{"prompt", s.prompt},
                          {"seed", s.seed},
                          {"model", {{"name", m.files.name}, {"dir", m.files.dir}, {"dit", m.files.dit}}},
                          {"settings", settings},
                          {"frames", written},
                          {"frames_planned", total_frames},
                          {"chunks", chunks_done},
                          {"interrupted", interrupted},
                          {"timing_s",
                           {{"load", m.load_s},
                            {"text", t_text},
                            {"denoise", t_denoise},
                            {"cache_pass", t_cache},
                            {"decode", t_decode},
                            {"encode", t_encode},
                            {"total", total}}},
                          {"fps_generated", total > 0 ? written / total : 0.0},
                          {"peak_rss_bytes", peak_rss_bytes()},
                          {"peak_kv_bytes", peak_kv}};
    if (!m.dit_group.empty())
        rec["model"]["dit_group"] = m.dit_group;
    if (attn_spec.enabled) {
        const AnnStats& a = m.dit->ann_stats();
        rec["ann"] = {{"queries", a.queries},   {"pool_keys", a.pool_keys}, {"local_keys", a.local_keys},
                      {"added", a.added},       {"removed", a.removed},     {"maintain_s", a.maintain_s},
                      {"search_s", a.search_s}, {"gather_s", a.gather_s},   {"attend_s", a.attend_s}};
        if (a.measured > 0) {
            rec["ann"]["recall"] = a.recall_sum / double(a.measured);
            rec["ann"]["mass"] = a.mass_sum / double(a.measured);
        }
    }
    if (m.device.is_cuda())
        rec["gpu_peak_bytes"] = cuda_peak_bytes(m.device);
    if (!error.empty())
        rec["error"] = error;

    if (!record_path.empty() && (written > 0 || error.empty())) {
        std::ofstream out(record_path);
        if (!out)
            throw std::runtime_error("cannot write the run record " + record_path);
        out << rec.dump(2) << "\n";
    }
    if (!error.empty()) {
        std::string msg = error;
        if (written > 0 && !s.output.empty())
            msg += " (the " + std::to_string(written) + " frames made before it are in " + s.output + ")";
        throw std::runtime_error(msg);
    }
    RunResult r;
    r.record = rec;
    r.interrupted = interrupted;
    r.frames_written = written;
    return r;
}

}  // namespace reel
