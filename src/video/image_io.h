// Single images: PNG out (libavcodec's PNG encoder), PNG in, and PSNR between RGB buffers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace reel {

// rgb: [h, w, 3] uint8. Returns the PNG file bytes.
std::vector<uint8_t> encode_png(const uint8_t* rgb, int w, int h);
// Writes encode_png(...) to path; throws std::runtime_error naming the path on failure.
void write_png(const std::string& path, const uint8_t* rgb, int w, int h);
// Reads any image libavformat/libavcodec decode (PNG, JPEG, ...) as RGB24 [h, w, 3].
std::vector<uint8_t> read_image(const std::string& path, int* w, int* h);

// PSNR in dB over n bytes with peak 255: 10 log10(255^2 / MSE). +infinity when identical.
double psnr_rgb(const uint8_t* a, const uint8_t* b, size_t n);

}  // namespace reel
