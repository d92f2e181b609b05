// KV-cache quantization kernels: token-wise symmetric RTN (INT8 / INT4) and KIVI-style channel-wise asymmetric
// INT4, writing into preallocated storage so the cache never allocates per step.
//
// INT4 packs two values per byte, element 2j in the low nibble and 2j+1 in the high nibble. Scales are stored as
// float16 (half the bytes of float32; the 33-method study found fp16 scales lossless for KV caches).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace reel {

// Storage bytes of one quantized row of `dim` values at `bits` (8 or 4), scales excluded.
int64_t quant_row_bytes(int64_t dim, int bits);

// Token-wise symmetric round-to-nearest: each row of x is split into groups of `group` channels (dim % group == 0)
// and each group gets scale = absmax / (2^(bits-1) - 1), q = round(x / scale) clamped to [-(2^(bits-1)-1),
// 2^(bits-1)-1].
//   x:     [M, D] float (any float dtype; computed in float32)
//   q:     [M, quant_row_bytes(D, bits)] uint8 (int8 values reinterpreted as bytes for bits = 8)
//   scale: [M, D / group] float16
// q and scale may be non-contiguous views of a larger pool only along dim 0 (rows are contiguous).
void quantize_tokens(const at::Tensor& x, int bits, int64_t group, at::Tensor& q, at::Tensor& scale);
// out: [M, D] float32 (or the dtype of out), written in place.
void dequantize_tokens(const at::Tensor& q, const at::Tensor& scale, int bits, int64_t group, at::Tensor& out);

// KIVI keys: per channel over a page of G tokens, asymmetric: scale = (max - min) / 15, zero = min,
// q = round((x - min) / scale) in [0, 15] (bits = 4) or [0, 255] (bits = 8).
//   x:     [P, G, D] float
//   q:     [P, G, quant_row_bytes(D, bits)] uint8
//   scale: [P, D] float16, zero: [P, D] float16
void quantize_channels(const at::Tensor& x, int bits, at::Tensor& q, at::Tensor& scale, at::Tensor& zero);
// out: [P, G, D] float, written in place.
void dequantize_channels(const at::Tensor& q,
                         const at::Tensor& scale,
                         const at::Tensor& zero,
                         int bits,
                         at::Tensor& out);

}  // namespace reel
