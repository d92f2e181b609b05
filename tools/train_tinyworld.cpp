// train_tinyworld: trains reel's embedded default model "tinyworld" (tiny Wan VAE, word-level SentencePiece
// tokenizer, tiny umT5 + tiny causal Wan DiT) on the procedural world, through the engine's own modules, and
// exports a model folder `reel generate -m` loads. See docs/training.md for the recipe and the measured numbers.
//
//   train_tinyworld --out weights/tinyworld --stage all --minutes 60 [--resume] [--seed 1]
//
// Stages: tokenizer | vae | dit | eval | check (autograd reaches the weight maps) | all (tokenizer, vae, dit,
// eval). Every stage writes resumable checkpoints (weights, AdamW state, step) under --state every
// --ckpt-minutes and exports the current model into --out, so an interrupted run leaves a usable model.
//
// Training goes through the public module API: the weights live in a TensorMap of float32 CPU leaves with
// requires_grad; the module is rebuilt from that map every step (WeightStore takes tensors of matching
// device/dtype without a copy), so the optimizer updates exactly what the module computes with.
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "cache/cache_spec.h"
#include "cache/kv_cache.h"
#include "diffusion/rollout.h"
#include "diffusion/scheduler.h"
#include "diffusion/tokenizer.h"
#include "diffusion/umt5.h"
#include "diffusion/wan_config.h"
#include "diffusion/wan_dit.h"
#include "diffusion/wan_vae.h"
#include "src/engine/negative_prompt.h"
#include "src/engine/sys_stats.h"
#include "tinyworld/evaluator.h"
#include "tinyworld/prompt.h"
#include "tinyworld/suite.h"
#include "tinyworld/world.h"
#include "tools/train_common.h"
#include "tools/train_vae.h"
#include "weights/safetensors.h"

using namespace reel;
using namespace reel::train;
using nlohmann::json;

namespace {

struct Options {
    std::string out = "weights/tinyworld";
    std::string state = "tools/train_state";
    std::string stage = "all";
    double minutes = 10;      // stage budget (for `all`: split 30% VAE, 70% DiT)
    double ckpt_minutes = 3;  // checkpoint + export period
    int64_t max_steps = 0;    // 0: time budget only
    bool resume = false;
    uint64_t seed = 1;
    int threads = 2;
    // VAE
    std::vector<int> vae_mult{1, 2, 4, 4};
    int vae_dim = 16, vae_res = 1, vae_batch = 2, vae_frames = 33;
    int vae_dec_dim = 0;      // decoder base width (0: vae_dim); narrower decodes faster at generation time
    std::string vae_init;     // VAE file whose tensors of matching name and shape start a fresh run (e.g. its encoder)
    std::string vae_distill;  // model folder whose DiT's latents the decoder learns to decode like that folder's VAE
    int distill_samples = 64;
    int distill_frames = 0;  // latent frames per rollout (0: a training clip's); longer ones are decoded in windows
    double distill_weight = 1.0;
    double vae_lr = 5e-4, obj_weight = 16, edge_weight = 1.0, latent_noise = 0.05;
    int obj_ring = 0;            // pixels around the object that weigh --obj-weight too (the object's mask, dilated)
    double contrast_weight = 0;  // VAE: extra L1 weight of the pixels another shape would change (shape_contrast_mask)
    double color_weight = 0;     // VAE: L1 on the object's mean colour per frame
    double prompt_weight = 0;    // VAE: L1 of decoded DiT rollouts against their prompt's two colours
    double latent_class_weight = 0;  // VAE (joint): cross-entropy of linear colour/background heads on the latents
    double gan_weight = 0;           // VAE: hinge GAN loss of a frame patch discriminator
    int gan_frames = 16;             // VAE: frames per step the discriminator judges (of each source)
    int gan_warmup = 50;             // VAE: discriminator-only steps before its loss reaches the decoder
    bool vae_decoder_only = false;   // encoder (encoder.*, conv1.*) frozen: the latent space, and so the DiT, stay
    // text encoder + DiT
    int dit_dim = 128, dit_layers = 4, dit_heads = 4, dit_ffn = 512, text_dim = 64, text_layers = 2, text_len = 24;
    int dit_patch = 2;     // DiT patch side in latent cells (tokens per latent frame: (64 / stride / patch)^2)
    std::string dit_init;  // model folder whose DiT and text-encoder tensors of matching name and shape start a run
    int dit_batch = 16, chunks = 4, clips_per_prompt = 2, latent_clips = 0;
    int latent_extra = 0;  // latent frames encoded past the training window (windows then start mid-clip too)
    double dit_lr = 3e-4, context_noise = 0.0, warped_share = 0.5;
    double train_shift = 5.0;         // shift of the table the other DiT timesteps come from (1: uniform noise levels)
    bool sink_windows = false;        // mid-clip DiT windows keep the clip's first chunk in front (as sinks)
    bool self_context_chain = false;  // --self-context estimates past the first chunk from the rollout's whole chain
    double self_context = 0.0;        // share of context chunks replaced by the DiT's own x0 estimate (exposure bias)
    double sink_shift = 0.0;         // share of sink windows whose sinks get their own torus shift (a long video's gap)
    double dit_obj_weight = 8.0;     // flow-matching loss weight of latent cells an object touches
    double dit_contrast_weight = 0;  // extra weight of a latent cell fully covered by shape_contrast_mask pixels
    std::string dit_loss = "mse";    // mse (x0 estimate: posterior mean) | l1 (per-cell posterior median)
    double dit_pixel_weight = 0.0;   // weight of a loss on the DiT's x0 estimate decoded to pixels (0: none)
    int dit_pixel_rows = 4;          // batch rows that loss decodes per step (one chunk each)
    double dit_pixel_max_t = 1000;   // those rows' timestep in the judged chunk is drawn at or below this
    double dit_shape_weight = 0.0;   // cross-entropy of a frozen shape classifier on the decoded x0 estimates' crops
    int dit_shape_steps = 400;       // steps that classifier trains (world renders and their VAE reconstructions)
    double dit_gan_weight = 0.0;     // hinge GAN loss on those decoded x0 estimates (object crops, shape-conditioned)
    int dit_gan_warmup = 100;        // discriminator-only steps before its loss reaches the DiT
    int probe_rollouts = 0;          // --stage latent-probe: probe this many DiT rollouts instead of encoded clips
    int corrected_rollouts = 0;      // rollouts of the init model that world-corrected windows come from (0: none)
    int corrected_chunks = 40;       // chunks per such rollout
    int corrected_every = 4;         // a window every N chunks of it, from chunk 3 on
    double corrected_share = 0.25;   // share of each DiT batch that are world-corrected windows
    int recommend_sink = 0;          // sink frames of the recommended window (reel.json)
    double recommend_guidance = 1.0;         // written to reel.json's `recommended` block: reel generate's default
    std::string recommend_negative;          // reel.json's negative_prompt (reel's --negative-prompt spec)
    double recommend_negative_guidance = 0;  // reel.json's negative_guidance
    double text_drop = 0.0;    // share of training clips whose prompt is replaced by "" (classifier-free guidance)
    double dit_lr_final = -1;  // < 0: constant lr; else cosine from dit_lr at lr_decay_start to this at max_steps
    int64_t lr_decay_start = 0;
    // eval
    int eval_frames = 160, eval_prompts = 48;
    // The eval rollouts' cache, as reel's --cache / --merge take it. "window" is what the export recommends and
    // reel generate uses by default (--recommend-sink sink frames + the trained context, positions relative to the
    // window); "window-absolute" the same with the reference's absolute positions (measured identical: RoPE scores
    // depend on offsets only).
    std::string eval_cache = "window", eval_merge = "none";
    uint64_t eval_seed = 0;
    double eval_guidance = 1.0;  // classifier-free guidance scale of the eval rollouts (1: off)
    // The eval guidance's negative prompt, as reel's --negative-prompt takes it: "" (the empty prompt, as trained),
    // text, or swap:a=b,... (the prompt with words swapped).
    std::string eval_negative;
    // > 0: the negative prompt gets a branch of its own (RolloutConfig::negative_guidance) and the empty prompt keeps
    // the guidance's; 0: it takes the empty prompt's place.
    double eval_negative_guidance = 0.0;
    // The eval rollouts' cache-pass timestep; < 0: the training's --context-noise, else the model folder's.
    double eval_context_noise = -1;
    double recommend_context_noise = -1;  // reel.json's; < 0: the training's --context-noise
    std::vector<double> eval_steps{1000, 750, 500, 250};
    std::string eval_sampler = "renoise";
    int eval_prefix_chunks = 0;
    std::vector<double> recommend_steps{1000, 750, 500, 250};  // reel.json's recommended steps and sampler
    std::string recommend_sampler = "renoise";
};

const int kChunk = 3;  // latent frames per chunk (Self-Forcing)

// ---------------------------------------------------------------- configs

WanVaeConfig vae_config(const Options& o) {
    WanVaeConfig c;
    c.dim = o.vae_dim;
    c.dec_dim = o.vae_dec_dim == o.vae_dim ? 0 : o.vae_dec_dim;
    c.z_dim = 16;
    c.dim_mult = o.vae_mult;
    c.num_res_blocks = o.vae_res;
    // Wan's 4x temporal compression comes from the last two downsamples; a shorter --vae-mult (1 2 4: 4x spatial)
    // keeps the 4x in time, which the rollout's 1 + 4k frame arithmetic relies on.
    if (o.vae_mult.size() < 3)
        throw std::runtime_error("--vae-mult needs at least 3 entries (two temporal downsamples), got " +
                                 std::to_string(o.vae_mult.size()));
    const size_t n = o.vae_mult.size() - 1;
    c.temporal_downsample.assign(n, false);
    c.temporal_downsample[n - 1] = c.temporal_downsample[n - 2] = true;
    // Identity normalization while training; export writes the measured per-channel statistics.
    c.mean.assign(16, 0.0f);
    c.std_.assign(16, 1.0f);
    return c;
}

WanDitConfig dit_config(const Options& o) {
    WanDitConfig c;
    c.dim = o.dit_dim;
    c.ffn_dim = o.dit_ffn;
    c.freq_dim = 64;
    c.text_dim = o.text_dim;
    c.text_len = o.text_len;
    c.in_dim = 16;
    c.out_dim = 16;
    c.num_heads = o.dit_heads;
    c.num_layers = o.dit_layers;
    c.patch = {1, int64_t(o.dit_patch), int64_t(o.dit_patch)};
    c.validate();
    return c;
}

UMT5Config text_config(const Options& o, int vocab) {
    UMT5Config c;
    c.vocab = vocab;
    c.dim = o.text_dim;
    c.dim_attn = o.text_dim;
    c.dim_ffn = 2 * o.text_dim;
    c.num_heads = 2;
    c.num_layers = o.text_layers;
    c.num_buckets = 32;
    c.shared_pos = false;
    c.text_len = o.text_len;
    c.max_dist = 128;
    return c;
}

// T5-style init: embeddings N(0,1), q scaled by 1/sqrt(head dim) (T5 folds the attention scale into its
// weights), other projections N(0, 1/fan_in), norms 1, position biases 0.
TensorMap umt5_init(const UMT5Config& c, uint64_t seed) {
    at::Generator g = make_gen(seed);
    auto opt = at::TensorOptions().dtype(at::kFloat);
    auto lin = [&](int64_t out, int64_t in, double extra = 1.0) {
        return at::randn({out, in}, g, opt).mul(extra / std::sqrt(double(in)));
    };
    TensorMap m;
    m["token_embedding.weight"] = at::randn({c.vocab, c.dim}, g, opt);
    const double qscale = 1.0 / std::sqrt(double(c.dim_attn / c.num_heads));
    for (int i = 0; i < c.num_layers; ++i) {
        const std::string p = "blocks." + std::to_string(i) + ".";
        m[p + "norm1.weight"] = at::ones({c.dim}, opt);
        m[p + "norm2.weight"] = at::ones({c.dim}, opt);
        m[p + "attn.q.weight"] = lin(c.dim_attn, c.dim, qscale);
        m[p + "attn.k.weight"] = lin(c.dim_attn, c.dim);
        m[p + "attn.v.weight"] = lin(c.dim_attn, c.dim);
        m[p + "attn.o.weight"] = lin(c.dim, c.dim_attn);
        m[p + "ffn.gate.0.weight"] = lin(c.dim_ffn, c.dim);
        m[p + "ffn.fc1.weight"] = lin(c.dim_ffn, c.dim);
        m[p + "ffn.fc2.weight"] = lin(c.dim, c.dim_ffn);
        m[p + "pos_embedding.embedding.weight"] = at::zeros({c.num_buckets, c.num_heads}, opt);
    }
    m["norm.weight"] = at::ones({c.dim}, opt);
    return m;
}

std::vector<std::string> train_prompts() {
    return tinyworld_suite("train");
}

// World seed of the i-th evaluation clip that the VAE eval, the prefix eval and patch-rank render: the same clips.
uint64_t eval_clip_seed(size_t i) {
    return 1000003 + i;
}

// lr with a short linear warm-up.
double lr_at(double base, int64_t step) {
    return base * std::min(1.0, double(step + 1) / 200.0);
}

// The DiT's lr: warm-up, then constant, or a cosine down to `final` between `decay_start` and `max_steps` (a
// function of the step alone, so a resumed run follows the same schedule as an uninterrupted one).
double dit_lr_at(double base, double final, int64_t decay_start, int64_t max_steps, int64_t step) {
    double lr = lr_at(base, step);
    if (final < 0 || max_steps <= decay_start || step < decay_start)
        return lr;
    const double f = std::min(1.0, double(step - decay_start) / double(max_steps - decay_start));
    return final + (lr - final) * 0.5 * (1.0 + std::cos(M_PI * f));
}

void set_lr(torch::optim::AdamW& opt, double lr) {
    for (auto& g : opt.param_groups())
        static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
}

double clip_grad(const TensorMap& params, double max_norm) {
    std::vector<torch::Tensor> ps;
    for (const auto& kv : params)
        if (kv.second.grad().defined())
            ps.push_back(kv.second);
    return torch::nn::utils::clip_grad_norm_(ps, max_norm);
}

// ---------------------------------------------------------------- tokenizer

void stage_tokenizer(const Options& o) {
    make_dirs(o.out);
    make_dirs(o.state);
    // Corpus: every training and evaluation prompt plus every grammar word (speeds, bouncing, "and", "an", "grey"),
    // so no prompt of the grammar maps a word to unk. Word-level: one piece per word.
    const std::string corpus = o.state + "/tokenizer_corpus.txt";
    {
        std::ofstream out(corpus);
        for (const char* which : {"train", "eval"})
            for (const auto& p : tinyworld_suite(which))
                out << p << "\n";
        out << "a an and on background standing still moving bouncing slowly quickly left right up down\n";
        out << "red green blue yellow cyan magenta orange white circle square triangle black gray grey navy\n";
        out << "a red circle moving left and a blue square standing still on a gray background\n";
    }
    const std::string prefix = o.out + "/tokenizer";
    const std::string cmd = "spm_train --input=" + corpus + " --model_prefix=" + prefix +
                            " --vocab_size=64 --model_type=word --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1"
                            " --hard_vocab_limit=false --normalization_rule_name=nmt_nfkc_cf"
                            " --character_coverage=1.0 --minloglevel=2 > " +
                            o.state + "/spm_train.log 2>&1";
    if (std::system(cmd.c_str()) != 0)
        throw std::runtime_error("spm_train failed (is Debian's 'sentencepiece' package installed?); see " + o.state +
                                 "/spm_train.log");
    std::remove((prefix + ".vocab").c_str());
    Tokenizer tok = Tokenizer::load(prefix + ".model");
    auto ids = tok.encode("a red circle moving right on a black background");
    std::printf("tokenizer: %s.model, vocab %d, 'a red circle moving right on a black background' -> %zu ids\n",
                prefix.c_str(), tok.vocab_size(), ids.size());
}

// ---------------------------------------------------------------- VAE

struct VaeBatch {
    at::Tensor video, mask;  // [B, 3, T, H, W], [B, 1, T, H, W]
    at::Tensor contrast;     // [B, 1, T, H, W] shape_contrast_mask, when asked for
    // Per clip: the first object's colour and the background (Color / Background values), and whether the clip has
    // a single object (only those train the latent heads: a second object's colour would share the mask).
    std::vector<int64_t> colour, background, shape;
    std::vector<bool> single;
};

VaeBatch vae_batch(const std::vector<std::string>& prompts,
                   int b,
                   int t,
                   std::mt19937_64& rng,
                   bool with_contrast = false) {
    VaeBatch out;
    std::vector<at::Tensor> vs, ms, cs;
    for (int i = 0; i < b; ++i) {
        SceneSpec s = parse_prompt(prompts[rng() % prompts.size()]);
        at::Tensor v, m, c;
        // The same argument expressions as before contrast masks existed: the batches stay what they were.
        render_clip_contrast(s, rng(), int64_t(rng() % 4096), t, &v, &m, with_contrast ? &c : nullptr);
        vs.push_back(v);
        ms.push_back(m);
        if (with_contrast)
            cs.push_back(c);
        out.colour.push_back(int64_t(s.objects[0].color));
        out.background.push_back(int64_t(s.background));
        out.shape.push_back(int64_t(s.objects[0].shape));
        out.single.push_back(s.objects.size() == 1);
    }
    out.video = at::stack(vs);
    out.mask = at::stack(ms);
    if (with_contrast)
        out.contrast = at::stack(cs);
    return out;
}

// Mean colour [B, 3, T] of video [B, 3, T, H, W] under mask [B, 1, T, H, W] per frame, with the mask's area [B, 1, T].
std::pair<at::Tensor, at::Tensor> masked_mean_colour(const at::Tensor& video, const at::Tensor& mask) {
    at::Tensor area = mask.sum({3, 4});
    return {(video * mask).sum({3, 4}) / area.clamp_min(1.0), area};
}

// L1 between mean colours [B, 3, T], averaged over the frames `has` [B, 1, T] marks.
at::Tensor mean_colour_l1(const at::Tensor& a, const at::Tensor& b, const at::Tensor& has) {
    return ((a - b).abs() * has).sum() / (3.0 * has.sum().clamp_min(1.0));
}

struct VaeLosses {
    at::Tensor total;
    at::Tensor color;  // mean-colour L1 under the object mask (--color-weight), undefined when off
    double mse = 0, l1 = 0, edge = 0;
};

// mask [..., H, W] dilated by r pixels (a (2r+1)^2 square) on the torus: the world wraps, so does the ring.
at::Tensor dilate_torus(const at::Tensor& mask, int r) {
    at::Tensor out = mask;
    for (int dim : {-1, -2}) {
        at::Tensor acc = out;
        for (int s = 1; s <= r; ++s)
            acc = at::maximum(acc, at::maximum(out.roll({s}, {dim}), out.roll({-s}, {dim})));
        out = acc;
    }
    return out;
}

// Per-pixel L1 weights [..., H, W] from an object mask: --obj-weight on the object and, with --obj-ring, on a ring
// of pixels around it. Without the ring only missing object pixels cost --obj-weight and painting object over
// background costs 1, so the L1 optimum paints the object wherever it has more than a 1 / (1 + obj_weight) chance
// of being: the union of every place and shape the latents leave open, a round, swollen blob. With the ring both
// mistakes cost the same near the object, and the optimum is the likelier of the two: the shape's own outline.
at::Tensor object_loss_weight(const at::Tensor& mask, const Options& o) {
    return 1.0 + (o.obj_weight - 1.0) * (o.obj_ring > 0 ? dilate_torus(mask, o.obj_ring) : mask);
}

VaeLosses vae_loss(const at::Tensor& rec, const VaeBatch& b, const Options& o, const at::Tensor& mu) {
    // Object pixels up-weighted: without it the AE settles on the background (METHODS.md, tinyworld prototype).
    at::Tensor w = object_loss_weight(b.mask, o);  // [B, 1, T, H, W]
    if (o.contrast_weight > 0)
        w = w + o.contrast_weight * b.contrast;
    at::Tensor d = rec - b.video;
    at::Tensor l1 = (w * d.abs()).mean() / w.mean();
    // Edges: L1 between the spatial finite differences, against blur (rounded squares, blobby triangles).
    auto dx = [](const at::Tensor& x) { return x.narrow(4, 1, x.size(4) - 1) - x.narrow(4, 0, x.size(4) - 1); };
    auto dy = [](const at::Tensor& x) { return x.narrow(3, 1, x.size(3) - 1) - x.narrow(3, 0, x.size(3) - 1); };
    at::Tensor wx = at::maximum(w.narrow(4, 1, w.size(4) - 1), w.narrow(4, 0, w.size(4) - 1));
    at::Tensor wy = at::maximum(w.narrow(3, 1, w.size(3) - 1), w.narrow(3, 0, w.size(3) - 1));
    at::Tensor edge = (wx * (dx(rec) - dx(b.video)).abs()).mean() / wx.mean() +
                      (wy * (dy(rec) - dy(b.video)).abs()).mean() / wy.mean();
    VaeLosses L;
    L.total = l1 + o.edge_weight * edge + 1e-3 * mu.pow(2).mean();
    if (o.color_weight > 0) {
        // The object's mean colour per frame, which pixel losses leave ambiguous: where the position is uncertain
        // their optimum is a blur, and a blur of blue is as cheap as a blur of cyan. This term does not care where
        // the object is, only what colour the pixels under it have.
        auto rec_c = masked_mean_colour(rec, b.mask);
        const at::Tensor gt_c = masked_mean_colour(b.video, b.mask).first;
        L.color = mean_colour_l1(rec_c.first, gt_c, rec_c.second.gt(0).to(rec.scalar_type()));
        L.total = L.total + o.color_weight * L.color;
    }
    L.mse = d.detach().pow(2).mean().item<double>();
    L.l1 = l1.item<double>();
    L.edge = edge.item<double>();
    return L;
}

// Decoded DiT rollout [1, 3, T, H, W] against the colours its prompt names (--prompt-weight), returned as
// {background term, object term}. A rollout has no ground truth, but the world paints the background and the object
// in exactly two known colours. `obj` [1, 1, T, H, W] marks where the teacher's decode of the same latents stands
// out from its frame (what the distillation weighs up). The rest is pulled to the background colour, and the mean
// colour under `obj`, per frame, to the object's. The decoder sees latents only, so this teaches it how the DiT
// writes each colour, not which colour a prompt wants: where the DiT writes two colours alike, the decoder can only
// split the difference.
std::pair<at::Tensor, at::Tensor> prompt_colour_loss(const at::Tensor& rec,
                                                     const at::Tensor& obj,
                                                     const SceneSpec& scene) {
    auto unit = [](const Rgb& c) {
        return at::tensor({float(c[0]), float(c[1]), float(c[2])}).div(127.5f).sub(1.0f).view({1, 3, 1, 1, 1});
    };
    const at::Tensor bg = unit(background_rgb(scene.background)), fg = unit(palette_rgb(scene.objects[0].color));
    at::Tensor back = 1 - obj;
    at::Tensor l_bg = ((rec - bg).abs() * back).sum() / (3.0 * back.sum().clamp_min(1.0));
    auto rec_c = masked_mean_colour(rec, obj);
    // A few stray pixels are not an object.
    at::Tensor l_fg = mean_colour_l1(rec_c.first, fg.view({1, 3, 1}), rec_c.second.ge(8).to(rec.scalar_type()));
    return {l_bg, l_fg};
}

// Mean of x [..., C, h, w] under mask [..., 1, h, w] and over the rest, side by side: [..., 2C]. What the latent probe
// and the latent heads read a clip's colours from.
at::Tensor object_background_means(const at::Tensor& x, const at::Tensor& mask) {
    at::Tensor fo = (x * mask).sum({-2, -1}) / mask.sum({-2, -1}).clamp_min(1e-6);
    at::Tensor fb = (x * (1 - mask)).sum({-2, -1}) / (1 - mask).sum({-2, -1}).clamp_min(1e-6);
    return at::cat({fo, fb}, -1);
}

// x [N, C, H, W], each rolled on the torus so that the centroid of its mask [N, H, W] (the circular mean along rows
// and columns: the world wraps) sits in the middle, then cropped to size x size: [N, C, size, size].
at::Tensor torus_centred_crops(const at::Tensor& x, const at::Tensor& mask, int64_t size) {
    auto centre = [&](int64_t dim) {  // [N] the mask's circular mean index along dim (1: rows, 2: columns)
        const int64_t n = mask.size(dim);
        at::Tensor a = at::arange(n, at::kFloat) * (2 * M_PI / double(n));
        at::Tensor w = mask.sum(dim == 1 ? 2 : 1);  // [N, n]
        at::Tensor ang = at::atan2((w * a.sin()).sum(1), (w * a.cos()).sum(1));
        return at::round(ang / (2 * M_PI / double(n))).to(at::kLong).remainder(n);
    };
    at::Tensor cy = centre(1), cx = centre(2);
    std::vector<at::Tensor> out;
    for (int64_t i = 0; i < x.size(0); ++i) {
        at::Tensor r = at::roll(x[i], {size / 2 - cy[i].item<int64_t>(), size / 2 - cx[i].item<int64_t>()}, {1, 2});
        out.push_back(r.narrow(1, 0, size).narrow(2, 0, size));
    }
    return at::stack(out);
}

// Linear heads on the latents (--latent-class-weight): the object's colour and the background, from the latent
// pooled under the object and over the rest, as `--stage latent-probe` measures them. The DiT learns the latents
// with an MSE, so a colour the encoder writes only faintly costs the DiT little when it gets it wrong: the heads'
// cross-entropy pushes the encoder to write each colour in a direction of its own. They train with the VAE and are
// not exported.
struct LatentHeads {
    TensorMap w;  // "colour.weight" [8, 2z], "colour.bias", "background.weight" [4, 2z], "background.bias"
    LatentHeads(int64_t z, uint64_t seed) {
        at::Generator g = make_gen(seed);
        auto lin = [&](const std::string& name, int64_t out) {
            w[name + ".weight"] = at::randn({out, 2 * z}, g, at::kFloat).mul_(0.1).requires_grad_(true);
            w[name + ".bias"] = at::zeros({out}, at::kFloat).requires_grad_(true);
        };
        lin("colour", kNumColors);
        lin("background", 4);
    }
    std::vector<torch::Tensor> params() const {
        std::vector<torch::Tensor> v;
        for (const auto& kv : w)
            v.push_back(kv.second);
        return v;
    }
};

struct LatentClassLoss {
    at::Tensor total;
    double colour_acc = 0, background_acc = 0;
};

// mu: [B, z, T', h, w] latents of batch `b` (T' = 1 + (T - 1) / 4, the causal VAE's first latent frame holding one
// pixel frame and each later one four).
LatentClassLoss latent_class_loss(const at::Tensor& mu, const VaeBatch& b, const LatentHeads& heads) {
    const int64_t B = mu.size(0), T = b.mask.size(2), Tl = mu.size(2);
    const int64_t f = b.mask.size(3) / mu.size(3);
    // The object's share of every latent cell: pixel frames grouped as the encoder groups them, then f x f cells.
    at::Tensor m =
        at::cat({b.mask.narrow(2, 0, 1),
                 b.mask.narrow(2, 1, T - 1).reshape({B, 1, Tl - 1, 4, b.mask.size(3), b.mask.size(4)}).mean(3)},
                2);
    m = at::avg_pool3d(m, {1, f, f});  // [B, 1, T', h, w]
    at::Tensor x = object_background_means(mu.permute({0, 2, 1, 3, 4}), m.permute({0, 2, 1, 3, 4}))
                       .reshape({B * Tl, -1});  // [B*T', 2z]
    std::vector<float> keep;
    for (int64_t i = 0; i < B; ++i)
        for (int64_t t = 0; t < Tl; ++t)
            keep.push_back(b.single[size_t(i)] ? 1.0f : 0.0f);
    // A latent frame without the object (it can wrap out of sight only partly, but be safe) says nothing of its colour.
    at::Tensor present = m.sum({1, 3, 4}).reshape({B * Tl}).gt(0.05).to(at::kFloat);
    at::Tensor k = at::tensor(keep) * present;
    auto head = [&](const std::string& name, const std::vector<int64_t>& per_clip, double* acc) {
        at::Tensor y = at::tensor(per_clip).repeat_interleave(Tl);
        at::Tensor logits = at::linear(x, heads.w.at(name + ".weight"), heads.w.at(name + ".bias"));
        at::Tensor ce = torch::nn::functional::cross_entropy(
            logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
        *acc = ((logits.argmax(1).eq(y).to(at::kFloat) * k).sum() / k.sum().clamp_min(1.0)).item<double>();
        return (ce * k).sum() / k.sum().clamp_min(1.0);
    };
    LatentClassLoss L;
    L.total = head("colour", b.colour, &L.colour_acc) + head("background", b.background, &L.background_acc);
    return L;
}

// A patch discriminator on single frames (--gan-weight). Pixel losses make the decoder paint the mean of what the
// latents leave open, and where a corner's exact place is open that mean is round: a blurred square is a circle to the
// evaluator. The discriminator tells a world frame's hard-edged shapes from such blurs, and its loss makes the decoder
// commit to one. Receptive field 38 px (an object is 16 px across); it judges 32 x 32 crops around the object
// (object_crops), 4 x 4 patch logits each.
struct FrameDisc {
    torch::nn::Sequential net;
    // in_channels past 3 are condition maps (the DiT's discriminator: the prompted shape, one-hot).
    // out_channels past 1: a classifier (the DiT's shape judge: circle, square, triangle logits per patch).
    explicit FrameDisc(uint64_t seed, int64_t in_channels = 3, int64_t out_channels = 1) {
        torch::manual_seed(int64_t(seed));
        auto conv = [](int64_t in, int64_t out, int64_t k, int64_t stride) {
            return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, k).stride(stride).padding(1));
        };
        auto act = []() { return torch::nn::LeakyReLU(torch::nn::LeakyReLUOptions().negative_slope(0.2)); };
        net = torch::nn::Sequential(conv(in_channels, 32, 4, 2), act(), conv(32, 64, 4, 2), act(), conv(64, 64, 4, 2),
                                    act(), conv(64, out_channels, 3, 1));
    }
    // x: [N, 3, h, w] in [-1, 1] -> [N, 1, h / 8, w / 8] logits
    at::Tensor operator()(const at::Tensor& x) { return net->forward(x); }
    TensorMap state() const {
        TensorMap m;
        for (const auto& kv : net->named_parameters())
            m[kv.key()] = kv.value().detach().clone();
        return m;
    }
    void load(const TensorMap& m) {
        torch::NoGradGuard ng;
        for (auto& kv : net->named_parameters())
            kv.value().copy_(m.at(kv.key()));
    }
};

