#include "cache/cache_spec.h"

#include <cmath>
#include <sstream>
#include <stdexcept>

#include "cache/slot_cache.h"

namespace reel {

namespace {

// "a=1,b=2" -> pairs; `what` names the flag in errors.
std::vector<std::pair<std::string, std::string>> key_values(const std::string& rest, const std::string& what) {
    std::vector<std::pair<std::string, std::string>> out;
    std::stringstream ss(rest);
    std::string kv;
    while (std::getline(ss, kv, ',')) {
        if (kv.empty())
            continue;
        const auto eq = kv.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == kv.size())
            throw std::runtime_error(what + ": expected key=value, got '" + kv + "'");
        out.push_back({kv.substr(0, eq), kv.substr(eq + 1)});
    }
    return out;
}

double to_number(const std::string& v, const std::string& what) {
    try {
        size_t used = 0;
        const double x = std::stod(v, &used);
        if (used != v.size() || !std::isfinite(x))
            throw std::invalid_argument("");
        return x;
    } catch (...) {
        throw std::runtime_error(what + ": '" + v + "' is not a number");
    }
}

int to_int(const std::string& v, const std::string& what) {
    const double x = to_number(v, what);
    if (x != std::floor(x) || std::fabs(x) > 1e9)
        throw std::runtime_error(what + ": '" + v + "' is not an integer");
    return int(x);
}

// Splits "name:params" into its two parts.
void split_name(const std::string& s, std::string& name, std::string& params) {
    const auto colon = s.find(':');
    name = s.substr(0, colon);
    params = colon == std::string::npos ? "" : s.substr(colon + 1);
}

void apply_cache(CacheSpec& spec, const std::string& s) {
    const std::string what = "--cache " + s;
    std::string name, params;
    split_name(s, name, params);
    if (name == "full") {
        spec.window = false;
        spec.relative_rope = false;
        for (auto& kv : key_values(params, what)) {
            if (kv.first == "rope")
                throw std::runtime_error(what + ": rope= applies to windows only (full uses absolute positions)");
            throw std::runtime_error(what + ": unknown key '" + kv.first + "' (full takes none)");
        }
        return;
    }
    if (name != "window")
        throw std::runtime_error("--cache must be 'full' or 'window:sink=S,recent=R[,rope=relative|absolute]' (got '" +
                                 s + "')");
    spec.window = true;
    spec.relative_rope = true;
    spec.sink = 0;
    spec.recent = 12;  // LongLive's local attention size when no recent= is given
    for (auto& kv : key_values(params, what)) {
        if (kv.first == "sink")
            spec.sink = to_int(kv.second, what);
        else if (kv.first == "recent")
            spec.recent = to_int(kv.second, what);
        else if (kv.first == "rope") {
            if (kv.second != "relative" && kv.second != "absolute")
                throw std::runtime_error(what + ": rope must be relative or absolute");
            spec.relative_rope = kv.second == "relative";
        } else {
            throw std::runtime_error(what + ": unknown key '" + kv.first + "' (sink, recent, rope)");
        }
    }
    if (spec.recent <= 0 || spec.sink < 0)
        throw std::runtime_error(what + ": needs recent=N > 0 (and sink=S >= 0)");
}

void apply_merge(CacheSpec& spec, const std::string& s) {
    const std::string what = "--merge " + s;
    std::string name, params;
    split_name(s, name, params);
    if (name == "none") {
        spec.merge = CacheSpec::Merge::none;
        if (!params.empty())
            throw std::runtime_error(what + ": none takes no parameters");
        return;
    }
    if (name == "tempcache") {
        spec.merge = CacheSpec::Merge::tempcache;
        for (auto& kv : key_values(params, what)) {
            if (kv.first == "tau")
                spec.tau = to_number(kv.second, what);
            else if (kv.first == "radius")
                spec.radius = to_int(kv.second, what);
            else
                throw std::runtime_error(what + ": unknown key '" + kv.first + "' (tau, radius)");
        }
        if (spec.tau < -1 || spec.tau > 1)
            throw std::runtime_error(what + ": tau is a cosine similarity in [-1, 1]");
        if (spec.radius < 0 || spec.radius > 8)
            throw std::runtime_error(what + ": radius must be in [0, 8] latent tokens");
        return;
    }
    if (name == "flowcache") {
        spec.merge = CacheSpec::Merge::flowcache;
        for (auto& kv : key_values(params, what)) {
            if (kv.first == "keep")
                spec.keep = to_number(kv.second, what);
            else
                throw std::runtime_error(what + ": unknown key '" + kv.first + "' (keep)");
        }
        if (spec.keep < 0 || spec.keep > 1)
            throw std::runtime_error(what + ": keep is a share in [0, 1]");
        return;
    }
    throw std::runtime_error("--merge must be none, tempcache[:tau=T,radius=R] or flowcache[:keep=K] (got '" + s +
                             "')");
}

bool is_quant_name(const std::string& s) {
    return s == "none" || s == "int8" || s == "int4" || s == "int4-kivi" || s == "int4-hadamard" || s == "fp" ||
           s == "f32";
}

}  // namespace

KVQuant parse_kv_quant(const std::string& s) {
    if (s.empty() || s == "none" || s == "fp" || s == "f32")
        return KVQuant::none;
    if (s == "int8")
        return KVQuant::int8;
    if (s == "int4")
        return KVQuant::int4;
    if (s == "int4-kivi" || s == "kivi")
        return KVQuant::int4_kivi;
    if (s == "int4-hadamard" || s == "hadamard")
        return KVQuant::int4_hadamard;
    throw std::runtime_error("--kv-quant must be none, int8, int4, int4-kivi or int4-hadamard (got '" + s + "')");
}

