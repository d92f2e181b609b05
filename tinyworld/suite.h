// tinyworld prompt suites: the training prompts, the evaluation prompts and the (colour, shape) pairs held out
// of training. prompts/tinyworld/*.txt are these lists written out; a test keeps the two equal.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "tinyworld/prompt.h"

namespace reel {

// (colour, shape) pairs that never appear in training; every colour and every shape still does.
std::vector<std::pair<Color, Shape>> tinyworld_heldout_pairs();
bool is_heldout(const SceneSpec& scene);  // any object is a held-out pair

// which: "train" (every single-object prompt without a held-out pair), "eval" (48: 20 with held-out pairs,
// 28 ordinary covering every colour, shape, motion and background) or "heldout_pairs" ("red triangle", ...).
// Throws std::runtime_error for another name.
std::vector<std::string> tinyworld_suite(const std::string& which);

}  // namespace reel
