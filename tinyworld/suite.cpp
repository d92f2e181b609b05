#include "tinyworld/suite.h"

#include <stdexcept>

namespace reel {

namespace {

SceneSpec single(Color c, Shape s, Motion m, Background b) {
    SceneSpec scene;
    ObjectSpec o;
    o.color = c;
    o.shape = s;
    o.motion = m;
    o.speed = m == Motion::Still ? 0.0 : kSpeedNormal;
    scene.objects.push_back(o);
    scene.background = b;
    return scene;
}

bool same_as_background(Color c, Background b) {
    Color bc;
    return background_color(b, &bc) && bc == c;
}

bool heldout_pair(Color c, Shape s) {
    for (const auto& p : tinyworld_heldout_pairs()) {
        if (p.first == c && p.second == s) {
            return true;
        }
    }
    return false;
}

// Every seen single-object scene at default speed, in (colour, shape, motion, background) order.
std::vector<SceneSpec> ordinary_scenes() {
    std::vector<SceneSpec> out;
    for (int c = 0; c < kNumColors; ++c) {
        for (int s = 0; s < kNumShapes; ++s) {
            if (heldout_pair(Color(c), Shape(s))) {
                continue;
            }
            for (int m = 0; m < kNumMotions; ++m) {
                for (int b = 0; b < kNumBackgrounds; ++b) {
                    if (!same_as_background(Color(c), Background(b))) {
                        out.push_back(single(Color(c), Shape(s), Motion(m), Background(b)));
                    }
                }
            }
        }
    }
    return out;
}

}  // namespace

std::vector<std::pair<Color, Shape>> tinyworld_heldout_pairs() {
    // One pair per colour at most and none with white (white already has one background fewer).
    return {{Color::Red, Shape::Triangle},
            {Color::Blue, Shape::Square},
            {Color::Yellow, Shape::Circle},
            {Color::Green, Shape::Triangle}};
}

bool is_heldout(const SceneSpec& scene) {
    for (const ObjectSpec& o : scene.objects) {
        if (heldout_pair(o.color, o.shape)) {
            return true;
        }
    }
    return false;
}

std::vector<std::string> tinyworld_suite(const std::string& which) {
    std::vector<std::string> out;
    if (which == "heldout_pairs") {
        for (const auto& p : tinyworld_heldout_pairs()) {
            out.push_back(std::string(color_name(p.first)) + " " + shape_name(p.second));
        }
    } else if (which == "train") {
        for (const SceneSpec& s : ordinary_scenes()) {
            out.push_back(to_prompt(s));
        }
    } else if (which == "eval") {
        // Held-out pairs: every motion, the background rotating so all four appear.
        const auto pairs = tinyworld_heldout_pairs();
        for (size_t i = 0; i < pairs.size(); ++i) {
            for (int m = 0; m < kNumMotions; ++m) {
                Background b = Background((i + m) % kNumBackgrounds);
                out.push_back(to_prompt(single(pairs[i].first, pairs[i].second, Motion(m), b)));
            }
        }
        // Ordinary: 28 scenes spread evenly over the ordered list of seen scenes.
        const std::vector<SceneSpec> all = ordinary_scenes();
        constexpr int kOrdinary = 28;
        for (int k = 0; k < kOrdinary; ++k) {
            out.push_back(to_prompt(all[(k * all.size()) / kOrdinary + 3]));
        }
    } else {
        throw std::runtime_error("tinyworld: unknown prompt suite \"" + which +
                                 "\" (expected train, eval or heldout_pairs)");
    }
    return out;
}

}  // namespace reel
