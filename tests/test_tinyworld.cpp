// tinyworld: prompt grammar, procedural world, prompt suites and the evaluator (which must score the world's own
// videos ~1 and catch corrupted ones).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>

#include "tinyworld/evaluator.h"
#include "tinyworld/prompt.h"
#include "tinyworld/suite.h"
#include "tinyworld/world.h"

using namespace reel;

namespace {

using Video = std::vector<std::vector<uint8_t>>;

constexpr uint64_t kSeed = 1234;
constexpr int kFrames = 48;

std::string parse_error(const std::string& prompt) {
    try {
        parse_prompt(prompt);
    } catch (const std::runtime_error& e) {
        return e.what();
    }
    return "";
}

std::vector<std::string> read_lines(const std::string& path) {
    std::ifstream in(path);
    EXPECT_TRUE(in.good()) << "cannot open " << path;
    std::vector<std::string> lines;
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty()) {
            lines.push_back(line);
        }
    }
    return lines;
}

std::string prompts_dir() {
    return std::string(REEL_SOURCE_DIR) + "/prompts/tinyworld/";
}

Video render(const std::string& prompt, uint64_t seed = kSeed, int frames = kFrames, int w = 64, int h = 64) {
    return World(parse_prompt(prompt), seed, w, h).render_frames(0, frames);
}

// Separable Gaussian blur, edges clamped (what a decoder's padding does), in place.
void blur(Video* video, int w, int h, double sigma) {
    const int rad = static_cast<int>(std::ceil(3 * sigma));
    std::vector<double> k(2 * rad + 1);
    double sum = 0;
    for (int i = -rad; i <= rad; ++i) {
        k[i + rad] = std::exp(-0.5 * i * i / (sigma * sigma));
        sum += k[i + rad];
    }
    for (double& v : k) {
        v /= sum;
    }
    std::vector<double> tmp(static_cast<size_t>(w) * h * 3);
    for (auto& f : *video) {
        for (int y = 0; y < h; ++y) {
            for (int x = 0; x < w; ++x) {
                for (int c = 0; c < 3; ++c) {
                    double acc = 0;
                    for (int i = -rad; i <= rad; ++i) {
                        int xx = std::min(w - 1, std::max(0, x + i));
                        acc += k[i + rad] * f[3 * (y * w + xx) + c];
                    }
                    tmp[3 * (y * w + x) + c] = acc;
                }
            }
        }
        for (int y = 0; y < h; ++y) {
            for (int x = 0; x < w; ++x) {
                for (int c = 0; c < 3; ++c) {
                    double acc = 0;
                    for (int i = -rad; i <= rad; ++i) {
                        int yy = std::min(h - 1, std::max(0, y + i));
                        acc += k[i + rad] * tmp[3 * (yy * w + x) + c];
                    }
                    f[3 * (y * w + x) + c] = static_cast<uint8_t>(std::lround(std::min(255.0, std::max(0.0, acc))));
                }
            }
        }
    }
}

void add_noise(Video* video, double sigma, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> n(0.0, sigma);
    for (auto& f : *video) {
        for (uint8_t& v : f) {
            v = static_cast<uint8_t>(std::lround(std::min(255.0, std::max(0.0, v + n(rng)))));
        }
    }
}

struct SuiteScores {
    EvalSummary summary;
    std::vector<EvalReport> reports;
};

SuiteScores score_suite(const std::vector<std::string>& prompts, double blur_sigma, double noise_sigma) {
    SuiteScores s;
    uint32_t noise_seed = 7;
    for (const std::string& p : prompts) {
        Video v = render(p);
        if (blur_sigma > 0) {
            blur(&v, 64, 64, blur_sigma);
        }
        if (noise_sigma > 0) {
            add_noise(&v, noise_sigma, noise_seed++);
        }
        s.reports.push_back(evaluate_frames(v, 64, 64, p));
    }
    s.summary = summarize_reports(s.reports);
    return s;
}

