// Progress for long runs: a bar on a terminal, plain lines in logs, JSON lines for scripts, or nothing.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

namespace reel {

enum class ProgressMode { Auto, Bar, Lines, Json, Quiet };

struct ProgressEvent {
    int64_t chunk = 0;
    int64_t frames_done = 0;   // pixel frames written
    int64_t frames_total = 0;  // pixel frames planned
    double elapsed_s = 0;
    int64_t kv_bytes = 0;
    int64_t rss_bytes = 0;
};

class Progress {
  public:
    // Auto picks Bar when `out` is a terminal, Lines otherwise.
    Progress(ProgressMode mode, FILE* out);
    void update(const ProgressEvent& e);
    // A free-form note ("rounded 100 frames up to 105"); a JSON event of kind "note" in Json mode.
    void note(const std::string& text);
    // Ends the bar line; `summary` is printed (or emitted as a "done" event).
    void finish(const ProgressEvent& e, const std::string& summary);
    ProgressMode mode() const { return mode_; }

  private:
    ProgressMode mode_;
    FILE* out_;
    bool bar_open_ = false;
    double last_line_s_ = -1e9;
};

}  // namespace reel
