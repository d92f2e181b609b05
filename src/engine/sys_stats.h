// Process memory figures read from the kernel, so that memory claims are measured, not estimated.
#pragma once
#include <cstdint>

namespace reel {

int64_t current_rss_bytes();  // VmRSS
int64_t peak_rss_bytes();     // VmHWM: the high-water mark since process start
double now_seconds();         // monotonic clock

// Per-chunk (and per-training-step) temporaries are freed and allocated again every chunk. With glibc's defaults the
// large ones are mmap'ed and unmapped, or trimmed off the heap, each time: RSS saws by tens of MB and the page faults
// cost time (a tinyworld training step took 2-3 s instead of 0.8). Fixed thresholds keep them in the heap for reuse.
// Call once at the start of main; a no-op without glibc.
void keep_freed_memory_for_reuse();

}  // namespace reel