void expect_all_attributes_at_least(const SuiteScores& s, double bar, const std::string& what) {
    const EvalMeans& m = s.summary.all;
    std::printf(
        "[%s] %d videos: background %.4f color %.4f shape %.4f direction %.4f overall %.4f present %.4f "
        "area_jitter %.5f color_change %.4f shape_change %.4f (heldout overall %.4f, seen %.4f)\n",
        what.c_str(), m.videos, m.background, m.color, m.shape, m.direction, m.overall, m.object_present, m.area_jitter,
        m.color_change_rate, m.shape_change_rate, s.summary.heldout.overall, s.summary.seen.overall);
    EXPECT_GE(m.background, bar) << what;
    EXPECT_GE(m.color, bar) << what;
    EXPECT_GE(m.shape, bar) << what;
    EXPECT_GE(m.direction, bar) << what;
    EXPECT_GE(m.object_present, bar) << what;
    for (const EvalReport& r : s.reports) {
        // No single prompt may be badly misjudged either.
        EXPECT_GE(r.overall, 0.9) << what << ": " << r.to_json().dump();
    }
}

}  // namespace

// ---- palette and grammar ----------------------------------------------------------------------------------------

TEST(TinyworldPalette, ColoursAreWellSeparated) {
    auto d = [](Rgb a, Rgb b) {
        return std::sqrt(std::pow(a[0] - b[0], 2.0) + std::pow(a[1] - b[1], 2.0) + std::pow(a[2] - b[2], 2.0));
    };
    double min_oo = 1e9, min_ob = 1e9;
    for (int a = 0; a < kNumColors; ++a) {
        for (int b = a + 1; b < kNumColors; ++b) {
            min_oo = std::min(min_oo, d(palette_rgb(Color(a)), palette_rgb(Color(b))));
        }
        for (int b = 0; b < kNumBackgrounds; ++b) {
            Color bc;
            if (!(background_color(Background(b), &bc) && bc == Color(a))) {
                min_ob = std::min(min_ob, d(palette_rgb(Color(a)), background_rgb(Background(b))));
            }
        }
    }
    std::printf("min distance object-object %.1f, object-background %.1f\n", min_oo, min_ob);
    EXPECT_GE(min_oo, 90.0);
    EXPECT_GE(min_ob, 130.0);
    EXPECT_EQ(palette_rgb(Color::White), background_rgb(Background::White));
}

TEST(TinyworldPrompt, ParsesTheBasicForms) {
    SceneSpec s = parse_prompt("a red circle moving left on a black background");
    ASSERT_EQ(s.objects.size(), 1u);
    EXPECT_EQ(s.objects[0].color, Color::Red);
    EXPECT_EQ(s.objects[0].shape, Shape::Circle);
    EXPECT_EQ(s.objects[0].motion, Motion::Left);
    EXPECT_EQ(s.objects[0].speed, 1.0);
    EXPECT_FALSE(s.objects[0].bounce);
    EXPECT_EQ(s.background, Background::Black);

    s = parse_prompt("a white triangle standing still on a navy background");
    EXPECT_EQ(s.objects[0].color, Color::White);
    EXPECT_EQ(s.objects[0].shape, Shape::Triangle);
    EXPECT_EQ(s.objects[0].motion, Motion::Still);
    EXPECT_EQ(s.objects[0].speed, 0.0);
    EXPECT_EQ(s.background, Background::Navy);
}

TEST(TinyworldPrompt, ToleratesCaseSpacesAndPeriod) {
    SceneSpec ref = parse_prompt("a cyan square moving down on a gray background");
    EXPECT_EQ(parse_prompt("  A Cyan   SQUARE moving\tDown on a Gray background. "), ref);
    EXPECT_EQ(parse_prompt("a cyan square moving down on a grey background"), ref);
    EXPECT_EQ(parse_prompt("cyan square moving down on gray background"), ref);  // articles optional
}

TEST(TinyworldPrompt, RicherPrompts) {
    SceneSpec s = parse_prompt("an orange square moving up quickly on a white background");
    EXPECT_EQ(s.objects[0].color, Color::Orange);
    EXPECT_EQ(s.objects[0].speed, kSpeedFast);
    EXPECT_EQ(parse_prompt("an orange square quickly moving up on a white background"), s);
    EXPECT_EQ(parse_prompt("an orange square moving quickly up on a white background"), s);

    s = parse_prompt("a magenta circle bouncing right slowly on a black background");
    EXPECT_TRUE(s.objects[0].bounce);
    EXPECT_EQ(s.objects[0].motion, Motion::Right);
    EXPECT_EQ(s.objects[0].speed, kSpeedSlow);

    s = parse_prompt("a red circle moving left and a blue square standing still on a gray background");
    ASSERT_EQ(s.objects.size(), 2u);
    EXPECT_EQ(s.objects[1].color, Color::Blue);
    EXPECT_EQ(s.objects[1].motion, Motion::Still);
    EXPECT_EQ(to_prompt(s), "a red circle moving left and a blue square standing still on a gray background");
}