// Frames `idx` of video [B, 3, T, H, W] as [N, 3, H, W].
at::Tensor pick_frames(const at::Tensor& v, const at::Tensor& idx) {
    return v.permute({0, 2, 1, 3, 4}).reshape({-1, v.size(1), v.size(3), v.size(4)}).index_select(0, idx);
}

// Frames `idx` of video [B, 3, T, H, W], each rolled on the torus so that the centroid of its `mask` [B, 1, T, H, W]
// (the object) sits in the middle, then cropped to size x size: [N, 3, size, size]. Most of a frame is flat
// background, which a decoder gets right and a discriminator can only shrug at; the crops show it the object.
at::Tensor object_crops(const at::Tensor& v, const at::Tensor& mask, const at::Tensor& idx, int64_t size) {
    return torus_centred_crops(pick_frames(v, idx), pick_frames(mask, idx).squeeze(1), size);
}

at::Tensor random_frames(int64_t total, int n, std::mt19937_64& rng) {
    std::vector<int64_t> v;
    for (int i = 0; i < n; ++i)
        v.push_back(int64_t(rng() % uint64_t(total)));
    return at::tensor(v);
}

double psnr_from_mse(double mse) {
    // pixels in [-1, 1]: peak-to-peak 2
    return 10.0 * std::log10(4.0 / std::max(mse, 1e-12));
}

// Per-channel mean/std of mu over training clips: the DiT then sees ~unit-variance latents.
void latent_stats(const TensorMap& params,
                  const WanVaeConfig& cfg,
                  uint64_t seed,
                  std::vector<float>* mean,
                  std::vector<float>* stdv) {
    torch::NoGradGuard ng;
    TrainVae vae(params, cfg);
    auto prompts = train_prompts();
    std::mt19937_64 rng(mix_seed(seed, 9, 0));
    std::vector<at::Tensor> mus;
    // 33-frame clips: the DiT trains on long clips, and a causal VAE's later latent frames need not share the
    // first ones' statistics.
    for (int i = 0; i < 4; ++i)
        mus.push_back(vae.encode(vae_batch(prompts, 4, 33, rng).video));  // [4, z, 9, 8, 8]
    at::Tensor mu = at::cat(mus, 0).transpose(0, 1).reshape({cfg.z_dim, -1});
    at::Tensor m = mu.mean(1), s = mu.std(1).clamp_min(1e-3);
    mean->assign(m.data_ptr<float>(), m.data_ptr<float>() + cfg.z_dim);
    stdv->assign(s.data_ptr<float>(), s.data_ptr<float>() + cfg.z_dim);
}

// Exported VAE: the trained tensors (decoder and encoder) plus the latent statistics as scale.mean / scale.inv_std
// (WanVae and detect_wan_vae_config read them).
WanVaeConfig export_vae(const Options& o, const TensorMap& params, const WanVaeConfig& train_cfg) {
    WanVaeConfig cfg = train_cfg;
    latent_stats(params, train_cfg, o.seed, &cfg.mean, &cfg.std_);
    TensorMap w = detached(params);
    w["scale.mean"] = at::tensor(cfg.mean);
    at::Tensor s = at::tensor(cfg.std_);
    w["scale.inv_std"] = s.reciprocal();
    make_dirs(o.out);
    save_safetensors(o.out + "/vae.safetensors", w, {{"format", "pt"}, {"model", "tinyworld wan-vae"}});
    json meta = cfg;
    write_text_atomic(o.state + "/vae_export.json", meta.dump(2));
    return cfg;
}

// Reconstruction check on held-out clips (eval prompts, seeds never used in training): PSNR and the evaluator's
// adherence on the reconstructed videos next to the ground truth's.
json eval_vae_recon(const Options& o, const TensorMap& params, const WanVaeConfig& cfg, int n_prompts) {
    torch::NoGradGuard ng;
    WanVae vae(params, cfg, c10::kCPU, at::kFloat, true);
    auto prompts = tinyworld_suite("eval");
    if (n_prompts > 0 && size_t(n_prompts) < prompts.size())
        prompts.resize(size_t(n_prompts));
    std::vector<EvalReport> rec_reports, gt_reports;
    double se = 0, se_obj = 0, n_obj = 0;
    int64_t n = 0;
    // --eval-frames rounded up to 1 + 4k (the default 160 gives 161, the rollout eval's length): a VAE trained on
    // short clips reconstructs its first groups well and then drifts (its causal temporal convolutions see more
    // history than training showed them); the per-group PSNR shows it. The sittings before the sixth used 65.
    const int t = 1 + 4 * ((std::max(o.eval_frames, 2) - 1 + 3) / 4);
    const int groups = 1 + (t - 1) / 4;
    std::vector<double> se_group(size_t(groups), 0.0), n_group(size_t(groups), 0.0);
    for (size_t i = 0; i < prompts.size(); ++i) {
        at::Tensor v, m;
        render_clip(parse_prompt(prompts[i]), eval_clip_seed(i), 0, t, &v, &m);
        at::Tensor rec = vae.decode(vae.encode(v.unsqueeze(0)))[0];  // [3, T, H, W]
        at::Tensor d2 = (rec.clamp(-1, 1) - v).pow(2);
        se += d2.sum().item<double>();
        n += d2.numel();
        at::Tensor per_frame = d2.sum({0, 2, 3});  // [T]
        for (int f = 0; f < t; ++f) {
            const size_t g = size_t(f == 0 ? 0 : 1 + (f - 1) / 4);
            se_group[g] += per_frame[f].item<double>();
            n_group[g] += double(d2.numel() / t);
        }
        se_obj += (d2 * m).sum().item<double>();
        n_obj += m.sum().item<double>() * 3;
        rec_reports.push_back(evaluate_frames(to_frames(rec), 64, 64, prompts[i]));
        gt_reports.push_back(evaluate_frames(to_frames(v), 64, 64, prompts[i]));
        const EvalReport& r = rec_reports.back();
        // What the evaluator saw instead: the largest blob's colour and shape, counted over the frames.
        std::map<std::string, int> seen;
        for (const FrameDetection& d : r.detections)
            ++seen[d.blobs.empty() ? std::string("none")
                                   : std::string(color_name(d.blobs[0].color)) + " " + shape_name(d.blobs[0].shape)];
        std::string top;
        for (const auto& kv : seen)
            if (kv.second * 10 >= int(r.detections.size()))
                top += " " + kv.first + ":" + std::to_string(kv.second);
        std::printf(
            "vae eval clip %2zu  overall %.3f  background %.2f  colour %.2f  shape %.2f  direction %.2f  %s  |%s\n", i,
            r.overall, r.background, r.color, r.shape, r.direction, prompts[i].c_str(), top.c_str());
    }
    json j;
    j["clips"] = prompts.size();
    j["frames_per_clip"] = t;
    j["psnr_db"] = psnr_from_mse(se / double(n));
    j["psnr_object_pixels_db"] = psnr_from_mse(se_obj / std::max(1.0, n_obj));
    std::vector<double> by_group;
    for (int g = 0; g < groups; ++g)
        by_group.push_back(std::round(psnr_from_mse(se_group[size_t(g)] / n_group[size_t(g)]) * 100) / 100);
    j["psnr_by_latent_frame_db"] = by_group;
    j["adherence_reconstructed"] = summarize_reports(rec_reports).to_json();
    j["adherence_ground_truth"] = summarize_reports(gt_reports).to_json();
    return j;
}

