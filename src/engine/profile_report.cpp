#include "src/engine/profile_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <ostream>
#include <sstream>
#include <stdexcept>

namespace reel {

namespace {

std::string trim(const std::string& s) {
    const size_t b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos)
        return "";
    const size_t e = s.find_last_not_of(" \t\r\n");
    return s.substr(b, e - b + 1);
}

// A row's number, or 0 when it lacks the field (older records, no GPU).
double num(const nlohmann::json& row, const char* key) {
    auto it = row.find(key);
    return it != row.end() && it->is_number() ? it->get<double>() : 0.0;
}

int64_t inum(const nlohmann::json& row, const char* key) {
    auto it = row.find(key);
    return it != row.end() && it->is_number() ? it->get<int64_t>() : 0;
}

double dit_ms(const nlohmann::json& row) {
    return num(row, "denoise_ms") + num(row, "cache_pass_ms");
}

double ratio(double hi, double lo) {
    if (lo > 0)
        return hi / lo;
    return hi > 0 ? std::numeric_limits<double>::infinity() : 1.0;
}

std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"\n\r") == std::string::npos)
        return s;
    std::string q = "\"";
    for (char c : s) {
        if (c == '"')
            q += '"';
        q += c;
    }
    return q + "\"";
}

bool ends_with(const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::string format_number(const std::string& key, const nlohmann::json& v) {
    char buf[64];
    if (v.is_number_unsigned())
        std::snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v.get<uint64_t>());
    else if (v.is_number_integer())
        std::snprintf(buf, sizeof(buf), "%lld", (long long)v.get<int64_t>());
    else if (ends_with(key, "_ms"))
        std::snprintf(buf, sizeof(buf), "%.3f", v.get<double>());
    else
        std::snprintf(buf, sizeof(buf), "%.6g", v.get<double>());
    return buf;
}

std::string xml_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        switch (c) {
            case '&':
                o += "&amp;";
                break;
            case '<':
                o += "&lt;";
                break;
            case '>':
                o += "&gt;";
                break;
            case '"':
                o += "&quot;";
                break;
            default:
                o += c;
        }
    }
    return o;
}

std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), f, v);
    return buf;
}

// Tick positions from 0: a step of 1, 2 or 5 times a power of ten giving about `n` intervals up to `hi`; with
// `cover` one more tick past `hi` when needed, so the axis ends on a labelled value.
std::vector<double> nice_ticks(double hi, int n, bool cover) {
    if (!(hi > 0))
        hi = 1;
    const double raw = hi / n;
    const double mag = std::pow(10.0, std::floor(std::log10(raw)));
    double step = mag;
    for (double m : {1.0, 2.0, 5.0, 10.0})
        if (m * mag >= raw) {
            step = m * mag;
            break;
        }
    std::vector<double> t;
    for (int i = 0; i * step <= hi * (1 + 1e-9); ++i)
        t.push_back(i * step);
    if (cover && t.back() < hi * (1 - 1e-9))
        t.push_back(t.size() * step);
    return t;
}

const char* const kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

}  // namespace

PolicyFlags policy_flags(const std::string& policy, const std::string& default_window) {
    const std::string p = trim(policy);
    if (p.empty())
        throw std::runtime_error("--compare: empty policy (policies are separated by commas)");
    PolicyFlags f;
    auto set = [&](std::string& slot, const char* kind, const std::string& part) {
        if (!slot.empty())
            throw std::runtime_error("--compare policy '" + p + "': two " + kind + " parts ('" + slot + "' and '" +
                                     part + "')");
        slot = part;
    };
    size_t start = 0;
    while (start <= p.size()) {
        size_t plus = p.find('+', start);
        if (plus == std::string::npos)
            plus = p.size();
        const std::string part = trim(p.substr(start, plus - start));
        start = plus + 1;
        if (part.empty())
            throw std::runtime_error("--compare policy '" + p + "': empty part (parts are joined by '+')");
        const std::string name = part.substr(0, part.find(':'));
        if (name == "full" || name == "window")
            set(f.cache, "cache", part == "window" && !default_window.empty() ? default_window : part);
        else if (name == "tempcache" || name == "flowcache" || name == "none")
            set(f.merge, "merge", part);
        else if (name == "int8" || name == "int4" || name == "int4-kivi" || name == "int4-hadamard")
            set(f.kv_quant, "kv-quant", part);
        else
            throw std::runtime_error("--compare policy '" + p + "': unknown part '" + part +
                                     "' (expected full, window[:sink=S,recent=R], tempcache[:...], flowcache[:...], "
                                     "none, int8, int4, int4-kivi or int4-hadamard, joined by '+')");
    }
    return f;
}

