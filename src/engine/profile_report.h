// What `reel profile` writes: the per-chunk rows Engine::generate hands its ChunkObserver, gathered per cache
// policy, as CSV, as JSON with a summary per policy, and as an SVG plot of memory and latency against frames.
// Nothing here touches the engine or LibTorch, so every figure can be checked on synthetic rows.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace reel {

// The cache flags one --compare entry stands for. "" = the entry does not set it (the command line's flag holds).
struct PolicyFlags {
    std::string cache;     // --cache: full | window[:...]
    std::string merge;     // --merge: none | tempcache[:...] | flowcache[:...]
    std::string kv_quant;  // --kv-quant: int8 | int4 | int4-kivi | int4-hadamard
};

// "window:sink=3,recent=12+tempcache:tau=0.9+int4" -> {window:sink=3,recent=12, tempcache:tau=0.9, int4}. A bare
// "window" becomes `default_window` (when not empty). Throws naming the policy and the part for an unknown part, an
// empty part, or two parts of the same kind. Option values are not checked here (parse_cache_spec does that).
PolicyFlags policy_flags(const std::string& policy, const std::string& default_window = "");
// The short name of a policy: its set flags joined by '+' ("full", "window:sink=1,recent=3+int4").
std::string policy_label(const PolicyFlags& f);

// The figures the acceptance numbers come from, for one policy's rows.
struct ProfileSummary {
    int64_t frames = 0;  // pixel frames made (the last row's frame)
    int64_t chunks = 0;
    // Steady state: rows whose frame is >= steady_from (500, or half the run when it is shorter than 1000
    // frames), so the cache's fill-up at the start does not count as growth.
    int64_t steady_from = 0;
    int64_t kv_min = 0, kv_max = 0;  // KV bytes over the steady rows
    double kv_ratio = 0;             // kv_max / kv_min (infinite when kv_min is 0 and kv_max is not)
    int64_t rss_min = 0, rss_max = 0;
    double rss_ratio = 0;
    int64_t kv_peak = 0;  // over every row
    // DiT time per chunk (denoise + cache pass). The first chunk is warm-up (first-call allocations) and is left
    // out; early = mean over the first 10% of the rest, late = over the last 10% (at least one chunk each).
    double dit_early_ms = 0, dit_late_ms = 0;
    double latency_ratio = 0;  // late / early
    double dit_mean_ms = 0, decode_mean_ms = 0;
    int64_t peak_rss = 0;  // max peak_rss_bytes
    int64_t gpu_peak = 0;  // max gpu_peak_bytes (0 on CPU)
};

ProfileSummary summarize_profile(const std::vector<nlohmann::json>& rows);
nlohmann::json to_json(const ProfileSummary& s);

// One policy's run.
struct ProfileRun {
    std::string policy;                // as given (or policy_label of the flags)
    std::string spec;                  // CacheSpec::describe()
    nlohmann::json settings;           // the run record's settings (and timings), when the run finished
    std::vector<nlohmann::json> rows;  // Engine::generate's chunk rows, in order
    bool interrupted = false;
    std::string error;  // what stopped the run, if it failed
};

// CSV: the columns every row has, policy first. dit_ms = denoise_ms + cache_pass_ms; a value a row lacks is
// left empty (gpu_* on a build without CUDA stats, say).
const std::vector<std::string>& profile_csv_columns();
std::string profile_csv_header();                                                   // with '\n'
std::string profile_csv_row(const std::string& policy, const nlohmann::json& row);  // with '\n'
void write_profile_csv(std::ostream& out, const std::vector<ProfileRun>& runs);

// {<meta fields>, policies: [{policy, spec, settings, interrupted, [error], summary, rows}]}
nlohmann::json profile_json(const std::vector<ProfileRun>& runs, const nlohmann::json& meta = nlohmann::json::object());

// Three stacked panels against the pixel frame: KV cache MB, process RSS MB, DiT ms per chunk; one coloured
// polyline per policy in each panel (none for a policy without rows), ticks, axis labels and a legend.
std::string profile_svg(const std::vector<ProfileRun>& runs, const std::string& title = "reel profile");

// One line per policy after a header: the summary figures, for the terminal.
std::string profile_summary_table(const std::vector<ProfileRun>& runs);

// Writes `text` to `path` through a temporary file and a rename, so a reader never sees half a file; throws
// naming the path when it cannot.
void write_text_file(const std::string& path, const std::string& text);

}  // namespace reel
