// Video writers / reader: MP4 round trip (count, fps, size, PSNR, faststart layout), y4m, PNG dirs,
// interrupted and empty runs, bad paths, odd sizes.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "src/video/image_io.h"
#include "src/video/video_reader.h"
#include "src/video/video_writer.h"

namespace fs = std::filesystem;
using namespace reel;

namespace {

// A scratch directory per test program run, removed at the end.
struct TempDir {
    fs::path path;
    TempDir() {
        path = fs::temp_directory_path() / ("reel_test_video_" + std::to_string(::getpid()));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string operator/(const std::string& name) const { return (path / name).string(); }
};

TempDir& tmp() {
    static TempDir dir;
    return dir;
}

uint8_t clamp_u8(double v) {
    return (uint8_t)std::lround(std::min(255.0, std::max(0.0, v)));
}

// Frame t of a smooth moving pattern: drifting gradients plus a soft coloured blob moving 2 px per frame,
// RGB24 [h, w, 3]. Smooth like decoded video (the codec's chroma subsampling is not what we test here).
std::vector<uint8_t> pattern_frame(int t, int w, int h) {
    std::vector<uint8_t> rgb((size_t)w * h * 3);
    const double cx = std::fmod(8.0 + 2.0 * t, (double)w), cy = h / 2.0 + 0.25 * h * std::sin(t * 0.2);
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            double blob = std::exp(-((x - cx) * (x - cx) + (y - cy) * (y - cy)) / (2.0 * 6.0 * 6.0));
            double r = 40 + 150.0 * x / w + 160 * blob;
            double g = 40 + 150.0 * y / h + 40 * blob;
            double b = 120 + 60 * std::sin(2 * M_PI * (x + y + 3.0 * t) / 32.0) - 80 * blob;
            uint8_t* p = &rgb[((size_t)y * w + x) * 3];
            p[0] = clamp_u8(r);
            p[1] = clamp_u8(g);
            p[2] = clamp_u8(b);
        }
    }
    return rgb;
}

std::vector<uint8_t> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Top-level ISO BMFF box types in file order ("ftyp", "moov", "mdat", ...).
std::vector<std::string> mp4_top_level_boxes(const std::string& path) {
    std::vector<uint8_t> data = read_file(path);
    std::vector<std::string> boxes;
    size_t pos = 0;
    while (pos + 8 <= data.size()) {
        uint64_t size = ((uint64_t)data[pos] << 24) | ((uint64_t)data[pos + 1] << 16) | ((uint64_t)data[pos + 2] << 8) |
                        (uint64_t)data[pos + 3];
        boxes.push_back(std::string((const char*)&data[pos + 4], 4));
        if (size == 1 && pos + 16 <= data.size()) {  // 64-bit "largesize" follows the type
            size = 0;
            for (int i = 0; i < 8; i++)
                size = (size << 8) | data[pos + 8 + i];
        } else if (size == 0) {  // box runs to the end of the file
            size = data.size() - pos;
        }
        if (size < 8)
            break;
        pos += size;
    }
    return boxes;
}

int box_index(const std::vector<std::string>& boxes, const std::string& type) {
    for (size_t i = 0; i < boxes.size(); i++)
        if (boxes[i] == type)
            return (int)i;
    return -1;
}

void mp4_round_trip(int w, int h) {
    const int n = 48;
    std::string path = tmp() / ("round_trip_" + std::to_string(w) + "x" + std::to_string(h) + ".mp4");
    VideoFormat format;
    format.width = w;
    format.height = h;
    format.fps = 16;
    std::vector<std::vector<uint8_t>> written;
    {
        std::unique_ptr<VideoWriter> writer = open_video_writer(path, format);
        EXPECT_EQ(writer->path(), path);
        for (int t = 0; t < n; t++) {
            written.push_back(pattern_frame(t, w, h));
            writer->write(written.back().data());
        }
        EXPECT_EQ(writer->frames_written(), n);
        writer->close();
        writer->close();  // idempotent
    }
    ASSERT_TRUE(fs::exists(path));

    std::vector<std::string> boxes = mp4_top_level_boxes(path);
    ASSERT_FALSE(boxes.empty());
    EXPECT_EQ(boxes[0], "ftyp");
    int moov = box_index(boxes, "moov"), mdat = box_index(boxes, "mdat");
    ASSERT_GE(moov, 0);
    ASSERT_GE(mdat, 0);
    EXPECT_LT(moov, mdat) << "faststart: moov must come before mdat";

    std::unique_ptr<VideoReader> reader = VideoReader::open(path);
    EXPECT_EQ(reader->info().width, w);
    EXPECT_EQ(reader->info().height, h);
    EXPECT_DOUBLE_EQ(reader->info().fps, 16.0);
    EXPECT_EQ(reader->info().frames, n);
    std::vector<uint8_t> rgb;
    double sum_psnr = 0, min_psnr = 1e9;
    int count = 0;
    while (reader->read(rgb)) {
        ASSERT_LT(count, n);
        ASSERT_EQ(rgb.size(), (size_t)w * h * 3);
        double p = psnr_rgb(rgb.data(), written[count].data(), rgb.size());
        sum_psnr += p;
        min_psnr = std::min(min_psnr, p);
        count++;
    }
    EXPECT_EQ(count, n);
    EXPECT_EQ(reader->frames_read(), n);
    double mean_psnr = sum_psnr / std::max(count, 1);
    std::printf("mp4 %dx%d, %d frames, crf %d preset %s: %lld bytes, PSNR mean %.2f dB, min %.2f dB\n", w, h, n,
                format.crf, format.preset.c_str(), (long long)fs::file_size(path), mean_psnr, min_psnr);
    EXPECT_GE(min_psnr, 35.0);
}

}  // namespace