TEST(TinyworldPrompt, CanonicalRoundTrip) {
    for (const char* which : {"train", "eval"}) {
        for (const std::string& p : tinyworld_suite(which)) {
            EXPECT_EQ(to_prompt(parse_prompt(p)), p);
        }
    }
    for (const char* p :
         {"a yellow triangle bouncing up quickly on a navy background",
          "an orange circle moving right slowly and a white square bouncing down on a black background"}) {
        EXPECT_EQ(to_prompt(parse_prompt(p)), p);
    }
    SceneSpec odd = parse_prompt("a red circle moving left on a black background");
    odd.objects[0].speed = 1.5;
    EXPECT_THROW(to_prompt(odd), std::runtime_error);
}

TEST(TinyworldPrompt, BadPromptsNameTheProblem) {
    std::string e = parse_error("a purple circle moving left on a black background");
    std::printf("example error:\n%s\n", e.c_str());
    EXPECT_NE(e.find("\"purple\""), std::string::npos) << e;
    EXPECT_NE(e.find("colour"), std::string::npos) << e;
    EXPECT_NE(e.find("prompt grammar"), std::string::npos) << e;  // the grammar follows

    e = parse_error("a red hexagon moving left on a black background");
    EXPECT_NE(e.find("\"hexagon\""), std::string::npos) << e;
    EXPECT_NE(e.find("shape"), std::string::npos) << e;

    e = parse_error("a red circle moving sideways on a black background");
    EXPECT_NE(e.find("\"sideways\""), std::string::npos) << e;
    EXPECT_NE(e.find("direction"), std::string::npos) << e;

    e = parse_error("a red circle moving");
    EXPECT_NE(e.find("ends after \"moving\""), std::string::npos) << e;

    e = parse_error("a red circle moving left");
    EXPECT_NE(e.find("ends after \"left\""), std::string::npos) << e;

    e = parse_error("a red circle moving left on a black");
    EXPECT_NE(e.find("\"background\""), std::string::npos) << e;

    e = parse_error("a red circle moving left on a pink background");
    EXPECT_NE(e.find("\"pink\""), std::string::npos) << e;

    e = parse_error("a red circle jumping left on a black background");
    EXPECT_NE(e.find("\"jumping\""), std::string::npos) << e;

    e = parse_error("a red circle moving left on a black background please");
    EXPECT_NE(e.find("\"please\""), std::string::npos) << e;

    e = parse_error("a white square moving up on a white background");
    EXPECT_NE(e.find("must differ"), std::string::npos) << e;

    e = parse_error("a red circle moving left and a red square moving up on a black background");
    EXPECT_NE(e.find("different colours"), std::string::npos) << e;

    e = parse_error("a red circle slowly moving left quickly on a black background");
    EXPECT_NE(e.find("\"quickly\""), std::string::npos) << e;

    EXPECT_FALSE(parse_error("").empty());
    EXPECT_FALSE(parse_error("a red circle moving still on a black background").empty());
    EXPECT_FALSE(parse_error("a red circle quickly standing still on a black background").empty());
}

// ---- prompt suites ----------------------------------------------------------------------------------------------

TEST(TinyworldSuite, FilesMatchTheGenerator) {
    for (const char* which : {"train", "eval", "heldout_pairs"}) {
        const std::string path = prompts_dir() + which + ".txt";
        const std::vector<std::string> gen = tinyworld_suite(which);
        if (std::getenv("REEL_UPDATE_TINYWORLD_PROMPTS")) {  // regenerate after a deliberate change
            std::ofstream out(path);
            for (const std::string& p : gen) {
                out << p << "\n";
            }
        }
        EXPECT_EQ(read_lines(path), gen) << path << " differs from tinyworld_suite(\"" << which
                                         << "\"); rerun with REEL_UPDATE_TINYWORLD_PROMPTS=1 if intended";
    }
    EXPECT_THROW(tinyworld_suite("validation"), std::runtime_error);
}