std::string policy_label(const PolicyFlags& f) {
    std::string label = f.cache.empty() ? "full" : f.cache;
    if (!f.merge.empty() && f.merge != "none")
        label += "+" + f.merge;
    if (!f.kv_quant.empty() && f.kv_quant != "none")
        label += "+" + f.kv_quant;
    return label;
}

ProfileSummary summarize_profile(const std::vector<nlohmann::json>& rows) {
    ProfileSummary s;
    s.chunks = static_cast<int64_t>(rows.size());
    if (rows.empty())
        return s;
    s.frames = inum(rows.back(), "frame");
    s.steady_from = std::min<int64_t>(500, s.frames / 2);

    bool any = false;
    for (const auto& r : rows) {
        s.kv_peak = std::max(s.kv_peak, inum(r, "kv_bytes"));
        s.peak_rss = std::max(s.peak_rss, inum(r, "peak_rss_bytes"));
        s.gpu_peak = std::max(s.gpu_peak, inum(r, "gpu_peak_bytes"));
        s.dit_mean_ms += dit_ms(r);
        s.decode_mean_ms += num(r, "decode_ms");
        if (inum(r, "frame") < s.steady_from)
            continue;
        const int64_t kv = inum(r, "kv_bytes"), rss = inum(r, "rss_bytes");
        if (!any) {
            s.kv_min = s.kv_max = kv;
            s.rss_min = s.rss_max = rss;
            any = true;
        }
        s.kv_min = std::min(s.kv_min, kv);
        s.kv_max = std::max(s.kv_max, kv);
        s.rss_min = std::min(s.rss_min, rss);
        s.rss_max = std::max(s.rss_max, rss);
    }
    s.dit_mean_ms /= rows.size();
    s.decode_mean_ms /= rows.size();
    s.kv_ratio = ratio(s.kv_max, s.kv_min);
    s.rss_ratio = ratio(s.rss_max, s.rss_min);

    const size_t skip = rows.size() > 1 ? 1 : 0;
    const size_t n = rows.size() - skip;
    const size_t k = std::max<size_t>(1, n / 10);
    for (size_t i = 0; i < k; ++i) {
        s.dit_early_ms += dit_ms(rows[skip + i]);
        s.dit_late_ms += dit_ms(rows[rows.size() - k + i]);
    }
    s.dit_early_ms /= k;
    s.dit_late_ms /= k;
    s.latency_ratio = ratio(s.dit_late_ms, s.dit_early_ms);
    return s;
}

nlohmann::json to_json(const ProfileSummary& s) {
    // JSON has no infinity: an unbounded ratio is written as null.
    auto r = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
    return {{"frames", s.frames},
            {"chunks", s.chunks},
            {"steady_from_frame", s.steady_from},
            {"kv_bytes_min", s.kv_min},
            {"kv_bytes_max", s.kv_max},
            {"kv_ratio", r(s.kv_ratio)},
            {"kv_bytes_peak", s.kv_peak},
            {"rss_bytes_min", s.rss_min},
            {"rss_bytes_max", s.rss_max},
            {"rss_ratio", r(s.rss_ratio)},
            {"dit_ms_early", s.dit_early_ms},
            {"dit_ms_late", s.dit_late_ms},
            {"latency_ratio", r(s.latency_ratio)},
            {"dit_ms_mean", s.dit_mean_ms},
            {"decode_ms_mean", s.decode_mean_ms},
            {"peak_rss_bytes", s.peak_rss},
            {"gpu_peak_bytes", s.gpu_peak}};
}

const std::vector<std::string>& profile_csv_columns() {
    static const std::vector<std::string> cols = {
        "policy",         "chunk",           "frame",         "denoise_ms",     "cache_pass_ms",
        "dit_ms",         "decode_ms",       "encode_ms",     "kv_bytes",       "kv_bytes_fp",
        "kv_bytes_quant", "kv_bytes_merged", "kv_bytes_live", "kv_entries",     "kv_merged_entries",
        "merge_rate",     "kv_frames",       "rss_bytes",     "peak_rss_bytes", "gpu_allocated_bytes",
        "gpu_peak_bytes"};
    return cols;
}

std::string profile_csv_header() {
    std::string h;
    for (const auto& c : profile_csv_columns())
        h += (h.empty() ? "" : ",") + c;
    return h + "\n";
}