TEST(Video, Mp4RoundTripSquare) {
    mp4_round_trip(64, 64);
}

TEST(Video, Mp4RoundTripNonSquare) {
    mp4_round_trip(96, 64);
}

TEST(Video, Mp4BytesDependOnlyOnTheFrames) {
    // The same frames must give the same file. With B-frames, libx264's lookahead read memory whose contents
    // changed with glibc's malloc perturbation (M_PERTURB, as MALLOC_PERTURB_ sets): the bytes then varied from run
    // to run at 64x64, 96x96 or 480x480 though every frame was identical.
    const int w = 64, h = 64, n = 48;
    auto encode = [&](int perturb, const std::string& name) {
        mallopt(M_PERTURB, perturb);
        std::string path = tmp() / name;
        std::unique_ptr<VideoWriter> writer = open_mp4_writer(path, VideoFormat{w, h});
        for (int t = 0; t < n; t++)
            writer->write(pattern_frame(t, w, h).data());
        writer->close();
        writer.reset();
        mallopt(M_PERTURB, 0);
        std::ifstream f(path, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    };
    const std::string a = encode(0, "det_a.mp4"), b = encode(17, "det_b.mp4"), c = encode(99, "det_c.mp4");
    ASSERT_FALSE(a.empty());
    EXPECT_TRUE(a == b) << "sizes " << a.size() << " vs " << b.size();
    EXPECT_TRUE(a == c) << "sizes " << a.size() << " vs " << c.size();
}

TEST(Video, Mp4InterruptedRunKeepsFramesWritten) {
    // Planned 48 frames, stopped after 13 (as after Ctrl-C): close() must leave a playable file with 13.
    const int w = 64, h = 48, k = 13;
    std::string path = tmp() / "interrupted.mp4";
    VideoFormat format{w, h};
    std::unique_ptr<VideoWriter> writer = open_mp4_writer(path, format);
    for (int t = 0; t < k; t++)
        writer->write(pattern_frame(t, w, h).data());
    writer->close();
    EXPECT_THROW(writer->write(pattern_frame(0, w, h).data()), std::runtime_error);
    std::unique_ptr<VideoReader> reader = VideoReader::open(path);
    EXPECT_EQ(reader->info().frames, k);
    std::vector<uint8_t> rgb;
    int count = 0;
    while (reader->read(rgb))
        count++;
    EXPECT_EQ(count, k);
}

TEST(Video, Mp4DestroyedByScopeIsFinalized) {
    // No explicit close(): the destructor finalizes (exception unwinding in the engine takes this path).
    const int w = 32, h = 32;
    std::string path = tmp() / "dtor.mp4";
    {
        std::unique_ptr<VideoWriter> writer = open_mp4_writer(path, VideoFormat{w, h});
        for (int t = 0; t < 5; t++)
            writer->write(pattern_frame(t, w, h).data());
    }
    std::unique_ptr<VideoReader> reader = VideoReader::open(path);
    std::vector<uint8_t> rgb;
    int count = 0;
    while (reader->read(rgb))
        count++;
    EXPECT_EQ(count, 5);
}

TEST(Video, ZeroFramesLeaveNoFile) {
    VideoFormat format{64, 64};
    std::string mp4 = tmp() / "empty.mp4", mp4_closed = tmp() / "empty_closed.mp4", y4m = tmp() / "empty.y4m",
                png = tmp() / "empty_png_dir";
    {
        std::unique_ptr<VideoWriter> writer = open_mp4_writer(mp4, format);
        EXPECT_TRUE(fs::exists(mp4));  // opened (and so checked) at open, before any frame
    }
    EXPECT_FALSE(fs::exists(mp4));
    {
        std::unique_ptr<VideoWriter> writer = open_video_writer(mp4_closed, format);
        writer->close();
        EXPECT_FALSE(fs::exists(mp4_closed));
    }
    { open_y4m_writer(y4m, format); }
    EXPECT_FALSE(fs::exists(y4m));
    { open_png_dir_writer(png, format); }
    EXPECT_FALSE(fs::exists(png));
}

TEST(Video, UnwritablePathThrowsNamingThePath) {
    VideoFormat format{64, 64};
    const std::string missing = "/nonexistent_reel_dir/sub/out";
    for (std::string path : {missing + ".mp4", missing + ".mkv", missing + ".y4m"}) {
        try {
            open_video_writer(path, format);
            ADD_FAILURE() << "no exception for " << path;
        } catch (const std::runtime_error& e) {
            EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
            std::printf("expected error: %s\n", e.what());
        }
    }
    // A PNG directory below a regular file can't be created.
    std::string file = tmp() / "plain_file";
    std::ofstream(file) << "x";
    std::string dir = file + "/frames/";
    try {
        open_video_writer(dir, format);
        ADD_FAILURE() << "no exception for " << dir;
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find(dir), std::string::npos) << e.what();
    }
    EXPECT_THROW(open_video_writer(tmp() / "out.avi", format), std::runtime_error);
}