const char* kv_quant_name(KVQuant q) {
    switch (q) {
        case KVQuant::none:
            return "none";
        case KVQuant::int8:
            return "int8";
        case KVQuant::int4:
            return "int4";
        case KVQuant::int4_kivi:
            return "int4-kivi";
        case KVQuant::int4_hadamard:
            return "int4-hadamard";
    }
    return "?";
}

void parse_budget(const std::string& s, int64_t& bytes, int64_t& frames) {
    bytes = frames = 0;
    if (s.empty())
        return;
    const std::string what = "--cache-budget " + s;
    const char unit = char(std::toupper(static_cast<unsigned char>(s.back())));
    if (unit == 'F') {
        const int x = to_int(s.substr(0, s.size() - 1), what);
        if (x <= 0)
            throw std::runtime_error(what + ": needs a positive number of frames");
        frames = x;
        return;
    }
    double mult = 1;
    std::string num = s;
    if (unit == 'K' || unit == 'M' || unit == 'G') {
        mult = unit == 'K' ? 1024.0 : unit == 'M' ? 1024.0 * 1024 : 1024.0 * 1024 * 1024;
        num = s.substr(0, s.size() - 1);
    } else if (s.size() > 2 && (s.substr(s.size() - 2) == "iB" || s.substr(s.size() - 2) == "ib")) {
        throw std::runtime_error(what + ": write sizes as 256M, 1G, 4096K or bytes");
    }
    const double x = to_number(num, what) * mult;
    if (x < 1)
        throw std::runtime_error(what + ": needs a positive size (bytes with K/M/G, or frames with f)");
    bytes = int64_t(x);
}

CacheSpec parse_cache_spec(const std::string& cache,
                           const std::string& merge,
                           const std::string& kv_quant,
                           const std::string& budget) {
    CacheSpec spec;
    apply_cache(spec, cache.empty() ? "full" : cache);
    if (!merge.empty())
        apply_merge(spec, merge);
    spec.quant = parse_kv_quant(kv_quant);
    parse_budget(budget, spec.budget_bytes, spec.budget_frames);
    if (spec.merge == CacheSpec::Merge::flowcache && !spec.window)
        throw std::runtime_error("--merge flowcache prunes frames leaving a window: use it with --cache window:...");
    // Frames leave the window from quantized pages, and FlowCache's summaries are built in full precision only:
    // refuse rather than silently evicting what the user asked to keep.
    if (spec.merge == CacheSpec::Merge::flowcache && spec.quant != KVQuant::none)
        throw std::runtime_error(
            "--merge flowcache does not combine with --kv-quant (its summaries are kept in full "
            "precision); use tempcache with quantization, or flowcache alone");
    return spec;
}

CacheSpec parse_policy(const std::string& combined, const std::string& budget) {
    std::string cache, merge, quant;
    std::stringstream ss(combined);
    std::string part;
    while (std::getline(ss, part, '+')) {
        if (part.empty())
            throw std::runtime_error("policy '" + combined + "': empty part");
        std::string name, params;
        split_name(part, name, params);
        std::string* slot = nullptr;
        if (name == "full" || name == "window")
            slot = &cache;
        else if (name == "tempcache" || name == "flowcache")
            slot = &merge;
        else if (is_quant_name(name) || name == "kivi" || name == "hadamard")
            slot = &quant;
        else
            throw std::runtime_error("policy '" + combined + "': unknown part '" + part +
                                     "' (cache: full, window:...; merge: tempcache, flowcache; quantization: int8, "
                                     "int4, int4-kivi, int4-hadamard)");
        if (!slot->empty())
            throw std::runtime_error("policy '" + combined + "': two parts of the same kind ('" + *slot + "', '" +
                                     part + "')");
        *slot = part;
    }
    return parse_cache_spec(cache, merge, quant, budget);
}

std::vector<std::string> split_policy_list(const std::string& list) {
    std::vector<std::string> out;
    std::stringstream ss(list);
    std::string tok;
    while (std::getline(ss, tok, ',')) {
        if (tok.empty())
            continue;
        // "recent=12" (key=value with no name:) continues the previous part's parameters.
        const std::string head = tok.substr(0, tok.find('+'));  // "recent=3+tempcache" continues with "recent=3"
        const bool continues = head.find('=') != std::string::npos && head.find(':') == std::string::npos;
        if (continues && !out.empty())
            out.back() += "," + tok;
        else if (continues)
            throw std::runtime_error("policy list '" + list + "': '" + tok + "' has no policy before it");
        else
            out.push_back(tok);
    }
    if (out.empty())
        throw std::runtime_error("policy list is empty");
    return out;
}

std::string CacheSpec::describe() const {
    std::string s;
    if (window) {
        s = "window:sink=" + std::to_string(sink) + ",recent=" + std::to_string(recent) +
            (relative_rope ? "" : ",rope=absolute");
    } else {
        s = "full";
    }
    char buf[64];
    if (merge == Merge::tempcache) {
        std::snprintf(buf, sizeof buf, "+tempcache:tau=%g,radius=%d", tau, radius);
        s += buf;
    } else if (merge == Merge::flowcache) {
        std::snprintf(buf, sizeof buf, "+flowcache:keep=%g", keep);
        s += buf;
    }
    if (quant != KVQuant::none)
        s += std::string("+") + kv_quant_name(quant);
    return s;
}

std::unique_ptr<KVCache> make_cache(const CacheSpec& spec, int num_layers) {
    return make_slot_cache(spec, num_layers);
}

}  // namespace reel
