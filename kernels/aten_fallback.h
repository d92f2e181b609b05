// The generic ATen-op versions of the quantization and Hadamard kernels. quant.h / hadamard.h route tensors that are
// not on the CPU here; they are declared so that tests can check on the CPU that both paths give the same bytes.
// Same contracts (shapes, layouts, errors) as the functions of the same name in quant.h and hadamard.h.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace reel::aten_fallback {

void quantize_tokens(const at::Tensor& x, int bits, int64_t group, at::Tensor& q, at::Tensor& scale);
void dequantize_tokens(const at::Tensor& q, const at::Tensor& scale, int bits, int64_t group, at::Tensor& out);
void quantize_channels(const at::Tensor& x, int bits, at::Tensor& q, at::Tensor& scale, at::Tensor& zero);
void dequantize_channels(const at::Tensor& q,
                         const at::Tensor& scale,
                         const at::Tensor& zero,
                         int bits,
                         at::Tensor& out);
void fwht_(at::Tensor& x, int64_t block);

}  // namespace reel::aten_fallback
