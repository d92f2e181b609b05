#include "src/video/fidelity.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "src/video/image_io.h"

namespace reel {

namespace {

std::vector<double> luma(const uint8_t* p, int w, int h) {
    std::vector<double> y(size_t(w) * size_t(h));
    for (size_t i = 0; i < y.size(); ++i)
        y[i] = 0.299 * p[3 * i] + 0.587 * p[3 * i + 1] + 0.114 * p[3 * i + 2];
    return y;
}

// Separable Gaussian filter, "valid" region only: [h - 10, w - 10].
std::vector<double> blur(const std::vector<double>& x, int w, int h, const double* g) {
    const int ow = w - 10, oh = h - 10;
    std::vector<double> tmp(size_t(w) * size_t(oh)), out(size_t(ow) * size_t(oh));
    for (int r = 0; r < oh; ++r)
        for (int c = 0; c < w; ++c) {
            double s = 0;
            for (int k = 0; k < 11; ++k)
                s += g[k] * x[size_t(r + k) * size_t(w) + size_t(c)];
            tmp[size_t(r) * size_t(w) + size_t(c)] = s;
        }
    for (int r = 0; r < oh; ++r)
        for (int c = 0; c < ow; ++c) {
            double s = 0;
            for (int k = 0; k < 11; ++k)
                s += g[k] * tmp[size_t(r) * size_t(w) + size_t(c + k)];
            out[size_t(r) * size_t(ow) + size_t(c)] = s;
        }
    return out;
}

}  // namespace

double ssim_rgb(const uint8_t* a, const uint8_t* b, int w, int h) {
    if (w < 11 || h < 11)
        throw std::runtime_error("SSIM needs frames of at least 11x11 pixels");
    double g[11], sum = 0;
    for (int k = 0; k < 11; ++k) {
        g[k] = std::exp(-0.5 * (k - 5) * (k - 5) / (1.5 * 1.5));
        sum += g[k];
    }
    for (double& x : g)
        x /= sum;
    std::vector<double> x = luma(a, w, h), y = luma(b, w, h);
    std::vector<double> xx(x.size()), yy(x.size()), xy(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        xx[i] = x[i] * x[i];
        yy[i] = y[i] * y[i];
        xy[i] = x[i] * y[i];
    }
    const std::vector<double> mx = blur(x, w, h, g), my = blur(y, w, h, g), sxx = blur(xx, w, h, g),
                              syy = blur(yy, w, h, g), sxy = blur(xy, w, h, g);
    const double c1 = (0.01 * 255) * (0.01 * 255), c2 = (0.03 * 255) * (0.03 * 255);
    double total = 0;
    for (size_t i = 0; i < mx.size(); ++i) {
        const double vx = sxx[i] - mx[i] * mx[i], vy = syy[i] - my[i] * my[i], cxy = sxy[i] - mx[i] * my[i];
        total += ((2 * mx[i] * my[i] + c1) * (2 * cxy + c2)) / ((mx[i] * mx[i] + my[i] * my[i] + c1) * (vx + vy + c2));
    }
    return total / double(mx.size());
}

FidelityReport compare_frames(const std::vector<std::vector<uint8_t>>& ref,
                              const std::vector<std::vector<uint8_t>>& test,
                              int w,
                              int h) {
    FidelityReport r;
    r.frames = int64_t(std::min(ref.size(), test.size()));
    if (r.frames == 0)
        throw std::runtime_error("no frames to compare");
    r.psnr_min = r.ssim_min = 1e9;
    const size_t n = size_t(w) * size_t(h) * 3;
    for (int64_t i = 0; i < r.frames; ++i) {
        if (ref[size_t(i)].size() != n || test[size_t(i)].size() != n)
            throw std::runtime_error("frames differ in size");
        const double p = std::min(100.0, psnr_rgb(ref[size_t(i)].data(), test[size_t(i)].data(), n));
        const double s = ssim_rgb(ref[size_t(i)].data(), test[size_t(i)].data(), w, h);
        r.psnr_mean += p;
        r.ssim_mean += s;
        r.psnr_min = std::min(r.psnr_min, p);
        r.ssim_min = std::min(r.ssim_min, s);
    }
    r.psnr_mean /= double(r.frames);
    r.ssim_mean /= double(r.frames);
    return r;
}

}  // namespace reel
