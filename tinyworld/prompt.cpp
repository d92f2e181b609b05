#include "tinyworld/prompt.h"

#include <cctype>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace reel {

namespace {

const char* const kColorNames[kNumColors] = {"red", "green", "blue", "yellow", "cyan", "magenta", "orange", "white"};
const char* const kShapeNames[kNumShapes] = {"circle", "square", "triangle"};
const char* const kMotionNames[kNumMotions] = {"still", "left", "right", "up", "down"};
const char* const kBackgroundNames[kNumBackgrounds] = {"black", "gray", "navy", "white"};

// Saturated, well separated colours: every object colour is >= 130 (L2, RGB) from every background it may sit on and
// >= 100 from every other object colour, so mild blur and noise never make one look like another.
const Rgb kPalette[kNumColors] = {
    {220, 30, 40},    // red
    {40, 200, 60},    // green
    {40, 90, 240},    // blue
    {240, 230, 40},   // yellow
    {50, 220, 230},   // cyan
    {220, 60, 220},   // magenta
    {255, 128, 0},    // orange
    {245, 245, 245},  // white
};
const Rgb kBackgrounds[kNumBackgrounds] = {
    {10, 10, 10},     // black
    {128, 128, 128},  // gray
    {20, 30, 100},    // navy
    {245, 245, 245},  // white
};

template <int N>
int find_word(const char* const (&names)[N], const std::string& w) {
    for (int i = 0; i < N; ++i) {
        if (w == names[i]) {
            return i;
        }
    }
    return -1;
}

std::string join(const char* const* names, int n) {
    std::string s;
    for (int i = 0; i < n; ++i) {
        s += (i ? ", " : "");
        s += names[i];
    }
    return s;
}

double speed_of_word(const std::string& w) {
    if (w == "slowly") {
        return kSpeedSlow;
    }
    if (w == "quickly") {
        return kSpeedFast;
    }
    return -1.0;
}

// Cursor over the lower-cased words of a prompt; every error names the word it stopped at.
class Parser {
  public:
    Parser(const std::string& prompt) : prompt_(prompt) {
        std::string s;
        for (char ch : prompt) {
            s += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        }
        // Trailing period (and whitespace around it) is allowed; commas are treated as spaces.
        while (!s.empty() && (std::isspace(static_cast<unsigned char>(s.back())) || s.back() == '.')) {
            s.pop_back();
        }
        for (char& ch : s) {
            if (ch == ',') {
                ch = ' ';
            }
        }
        std::istringstream in(s);
        std::string w;
        while (in >> w) {
            words_.push_back(w == "grey" ? "gray" : w);  // British spelling is a common slip
        }
    }

    bool at_end() const { return pos_ >= words_.size(); }
    const std::string& peek() const { return words_[pos_]; }
    bool accept(const char* w) {
        if (!at_end() && peek() == w) {
            ++pos_;
            return true;
        }
        return false;
    }

    [[noreturn]] void fail(const std::string& expected) const {
        std::string msg = "tinyworld: cannot parse prompt \"" + prompt_ + "\": ";
        if (at_end()) {
            msg += "prompt ends";
            if (pos_ > 0) {
                msg += " after \"" + words_[pos_ - 1] + "\"";
            }
            msg += ", expected " + expected;
        } else {
            msg += "unexpected word \"" + peek() + "\" (word " + std::to_string(pos_ + 1) + "), expected " + expected;
        }
        throw std::runtime_error(msg + "\n" + grammar_help());
    }

    void expect(const char* w) {
        if (!accept(w)) {
            fail(std::string("\"") + w + "\"");
        }
    }

    template <int N>
    int expect_one_of(const char* const (&names)[N], const char* what) {
        int i = at_end() ? -1 : find_word(names, peek());
        if (i < 0) {
            fail(std::string(what) + " (" + join(names, N) + ")");
        }
        ++pos_;
        return i;
    }

    // An optional speed word; `have` tells whether one was already given for this object.
    void accept_speed(double* speed, bool* have) {
        if (at_end()) {
            return;
        }
        double s = speed_of_word(peek());
        if (s < 0) {
            return;
        }
        if (*have) {
            fail("at most one speed word per object");
        }
        *speed = s;
        *have = true;
        ++pos_;
    }

    ObjectSpec object() {
        ObjectSpec o;
        if (!accept("a")) {
            accept("an");
        }
        o.color = static_cast<Color>(expect_one_of(kColorNames, "a colour"));
        o.shape = static_cast<Shape>(expect_one_of(kShapeNames, "a shape"));
        double speed = kSpeedNormal;
        bool have_speed = false;
        accept_speed(&speed, &have_speed);
        if (!have_speed && accept("standing")) {
            expect("still");
            o.motion = Motion::Still;
            o.speed = 0.0;
            return o;
        }
        if (accept("bouncing")) {
            o.bounce = true;
        } else if (!accept("moving")) {
            fail("a motion (\"moving <direction>\", \"bouncing <direction>\" or \"standing still\")");
        }
        accept_speed(&speed, &have_speed);
        if (at_end() || find_word(kMotionNames, peek()) <= 0) {
            fail("a direction (left, right, up, down)");
        }
        o.motion = static_cast<Motion>(find_word(kMotionNames, peek()));
        ++pos_;
        accept_speed(&speed, &have_speed);
        o.speed = speed;
        return o;
    }

