// The negative prompt of classifier-free guidance, as `reel generate --negative-prompt` takes it. Plain text is used
// as given; "swap:a=b,c=d" is the prompt itself with each whole word a replaced by b (a contrastive prompt: the
// guidance then pushes only on what the swapped words name, e.g. a square away from a circle, and leaves colour and
// motion to the ordinary guidance).
#pragma once
#include <string>
#include <vector>

namespace reel {

// The negative prompt for `prompt` under `spec` ("" gives the empty prompt). Throws std::runtime_error naming the
// problem for a malformed swap list.
std::string negative_prompt_for(const std::string& prompt, const std::string& spec);

// Throws like negative_prompt_for when `spec` is malformed (for checking a setting before a run starts).
void check_negative_prompt(const std::string& spec);

// "" when `spec` is well-formed, else what is wrong with it, without a prefix: a command-line validator (CLI11's
// ->check) names the flag itself.
std::string negative_prompt_problem(const std::string& spec);

// The text of each guidance branch, in CausalRollout's row order: the prompt; with guidance != 1 the unconditional
// branch's (the empty prompt, or the negative prompt where it has no branch of its own); with negative_guidance > 0
// the negative prompt's.
std::vector<std::string> guidance_prompts(const std::string& prompt,
                                          double guidance,
                                          const std::string& negative_spec,
                                          double negative_guidance);

}  // namespace reel