TEST(TinyworldSuite, HeldOutPairsNeverTrainButEveryColourAndShapeDoes) {
    const auto train = tinyworld_suite("train");
    std::set<std::string> seen_pairs;
    std::set<Color> colors;
    std::set<Shape> shapes;
    for (const std::string& p : train) {
        SceneSpec s = parse_prompt(p);
        EXPECT_FALSE(is_heldout(s)) << p;
        for (const auto& o : s.objects) {
            colors.insert(o.color);
            shapes.insert(o.shape);
        }
    }
    // Textual check too, independent of the parser.
    for (const std::string& pair : tinyworld_suite("heldout_pairs")) {
        for (const std::string& p : train) {
            EXPECT_EQ(p.find(" " + pair + " "), std::string::npos) << p;
        }
    }
    EXPECT_EQ(colors.size(), size_t(kNumColors));
    EXPECT_EQ(shapes.size(), size_t(kNumShapes));
    EXPECT_EQ(train.size(), 385u);
    EXPECT_EQ(std::set<std::string>(train.begin(), train.end()).size(), train.size());
}

TEST(TinyworldSuite, EvalCoversHeldOutPairsAndEveryAttribute) {
    const auto eval = tinyworld_suite("eval");
    EXPECT_EQ(eval.size(), 48u);
    std::set<Color> colors;
    std::set<Shape> shapes;
    std::set<Motion> motions;
    std::set<Background> bgs;
    std::set<std::pair<Color, Shape>> heldout;
    int n_heldout = 0;
    for (const std::string& p : eval) {
        SceneSpec s = parse_prompt(p);
        colors.insert(s.objects[0].color);
        shapes.insert(s.objects[0].shape);
        motions.insert(s.objects[0].motion);
        bgs.insert(s.background);
        if (is_heldout(s)) {
            n_heldout++;
            heldout.insert({s.objects[0].color, s.objects[0].shape});
        }
    }
    EXPECT_EQ(n_heldout, 20);
    EXPECT_EQ(heldout.size(), tinyworld_heldout_pairs().size());
    EXPECT_EQ(colors.size(), size_t(kNumColors));
    EXPECT_EQ(shapes.size(), size_t(kNumShapes));
    EXPECT_EQ(motions.size(), size_t(kNumMotions));
    EXPECT_EQ(bgs.size(), size_t(kNumBackgrounds));
    EXPECT_EQ(std::set<std::string>(eval.begin(), eval.end()).size(), eval.size());
}

// ---- world ------------------------------------------------------------------------------------------------------

TEST(TinyworldWorld, DeterministicAndSeedSetsOnlyTheStart) {
    const SceneSpec s = parse_prompt("a green square moving right on a navy background");
    World a(s, 5), b(s, 5), c(s, 6);
    EXPECT_EQ(a.render(0), b.render(0));
    EXPECT_EQ(a.render(37), b.render(37));
    EXPECT_NE(a.render(0), c.render(0));
    ObjectState sa = a.object_state(0, 0), sc = c.object_state(0, 0);
    EXPECT_GT(std::hypot(sa.x - sc.x, sa.y - sc.y), 1.0);
    // Same motion whatever the seed: 1 px/frame to the right.
    for (World* w : {&a, &c}) {
        ObjectState s0 = w->object_state(0, 10), s1 = w->object_state(0, 11);
        double dx = std::fmod(s1.x - s0.x + 64, 64.0);
        EXPECT_NEAR(dx, 1.0, 1e-9);
        EXPECT_NEAR(s1.y, s0.y, 1e-12);
    }
    // Background and object colour are exactly the palette's.
    std::vector<uint8_t> f = a.render(3);
    std::map<std::vector<uint8_t>, int> counts;
    for (size_t i = 0; i < f.size(); i += 3) {
        counts[{f[i], f[i + 1], f[i + 2]}]++;
    }
    Rgb bg = background_rgb(Background::Navy), fg = palette_rgb(Color::Green);
    EXPECT_GT((counts[{bg[0], bg[1], bg[2]}]), 64 * 64 / 2);
    EXPECT_GT((counts[{fg[0], fg[1], fg[2]}]), 150);  // ~pi 8^2 = 201 minus the anti-aliased rim
}

