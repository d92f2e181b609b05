// Video writers: H.264 MP4 (FFmpeg libraries), y4m (file or stdout pipe) and PNG frame directories.
//
// Frames are plain interleaved RGB24 buffers, row-major, height x width x 3 bytes, so this library
// needs no LibTorch. Every writer:
//   - checks its destination at open (std::runtime_error naming the path) so that a bad --out fails
//     before any generation work;
//   - writes frames as they come (nothing is held whole in memory) straight to the final path;
//   - on close() (idempotent; the destructor calls it) finalizes what was written so far, so a run
//     interrupted between frames (SIGINT flag observed in normal code, then close()) still leaves a
//     valid, playable video with exactly the frames written; close() is not async-signal-safe, do not
//     call it from inside a signal handler;
//   - removes its output when closed or destroyed with 0 frames written (no junk left behind).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace reel {

struct VideoFormat {
    int width = 0;
    int height = 0;
    int fps = 16;
    int crf = 18;                   // x264 constant rate factor (0 = lossless luma, 51 = worst); MP4 only
    std::string preset = "medium";  // x264 preset (ultrafast ... veryslow); MP4 only
};

class VideoWriter {
  public:
    virtual ~VideoWriter();
    // rgb: [height, width, 3] uint8, width*height*3 bytes.
    virtual void write(const uint8_t* rgb) = 0;
    // Finalize (flush encoder, write trailer / close file). Idempotent. Removes the output if 0 frames.
    virtual void close() = 0;
    virtual int64_t frames_written() const = 0;
    virtual const std::string& path() const = 0;
};

// H.264 (libx264) yuv420p (BT.601 limited range, tagged as such), time base 1/fps, moov atom moved to
// the front on close (+faststart: ftyp, moov, mdat), so the file streams. The container follows the
// extension: .mp4 (also .mov / .mkv).
// Odd width or height is REJECTED at open with a message saying so: yuv420p H.264 needs even sizes and
// silently padding would change the frame size the caller asked for. Pad or crop in the caller, or use
// y4m / PNG (which take any size); needs_even_size(path) says which outputs need it.
std::unique_ptr<VideoWriter> open_mp4_writer(const std::string& path, const VideoFormat& format);

// YUV4MPEG2 with C444 (full chroma: no subsampling, any size; BT.601 limited range as ffmpeg/ffplay
// assume for y4m). path "-" writes to stdout, e.g. `reel ... -o - | ffplay -` or `| ffmpeg -i - out.mkv`.
// The header goes out with the first frame.
std::unique_ptr<VideoWriter> open_y4m_writer(const std::string& path, const VideoFormat& format);

// dir/frame_000000.png, frame_000001.png, ... (RGB24 PNG via libavcodec). Creates dir (and parents).
// With 0 frames written, a dir this writer created is removed again.
std::unique_ptr<VideoWriter> open_png_dir_writer(const std::string& dir, const VideoFormat& format);

// By destination: "-" -> y4m on stdout; *.y4m -> y4m; *.mp4 / *.mov / *.mkv -> H.264;
// a path ending in '/' -> PNG directory. Anything else throws (message lists what is accepted).
std::unique_ptr<VideoWriter> open_video_writer(const std::string& path, const VideoFormat& format);

// True when open_video_writer(path, ...) would need even width and height (H.264 outputs).
bool needs_even_size(const std::string& path);

}  // namespace reel
