// Internal to src/video: FFmpeg includes and small helpers shared by the writers and the reader.
#pragma once

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}

#include <string>

namespace reel {

// av_err2str is a C compound-literal macro, unusable from C++.
inline std::string av_error_string(int err) {
    char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
    av_strerror(err, buf, sizeof(buf));
    return buf;
}

// x264 and the muxers print statistics at info level on every close; keep stderr for our own messages
// unless the user asks (REEL_FFMPEG_LOG=1 keeps FFmpeg's default verbosity).
void quiet_ffmpeg_logs();

// Copies tightly packed RGB24 [h, w, 3] into an AVFrame's (possibly padded) RGB24 plane.
void copy_rgb_into_frame(AVFrame* frame, const uint8_t* rgb, int w, int h);

}  // namespace reel