TEST(Video, OddSizeRejectedForH264AcceptedElsewhere) {
    EXPECT_TRUE(needs_even_size("a/b.mp4"));
    EXPECT_TRUE(needs_even_size("B.MKV"));
    EXPECT_FALSE(needs_even_size("a.y4m"));
    EXPECT_FALSE(needs_even_size("-"));
    EXPECT_FALSE(needs_even_size("frames/"));
    std::string path = tmp() / "odd.mp4";
    try {
        open_video_writer(path, VideoFormat{65, 64});
        ADD_FAILURE() << "odd width accepted";
    } catch (const std::runtime_error& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find("65x64"), std::string::npos) << msg;
        EXPECT_NE(msg.find("even"), std::string::npos) << msg;
        EXPECT_NE(msg.find(path), std::string::npos) << msg;
    }
    EXPECT_THROW(open_mp4_writer(path, VideoFormat{64, 63}), std::runtime_error);
    EXPECT_FALSE(fs::exists(path));
}

TEST(Video, Y4mOddSizeParsesAndRoundTrips) {
    const int w = 33, h = 17, n = 5;
    std::string path = tmp() / "odd.y4m";
    std::vector<std::vector<uint8_t>> written;
    {
        std::unique_ptr<VideoWriter> writer = open_video_writer(path, VideoFormat{w, h, 16});
        for (int t = 0; t < n; t++) {
            written.push_back(pattern_frame(t, w, h));
            writer->write(written.back().data());
        }
    }
    // Parse by hand: header line, then n x ("FRAME\n" + Y, U, V full-size planes).
    std::vector<uint8_t> data = read_file(path);
    std::string all(data.begin(), data.end());
    size_t eol = all.find('\n');
    ASSERT_NE(eol, std::string::npos);
    std::string header = all.substr(0, eol);
    EXPECT_EQ(header.rfind("YUV4MPEG2 ", 0), 0u) << header;
    EXPECT_NE(header.find(" W33 "), std::string::npos) << header;
    EXPECT_NE(header.find(" H17 "), std::string::npos) << header;
    EXPECT_NE(header.find(" F16:1 "), std::string::npos) << header;
    EXPECT_NE(header.find(" C444"), std::string::npos) << header;
    size_t pos = eol + 1, frames = 0;
    const size_t frame_bytes = (size_t)w * h * 3;
    while (pos < all.size()) {
        ASSERT_EQ(all.compare(pos, 6, "FRAME\n"), 0) << "frame " << frames;
        pos += 6 + frame_bytes;
        frames++;
    }
    EXPECT_EQ(pos, all.size());
    EXPECT_EQ(frames, (size_t)n);

    std::unique_ptr<VideoReader> reader = VideoReader::open(path);
    EXPECT_EQ(reader->info().width, w);
    EXPECT_EQ(reader->info().height, h);
    EXPECT_DOUBLE_EQ(reader->info().fps, 16.0);
    std::vector<uint8_t> rgb;
    int count = 0;
    double min_psnr = 1e9;
    while (reader->read(rgb)) {
        ASSERT_LT(count, n);
        min_psnr = std::min(min_psnr, psnr_rgb(rgb.data(), written[count].data(), rgb.size()));
        count++;
    }
    EXPECT_EQ(count, n);
    std::printf("y4m C444 %dx%d: %zu bytes, min PSNR %.2f dB\n", w, h, data.size(), min_psnr);
    EXPECT_GE(min_psnr, 40.0);  // only 8-bit BT.601 rounding, no subsampling
}

