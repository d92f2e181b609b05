// H.264 MP4 writer. Pipeline (METHODS.md "FFmpeg MP4"): output context by extension -> libx264 yuv420p,
// time base 1/fps, global header -> write_header(+faststart) -> per frame sws RGB24->YUV420P,
// send_frame / receive_packet, rescale packet times to the stream time base (the mp4 muxer changes it,
// e.g. 1/16 -> 1/16384) -> on close: flush (send NULL) and write_trailer (without it there is no moov).
#include <unistd.h>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "src/video/ffmpeg_util.h"
#include "src/video/video_writer.h"

namespace reel {

namespace {

class Mp4Writer : public VideoWriter {
  public:
    Mp4Writer(const std::string& path, const VideoFormat& format);
    ~Mp4Writer() override;
    void write(const uint8_t* rgb) override;
    void close() override;
    int64_t frames_written() const override { return frames_; }
    const std::string& path() const override { return path_; }

  private:
    void fail(const std::string& what, int err);
    void drain_packets();  // receive every packet the encoder has ready and mux it
    void release();        // free FFmpeg objects (file closed, not finalized)

    std::string path_;
    VideoFormat format_;
    AVFormatContext* oc_ = nullptr;
    AVCodecContext* enc_ = nullptr;
    AVStream* stream_ = nullptr;
    SwsContext* sws_ = nullptr;
    AVFrame* frame_ = nullptr;  // YUV420P, reused for every frame
    AVPacket* pkt_ = nullptr;
    int64_t frames_ = 0;
    bool closed_ = false;
};

Mp4Writer::Mp4Writer(const std::string& path, const VideoFormat& format) : path_(path), format_(format) {
    const int w = format.width, h = format.height;
    if (w <= 0 || h <= 0)
        throw std::runtime_error("mp4 writer '" + path + "': bad frame size " + std::to_string(w) + "x" +
                                 std::to_string(h));
    if (w % 2 != 0 || h % 2 != 0)
        throw std::runtime_error("mp4 writer '" + path + "': frame size " + std::to_string(w) + "x" +
                                 std::to_string(h) +
                                 " has an odd side; H.264 yuv420p needs even width and height "
                                 "(pad or crop the frames, or write .y4m / PNG frames, which take any size)");
    if (format.fps <= 0)
        throw std::runtime_error("mp4 writer '" + path + "': fps must be positive, got " + std::to_string(format.fps));
    if (format.crf < 0 || format.crf > 51)
        throw std::runtime_error("mp4 writer '" + path + "': crf must be in [0, 51], got " +
                                 std::to_string(format.crf));
    quiet_ffmpeg_logs();

    int ret = avformat_alloc_output_context2(&oc_, nullptr, nullptr, path.c_str());
    if (ret < 0 || !oc_)
        throw std::runtime_error("mp4 writer '" + path + "': no container format for this file name (" +
                                 av_error_string(ret) + ")");

    const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
    if (!codec)
        codec = avcodec_find_encoder(AV_CODEC_ID_H264);
    if (!codec) {
        release();
        throw std::runtime_error("mp4 writer '" + path + "': this FFmpeg build has no H.264 encoder");
    }
    stream_ = avformat_new_stream(oc_, nullptr);
    enc_ = avcodec_alloc_context3(codec);
    frame_ = av_frame_alloc();
    pkt_ = av_packet_alloc();
    if (!stream_ || !enc_ || !frame_ || !pkt_)
        fail("allocation", AVERROR(ENOMEM));

    enc_->width = w;
    enc_->height = h;
    enc_->pix_fmt = AV_PIX_FMT_YUV420P;
    enc_->time_base = AVRational{1, format.fps};
    enc_->framerate = AVRational{format.fps, 1};
    // Tag what sws_scale produces by default (BT.601, limited range) so players convert back the same way.
    enc_->color_range = AVCOL_RANGE_MPEG;
    enc_->colorspace = AVCOL_SPC_SMPTE170M;
    enc_->color_primaries = AVCOL_PRI_SMPTE170M;
    enc_->color_trc = AVCOL_TRC_SMPTE170M;
    // No B-frames: with them libx264's lookahead reads memory that changes with the allocator's state, so the
    // same frames gave different bytes from run to run (tests/test_video.cpp, Mp4BytesDependOnlyOnTheFrames).
    // Without them the file is about 4% larger at the same quality (tinyworld, 160 frames, crf 18: 41.8 against
    // 40.1 kB, 38.7 against 38.4 dB), and every frame is in the file once encoded, not held back for reordering.
    enc_->max_b_frames = 0;
    if (oc_->oformat->flags & AVFMT_GLOBALHEADER)
        enc_->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    AVDictionary* codec_opts = nullptr;
    av_dict_set(&codec_opts, "preset", format.preset.c_str(), 0);
    av_dict_set(&codec_opts, "crf", std::to_string(format.crf).c_str(), 0);
    ret = avcodec_open2(enc_, codec, &codec_opts);
    av_dict_free(&codec_opts);
    if (ret < 0)
        fail("opening the H.264 encoder (preset '" + format.preset + "', crf " + std::to_string(format.crf) + ")", ret);
    ret = avcodec_parameters_from_context(stream_->codecpar, enc_);
    if (ret < 0)
        fail("codec parameters", ret);
    stream_->time_base = enc_->time_base;
    stream_->avg_frame_rate = enc_->framerate;

    frame_->format = AV_PIX_FMT_YUV420P;
    frame_->width = w;
    frame_->height = h;
    ret = av_frame_get_buffer(frame_, 0);
    if (ret < 0)
        fail("frame buffer", ret);
    // ACCURATE_RND: without it swscale's fast path is off by one level often enough to cost ~1 dB.
    sws_ = sws_getContext(w, h, AV_PIX_FMT_RGB24, w, h, AV_PIX_FMT_YUV420P, SWS_BICUBIC | SWS_ACCURATE_RND, nullptr,
                          nullptr, nullptr);
    if (!sws_)
        fail("swscale context RGB24 -> YUV420P", AVERROR(EINVAL));

    // Opening the file here (not at the first frame) makes a bad path fail before any generation work.
    ret = avio_open(&oc_->pb, path.c_str(), AVIO_FLAG_WRITE);
    if (ret < 0) {
        release();
        throw std::runtime_error("mp4 writer: cannot open '" + path + "' for writing: " + av_error_string(ret));
    }
    AVDictionary* mux_opts = nullptr;
    if (oc_->oformat->priv_class &&
        av_opt_find((void*)&oc_->oformat->priv_class, "movflags", nullptr, 0, AV_OPT_SEARCH_FAKE_OBJ))
        av_dict_set(&mux_opts, "movflags", "+faststart", 0);
    ret = avformat_write_header(oc_, &mux_opts);
    av_dict_free(&mux_opts);
    if (ret < 0) {
        release();
        std::remove(path.c_str());
        throw std::runtime_error("mp4 writer '" + path + "': writing the container header: " + av_error_string(ret));
    }
}

Mp4Writer::~Mp4Writer() {
    try {
        close();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "reel: warning: %s\n", e.what());
    }
    release();
}

void Mp4Writer::fail(const std::string& what, int err) {
    bool file_open = oc_ && oc_->pb;
    release();
    if (file_open)
        std::remove(path_.c_str());
    throw std::runtime_error("mp4 writer '" + path_ + "': " + what + ": " + av_error_string(err));
}

void Mp4Writer::release() {
    if (oc_ && oc_->pb)
        avio_closep(&oc_->pb);
    if (oc_)
        avformat_free_context(oc_);
    oc_ = nullptr;
    stream_ = nullptr;
    avcodec_free_context(&enc_);
    sws_freeContext(sws_);
    sws_ = nullptr;
    av_frame_free(&frame_);
    av_packet_free(&pkt_);
}

void Mp4Writer::drain_packets() {
    for (;;) {
        int ret = avcodec_receive_packet(enc_, pkt_);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF)
            return;
        if (ret < 0)
            throw std::runtime_error("mp4 writer '" + path_ + "': encoding: " + av_error_string(ret));
        av_packet_rescale_ts(pkt_, enc_->time_base, stream_->time_base);
        pkt_->stream_index = stream_->index;
        ret = av_interleaved_write_frame(oc_, pkt_);  // takes ownership of the packet's data
        if (ret < 0)
            throw std::runtime_error("mp4 writer '" + path_ + "': writing a packet: " + av_error_string(ret));
    }
}

