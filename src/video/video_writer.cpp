#include "src/video/video_writer.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>

namespace reel {

VideoWriter::~VideoWriter() = default;

namespace {

std::string lower_extension(const std::string& path) {
    size_t slash = path.find_last_of('/');
    size_t dot = path.find_last_of('.');
    if (dot == std::string::npos || (slash != std::string::npos && dot < slash))
        return "";
    std::string ext = path.substr(dot);
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return (char)std::tolower(c); });
    return ext;
}

}  // namespace

bool needs_even_size(const std::string& path) {
    std::string ext = lower_extension(path);
    return ext == ".mp4" || ext == ".mov" || ext == ".mkv";
}

std::unique_ptr<VideoWriter> open_video_writer(const std::string& path, const VideoFormat& format) {
    if (path == "-")
        return open_y4m_writer(path, format);
    if (!path.empty() && path.back() == '/')
        return open_png_dir_writer(path, format);
    std::string ext = lower_extension(path);
    if (ext == ".y4m")
        return open_y4m_writer(path, format);
    if (needs_even_size(path))
        return open_mp4_writer(path, format);
    throw std::runtime_error("video output '" + path +
                             "': unknown kind; use a .mp4 / .mov / .mkv (H.264), .y4m, '-' (y4m on stdout) "
                             "or a directory ending in '/' (PNG frames)");
}

}  // namespace reel
