// YUV4MPEG2 writer, C444: full-resolution chroma keeps colours exact up to the 8-bit BT.601 conversion and
// allows odd sizes; every y4m reader (ffmpeg, ffplay, mpv, x264) takes it.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "src/video/ffmpeg_util.h"
#include "src/video/video_writer.h"

namespace reel {

namespace {

class Y4mWriter : public VideoWriter {
  public:
    Y4mWriter(const std::string& path, const VideoFormat& format);
    ~Y4mWriter() override;
    void write(const uint8_t* rgb) override;
    void close() override;
    int64_t frames_written() const override { return frames_; }
    const std::string& path() const override { return path_; }

  private:
    void put(const void* data, size_t n);

    std::string path_;
    VideoFormat format_;
    bool to_stdout_ = false;
    FILE* file_ = nullptr;
    SwsContext* sws_ = nullptr;
    std::vector<uint8_t> yuv_;  // Y, U, V planes back to back, reused for every frame
    int64_t frames_ = 0;
    bool closed_ = false;
};

Y4mWriter::Y4mWriter(const std::string& path, const VideoFormat& format) : path_(path), format_(format) {
    const int w = format.width, h = format.height;
    if (w <= 0 || h <= 0)
        throw std::runtime_error("y4m writer '" + path + "': bad frame size " + std::to_string(w) + "x" +
                                 std::to_string(h));
    if (format.fps <= 0)
        throw std::runtime_error("y4m writer '" + path + "': fps must be positive, got " + std::to_string(format.fps));
    quiet_ffmpeg_logs();
    sws_ = sws_getContext(w, h, AV_PIX_FMT_RGB24, w, h, AV_PIX_FMT_YUV444P, SWS_BICUBIC | SWS_ACCURATE_RND, nullptr,
                          nullptr, nullptr);
    if (!sws_)
        throw std::runtime_error("y4m writer '" + path + "': cannot create the RGB24 -> YUV444P converter");
    yuv_.resize((size_t)w * h * 3);
    to_stdout_ = (path == "-");
    if (to_stdout_) {
        file_ = stdout;
    } else {
        file_ = std::fopen(path.c_str(), "wb");
        if (!file_) {
            sws_freeContext(sws_);
            throw std::runtime_error("y4m writer: cannot open '" + path + "' for writing: " + std::strerror(errno));
        }
    }
}

Y4mWriter::~Y4mWriter() {
    try {
        close();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "reel: warning: %s\n", e.what());
    }
    if (file_ && !to_stdout_)
        std::fclose(file_);
    sws_freeContext(sws_);
}

void Y4mWriter::put(const void* data, size_t n) {
    if (std::fwrite(data, 1, n, file_) != n)
        throw std::runtime_error("y4m writer: write to '" + path_ + "' failed: " + std::strerror(errno));
}

void Y4mWriter::write(const uint8_t* rgb) {
    if (closed_)
        throw std::runtime_error("y4m writer '" + path_ + "': write after close");
    const int w = format_.width, h = format_.height;
    if (frames_ == 0) {
        // Header with the first frame, so an open writer that never writes leaves stdout untouched.
        std::string header = "YUV4MPEG2 W" + std::to_string(w) + " H" + std::to_string(h) + " F" +
                             std::to_string(format_.fps) + ":1 Ip A1:1 C444 XCOLORRANGE=LIMITED\n";
        put(header.data(), header.size());
    }
    const uint8_t* src[1] = {rgb};
    const int src_stride[1] = {w * 3};
    const size_t plane = (size_t)w * h;
    uint8_t* dst[3] = {yuv_.data(), yuv_.data() + plane, yuv_.data() + 2 * plane};
    const int dst_stride[3] = {w, w, w};
    sws_scale(sws_, src, src_stride, 0, h, dst, dst_stride);
    put("FRAME\n", 6);
    put(yuv_.data(), yuv_.size());
    frames_++;
    if (to_stdout_)
        std::fflush(file_);  // a player on the other end of the pipe should see frames as they are made
}

void Y4mWriter::close() {
    if (closed_)
        return;
    closed_ = true;
    if (to_stdout_) {
        std::fflush(stdout);
        return;
    }
    int ret = std::fclose(file_);
    file_ = nullptr;
    if (frames_ == 0) {
        std::remove(path_.c_str());
        return;
    }
    if (ret != 0)
        throw std::runtime_error("y4m writer: closing '" + path_ + "' failed: " + std::strerror(errno));
}

}  // namespace

std::unique_ptr<VideoWriter> open_y4m_writer(const std::string& path, const VideoFormat& format) {
    return std::make_unique<Y4mWriter>(path, format);
}

}  // namespace reel
