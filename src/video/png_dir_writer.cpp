// PNG frame directory writer: dir/frame_000000.png, ... one file per frame, written as frames come.
#include <unistd.h>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <system_error>

#include "src/video/image_io.h"
#include "src/video/video_writer.h"

namespace fs = std::filesystem;

namespace reel {

namespace {

class PngDirWriter : public VideoWriter {
  public:
    PngDirWriter(const std::string& dir, const VideoFormat& format);
    ~PngDirWriter() override;
    void write(const uint8_t* rgb) override;
    void close() override;
    int64_t frames_written() const override { return frames_; }
    const std::string& path() const override { return dir_; }

  private:
    std::string dir_;
    VideoFormat format_;
    bool created_dir_ = false;
    int64_t frames_ = 0;
    bool closed_ = false;
};

PngDirWriter::PngDirWriter(const std::string& dir, const VideoFormat& format) : dir_(dir), format_(format) {
    if (format.width <= 0 || format.height <= 0)
        throw std::runtime_error("png writer '" + dir + "': bad frame size " + std::to_string(format.width) + "x" +
                                 std::to_string(format.height));
    std::error_code ec;
    if (!fs::exists(dir, ec)) {
        fs::create_directories(dir, ec);
        if (ec)
            throw std::runtime_error("png writer: cannot create directory '" + dir + "': " + ec.message());
        created_dir_ = true;
    } else if (!fs::is_directory(dir, ec)) {
        throw std::runtime_error("png writer: '" + dir + "' exists and is not a directory");
    }
    if (::access(dir.c_str(), W_OK) != 0)
        throw std::runtime_error("png writer: directory '" + dir + "' is not writable");
}

PngDirWriter::~PngDirWriter() {
    try {
        close();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "reel: warning: %s\n", e.what());
    }
}

void PngDirWriter::write(const uint8_t* rgb) {
    if (closed_)
        throw std::runtime_error("png writer '" + dir_ + "': write after close");
    char name[32];
    std::snprintf(name, sizeof(name), "frame_%06lld.png", (long long)frames_);
    write_png((fs::path(dir_) / name).string(), rgb, format_.width, format_.height);
    frames_++;
}

void PngDirWriter::close() {
    if (closed_)
        return;
    closed_ = true;
    if (frames_ == 0 && created_dir_) {
        std::error_code ec;
        fs::remove(dir_, ec);  // only removes it if still empty
    }
}

}  // namespace

std::unique_ptr<VideoWriter> open_png_dir_writer(const std::string& dir, const VideoFormat& format) {
    return std::make_unique<PngDirWriter>(dir, format);
}

}  // namespace reel
