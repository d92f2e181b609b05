// Wan2.1 video VAE (WanVAE_ of the reference): causal 3D-convolutional encoder and decoder, 8x spatial and
// 4x temporal compression, 16 latent channels. Video tensors are [B, C, T, H, W] (channels before frames).
//
// Every 3-tap CausalConv3d sees 2 zero frames in front of the sequence; in streaming mode each one keeps the
// last 2 frames of its input as a per-layer cache, so a video of any length is decoded one latent frame at a
// time with bounded memory and the same result as decoding the whole clip at once (exactly in float64; in
// float32 up to the summation order the convolutions pick for 1 vs T frames, ~3e-6 on the golden data).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "diffusion/nn.h"
#include "weights/tensor_map.h"

namespace reel {

struct WanVaeConfig {
    int dim = 96;
    // Decoder base width; 0 = dim. Wan2.2's VAE decodes wider than it encodes (dec_dim); tinyworld decodes
    // narrower, because the decoder runs on every generated frame and the encoder only in training.
    int dec_dim = 0;
    int z_dim = 16;
    std::vector<int> dim_mult{1, 2, 4, 4};
    int num_res_blocks = 2;
    std::vector<bool> temporal_downsample{false, true, true};
    // Latent normalization (per channel): the DiT works on (mu - mean) / std. Defaults: Wan2.1's values.
    std::vector<float> mean{-0.7571f, -0.7089f, -0.9113f, 0.1075f,  -0.1745f, 0.9653f,  -0.1517f, 1.5508f,
                            0.4134f,  -0.0715f, 0.5517f,  -0.3632f, -0.1922f, -0.9497f, 0.2503f,  -0.2921f};
    std::vector<float> std_{2.8184f, 1.4541f, 2.3275f, 2.6558f, 1.2196f, 1.7708f, 2.6052f, 2.0743f,
                            3.2687f, 2.1526f, 2.8652f, 1.5579f, 1.6382f, 1.1253f, 2.8251f, 1.9160f};