// The encoder's tensors (encoder.*, conv1.*): what --vae-decoder-only freezes and --vae-init must supply in full.
bool is_vae_encoder_tensor(const std::string& name) {
    return name.rfind("encoder.", 0) == 0 || name.rfind("conv1.", 0) == 0;
}

at::Tensor encode_text(const UMT5Encoder& enc, const std::vector<TokenBatch>& toks, int64_t text_len);

// An exported model folder's DiT, text encoder and tokenizer, for rollouts outside reel's pipeline: the eval stage
// and the DiT samples of --vae-distill. The weight maps stay beside the modules built from them.
struct FolderModel {
    json man;
    WanDitConfig dcfg;
    WanVaeConfig vcfg;
    double context_noise;  // reel.json's recommended cache-pass timestep: the DiT was trained for it
    // reel.json's recommended guidance, negative prompt (spec) and negative guidance: how reel generate runs it.
    double guidance, negative_guidance;
    std::string negative;
    TensorMap dit_w, text_w;
    WanDit dit;
    UMT5Encoder enc;
    Tokenizer tok;

    explicit FolderModel(const std::string& dir)
        : man(read_json(dir + "/reel.json")),
          dcfg(WanDitConfig::from_json(man["dit"]["config"])),
          vcfg(man["vae"]["config"].get<WanVaeConfig>()),
          context_noise(man.value("recommended", json::object()).value("context_noise", 0.0)),
          guidance(man.value("recommended", json::object()).value("guidance", 1.0)),
          negative_guidance(man.value("recommended", json::object()).value("negative_guidance", 0.0)),
          negative(man.value("recommended", json::object()).value("negative_prompt", std::string())),
          dit_w(load_safetensors(dir + "/dit.safetensors")),
          text_w(load_safetensors(dir + "/text_encoder.safetensors")),
          dit(dcfg, dit_w, c10::kCPU, at::kFloat),
          enc(text_w, man["text_encoder"]["config"].get<UMT5Config>(), c10::kCPU, at::kFloat),
          tok(Tokenizer::load(dir + "/tokenizer.model")) {}

    // tinyworld's 64x64 frames as latent frames (8x8 under Wan's 8x VAE) in chunks of kChunk.
    RolloutConfig rollout_config(uint64_t seed, double guidance, double negative_guidance = 0.0) const {
        RolloutConfig rc;
        rc.chunk_frames = kChunk;
        rc.latent_h = 64 / vcfg.spatial_stride();
        rc.latent_w = rc.latent_h;
        rc.channels = dcfg.in_dim;
        rc.seed = seed;
        rc.guidance = guidance;
        rc.negative_guidance = negative_guidance;
        rc.context_noise = context_noise;
        return rc;
    }

    // Every guidance branch's context rows, in the engine's order (guidance_prompts); `negative_spec` as reel's
    // --negative-prompt takes it.
    at::Tensor context(const std::string& prompt,
                       double guidance,
                       const std::string& negative_spec = "",
                       double negative_guidance = 0.0) const {
        std::vector<TokenBatch> tb;
        for (const std::string& text : guidance_prompts(prompt, guidance, negative_spec, negative_guidance))
            tb.push_back(tok.tokenize(text, int(dcfg.text_len)));
        return encode_text(enc, tb, dcfg.text_len);
    }
    // A rollout as reel generate runs this folder by default.
    RolloutConfig recommended_rollout_config(uint64_t seed) const {
        return rollout_config(seed, guidance, negative_guidance);
    }
    at::Tensor recommended_context(const std::string& prompt) const {
        return context(prompt, guidance, negative, negative_guidance);
    }
};

// The training prompt of each rollout of dit_sample_latents, in order: a function of the seed alone, so rollouts
// cached by an older build keep theirs.
std::vector<size_t> dit_sample_prompts(const Options& o, int n) {
    const size_t n_prompts = train_prompts().size();
    std::mt19937_64 rng(mix_seed(o.seed, 11, 0));
    std::vector<size_t> ids;
    for (int i = 0; i < n; ++i)
        ids.push_back(size_t(rng() % n_prompts));
    return ids;
}

// Raw latents [N, z, F, 8, 8] of N rollouts of the model in `dir` (its DiT, text encoder, recommended cache and
// guidance) on training prompts, F latent frames each: what a decoder has to decode at generation time. The DiT's
// latents lie off the encoder's manifold (black and navy backgrounds meet there), and a decoder trained on encoder
// latents alone decodes them its own way. Made once, cached under the state folder.
at::Tensor dit_sample_latents(const Options& o, const std::string& dir, int n, int64_t f_lat) {
    const std::string path = o.state + "/cache/dit_samples.safetensors", meta = o.state + "/cache/dit_samples.json";
    // The cache is only reused for the same model folder, count, length and seed.
    const json key = {{"model", dir}, {"samples", n}, {"latent_frames", f_lat}, {"seed", o.seed}};
    if (file_exists(path) && file_exists(meta) && read_json(meta) == key) {
        TensorMap m = load_safetensors(path);
        if (m.count("mu"))
            return m["mu"].clone();
    }
    torch::NoGradGuard ng;
    const double t0 = now_s();
    FolderModel fm(dir);  // non-const: a rollout writes the DiT's context
    const WanVaeConfig& vc = fm.vcfg;
    const at::Tensor mean = at::tensor(vc.mean).view({1, -1, 1, 1, 1}),
                     stdv = at::tensor(vc.std_).view({1, -1, 1, 1, 1});
    const json rec = fm.man.value("recommended", json::object());
    const CacheSpec spec = parse_cache_spec(rec.value("cache", std::string("full")), "none", "none", "");
    const auto prompts = train_prompts();
    const std::vector<size_t> ids = dit_sample_prompts(o, n);
    std::vector<at::Tensor> all;
    for (int i = 0; i < n; ++i) {
        const std::string& prompt = prompts[ids[size_t(i)]];
        std::unique_ptr<KVCache> cache = make_cache(spec, int(fm.dcfg.num_layers));
        CausalRollout roll(fm.dit, *cache, fm.recommended_rollout_config(7000000 + uint64_t(i)));
        roll.set_context(fm.recommended_context(prompt));
        std::vector<at::Tensor> chunks;
        for (int64_t f = 0; f < f_lat; f += kChunk)
            chunks.push_back(roll.next_chunk());                                           // [1, 3, C, 8, 8] normalized
        at::Tensor lat = at::cat(chunks, 1).narrow(1, 0, f_lat).permute({0, 2, 1, 3, 4});  // [1, C, F, 8, 8]
        all.push_back(lat * stdv + mean);
    }
    at::Tensor mu = at::cat(all, 0).contiguous();
    make_dirs(o.state + "/cache");
    save_safetensors(path, {{"mu", mu}}, {{"model", dir}});
    write_text_atomic(meta, key.dump(2));
    std::printf("vae: %d DiT rollouts of %lld latent frames from %s in %.0f s, cached in %s\n", n, (long long)f_lat,
                dir.c_str(), now_s() - t0, path.c_str());
    return mu;
}

// Copies the tensors of --vae-init whose name and shape match into a fresh run's parameters. A decoder-only run must
// get the whole encoder: its latent space is what the DiT was trained on.
void init_vae_from(const Options& o, TensorMap* params) {
    TensorMap init = load_safetensors(o.vae_init);
    int enc_total = 0, enc_copied = 0, dec_total = 0, dec_copied = 0;
    for (auto& kv : *params) {
        const bool encoder = is_vae_encoder_tensor(kv.first);
        (encoder ? enc_total : dec_total)++;
        if (copy_if_same_shape(init, kv.first, kv.second))
            (encoder ? enc_copied : dec_copied)++;
    }
    std::printf("vae: initialized from %s: %d / %d encoder tensors, %d / %d decoder tensors\n", o.vae_init.c_str(),
                enc_copied, enc_total, dec_copied, dec_total);
    if (o.vae_decoder_only && enc_copied != enc_total)
        throw std::runtime_error("--vae-decoder-only with --vae-init " + o.vae_init + ": only " +
                                 std::to_string(enc_copied) + " of " + std::to_string(enc_total) +
                                 " encoder tensors match (--vae-dim and --vae-mult must be the file's)");
}

void stage_vae(const Options& o, double minutes) {
    const WanVaeConfig cfg = vae_config(o);
    TensorMap params = make_trainable(wan_vae_random_weights(cfg, true, o.seed));
    std::vector<torch::Tensor> trained;
    for (const auto& kv : params) {
        if (o.vae_decoder_only && is_vae_encoder_tensor(kv.first))
            kv.second.requires_grad_(false);
        else
            trained.push_back(kv.second);
    }
    torch::optim::AdamW opt(trained, torch::optim::AdamWOptions(o.vae_lr).weight_decay(0.0));
    Checkpoint ck{o.state, "vae"};
    if (!o.vae_init.empty() && !(o.resume && ck.exists()))
        init_vae_from(o, &params);
    int64_t step = 0;
    double trained_s = 0;
    if (o.resume && ck.exists()) {
        // AdamW state is kept per parameter list: it only carries over between runs that train the same tensors.
        const bool same_list = read_json(ck.meta()).value("decoder_only", false) == o.vae_decoder_only;
        json m = ck.load(params, same_list ? &opt : nullptr);
        step = m.value("step", int64_t(0));
        trained_s = m.value("trained_s", 0.0);
        std::printf("vae: resumed at step %lld (%.1f min trained)\n", (long long)step, trained_s / 60);
    }
    std::printf("vae: %lld parameters, dim %d, decoder dim %d, res blocks %d, batch %d x %d frames\n",
                (long long)count_params(params), cfg.dim, cfg.decoder_dim(), cfg.num_res_blocks, o.vae_batch,
                o.vae_frames);
    auto prompts = train_prompts();
    const int64_t clip_lat = 1 + (o.vae_frames - 1) / 4;  // latent frames of a training clip
    // Distillation: the teacher's decoder on its own DiT's latents (--vae-distill, decoder-only runs).
    at::Tensor distill_mu;
    std::vector<SceneSpec> sample_scene;  // rollout -> its training prompt's scene
    TensorMap teacher_w;
    WanVaeConfig teacher_cfg;
    if (!o.vae_distill.empty()) {
        if (!o.vae_decoder_only)
            throw std::runtime_error("--vae-distill needs --vae-decoder-only (the DiT's latent space must stay)");
        teacher_w = load_safetensors(o.vae_distill + "/vae.safetensors");
        teacher_cfg = detect_wan_vae_config(teacher_w);
        distill_mu = dit_sample_latents(o, o.vae_distill, o.distill_samples,
                                        std::max<int64_t>(clip_lat, int64_t(o.distill_frames)));
        for (size_t p : dit_sample_prompts(o, o.distill_samples))
            sample_scene.push_back(parse_prompt(prompts[p]));
    } else if (o.prompt_weight > 0) {
        throw std::runtime_error("--prompt-weight needs --vae-distill (its DiT rollouts are what it decodes)");
    }
    std::unique_ptr<LatentHeads> heads;
    std::unique_ptr<torch::optim::Adam> head_opt;
    if (o.latent_class_weight > 0) {
        if (o.vae_decoder_only)
            throw std::runtime_error("--latent-class-weight trains the encoder: it cannot go with --vae-decoder-only");
        heads = std::make_unique<LatentHeads>(cfg.z_dim, mix_seed(o.seed, 7, 0));
        // The heads' own state lives beside the checkpoint; their optimizer starts afresh on resume (they refit in a
        // few dozen steps).
        if (o.resume && file_exists(o.state + "/vae_heads.safetensors")) {
            TensorMap saved = load_safetensors(o.state + "/vae_heads.safetensors");
            for (auto& kv : heads->w) {
                torch::NoGradGuard ng;
                kv.second.copy_(saved.at(kv.first));
            }
        }
        head_opt = std::make_unique<torch::optim::Adam>(heads->params(), torch::optim::AdamOptions(1e-2));
    }
    std::unique_ptr<FrameDisc> disc;
    std::unique_ptr<torch::optim::Adam> disc_opt;
    int64_t disc_steps = 0;  // discriminator updates so far (its warm-up ends at --gan-warmup)
    if (o.gan_weight > 0) {
        disc = std::make_unique<FrameDisc>(mix_seed(o.seed, 8, 0));
        const std::string f = o.state + "/vae_disc.safetensors";
        if (o.resume && file_exists(f)) {
            disc->load(load_safetensors(f));
            disc_steps = o.gan_warmup;  // a saved discriminator has been warmed up
        }
        disc_opt = std::make_unique<torch::optim::Adam>(disc->net->parameters(),
                                                        torch::optim::AdamOptions(2e-4).betas({0.5, 0.9}));
    }
    const double t0 = now_s();
    double last_ck = t0, ema_mse = -1, ema_distill = -1, ema_prompt_bg = -1, ema_prompt_obj = -1;
    double ema_cls_colour = -1, ema_cls_bg = -1, ema_d_real = 0, ema_d_fake = 0;
    auto save = [&]() {
        json m = {{"step", step},
                  {"trained_s", trained_s},
                  {"seed", o.seed},
                  {"config", cfg},
                  {"train_psnr_ema", psnr_from_mse(ema_mse)},
                  {"decoder_only", o.vae_decoder_only}};
        ck.save(params, opt, m);
        if (heads)
            save_safetensors(o.state + "/vae_heads.safetensors", detached(heads->w), {{"format", "pt"}});
        if (disc)
            save_safetensors(o.state + "/vae_disc.safetensors", disc->state(), {{"format", "pt"}});
        export_vae(o, params, cfg);
    };
    while (now_s() - t0 < minutes * 60 && (o.max_steps <= 0 || step < o.max_steps)) {
        const double ts = now_s();
        std::mt19937_64 rng(mix_seed(o.seed, 1, uint64_t(step)));
        at::Generator gen = make_gen(mix_seed(o.seed, 2, uint64_t(step)));
        VaeBatch b = vae_batch(prompts, o.vae_batch, o.vae_frames, rng, o.contrast_weight > 0);
        TrainVae vae(params, cfg);
        at::Tensor mu;  // [B, z, 1 + (T-1)/4, 8, 8]
        {
            c10::optional<torch::NoGradGuard> frozen;
            if (o.vae_decoder_only)
                frozen.emplace();
            mu = vae.encode(b.video);
        }
        // Small latent noise: the decoder must tolerate the DiT's imperfect latents.
        at::Tensor z = mu + o.latent_noise * at::randn(mu.sizes(), gen, mu.options());
        at::Tensor rec = vae.decode(z);  // [B, 3, T, 64, 64]
        const double t_fwd = now_s();
        VaeLosses L = vae_loss(rec, b, o, mu);
        // The decoded DiT rollout of this step and its object mask, when distilling.
        at::Tensor rec_rollout, rollout_obj;
        if (heads) {
            LatentClassLoss C = latent_class_loss(mu, b, *heads);
            L.total = L.total + o.latent_class_weight * C.total;
            ema_cls_colour = ema_cls_colour < 0 ? C.colour_acc : 0.98 * ema_cls_colour + 0.02 * C.colour_acc;
            ema_cls_bg = ema_cls_bg < 0 ? C.background_acc : 0.98 * ema_cls_bg + 0.02 * C.background_acc;
        }
        if (distill_mu.defined()) {
            const int64_t r = int64_t(rng() % uint64_t(distill_mu.size(0)));
            // A window of a training clip's length. Rollouts longer than that (--distill-frames) show the decoder the
            // latents of later frames, where the DiT's colours drift; half the windows still start at the video's
            // start.
            const int64_t spare = distill_mu.size(2) - clip_lat;
            const int64_t off = spare > 0 && rng() % 2 == 1 ? int64_t(1 + rng() % uint64_t(spare)) : 0;
            at::Tensor zd = distill_mu.narrow(0, r, 1).narrow(2, off, clip_lat);
            at::Tensor rec_d = vae.decode(zd);  // [1, 3, T, H, W]
            rec_rollout = rec_d;
            at::Tensor target;
            {
                torch::NoGradGuard ng;
                target = TrainVae(teacher_w, teacher_cfg).decode(zd).clamp(-1, 1);
            }
            // The teacher's frames have no mask; an object is where a pixel stands out from its frame's mean colour
            // (the background covers most of every frame).
            at::Tensor away = (target - target.mean({3, 4}, true)).abs().sum(1, true);  // [1, 1, T, H, W]
            at::Tensor obj = away.gt(0.3).to(at::kFloat);
            rollout_obj = obj;
            if (o.distill_weight > 0) {
                // Object pixels weigh --obj-weight here too.
                at::Tensor w = object_loss_weight(obj, o);
                at::Tensor ld = (w * (rec_d - target).abs()).mean() / w.mean();
                L.total = L.total + o.distill_weight * ld;
                const double v = ld.item<double>();
                ema_distill = ema_distill < 0 ? v : 0.98 * ema_distill + 0.02 * v;
            }
            if (o.prompt_weight > 0) {
                auto lp = prompt_colour_loss(rec_d, obj, sample_scene[size_t(r)]);
                L.total = L.total + o.prompt_weight * (lp.first + lp.second);
                const double vb = lp.first.item<double>(), vf = lp.second.item<double>();
                ema_prompt_bg = ema_prompt_bg < 0 ? vb : 0.98 * ema_prompt_bg + 0.02 * vb;
                ema_prompt_obj = ema_prompt_obj < 0 ? vf : 0.98 * ema_prompt_obj + 0.02 * vf;
            }
        }
        at::Tensor fake, real;  // [N, 3, H, W] frames for the discriminator
        if (disc) {
            // The same frames, same crops: real and decoded differ only in what the decoder made of them.
            const at::Tensor idx = random_frames(rec.size(0) * rec.size(2), o.gan_frames, rng);
            fake = object_crops(rec, b.mask, idx, 32);
            real = object_crops(b.video, b.mask, idx, 32);
            if (rec_rollout.defined())
                fake = at::cat({fake, object_crops(rec_rollout, rollout_obj,
                                                   random_frames(rec_rollout.size(2), o.gan_frames, rng), 32)});
            if (disc_steps >= o.gan_warmup)
                L.total = L.total - o.gan_weight * (*disc)(fake).mean();
        }
        set_lr(opt, lr_at(o.vae_lr, step));
        opt.zero_grad();
        if (head_opt)
            head_opt->zero_grad();
        L.total.backward();
        if (disc) {
            // Hinge loss; the decoder's step above only read the discriminator, whose gradients are discarded here.
            disc_opt->zero_grad();
            at::Tensor d_real = (*disc)(real), d_fake = (*disc)(fake.detach());
            (at::relu(1 - d_real).mean() + at::relu(1 + d_fake).mean()).backward();
            disc_opt->step();
            ++disc_steps;
            ema_d_real = 0.95 * ema_d_real + 0.05 * d_real.mean().item<double>();
            ema_d_fake = 0.95 * ema_d_fake + 0.05 * d_fake.mean().item<double>();
        }
        const double t_bwd = now_s();
        clip_grad(params, 1.0);
        opt.step();
        if (head_opt)
            head_opt->step();
        if (step < 3)
            std::printf("vae step timing: data+forward %.2f s, loss+backward %.2f s, optimizer %.2f s\n", t_fwd - ts,
                        t_bwd - t_fwd, now_s() - t_bwd);
        ++step;
        trained_s += now_s() - ts;
        ema_mse = ema_mse < 0 ? L.mse : 0.98 * ema_mse + 0.02 * L.mse;
        if (step % 25 == 0 || step == 1) {
            std::string extra;
            if (ema_distill >= 0)
                extra += "  distill l1(ema) " + std::to_string(ema_distill);
            if (ema_prompt_bg >= 0)
                extra += "  prompt l1(ema) background " + std::to_string(ema_prompt_bg) + " object " +
                         std::to_string(ema_prompt_obj);
            if (L.color.defined())
                extra += "  colour l1 " + std::to_string(L.color.item<double>());
            if (disc)
                extra += "  disc(ema) real " + std::to_string(ema_d_real) + " fake " + std::to_string(ema_d_fake);
            if (heads)
                extra += "  latent heads (ema acc) colour " + std::to_string(ema_cls_colour) + " background " +
                         std::to_string(ema_cls_bg);
            std::printf("vae step %lld  loss %.4f  l1 %.4f  edge %.4f  psnr(ema) %.2f dB%s  %.2f s/step\n",
                        (long long)step, L.total.item<double>(), L.l1, L.edge, psnr_from_mse(ema_mse), extra.c_str(),
                        now_s() - ts);
        }
        std::fflush(stdout);
        if (now_s() - last_ck > o.ckpt_minutes * 60) {
            save();
            last_ck = now_s();
        }
    }
    save();
    json r = eval_vae_recon(o, params, cfg, o.eval_prompts);
    r["step"] = step;
    r["trained_min"] = trained_s / 60;
    write_text_atomic(o.state + "/vae_eval.json", r.dump(2));
    std::printf("vae eval: %s\n", r.dump().c_str());
}

