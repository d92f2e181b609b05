// The one currency between checkpoint readers and models: tensors by checkpoint name.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace reel {

// Ordered so that listings (`reel inspect`) and error reports are stable.
using TensorMap = std::map<std::string, at::Tensor>;

}  // namespace reel
