#include "src/engine/progress.h"

#include <unistd.h>

#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

namespace reel {

namespace {
std::string fmt_eta(double s) {
    if (!std::isfinite(s) || s < 0)
        return "--:--";
    long t = static_cast<long>(s + 0.5);
    char buf[32];
    if (t >= 3600)
        std::snprintf(buf, sizeof(buf), "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else
        std::snprintf(buf, sizeof(buf), "%02ld:%02ld", t / 60, t % 60);
    return buf;
}

nlohmann::json event_json(const char* kind, const ProgressEvent& e) {
    return {{"event", kind},
            {"chunk", e.chunk},
            {"frames_done", e.frames_done},
            {"frames_total", e.frames_total},
            {"elapsed_s", e.elapsed_s},
            {"kv_bytes", e.kv_bytes},
            {"rss_bytes", e.rss_bytes}};
}
}  // namespace

Progress::Progress(ProgressMode mode, FILE* out) : mode_(mode), out_(out) {
    if (mode_ == ProgressMode::Auto)
        mode_ = isatty(fileno(out)) ? ProgressMode::Bar : ProgressMode::Lines;
}

void Progress::update(const ProgressEvent& e) {
    const double fps = e.elapsed_s > 0 ? e.frames_done / e.elapsed_s : 0;
    const double eta = fps > 0 ? (e.frames_total - e.frames_done) / fps : NAN;
    const double kv_mb = e.kv_bytes / 1048576.0;
    switch (mode_) {
        case ProgressMode::Quiet:
        case ProgressMode::Auto:
            return;
        case ProgressMode::Json:
            std::fprintf(out_, "%s\n", event_json("progress", e).dump().c_str());
            break;
        case ProgressMode::Lines:
            // One line per few seconds at most: logs stay readable on 10,000-frame runs.
            if (e.elapsed_s - last_line_s_ < 2.0 && e.frames_done < e.frames_total)
                return;
            last_line_s_ = e.elapsed_s;
            std::fprintf(out_, "frames %lld/%lld  %.1f fps  eta %s  kv %.1f MB  rss %.0f MB\n",
                         (long long)e.frames_done, (long long)e.frames_total, fps, fmt_eta(eta).c_str(), kv_mb,
                         e.rss_bytes / 1048576.0);
            break;
        case ProgressMode::Bar: {
            const int width = 30;
            const double frac = e.frames_total > 0 ? double(e.frames_done) / e.frames_total : 0;
            const int fill = static_cast<int>(frac * width);
            std::string bar(fill, '#');
            bar.append(width - fill, '.');
            std::fprintf(out_, "\r[%s] %lld/%lld frames  %.1f fps  eta %s  kv %.1f MB ", bar.c_str(),
                         (long long)e.frames_done, (long long)e.frames_total, fps, fmt_eta(eta).c_str(), kv_mb);
            bar_open_ = true;
            break;
        }
    }
    std::fflush(out_);
}

void Progress::note(const std::string& text) {
    if (mode_ == ProgressMode::Quiet)
        return;
    if (mode_ == ProgressMode::Json) {
        std::fprintf(out_, "%s\n", nlohmann::json{{"event", "note"}, {"text", text}}.dump().c_str());
    } else {
        if (bar_open_)
            std::fputc('\n', out_);
        bar_open_ = false;
        std::fprintf(out_, "%s\n", text.c_str());
    }
    std::fflush(out_);
}

void Progress::finish(const ProgressEvent& e, const std::string& summary) {
    if (mode_ == ProgressMode::Quiet)
        return;
    if (mode_ == ProgressMode::Json) {
        auto j = event_json("done", e);
        j["summary"] = summary;
        std::fprintf(out_, "%s\n", j.dump().c_str());
    } else {
        if (mode_ == ProgressMode::Bar)
            update(e);
        if (bar_open_)
            std::fputc('\n', out_);
        bar_open_ = false;
        std::fprintf(out_, "%s\n", summary.c_str());
    }
    std::fflush(out_);
}

}  // namespace reel
