// Options shared by the subcommands that load a model and generate (generate, profile).
#pragma once
#include <string>
#include <vector>

#include "src/engine/pipeline.h"
#include "src/engine/progress.h"

namespace CLI {
class App;
}

namespace reel {

struct ModelOptions {
    std::string model = "tinyworld";
    std::string dit;
    bool no_ema = false;
    std::string device = "cpu";
    std::string dtype = "auto";
    int threads = 0;
    int64_t heads = 0;
    LoadOptions load_options() const;
};

struct OutputOptions {
    bool quiet = false;
    bool json = false;
    ProgressMode mode() const;
};

void add_model_options(CLI::App* sub, ModelOptions& o);
void add_generation_options(CLI::App* sub, GenerateSettings& s, std::string& steps);
void add_output_options(CLI::App* sub, OutputOptions& o);

// "1000,750,500,250" -> {1000, 750, 500, 250}; throws naming the bad entry.
std::vector<double> parse_step_list(const std::string& s);

}  // namespace reel
