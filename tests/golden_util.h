// Helpers shared by the test programs: paths and readers for tests/data/golden (and its toy DiT), the
// tolerance check every golden test uses (docs/CONTRIBUTING.md: |got - ref| <= 1e-4 + 1e-4 |ref|, printing
// the max errors seen), and catching an error message. Header-only, for test programs (needs REEL_TEST_DATA
// and GoogleTest).
#pragma once

#include <ATen/core/Tensor.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "diffusion/wan_config.h"
#include "weights/safetensors.h"

namespace reel::test {

// tests/data/golden/<name>; golden_path("") is the folder itself, with its trailing '/'.
inline std::string golden_path(const std::string& name) {
    return std::string(REEL_TEST_DATA) + "/golden/" + name;
}

inline nlohmann::json read_golden_json(const std::string& name) {
    const std::string path = golden_path(name);
    std::ifstream f(path);
    if (!f)
        throw std::runtime_error("golden json not found: " + path);
    return nlohmann::json::parse(f);
}

inline TensorMap load_golden(const std::string& name) {
    return load_safetensors(golden_path(name));
}

// The golden 2-layer toy Wan DiT (tests/data/golden/dit_weights.*); the weights are loaded once per program.
inline const TensorMap& golden_dit_weights() {
    static TensorMap t = load_golden("dit_weights.safetensors");
    return t;
}

inline WanDitConfig golden_dit_config() {
    return WanDitConfig::from_json(read_golden_json("dit_weights.json").at("config"));
}

struct CloseResult {
    double max_abs = 0;  // max |got - ref|
    double max_rel = 0;  // max |got - ref| / max(|ref|, rel_floor)
    double max_ref = 0;  // max |ref|
};

// Checks |got - ref| <= atol + rtol |ref| elementwise (atol = rtol = 0: exact), without printing.
// The relative error is only reported, never asserted: its denominator is max(|ref|, rel_floor), so the
// default 0.01 keeps near-zero references from blowing it up (there only the absolute error means anything).
// On a shape mismatch the failure is recorded and every field is 1e30.
inline CloseResult check_close(const at::Tensor& got,
                               const at::Tensor& ref,
                               const std::string& what,
                               double atol = 1e-4,
                               double rtol = 1e-4,
                               double rel_floor = 1e-2) {
    EXPECT_EQ(got.sizes(), ref.sizes()) << what;
    if (got.sizes() != ref.sizes())
        return {1e30, 1e30, 1e30};
    at::Tensor g = got.to(at::kCPU, at::kDouble), r = ref.to(at::kCPU, at::kDouble);
    // Method calls rather than operators: <ATen/core/Tensor.h> declares only the methods.
    at::Tensor d = g.sub(r).abs(), r_abs = r.abs();
    CloseResult res;
    res.max_abs = d.max().item<double>();
    res.max_rel = d.div(r_abs.clamp_min(rel_floor)).max().item<double>();
    res.max_ref = r_abs.max().item<double>();
    const bool ok = d.le(r_abs.mul(rtol).add(atol)).all().item<bool>();
    EXPECT_TRUE(ok) << what << ": max abs " << res.max_abs << ", max rel " << res.max_rel << " (atol " << atol
                    << ", rtol " << rtol << ")";
    return res;
}

// check_close, then one line: "  <what> max abs ..  max rel ..  (max |ref| ..)".
inline CloseResult expect_close(const at::Tensor& got,
                                const at::Tensor& ref,
                                const std::string& what,
                                double atol = 1e-4,
                                double rtol = 1e-4,
                                double rel_floor = 1e-2) {
    CloseResult res = check_close(got, ref, what, atol, rtol, rel_floor);
    if (got.sizes() == ref.sizes())
        std::printf("  %-40s max abs %.3g  max rel %.3g  (max |ref| %.3g)\n", what.c_str(), res.max_abs, res.max_rel,
                    res.max_ref);
    return res;
}

// The message of the std::runtime_error that f throws, or "<no error>".
inline std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const std::runtime_error& e) {
        return e.what();
    }
    return "<no error>";
}

}  // namespace reel::test
