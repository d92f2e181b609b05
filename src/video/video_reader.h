// Video reader: decodes anything libavformat opens (mp4, mkv, y4m, a single PNG, ...) into RGB24 frames.
// Used by tests, the tinyworld evaluator and `reel eval`.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace reel {

struct VideoInfo {
    int width = 0;
    int height = 0;
    double fps = 0;       // average frame rate of the video stream (0 if the container does not say)
    int64_t frames = -1;  // frame count from the container (mp4: exact); -1 when unknown (y4m, pipes)
};

class VideoReader {
  public:
    // Throws std::runtime_error naming the path if it can't be opened or has no video stream.
    static std::unique_ptr<VideoReader> open(const std::string& path);
    ~VideoReader();

    const VideoInfo& info() const;
    // Next frame as RGB24 [height, width, 3] (rgb is resized to width*height*3); false at the end.
    // Frames are converted with the colour matrix / range the stream is tagged with (BT.601 limited if
    // untagged), so they round-trip with the writers in video_writer.h.
    bool read(std::vector<uint8_t>& rgb);
    // Frames returned by read() so far.
    int64_t frames_read() const;

    struct Impl;

  private:
    explicit VideoReader(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// All frames of a PNG directory (frame_*.png, or failing that every *.png, in name order), RGB24.
// Throws if the directory has no PNG or the frames differ in size. width/height receive the frame size.
std::vector<std::vector<uint8_t>> read_png_dir(const std::string& dir, int* width = nullptr, int* height = nullptr);

}  // namespace reel