TEST(TinyworldWorld, EndlessWrapAndRandomAccess) {
    const SceneSpec s = parse_prompt("a yellow triangle moving up on a black background");
    World w(s, 99);
    // One full lap of 64 frames at 1 px/frame brings the same picture back (up to sub-pixel rounding).
    for (int64_t f : {int64_t(0), int64_t(13), int64_t(1000000)}) {
        std::vector<uint8_t> a = w.render(f), b = w.render(f + 64);
        int maxdiff = 0;
        for (size_t i = 0; i < a.size(); ++i) {
            maxdiff = std::max(maxdiff, std::abs(int(a[i]) - int(b[i])));
        }
        EXPECT_LE(maxdiff, 16) << "frame " << f;
    }
    // Far frames render (and the object is there, wrapping or not).
    FrameDetection d = detect_frame(w.render(123456789).data(), 64, 64);
    ASSERT_FALSE(d.blobs.empty());
    EXPECT_EQ(d.blobs[0].color, Color::Yellow);
}

TEST(TinyworldWorld, BouncingStaysInsideAndReverses) {
    const SceneSpec s = parse_prompt("a red square bouncing left quickly on a white background");
    World w(s, 3);
    double prev = w.object_state(0, 0).x;
    int reversals = 0, last_sign = -1;
    EXPECT_LT(w.object_state(0, 1).x, prev);  // starts moving left
    for (int f = 1; f < 200; ++f) {
        ObjectState st = w.object_state(0, f);
        EXPECT_GE(st.x - st.half_extent, 0.0);
        EXPECT_LE(st.x + st.half_extent, 64.0);
        int sign = st.x > prev ? 1 : -1;
        reversals += sign != last_sign;
        last_sign = sign;
        prev = st.x;
    }
    EXPECT_GE(reversals, 4);
}

TEST(TinyworldWorld, PlaceSetsWhereTheObjectIsAndItMovesOnFromThere) {
    World w(parse_prompt("a green square moving left quickly on a navy background"), 5);
    w.place(0, 500, 3.5, 60.25);  // near the border: the world wraps
    ObjectState at = w.object_state(0, 500);
    EXPECT_NEAR(at.x, 3.5, 1e-9);
    EXPECT_NEAR(at.y, 60.25, 1e-9);
    // It moves on as the prompt says (left, at the quick speed), wrapping past the left border.
    World fresh(parse_prompt("a green square moving left quickly on a navy background"), 5);
    const double step = std::fmod(fresh.object_state(0, 0).x - fresh.object_state(0, 1).x + 64.0, 64.0);
    EXPECT_GT(step, 1.0);
    ObjectState next = w.object_state(0, 502);
    EXPECT_NEAR(next.x, std::fmod(3.5 - 2 * step + 64.0, 64.0), 1e-9);
    EXPECT_NEAR(next.y, 60.25, 1e-9);
    // The evaluator finds the rendered object where it was placed.
    FrameDetection d = detect_frame(w.render(500).data(), 64, 64);
    ASSERT_FALSE(d.blobs.empty());
    const double dx = std::fabs(d.blobs[0].cx - 3.5);
    EXPECT_LT(std::min(dx, 64 - dx), 1.0);
    EXPECT_NEAR(d.blobs[0].cy, 60.25, 1.0);
    World b(parse_prompt("a red square bouncing left on a white background"), 3);
    EXPECT_THROW(b.place(0, 0, 10, 10), std::runtime_error);
}

TEST(TinyworldWorld, WithSceneKeepsPlacesAndChangesWhatIsDrawn) {
    World w(parse_prompt("a green square moving left on a navy background"), 5);
    w.place(0, 40, 20.0, 30.0);
    const World c = w.with_scene(parse_prompt("a green circle moving left on a navy background"));
    for (int64_t f : {0, 40, 77}) {
        EXPECT_NEAR(c.object_state(0, f).x, w.object_state(0, f).x, 1e-9);
        EXPECT_NEAR(c.object_state(0, f).y, w.object_state(0, f).y, 1e-9);
    }
    FrameDetection ds = detect_frame(w.render(40).data(), 64, 64), dc = detect_frame(c.render(40).data(), 64, 64);
    ASSERT_EQ(ds.blobs.size(), 1u);
    ASSERT_EQ(dc.blobs.size(), 1u);
    EXPECT_EQ(ds.blobs[0].shape, Shape::Square);
    EXPECT_EQ(dc.blobs[0].shape, Shape::Circle);
    EXPECT_NEAR(dc.blobs[0].cx, ds.blobs[0].cx, 0.5);
    EXPECT_NEAR(dc.blobs[0].cy, ds.blobs[0].cy, 0.5);
    EXPECT_THROW(w.with_scene(parse_prompt("a red circle moving left and a blue square standing still on a gray "
                                           "background")),
                 std::runtime_error);
}

