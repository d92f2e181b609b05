#include <CLI/CLI.hpp>

#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif

#include <csignal>
#include <cstdio>
#include <exception>
#include <vector>

#include "src/cli/commands.h"

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);  // a closed pipe (reel generate -o - | head) becomes a write error, not a kill
#ifdef M_MMAP_THRESHOLD
    // Per-chunk temporaries (VAE activations, attention scores) are freed and allocated again every chunk. With
    // glibc's defaults the large ones are mmap'ed and unmapped, or trimmed off the heap, each time, so RSS saws by
    // tens of MB and page faults cost time. Fixed thresholds keep them in the heap for reuse: RSS stays flat.
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
#endif
    CLI::App app{
        "reel: long videos from causal video diffusion models (Self-Forcing / CausVid / LongLive on Wan2.1),\n"
        "chunk by chunk, at constant memory.\n"};
    app.name("reel");
    app.set_version_flag("--version", "reel 0.1.0");
    app.require_subcommand(1);
    app.fallthrough(false);

    std::vector<std::pair<CLI::App*, reel::CommandRunner>> commands;
    auto add = [&](reel::CommandRunner (*reg)(CLI::App&)) {
        size_t before = app.get_subcommands({}).size();
        reel::CommandRunner run = reg(app);
        commands.emplace_back(app.get_subcommands({})[before], run);
    };
    add(reel::register_generate);
    add(reel::register_inspect);
    add(reel::register_eval);
    add(reel::register_profile);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0)
            return app.exit(e);  // --help, --version
        std::fprintf(stderr, "reel: error: %s (see 'reel --help')\n", e.what());
        return 2;
    }
    try {
        for (auto& c : commands)
            if (c.first->parsed())
                return c.second();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "reel: error: %s\n", e.what());
        return 1;
    }
    return 1;
}