    int decoder_dim() const { return dec_dim > 0 ? dec_dim : dim; }
    // Pixels per latent cell along H and W: one 2x downsample per stage after the first (Wan: 8).
    int64_t spatial_stride() const { return int64_t(1) << (dim_mult.empty() ? 0 : dim_mult.size() - 1); }
    // Decoder stage widths d*[m_last, m_last, ..., m_0] with d = decoder_dim() (real: 384 384 384 192 96).
    std::vector<int64_t> decoder_dims() const;
    // Encoder stage widths d*[1, m_0, ..., m_last] (real: 96 96 192 384 384).
    std::vector<int64_t> encoder_dims() const;
    // Throws when the lists disagree (dim_mult vs temporal_downsample, mean/std vs z_dim).
    void validate() const;
};

void to_json(nlohmann::json& j, const WanVaeConfig& c);
void from_json(const nlohmann::json& j, WanVaeConfig& c);

// Reads dim, z_dim, dim_mult, num_res_blocks and the temporal flags from the decoder.* names and shapes (so a
// decoder-only checkpoint works too), dec_dim where encoder.conv1 is narrower or wider than the decoder; mean/std from
// `scale.mean` / `scale.inv_std` when the checkpoint has them, else the Wan2.1 defaults.
WanVaeConfig detect_wan_vae_config(const TensorMap& tensors);

// Seeded random weights with every tensor a WanVae of `cfg` loads (conv N(0,1)/sqrt(fan_in), biases N(0,0.1^2),
// norm gammas 1): for benchmarks and tests of configs with no checkpoint at hand.
TensorMap wan_vae_random_weights(const WanVaeConfig& cfg, bool with_encoder, uint64_t seed);

namespace wan_vae {

// Per-layer streaming state. Slots are handed out in call order (like the reference's feat_idx), so one
// forward over a chunk always uses the same slot for the same layer. An undefined slot means "fresh".
struct Cache {
    std::vector<at::Tensor> slots;
    size_t cursor = 0;
    void begin() { cursor = 0; }  // before each forward
    at::Tensor& next();
    void clear() {
        slots.clear();
        cursor = 0;
    }
    int64_t bytes() const;
};

// Conv3d with causal time padding: kernel (kt, k, k), spatial padding k/2, kt-1 frames of history (2 zero
// frames at the start of a sequence). With a cache the history is the last kt-1 input frames of the previous
// chunk; without one each call is the start of a sequence.
struct CausalConv3d {
    at::Tensor weight, bias;  // [out, in, kt, kh, kw], [out]
    int64_t kt = 1, pad_hw = 0, stride_t = 1;
    void load(WeightStore& ws, const std::string& name, int64_t in, int64_t out, int64_t kt_, int64_t khw);
    // x: [B, in, T, H, W] -> [B, out, T, H, W]
    at::Tensor forward(const at::Tensor& x, Cache* cache) const;
    // Runs the conv over `hist ++ x` (hist: [B, in, kt-1, H, W]) and replaces hist by the last kt-1 frames.
    at::Tensor forward_with_history(const at::Tensor& x, at::Tensor& hist) const;
};

// F.normalize over channels * sqrt(C) * gamma.
struct RmsNormC {
    at::Tensor scale;  // gamma * sqrt(C), shaped [C, 1, 1, 1] to broadcast over [B, C, T, H, W]
    void load(WeightStore& ws, const std::string& name, int64_t c, bool images);
    // x: [B, C, T, H, W]
    at::Tensor forward(const at::Tensor& x) const;
};

struct ResidualBlock {
    RmsNormC norm0, norm3;
    CausalConv3d conv2, conv6, shortcut;  // shortcut.weight undefined when in == out
    void load(WeightStore& ws, const std::string& name, int64_t in, int64_t out);
    // x: [B, in, T, H, W] -> [B, out, T, H, W]; uses 2 cache slots
    at::Tensor forward(const at::Tensor& x, Cache* cache) const;
};

// Single-head self-attention over the pixels of each frame.
struct AttentionBlock {
    RmsNormC norm;
    at::Tensor qkv_w, qkv_b, proj_w, proj_b;  // 1x1 convs kept as [out, in, 1, 1, 1]
    int64_t c = 0;
    void load(WeightStore& ws, const std::string& name, int64_t c_);
    // x: [B, C, T, H, W]
    at::Tensor forward(const at::Tensor& x) const;
};

enum class ResampleMode { Upsample2d, Upsample3d, Downsample2d, Downsample3d };

struct Resample {
    ResampleMode mode = ResampleMode::Upsample2d;
    at::Tensor conv_w, conv_b;  // resample.1 Conv2d, kept as [out, in, 1, 3, 3] so frames need no permute
    CausalConv3d time_conv;     // 3d modes only
    int64_t c = 0;
    void load(WeightStore& ws, const std::string& name, int64_t c_, ResampleMode mode_);
    // Upsample3d:   x [B, C, T, H, W] -> [B, C/2, 2T (first frame of a sequence: 1), 2H, 2W]
    // Upsample2d:   x [B, C, T, H, W] -> [B, C/2, T, 2H, 2W]
    // Downsample2d: x [B, C, T, H, W] -> [B, C, T, H/2, W/2]
    // Downsample3d: x [B, C, T, H, W] -> [B, C, T', H/2, W/2], frame 0 kept, then one frame per 2
    // 3d modes use one cache slot.
    at::Tensor forward(const at::Tensor& x, Cache* cache) const;
};

// One entry of encoder.downsamples / decoder.upsamples / middle.
struct Layer {
    enum Kind { Res, Attn, Resamp } kind = Res;
    ResidualBlock res;
    AttentionBlock attn;
    Resample resample;
    at::Tensor forward(const at::Tensor& x, Cache* cache) const;
};

struct Decoder {
    CausalConv3d conv1, head_conv;
    RmsNormC head_norm;
    std::vector<Layer> middle, upsamples;
    void load(WeightStore& ws, const WanVaeConfig& cfg);
    // x: [B, z, T, h, w] (after conv2) -> [B, 3, 1+4(T-1) (fresh cache) or 4T, 8h, 8w]
    at::Tensor forward(const at::Tensor& x, Cache* cache) const;
};

struct Encoder {
    CausalConv3d conv1, head_conv;
    RmsNormC head_norm;
    std::vector<Layer> downsamples, middle;
    void load(WeightStore& ws, const WanVaeConfig& cfg);
    // x: [B, 3, T, H, W] -> [B, 2z, T', H/8, W/8]
    at::Tensor forward(const at::Tensor& x, Cache* cache) const;
};

}  // namespace wan_vae

class WanVae {
  public:
    // Loads `decoder.*`, `conv2.*` and, when `with_encoder`, `encoder.*` and `conv1.*` (strict: every other
    // tensor except `scale.*` is reported). `scale.mean` / `scale.inv_std`, when present, override cfg.mean/std.
    WanVae(const TensorMap& tensors,
           const WanVaeConfig& cfg,
           c10::Device device,
           c10::ScalarType dtype,
           bool with_encoder = true);

