// Process memory figures read from the kernel, so that memory claims are measured, not estimated.
#pragma once
#include <cstdint>

namespace reel {

int64_t current_rss_bytes();  // VmRSS
int64_t peak_rss_bytes();     // VmHWM: the high-water mark since process start
double now_seconds();         // monotonic clock

}  // namespace reel
