#include <CLI/CLI.hpp>

#include <iostream>

int main(int argc, char** argv) {
    CLI::App app{"reel: long video generation with causal video diffusion at constant memory"};
    app.require_subcommand(1);
    CLI11_PARSE(app, argc, argv);
    return 0;
}
