#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <exception>
#include <vector>

#include "src/cli/commands.h"
#include "src/engine/sys_stats.h"

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);  // a closed pipe (reel generate -o - | head) becomes a write error, not a kill
    reel::keep_freed_memory_for_reuse();
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
