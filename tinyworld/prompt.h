// tinyworld prompt grammar: the scene description that drives the procedural world and the evaluator.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace reel {

enum class Color { Red, Green, Blue, Yellow, Cyan, Magenta, Orange, White };
enum class Shape { Circle, Square, Triangle };
enum class Motion { Still, Left, Right, Up, Down };
enum class Background { Black, Gray, Navy, White };

constexpr int kNumColors = 8;
constexpr int kNumShapes = 3;
constexpr int kNumMotions = 5;
constexpr int kNumBackgrounds = 4;

// Speeds in pixels per frame at 64x64 (the world scales them with the frame size).
constexpr double kSpeedSlow = 0.5;
constexpr double kSpeedNormal = 1.0;
constexpr double kSpeedFast = 2.0;

struct ObjectSpec {
    Color color = Color::Red;
    Shape shape = Shape::Circle;
    Motion motion = Motion::Still;
    double speed = 0.0;   // px/frame at 64x64; 0 for Still
    bool bounce = false;  // bounce off the borders instead of wrapping around
};

struct SceneSpec {
    std::vector<ObjectSpec> objects;  // 1 or 2, distinct colours, drawn in order
    Background background = Background::Black;
};

using Rgb = std::array<uint8_t, 3>;

// Fixed palettes: training data and the evaluator depend on these exact values, never change them.
Rgb palette_rgb(Color c);
Rgb background_rgb(Background b);
// The object colour a background is painted with, if any (white background == white object colour).
bool background_color(Background b, Color* out);

const char* color_name(Color c);
const char* shape_name(Shape s);
const char* motion_name(Motion m);  // "still", "left", ...
const char* background_name(Background b);

// Parses a prompt of the grammar in grammar_help(); case-insensitive, extra spaces and a trailing period allowed.
// Throws std::runtime_error naming the first problem word, followed by the grammar.
SceneSpec parse_prompt(const std::string& prompt);
std::string grammar_help();
// The canonical prompt of a scene; parse_prompt(to_prompt(s)) == s. Throws for speeds without a word.
std::string to_prompt(const SceneSpec& scene);

bool operator==(const ObjectSpec& a, const ObjectSpec& b);
bool operator==(const SceneSpec& a, const SceneSpec& b);

}  // namespace reel
