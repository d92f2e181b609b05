// reel generate: a prompt in, a playable video out, chunk by chunk at constant memory.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <sstream>

#include "src/cli/commands.h"
#include "src/cli/common_options.h"
#include "src/engine/interrupt.h"
#include "src/engine/pipeline.h"

namespace reel {

namespace {

struct GenerateCli {
    ModelOptions model;
    GenerateSettings s;
    std::string steps;
    OutputOptions out;
};

int run_generate(GenerateCli& o) {
    if (!o.steps.empty())
        o.s.steps = parse_step_list(o.steps);
    if (o.s.output.empty() && o.s.frames_dir.empty())
        o.s.output = "out.mp4";
    ModelFiles files = find_model_files(o.model.model, o.model.dit);
    install_interrupt_handlers();
    Progress progress(o.out.mode(), stderr);
    Engine engine(files, o.model.load_options());
    RunResult r = engine.generate(o.s, progress);
    std::ostringstream msg;
    const auto& t = r.record["timing_s"];
    char buf[256];
    std::snprintf(buf, sizeof(buf),
                  "%lld frames in %.1f s (%.1f fps; denoise %.1f s, cache pass %.1f s, decode %.1f s)",
                  (long long)r.frames_written, t["total"].get<double>(), r.record["fps_generated"].get<double>(),
                  t["denoise"].get<double>(), t["cache_pass"].get<double>(), t["decode"].get<double>());
    msg << buf;
    if (!o.s.output.empty() && o.s.output != "-")
        msg << " -> " << o.s.output;
    if (!o.s.frames_dir.empty())
        msg << " -> " << o.s.frames_dir << "/";
    if (r.interrupted)
        msg << "\nreel: interrupted: the " << r.frames_written << " frames made so far are saved";
    ProgressEvent done;
    done.frames_done = r.frames_written;
    done.frames_total = r.record["frames_planned"].get<int64_t>();
    done.elapsed_s = t["total"].get<double>();
    done.kv_bytes = r.record["peak_kv_bytes"].get<int64_t>();
    progress.finish(done, msg.str());
    return r.interrupted ? 130 : 0;
}

}  // namespace

CommandRunner register_generate(CLI::App& app) {
    auto o = std::make_shared<GenerateCli>();
    CLI::App* sub = app.add_subcommand("generate", "Generate a video from a text prompt");
    add_model_options(sub, o->model);
    add_generation_options(sub, o->s, o->steps);
    sub->add_option("-o,--output", o->s.output,
                    "output video: .mp4 (H.264), .y4m, or - for y4m on stdout (default out.mp4 unless --frames-dir)");
    sub->add_option("--frames-dir", o->s.frames_dir, "also (or only) write PNG frames into this folder");
    sub->add_option("--record", o->s.record_path, "where to write the JSON run record (default <output>.json)");
    add_output_options(sub, o->out);
    return [o]() { return run_generate(*o); };
}

}  // namespace reel
