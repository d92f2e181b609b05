#include "src/video/image_io.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>

#include "src/video/ffmpeg_util.h"
#include "src/video/video_reader.h"

namespace reel {

void quiet_ffmpeg_logs() {
    static std::once_flag once;
    std::call_once(once, [] {
        const char* env = std::getenv("REEL_FFMPEG_LOG");
        if (!env || std::strcmp(env, "1") != 0)
            av_log_set_level(AV_LOG_ERROR);
    });
}

void copy_rgb_into_frame(AVFrame* frame, const uint8_t* rgb, int w, int h) {
    for (int y = 0; y < h; y++)
        std::memcpy(frame->data[0] + (size_t)y * frame->linesize[0], rgb + (size_t)y * w * 3, (size_t)w * 3);
}

std::vector<uint8_t> encode_png(const uint8_t* rgb, int w, int h) {
    if (w <= 0 || h <= 0)
        throw std::runtime_error("encode_png: bad image size " + std::to_string(w) + "x" + std::to_string(h));
    quiet_ffmpeg_logs();
    const AVCodec* codec = avcodec_find_encoder(AV_CODEC_ID_PNG);
    if (!codec)
        throw std::runtime_error("encode_png: this FFmpeg build has no PNG encoder");
    AVCodecContext* ctx = avcodec_alloc_context3(codec);
    AVFrame* frame = av_frame_alloc();
    AVPacket* pkt = av_packet_alloc();
    std::vector<uint8_t> out;
    std::string error;
    ctx->width = w;
    ctx->height = h;
    ctx->pix_fmt = AV_PIX_FMT_RGB24;
    ctx->time_base = AVRational{1, 1};
    int ret = avcodec_open2(ctx, codec, nullptr);
    if (ret < 0)
        error = "avcodec_open2: " + av_error_string(ret);
    if (error.empty()) {
        frame->format = AV_PIX_FMT_RGB24;
        frame->width = w;
        frame->height = h;
        ret = av_frame_get_buffer(frame, 0);
        if (ret < 0)
            error = "av_frame_get_buffer: " + av_error_string(ret);
    }
    if (error.empty()) {
        copy_rgb_into_frame(frame, rgb, w, h);
        frame->pts = 0;
        ret = avcodec_send_frame(ctx, frame);
        if (ret >= 0)
            ret = avcodec_send_frame(ctx, nullptr);  // PNG is intra-only, but draining makes the packet come out
        while (ret >= 0) {
            ret = avcodec_receive_packet(ctx, pkt);
            if (ret < 0)
                break;
            out.insert(out.end(), pkt->data, pkt->data + pkt->size);
            av_packet_unref(pkt);
        }
        if (ret != AVERROR_EOF && ret != AVERROR(EAGAIN))
            error = "encode: " + av_error_string(ret);
    }
    av_packet_free(&pkt);
    av_frame_free(&frame);
    avcodec_free_context(&ctx);
    if (!error.empty())
        throw std::runtime_error("encode_png: " + error);
    if (out.empty())
        throw std::runtime_error("encode_png: the PNG encoder produced no data");
    return out;
}

void write_png(const std::string& path, const uint8_t* rgb, int w, int h) {
    std::vector<uint8_t> png = encode_png(rgb, w, h);
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f)
        throw std::runtime_error("write_png: cannot open '" + path + "' for writing: " + std::strerror(errno));
    size_t written = std::fwrite(png.data(), 1, png.size(), f);
    int close_ret = std::fclose(f);
    if (written != png.size() || close_ret != 0)
        throw std::runtime_error("write_png: write to '" + path + "' failed: " + std::strerror(errno));
}

std::vector<uint8_t> read_image(const std::string& path, int* w, int* h) {
    std::unique_ptr<VideoReader> reader = VideoReader::open(path);
    std::vector<uint8_t> rgb;
    if (!reader->read(rgb))
        throw std::runtime_error("read_image: '" + path + "' decoded to no image");
    if (w)
        *w = reader->info().width;
    if (h)
        *h = reader->info().height;
    return rgb;
}

double psnr_rgb(const uint8_t* a, const uint8_t* b, size_t n) {
    if (n == 0)
        return std::numeric_limits<double>::infinity();
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        sum += d * d;
    }
    if (sum == 0)
        return std::numeric_limits<double>::infinity();
    double mse = sum / (double)n;
    return 10.0 * std::log10(255.0 * 255.0 / mse);
}

}  // namespace reel