// ---------------------------------------------------------------- text encoder + DiT

struct LatentSet {
    at::Tensor lat;                  // [N, F, C, h, w] normalized latents, pipeline layout
    at::Tensor obj;                  // [N, F, 1, h, w] 1 where the object touches the latent cell's pixels
    at::Tensor contrast;             // [N, F, 1, h, w] latent_cell_share of shape_contrast_mask (--dit-contrast-weight)
    std::vector<int64_t> prompt_of;  // clip -> index into prompts
};

// Pixel frames [1, T, H, W] (T = 1 + 4 (F - 1)) -> latent frames [1, F, H, W]: frame 0 alone, then groups of 4 (the
// VAE's causal temporal grouping), each group's max (`share` false) or mean.
at::Tensor group_latent_frames(const at::Tensor& m, bool share) {
    const int64_t t = m.size(1), f = 1 + (t - 1) / 4;
    at::Tensor rest = m.narrow(1, 1, t - 1).reshape({1, f - 1, 4, m.size(2), m.size(3)});
    return at::cat({m.narrow(1, 0, 1), share ? rest.mean(2) : rest.amax(2)}, 1);
}

// Pixel object mask [1, T, H, W] -> latent cells [F, 1, h, w]: 1 where any pixel of a cell's frames is set.
at::Tensor latent_object_mask(const at::Tensor& m, int64_t stride) {
    return at::max_pool2d(group_latent_frames(m, false), {stride, stride}).permute({1, 0, 2, 3}).contiguous();
}

// Pixel mask [1, T, H, W] -> the share of each latent cell's pixels it covers [F, 1, h, w], over the cell's frames: a
// corner cell's share of a square's contrast with a circle is a fraction, where latent_object_mask would mark the
// whole outline alike.
at::Tensor latent_cell_share(const at::Tensor& m, int64_t stride) {
    return at::avg_pool2d(group_latent_frames(m, true), {stride, stride}).permute({1, 0, 2, 3}).contiguous();
}

// Video [N, 3, T, H, W] -> the DiT's normalized latents [N, F, C, h, w] (pipeline layout), with the exported
// statistics. The training twin (whole clip, conv2d-folded) is several times faster than the engine's streaming encode
// on CPU and computes the same mu.
struct LatentEncoder {
    TrainVae vae;
    at::Tensor mean, inv_std;  // [1, C, 1, 1, 1]
    LatentEncoder(const TensorMap& vw, const WanVaeConfig& cfg)
        : vae(vw, cfg),
          mean(vw.at("scale.mean").view({1, -1, 1, 1, 1})),
          inv_std(vw.at("scale.inv_std").view({1, -1, 1, 1, 1})) {}
    at::Tensor operator()(const at::Tensor& video) const {
        return ((vae.encode(video) - mean) * inv_std).permute({0, 2, 1, 3, 4}).contiguous();
    }
    // The inverse: normalized latents [N, F, C, h, w] -> pixels [N, 3, 1 + 4 (F - 1), H, W], decoded as a fresh
    // sequence; differentiable in z.
    at::Tensor decode(const at::Tensor& z) const { return vae.decode(z.permute({0, 2, 1, 3, 4}) / inv_std + mean); }
};

// Latents of `clips_per_prompt` clips per training prompt, 1 + 4 (F - 1) frames each, encoded once by the
// exported VAE (normalized with its statistics) and cached under the state folder.
LatentSet build_latents(const Options& o, const std::vector<std::string>& prompts) {
    const int64_t f = int64_t(o.chunks) * kChunk + int64_t(o.latent_extra);
    const std::string path = o.state + "/cache/dit_latents.safetensors";
    LatentSet s;
    const int64_t n_clips =
        o.latent_clips > 0 ? int64_t(o.latent_clips) : int64_t(prompts.size()) * int64_t(o.clips_per_prompt);
    TensorMap vw = load_safetensors(o.out + "/vae.safetensors");
    const WanVaeConfig vcfg = detect_wan_vae_config(vw);
    const int64_t lat_hw = 64 / vcfg.spatial_stride();
    const int t = int(1 + 4 * (f - 1));
    const bool want_contrast = o.dit_contrast_weight > 0;
    // Clip i: its pixels (and object mask, and with `contrast` its shape contrast), from (seed, i) alone.
    auto render = [&](int64_t i, const SceneSpec& sc, at::Tensor* v, at::Tensor* m, at::Tensor* contrast) {
        std::mt19937_64 rng(mix_seed(o.seed, 5, uint64_t(i)));
        render_clip_contrast(sc, rng(), int64_t(rng() % 4096), t, v, m, contrast);
    };
    if (file_exists(path)) {
        TensorMap m = load_safetensors(path);
        if (m.count("latents") && m.count("object") && m["latents"].size(1) == f && m["latents"].size(0) == n_clips &&
            m["latents"].size(3) == lat_hw) {
            s.lat = m["latents"].clone();
            s.obj = m["object"].clone();
            at::Tensor p = m["prompt"];
            for (int64_t i = 0; i < p.size(0); ++i)
                s.prompt_of.push_back(p[i].item<int64_t>());
            std::printf("dit: %lld cached latent clips from %s\n", (long long)s.lat.size(0), path.c_str());
            if (m.count("contrast")) {
                s.contrast = m["contrast"].clone();
            } else if (want_contrast) {
                // A cache made before contrast masks: render the clips again (no encoding), and check that they are
                // the cached clips by their object masks.
                std::vector<at::Tensor> cs;
                for (int64_t i = 0; i < n_clips; ++i) {
                    at::Tensor v, mk, c;
                    render(i, parse_prompt(prompts[size_t(s.prompt_of[size_t(i)])]), &v, &mk, &c);
                    if (!at::equal(latent_object_mask(mk, vcfg.spatial_stride()), s.obj[i]))
                        throw std::runtime_error("dit: " + path + " holds other clips than --seed " +
                                                 std::to_string(o.seed) + " renders; delete it to re-encode");
                    cs.push_back(latent_cell_share(c, vcfg.spatial_stride()));
                }
                s.contrast = at::stack(cs);
                m["contrast"] = s.contrast;
                save_safetensors(path, m);
                std::printf("dit: added shape-contrast masks to %s (mean %.4f of a cell)\n", path.c_str(),
                            s.contrast.mean().item<double>());
            }
            return s;
        }
    }
    torch::NoGradGuard ng;
    const LatentEncoder encode(vw, vcfg);
    std::vector<at::Tensor> all, objs, cons;
    std::vector<at::Tensor> vs;
    std::vector<int64_t> pidx;
    const double t0 = now_s();
    // Clip i shows prompt i mod n (every prompt equally often, in a seeded shuffled order).
    std::vector<size_t> order(prompts.size());
    for (size_t i = 0; i < order.size(); ++i)
        order[i] = i;
    std::mt19937_64 shuf(mix_seed(o.seed, 6, 0));
    std::shuffle(order.begin(), order.end(), shuf);
    for (int64_t i = 0; i < n_clips; ++i) {
        const size_t p = order[size_t(i) % order.size()];
        SceneSpec sc = parse_prompt(prompts[p]);
        {
            at::Tensor v, m, c;
            render(i, sc, &v, &m, &c);
            vs.push_back(v);
            objs.push_back(latent_object_mask(m, vcfg.spatial_stride()));
            cons.push_back(latent_cell_share(c, vcfg.spatial_stride()));
            pidx.push_back(int64_t(p));
            if (vs.size() == 8) {
                all.push_back(encode(at::stack(vs)));
                vs.clear();
            }
        }
        if (i % 32 == 0)
            std::printf("dit: encoding latents, clip %lld/%lld (%.0f s)\n", (long long)i, (long long)n_clips,
                        now_s() - t0);
        std::fflush(stdout);
    }
    if (!vs.empty())
        all.push_back(encode(at::stack(vs)));
    s.lat = at::cat(all, 0);
    s.obj = at::stack(objs);
    s.contrast = at::stack(cons);
    s.prompt_of = pidx;
    make_dirs(o.state + "/cache");
    save_safetensors(path,
                     {{"latents", s.lat}, {"object", s.obj}, {"contrast", s.contrast}, {"prompt", at::tensor(pidx)}});
    std::printf("dit: encoded %lld clips of %d frames in %.0f s; latent std %.3f\n", (long long)s.lat.size(0), t,
                now_s() - t0, s.lat.std().item<double>());
    return s;
}

// World-corrected rollout windows (--corrected-rollouts). A rollout's cache past its first chunks holds the
// DiT's own output, drifted in colour, shape and place, and 12-frame training windows of rendered clips never show
// it that. The world knows what should come next: the prompt's object, moving on from where the rollout's last
// frame has it. So each window is what the recommended window cache holds before chunk k of a rollout (its first
// chunk as the sinks, then chunks k-2 and k-1), and the target is the world's chunk k: the prompt's own colour,
// shape and motion, placed at the object the evaluator detects in the rollout's last decoded frame. This is DAgger
// with the world as the expert, and only the last chunk is trained (the rest is the DiT's own drift).
struct CorrectedSet {
    at::Tensor ctx;                  // [S, 3 (chunks - 1), C, h, w] normalized latents: chunk 0, chunks k-2, k-1
    at::Tensor target;               // [S, 3, C, h, w] the world's chunk k, encoded by the VAE
    at::Tensor obj;                  // [S, 3, 1, h, w] its object cells
    at::Tensor contrast;             // [S, 3, 1, h, w] its latent_cell_share of shape_contrast_mask
    std::vector<int64_t> prompt_of;  // sample -> index into prompts
    int64_t size() const { return ctx.defined() ? ctx.size(0) : 0; }
};

CorrectedSet build_corrected_set(const Options& o, const std::vector<std::string>& prompts) {
    CorrectedSet s;
    if (o.corrected_rollouts <= 0)
        return s;
    // A corrected window is the recommended window cache's view: a sink chunk, then recent chunks.
    if (o.chunks < 2)
        throw std::runtime_error("--corrected-rollouts needs --chunks 2 or more (a sink chunk, then recent ones)");
    const std::string dir = o.dit_init.empty() ? o.out : o.dit_init;
    const std::string path = o.state + "/cache/corrected.safetensors", meta = o.state + "/cache/corrected.json";
    const json key = {{"model", dir},
                      {"rollouts", o.corrected_rollouts},
                      {"chunks", o.corrected_chunks},
                      {"every", o.corrected_every},
                      {"window_chunks", o.chunks},
                      {"seed", o.seed}};
    if (file_exists(path) && file_exists(meta) && read_json(meta) == key) {
        TensorMap m = load_safetensors(path);
        s.ctx = m.at("context").clone();
        s.target = m.at("target").clone();
        s.obj = m.at("object").clone();
        if (m.count("contrast"))
            s.contrast = m.at("contrast").clone();
        else if (o.dit_contrast_weight > 0)
            throw std::runtime_error("--dit-contrast-weight: " + path +
                                     " was made without shape-contrast masks; delete it (and " + meta +
                                     ") to make the windows again");
        at::Tensor p = m.at("prompt");
        for (int64_t i = 0; i < p.size(0); ++i)
            s.prompt_of.push_back(p[i].item<int64_t>());
        std::printf("dit: %lld cached world-corrected windows from %s\n", (long long)s.size(), path.c_str());
        return s;
    }
    torch::NoGradGuard ng;
    const double t0 = now_s();
    FolderModel fm(dir);
    TensorMap vw = load_safetensors(dir + "/vae.safetensors");
    WanVae vae(vw, fm.vcfg, c10::kCPU, at::kFloat);
    const LatentEncoder encode(vw, fm.vcfg);
    const int64_t stride = fm.vcfg.spatial_stride();
    const json rec = fm.man.value("recommended", json::object());
    const CacheSpec spec = parse_cache_spec(rec.value("cache", std::string("full")), "none", "none", "");
    // The target is the last chunk of a short rendered clip whose frame 20 shows the object where the rollout left
    // it: latents 6-8 (pixel frames 21-32) then have enough of the world's own past in the causal encoder's view.
    // (Measured against the same chunk deep inside an 81-frame clip: rms 0.125 with 21 frames, 0.013 with 33, 0.002
    // with 45, in units of the latents' std.)
    const int clip_t = 33, tgt = (clip_t - 1) / 4 - 2, ref_frame = 4 * tgt - 4;
    {
        at::Tensor a, b;
        World w(parse_prompt(prompts[0]), 1234);
        render_world_clip(w, 60 - (clip_t - 21), clip_t, &a, nullptr);
        render_world_clip(w, 0, 81, &b, nullptr);
        at::Tensor ea = encode(a.unsqueeze(0)).narrow(1, tgt, 3), eb = encode(b.unsqueeze(0)).narrow(1, 18, 3);
        std::printf("dit: corrected targets: encoded in a %d-frame clip against deep in a long one: rms %.4f\n", clip_t,
                    (ea - eb).pow(2).mean().sqrt().item<double>());
    }
    std::vector<at::Tensor> ctxs, vids, masks, contrasts, targets, objs, cons;
    std::vector<int64_t> pidx;
    int detected = 0, attempted = 0, colour_ok = 0, shape_ok = 0;
    auto flush = [&]() {
        if (vids.empty())
            return;
        targets.push_back(encode(at::stack(vids)).narrow(1, tgt, 3));
        for (const auto& m : masks)
            objs.push_back(latent_object_mask(m, stride).narrow(0, tgt, 3));
        for (const auto& c : contrasts)
            cons.push_back(latent_cell_share(c, stride).narrow(0, tgt, 3));
        vids.clear();
        masks.clear();
        contrasts.clear();
    };
    // Windows from chunk `first` on, where the window cache has moved past the video's start: the sink chunk, then
    // chunks - 2 recent ones before the chunk being made.
    const int first = std::max(1, o.chunks - 1);
    for (int r = 0; r < o.corrected_rollouts; ++r) {
        std::mt19937_64 rng(mix_seed(o.seed, 12, uint64_t(r)));
        const size_t p = size_t(rng() % prompts.size());
        const SceneSpec sc = parse_prompt(prompts[p]);
        if (sc.objects.size() != 1 || sc.objects[0].bounce)
            continue;  // World::place covers one wrapping object
        std::unique_ptr<KVCache> cache = make_cache(spec, int(fm.dcfg.num_layers));
        CausalRollout roll(fm.dit, *cache, fm.recommended_rollout_config(rng()));
        roll.set_context(fm.recommended_context(prompts[p]));
        WanVaeDecodeStream dec(vae);
        std::vector<at::Tensor> lats;     // per chunk [3, C, h, w]
        std::vector<uint8_t> last_frame;  // the rollout's newest decoded frame: where the evaluator looks
        for (int k = 0; k < o.corrected_chunks; ++k) {
            if (k >= first && (k - first) % o.corrected_every == 0) {
                ++attempted;
                const FrameDetection d = detect_frame(last_frame.data(), 64, 64);
                // Where the object has vanished, the world brings it back at a place of its own.
                World w(sc, rng());
                if (!d.blobs.empty()) {
                    ++detected;
                    colour_ok += d.blobs[0].color == sc.objects[0].color;
                    shape_ok += d.blobs[0].shape == sc.objects[0].shape;
                    w.place(0, ref_frame, d.blobs[0].cx, d.blobs[0].cy);
                }
                at::Tensor v, m;
                render_world_clip(w, 0, clip_t, &v, &m);
                vids.push_back(v);
                masks.push_back(m);
                contrasts.push_back(shape_contrast_mask(w, 0, clip_t, m));
                std::vector<at::Tensor> ctx{lats[0]};
                for (int j = k - (o.chunks - 2); j < k; ++j)
                    ctx.push_back(lats[size_t(j)]);
                ctxs.push_back(at::cat(ctx));
                pidx.push_back(int64_t(p));
                if (vids.size() == 8)
                    flush();
            }
            at::Tensor lat = roll.next_chunk();  // [1, 3, C, h, w]
            lats.push_back(lat[0].clone());
            last_frame = std::move(to_frames(dec.push(lat.permute({0, 2, 1, 3, 4}))[0]).back());
        }
        std::printf("dit: corrected rollout %d/%d: %zu windows (%.0f s)\n", r + 1, o.corrected_rollouts, pidx.size(),
                    now_s() - t0);
        std::fflush(stdout);
    }
    flush();
    if (pidx.empty())
        throw std::runtime_error("--corrected-rollouts: no window; --corrected-chunks must exceed --chunks - 1");
    s.ctx = at::stack(ctxs);
    s.target = at::cat(targets, 0);
    s.obj = at::stack(objs);
    s.contrast = at::stack(cons);
    s.prompt_of = pidx;
    make_dirs(o.state + "/cache");
    save_safetensors(path, {{"context", s.ctx},
                            {"target", s.target},
                            {"object", s.obj},
                            {"contrast", s.contrast},
                            {"prompt", at::tensor(pidx)}});
    write_text_atomic(meta, key.dump(2));
    std::printf(
        "dit: %lld world-corrected windows from %d rollouts of %s in %.0f s (object detected in %d of %d; "
        "its colour right in %.2f, shape %.2f; where it had vanished the world brings it back)\n",
        (long long)s.size(), o.corrected_rollouts, dir.c_str(), now_s() - t0, detected, attempted,
        detected ? double(colour_ok) / detected : 0.0, detected ? double(shape_ok) / detected : 0.0);
    return s;
}

