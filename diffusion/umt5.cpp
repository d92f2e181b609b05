#include "diffusion/umt5.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace reel {

void to_json(nlohmann::json& j, const UMT5Config& c) {
    j = nlohmann::json{{"vocab", c.vocab},
                       {"dim", c.dim},
                       {"dim_attn", c.dim_attn},
                       {"dim_ffn", c.dim_ffn},
                       {"num_heads", c.num_heads},
                       {"num_layers", c.num_layers},
                       {"num_buckets", c.num_buckets},
                       {"shared_pos", c.shared_pos},
                       {"text_len", c.text_len},
                       {"max_dist", c.max_dist}};
}

void from_json(const nlohmann::json& j, UMT5Config& c) {
    UMT5Config d;  // missing keys keep the defaults
    c.vocab = j.value("vocab", d.vocab);
    c.dim = j.value("dim", d.dim);
    c.dim_attn = j.value("dim_attn", d.dim_attn);
    c.dim_ffn = j.value("dim_ffn", d.dim_ffn);
    c.num_heads = j.value("num_heads", d.num_heads);
    c.num_layers = j.value("num_layers", d.num_layers);
    c.num_buckets = j.value("num_buckets", d.num_buckets);
    c.shared_pos = j.value("shared_pos", d.shared_pos);
    c.text_len = j.value("text_len", d.text_len);
    c.max_dist = j.value("max_dist", d.max_dist);
}

namespace {

const at::Tensor& need(const TensorMap& t, const std::string& name, int64_t ndim) {
    auto it = t.find(name);
    if (it == t.end())
        throw std::runtime_error("detect_umt5_config: tensor " + name + " not found");
    if (it->second.dim() != ndim)
        throw std::runtime_error("detect_umt5_config: " + name + " should have " + std::to_string(ndim) +
                                 " dims, found " + std::to_string(it->second.dim()));
    return it->second;
}

}  // namespace

UMT5Config detect_umt5_config(const TensorMap& t) {
    UMT5Config c;
    const at::Tensor& emb = need(t, "token_embedding.weight", 2);  // [vocab, dim]
    c.vocab = int(emb.size(0));
    c.dim = int(emb.size(1));
    c.dim_attn = int(need(t, "blocks.0.attn.q.weight", 2).size(0));  // [dim_attn, dim]
    c.dim_ffn = int(need(t, "blocks.0.ffn.fc1.weight", 2).size(0));  // [ffn, dim]
    c.shared_pos = t.count("pos_embedding.embedding.weight") != 0;
    const at::Tensor& pos =
        need(t, c.shared_pos ? "pos_embedding.embedding.weight" : "blocks.0.pos_embedding.embedding.weight", 2);
    c.num_buckets = int(pos.size(0));
    c.num_heads = int(pos.size(1));
    c.num_layers = 0;
    while (t.count("blocks." + std::to_string(c.num_layers) + ".norm1.weight"))
        ++c.num_layers;
    if (c.dim_attn % c.num_heads != 0)
        throw std::runtime_error("detect_umt5_config: dim_attn " + std::to_string(c.dim_attn) +
                                 " is not a multiple of the head count " + std::to_string(c.num_heads));
    return c;
}

int64_t umt5_relative_bucket(int64_t rel, int num_buckets, int max_dist) {
    // Bidirectional: half of the buckets for keys after the query, half for keys before it.
    const int half = num_buckets / 2;
    int64_t bucket = rel > 0 ? half : 0;
    const int64_t r = rel < 0 ? -rel : rel;
    const int max_exact = half / 2;
    if (r < max_exact)
        return bucket + r;
    // float32 math, truncated toward zero like `.long()` in the reference.
    const float lf =
        std::log(float(r) / float(max_exact)) / float(std::log(double(max_dist) / max_exact)) * float(half - max_exact);
    const int64_t large = std::min<int64_t>(max_exact + int64_t(lf), half - 1);
    return bucket + large;
}

at::Tensor umt5_relative_buckets(int64_t lq, int64_t lk, int num_buckets, int max_dist) {
    at::Tensor b = at::empty({lq, lk}, at::kLong);
    int64_t* p = b.data_ptr<int64_t>();
    for (int64_t i = 0; i < lq; ++i)
        for (int64_t j = 0; j < lk; ++j)
            p[i * lk + j] = umt5_relative_bucket(j - i, num_buckets, max_dist);
    return b;
}

UMT5Encoder::UMT5Encoder(const TensorMap& tensors, const UMT5Config& cfg, c10::Device device, c10::ScalarType dtype)
    : cfg_(cfg), device_(device), dtype_(dtype) {
    if (cfg_.dim_attn % cfg_.num_heads != 0)
        throw std::runtime_error("UMT5Encoder: dim_attn must be a multiple of num_heads");
    WeightStore ws(tensors, device, dtype);
    token_embedding_ = ws.take("token_embedding.weight", {cfg_.vocab, cfg_.dim});
    if (cfg_.shared_pos)
        shared_pos_table_ = ws.take("pos_embedding.embedding.weight", {cfg_.num_buckets, cfg_.num_heads});
    for (int i = 0; i < cfg_.num_layers; ++i) {
        const std::string p = "blocks." + std::to_string(i) + ".";
        Block b;
        b.norm1.load(ws, p + "norm1", cfg_.dim);
        b.q.load(ws, p + "attn.q", cfg_.dim, cfg_.dim_attn, false);
        b.k.load(ws, p + "attn.k", cfg_.dim, cfg_.dim_attn, false);
        b.v.load(ws, p + "attn.v", cfg_.dim, cfg_.dim_attn, false);
        b.o.load(ws, p + "attn.o", cfg_.dim_attn, cfg_.dim, false);
        b.norm2.load(ws, p + "norm2", cfg_.dim);
        b.gate.load(ws, p + "ffn.gate.0", cfg_.dim, cfg_.dim_ffn, false);
        b.fc1.load(ws, p + "ffn.fc1", cfg_.dim, cfg_.dim_ffn, false);
        b.fc2.load(ws, p + "ffn.fc2", cfg_.dim_ffn, cfg_.dim, false);
        if (!cfg_.shared_pos)
            b.pos_table = ws.take(p + "pos_embedding.embedding.weight", {cfg_.num_buckets, cfg_.num_heads});
        blocks_.push_back(std::move(b));
    }
    norm_.load(ws, "norm", cfg_.dim);
    ws.finish("UMT5Encoder", /*strict=*/true);
}

