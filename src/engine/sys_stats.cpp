#include "src/engine/sys_stats.h"

#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif

#include <chrono>
#include <cstdio>
#include <cstring>

namespace reel {

namespace {
int64_t read_status_kb(const char* key) {
    FILE* f = std::fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    int64_t kb = -1;
    const size_t n = std::strlen(key);
    while (std::fgets(line, sizeof(line), f)) {
        if (std::strncmp(line, key, n) == 0 && line[n] == ':') {
            long long v = 0;
            if (std::sscanf(line + n + 1, "%lld", &v) == 1)
                kb = v;
            break;
        }
    }
    std::fclose(f);
    return kb;
}
}  // namespace

int64_t current_rss_bytes() {
    int64_t kb = read_status_kb("VmRSS");
    return kb < 0 ? -1 : kb * 1024;
}

int64_t peak_rss_bytes() {
    int64_t kb = read_status_kb("VmHWM");
    return kb < 0 ? -1 : kb * 1024;
}

double now_seconds() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

void keep_freed_memory_for_reuse() {
#ifdef M_MMAP_THRESHOLD
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
#endif
}

}  // namespace reel