std::string profile_csv_row(const std::string& policy, const nlohmann::json& row) {
    std::string line = csv_field(policy);
    const auto& cols = profile_csv_columns();
    for (size_t i = 1; i < cols.size(); ++i) {
        line += ',';
        if (cols[i] == "dit_ms") {
            line += fmt("%.3f", dit_ms(row));
            continue;
        }
        auto it = row.find(cols[i]);
        if (it == row.end() || it->is_null())
            continue;
        line += it->is_number() ? format_number(cols[i], *it)
                                : csv_field(it->is_string() ? it->get<std::string>() : it->dump());
    }
    return line + "\n";
}

void write_profile_csv(std::ostream& out, const std::vector<ProfileRun>& runs) {
    out << profile_csv_header();
    for (const auto& run : runs)
        for (const auto& row : run.rows)
            out << profile_csv_row(run.policy, row);
}

nlohmann::json profile_json(const std::vector<ProfileRun>& runs, const nlohmann::json& meta) {
    nlohmann::json j = meta.is_object() ? meta : nlohmann::json::object();
    nlohmann::json pols = nlohmann::json::array();
    for (const auto& run : runs) {
        nlohmann::json p = {{"policy", run.policy},
                            {"spec", run.spec},
                            {"settings", run.settings.is_null() ? nlohmann::json::object() : run.settings},
                            {"interrupted", run.interrupted},
                            {"summary", to_json(summarize_profile(run.rows))},
                            {"rows", run.rows}};
        if (!run.error.empty())
            p["error"] = run.error;
        pols.push_back(std::move(p));
    }
    j["policies"] = std::move(pols);
    return j;
}

std::string profile_svg(const std::vector<ProfileRun>& runs, const std::string& title) {
    struct Panel {
        const char* label;
        double (*value)(const nlohmann::json&);
    };
    const Panel panels[] = {
        {"KV cache (MB)", [](const nlohmann::json& r) { return num(r, "kv_bytes") / 1048576.0; }},
        {"process RSS (MB)", [](const nlohmann::json& r) { return num(r, "rss_bytes") / 1048576.0; }},
        {"DiT ms per chunk (denoise + cache pass)", [](const nlohmann::json& r) { return dit_ms(r); }},
    };
    const int width = 960, left = 90, right = 30, panel_h = 200, gap = 70, legend_row = 18;
    const int top = 50 + legend_row * static_cast<int>(runs.size());
    const int plot_w = width - left - right;
    const int height = top + 3 * panel_h + 3 * gap;

    double max_frame = 0;
    for (const auto& run : runs)
        for (const auto& r : run.rows)
            max_frame = std::max(max_frame, num(r, "frame"));
    const std::vector<double> xticks = nice_ticks(max_frame, 8, /*cover=*/false);
    const double x_hi = std::max(max_frame > 0 ? max_frame : 1.0, xticks.back());

    std::ostringstream o;
    o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" viewBox=\"0 0 " << width << " " << height << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
    o << "<rect x=\"0\" y=\"0\" width=\"" << width << "\" height=\"" << height << "\" fill=\"white\"/>\n";
    o << "<text x=\"" << left << "\" y=\"22\" font-size=\"15\" font-weight=\"bold\">" << xml_escape(title)
      << "</text>\n";
    for (size_t i = 0; i < runs.size(); ++i) {
        const int y = 42 + legend_row * static_cast<int>(i);
        const char* colour = kPalette[i % (sizeof(kPalette) / sizeof(kPalette[0]))];
        o << "<line x1=\"" << left << "\" y1=\"" << y - 4 << "\" x2=\"" << left + 30 << "\" y2=\"" << y - 4
          << "\" stroke=\"" << colour << "\" stroke-width=\"3\"/>";
        std::string text = runs[i].policy;
        if (!runs[i].spec.empty() && runs[i].spec != runs[i].policy)
            text += "  (" + runs[i].spec + ")";
        if (runs[i].interrupted)
            text += "  [interrupted]";
        if (!runs[i].error.empty())
            text += "  [failed]";
        o << "<text x=\"" << left + 38 << "\" y=\"" << y << "\">" << xml_escape(text) << "</text>\n";
    }

    for (int p = 0; p < 3; ++p) {
        const int y0 = top + p * (panel_h + gap);
        double y_max = 0;
        for (const auto& run : runs)
            for (const auto& r : run.rows)
                y_max = std::max(y_max, panels[p].value(r));
        const std::vector<double> yticks = nice_ticks(y_max * 1.02, 5, /*cover=*/true);
        const double y_hi = std::max(yticks.back(), y_max > 0 ? y_max : 1.0);
        auto px = [&](double x) { return left + plot_w * x / x_hi; };
        auto py = [&](double y) { return y0 + panel_h - panel_h * y / y_hi; };

        o << "<g class=\"panel\">\n";
        o << "<text x=\"" << left << "\" y=\"" << y0 - 8 << "\" font-weight=\"bold\">" << panels[p].label
          << "</text>\n";
        for (double t : yticks) {
            const std::string y = fmt("%.1f", py(t));
            o << "<line x1=\"" << left << "\" y1=\"" << y << "\" x2=\"" << left + plot_w << "\" y2=\"" << y
              << "\" stroke=\"#e0e0e0\"/><text x=\"" << left - 6 << "\" y=\"" << y
              << "\" text-anchor=\"end\" dominant-baseline=\"middle\">" << fmt("%g", t) << "</text>\n";
        }
        for (double t : xticks) {
            const std::string x = fmt("%.1f", px(t));
            o << "<line x1=\"" << x << "\" y1=\"" << y0 + panel_h << "\" x2=\"" << x << "\" y2=\"" << y0 + panel_h + 5
              << "\" stroke=\"black\"/><text x=\"" << x << "\" y=\"" << y0 + panel_h + 18
              << "\" text-anchor=\"middle\">" << fmt("%g", t) << "</text>\n";
        }
        o << "<rect x=\"" << left << "\" y=\"" << y0 << "\" width=\"" << plot_w << "\" height=\"" << panel_h
          << "\" fill=\"none\" stroke=\"black\"/>\n";
        o << "<text x=\"" << left + plot_w / 2 << "\" y=\"" << y0 + panel_h + 36
          << "\" text-anchor=\"middle\">frame</text>\n";
        const int yl = y0 + panel_h / 2;
        o << "<text x=\"" << left - 58 << "\" y=\"" << yl << "\" text-anchor=\"middle\" transform=\"rotate(-90 "
          << left - 58 << " " << yl << ")\">" << (p == 2 ? "ms" : "MB") << "</text>\n";
        for (size_t i = 0; i < runs.size(); ++i) {
            if (runs[i].rows.empty())
                continue;
            o << "<polyline fill=\"none\" stroke-width=\"1.5\" stroke=\""
              << kPalette[i % (sizeof(kPalette) / sizeof(kPalette[0]))] << "\" points=\"";
            for (const auto& r : runs[i].rows)
                o << fmt("%.1f", px(num(r, "frame"))) << "," << fmt("%.1f", py(panels[p].value(r))) << " ";
            o << "\"/>\n";
        }
        o << "</g>\n";
    }
    o << "</svg>\n";
    return o.str();
}