TEST(TinyworldWorld, ConfigurableFrameSize) {
    const SceneSpec s = parse_prompt("a blue circle moving down on a gray background");
    World w(s, 1, 96, 80);
    EXPECT_EQ(w.render(0).size(), size_t(96 * 80 * 3));
    EXPECT_DOUBLE_EQ(w.radius(), 10.0);
    EXPECT_NEAR(w.object_state(0, 1).y - w.object_state(0, 0).y, 80.0 / 64.0, 1e-9);  // speed scales with size
    EXPECT_THROW(World(s, 1, 8, 8), std::runtime_error);
}

// ---- evaluator --------------------------------------------------------------------------------------------------

TEST(TinyworldEvaluator, CentroidAndShapeMatchGroundTruth) {
    // Across wrap-around at both borders, the detected centroid follows the true one.
    for (const char* p :
         {"a red circle moving left on a black background", "a blue square moving up quickly on a white background",
          "a white triangle moving right on a gray background"}) {
        World w(parse_prompt(p), 11);
        double max_err = 0;
        for (int f = 0; f < 128; f += 3) {
            FrameDetection d = detect_frame(w.render(f).data(), 64, 64);
            ASSERT_FALSE(d.blobs.empty()) << p << " frame " << f;
            ObjectState st = w.object_state(0, f);
            double ty = st.y;
            if (w.scene().objects[0].shape == Shape::Triangle) {
                ty += st.half_extent / 3.0;  // a triangle's centroid is a third of the way up from its base
            }
            double ex = std::fabs(std::remainder(d.blobs[0].cx - st.x, 64.0));
            double ey = std::fabs(std::remainder(d.blobs[0].cy - ty, 64.0));
            max_err = std::max(max_err, std::max(ex, ey));
            EXPECT_EQ(d.blobs[0].shape, w.scene().objects[0].shape)
                << p << " frame " << f << " fill " << d.blobs[0].fill << " asym " << d.blobs[0].asym;
        }
        std::printf("%s: max centroid error %.3f px\n", p, max_err);
        EXPECT_LT(max_err, 0.75) << p;
    }
}

TEST(TinyworldEvaluator, ScoresTheWorldItselfPerfectly) {
    expect_all_attributes_at_least(score_suite(tinyworld_suite("eval"), 0, 0), 0.98, "clean");
}

TEST(TinyworldEvaluator, RobustToMildBlurAndNoise) {
    expect_all_attributes_at_least(score_suite(tinyworld_suite("eval"), 1.0, 0), 0.98, "blur sigma 1");
    expect_all_attributes_at_least(score_suite(tinyworld_suite("eval"), 0, 6.0), 0.98, "noise sigma 6");
    expect_all_attributes_at_least(score_suite(tinyworld_suite("eval"), 1.0, 6.0), 0.98, "blur 1 + noise 6");
}

TEST(TinyworldEvaluator, RicherPrompts) {
    for (const char* p : {"a red circle moving left slowly on a navy background",
                          "a cyan triangle moving down quickly on a black background",
                          "a magenta square bouncing right on a gray background",
                          "an orange circle bouncing up quickly on a white background",
                          "a red circle moving left and a blue square moving up on a gray background",
                          "a white triangle standing still and a green circle moving right on a navy background"}) {
        Video v = render(p, kSeed, 96);
        blur(&v, 64, 64, 1.0);
        EvalReport r = evaluate_frames(v, 64, 64, p);
        std::printf("%s\n", r.to_json().dump().c_str());
        EXPECT_GE(r.background, 0.98) << p;
        if (r.objects.size() == 1) {
            EXPECT_GE(r.color, 0.98) << p;
            EXPECT_GE(r.shape, 0.98) << p;
            EXPECT_GE(r.direction, 0.98) << p;
            EXPECT_GE(r.object_present, 0.98) << p;
        } else {
            // Two objects occlude each other now and then (a hidden object is honestly absent, its windows lose
            // their motion), so the bar is lower.
            EXPECT_GE(r.color, 0.9) << p;
            EXPECT_GE(r.shape, 0.8) << p;
            EXPECT_GE(r.direction, 0.85) << p;
            EXPECT_GE(r.object_present, 0.9) << p;
        }
    }
}