// Prompt tokens -> [B, text_len, dim] context exactly as the engine builds it: each prompt's real tokens through
// the encoder (padded keys masked, so equal to encoding them alone), padding rows zero.
at::Tensor encode_text(const UMT5Encoder& enc, const std::vector<TokenBatch>& toks, int64_t text_len) {
    int64_t lmax = 1;
    for (const auto& t : toks)
        lmax = std::max(lmax, t.length);
    std::vector<at::Tensor> ids, masks;
    for (const auto& t : toks) {
        ids.push_back(t.ids.narrow(1, 0, lmax));
        masks.push_back(t.mask.narrow(1, 0, lmax));
    }
    at::Tensor id = at::cat(ids, 0), mask = at::cat(masks, 0);
    at::Tensor h = UMT5Encoder::zero_padding(enc.encode(id, mask), mask);  // [B, lmax, dim]
    return at::constant_pad_nd(h, {0, 0, 0, text_len - lmax});
}

// The cache the export recommends: sinks + recent frames (the chunk being made included) = the trained context, so
// attention never spans more frames than in training; the sinks keep the video's first frames as an anchor.
std::string recommended_window(const Options& o) {
    const int context = o.chunks * kChunk;
    if (o.recommend_sink < 0 || o.recommend_sink > context - kChunk)
        throw std::runtime_error("--recommend-sink must leave room for at least one chunk in the " +
                                 std::to_string(context) + "-frame context");
    return "window:sink=" + std::to_string(o.recommend_sink) + ",recent=" + std::to_string(context - o.recommend_sink);
}

void write_manifest(const Options& o) {
    json man;
    man["name"] = "tinyworld";
    man["description"] =
        "reel's embedded default model: tiny causal Wan DiT + Wan VAE + umT5 trained by tools/train_tinyworld on "
        "the procedural tinyworld (docs/tinyworld.md, docs/training.md). 64x64 at 16 fps.";
    Tokenizer tok = Tokenizer::load(o.out + "/tokenizer.model");
    man["dit"] = {{"file", "dit.safetensors"}, {"config", dit_config(o).to_json()}};
    json vc = vae_config(o);
    if (file_exists(o.state + "/vae_export.json"))
        vc = read_json(o.state + "/vae_export.json");
    man["vae"] = {{"file", "vae.safetensors"}, {"config", vc}};
    man["text_encoder"] = {{"file", "text_encoder.safetensors"}, {"config", text_config(o, tok.vocab_size())}};
    man["tokenizer"] = {{"file", "tokenizer.model"}};
    man["video"] = {{"width", 64}, {"height", 64}, {"fps", 16}};
    man["recommended"] = {{"cache", recommended_window(o)}, {"steps", o.recommend_steps}, {"shift", 5.0}};
    if (o.recommend_sampler != "renoise")
        man["recommended"]["sampler"] = o.recommend_sampler;
    if (o.recommend_guidance != 1.0)
        man["recommended"]["guidance"] = o.recommend_guidance;
    if (!o.recommend_negative.empty())
        man["recommended"]["negative_prompt"] = o.recommend_negative;
    if (o.recommend_negative_guidance > 0)
        man["recommended"]["negative_guidance"] = o.recommend_negative_guidance;
    // A DiT trained on noised context expects its cache pass at that timestep.
    const double cn = o.recommend_context_noise >= 0 ? o.recommend_context_noise : o.context_noise;
    if (cn > 0)
        man["recommended"]["context_noise"] = cn;
    write_text_atomic(o.out + "/reel.json", man.dump(2) + "\n");
}

void export_dit(const Options& o, const TensorMap& dit, const TensorMap& text, int64_t step) {
    make_dirs(o.out);
    save_safetensors(o.out + "/dit.safetensors", detached(dit),
                     {{"format", "pt"}, {"model", "tinyworld causal wan dit"}, {"step", std::to_string(step)}});
    save_safetensors(o.out + "/text_encoder.safetensors", detached(text),
                     {{"format", "pt"}, {"model", "tinyworld umt5"}, {"step", std::to_string(step)}});
    write_manifest(o);
}

// The shape judge of --dit-shape-weight: circle / square / triangle from a 32 x 32 crop around the object, trained
// on world renders and on their VAE reconstructions (the decoder's own drawing of each shape), then frozen. Cached
// under the state folder.
std::unique_ptr<FrameDisc> train_shape_classifier(const Options& o,
                                                  const std::vector<std::string>& prompts,
                                                  const LatentEncoder& vae) {
    auto cls = std::make_unique<FrameDisc>(o.seed + 400, 3, 3);
    const std::string path = o.state + "/dit_shape_classifier.safetensors";
    std::vector<std::string> single;
    for (const auto& p : prompts)
        if (parse_prompt(p).objects.size() == 1)
            single.push_back(p);
    // [N, 3, 32, 32] crops and labels: frames of rendered clips, and the same frames reconstructed.
    auto batch = [&](std::mt19937_64& rng, at::Tensor* x, at::Tensor* y) {
        torch::NoGradGuard ng;
        const VaeBatch b = vae_batch(single, 4, 9, rng);
        const at::Tensor rec = vae.vae.decode(vae.vae.encode(b.video)).clamp(-1, 1);
        const at::Tensor idx = random_frames(4 * 9, 16, rng);
        std::vector<int64_t> lab;
        for (int64_t i = 0; i < idx.size(0); ++i)
            lab.push_back(b.shape[size_t(idx[i].item<int64_t>() / 9)]);
        *x = at::cat({object_crops(b.video, b.mask, idx, 32), object_crops(rec, b.mask, idx, 32)});
        *y = at::cat({at::tensor(lab), at::tensor(lab)});
    };
    auto accuracy = [&](const char* when) {
        torch::NoGradGuard ng;
        std::mt19937_64 rng(mix_seed(o.seed, 14, 0));
        double ok_r = 0, ok_d = 0, n = 0;
        for (int i = 0; i < 8; ++i) {
            at::Tensor x, y;
            batch(rng, &x, &y);
            const at::Tensor hit = ((*cls)(x).mean({2, 3}).argmax(1) == y).to(at::kFloat);
            const int64_t h = hit.size(0) / 2;
            ok_r += hit.narrow(0, 0, h).sum().item<double>();
            ok_d += hit.narrow(0, h, h).sum().item<double>();
            n += double(h);
        }
        std::printf("dit: shape classifier %s: accuracy %.3f on renders, %.3f on their reconstructions\n", when,
                    ok_r / n, ok_d / n);
    };
    if (file_exists(path)) {
        cls->load(load_safetensors(path));
        accuracy("(cached)");
    } else {
        torch::optim::Adam opt(cls->net->parameters(), torch::optim::AdamOptions(1e-3));
        const double t0 = now_s();
        for (int step = 0; step < o.dit_shape_steps; ++step) {
            std::mt19937_64 rng(mix_seed(o.seed, 13, uint64_t(step)));
            at::Tensor x, y;
            batch(rng, &x, &y);
            opt.zero_grad();
            at::cross_entropy_loss((*cls)(x).mean({2, 3}), y).backward();
            opt.step();
        }
        std::printf("dit: shape classifier trained %d steps in %.0f s\n", o.dit_shape_steps, now_s() - t0);
        save_safetensors(path, cls->state(), {{"format", "pt"}});
        accuracy("(trained)");
    }
    for (auto& p : cls->net->parameters())
        p.set_requires_grad(false);
    return cls;
}

