#include "src/video/video_reader.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <stdexcept>

#include "src/video/ffmpeg_util.h"
#include "src/video/image_io.h"

namespace fs = std::filesystem;

namespace reel {

struct VideoReader::Impl {
    std::string path;
    VideoInfo info;
    AVFormatContext* fmt = nullptr;
    AVCodecContext* dec = nullptr;
    int stream_index = -1;
    AVPacket* pkt = nullptr;
    AVFrame* frame = nullptr;
    SwsContext* sws = nullptr;
    bool sent_eof = false;  // the decoder has been told there are no more packets
    bool done = false;
    int64_t frames_read = 0;
    // What sws was last configured for; colour details are set again only when this changes.
    SwsContext* configured_sws = nullptr;
    int configured_key[5] = {-1, -1, -1, -1, -1};

    ~Impl() {
        sws_freeContext(sws);
        av_frame_free(&frame);
        av_packet_free(&pkt);
        avcodec_free_context(&dec);
        avformat_close_input(&fmt);
    }

    [[noreturn]] void fail(const std::string& what, int err) const {
        throw std::runtime_error("video reader '" + path + "': " + what + ": " + av_error_string(err));
    }

    // Decoded frame -> RGB24 [height, width, 3], with the colour matrix and range the frame is tagged with.
    void convert(std::vector<uint8_t>& rgb) {
        const int w = info.width, h = info.height;
        sws =
            sws_getCachedContext(sws, frame->width, frame->height, (AVPixelFormat)frame->format, w, h, AV_PIX_FMT_RGB24,
                                 SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, nullptr, nullptr, nullptr);
        if (!sws)
            throw std::runtime_error("video reader '" + path + "': no converter from " +
                                     av_get_pix_fmt_name((AVPixelFormat)frame->format) + " to RGB24");
        const AVPixFmtDescriptor* desc = av_pix_fmt_desc_get((AVPixelFormat)frame->format);
        bool is_yuv = desc && !(desc->flags & AV_PIX_FMT_FLAG_RGB) && desc->nb_components >= 3;
        const int key[5] = {frame->width, frame->height, frame->format, (int)frame->colorspace,
                            (int)frame->color_range};
        bool same = sws == configured_sws && std::equal(key, key + 5, configured_key);
        if (is_yuv && !same) {
            int colorspace = frame->colorspace == AVCOL_SPC_UNSPECIFIED ? AVCOL_SPC_SMPTE170M : frame->colorspace;
            bool full_range = frame->color_range == AVCOL_RANGE_JPEG || frame->format == AV_PIX_FMT_YUVJ420P ||
                              frame->format == AV_PIX_FMT_YUVJ422P || frame->format == AV_PIX_FMT_YUVJ444P;
            const int* coeffs = sws_getCoefficients(colorspace);
            sws_setColorspaceDetails(sws, coeffs, full_range ? 1 : 0, sws_getCoefficients(SWS_CS_DEFAULT), 1, 0,
                                     1 << 16, 1 << 16);
        }
        configured_sws = sws;
        std::copy(key, key + 5, configured_key);
        rgb.resize((size_t)w * h * 3);
        uint8_t* dst[1] = {rgb.data()};
        const int dst_stride[1] = {w * 3};
        sws_scale(sws, frame->data, frame->linesize, 0, frame->height, dst, dst_stride);
    }
};

VideoReader::VideoReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
VideoReader::~VideoReader() = default;

std::unique_ptr<VideoReader> VideoReader::open(const std::string& path) {
    quiet_ffmpeg_logs();
    auto impl = std::make_unique<Impl>();
    impl->path = path;
    if (!fs::exists(path) && path != "-" && path.find("://") == std::string::npos)
        throw std::runtime_error("video reader: '" + path + "' does not exist");
    int ret = avformat_open_input(&impl->fmt, path == "-" ? "pipe:0" : path.c_str(), nullptr, nullptr);
    if (ret < 0)
        impl->fail("cannot open", ret);
    ret = avformat_find_stream_info(impl->fmt, nullptr);
    if (ret < 0)
        impl->fail("reading stream info", ret);
    const AVCodec* codec = nullptr;
    ret = av_find_best_stream(impl->fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
    if (ret < 0)
        impl->fail("no video stream", ret);
    impl->stream_index = ret;
    AVStream* st = impl->fmt->streams[ret];
    impl->dec = avcodec_alloc_context3(codec);
    if (!impl->dec)
        impl->fail("decoder context", AVERROR(ENOMEM));
    ret = avcodec_parameters_to_context(impl->dec, st->codecpar);
    if (ret < 0)
        impl->fail("decoder parameters", ret);
    ret = avcodec_open2(impl->dec, codec, nullptr);
    if (ret < 0)
        impl->fail(std::string("opening the ") + codec->name + " decoder", ret);
    impl->pkt = av_packet_alloc();
    impl->frame = av_frame_alloc();

    VideoInfo& info = impl->info;
    info.width = st->codecpar->width;
    info.height = st->codecpar->height;
    if (info.width <= 0 || info.height <= 0)
        throw std::runtime_error("video reader '" + path + "': video stream has no frame size");
    AVRational rate = st->avg_frame_rate.num > 0 ? st->avg_frame_rate : av_guess_frame_rate(impl->fmt, st, nullptr);
    info.fps = rate.num > 0 && rate.den > 0 ? av_q2d(rate) : 0.0;
    info.frames = st->nb_frames > 0 ? st->nb_frames : -1;
    return std::unique_ptr<VideoReader>(new VideoReader(std::move(impl)));
}

const VideoInfo& VideoReader::info() const {
    return impl_->info;
}

int64_t VideoReader::frames_read() const {
    return impl_->frames_read;
}

bool VideoReader::read(std::vector<uint8_t>& rgb) {
    Impl& m = *impl_;
    while (!m.done) {
        int ret = avcodec_receive_frame(m.dec, m.frame);
        if (ret >= 0) {
            m.convert(rgb);
            av_frame_unref(m.frame);
            m.frames_read++;
            return true;
        }
        if (ret == AVERROR_EOF) {
            m.done = true;
            break;
        }
        if (ret != AVERROR(EAGAIN))
            m.fail("decoding frame " + std::to_string(m.frames_read), ret);
        if (m.sent_eof) {  // EAGAIN after EOF should not happen; don't spin
            m.done = true;
            break;
        }
        // The decoder wants input: feed it the next packet of our stream (or tell it the stream ended).
        for (;;) {
            ret = av_read_frame(m.fmt, m.pkt);
            if (ret < 0) {
                if (ret != AVERROR_EOF && !(m.fmt->pb && avio_feof(m.fmt->pb)))
                    m.fail("reading", ret);
                avcodec_send_packet(m.dec, nullptr);
                m.sent_eof = true;
                break;
            }
            if (m.pkt->stream_index != m.stream_index) {
                av_packet_unref(m.pkt);
                continue;
            }
            ret = avcodec_send_packet(m.dec, m.pkt);
            av_packet_unref(m.pkt);
            if (ret < 0 && ret != AVERROR(EAGAIN))
                m.fail("decoding packet", ret);
            break;
        }
    }
    return false;
}

std::vector<std::vector<uint8_t>> read_png_dir(const std::string& dir, int* width, int* height) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
        throw std::runtime_error("read_png_dir: '" + dir + "' is not a directory");
    std::vector<std::string> frames, any_png;
    for (const auto& entry : fs::directory_iterator(dir)) {
        std::string name = entry.path().filename().string();
        if (name.size() < 4 || name.substr(name.size() - 4) != ".png")
            continue;
        any_png.push_back(entry.path().string());
        if (name.rfind("frame_", 0) == 0)
            frames.push_back(entry.path().string());
    }
    std::vector<std::string>& files = frames.empty() ? any_png : frames;
    if (files.empty())
        throw std::runtime_error("read_png_dir: no PNG files in '" + dir + "'");
    std::sort(files.begin(), files.end());
    std::vector<std::vector<uint8_t>> out;
    int w0 = 0, h0 = 0;
    for (const std::string& file : files) {
        int w = 0, h = 0;
        out.push_back(read_image(file, &w, &h));
        if (out.size() == 1) {
            w0 = w;
            h0 = h;
        } else if (w != w0 || h != h0) {
            throw std::runtime_error("read_png_dir: '" + file + "' is " + std::to_string(w) + "x" + std::to_string(h) +
                                     ", the first frame is " + std::to_string(w0) + "x" + std::to_string(h0));
        }
    }
    if (width)
        *width = w0;
    if (height)
        *height = h0;
    return out;
}

}  // namespace reel