TEST(Video, PngDirWritesReadableFrames) {
    const int w = 40, h = 24, n = 4;
    std::string dir = tmp() / "png_frames";
    std::vector<std::vector<uint8_t>> written;
    {
        std::unique_ptr<VideoWriter> writer = open_video_writer(dir + "/", VideoFormat{w, h});
        for (int t = 0; t < n; t++) {
            written.push_back(pattern_frame(t, w, h));
            writer->write(written.back().data());
        }
        EXPECT_EQ(writer->frames_written(), n);
    }
    for (int t = 0; t < n; t++) {
        char name[32];
        std::snprintf(name, sizeof(name), "frame_%06d.png", t);
        EXPECT_TRUE(fs::exists(fs::path(dir) / name)) << name;
    }
    int rw = 0, rh = 0;
    std::vector<std::vector<uint8_t>> frames = read_png_dir(dir, &rw, &rh);
    ASSERT_EQ(frames.size(), (size_t)n);
    EXPECT_EQ(rw, w);
    EXPECT_EQ(rh, h);
    for (int t = 0; t < n; t++)
        EXPECT_EQ(frames[t], written[t]) << "PNG is lossless, frame " << t;
}

TEST(Video, WritePngAndPsnr) {
    const int w = 7, h = 5;  // odd sizes are fine for PNG
    std::vector<uint8_t> img = pattern_frame(3, w, h);
    std::string path = tmp() / "single.png";
    write_png(path, img.data(), w, h);
    std::vector<uint8_t> png = read_file(path);
    ASSERT_GE(png.size(), 8u);
    EXPECT_EQ(png[1], 'P');
    EXPECT_EQ(png[2], 'N');
    EXPECT_EQ(png[3], 'G');
    int rw = 0, rh = 0;
    EXPECT_EQ(read_image(path, &rw, &rh), img);
    EXPECT_EQ(rw, w);
    EXPECT_EQ(rh, h);
    EXPECT_THROW(write_png("/nonexistent_reel_dir/x.png", img.data(), w, h), std::runtime_error);

    EXPECT_TRUE(std::isinf(psnr_rgb(img.data(), img.data(), img.size())));
    std::vector<uint8_t> a(300, 100), b(300, 100);
    for (size_t i = 0; i < b.size(); i++)
        b[i] = (uint8_t)(100 + (i % 2 ? 1 : -1));  // error 1 everywhere: MSE 1 -> 48.13 dB
    EXPECT_NEAR(psnr_rgb(a.data(), b.data(), a.size()), 20 * std::log10(255.0), 1e-9);
}

TEST(Video, ReaderErrorsNameThePath) {
    try {
        VideoReader::open(tmp() / "missing.mp4");
        ADD_FAILURE() << "no exception";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("missing.mp4"), std::string::npos) << e.what();
    }
    std::string junk = tmp() / "junk.mp4";
    std::ofstream(junk) << "not a video";
    EXPECT_THROW(VideoReader::open(junk), std::runtime_error);
}

TEST(Video, BadEncoderSettingsThrowAtOpen) {
    std::string path = tmp() / "bad_preset.mp4";
    VideoFormat format{64, 64};
    format.preset = "no-such-preset";
    try {
        open_mp4_writer(path, format);
        ADD_FAILURE() << "bad preset accepted";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("no-such-preset"), std::string::npos) << e.what();
    }
    format.preset = "medium";
    format.crf = 60;
    EXPECT_THROW(open_mp4_writer(path, format), std::runtime_error);
    format.crf = 18;
    format.fps = 0;
    EXPECT_THROW(open_mp4_writer(path, format), std::runtime_error);
    EXPECT_FALSE(fs::exists(path));
}

TEST(Video, Y4mToStdout) {
    // "-" writes y4m to stdout; redirect fd 1 into a file for the duration to check what came out.
    const int w = 16, h = 8, n = 3;
    std::string path = tmp() / "stdout.y4m";
    std::fflush(stdout);
    int saved = ::dup(1);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ::dup2(fd, 1);
    ::close(fd);
    {
        std::unique_ptr<VideoWriter> writer = open_video_writer("-", VideoFormat{w, h, 16});
        for (int t = 0; t < n; t++)
            writer->write(pattern_frame(t, w, h).data());
        writer->close();
    }
    std::fflush(stdout);
    ::dup2(saved, 1);
    ::close(saved);
    std::unique_ptr<VideoReader> reader = VideoReader::open(path);
    EXPECT_EQ(reader->info().width, w);
    EXPECT_EQ(reader->info().height, h);
    std::vector<uint8_t> rgb;
    int count = 0;
    while (reader->read(rgb))
        count++;
    EXPECT_EQ(count, n);
}
