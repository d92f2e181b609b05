// Frame fidelity against a reference video of the same seed: PSNR and SSIM (what the KV-cache studies report).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace reel {

// SSIM of two RGB24 frames (w x h) on luma (BT.601), Gaussian window 11x11 with sigma 1.5, K1 0.01, K2 0.03, the
// mean of the SSIM map over positions where the window fits (Wang et al. 2004).
double ssim_rgb(const uint8_t* a, const uint8_t* b, int w, int h);

struct FidelityReport {
    int64_t frames = 0;    // frames compared (the shorter video's length)
    double psnr_mean = 0;  // mean over frames of per-frame PSNR, each capped at 100 dB (identical frames)
    double psnr_min = 0;
    double ssim_mean = 0;
    double ssim_min = 0;
};

// ref, test: frames of w x h RGB24.
FidelityReport compare_frames(const std::vector<std::vector<uint8_t>>& ref,
                              const std::vector<std::vector<uint8_t>>& test,
                              int w,
                              int h);

}  // namespace reel
