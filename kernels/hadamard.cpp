#include "kernels/hadamard.h"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/aten_fallback.h"

namespace reel {
namespace {

// Below this many elements the transform runs on one thread.
constexpr int64_t kParallelMin = int64_t(1) << 15;

bool is_power_of_two(int64_t n) {
    return n > 0 && (n & (n - 1)) == 0;
}

void check_fwht(const at::Tensor& x, int64_t block) {
    if (!x.defined() || x.dim() < 1)
        throw std::runtime_error("fwht_: expected a tensor [..., D] with at least one dimension");
    const int64_t d = x.size(-1);
    if (!is_power_of_two(block) || d % block != 0)
        throw std::runtime_error("fwht_: block must be a power of two dividing D = " + std::to_string(d) + ", got " +
                                 std::to_string(block));
    if (!at::isFloatingType(x.scalar_type()))
        throw std::runtime_error("fwht_: x must be a floating tensor, got " +
                                 std::string(c10::toString(x.scalar_type())));
}

// x: [rows, D] contiguous. Sylvester-order butterflies (pairs i, i + h for h = 1, 2, 4, ...) within each block,
// then one scaling by 1 / sqrt(block) instead of 1 / sqrt(2) per stage (fewer multiplies, same result up to rounding).
template <typename T>
void fwht_cpu(T* x, int64_t rows, int64_t d, int64_t block) {
    const T norm = static_cast<T>(1.0 / std::sqrt(static_cast<double>(block)));
#pragma omp parallel for if (rows * d >= kParallelMin)
    for (int64_t r = 0; r < rows; ++r) {
        T* row = x + r * d;
        for (int64_t b0 = 0; b0 < d; b0 += block) {
            T* v = row + b0;
            for (int64_t h = 1; h < block; h *= 2)
                for (int64_t i = 0; i < block; i += 2 * h)
                    for (int64_t j = i; j < i + h; ++j) {
                        const T a = v[j], b = v[j + h];
                        v[j] = a + b;
                        v[j + h] = a - b;
                    }
            for (int64_t j = 0; j < block; ++j)
                v[j] *= norm;
        }
    }
}

// x: [..., D] on any device: the same butterflies as whole-tensor ops, one stage at a time.
void fwht_aten(at::Tensor& x, int64_t block) {
    at::Tensor y = x.reshape({-1, block});
    for (int64_t h = 1; h < block; h *= 2) {
        at::Tensor v = y.view({-1, block / (2 * h), 2, h});
        at::Tensor a = v.select(2, 0), b = v.select(2, 1);
        y = at::stack({a + b, a - b}, 2).view({-1, block});
    }
    x.copy_(y.mul(1.0 / std::sqrt(static_cast<double>(block))).view(x.sizes()));
}

}  // namespace

void fwht_(at::Tensor& x, int64_t block) {
    check_fwht(x, block);
    if (x.numel() == 0 || block == 1)
        return;
    const bool cpu_loop =
        x.device().is_cpu() && x.is_contiguous() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
    if (!cpu_loop) {
        fwht_aten(x, block);
        return;
    }
    const int64_t d = x.size(-1), rows = x.numel() / d;
    if (x.scalar_type() == at::kFloat)
        fwht_cpu(x.data_ptr<float>(), rows, d, block);
    else
        fwht_cpu(x.data_ptr<double>(), rows, d, block);
}

at::Tensor hadamard_matrix(int64_t n) {
    if (!is_power_of_two(n))
        throw std::runtime_error("hadamard_matrix: n must be a power of two, got " + std::to_string(n));
    // Sylvester: H[i][j] = (-1)^popcount(i & j), the order the butterflies above produce.
    at::Tensor h = at::empty({n, n}, at::kFloat);
    auto a = h.accessor<float, 2>();
    const float norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j)
            a[i][j] = (__builtin_popcountll(static_cast<unsigned long long>(i & j)) & 1) ? -norm : norm;
    return h;
}

namespace aten_fallback {

void fwht_(at::Tensor& x, int64_t block) {
    check_fwht(x, block);
    if (x.numel() > 0 && block > 1)
        fwht_aten(x, block);
}

}  // namespace aten_fallback
}  // namespace reel