void stage_dit(const Options& o, double minutes) {
    const WanDitConfig dcfg = dit_config(o);
    Tokenizer tok = Tokenizer::load(o.out + "/tokenizer.model");
    const UMT5Config tcfg = text_config(o, tok.vocab_size());
    const std::vector<std::string> prompts = train_prompts();
    std::vector<TokenBatch> toks;
    for (const auto& p : prompts)
        toks.push_back(tok.tokenize(p, o.text_len));
    // The unconditional prompt of classifier-free guidance: the engine encodes "" the same way.
    const TokenBatch empty_tok = tok.tokenize("", o.text_len);
    LatentSet data = build_latents(o, prompts);
    const CorrectedSet corr = build_corrected_set(o, prompts);
    // --dit-pixel-weight: the model folder's VAE, frozen (its tensors do not require grad), decodes x0 estimates.
    std::unique_ptr<TensorMap> pix_w;
    std::unique_ptr<LatentEncoder> pix_vae;
    if (o.dit_pixel_weight > 0 || o.dit_gan_weight > 0 || o.dit_shape_weight > 0) {
        pix_w = std::make_unique<TensorMap>(load_safetensors(o.out + "/vae.safetensors"));
        pix_vae = std::make_unique<LatentEncoder>(*pix_w, detect_wan_vae_config(*pix_w));
    }

    // --dit-gan-weight: a discriminator on 32 x 32 crops around the object, told the prompted shape (one-hot maps),
    // so that a rounded square is a fake even though it would pass for a circle.
    std::unique_ptr<FrameDisc> disc;
    std::unique_ptr<torch::optim::Adam> disc_opt;
    int64_t disc_steps = 0;
    std::vector<int64_t> prompt_shape;  // prompt -> shape index, -1 with more than one object
    for (const auto& p : prompts) {
        const SceneSpec sc = parse_prompt(p);
        prompt_shape.push_back(sc.objects.size() == 1 ? int64_t(sc.objects[0].shape) : -1);
    }
    const std::string disc_path = o.state + "/dit_disc.safetensors";
    if (o.dit_gan_weight > 0) {
        disc = std::make_unique<FrameDisc>(o.seed + 300, 3 + 3);
        if (o.resume && file_exists(disc_path)) {
            disc->load(load_safetensors(disc_path));
            disc_steps = o.dit_gan_warmup;  // a saved discriminator has been warmed up
        }
        disc_opt = std::make_unique<torch::optim::Adam>(disc->net->parameters(),
                                                        torch::optim::AdamOptions(2e-4).betas({0.5, 0.9}));
    }

    std::unique_ptr<FrameDisc> shape_cls;
    if (o.dit_shape_weight > 0)
        shape_cls = train_shape_classifier(o, prompts, *pix_vae);

    TensorMap dit = make_trainable(random_wan_dit_weights(dcfg, o.seed + 100));
    TensorMap text = make_trainable(umt5_init(tcfg, o.seed + 200));
    bool head_from_init = false;
    if (!o.dit_init.empty()) {
        // Same-named tensors of the same shape carry over: with a new VAE's latents only the patch embedding and
        // the output head (whose shapes follow the patch) start fresh, the blocks keep what they learned of text,
        // motion and the chunk-causal context.
        int nd = 0, nt = 0;
        const TensorMap init_dit = load_safetensors(o.dit_init + "/dit.safetensors");
        for (auto& kv : dit) {
            const bool copied = copy_if_same_shape(init_dit, kv.first, kv.second);
            nd += copied;
            if (kv.first == "head.head.weight")
                head_from_init = copied;
        }
        // Blocks the init lacks (a deeper DiT grown from a shallower one) start as identities: their three output
        // projections at zero, so the grown model computes what the init did and training adds from there.
        int grown = 0;
        for (int64_t l = 0; l < dcfg.num_layers; ++l) {
            const std::string b = "blocks." + std::to_string(l) + ".";
            if (init_dit.count(b + "self_attn.o.weight"))
                continue;
            torch::NoGradGuard ng;
            for (const char* n : {"self_attn.o.", "cross_attn.o.", "ffn.2."})
                for (const char* t : {"weight", "bias"})
                    dit.at(b + n + t).zero_();
            ++grown;
        }
        if (grown > 0)
            std::printf("dit: %d blocks beyond the init's start as identities\n", grown);
        const TensorMap init_text = load_safetensors(o.dit_init + "/text_encoder.safetensors");
        for (auto& kv : text)
            nt += copy_if_same_shape(init_text, kv.first, kv.second);
        std::printf("dit: initialized from %s: %d / %zu DiT tensors, %d / %zu text-encoder tensors\n",
                    o.dit_init.c_str(), nd, dit.size(), nt, text.size());
    }
    if (!head_from_init) {
        // Start from a zero output so the first steps are not dominated by a random flow prediction.
        torch::NoGradGuard ng;
        dit["head.head.weight"].mul_(0.0);
        dit["head.head.bias"].mul_(0.0);
    }
    std::vector<torch::Tensor> ps = param_list(dit);
    for (auto& t : param_list(text))
        ps.push_back(t);
    torch::optim::AdamW opt(ps, torch::optim::AdamWOptions(o.dit_lr).weight_decay(0.01));
    Checkpoint ck{o.state, "dit"};
    int64_t step = 0;
    double trained_s = 0;
    // Both maps in one checkpoint file, prefixed.
    TensorMap joint;
    for (auto& kv : dit)
        joint["dit." + kv.first] = kv.second;
    for (auto& kv : text)
        joint["text." + kv.first] = kv.second;
    if (o.resume && ck.exists()) {
        json m = ck.load(joint, &opt);
        step = m.value("step", int64_t(0));
        trained_s = m.value("trained_s", 0.0);
        std::printf("dit: resumed at step %lld (%.1f min trained)\n", (long long)step, trained_s / 60);
    }
    const int64_t start_step = step;
    std::printf("dit: %lld + text %lld parameters; %d chunks of %d latent frames, batch %d\n",
                (long long)count_params(dit), (long long)count_params(text), o.chunks, kChunk, o.dit_batch);

    FlowMatchScheduler sched(5.0);
    const std::vector<float> warped = sched.warp_steps({1000, 750, 500, 250});
    // With shift 5 only 4% of the table lies below noise 0.3: the last steps of a longer schedule are barely
    // trained. --train-shift 1 draws noise levels uniformly.
    const FlowMatchScheduler train_sched(o.train_shift);
    const std::vector<float>& table = train_sched.timesteps();
    const int64_t n_clips = data.lat.size(0);
    const int64_t win = int64_t(o.chunks) * kChunk, max_off = data.lat.size(1) - win;
    const uint64_t lat_h = uint64_t(data.lat.size(3)), lat_w = uint64_t(data.lat.size(4));
    // The first n_corr rows of every batch are world-corrected windows, trained on their last chunk only.
    const int64_t n_corr = corr.size() > 0 ? std::llround(double(o.dit_batch) * o.corrected_share) : 0;
    const bool use_contrast = o.dit_contrast_weight > 0;
    if (use_contrast) {
        const at::Tensor on = data.obj > 0;
        std::printf(
            "dit: shape-contrast weight %.1f: %.1f%% of object cells have contrast, mean share %.3f there, "
            "max %.3f\n",
            o.dit_contrast_weight,
            100.0 * (data.contrast.gt(0) & on).sum().item<double>() / std::max(1.0, on.sum().item<double>()),
            data.contrast.masked_select(data.contrast > 0).mean().item<double>(), data.contrast.max().item<double>());
    }
    const at::Tensor all_chunks = at::ones({win, 1, 1, 1}),
                     last_chunk = at::cat({at::zeros({win - kChunk}), at::ones({kChunk})}).view({win, 1, 1, 1}),
                     no_object = at::zeros({win - kChunk, 1, int64_t(lat_h), int64_t(lat_w)});
    const double t0 = now_s();
    double last_ck = t0, ema = -1, pix_ema = -1, cls_ema = -1, ema_d_real = 0, ema_d_fake = 0;
    auto save = [&]() {
        json m = {{"step", step},           {"trained_s", trained_s},       {"seed", o.seed},     {"loss_ema", ema},
                  {"dit_loss", o.dit_loss}, {"dit_config", dcfg.to_json()}, {"text_config", tcfg}};
        ck.save(joint, opt, m);
        if (disc)
            save_safetensors(disc_path, disc->state(), {{"format", "pt"}});
        export_dit(o, dit, text, step);
    };
    while (now_s() - t0 < minutes * 60 && (o.max_steps <= 0 || step < o.max_steps)) {
        const double ts = now_s();
        std::mt19937_64 rng(mix_seed(o.seed, 3, uint64_t(step)));
        at::Generator gen = make_gen(mix_seed(o.seed, 4, uint64_t(step)));
        const int64_t B = o.dit_batch;
        std::vector<at::Tensor> xs, ws, cs, ms;
        std::vector<TokenBatch> bt;
        std::vector<int64_t> row_shape;  // the clip's shape index per row (-1: several objects)
        // World-corrected windows: the rollout's own context, the world's target.
        for (int64_t b = 0; b < n_corr; ++b) {
            const int64_t c = int64_t(rng() % uint64_t(corr.size()));
            const int64_t sh = int64_t(rng() % lat_h), sw = int64_t(rng() % lat_w);
            xs.push_back(at::cat({corr.ctx[c], corr.target[c]}).roll({sh, sw}, {2, 3}));
            ws.push_back(at::cat({no_object, corr.obj[c]}).roll({sh, sw}, {2, 3}));
            if (use_contrast)
                cs.push_back(at::cat({no_object, corr.contrast[c]}).roll({sh, sw}, {2, 3}));
            ms.push_back(last_chunk);
            const bool drop = o.text_drop > 0 && double(rng() % 1000000) / 1e6 < o.text_drop;
            bt.push_back(drop ? empty_tok : toks[size_t(corr.prompt_of[size_t(c)])]);
            row_shape.push_back(drop ? -1 : prompt_shape[size_t(corr.prompt_of[size_t(c)])]);
        }
        for (int64_t b = n_corr; b < B; ++b) {
            ms.push_back(all_chunks);
            int64_t c = int64_t(rng() % uint64_t(n_clips));
            // Half the windows start at the clip's first latent frame (the start of a video), half at a later
            // chunk boundary: a windowed cache past the first chunks shows the model a context that starts
            // mid-stream, and it should have seen one.
            int64_t off = 0;
            if (max_off > 0 && rng() % 2 == 1)
                off = kChunk * int64_t(1 + rng() % uint64_t(max_off / kChunk));
            // The world wraps around and the seed only sets start positions: a whole-cell torus shift of the
            // latents is (nearly) another clip of the same prompt.
            const int64_t sh = int64_t(rng() % lat_h), sw = int64_t(rng() % lat_w);
            const bool sinks = off > 0 && o.sink_windows;
            // In a long video the object has moved anywhere since the sinks were made; a share of the windows
            // shows that by shifting the sink chunk on its own (the world wraps).
            const bool far = sinks && o.sink_shift > 0 && double(rng() % 1000000) / 1e6 < o.sink_shift;
            const int64_t fh = far ? int64_t(rng() % lat_h) : 0, fw = far ? int64_t(rng() % lat_w) : 0;
            // clip [F, c, h, w] -> the training window [win, c, h, w]. With sinks it is what the recommended window
            // cache shows past its first chunks: the video's first chunk at positions 0-2, then recent frames, so
            // position 0 always holds a video's first latent frame (one pixel frame, the others four).
            auto window = [&](const at::Tensor& clip) {
                if (!sinks)
                    return clip.narrow(0, off, win);
                return at::cat(
                    {clip.narrow(0, 0, kChunk).roll({fh, fw}, {2, 3}), clip.narrow(0, off + kChunk, win - kChunk)});
            };
            xs.push_back(window(data.lat[c]).roll({sh, sw}, {2, 3}));
            ws.push_back(window(data.obj[c]).roll({sh, sw}, {2, 3}));
            if (use_contrast)
                cs.push_back(window(data.contrast[c]).roll({sh, sw}, {2, 3}));
            const bool drop = o.text_drop > 0 && double(rng() % 1000000) / 1e6 < o.text_drop;
            bt.push_back(drop ? empty_tok : toks[size_t(data.prompt_of[size_t(c)])]);
            // Without its prompt a first chunk's shape is anyone's guess: those rows are not judged by shape.
            row_shape.push_back(drop ? -1 : prompt_shape[size_t(data.prompt_of[size_t(c)])]);
        }
        at::Tensor x0 = at::stack(xs);  // [B, F, C, h, w]
        // Loss weights [B, F, 1, h, w]: objects cover a few of the 64 cells of a latent frame, so an unweighted
        // loss is won by the background. The weights follow the clip's own object, so where the object's place is
        // uncertain they also pull the optimum towards painting it (a weighted mean or median).
        const at::Tensor obj_all = at::stack(ws);  // [B, F, 1, h, w]
        at::Tensor wt = 1.0 + (o.dit_obj_weight - 1.0) * obj_all;
        // --dit-contrast-weight: what tells the prompt's shape from the others is a few pixels of the object's
        // outline, a small part of the loss even with the object weighted up; these cells weigh more by their share.
        if (use_contrast)
            wt = wt + o.dit_contrast_weight * at::stack(cs);
        wt = wt * at::stack(ms);
        UMT5Encoder enc(text, tcfg, c10::kCPU, at::kFloat);
        WanDit model(dcfg, dit, c10::kCPU, at::kFloat);
        model.set_context(encode_text(enc, bt, o.text_len));
        GraphKVCache cache(int(dcfg.num_layers));
        at::Tensor loss = at::zeros({}, at::kFloat), pix_loss, gan_loss, shape_loss, crops_real, crops_fake;
        std::uniform_real_distribution<double> u01(0, 1);
        const int pix_chunk = pix_vae ? int(rng() % uint64_t(o.chunks)) : -1;
        for (int k = 0; k < o.chunks; ++k) {
            at::Tensor xk = x0.narrow(1, k * kChunk, kChunk);  // [B, 3, C, h, w]
            std::vector<float> tv(static_cast<size_t>(B) + 0);
            for (auto& t : tv)
                t = u01(rng) < o.warped_share ? warped[rng() % warped.size()] : table[rng() % table.size()];
            if (k == pix_chunk && o.dit_pixel_max_t < 1000) {
                // At high noise the estimate is a blur whatever the loss: judge the rows where a shape can show.
                for (int64_t b = std::max(n_corr, B - o.dit_pixel_rows); b < B; ++b) {
                    float t = table[rng() % table.size()];
                    while (t > o.dit_pixel_max_t)
                        t = table[rng() % table.size()];
                    tv[size_t(b)] = t;
                }
            }
            at::Tensor t = at::tensor(tv).view({B, 1}).expand({B, kChunk}).contiguous();  // [B, 3]
            at::Tensor sigma = (t.select(1, 0) / 1000.0f).view({B, 1, 1, 1, 1});
            at::Tensor noise = at::randn(xk.sizes(), gen, xk.options());
            at::Tensor xt = (1 - sigma) * xk + sigma * noise;
            at::Tensor flow = model.forward(xt, t, k * kChunk, cache);  // [B, 3, C, h, w]
            at::Tensor wk = wt.narrow(1, k * kChunk, kChunk);
            // Given x_t, the flow target is affine in x0, so the per-cell optimum of the loss carries over to the x0
            // estimate: MSE's is the posterior mean, a blur of every place the object may be; L1's the median, which
            // in each cell is either object or background.
            at::Tensor err = flow - (noise - xk);
            err = o.dit_loss == "l1" ? err.abs() : err.pow(2);
            loss = loss + (err * wk).mean() / wk.mean();
            if (k == pix_chunk) {
                // The latent loss weighs every latent direction alike, the decoder does not: what makes a square's
                // corners may be a small latent error and a large pixel one. The last rows are ordinary windows
                // (every chunk trained); both sides decoded as a fresh 3-frame sequence.
                const int64_t n = std::min<int64_t>(o.dit_pixel_rows, B - n_corr);
                if (n > 0) {
                    at::Tensor ref;  // [n, 3, 9, 64, 64]
                    {
                        torch::NoGradGuard ng;
                        ref = pix_vae->decode(xk.narrow(0, B - n, n)).clamp(-1, 1);
                    }
                    at::Tensor est = pix_vae->decode((xt - sigma * flow).narrow(0, B - n, n));
                    // Object weights: the latent cells any of the chunk's frames has the object in, upsampled.
                    const int64_t st = 64 / xk.size(3);
                    at::Tensor pw = wk.narrow(0, B - n, n).amax(1).repeat_interleave(st, 2).repeat_interleave(st, 3);
                    pw = pw.unsqueeze(2);  // [n, 1, 1, 64, 64]
                    at::Tensor pe = est - ref;
                    pe = o.dit_loss == "l1" ? pe.abs() : pe.pow(2);
                    pix_loss = (pe * pw).mean() / pw.mean();
                    if (disc || shape_cls) {
                        // Pixel object masks [n, 1, 9, 64, 64] from the latent cells: pixel frame 0 is latent frame
                        // 0, then 4 frames per latent frame.
                        const at::Tensor fmap = at::tensor(std::vector<int64_t>{0, 1, 1, 1, 1, 2, 2, 2, 2});
                        at::Tensor mp = obj_all.narrow(0, B - n, n).narrow(1, k * kChunk, kChunk).index_select(1, fmap);
                        mp = mp.repeat_interleave(st, 3).repeat_interleave(st, 4).permute({0, 2, 1, 3, 4});
                        const at::Tensor idx = random_frames(n * est.size(2), o.gan_frames, rng);
                        std::vector<int64_t> crop_shape;  // per crop, its row's shape (-1: not judged by shape)
                        for (int64_t i = 0; i < idx.size(0); ++i)
                            crop_shape.push_back(row_shape[size_t(B - n + idx[i].item<int64_t>() / est.size(2))]);
                        const at::Tensor fake = object_crops(est, mp, idx, 32);
                        if (disc) {
                            at::Tensor cond = at::zeros({idx.size(0), 3, 32, 32});  // the prompted shape, one-hot
                            for (size_t i = 0; i < crop_shape.size(); ++i)
                                if (crop_shape[i] >= 0)
                                    cond[int64_t(i)][crop_shape[i]].fill_(1.0);
                            crops_real = at::cat({object_crops(ref, mp, idx, 32), cond}, 1);
                            crops_fake = at::cat({fake, cond}, 1);
                            if (disc_steps >= o.dit_gan_warmup)
                                gan_loss = -(*disc)(crops_fake).mean();
                        }
                        if (shape_cls) {
                            std::vector<int64_t> keep, label;
                            for (size_t i = 0; i < crop_shape.size(); ++i)
                                if (crop_shape[i] >= 0) {
                                    keep.push_back(int64_t(i));
                                    label.push_back(crop_shape[i]);
                                }
                            if (!keep.empty())
                                shape_loss = at::cross_entropy_loss(
                                    (*shape_cls)(fake.index_select(0, at::tensor(keep))).mean({2, 3}),
                                    at::tensor(label));
                        }
                    }
                }
            }
            if (k + 1 < o.chunks) {
                // Context pass (what inference's cache pass writes): the clean chunk at t=0, or lightly noised.
                at::Tensor xc = xk;
                if (o.self_context > 0) {
                    // At inference the context is the DiT's own output, the x0 it predicts at the last step, with
                    // its errors; trained on clean chunks only, it has never seen its errors as context and they
                    // compound over a long video. So some rows take that estimate (the chunk noised to the last
                    // step, one no-grad pass) and learn to go on towards the clip from it.
                    at::Tensor own;
                    {
                        torch::NoGradGuard ng;
                        // --self-context-chain: past the first chunk (whose object could land anywhere, away from the
                        // clip the next chunk is trained towards), the whole few-step chain from noise, as the
                        // rollout makes it, given the context before it.
                        const bool chain = o.self_context_chain && k > 0;
                        const size_t first = chain ? 0 : warped.size() - 1;
                        at::Tensor x = at::randn(xk.sizes(), gen, xk.options());
                        if (!chain) {
                            const float sl = sched.sigma_at(warped.back());
                            x = (1 - sl) * xk + sl * x;
                        }
                        for (size_t i = first; i < warped.size(); ++i) {
                            const float si = sched.sigma_at(warped[i]);
                            own = x - si * model.forward(x, at::full({B, kChunk}, warped[i]), k * kChunk, cache);
                            if (i + 1 < warped.size()) {
                                const float sn = sched.sigma_at(warped[i + 1]);
                                x = (1 - sn) * own + sn * at::randn(xk.sizes(), gen, xk.options());
                            }
                        }
                    }
                    std::vector<float> pick(static_cast<size_t>(B));
                    for (auto& p : pick)
                        p = u01(rng) < o.self_context ? 1.0f : 0.0f;
                    // A corrected window's context is the rollout's own already.
                    for (int64_t b = 0; b < n_corr; ++b)
                        pick[size_t(b)] = 0.0f;
                    at::Tensor m = at::tensor(pick).view({B, 1, 1, 1, 1});
                    xc = m * own + (1 - m) * xk;
                }
                at::Tensor tc = at::zeros({B, kChunk});
                if (o.context_noise > 0) {
                    const float sc = sched.sigma_at(float(o.context_noise));
                    xc = (1 - sc) * xc + sc * at::randn(xk.sizes(), gen, xk.options());
                    tc.fill_(o.context_noise);
                }
                model.forward(xc, tc, k * kChunk, cache);
            }
        }
        loss = loss / double(o.chunks);
        // The flow-matching part alone, comparable with runs without the pixel-side losses.
        const double lv = loss.item<double>();
        double pv = -1, cv = -1;
        if (pix_loss.defined()) {
            pv = pix_loss.item<double>();
            loss = loss + o.dit_pixel_weight * pix_loss;
        }
        if (gan_loss.defined())
            loss = loss + o.dit_gan_weight * gan_loss;
        if (shape_loss.defined()) {
            cv = shape_loss.item<double>();
            loss = loss + o.dit_shape_weight * shape_loss;
        }
        const double lr = dit_lr_at(o.dit_lr, o.dit_lr_final, o.lr_decay_start, o.max_steps, step);
        set_lr(opt, lr);
        opt.zero_grad();
        loss.backward();
        clip_grad(joint, 1.0);
        opt.step();
        if (disc && crops_fake.defined()) {
            // Hinge loss; the DiT's step above only read the discriminator, whose gradients are discarded here.
            disc_opt->zero_grad();
            at::Tensor d_real = (*disc)(crops_real), d_fake = (*disc)(crops_fake.detach());
            (at::relu(1 - d_real).mean() + at::relu(1 + d_fake).mean()).backward();
            disc_opt->step();
            ++disc_steps;
            ema_d_real = 0.95 * ema_d_real + 0.05 * d_real.mean().item<double>();
            ema_d_fake = 0.95 * ema_d_fake + 0.05 * d_fake.mean().item<double>();
        }
        ++step;
        trained_s += now_s() - ts;
        if (cv >= 0)
            cls_ema = cls_ema < 0 ? cv : 0.98 * cls_ema + 0.02 * cv;
        ema = ema < 0 ? lv : 0.98 * ema + 0.02 * lv;
        if (pv >= 0)
            pix_ema = pix_ema < 0 ? pv : 0.98 * pix_ema + 0.02 * pv;
        if (step % 25 == 0 || step == start_step + 1) {
            std::printf("dit step %lld  loss %.4f  (ema %.4f)  lr %.2e  %.2f s/step", (long long)step, lv, ema, lr,
                        now_s() - ts);
            if (pix_ema >= 0)
                std::printf("  pixel loss ema %.4f", pix_ema);
            if (cls_ema >= 0)
                std::printf("  shape CE ema %.3f", cls_ema);
            if (disc)
                std::printf("  D(real) %.2f D(fake) %.2f%s", ema_d_real, ema_d_fake,
                            disc_steps < o.dit_gan_warmup ? " (warm-up)" : "");
            std::printf("\n");
        }
        std::fflush(stdout);
        if (now_s() - last_ck > o.ckpt_minutes * 60) {
            save();
            last_ck = now_s();
        }
    }
    save();
}

// ---------------------------------------------------------------- evaluation through the engine's inference path

json stage_eval(const Options& o) {
    torch::NoGradGuard ng;
    FolderModel fm(o.out);
    TensorMap vw = load_safetensors(o.out + "/vae.safetensors");
    WanVae vae(vw, fm.vcfg, c10::kCPU, at::kFloat, o.eval_prefix_chunks > 0);

    auto prompts = tinyworld_suite("eval");
    if (o.eval_prompts > 0 && size_t(o.eval_prompts) < prompts.size()) {
        // An even spread over the list (held-out prompts come first in eval.txt).
        std::vector<std::string> sub;
        for (int i = 0; i < o.eval_prompts; ++i)
            sub.push_back(prompts[size_t(i) * prompts.size() / size_t(o.eval_prompts)]);
        prompts = sub;
    }
    // With --eval-prefix-chunks N the rollout continues the rendered clip's first N chunks (encoded by the VAE), and
    // the score covers the --eval-frames frames after them.
    const int64_t prefix = o.eval_prefix_chunks;
    const int64_t prefix_frames = prefix > 0 ? 1 + 4 * (prefix * kChunk - 1) : 0;
    int64_t chunks = 1;
    while (1 + 4 * (chunks * kChunk - 1) < o.eval_frames + prefix_frames)
        ++chunks;
    std::vector<EvalReport> reports;
    struct ShapeTally {
        double shape = 0, fill = 0;
        int videos = 0;
    };
    std::map<std::string, ShapeTally> by_shape;
    const double t0 = now_s();
    const std::string window = recommended_window(o);
    // The flag, else the training's context noise, else what the model folder recommends.
    const double eval_context_noise = o.eval_context_noise >= 0 ? o.eval_context_noise
                                      : o.context_noise > 0     ? o.context_noise
                                                                : fm.context_noise;
    const CacheSpec spec = parse_cache_spec(o.eval_cache == "window"            ? window
                                            : o.eval_cache == "window-absolute" ? window + ",rope=absolute"
                                                                                : o.eval_cache,
                                            o.eval_merge, "none", "");
    for (size_t i = 0; i < prompts.size(); ++i) {
        std::unique_ptr<KVCache> cache = make_cache(spec, int(fm.dcfg.num_layers));
        RolloutConfig rc = fm.rollout_config(o.eval_seed + i, o.eval_guidance);
        rc.steps = o.eval_steps;
        rc.sampler = parse_rollout_sampler(o.eval_sampler);
        rc.context_noise = eval_context_noise;
        rc.negative_guidance = o.eval_negative_guidance;
        CausalRollout roll(fm.dit, *cache, rc);
        roll.set_context(fm.context(prompts[i], o.eval_guidance, o.eval_negative, o.eval_negative_guidance));
        WanVaeDecodeStream dec(vae);
        at::Tensor given;  // [1, 3N, C, h, w]
        if (prefix > 0) {
            at::Tensor v, m;
            render_clip(parse_prompt(prompts[i]), eval_clip_seed(i), 0, prefix_frames, &v, &m);
            given = vae.encode(v.unsqueeze(0)).permute({0, 2, 1, 3, 4}).contiguous();
        }
        std::vector<std::vector<uint8_t>> frames;
        int64_t seen = 0;
        for (int64_t c = 0; c < chunks; ++c) {
            at::Tensor lat;  // [1, 3, C, h, w]
            if (c < prefix) {
                lat = given.narrow(1, c * kChunk, kChunk);
                roll.push_chunk(lat);
            } else {
                lat = roll.next_chunk();
            }
            at::Tensor rgb = dec.push(lat.permute({0, 2, 1, 3, 4}))[0];  // [3, T, 64, 64]
            for (auto& f : to_frames(rgb))
                if (seen++ >= prefix_frames && int(frames.size()) < o.eval_frames)
                    frames.push_back(std::move(f));
        }
        EvalReport r = evaluate_frames(frames, 64, 64, prompts[i]);
        std::printf("eval %2zu  overall %.3f  bg %.2f  colour %.2f  shape %.2f  dir %.2f  | %s\n", i, r.overall,
                    r.background, r.color, r.shape, r.direction, prompts[i].c_str());
        // Per prompted shape: its adherence and the largest blob's fill (circle ~0.785, square ~1 when rendered):
        // whether the model draws squares rounder than the evaluator's 0.87 or does not tell shapes apart at all.
        {
            double fill = 0;
            int n = 0;
            for (const FrameDetection& d : r.detections)
                if (!d.blobs.empty()) {
                    fill += d.blobs[0].fill;
                    ++n;
                }
            ShapeTally& t = by_shape[shape_name(parse_prompt(prompts[i]).objects[0].shape)];
            t.shape += r.shape;
            t.fill += n > 0 ? fill / n : 0.0;
            ++t.videos;
        }
        std::fflush(stdout);
        reports.push_back(r);
    }
    json j = summarize_reports(reports).to_json();
    j["frames"] = o.eval_frames;
    j["prompts"] = prompts.size();
    j["cache"] = o.eval_cache;
    j["merge"] = o.eval_merge;
    j["guidance"] = o.eval_guidance;
    j["negative"] = o.eval_negative;
    j["negative_guidance"] = o.eval_negative_guidance;
    j["steps"] = o.eval_steps;
    j["sampler"] = o.eval_sampler;
    j["context_noise"] = eval_context_noise;
    j["prefix_chunks"] = prefix;
    for (const auto& kv : by_shape)
        j["by_prompted_shape"][kv.first] = {{"videos", kv.second.videos},
                                            {"shape", kv.second.shape / kv.second.videos},
                                            {"largest_blob_fill", kv.second.fill / kv.second.videos}};
    j["seconds"] = now_s() - t0;
    std::printf("eval summary: %s\n", j.dump().c_str());
    make_dirs(o.state);
    write_text_atomic(o.state + "/eval_" + std::to_string(o.eval_frames) + ".json", j.dump(2));
    return j;
}