// A learned decoder also washes colours out and tints them a little.
TEST(TinyworldEvaluator, RobustToContrastLossAndTint) {
    std::vector<EvalReport> reports;
    for (const std::string& p : tinyworld_suite("eval")) {
        Video v = render(p);
        for (auto& f : v) {
            for (size_t i = 0; i < f.size(); ++i) {
                const double tint[3] = {10.0, 0.0, -8.0};
                double x = 128.0 + 0.8 * (f[i] - 128.0) + tint[i % 3];
                f[i] = static_cast<uint8_t>(std::lround(std::min(255.0, std::max(0.0, x))));
            }
        }
        blur(&v, 64, 64, 1.0);
        reports.push_back(evaluate_frames(v, 64, 64, p));
    }
    SuiteScores s{summarize_reports(reports), reports};
    expect_all_attributes_at_least(s, 0.98, "contrast 0.8 + tint + blur 1");
}

// Not a requirement: how the scores degrade under heavier blur, closer to what a small learned VAE does.
TEST(TinyworldEvaluator, HeavierBlurIsReported) {
    for (double sigma : {1.5, 2.0, 2.5}) {
        SuiteScores s = score_suite(tinyworld_suite("eval"), sigma, 4.0);
        const EvalMeans& m = s.summary.all;
        std::printf("[blur sigma %.1f + noise 4] background %.4f color %.4f shape %.4f direction %.4f present %.4f\n",
                    sigma, m.background, m.color, m.shape, m.direction, m.object_present);
        EXPECT_GE(m.color, 0.98);
        EXPECT_GE(m.background, 0.98);
        EXPECT_GE(m.direction, 0.98);
    }
}

TEST(TinyworldEvaluator, OtherFrameSizes) {
    for (auto wh : {std::pair<int, int>{96, 96}, std::pair<int, int>{128, 96}, std::pair<int, int>{32, 32}}) {
        std::vector<EvalReport> reports;
        for (const std::string& p : tinyworld_suite("eval")) {
            reports.push_back(evaluate_frames(render(p, kSeed, 32, wh.first, wh.second), wh.first, wh.second, p));
        }
        EvalMeans m = summarize_reports(reports).all;
        std::printf("%dx%d: background %.3f color %.3f shape %.3f direction %.3f\n", wh.first, wh.second, m.background,
                    m.color, m.shape, m.direction);
        EXPECT_GE(m.overall, 0.98);
        EXPECT_GE(std::min({m.background, m.color, m.shape, m.direction}), wh.first >= 64 ? 0.98 : 0.9);
    }
}

TEST(TinyworldEvaluator, CatchesWrongColour) {
    std::vector<EvalReport> reports;
    for (const std::string& p : tinyworld_suite("eval")) {
        SceneSpec s = parse_prompt(p);
        // Another colour, never the background's.
        Color bc;
        bool has_bc = background_color(s.background, &bc);
        Color c = s.objects[0].color;
        do {
            c = Color((static_cast<int>(c) + 3) % kNumColors);
        } while (has_bc && c == bc);
        s.objects[0].color = c;
        reports.push_back(evaluate_frames(World(s, kSeed).render_frames(0, kFrames), 64, 64, p));
    }
    EvalMeans m = summarize_reports(reports).all;
    std::printf("wrong colour: color %.3f shape %.3f direction %.3f background %.3f\n", m.color, m.shape, m.direction,
                m.background);
    EXPECT_LE(m.color, 0.02);
    EXPECT_GE(m.shape, 0.98);  // the other attributes are still judged right
    EXPECT_GE(m.direction, 0.98);
}

TEST(TinyworldEvaluator, CatchesWrongDirection) {
    std::vector<EvalReport> reports;
    for (const std::string& p : tinyworld_suite("eval")) {
        if (parse_prompt(p).objects[0].motion == Motion::Still) {
            continue;  // reversing a still video changes nothing
        }
        Video v = render(p);
        std::reverse(v.begin(), v.end());
        reports.push_back(evaluate_frames(v, 64, 64, p));
    }
    EvalMeans m = summarize_reports(reports).all;
    std::printf("reversed: %d videos, direction %.3f color %.3f\n", m.videos, m.direction, m.color);
    EXPECT_LE(m.direction, 0.02);
    EXPECT_GE(m.color, 0.98);

    // Moving objects prompted as still, and a still object prompted as moving.
    EvalReport r = evaluate_frames(render("a red circle moving left on a black background"), 64, 64,
                                   "a red circle standing still on a black background");
    EXPECT_LE(r.direction, 0.02);
    r = evaluate_frames(render("a red circle standing still on a black background"), 64, 64,
                        "a red circle moving up on a black background");
    EXPECT_LE(r.direction, 0.02);
    r = evaluate_frames(render("a red circle moving left on a black background"), 64, 64,
                        "a red circle moving up on a black background");
    EXPECT_LE(r.direction, 0.02);
}