void Mp4Writer::write(const uint8_t* rgb) {
    if (closed_)
        throw std::runtime_error("mp4 writer '" + path_ + "': write after close");
    // The encoder may still reference the previous frame's buffers (lookahead).
    int ret = av_frame_make_writable(frame_);
    if (ret < 0)
        throw std::runtime_error("mp4 writer '" + path_ + "': frame buffer: " + av_error_string(ret));
    const uint8_t* src[1] = {rgb};
    const int src_stride[1] = {format_.width * 3};
    sws_scale(sws_, src, src_stride, 0, format_.height, frame_->data, frame_->linesize);
    frame_->pts = frames_;
    ret = avcodec_send_frame(enc_, frame_);
    if (ret < 0)
        throw std::runtime_error("mp4 writer '" + path_ + "': sending frame " + std::to_string(frames_) +
                                 " to the encoder: " + av_error_string(ret));
    frames_++;
    drain_packets();
}

void Mp4Writer::close() {
    if (closed_)
        return;
    closed_ = true;
    if (frames_ == 0) {
        // Nothing worth keeping: a header-only file would not play. Remove it.
        release();
        std::remove(path_.c_str());
        return;
    }
    std::string error;
    int ret = avcodec_send_frame(enc_, nullptr);  // flush: x264 holds lookahead frames back
    try {
        if (ret < 0)
            throw std::runtime_error("mp4 writer '" + path_ + "': flushing the encoder: " + av_error_string(ret));
        drain_packets();
    } catch (const std::exception& e) {
        error = e.what();
    }
    // Write the trailer even after an encoder error: the frames muxed so far stay playable.
    ret = av_write_trailer(oc_);
    if (ret < 0 && error.empty())
        error = "mp4 writer '" + path_ + "': writing the trailer: " + av_error_string(ret);
    if (oc_->pb) {
        ret = avio_closep(&oc_->pb);
        if (ret < 0 && error.empty())
            error = "mp4 writer '" + path_ + "': closing the file: " + av_error_string(ret);
    }
    release();
    if (!error.empty())
        throw std::runtime_error(error);
}

}  // namespace

std::unique_ptr<VideoWriter> open_mp4_writer(const std::string& path, const VideoFormat& format) {
    return std::make_unique<Mp4Writer>(path, format);
}

}  // namespace reel
