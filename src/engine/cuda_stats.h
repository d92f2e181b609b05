// GPU memory figures from LibTorch's caching allocator; zeros on CPU and in CPU-only builds.
#pragma once
#include <c10/core/Device.h>

#include <cstdint>

namespace reel {

void cuda_reset_peak(const c10::Device& device);
int64_t cuda_allocated_bytes(const c10::Device& device);
int64_t cuda_peak_bytes(const c10::Device& device);

}  // namespace reel
