#include "src/engine/cuda_stats.h"

#ifdef REEL_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace reel {

#ifdef REEL_WITH_CUDA
namespace {
// Index 0 of each stat array is the aggregate over pool types, in LibTorch 1.13 and 2.x alike.
constexpr size_t kAggregate = 0;
}  // namespace

void cuda_reset_peak(const c10::Device& device) {
    if (device.is_cuda())
        c10::cuda::CUDACachingAllocator::resetPeakStats(device.index() < 0 ? 0 : device.index());
}
int64_t cuda_allocated_bytes(const c10::Device& device) {
    if (!device.is_cuda())
        return 0;
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    return stats.allocated_bytes[kAggregate].current;
}
int64_t cuda_peak_bytes(const c10::Device& device) {
    if (!device.is_cuda())
        return 0;
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    return stats.allocated_bytes[kAggregate].peak;
}
#else
void cuda_reset_peak(const c10::Device&) {}
int64_t cuda_allocated_bytes(const c10::Device&) {
    return 0;
}
int64_t cuda_peak_bytes(const c10::Device&) {
    return 0;
}
#endif

}  // namespace reel
