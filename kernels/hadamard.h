// Fast Walsh-Hadamard transform over the last dimension, in blocks: the block-diagonal rotation SAW-INT4 applies
// before token-wise INT4 so that outlier channels are spread over their block.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace reel {

// In place on x [..., D] (contiguous, float32 / float64): every consecutive block of `block` channels (a power of
// two dividing D) is multiplied by the normalized Hadamard matrix H / sqrt(block). H / sqrt(block) is orthonormal
// and symmetric, so applying fwht_ twice restores x (up to rounding).
void fwht_(at::Tensor& x, int64_t block);

// The explicit normalized Hadamard matrix [n, n] (Sylvester order, the order fwht_ uses), for tests.
at::Tensor hadamard_matrix(int64_t n);

}  // namespace reel