// Reconstruction report of the VAE checkpoint under --state, without training (what the vae stage prints at its end).
void stage_vae_eval(const Options& o) {
    const WanVaeConfig cfg = vae_config(o);
    TensorMap params = make_trainable(wan_vae_random_weights(cfg, true, o.seed));
    Checkpoint ck{o.state, "vae"};
    if (!ck.exists())
        throw std::runtime_error("--stage vae-eval: no VAE checkpoint under " + o.state);
    json m = ck.load(params, nullptr);
    json r = eval_vae_recon(o, params, cfg, o.eval_prompts);
    r["step"] = m.value("step", int64_t(0));
    std::printf("vae eval: %s\n", r.dump().c_str());
}

// ---------------------------------------------------------------- patch-rank: what a token of width dim can carry

// z [1, C, F, H, W] -> tokens [F * H/p * W/p, p * p * C], each ordered (row, column, channel) as the DiT's head writes.
at::Tensor to_patches(const at::Tensor& z, int64_t p) {
    const int64_t c = z.size(1), f = z.size(2), h = z.size(3), w = z.size(4);
    return z[0].reshape({c, f, h / p, p, w / p, p}).permute({1, 2, 4, 3, 5, 0}).reshape({-1, p * p * c});
}
at::Tensor from_patches(const at::Tensor& t, int64_t p, int64_t c, int64_t f, int64_t h, int64_t w) {
    return t.reshape({f, h / p, w / p, p, p, c}).permute({5, 0, 1, 3, 2, 4}).reshape({1, c, f, h, w});
}

// Can a DiT of width dim write a tinyworld frame at all? Its head maps a dim-wide token to a p x p x C latent patch
// (256 values for patch 4 and 16 channels), so whatever it writes lies in a subspace of rank <= dim; its patch
// embedding likewise sees the context through dim projections. Here the eval clips' latents (33 frames) are cut into
// the DiT's patches, projected onto the top-k principal components of such patches (fitted on the same latents: the
// best any rank-k head could do) and onto the shipped DiT's head and patch-embedding subspaces, then decoded and
// scored by the evaluator.
void stage_patch_rank(const Options& o) {
    torch::NoGradGuard ng;
    FolderModel fm(o.out);
    TensorMap vw = load_safetensors(o.out + "/vae.safetensors");
    WanVae vae(vw, fm.vcfg, c10::kCPU, at::kFloat, true);
    const TensorMap& dw = fm.dit_w;
    const int64_t p = fm.dcfg.patch[1];
    auto prompts = tinyworld_suite("eval");
    if (o.eval_prompts > 0 && size_t(o.eval_prompts) < prompts.size())
        prompts.resize(size_t(o.eval_prompts));
    std::vector<at::Tensor> videos, latents;
    for (size_t i = 0; i < prompts.size(); ++i) {
        at::Tensor v, m;
        render_clip(parse_prompt(prompts[i]), eval_clip_seed(i), 0, 33, &v, &m);
        videos.push_back(v);
        latents.push_back(vae.encode(v.unsqueeze(0)));  // [1, C, F, h, w]
    }
    std::vector<at::Tensor> pts;
    for (auto& z : latents)
        pts.push_back(to_patches(z, p));
    at::Tensor all = at::cat(pts, 0).to(at::kDouble);  // [M, D]
    const at::Tensor mean = all.mean(0);
    at::Tensor xc = all - mean;
    auto eig = at::linalg_eigh(xc.t().mm(xc) / double(all.size(0)));
    at::Tensor evals = std::get<0>(eig).flip(0), evecs = std::get<1>(eig).flip(1);  // descending
    const int64_t d = all.size(1);
    const double total = evals.sum().item<double>();
    std::printf("patch-rank: %lld patches of %lld values; variance kept by the top k components:",
                (long long)all.size(0), (long long)d);
    for (int64_t k : {16, 32, 64, 96, 128, 192})
        if (k < d)
            std::printf(" k=%lld %.4f", (long long)k, evals.narrow(0, 0, k).sum().item<double>() / total);
    std::printf("\n");
    // Projections: onto span(U) for an orthonormal basis U [D, k] (about the patches' mean).
    auto basis_of = [](const at::Tensor& a) {  // columns of a [D, k] -> orthonormal basis of their span
        return std::get<0>(at::linalg_qr(a.to(at::kDouble)));
    };
    struct Case {
        std::string name;
        at::Tensor u;
    };
    std::vector<Case> cases{{"identity (the VAE alone)", at::Tensor()}};
    for (int64_t k : {64, 128, 192})
        if (k < d)
            cases.push_back({"top " + std::to_string(k) + " principal components", evecs.narrow(1, 0, k)});
    // head.head.weight [D, dim]: what the head can write; patch_embedding.weight [dim, C, 1, p, p] -> rows in the
    // (row, column, channel) order of the patches: what the embedding can see.
    cases.push_back({"span of the DiT's head", basis_of(dw.at("head.head.weight"))});
    at::Tensor pe = dw.at("patch_embedding.weight").squeeze(2).permute({0, 2, 3, 1}).reshape({-1, d});  // [dim, D]
    cases.push_back({"span of the DiT's patch embedding", basis_of(pe.t())});
    for (const Case& c : cases) {
        std::vector<EvalReport> reps;
        double se = 0;
        int64_t n = 0;
        for (size_t i = 0; i < prompts.size(); ++i) {
            at::Tensor z = latents[i];
            if (c.u.defined()) {
                at::Tensor t = to_patches(z, p).to(at::kDouble) - mean;
                t = t.mm(c.u).mm(c.u.t()) + mean;
                z = from_patches(t.to(at::kFloat), p, z.size(1), z.size(2), z.size(3), z.size(4));
            }
            at::Tensor rec = vae.decode(z)[0].clamp(-1, 1);
            se += (rec - videos[i]).pow(2).sum().item<double>();
            n += rec.numel();
            reps.push_back(evaluate_frames(to_frames(rec), 64, 64, prompts[i]));
        }
        json j = summarize_reports(reps).to_json();
        std::printf(
            "patch-rank: %-34s psnr %.2f dB  overall %.3f  background %.2f  colour %.2f  shape %.2f  direction "
            "%.2f\n",
            c.name.c_str(), psnr_from_mse(se / double(n)), j["all"]["overall"].get<double>(),
            j["all"]["background"].get<double>(), j["all"]["color"].get<double>(), j["all"]["shape"].get<double>(),
            j["all"]["direction"].get<double>());
        std::fflush(stdout);
    }
}

// ---------------------------------------------------------------- latent-probe: what the latent space keeps

// How well the DiT's training latents (STATE/cache, encoded with OUT's VAE when absent) tell an object's colour and
// the background apart: per latent frame, the mean latent over the cells the object touches and over the others
// (32 features), classified by softmax regression and by a 128-unit MLP fitted on 80% of the clips and scored on the
// rest. The DiT can only draw the colours its latent space distinguishes, and the decoder only paint them.
// Latents of --probe-rollouts rollouts of the --out folder's DiT (dit_sample_latents: its recommended settings,
// training prompts), normalized as the DiT writes them, with the object cells of their decoded frames: pixels away from
// the prompt's background, as render_world_clip marks a rendered clip's.
LatentSet rollout_latent_set(const Options& o, const std::vector<std::string>& prompts) {
    const int64_t f = int64_t(o.chunks) * kChunk + int64_t(o.latent_extra);
    const at::Tensor mu = dit_sample_latents(o, o.out, o.probe_rollouts, f);  // [N, z, F, h, w] raw
    torch::NoGradGuard ng;
    const TensorMap vw = load_safetensors(o.out + "/vae.safetensors");
    const WanVaeConfig vcfg = detect_wan_vae_config(vw);
    const LatentEncoder vae(vw, vcfg);
    LatentSet s;
    s.lat = ((mu - vae.mean) * vae.inv_std).permute({0, 2, 1, 3, 4}).contiguous();  // [N, F, C, h, w]
    const std::vector<size_t> ids = dit_sample_prompts(o, o.probe_rollouts);
    std::vector<at::Tensor> objs;
    for (int64_t i = 0; i < s.lat.size(0); ++i) {
        const at::Tensor px = vae.decode(s.lat.narrow(0, i, 1)).clamp(-1, 1).add(1).mul(127.5)[0];  // [3, T, H, W]
        const Background bg = parse_prompt(prompts[ids[size_t(i)]]).background;
        objs.push_back(latent_object_mask(object_pixel_mask(px, bg), vcfg.spatial_stride()));
        s.prompt_of.push_back(int64_t(ids[size_t(i)]));
    }
    s.obj = at::stack(objs);
    return s;
}

void stage_latent_probe(const Options& o) {
    const std::vector<std::string> prompts = train_prompts();
    // The encoder's latents of rendered clips, or (--probe-rollouts) what the DiT writes: whether a decoder could
    // tell the prompted shape from the DiT's latents at all.
    LatentSet data = o.probe_rollouts > 0 ? rollout_latent_set(o, prompts) : build_latents(o, prompts);
    std::printf("latent probe: %lld clips of %s\n", (long long)data.lat.size(0),
                o.probe_rollouts > 0 ? "DiT rollouts" : "encoded world renders");
    const int64_t n = data.lat.size(0), f = data.lat.size(1);
    std::vector<int64_t> colour, background, shape;
    for (int64_t i = 0; i < n; ++i) {
        const SceneSpec sc = parse_prompt(prompts[size_t(data.prompt_of[size_t(i)])]);
        colour.push_back(int64_t(sc.objects[0].color));
        background.push_back(int64_t(sc.background));
        shape.push_back(int64_t(sc.objects[0].shape));
    }
    at::Tensor w = data.obj.to(at::kFloat);                                         // [N, F, 1, h, w]
    at::Tensor pooled = object_background_means(data.lat, w).reshape({n * f, -1});  // [N*F, 2C]
    at::Tensor present = w.sum({2, 3, 4}).gt(0).reshape({n * f});
    // Shape needs the latents' spatial pattern, not their mean: a 5 x 5 window of cells centred on the object.
    at::Tensor crops = torus_centred_crops(data.lat.reshape({n * f, data.lat.size(2), data.lat.size(3), -1}),
                                           w.reshape({n * f, data.lat.size(3), -1}), 5)
                           .reshape({n * f, -1});  // [N*F, C * 25]
    const int64_t split = (n * 8 / 10) * f;        // whole clips on each side
    json report;
    auto probe = [&](const at::Tensor& x, const std::vector<int64_t>& per_clip, int classes, const char* what) {
        at::Tensor y = at::tensor(per_clip).repeat_interleave(f);
        at::Tensor tr = at::nonzero(present.narrow(0, 0, split)).squeeze(1);
        at::Tensor te = at::nonzero(present.narrow(0, split, n * f - split)).squeeze(1) + split;
        at::Tensor xtr = x.index_select(0, tr), xte = x.index_select(0, te);
        at::Tensor ytr = y.index_select(0, tr), yte = y.index_select(0, te);
        at::Tensor mu = xtr.mean(0), sd = xtr.std(0).clamp_min(1e-6);
        xtr = (xtr - mu) / sd;
        xte = (xte - mu) / sd;
        for (int hidden : {0, 128}) {
            torch::manual_seed(int64_t(o.seed));
            torch::nn::Sequential net;
            if (hidden == 0) {
                net->push_back(torch::nn::Linear(x.size(1), classes));
            } else {
                net->push_back(torch::nn::Linear(x.size(1), hidden));
                net->push_back(torch::nn::ReLU());
                net->push_back(torch::nn::Linear(hidden, classes));
            }
            torch::optim::Adam opt(net->parameters(), 1e-2);
            for (int it = 0; it < 600; ++it) {
                opt.zero_grad();
                torch::nn::functional::cross_entropy(net->forward(xtr), ytr).backward();
                opt.step();
            }
            torch::NoGradGuard ng;
            const at::Tensor pred = net->forward(xte).argmax(1);
            const double acc_tr = net->forward(xtr).argmax(1).eq(ytr).to(at::kFloat).mean().item<double>();
            const double acc_te = pred.eq(yte).to(at::kFloat).mean().item<double>();
            const std::string kind = hidden ? "mlp" : "linear";
            std::printf("latent probe: %s, %s: held-out clips %.3f (fit %.3f, %lld frames)\n", what, kind.c_str(),
                        acc_te, acc_tr, (long long)yte.size(0));
            report[what][kind] = {{"heldout_clips", acc_te}, {"fit", acc_tr}};
            if (hidden && classes == kNumColors) {
                // Confusions: row = the prompt's colour, the most frequent wrong answer.
                for (int c = 0; c < classes; ++c) {
                    at::Tensor rows = pred.index({yte.eq(c)});
                    at::Tensor counts = at::bincount(rows, {}, classes);
                    counts[c] = 0;
                    const int64_t worst = counts.argmax().item<int64_t>();
                    std::printf("latent probe:   %-8s right %.2f, most often taken for %s (%.2f)\n",
                                color_name(Color(c)), rows.eq(c).to(at::kFloat).mean().item<double>(),
                                color_name(Color(worst)),
                                counts[worst].item<double>() / std::max<int64_t>(1, rows.numel()));
                }
            }
        }
    };
    probe(pooled, colour, kNumColors, "object colour");
    probe(pooled, background, 4, "background");
    probe(crops, shape, kNumShapes, "shape");
    write_text_atomic(o.state + "/latent_probe.json", report.dump(2));
}

// ---------------------------------------------------------------- check: autograd reaches the weight maps

void stage_check(const Options& o) {
    Options s = o;
    auto report = [](const char* what, const TensorMap& m, int part = 0) {  // part: 1 encoder only, 2 decoder only
        int64_t with = 0, total = 0;
        std::string missing;
        for (const auto& kv : m) {
            if (part != 0 && is_vae_encoder_tensor(kv.first) != (part == 1))
                continue;
            ++total;
            if (kv.second.grad().defined() && kv.second.grad().abs().sum().item<double>() > 0)
                ++with;
            else if (missing.size() < 200)
                missing += kv.first + " ";
        }
        std::printf("check %s: %lld / %lld tensors received a nonzero gradient %s%s\n", what, (long long)with,
                    (long long)total, missing.empty() ? "" : "; none: ", missing.c_str());
    };
    {
        WanVaeConfig cfg = vae_config(s);
        TensorMap p = make_trainable(wan_vae_random_weights(cfg, true, 1));
        at::Tensor x = at::rand({1, 3, 9, 64, 64}) * 2 - 1;
        // 33 frames too: past the second latent group the engine's streaming caches reach their steady state.
        for (int64_t t : {int64_t(9), int64_t(33)}) {
            torch::NoGradGuard ng;
            at::Tensor xt = at::rand({1, 3, t, 64, 64}) * 2 - 1;
            WanVae ref(p, cfg, c10::kCPU, at::kFloat, true);
            TrainVae tv(p, cfg);
            at::Tensor zr = ref.encode(xt), zt = tv.encode(xt);
            at::Tensor dr = ref.decode(zr), dt = tv.decode(zr);
            std::printf(
                "check vae twin vs WanVae, %lld frames: encode max |diff| %.3g (of %.3g), decode %.3g (of %.3g)\n",
                (long long)t, (zr - zt).abs().max().item<double>(), zr.abs().max().item<double>(),
                (dr - dt).abs().max().item<double>(), dr.abs().max().item<double>());
        }
        TrainVae vae(p, cfg);
        vae.decode(vae.encode(x)).pow(2).mean().backward();
        report("vae", p);
        // The latent heads' cross-entropy (--latent-class-weight) must reach every encoder tensor, and the
        // discriminator's loss (--gan-weight) every decoder tensor.
        for (auto& kv : p)
            kv.second.mutable_grad() = at::Tensor();
        std::mt19937_64 rng(1);
        const VaeBatch b = vae_batch(train_prompts(), 2, 9, rng);
        at::Tensor mu = vae.encode(b.video);
        latent_class_loss(mu, b, LatentHeads(cfg.z_dim, 3)).total.backward();
        report("vae encoder, latent heads' loss", p, 1);
        FrameDisc disc(4);
        (-disc(object_crops(vae.decode(mu.detach()), b.mask, at::arange(18), 32)).mean()).backward();
        report("vae decoder, discriminator's loss", p, 2);
    }
    {
        WanDitConfig dc = dit_config(s);
        UMT5Config tc = text_config(s, 40);
        TensorMap d = make_trainable(random_wan_dit_weights(dc, 1));
        TensorMap t = make_trainable(umt5_init(tc, 2));
        UMT5Encoder enc(t, tc, c10::kCPU, at::kFloat);
        WanDit dit(dc, d, c10::kCPU, at::kFloat);
        at::Tensor ids = at::randint(3, 40, {2, 10}, at::kLong), mask = at::ones({2, 10}, at::kLong);
        dit.set_context(at::constant_pad_nd(enc.encode(ids, mask), {0, 0, 0, s.text_len - 10}));
        GraphKVCache cache(int(dc.num_layers));
        at::Tensor x = at::randn({2, 3, 16, 8, 8});
        dit.forward(x, at::zeros({2, 3}), 0, cache);  // context pass (output unused)
        at::Tensor y = dit.forward(x, at::full({2, 3}, 500.0), 3, cache);
        y.pow(2).mean().backward();
        report("dit", d);
        report("umt5", t);
    }
}

}  // namespace

