// reel profile: a long generation per cache policy, measured chunk by chunk (latency by stage, KV bytes by kind,
// RSS, GPU memory), written as CSV + JSON + an SVG plot, with a summary line per policy on stdout.
#include <malloc.h>
#include <sys/stat.h>
#include <CLI/CLI.hpp>

#include <cctype>
#include <cstdio>
#include <fstream>
#include <memory>
#include <stdexcept>

#include "cache/cache_spec.h"
#include "src/cli/commands.h"
#include "src/cli/common_options.h"
#include "src/engine/fs_util.h"
#include "src/engine/interrupt.h"
#include "src/engine/pipeline.h"
#include "src/engine/profile_report.h"
#include "src/engine/sys_stats.h"

namespace reel {

namespace {

const char* const kDefaultPrompt = "a red circle moving right on a black background";
const int64_t kDefaultFrames = 10000;

struct ProfileCli {
    ModelOptions model;
    GenerateSettings s;
    std::string steps;
    OutputOptions out;
    std::string compare;
    std::string out_dir = ".";
    std::string prefix = "profile";
    std::string csv, json, plot;
};

struct Plan {
    std::string label;
    GenerateSettings s;
    std::string spec;
};

// What a bare "window" in --compare means: the model's own window when its reel.json recommends one (a model
// trained on a bounded context has never seen positions past it), else the cache library's default window.
std::string default_window(const ModelFiles& files) {
    const nlohmann::json& man = files.manifest;
    if (man.is_object() && man.contains("recommended") && man["recommended"].is_object()) {
        const std::string c = man["recommended"].value("cache", "");
        if (c.rfind("window", 0) == 0)
            return c;
    }
    try {
        parse_cache_spec("window");
        return "window";
    } catch (const std::exception&) {
        return "window:sink=3,recent=12";
    }
}

// The cache an empty --cache means, as Engine::generate resolves it, so the report names what really ran.
std::string effective_cache(const ModelFiles& files, const std::string& cache) {
    if (!cache.empty())
        return cache;
    const nlohmann::json& man = files.manifest;
    if (man.is_object() && man.contains("recommended") && man["recommended"].is_object())
        return man["recommended"].value("cache", "full");
    return "full";
}

// out.mp4 + "window:sink=1,recent=3" -> out.window_sink=1_recent=3.mp4: one video per compared policy.
std::string with_tag(const std::string& path, const std::string& tag) {
    std::string t;
    for (char c : tag)
        t += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '=' || c == '.') ? c : '_';
    const size_t slash = path.find_last_of('/');
    const size_t dot = path.find_last_of('.');
    if (dot == std::string::npos || (slash != std::string::npos && dot < slash))
        return path + "." + t;
    return path.substr(0, dot) + "." + t + path.substr(dot);
}

std::string join_path(const std::string& dir, const std::string& name) {
    if (dir.empty() || dir == ".")
        return name;
    return dir.back() == '/' ? dir + name : dir + "/" + name;
}

// Fails now, before minutes of model work, if a report file cannot be written. A file the probe created is
// removed again so a run that fails later leaves no empty reports behind.
void probe_writable(const std::string& path) {
    const bool existed = path_exists(path);
    {
        std::ofstream f(path, std::ios::app);
        if (!f)
            throw std::runtime_error("cannot write " + path);
    }
    if (!existed)
        std::remove(path.c_str());
}

// VmHWM is per process: without a reset, every policy after the first would report the peak of the one before.
void reset_peak_rss() {
    malloc_trim(0);  // hand freed blocks of the previous policy back, so its RSS does not carry over either
    std::ofstream f("/proc/self/clear_refs");
    if (f)
        f << "5";
}

std::vector<Plan> make_plans(const ProfileCli& o, const ModelFiles& files) {
    std::vector<Plan> plans;
    if (o.compare.empty()) {
        Plan p;
        p.s = o.s;
        p.s.cache = effective_cache(files, o.s.cache);
        p.label = policy_label({p.s.cache, p.s.merge, p.s.kv_quant});
        plans.push_back(p);
    } else {
        const std::string window = default_window(files);
        for (const std::string& entry : split_policy_list(o.compare)) {
            const PolicyFlags f = policy_flags(entry, window);
            Plan p;
            p.label = entry;
            p.s = o.s;
            if (!f.cache.empty())
                p.s.cache = f.cache;
            if (!f.merge.empty())
                p.s.merge = f.merge;
            if (!f.kv_quant.empty())
                p.s.kv_quant = f.kv_quant;
            p.s.cache = effective_cache(files, p.s.cache);
            plans.push_back(p);
        }
        if (plans.empty())
            throw std::runtime_error("--compare: no policies in '" + o.compare + "'");
    }
    for (Plan& p : plans) {
        try {
            p.spec = parse_cache_spec(p.s.cache, p.s.merge, p.s.kv_quant, p.s.cache_budget).describe();
        } catch (const std::exception& e) {
            throw std::runtime_error("policy '" + p.label + "': " + e.what());
        }
        if (plans.size() > 1 && !p.s.output.empty())
            p.s.output = with_tag(p.s.output, p.label);
    }
    return plans;
}

int run_profile(ProfileCli& o) {
    if (!o.steps.empty())
        o.s.steps = parse_step_list(o.steps);
    if (o.s.frames <= 0 && o.s.seconds <= 0)
        o.s.frames = kDefaultFrames;
    if (o.s.output == "-" && !o.compare.empty())
        throw std::runtime_error("-o - cannot take several policies' videos; give a file name (one per policy)");
    ModelFiles files = find_model_files(o.model.model, o.model.dit);
    std::vector<Plan> plans = make_plans(o, files);

    if (o.out_dir.empty())
        throw std::runtime_error("--out-dir is empty");
    if (!path_exists(o.out_dir) && mkdir(o.out_dir.c_str(), 0777) != 0)
        throw std::runtime_error("--out-dir " + o.out_dir + ": cannot create the folder");
    if (!is_directory(o.out_dir))
        throw std::runtime_error("--out-dir " + o.out_dir + " is not a folder");
    const std::string csv_path = o.csv.empty() ? join_path(o.out_dir, o.prefix + ".csv") : o.csv;
    const std::string json_path = o.json.empty() ? join_path(o.out_dir, o.prefix + ".json") : o.json;
    const std::string plot_path = o.plot.empty() ? join_path(o.out_dir, o.prefix + ".svg") : o.plot;
    if (plot_path.size() < 4 || plot_path.compare(plot_path.size() - 4, 4, ".svg") != 0)
        throw std::runtime_error("--plot " + plot_path + ": the plot is written as SVG; name it *.svg");
    for (const std::string& p : {csv_path, json_path, plot_path})
        probe_writable(p);

    install_interrupt_handlers();
    Engine engine(files, o.model.load_options());
    // Streamed row by row, so even a killed run leaves its rows behind.
    std::ofstream csv(csv_path, std::ios::trunc);
    if (!csv)
        throw std::runtime_error("cannot write " + csv_path);
    csv << profile_csv_header() << std::flush;

    nlohmann::json compare = nlohmann::json::array();
    for (const Plan& p : plans)
        compare.push_back(p.label);
    const nlohmann::json meta = {{"tool", "reel profile"},
                                 {"model", {{"name", files.name}, {"dir", files.dir}, {"dit", files.dit}}},
                                 {"prompt", o.s.prompt},
                                 {"seed", o.s.seed},
                                 {"frames_requested", o.s.frames},
                                 {"seconds_requested", o.s.seconds},
                                 {"compare", compare}};
    char length[64];
    if (o.s.frames > 0)
        std::snprintf(length, sizeof(length), "%lld frames", (long long)o.s.frames);
    else
        std::snprintf(length, sizeof(length), "%g s", o.s.seconds);
    std::vector<ProfileRun> runs;
    auto write_reports = [&]() {
        write_text_file(json_path, profile_json(runs, meta).dump(1) + "\n");
        write_text_file(plot_path, profile_svg(runs, "reel profile: " + files.name + ", " + std::string(length)));
    };

    bool interrupted = false;
    for (size_t i = 0; i < plans.size() && !interrupted; ++i) {
        const Plan& plan = plans[i];
        reset_peak_rss();
        Progress progress(o.out.mode(), stderr);
        progress.note("reel profile: policy " + std::to_string(i + 1) + "/" + std::to_string(plans.size()) + ": " +
                      plan.label + " (" + plan.spec + ")");
        runs.emplace_back();
        ProfileRun& run = runs.back();
        run.policy = plan.label;
        run.spec = plan.spec;
        // The rows are kept as text in one buffer reserved up front and parsed back for the reports. Kept as json
        // objects (dozens of small allocations per chunk, living for the whole run) they land between the chunk
        // temporaries the allocator frees and reuses, fragment the heap and make RSS creep up in steps: measured
        // +2.3% from frame 500 to 10,000 on tinyworld against +0.45% without them.
        std::string packed;
        packed.reserve(size_t(4) << 20);
        auto unpack = [&]() {
            run.rows.clear();
            for (size_t a = 0, b; a < packed.size(); a = b + 1) {
                b = packed.find('\n', a);
                run.rows.push_back(nlohmann::json::parse(packed.substr(a, b - a)));
            }
        };
        RunResult r;
        try {
            r = engine.generate(plan.s, progress, [&](const nlohmann::json& row) {
                packed += row.dump();
                packed += '\n';
                csv << profile_csv_row(run.policy, row) << std::flush;
            });
            unpack();
        } catch (const std::exception& e) {
            run.error = e.what();
            unpack();
            write_reports();  // what the failed run measured up to the error is still worth having
            throw std::runtime_error("policy '" + plan.label + "': " + e.what());
        }
        run.settings = r.record["settings"];
        run.settings["timing_s"] = r.record["timing_s"];
        run.interrupted = interrupted = r.interrupted;
        write_reports();

        const ProfileSummary sm = summarize_profile(run.rows);
        char buf[256];
        std::snprintf(buf, sizeof(buf), "%s: %lld frames in %.1f s; KV peak %.2f MB; DiT %.1f -> %.1f ms/chunk",
                      plan.label.c_str(), (long long)r.frames_written, r.record["timing_s"]["total"].get<double>(),
                      sm.kv_peak / 1048576.0, sm.dit_early_ms, sm.dit_late_ms);
        ProgressEvent done;
        done.frames_done = r.frames_written;
        done.frames_total = r.record["frames_planned"].get<int64_t>();
        done.elapsed_s = r.record["timing_s"]["total"].get<double>();
        done.kv_bytes = sm.kv_peak;
        progress.finish(done, buf);
    }
    csv.close();
    if (!csv)
        throw std::runtime_error("cannot write " + csv_path + " (disk full?)");

    std::fputs(profile_summary_table(runs).c_str(), stdout);
    std::fflush(stdout);
    if (o.out.mode() != ProgressMode::Quiet)
        std::fprintf(stderr, "reel profile: wrote %s, %s, %s%s\n", csv_path.c_str(), json_path.c_str(),
                     plot_path.c_str(),
                     interrupted ? "\nreel: interrupted: the reports hold the chunks made before Ctrl-C" : "");
    return interrupted ? 130 : 0;
}

}  // namespace

