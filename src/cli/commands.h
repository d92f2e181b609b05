// Each subcommand registers its options on the app and returns the function that runs it.
#pragma once
#include <functional>

namespace CLI {
class App;
}

namespace reel {

using CommandRunner = std::function<int()>;

CommandRunner register_inspect(CLI::App& app);
CommandRunner register_generate(CLI::App& app);
CommandRunner register_eval(CLI::App& app);
CommandRunner register_profile(CLI::App& app);

}  // namespace reel
