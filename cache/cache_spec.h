// The cache policy a run uses, parsed from the CLI flags
//   --cache full | window:sink=S,recent=R[,rope=relative|absolute]
//   --merge none | tempcache[:tau=0.95,radius=1] | flowcache[:keep=0.1]
//   --kv-quant none | int8 | int4 | int4-kivi | int4-hadamard
//   --cache-budget 256M | 1G | 21f (bytes with K/M/G suffix, or latent frames with f)
// or from one combined string "window:sink=3,recent=12+tempcache:tau=0.9+int4" (reel profile --compare).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace reel {

class KVCache;

enum class KVQuant { none, int8, int4, int4_kivi, int4_hadamard };
KVQuant parse_kv_quant(const std::string& s);
const char* kv_quant_name(KVQuant q);

struct CacheSpec {
    // Frame policy.
    bool window = false;  // false: full (unbounded unless a budget is given)
    int sink = 0;         // sink frames (window only)
    int recent = 0;       // recent frames incl. the chunk being generated (window only)
    // RoPE positions of cached keys at read time: relative (sinks at 0..S-1, window frames right after, so
    // positions never leave the trained range) or absolute (the reference's global positions).
    bool relative_rope = false;
    // Capacity: 0 = from the window (or unbounded for full).
    int64_t budget_bytes = 0;
    int64_t budget_frames = 0;
    // Merging of near-duplicate keys.
    enum class Merge { none, tempcache, flowcache } merge = Merge::none;
    double tau = 0.95;  // tempcache: cosine similarity threshold
    int radius = 0;     // tempcache: spatial neighbourhood (latent tokens) searched in the previous frame
    double keep = 0.1;  // flowcache: share of old frames kept at full resolution (by importance)
    // Quantized storage.
    KVQuant quant = KVQuant::none;
    int64_t quant_group = 32;  // channels per scale (token-wise modes)
    int kivi_recent = 3;       // int4-kivi: frames kept in full precision besides the current chunk

    std::string describe() const;  // canonical, parseable by parse_policy
};

// From the four flags ("" = default for each).
CacheSpec parse_cache_spec(const std::string& cache,
                           const std::string& merge = "",
                           const std::string& kv_quant = "",
                           const std::string& budget = "");
// "window:sink=3,recent=12+tempcache:tau=0.9+int4-hadamard": parts joined by '+', each a --cache, --merge or
// --kv-quant value.
CacheSpec parse_policy(const std::string& combined, const std::string& budget = "");
// Splits a --compare list on commas, re-joining "key=value" pieces that continue the previous part:
// "full,window:sink=3,recent=12,window+tempcache" -> {"full", "window:sink=3,recent=12", "window+tempcache"}.
std::vector<std::string> split_policy_list(const std::string& list);

// "256M", "1G", "1.5G", "4096K", "123" (bytes) or "21f" (frames): sets exactly one of bytes / frames.
void parse_budget(const std::string& s, int64_t& bytes, int64_t& frames);

std::unique_ptr<KVCache> make_cache(const CacheSpec& spec, int num_layers);

}  // namespace reel