CommandRunner register_profile(CLI::App& app) {
    auto o = std::make_shared<ProfileCli>();
    CLI::App* sub = app.add_subcommand(
        "profile",
        "Measure a long generation chunk by chunk (latency, KV bytes, memory) for one or more cache policies");
    add_model_options(sub, o->model);
    add_generation_options(sub, o->s, o->steps);
    o->s.prompt = kDefaultPrompt;
    sub->get_option("--prompt")
        ->required(false)
        ->description(std::string("text prompt (default: '") + kDefaultPrompt + "')");
    sub->get_option("--frames")->description("pixel frames per policy (rounded up to whole chunks; default 10000)");
    sub->add_option("--compare", o->compare,
                    "cache policies to run one after another, comma-separated; each is parts joined by '+': "
                    "full | window[:sink=S,recent=R], tempcache[:...] | flowcache[:...] | none, int8 | int4 | "
                    "int4-kivi | int4-hadamard (e.g. full,window,window+tempcache+int4; a bare window is the "
                    "model's recommended window). Flags a policy leaves unset (--cache, --merge, --kv-quant, "
                    "--cache-budget) come from the command line. Default: the one policy the flags give");
    sub->add_option("--out-dir", o->out_dir, "folder for the reports (created if missing)")->capture_default_str();
    sub->add_option("--prefix", o->prefix, "report file names: <prefix>.csv, <prefix>.json, <prefix>.svg")
        ->capture_default_str();
    sub->add_option("--csv", o->csv, "per-chunk CSV here instead of <out-dir>/<prefix>.csv");
    sub->add_option("--json-out", o->json, "JSON report (summary + rows) here instead of <out-dir>/<prefix>.json");
    sub->add_option("--plot", o->plot, "SVG plot here instead of <out-dir>/<prefix>.svg");
    sub->add_option("-o,--output", o->s.output,
                    "also write the video (.mp4, .y4m); with --compare one per policy (out.<policy>.mp4). Default: "
                    "none (chunks are still decoded, so decode_ms is measured; encode_ms is then ~0)");
    add_output_options(sub, o->out);
    return [o]() { return run_profile(*o); };
}

}  // namespace reel