    SceneSpec scene() {
        SceneSpec s;
        s.objects.push_back(object());
        if (accept("and")) {
            s.objects.push_back(object());
        }
        if (!accept("on")) {
            fail(s.objects.size() == 1 ? "\"and\" or \"on\"" : "\"on\"");
        }
        if (!accept("a")) {
            accept("an");
        }
        s.background = static_cast<Background>(expect_one_of(kBackgroundNames, "a background"));
        expect("background");
        if (!at_end()) {
            fail("the end of the prompt");
        }
        for (const ObjectSpec& o : s.objects) {
            Color bc;
            if (background_color(s.background, &bc) && bc == o.color) {
                throw std::runtime_error("tinyworld: cannot parse prompt \"" + prompt_ + "\": a " +
                                         color_name(o.color) + " object on a " + background_name(s.background) +
                                         " background would be invisible; object and background colours must "
                                         "differ\n" +
                                         grammar_help());
            }
        }
        if (s.objects.size() == 2 && s.objects[0].color == s.objects[1].color) {
            throw std::runtime_error("tinyworld: cannot parse prompt \"" + prompt_ +
                                     "\": the two objects must have different colours (both are " +
                                     color_name(s.objects[0].color) + ") so they can be told apart\n" + grammar_help());
        }
        return s;
    }

  private:
    std::string prompt_;
    std::vector<std::string> words_;
    size_t pos_ = 0;
};

}  // namespace

Rgb palette_rgb(Color c) {
    return kPalette[static_cast<int>(c)];
}

Rgb background_rgb(Background b) {
    return kBackgrounds[static_cast<int>(b)];
}

bool background_color(Background b, Color* out) {
    if (b == Background::White) {
        *out = Color::White;
        return true;
    }
    return false;
}

const char* color_name(Color c) {
    return kColorNames[static_cast<int>(c)];
}
const char* shape_name(Shape s) {
    return kShapeNames[static_cast<int>(s)];
}
const char* motion_name(Motion m) {
    return kMotionNames[static_cast<int>(m)];
}
const char* background_name(Background b) {
    return kBackgroundNames[static_cast<int>(b)];
}

std::string grammar_help() {
    return "tinyworld prompt grammar (case-insensitive, a trailing period is allowed):\n"
           "  prompt     := object [\"and\" object] \"on a\" background \"background\"\n"
           "  object     := \"a\"|\"an\" color shape motion\n"
           "  motion     := \"standing still\"\n"
           "              | [speed] (\"moving\"|\"bouncing\") [speed] direction [speed]   (one speed word at most)\n"
           "  color      := " +
           join(kColorNames, kNumColors) +
           "\n"
           "  shape      := " +
           join(kShapeNames, kNumShapes) +
           "\n"
           "  direction  := left, right, up, down\n"
           "  speed      := slowly (0.5 px/frame), quickly (2 px/frame); default 1 px/frame\n"
           "  background := " +
           join(kBackgroundNames, kNumBackgrounds) +
           "\n"
           "  objects wrap around the borders; \"bouncing\" objects bounce off them instead.\n"
           "  an object's colour must differ from the background's, two objects must differ in colour.\n"
           "  example: \"a red circle moving left on a black background\"";
}

SceneSpec parse_prompt(const std::string& prompt) {
    Parser p(prompt);
    return p.scene();
}

std::string to_prompt(const SceneSpec& scene) {
    if (scene.objects.empty() || scene.objects.size() > 2) {
        throw std::runtime_error("tinyworld: to_prompt: a scene has 1 or 2 objects, found " +
                                 std::to_string(scene.objects.size()));
    }
    std::string s;
    for (size_t i = 0; i < scene.objects.size(); ++i) {
        const ObjectSpec& o = scene.objects[i];
        if (i) {
            s += " and ";
        }
        s += o.color == Color::Orange ? "an " : "a ";
        s += std::string(color_name(o.color)) + " " + shape_name(o.shape);
        if (o.motion == Motion::Still) {
            s += " standing still";
            continue;
        }
        s += o.bounce ? " bouncing " : " moving ";
        s += motion_name(o.motion);
        if (std::fabs(o.speed - kSpeedSlow) < 1e-9) {
            s += " slowly";
        } else if (std::fabs(o.speed - kSpeedFast) < 1e-9) {
            s += " quickly";
        } else if (std::fabs(o.speed - kSpeedNormal) > 1e-9) {
            throw std::runtime_error("tinyworld: to_prompt: speed " + std::to_string(o.speed) +
                                     " px/frame has no word (0.5 slowly, 1 default, 2 quickly)");
        }
    }
    s += std::string(" on a ") + background_name(scene.background) + " background";
    return s;
}

bool operator==(const ObjectSpec& a, const ObjectSpec& b) {
    return a.color == b.color && a.shape == b.shape && a.motion == b.motion && a.speed == b.speed &&
           a.bounce == b.bounce;
}

bool operator==(const SceneSpec& a, const SceneSpec& b) {
    if (a.background != b.background || a.objects.size() != b.objects.size()) {
        return false;
    }
    for (size_t i = 0; i < a.objects.size(); ++i) {
        if (!(a.objects[i] == b.objects[i])) {
            return false;
        }
    }
    return true;
}

}  // namespace reel
