// The rollout samplers' names, without LibTorch: the CLIs check --sampler against them.
#pragma once
#include <string>
#include <vector>

namespace reel {

// "renoise", "euler": what parse_rollout_sampler (diffusion/rollout.h) accepts.
const std::vector<std::string>& rollout_sampler_names();

}  // namespace reel