std::string profile_summary_table(const std::vector<ProfileRun>& runs) {
    size_t w = 6;
    for (const auto& run : runs)
        w = std::max(w, run.policy.size());
    auto r = [](double v) { return std::isfinite(v) ? fmt("%.2f", v) : std::string("inf"); };
    std::ostringstream o;
    char buf[512];
    std::snprintf(buf, sizeof(buf), "%-*s %7s %6s %6s %21s %6s %21s %6s %19s %6s %9s\n", (int)w, "policy", "frames",
                  "chunks", "from", "KV MB min..max", "ratio", "RSS MB min..max", "ratio", "DiT ms early..late",
                  "ratio", "peak RSS");
    o << buf;
    for (const auto& run : runs) {
        const ProfileSummary s = summarize_profile(run.rows);
        const std::string kv = fmt("%.2f", s.kv_min / 1048576.0) + ".." + fmt("%.2f", s.kv_max / 1048576.0);
        const std::string rss = fmt("%.1f", s.rss_min / 1048576.0) + ".." + fmt("%.1f", s.rss_max / 1048576.0);
        const std::string dit = fmt("%.1f", s.dit_early_ms) + ".." + fmt("%.1f", s.dit_late_ms);
        std::snprintf(buf, sizeof(buf), "%-*s %7lld %6lld %6lld %21s %6s %21s %6s %19s %6s %6.0f MB%s\n", (int)w,
                      run.policy.c_str(), (long long)s.frames, (long long)s.chunks, (long long)s.steady_from,
                      kv.c_str(), r(s.kv_ratio).c_str(), rss.c_str(), r(s.rss_ratio).c_str(), dit.c_str(),
                      r(s.latency_ratio).c_str(), s.peak_rss / 1048576.0,
                      run.interrupted ? "  (interrupted)" : (!run.error.empty() ? "  (failed)" : ""));
        o << buf;
    }
    return o.str();
}

void write_text_file(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out)
            throw std::runtime_error("cannot write " + path);
        out << text;
        out.flush();
        if (!out)
            throw std::runtime_error("cannot write " + path + " (disk full?)");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw std::runtime_error("cannot write " + path + " (rename from " + tmp + " failed)");
    }
}

}  // namespace reel