TEST(TinyworldEvaluator, CatchesVanishingObject) {
    const std::string p = "a green circle moving right on a gray background";
    Video v = render(p);
    const Rgb bg = background_rgb(Background::Gray);
    for (int f = kFrames / 2; f < kFrames; ++f) {  // second half: background only
        for (size_t i = 0; i < v[f].size(); i += 3) {
            v[f][i] = bg[0];
            v[f][i + 1] = bg[1];
            v[f][i + 2] = bg[2];
        }
    }
    EvalReport r = evaluate_frames(v, 64, 64, p);
    std::printf("vanishing: %s\n", r.to_json().dump().c_str());
    EXPECT_NEAR(r.object_present, 0.5, 0.01);
    EXPECT_NEAR(r.color, 0.5, 0.01);
    EXPECT_NEAR(r.shape, 0.5, 0.01);
    EXPECT_NEAR(r.direction, 0.5, 0.01);
    EXPECT_GE(r.background, 0.98);
}

TEST(TinyworldEvaluator, CatchesWrongBackground) {
    std::vector<EvalReport> reports;
    for (const std::string& p : tinyworld_suite("eval")) {
        SceneSpec s = parse_prompt(p);
        Color bc;
        do {
            s.background = Background((static_cast<int>(s.background) + 1) % kNumBackgrounds);
        } while (background_color(s.background, &bc) && bc == s.objects[0].color);
        reports.push_back(evaluate_frames(World(s, kSeed).render_frames(0, kFrames), 64, 64, p));
    }
    EvalMeans m = summarize_reports(reports).all;
    std::printf("wrong background: background %.3f color %.3f\n", m.background, m.color);
    EXPECT_LE(m.background, 0.02);
    EXPECT_GE(m.color, 0.98);
}

TEST(TinyworldEvaluator, CatchesWrongShapeAndFlicker) {
    EvalReport r = evaluate_frames(render("a red circle moving left on a black background"), 64, 64,
                                   "a red square moving left on a black background");
    EXPECT_LE(r.shape, 0.02);
    r = evaluate_frames(render("a red square moving left on a black background"), 64, 64,
                        "a red triangle moving left on a black background");
    EXPECT_LE(r.shape, 0.02);

    // Colour flicker every other frame shows in the stability numbers.
    SceneSpec a = parse_prompt("a red circle moving left on a black background"), b = a;
    b.objects[0].color = Color::Blue;
    World wa(a, kSeed), wb(b, kSeed);
    Video v;
    for (int f = 0; f < 16; ++f) {
        v.push_back((f % 2 ? wb : wa).render(f));
    }
    r = evaluate_frames(v, 64, 64, "a red circle moving left on a black background");
    EXPECT_NEAR(r.color, 0.5, 1e-9);
    EXPECT_NEAR(r.color_change_rate, 1.0, 1e-9);
    EXPECT_GE(r.direction, 0.98);
}

TEST(TinyworldEvaluator, ReportsAndSummaryJson) {
    const std::string p = "a red triangle moving down on a white background";
    EvalReport r = evaluate_frames(render(p), 64, 64, p);
    nlohmann::json j = r.to_json();
    for (const char* k : {"prompt", "background", "color", "shape", "direction", "overall", "object_present",
                          "area_jitter", "color_change_rate", "shape_change_rate", "frames", "windows"}) {
        EXPECT_TRUE(j.contains(k)) << k;
    }
    EXPECT_EQ(j["windows"], kFrames / 8);
    EvalSummary s = summarize_reports({r, evaluate_frames(render("a red circle moving down on a white background"), 64,
                                                          64, "a red circle moving down on a white background")});
    EXPECT_EQ(s.all.videos, 2);
    EXPECT_EQ(s.heldout.videos, 1);
    EXPECT_EQ(s.seen.videos, 1);
    EXPECT_TRUE(s.to_json()["heldout"].contains("overall"));
    EXPECT_THROW(evaluate_frames(render(p), 64, 64, "a red blob"), std::runtime_error);
    EXPECT_THROW(evaluate_frames(render(p), 32, 64, p), std::runtime_error);  // wrong frame size
}