    // Whole clip, one pass (memory grows with T; use WanVaeDecodeStream for long videos).
    // z: normalized latents [B, z_dim, T, h, w] -> raw pixels [B, 3, 1+4(T-1), 8h, 8w] (not clamped)
    at::Tensor decode(const at::Tensor& z) const;

    // video: [B, 3, T, H, W] in [-1, 1], T = 1+4k -> normalized mu [B, z_dim, 1+k, H/8, W/8]
    // Frame 0 alone, then groups of 4 frames with per-layer caches (bounded memory, like the reference);
    // WanVaeEncodeStream does the same incrementally.
    at::Tensor encode(const at::Tensor& video) const;

    bool has_encoder() const { return has_encoder_; }
    const WanVaeConfig& config() const { return cfg_; }
    c10::Device device() const { return device_; }
    c10::ScalarType dtype() const { return dtype_; }
    const at::Tensor& latent_mean() const { return mean_; }        // [z_dim]
    const at::Tensor& latent_inv_std() const { return inv_std_; }  // [z_dim], float32(1/std) like the reference

    // z [B, z, T, h, w] normalized -> raw latents after conv2 (what the decoder consumes)
    at::Tensor decoder_input(const at::Tensor& z) const;
    // One encoder step with the caches: frames [B, 3, 1 (first step) or 4, H, W] -> normalized mu [B, z, 1, h, w]
    at::Tensor encode_step(const at::Tensor& frames, wan_vae::Cache& cache) const;
    const wan_vae::Decoder& decoder() const { return decoder_; }

  private:
    WanVaeConfig cfg_;
    c10::Device device_;
    c10::ScalarType dtype_;
    bool has_encoder_ = false;
    at::Tensor mean_, inv_std_;
    wan_vae::CausalConv3d conv1_, conv2_;
    wan_vae::Decoder decoder_;
    wan_vae::Encoder encoder_;
};

// Streaming decode: push latent frames as they are produced; each push returns the new pixel frames only.
// Internally one latent frame at a time goes through the decoder, so memory is one latent frame's activations
// plus the per-layer caches (2 frames per causal conv), whatever the video length.
class WanVaeDecodeStream {
  public:
    explicit WanVaeDecodeStream(const WanVae& vae);  // `vae` must outlive the stream
    // z: [B, z_dim, T, h, w], any T >= 1 -> [B, 3, T', 8h, 8w] with T' = 1 + 4(T-1) on the first push of a
    // sequence, 4T afterwards.
    at::Tensor push(const at::Tensor& z);
    void reset();
    int64_t cache_bytes() const { return cache_.bytes(); }
    int64_t frames_pushed() const { return frames_pushed_; }

  private:
    const WanVae& vae_;
    wan_vae::Cache cache_;
    int64_t frames_pushed_ = 0;
};

// Streaming encode: push pixel frames in any grouping; each push returns the latent frames completed by it
// (frame 0 alone makes latent 0, then every 4 frames one more). Up to 3 frames wait for their group.
class WanVaeEncodeStream {
  public:
    explicit WanVaeEncodeStream(const WanVae& vae);  // `vae` must outlive the stream
    // video: [B, 3, T, H, W] in [-1, 1], any T >= 1 -> normalized mu [B, z_dim, T', H/8, W/8] (T' may be 0)
    at::Tensor push(const at::Tensor& video);
    void reset();
    int64_t cache_bytes() const;
    int64_t pending_frames() const { return pending_.defined() ? pending_.size(2) : 0; }

  private:
    const WanVae& vae_;
    wan_vae::Cache cache_;
    at::Tensor pending_;  // [B, 3, <4, H, W] frames not yet encoded
    int64_t steps_ = 0;
};

}  // namespace reel
