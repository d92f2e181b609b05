#include "diffusion/wan_dit.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "cache/kv_gather.h"
#include "kernels/attention.h"
#include "kernels/sparse_attention.h"

namespace reel {

namespace {

// Cache entries per attention block: bounds the dequantized/roped copy of keys that exists at any time.
constexpr int64_t kCacheReadBlock = 4096;

std::string blk(int i, const char* rest) {
    return "blocks." + std::to_string(i) + "." + rest;
}

// Identity when the norm was not loaded (qk_norm / cross_attn_norm off).
at::Tensor maybe_rms(const RMSNorm& n, const at::Tensor& x) {
    return n.weight.defined() ? n.forward(x) : x;
}
at::Tensor maybe_ln(const LayerNorm& n, const at::Tensor& x) {
    return n.dim > 0 ? n.forward(x) : x;
}

// Plain LayerNorm over the last dim (norm1, norm2, head.norm have no parameters).
at::Tensor plain_ln(const at::Tensor& x, int64_t dim, double eps) {
    return at::layer_norm(x, {dim}, {}, {}, eps);
}

void record(TensorMap* trace, const std::string& name, const at::Tensor& t) {
    if (trace)
        (*trace)[name] = t.detach().to(at::kCPU).clone();
}

}  // namespace

WanDit::WanDit(const WanDitConfig& cfg, const TensorMap& weights, c10::Device device, c10::ScalarType dtype)
    : cfg_(cfg), device_(device), dtype_(dtype), rope_((cfg.validate(), cfg.head_dim()), device) {
    const int64_t dim = cfg.dim;
    WeightStore ws(weights, device, dtype);
    at::Tensor pw = ws.take("patch_embedding.weight", {dim, cfg.in_dim, cfg.patch[0], cfg.patch[1], cfg.patch[2]});
    patch_b_ = ws.take("patch_embedding.bias", {dim});
    if (pw.defined())
        patch_w_ = pw.reshape({dim, -1}).contiguous();
    text0_.load(ws, "text_embedding.0", cfg.text_dim, dim);
    text2_.load(ws, "text_embedding.2", dim, dim);
    time0_.load(ws, "time_embedding.0", cfg.freq_dim, dim);
    time2_.load(ws, "time_embedding.2", dim, dim);
    time_proj_.load(ws, "time_projection.1", dim, 6 * dim);
    blocks_.resize(cfg.num_layers);
    for (int i = 0; i < cfg.num_layers; ++i) {
        WanBlock& b = blocks_[i];
        b.modulation = ws.take(blk(i, "modulation"), {1, 6, dim});
        b.q.load(ws, blk(i, "self_attn.q"), dim, dim);
        b.k.load(ws, blk(i, "self_attn.k"), dim, dim);
        b.v.load(ws, blk(i, "self_attn.v"), dim, dim);
        b.o.load(ws, blk(i, "self_attn.o"), dim, dim);
        if (cfg.qk_norm) {
            b.norm_q.load(ws, blk(i, "self_attn.norm_q"), dim, cfg.eps);
            b.norm_k.load(ws, blk(i, "self_attn.norm_k"), dim, cfg.eps);
        }
        if (cfg.cross_attn_norm)
            b.norm3.load(ws, blk(i, "norm3"), dim, cfg.eps);
        b.cross_q.load(ws, blk(i, "cross_attn.q"), dim, dim);
        b.cross_k.load(ws, blk(i, "cross_attn.k"), dim, dim);
        b.cross_v.load(ws, blk(i, "cross_attn.v"), dim, dim);
        b.cross_o.load(ws, blk(i, "cross_attn.o"), dim, dim);
        if (cfg.qk_norm) {
            b.cross_norm_q.load(ws, blk(i, "cross_attn.norm_q"), dim, cfg.eps);
            b.cross_norm_k.load(ws, blk(i, "cross_attn.norm_k"), dim, cfg.eps);
        }
        b.ffn0.load(ws, blk(i, "ffn.0"), dim, cfg.ffn_dim);
        b.ffn2.load(ws, blk(i, "ffn.2"), cfg.ffn_dim, dim);
    }
    head_modulation_ = ws.take("head.modulation", {1, 2, dim});
    head_.load(ws, "head.head", dim, cfg.out_dim * cfg.patch_volume());
    ws.finish("Wan DiT (" + std::to_string(cfg.num_layers) + " layers, dim " + std::to_string(dim) + ")");
}

void WanDit::set_context(const at::Tensor& ctx) {
    // ctx: [B, Lt, text_dim], Lt <= text_len
    if (ctx.dim() != 3 || ctx.size(2) != cfg_.text_dim || ctx.size(1) > cfg_.text_len)
        throw std::runtime_error("Wan DiT: context must be [B, <=" + std::to_string(cfg_.text_len) + ", " +
                                 std::to_string(cfg_.text_dim) + "]");
    at::Tensor c = ctx.to(device_, dtype_);
    if (c.size(1) < cfg_.text_len)  // the reference pads with zero rows, which are attended to
        c = at::cat({c, at::zeros({c.size(0), cfg_.text_len - c.size(1), c.size(2)}, c.options())}, 1);
    context_emb_ = text2_.forward(gelu_tanh(text0_.forward(c)));  // [B, text_len, dim]
    const int64_t b = c.size(0), n = cfg_.num_heads, d = cfg_.head_dim();
    // Zero rows (the padding) all give the same K and V: AnnCA sees them folded into one row with a +log(count)
    // bias, exact, so that k need only cover the prompt's own tokens plus one.
    const at::Tensor zero = c.eq(0).all(-1).to(at::kCPU).contiguous();  // [B, text_len]
    const bool* zp = zero.data_ptr<bool>();
    std::vector<std::vector<int64_t>> keep(static_cast<size_t>(b));
    std::vector<std::vector<float>> mult(static_cast<size_t>(b));
    size_t width = 1;
    for (int64_t i = 0; i < b; ++i) {
        int64_t zeros = 0, first = -1;
        for (int64_t j = 0; j < cfg_.text_len; ++j) {
            if (zp[i * cfg_.text_len + j]) {
                first = first < 0 ? j : first;
                ++zeros;
            } else {
                keep[size_t(i)].push_back(j);
                mult[size_t(i)].push_back(1.f);
            }
        }
        if (zeros > 0) {
            keep[size_t(i)].push_back(first);
            mult[size_t(i)].push_back(float(zeros));
        }
        width = std::max(width, keep[size_t(i)].size());
    }
    at::Tensor rows = at::zeros({b, int64_t(width)}, at::kLong);
    at::Tensor bias = at::full({b, int64_t(width)}, -std::numeric_limits<float>::infinity(), at::kFloat);
    for (int64_t i = 0; i < b; ++i)
        for (size_t j = 0; j < keep[size_t(i)].size(); ++j) {
            rows[i][int64_t(j)] = keep[size_t(i)][j];
            bias[i][int64_t(j)] = std::log(mult[size_t(i)][j]);
        }
    cross_bias_ = bias.to(device_);
    const at::Tensor gi = rows.to(device_).view({b, int64_t(width), 1, 1}).expand({b, int64_t(width), n, d});
    for (WanBlock& blk : blocks_) {
        blk.cross_kc = maybe_rms(blk.cross_norm_k, blk.cross_k.forward(context_emb_)).view({b, cfg_.text_len, n, d});
        blk.cross_vc = blk.cross_v.forward(context_emb_).view({b, cfg_.text_len, n, d});
        blk.cross_kc_folded = blk.cross_kc.gather(1, gi);
        blk.cross_vc_folded = blk.cross_vc.gather(1, gi);
    }
}

std::pair<at::Tensor, at::Tensor> WanDit::cross_kv(int layer) const {
    const WanBlock& b = blocks_.at(layer);
    return {b.cross_kc, b.cross_vc};
}

at::Tensor WanDit::sinusoid(const at::Tensor& t) const {
    // t: [N] -> [N, freq_dim]; a_j = t * 10000^(-j/half), [cos a, sin a], in float64 like the reference
    const int64_t half = cfg_.freq_dim / 2;
    auto opts = at::TensorOptions().dtype(at::kDouble).device(device_);
    at::Tensor inv = at::pow(10000.0, at::arange(half, opts).neg().div(static_cast<double>(half)));
    at::Tensor a = at::outer(t.to(device_, at::kDouble), inv);
    return at::cat({at::cos(a), at::sin(a)}, 1).to(dtype_);
}

at::Tensor WanDit::roped_keys(const KVView& view, int64_t hp, int64_t wp) const {
    // view.k: [B, T, N, D]
    if (!key_pos_memo_.defined() || key_grid_memo_ != hp * 100000 + wp ||
        key_pos_memo_.numel() != view.frame_pos.numel() ||
        (!key_pos_memo_.is_same(view.frame_pos) && !at::equal(key_pos_memo_, view.frame_pos))) {
        key_table_memo_ = rope_.table_for_tokens(view.frame_pos, hp, wp);
        key_pos_memo_ = view.frame_pos;
        key_grid_memo_ = hp * 100000 + wp;
    }
    return rope_.apply(view.k, key_table_memo_);
}

void WanDit::set_attention(const AnnAttentionSpec& self_attn, const AnnCrossSpec& cross_attn) {
    ann_spec_ = self_attn;
    cross_spec_ = cross_attn;
    ann_layers_.clear();
    if (ann_spec_.enabled)
        for (int i = 0; i < cfg_.num_layers; ++i)
            ann_layers_.push_back(std::make_unique<AnnSelfAttention>(ann_spec_));
    ann_stats_ = AnnStats();
}

int64_t WanDit::ann_sink_end(const KVCache& cache) const {
    const std::vector<int64_t> frames = cache.frame_list(0);
    int64_t end = ann_spec_.sink;
    if (!frames.empty() && frames[0] == 0) {
        for (size_t j = 1; j < frames.size(); ++j)
            if (frames[j] != frames[j - 1] + 1) {
                end = std::max(end, frames[j - 1] + 1);
                break;
            }
    }
    return end;
}

at::Tensor WanDit::ann_self_attention(int layer,
                                      const at::Tensor& q,
                                      const RopeTable& q_table,
                                      int64_t start_frame,
                                      int64_t f,
                                      int64_t hp,
                                      int64_t wp,
                                      int64_t sink_end,
                                      const KVCache& cache) {
    // q: [B, L, N, D]
    const int64_t b = q.size(0), l = q.size(1), n = q.size(2), d = q.size(3);
    AnnSelfAttention& ann = *ann_layers_[size_t(layer)];
    // Index keys must not move over an entry's life: rope them at absolute-equivalent positions (a relative
    // window shifts every position by the same amount, which leaves the ranking of a query's keys unchanged).
    const double shift = double(start_frame) - cache.query_position(start_frame);
    const int64_t local_from = start_frame - (ann_spec_.local >= 0 ? ann_spec_.local : f);
    auto roped = [&](const KVRows& r, double dt) {
        // r.k: [S, R, D] pre-RoPE -> roped float32
        const at::Tensor tpos = dt != 0.0 ? r.tpos + dt : r.tpos;
        return rope_.apply_at(r.k, rope_.table_at(tpos, r.spos, hp, wp)).to(at::kFloat);
    };
    auto seconds = [] {
        return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    };

    // Only metadata for the whole cache; keys and values are copied out of the store for the local entries, the
    // new index entries and the retrieved ones, nothing else.
    double t0 = seconds();
    const KVMeta meta = read_meta(cache, layer, kCacheReadBlock);
    ann_stats_.gather_s += seconds() - t0;
    ann.sync(meta.id, meta.bias, meta.last.ge(local_from).logical_or(meta.last.lt(sink_end)), &ann_stats_);
    t0 = seconds();
    std::vector<KVRows> got = gather_rows(cache, layer, kCacheReadBlock, {&ann.new_rows(), &ann.local_rows()});
    ann_stats_.gather_s += seconds() - t0;
    if (got[0].k.size(1) > 0)
        ann.add_keys(roped(got[0], shift), &ann_stats_);
    at::Tensor qh = rope_.apply_at(q, q_table).to(at::kFloat).permute({0, 2, 1, 3}).reshape({b * n, l, d});
    const at::Tensor sel = ann.search(qh, &ann_stats_);  // [S, Lq, K] rows in read order

    // Gather the rows any query retrieved, once each.
    t0 = seconds();
    RowLists pool;
    const at::Tensor sel_c = compact_selection(sel, &pool);
    const KVRows retrieved = gather_rows(cache, layer, kCacheReadBlock, {&pool})[0];
    ann_stats_.gather_s += seconds() - t0;
    const KVRows& local = got[1];
    t0 = seconds();
    at::Tensor out = sparse_attention(qh, roped(local, 0.0), local.v, local.bias, roped(retrieved, 0.0), retrieved.v,
                                      retrieved.bias, sel_c);
    ann_stats_.attend_s += seconds() - t0;
    ann_stats_.local_keys += local.k.size(1);
    if (ann.measures_recall() && sel.size(2) > 0) {
        // Recall needs every key: a measurement mode, it gathers the whole layer.
        RowLists all(static_cast<size_t>(b * n));
        for (auto& rows : all)
            for (int64_t j = 0; j < meta.id.size(1); ++j)
                rows.push_back(j);
        const KVRows everything = gather_rows(cache, layer, kCacheReadBlock, {&all})[0];
        ann.record_recall(qh, roped(everything, 0.0), everything.bias, sel, &ann_stats_);
    }
    return out.view({b, n, l, d}).permute({0, 2, 1, 3}).to(q.scalar_type());
}

at::Tensor WanDit::forward(const at::Tensor& x_in,
                           const at::Tensor& t_in,
                           int64_t start_frame,
                           KVCache& cache,
                           TensorMap* trace) {
    // x_in: [B, F, C, H, W], t_in: [B, F]
    if (!has_context())
        throw std::runtime_error("Wan DiT: forward called before set_context");
    if (cfg_.patch[0] != 1)
        throw std::runtime_error("Wan DiT: the causal path needs a temporal patch of 1 (per-frame timesteps)");
    if (x_in.dim() != 5 || x_in.size(2) != cfg_.in_dim)
        throw std::runtime_error("Wan DiT: latents must be [B, F, " + std::to_string(cfg_.in_dim) + ", H, W]");
    const int64_t b = x_in.size(0), f = x_in.size(1), c = x_in.size(2), h = x_in.size(3), w = x_in.size(4);
    const int64_t ph = cfg_.patch[1], pw = cfg_.patch[2];
    if (h % ph != 0 || w % pw != 0)
        throw std::runtime_error("Wan DiT: latent size " + std::to_string(h) + "x" + std::to_string(w) +
                                 " is not a multiple of the patch");
    if (context_emb_.size(0) != b)
        throw std::runtime_error("Wan DiT: context batch differs from the latents batch");
    const int64_t hp = h / ph, wp = w / pw, s = hp * wp, l = f * s;
    const int64_t dim = cfg_.dim, n = cfg_.num_heads, d = cfg_.head_dim();
    at::Tensor t = t_in.to(device_, at::kFloat);
    if (t.dim() == 1)
        t = t.unsqueeze(1).expand({b, f});
    if (t.dim() != 2 || t.size(0) != b || t.size(1) != f)
        throw std::runtime_error("Wan DiT: timestep must be [B, F] (one per frame)");

    // Patch embedding (Conv3d k = s = patch) as a linear over flattened patches; tokens in (f, h, w) order.
    at::Tensor xp = x_in.to(device_, dtype_)
                        .view({b, f, c, hp, ph, wp, pw})
                        .permute({0, 1, 3, 5, 2, 4, 6})
                        .reshape({b, l, c * ph * pw});
    at::Tensor x = at::linear(xp, patch_w_, patch_b_);  // [B, L, dim]
    if (trace) {
        record(trace, "patch_embedding.out", x.view({b, f, hp, wp, dim}).permute({0, 4, 1, 2, 3}));
        record(trace, "text_embedding.out", context_emb_);
    }

    // Time: e [B*F, dim] feeds the head, e0 [B, F, 6, dim] the blocks.
    at::Tensor e = time2_.forward(at::silu(time0_.forward(sinusoid(t.reshape({-1})))));
    at::Tensor e0 = time_proj_.forward(at::silu(e));
    record(trace, "time_embedding.out", e);
    record(trace, "time_projection.out", e0);
    e0 = e0.view({b, f, 6, dim});

    cache.set_frame_grid(hp, wp);
    RopeTable q_table;
    if (ann_spec_.enabled && start_frame == 0)
        for (auto& a : ann_layers_)
            a->reset();    // a new video: entry ids restart
    int64_t sink_end = 0;  // frames [0, sink_end) are attended exactly by AnnSA
    // Modulated LayerNorm, per frame: LN(x) * (1 + scale) + shift; shift/scale [B, F, 1, dim].
    auto modulate = [&](const at::Tensor& xx, const at::Tensor& shift, const at::Tensor& scale) {
        return (plain_ln(xx, dim, cfg_.eps).view({b, f, s, dim}) * (1 + scale) + shift).view({b, l, dim});
    };
    auto gated = [&](const at::Tensor& y, const at::Tensor& gate) {
        return (y.view({b, f, s, dim}) * gate).view({b, l, dim});
    };

    for (int i = 0; i < cfg_.num_layers; ++i) {
        WanBlock& blk = blocks_[i];
        const std::string p = "blocks." + std::to_string(i) + ".";
        record(trace, p + "in", x);
        at::Tensor m = blk.modulation.unsqueeze(1) + e0;  // [B, F, 6, dim]
        auto mod = [&](int64_t r) { return m.narrow(2, r, 1); };

        // Self-attention over the cache (which now includes this chunk).
        at::Tensor hs = modulate(x, mod(0), mod(1));
        record(trace, p + "self_attn.in", hs);
        at::Tensor q = maybe_rms(blk.norm_q, blk.q.forward(hs)).view({b, l, n, d});
        at::Tensor k = maybe_rms(blk.norm_k, blk.k.forward(hs)).view({b, l, n, d});
        at::Tensor v = blk.v.forward(hs).view({b, l, n, d});
        cache.write(i, start_frame, f, k, v);
        if (i == 0 && ann_spec_.enabled)
            sink_end = ann_sink_end(cache);
        if (i == 0) {
            // The cache decides where the queries sit (absolute, or relative to its window); ask after the
            // write, which may have rolled the window.
            std::vector<float> qpos(static_cast<size_t>(l));
            for (int64_t j = 0; j < l; ++j)
                qpos[size_t(j)] = float(cache.query_position(start_frame + j / s));
            q_table = rope_.table_at(at::tensor(qpos).view({l, 1}), at::arange(s, at::kLong).repeat({f}).view({l, 1}),
                                     hp, wp);  // [L, 1, c]
        }
        at::Tensor y;
        if (ann_spec_.enabled) {
            y = ann_self_attention(i, q, q_table, start_frame, f, hp, wp, sink_end, cache);
        } else {
            // q: [B, L, N, D] -> roped, head-major [B, N, L, D]
            AttentionAccumulator acc(rope_.apply_at(q, q_table).permute({0, 2, 1, 3}).contiguous());
            cache.read(i, kCacheReadBlock, [&](const KVBlock& blk) {
                // blk.k: [B, N, Lb, D] pre-RoPE; roped at the positions the cache gives each entry.
                const RopeTable kt = rope_.table_at(blk.tpos, blk.spos, hp, wp);
                acc.add(rope_.apply_at(blk.k, kt).to(q.scalar_type()), blk.v.to(q.scalar_type()), blk.bias);
            });
            y = acc.finish();
        }
        y = blk.o.forward(y.reshape({b, l, dim}));
        record(trace, p + "self_attn.out", y);
        x = x + gated(y, mod(2));

        // Cross-attention to the cached text K/V (no modulation, no gate).
        at::Tensor hc = maybe_ln(blk.norm3, x);
        record(trace, p + "cross_attn.in", hc);
        at::Tensor cq = maybe_rms(blk.cross_norm_q, blk.cross_q.forward(hc)).view({b, l, n, d});
        at::Tensor ya = cross_spec_.enabled ? ann_cross_attention(cq, blk.cross_kc_folded, blk.cross_vc_folded, s,
                                                                  cross_spec_.k, cross_bias_)
                                            : attention(cq, blk.cross_kc, blk.cross_vc);
        at::Tensor yc = blk.cross_o.forward(ya.reshape({b, l, dim}));
        record(trace, p + "cross_attn.out", yc);
        x = x + yc;

        // FFN.
        at::Tensor hf = modulate(x, mod(3), mod(4));
        record(trace, p + "ffn.in", hf);
        at::Tensor yf = blk.ffn2.forward(gelu_tanh(blk.ffn0.forward(hf)));
        record(trace, p + "ffn.out", yf);
        x = x + gated(yf, mod(5));
        record(trace, p + "out", x);
    }

    // Head: modulated by e (the time embedding), not e0.
    at::Tensor hm = head_modulation_.unsqueeze(1) + e.view({b, f, 1, dim});  // [B, F, 2, dim]
    at::Tensor o = head_.forward(modulate(x, hm.narrow(2, 0, 1), hm.narrow(2, 1, 1))).view({b, f, s, -1});
    record(trace, "head.out", o);
    // Unpatchify: token (f, hp, wp) outputs ordered (q, r, c) -> [B, F, C, H, W].
    const int64_t co = cfg_.out_dim;
    return o.view({b, f, hp, wp, ph, pw, co}).permute({0, 1, 6, 2, 4, 3, 5}).reshape({b, f, co, h, w});
}

std::vector<std::pair<std::string, std::vector<int64_t>>> wan_dit_tensor_shapes(const WanDitConfig& cfg) {
    const int64_t dim = cfg.dim;
    std::vector<std::pair<std::string, std::vector<int64_t>>> s;
    auto lin = [&](const std::string& name, int64_t in, int64_t out) {
        s.push_back({name + ".weight", {out, in}});
        s.push_back({name + ".bias", {out}});
    };
    s.push_back({"patch_embedding.weight", {dim, cfg.in_dim, cfg.patch[0], cfg.patch[1], cfg.patch[2]}});
    s.push_back({"patch_embedding.bias", {dim}});
    lin("text_embedding.0", cfg.text_dim, dim);
    lin("text_embedding.2", dim, dim);
    lin("time_embedding.0", cfg.freq_dim, dim);
    lin("time_embedding.2", dim, dim);
    lin("time_projection.1", dim, 6 * dim);
    for (int i = 0; i < cfg.num_layers; ++i) {
        s.push_back({blk(i, "modulation"), {1, 6, dim}});
        for (const char* a : {"self_attn", "cross_attn"}) {
            for (const char* pr : {"q", "k", "v", "o"})
                lin(blk(i, a) + "." + pr, dim, dim);
            if (cfg.qk_norm) {
                s.push_back({blk(i, a) + ".norm_q.weight", {dim}});
                s.push_back({blk(i, a) + ".norm_k.weight", {dim}});
            }
        }
        if (cfg.cross_attn_norm) {
            s.push_back({blk(i, "norm3.weight"), {dim}});
            s.push_back({blk(i, "norm3.bias"), {dim}});
        }
        lin(blk(i, "ffn.0"), dim, cfg.ffn_dim);
        lin(blk(i, "ffn.2"), cfg.ffn_dim, dim);
    }
    s.push_back({"head.modulation", {1, 2, dim}});
    lin("head.head", dim, cfg.out_dim * cfg.patch_volume());
    return s;
}

TensorMap random_wan_dit_weights(const WanDitConfig& cfg, uint64_t seed, c10::ScalarType dtype, bool gaussian) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    TensorMap out;
    auto ends_with = [](const std::string& a, const std::string& b) {
        return a.size() >= b.size() && a.compare(a.size() - b.size(), b.size(), b) == 0;
    };
    for (const auto& ns : wan_dit_tensor_shapes(cfg)) {
        const std::string& name = ns.first;
        at::Tensor t = gaussian ? at::randn(ns.second, gen, at::TensorOptions().dtype(at::kFloat))
                                : at::empty(ns.second, at::TensorOptions().dtype(at::kFloat))
                                      .uniform_(-std::sqrt(3.0), std::sqrt(3.0), gen);  // unit variance
        if (ends_with(name, "modulation")) {
            t.div_(std::sqrt(static_cast<double>(cfg.dim)));
        } else if (name.find("norm") != std::string::npos && ends_with(name, ".weight")) {
            t.mul_(0.1).add_(1.0);
        } else if (ends_with(name, ".bias")) {
            t.mul_(0.1);
        } else {  // Linear / conv weight [out, in, ...]
            t.div_(std::sqrt(static_cast<double>(t.numel() / t.size(0))));
        }
        out[name] = dtype == at::kFloat ? t : t.to(dtype);
    }
    return out;
}

}  // namespace reel