at::Tensor UMT5Encoder::position_bias(int layer, int64_t lq, int64_t lk) const {
    return bias_from_buckets(layer, umt5_relative_buckets(lq, lk, cfg_.num_buckets, cfg_.max_dist).to(device_));
}

at::Tensor UMT5Encoder::bias_from_buckets(int layer, const at::Tensor& buckets) const {
    const at::Tensor& table = cfg_.shared_pos ? shared_pos_table_ : blocks_.at(size_t(layer)).pos_table;
    // table[buckets]: [Lq, Lk, heads] -> [1, heads, Lq, Lk]
    return at::embedding(table, buckets).permute({2, 0, 1}).unsqueeze(0).contiguous();
}

at::Tensor UMT5Encoder::encode(const at::Tensor& ids_in, const at::Tensor& mask_in) const {
    // ids, mask: [B, L] -> [B, L, dim]
    if (ids_in.dim() != 2 || mask_in.sizes() != ids_in.sizes())
        throw std::runtime_error("UMT5Encoder::encode: ids and mask must both be [B, L]");
    const at::Tensor ids = ids_in.to(device_, at::kLong);
    const int64_t B = ids.size(0), L = ids.size(1), N = cfg_.num_heads, D = cfg_.dim_attn / cfg_.num_heads;
    const at::Tensor key_pad = (mask_in.to(device_) == 0).view({B, 1, 1, L});
    const double neg = dtype_ == at::kDouble     ? std::numeric_limits<double>::lowest()
                       : dtype_ == at::kHalf     ? -65504.0
                       : dtype_ == at::kBFloat16 ? -3.3895313892515355e38
                                                 : double(std::numeric_limits<float>::lowest());
    const at::Tensor neg_t = at::scalar_tensor(neg, at::TensorOptions().dtype(dtype_).device(device_));

    at::Tensor x = at::embedding(token_embedding_, ids);  // [B, L, dim]
    // Same buckets for every layer; only the tables differ.
    const at::Tensor buckets = umt5_relative_buckets(L, L, cfg_.num_buckets, cfg_.max_dist).to(device_);
    at::Tensor shared_bias;
    for (int i = 0; i < cfg_.num_layers; ++i) {
        const Block& b = blocks_[size_t(i)];
        at::Tensor pos;
        if (cfg_.shared_pos) {
            if (!shared_bias.defined())
                shared_bias = bias_from_buckets(0, buckets);
            pos = shared_bias;
        } else {
            pos = bias_from_buckets(i, buckets);  // [1, N, L, L]
        }
        // The mask replaces (not adds to) the position bias at padded keys.
        const at::Tensor bias = at::where(key_pad, neg_t, pos);  // [B, N, L, L]

        at::Tensor h = b.norm1.forward(x);
        at::Tensor q = b.q.forward(h).view({B, L, N, D}).transpose(1, 2);  // [B, N, L, D]
        at::Tensor k = b.k.forward(h).view({B, L, N, D}).transpose(1, 2);
        at::Tensor v = b.v.forward(h).view({B, L, N, D}).transpose(1, 2);
        // T5 folds the 1/sqrt(d) into its init: no scaling here.
        at::Tensor logits = at::matmul(q, k.transpose(2, 3)).add_(bias);            // [B, N, L, L]
        at::Tensor attn = at::softmax(logits.to(at::kFloat), -1).to(dtype_);        // [B, N, L, L]
        at::Tensor y = at::matmul(attn, v).transpose(1, 2).reshape({B, L, N * D});  // [B, L, dim_attn]
        x = x + b.o.forward(y);

        h = b.norm2.forward(x);
        x = x + b.fc2.forward(b.fc1.forward(h) * gelu_tanh(b.gate.forward(h)));  // [B, L, dim]
    }
    return norm_.forward(x);
}

at::Tensor UMT5Encoder::zero_padding(const at::Tensor& hidden, const at::Tensor& mask) {
    // hidden: [B, L, dim]; rows at index >= sum(mask[b]) are zeroed (prompts are left-aligned).
    const int64_t L = hidden.size(1);
    at::Tensor lens = (mask != 0).sum(1, /*keepdim=*/true).to(hidden.device());                    // [B, 1]
    at::Tensor pos = at::arange(L, at::TensorOptions().dtype(at::kLong).device(hidden.device()));  // [L]
    at::Tensor pad = (pos.unsqueeze(0) >= lens).unsqueeze(-1);                                     // [B, L, 1]
    return hidden.masked_fill(pad, 0);
}

}  // namespace reel
