// reel eval tinyworld: score videos against their tinyworld prompts (adherence per attribute, stability).
#include <sys/stat.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "src/cli/commands.h"
#include "src/engine/fs_util.h"
#include "src/video/fidelity.h"
#include "src/video/video_reader.h"
#include "tinyworld/evaluator.h"

namespace reel {

namespace {

struct EvalCli {
    std::vector<std::string> videos;
    std::string reference;
    std::string prompt;
    std::string out;
    bool per_frame = false;
    int64_t start = 0;  // frames skipped before scoring
    int64_t count = 0;  // frames scored (0: all the rest)
};

// The prompt of a video made by reel is in its run record (<video>.json).
std::string prompt_from_record(const std::string& video) {
    std::ifstream in(video + ".json");
    if (!in)
        return "";
    try {
        return nlohmann::json::parse(in).value("prompt", "");
    } catch (...) {
        return "";
    }
}

// Frames [start, start + count) of a video (count 0: to the end).
std::vector<std::vector<uint8_t>> read_frames(const std::string& path, int& w, int& h, int64_t start, int64_t count) {
    std::vector<std::vector<uint8_t>> frames;
    if (is_directory(path)) {
        frames = read_png_dir(path, &w, &h);
        const int64_t n = int64_t(frames.size());
        const int64_t a = std::min(start, n), b = count > 0 ? std::min(n, a + count) : n;
        frames = std::vector<std::vector<uint8_t>>(frames.begin() + a, frames.begin() + b);
    } else {
        auto reader = VideoReader::open(path);
        w = reader->info().width;
        h = reader->info().height;
        std::vector<uint8_t> rgb;
        for (int64_t i = 0; (count <= 0 || i < start + count) && reader->read(rgb); ++i)
            if (i >= start)
                frames.push_back(rgb);
    }
    if (frames.empty())
        throw std::runtime_error(
            path + (start > 0 ? " has no frames from frame " + std::to_string(start) : std::string(" has no frames")));
    return frames;
}

void write_or_print(const nlohmann::json& result, const std::string& out) {
    const std::string text = result.dump(2);
    if (out.empty()) {
        std::printf("%s\n", text.c_str());
        return;
    }
    std::ofstream f(out);
    if (!f)
        throw std::runtime_error("cannot write " + out);
    f << text << "\n";
}

int run_fidelity(const EvalCli& o) {
    int rw = 0, rh = 0;
    const auto ref = read_frames(o.reference, rw, rh, o.start, o.count);
    nlohmann::json videos = nlohmann::json::array();
    for (const auto& v : o.videos) {
        int w = 0, h = 0;
        const auto frames = read_frames(v, w, h, o.start, o.count);
        if (w != rw || h != rh)
            throw std::runtime_error(v + " is " + std::to_string(w) + "x" + std::to_string(h) + ", the reference " +
                                     std::to_string(rw) + "x" + std::to_string(rh));
        const FidelityReport r = compare_frames(ref, frames, w, h);
        videos.push_back({{"video", v},
                          {"frames", r.frames},
                          {"psnr", r.psnr_mean},
                          {"psnr_min", r.psnr_min},
                          {"ssim", r.ssim_mean},
                          {"ssim_min", r.ssim_min}});
        std::fprintf(stderr, "%s: %lld frames, PSNR %.2f dB (min %.2f), SSIM %.4f (min %.4f)\n", v.c_str(),
                     (long long)r.frames, r.psnr_mean, r.psnr_min, r.ssim_mean, r.ssim_min);
    }
    write_or_print({{"reference", o.reference}, {"videos", videos}}, o.out);
    return 0;
}

EvalReport eval_one(const std::string& path, const std::string& prompt_flag, int64_t start, int64_t count) {
    std::string prompt = prompt_flag.empty() ? prompt_from_record(path) : prompt_flag;
    if (prompt.empty())
        throw std::runtime_error("no prompt for " + path + ": pass -p, or keep the run record " + path +
                                 ".json beside it");
    int w = 0, h = 0;
    const auto frames = read_frames(path, w, h, start, count);
    return evaluate_frames(frames, w, h, prompt);
}

int run_eval(const EvalCli& o) {
    std::vector<EvalReport> reports;
    nlohmann::json videos = nlohmann::json::array();
    for (const auto& v : o.videos) {
        EvalReport r = eval_one(v, o.prompt, o.start, o.count);
        nlohmann::json j = r.to_json();
        j["video"] = v;
        videos.push_back(j);
        reports.push_back(std::move(r));
        std::fprintf(stderr, "%s: overall %.3f (background %.3f, color %.3f, shape %.3f, direction %.3f)\n", v.c_str(),
                     reports.back().overall, reports.back().background, reports.back().color, reports.back().shape,
                     reports.back().direction);
    }
    write_or_print({{"videos", videos}, {"summary", summarize_reports(reports).to_json()}}, o.out);
    return 0;
}

}  // namespace

CommandRunner register_eval(CLI::App& app) {
    auto o = std::make_shared<EvalCli>();
    CLI::App* ev = app.add_subcommand("eval", "Score generated videos objectively");
    ev->require_subcommand(1);
    CLI::App* tw = ev->add_subcommand(
        "tinyworld",
        "Score videos of the tinyworld model against their prompts: adherence of background, colour, "
        "shape and motion direction, and temporal stability, as JSON");
    tw->add_option("videos", o->videos, "video files (any format FFmpeg reads) or folders of PNG frames")->required();
    tw->add_option("-p,--prompt", o->prompt, "the prompt (default: read from each video's run record <video>.json)");
    tw->add_option("-o,--output", o->out, "write the JSON report here instead of stdout");
    tw->add_option("--start", o->start, "skip this many frames first (e.g. score a window past frame 4,096)")
        ->check(CLI::NonNegativeNumber);
    tw->add_option("--frames", o->count, "score at most this many frames (default: all)")->check(CLI::PositiveNumber);
    CLI::App* fid = ev->add_subcommand(
        "fidelity",
        "Compare videos with a reference made from the same prompt and seed (e.g. another cache policy): mean and "
        "minimum PSNR and SSIM (luma, 11x11 Gaussian) over the common frames, as JSON");
    fid->add_option("reference", o->reference, "the reference video (or folder of PNG frames)")->required();
    fid->add_option("videos", o->videos, "videos to compare with it")->required();
    fid->add_option("-o,--output", o->out, "write the JSON report here instead of stdout");
    fid->add_option("--start", o->start, "skip this many frames of every video first")->check(CLI::NonNegativeNumber);
    fid->add_option("--frames", o->count, "compare at most this many frames (default: all common frames)")
        ->check(CLI::PositiveNumber);
    return [o, fid]() { return fid->parsed() ? run_fidelity(*o) : run_eval(*o); };
}

}  // namespace reel