int main(int argc, char** argv) {
    keep_freed_memory_for_reuse();
    Options o;
    CLI::App app{"Train reel's tinyworld model (tiny Wan VAE + umT5 + causal Wan DiT) on the procedural world"};
    app.add_option("--out", o.out, "model folder to export (reel.json, *.safetensors, tokenizer.model)");
    app.add_option("--state", o.state, "resumable training state (checkpoints, cached latents, eval json)");
    const std::vector<std::string> stages{"all",  "tokenizer",    "vae",        "vae-eval", "dit",
                                          "eval", "latent-probe", "patch-rank", "check"};
    std::string stage_help;
    for (const std::string& st : stages)
        stage_help += (stage_help.empty() ? "" : " | ") + st;
    app.add_option("--stage", o.stage, stage_help)->check(CLI::IsMember(stages));
    app.add_option("--minutes", o.minutes, "time budget of the stage (all: 30% VAE, 70% DiT)");
    app.add_option("--ckpt-minutes", o.ckpt_minutes, "checkpoint and export period");
    app.add_option("--max-steps", o.max_steps, "stop a training stage after this many steps in total (0: no limit)");
    app.add_flag("--resume", o.resume, "continue from the checkpoint under --state");
    app.add_option("--seed", o.seed, "seed of initialization, data and noise");
    app.add_option("--threads", o.threads, "LibTorch intra-op threads");
    app.add_option("--vae-dim", o.vae_dim);
    app.add_option("--vae-dec-dim", o.vae_dec_dim,
                   "VAE decoder base width (default: --vae-dim); tinyworld's fast decoder is 8 with an encoder of 16");
    app.add_option("--vae-init", o.vae_init,
                   "start a fresh VAE run from this file's tensors where name and shape match (e.g. a frozen "
                   "encoder for --vae-decoder-only)");
    app.add_option("--vae-distill", o.vae_distill,
                   "decoder-only runs: also match this model folder's VAE decoder on latents its DiT generates "
                   "(distillation onto the DiT's actual outputs)");
    app.add_option("--distill-frames", o.distill_frames,
                   "latent frames per --vae-distill rollout (default: a training clip's); longer rollouts are decoded "
                   "in windows of a clip's length, half of them starting past the first frame")
        ->capture_default_str();
    app.add_option("--distill-samples", o.distill_samples, "DiT rollouts made (once, cached) for --vae-distill")
        ->capture_default_str();
    app.add_option("--distill-weight", o.distill_weight, "weight of the --vae-distill L1 term")->capture_default_str();
    app.add_option(
        "--vae-mult", o.vae_mult,
        "VAE stage width multipliers: 4 entries give Wan's 8x spatial compression, 3 give 4x (time stays 4x)");
    app.add_option("--vae-res", o.vae_res, "residual blocks per VAE stage");
    app.add_option("--vae-batch", o.vae_batch);
    app.add_option("--vae-frames", o.vae_frames, "frames per VAE training clip (1 + 4k)");
    app.add_option("--vae-lr", o.vae_lr);
    app.add_flag("--vae-decoder-only", o.vae_decoder_only,
                 "train the VAE decoder only (encoder frozen): latents, and a DiT trained on them, stay valid");
    app.add_option("--obj-weight", o.obj_weight, "loss weight of object pixels");
    app.add_option("--obj-ring", o.obj_ring,
                   "pixels around the object that weigh --obj-weight too (0: the object alone, which swells the "
                   "decoded shapes into round blobs; 3-4 keeps their outline)")
        ->check(CLI::Range(0, 16));
    app.add_option("--contrast-weight", o.contrast_weight,
                   "VAE: extra L1 weight of the pixels where the clip would change were each object another shape "
                   "in the same place (a square's corners, a circle's flanks; 0: off)")
        ->check(CLI::Range(0.0, 1000.0));
    app.add_option("--edge-weight", o.edge_weight, "weight of the finite-difference (edge) L1 loss");
    app.add_option("--prompt-weight", o.prompt_weight,
                   "decoder: weight of an L1 pulling decoded --vae-distill rollouts to their prompt's background and "
                   "object colours")
        ->capture_default_str();
    app.add_option("--gan-weight", o.gan_weight,
                   "VAE: weight of a hinge GAN loss from a frame patch discriminator (against blur that rounds "
                   "squares; the discriminator is saved beside the checkpoint)");
    app.add_option("--gan-frames", o.gan_frames, "VAE: frames per step the discriminator judges, of each source");
    app.add_option("--gan-warmup", o.gan_warmup, "VAE: discriminator-only steps before its loss reaches the decoder");
    app.add_option("--latent-class-weight", o.latent_class_weight,
                   "VAE, encoder trained: weight of a cross-entropy of linear heads telling the object's colour and "
                   "the background from the pooled latents (makes the latent space keep colour apart; heads not "
                   "exported)");
    app.add_option("--color-weight", o.color_weight,
                   "VAE: weight of an L1 on the object's mean colour per frame (what the pixel losses leave "
                   "ambiguous under blur)")
        ->capture_default_str();
    app.add_option("--latent-noise", o.latent_noise, "std of the noise added to latents before decoding");
    app.add_option("--dit-dim", o.dit_dim);
    app.add_option("--dit-layers", o.dit_layers);
    app.add_option(
           "--dit-patch", o.dit_patch,
           "DiT patch side in latent cells (2; 4 keeps 16 tokens per frame on a 4x-spatial VAE's 16x16 latents)")
        ->capture_default_str();
    app.add_option("--dit-init", o.dit_init,
                   "start a fresh DiT run from this model folder's dit/text_encoder tensors where name and shape "
                   "match (e.g. the shipped model's transformer blocks under a new VAE's patch embedding)");
    app.add_option("--dit-heads", o.dit_heads);
    app.add_option("--dit-ffn", o.dit_ffn);
    app.add_option("--text-dim", o.text_dim);
    app.add_option("--text-layers", o.text_layers);
    app.add_option("--text-len", o.text_len);
    app.add_option("--dit-batch", o.dit_batch);
    app.add_option("--dit-lr", o.dit_lr);
    app.add_option("--dit-obj-weight", o.dit_obj_weight,
                   "flow-matching loss weight of latent cells an object touches (1: unweighted)");
    app.add_option("--probe-rollouts", o.probe_rollouts,
                   "--stage latent-probe: probe the latents of this many rollouts of --out's DiT (its recommended "
                   "settings, training prompts; cached) instead of the encoder's latents of rendered clips (0)")
        ->check(CLI::Range(0, 100000));
    app.add_option("--dit-contrast-weight", o.dit_contrast_weight,
                   "extra flow-matching loss weight of a latent cell, times the share of its pixels that would change "
                   "were each object another shape in the same place (what tells the shapes apart; 0: off)")
        ->check(CLI::Range(0.0, 1000.0));
    app.add_option("--dit-loss", o.dit_loss,
                   "DiT flow-matching loss: mse (its x0 estimate is the posterior mean) | l1 (the per-cell median: "
                   "commits to object or background where the mean blurs)")
        ->check(CLI::IsMember({"mse", "l1"}));
    app.add_option("--dit-pixel-weight", o.dit_pixel_weight,
                   "weight of a second DiT loss: its x0 estimate of one chunk, decoded by the frozen VAE decoder, "
                   "against the clean chunk decoded the same way (object pixels weigh --dit-obj-weight; 0: off)")
        ->check(CLI::Range(0.0, 1e6));
    app.add_option("--dit-pixel-rows", o.dit_pixel_rows,
                   "batch rows --dit-pixel-weight and --dit-gan-weight decode per step")
        ->check(CLI::Range(1, 1024));
    app.add_option("--dit-shape-weight", o.dit_shape_weight,
                   "weight of a shape loss on the decoded x0 estimates: the cross-entropy of a frozen classifier "
                   "(trained first on crops of world renders and their VAE reconstructions) against the prompted "
                   "shape (0: off)")
        ->check(CLI::Range(0.0, 1e6));
    app.add_option("--dit-shape-steps", o.dit_shape_steps, "training steps of that classifier (cached in --state)")
        ->check(CLI::Range(1, 1000000));
    app.add_option("--dit-pixel-max-t", o.dit_pixel_max_t,
                   "the rows those losses judge draw the judged chunk's timestep at or below this (1000: any)")
        ->check(CLI::Range(1.0, 1000.0));
    app.add_option("--dit-gan-weight", o.dit_gan_weight,
                   "weight of a hinge GAN loss on the decoded x0 estimates: a discriminator on crops around the "
                   "object, given the prompted shape, against the clean chunk decoded (--gan-frames crops per step; 0: "
                   "off)")
        ->check(CLI::Range(0.0, 1e6));
    app.add_option("--dit-gan-warmup", o.dit_gan_warmup,
                   "discriminator-only steps before --dit-gan-weight reaches the DiT")
        ->check(CLI::Range(0, 1000000));
    app.add_option("--text-drop", o.text_drop,
                   "share of training clips trained on the empty prompt, for classifier-free guidance (0.1 typical)")
        ->check(CLI::Range(0.0, 1.0));
    app.add_option("--recommend-sink", o.recommend_sink,
                   "sink latent frames of the window cache the export recommends in reel.json (and --eval-cache "
                   "window uses): the first frames stay in the context for good, an anchor over long videos; the "
                   "recent frames make up the rest of the trained context");
    app.add_option("--recommend-guidance", o.recommend_guidance,
                   "classifier-free guidance scale the export recommends in reel.json (reel generate's default; "
                   "needs a DiT trained with --text-drop)");
    app.add_option("--recommend-negative-prompt", o.recommend_negative,
                   "negative prompt the export recommends in reel.json, as reel's --negative-prompt takes it (e.g. "
                   "swap:square=circle,triangle=circle,circle=square)")
        ->check(negative_prompt_problem);
    app.add_option("--recommend-negative-guidance", o.recommend_negative_guidance,
                   "negative guidance the export recommends in reel.json (reel's --negative-guidance)")
        ->check(CLI::NonNegativeNumber);
    app.add_option("--dit-lr-final", o.dit_lr_final,
                   "cosine-decay the DiT lr to this between --lr-decay-start and --max-steps (default: constant)");
    app.add_option("--lr-decay-start", o.lr_decay_start, "step at which the DiT lr decay begins");
    app.add_option("--chunks", o.chunks, "chunks of 3 latent frames per training clip");
    app.add_option("--clips-per-prompt", o.clips_per_prompt, "cached latent clips per training prompt");
    app.add_option("--latent-clips", o.latent_clips, "cached latent clips in all (0: clips-per-prompt x prompts)");
    app.add_option("--latent-extra", o.latent_extra,
                   "latent frames encoded per clip past the chunks x 3 training window (a multiple of 3); half the "
                   "training windows then start at a later chunk boundary, as a rolling window's context does")
        ->check([](const std::string& v) {
            return (std::atoi(v.c_str()) >= 0 && std::atoi(v.c_str()) % 3 == 0) ? "" : "must be a multiple of 3, >= 0";
        });
    app.add_option("--context-noise", o.context_noise, "timestep of the context (cache) pass in training");
    app.add_option("--corrected-rollouts", o.corrected_rollouts,
                   "DiT: rollouts of the init model (--dit-init, else --out) on training prompts whose windows, "
                   "corrected by the world, join the batches: the recommended window cache's context before chunk k "
                   "(the rollout's own latents) and, as the target, the prompt's object rendered on from where the "
                   "rollout's last frame has it (made once, cached under --state; 0: off)")
        ->check(CLI::Range(0, 100000));
    app.add_option("--corrected-chunks", o.corrected_chunks, "chunks per --corrected-rollouts rollout")
        ->check(CLI::Range(4, 100000))
        ->capture_default_str();
    app.add_option("--corrected-every", o.corrected_every, "a corrected window every N chunks of a rollout")
        ->check(CLI::Range(1, 100000))
        ->capture_default_str();
    app.add_option("--corrected-share", o.corrected_share, "share of each DiT batch that are corrected windows")
        ->check(CLI::Range(0.0, 0.9))
        ->capture_default_str();
    app.add_flag("--self-context-chain", o.self_context_chain,
                 "--self-context estimates past a window's first chunk come from the rollout's whole few-step chain "
                 "from noise (given the context before them) instead of one pass from the last step's noise level");
    app.add_option("--self-context", o.self_context,
                   "share of context chunks that are the DiT's own x0 estimate at the last inference step instead of "
                   "the clean chunk (what a rollout's cache holds; against drift in long videos)")
        ->check(CLI::Range(0.0, 1.0));
    app.add_option("--warped-share", o.warped_share, "share of timesteps drawn from the 4 inference steps");
    app.add_flag("--sink-windows", o.sink_windows,
                 "DiT windows that start mid-clip (--latent-extra) keep the clip's first chunk in front, as the "
                 "recommended window cache's sinks do at inference, instead of putting a mid-clip chunk at position 0");
    app.add_option("--sink-shift", o.sink_shift,
                   "with --sink-windows: share of those windows whose sink chunk gets a torus shift of its own, as if "
                   "the video had run long since the sinks were made (the object anywhere)")
        ->check(CLI::Range(0.0, 1.0));
    app.add_option("--train-shift", o.train_shift,
                   "shift of the table the other DiT timesteps are drawn from (5: mostly high noise; 1: uniform)")
        ->check(CLI::PositiveNumber);
    app.add_option("--eval-frames", o.eval_frames);
    app.add_option("--eval-prompts", o.eval_prompts, "eval prompts (spread over eval.txt; 0: all 48)");
    app.add_option("--eval-merge", o.eval_merge, "the eval rollouts' --merge (none, tempcache:tau=..., ...)");
    app.add_option("--eval-cache", o.eval_cache,
                   "window (the recommended window: --recommend-sink sinks + the trained context) | window-absolute | "
                   "full | any reel --cache value");
    app.add_option("--eval-seed", o.eval_seed);
    app.add_option("--eval-prefix-chunks", o.eval_prefix_chunks,
                   "continue N chunks of the rendered clip (encoded by the VAE) instead of starting from noise; "
                   "the score covers the frames after them")
        ->check(CLI::Range(0, 1000));
    app.add_option("--eval-steps", o.eval_steps, "denoising timesteps per chunk of the eval rollouts (before warping)");
    app.add_option("--eval-sampler", o.eval_sampler, "the eval rollouts' sampler: renoise | euler (reel's --sampler)")
        ->check(CLI::IsMember(rollout_sampler_names()));
    app.add_option("--recommend-steps", o.recommend_steps, "denoising timesteps the export recommends in reel.json");
    app.add_option("--recommend-sampler", o.recommend_sampler, "sampler the export recommends in reel.json")
        ->check(CLI::IsMember(rollout_sampler_names()));
    app.add_option(
           "--eval-context-noise", o.eval_context_noise,
           "the eval rollouts' cache-pass timestep (reel's --context-noise); default: --context-noise, else the "
           "model folder's recommended")
        ->check(CLI::Range(0.0, 999.0));
    app.add_option("--recommend-context-noise", o.recommend_context_noise,
                   "cache-pass timestep the export recommends in reel.json; default: --context-noise")
        ->check(CLI::Range(0.0, 999.0));
    app.add_option("--eval-guidance", o.eval_guidance, "classifier-free guidance scale of the eval rollouts (1: off)");
    app.add_option("--eval-negative", o.eval_negative,
                   "the eval guidance's negative prompt, as reel's --negative-prompt: text, or swap:word=other,... "
                   "(the prompt with those words swapped); default: the empty prompt")
        ->check(negative_prompt_problem);
    app.add_option("--eval-negative-guidance", o.eval_negative_guidance,
                   "> 0: the negative prompt gets a guidance branch of its own, flow += S * (cond - negative), and the "
                   "empty prompt keeps --eval-guidance's; 0 (default): it replaces the empty prompt")
        ->check(CLI::NonNegativeNumber);
    CLI11_PARSE(app, argc, argv);

    try {
        at::set_num_threads(o.threads);
        at::manual_seed(o.seed);
        make_dirs(o.state);
        const double t0 = now_s();
        if (o.stage == "check") {
            stage_check(o);
        } else if (o.stage == "vae-eval") {
            stage_vae_eval(o);
        } else if (o.stage == "latent-probe") {
            stage_latent_probe(o);
        } else if (o.stage == "patch-rank") {
            stage_patch_rank(o);
        } else if (o.stage == "tokenizer") {
            stage_tokenizer(o);
        } else if (o.stage == "vae") {
            stage_vae(o, o.minutes);
        } else if (o.stage == "dit") {
            stage_dit(o, o.minutes);
        } else if (o.stage == "eval") {
            stage_eval(o);
        } else {
            stage_tokenizer(o);
            double t = now_s();
            stage_vae(o, o.minutes * 0.3);
            std::printf("all: vae stage took %.1f min\n", (now_s() - t) / 60);
            t = now_s();
            stage_dit(o, o.minutes * 0.7);
            std::printf("all: dit stage took %.1f min\n", (now_s() - t) / 60);
            stage_eval(o);
        }
        std::printf("train_tinyworld: stage %s done in %.1f min\n", o.stage.c_str(), (now_s() - t0) / 60);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "train_tinyworld: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
