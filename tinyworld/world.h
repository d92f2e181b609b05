// tinyworld: a procedural video world. Flat-coloured shapes move over a plain background at 16 fps, forever
// (wrapping around the borders, or bouncing off them). Known ground truth makes generated videos scorable.
#pragma once

#include <cstdint>
#include <vector>

#include "tinyworld/prompt.h"

namespace reel {

constexpr int kTinyworldFps = 16;
constexpr int kTinyworldSize = 64;  // default width and height, see docs/tinyworld.md

// Geometry of one object in one frame, in pixels; (x, y) is the centre of the shape's bounding box.
struct ObjectState {
    double x = 0.0, y = 0.0;
    double half_extent = 0.0;  // half the bounding box side
};

class World {
  public:
    // Deterministic in (scene, seed, width, height); the seed only sets the start positions.
    World(const SceneSpec& scene, uint64_t seed, int width = kTinyworldSize, int height = kTinyworldSize);

    // rgb: [height, width, 3] uint8, row-major. Any frame index (>= 0 or not) can be rendered directly.
    void render(int64_t frame_index, uint8_t* rgb) const;
    std::vector<uint8_t> render(int64_t frame_index) const;
    // frames [start, start + count), each [height, width, 3]
    std::vector<std::vector<uint8_t>> render_frames(int64_t start, int count) const;

    ObjectState object_state(int object, int64_t frame_index) const;
    // Moves the object's start so that at `frame_index` its centre is at (x, y) pixels: the world's own
    // continuation of a state seen elsewhere (a generated video's object, say). Wrapping motion only; a bouncing
    // object's place does not fix its heading, so that throws.
    void place(int object, int64_t frame_index, double x, double y);
    // The same world (start positions, placements) drawing another scene with as many objects: the clip with its
    // shapes or colours changed and everything else kept, a counterfactual the training tool contrasts with.
    World with_scene(const SceneSpec& scene) const;

    const SceneSpec& scene() const { return scene_; }
    int width() const { return width_; }
    int height() const { return height_; }
    // Object "radius": min(width, height) / 8, so an object looks the same at every frame size.
    double radius() const { return radius_; }

  private:
    SceneSpec scene_;
    int width_, height_;
    double radius_;
    double px_per_unit_;                     // speed scale: min(width, height) / 64
    std::vector<double> start_u_, start_v_;  // per object, in [0, 1)
};

// Half the bounding-box side of a shape of "radius" r. Shapes have equal areas (pi r^2), so object size does not
// give the shape away and area statistics are shape-independent.
double shape_half_extent(Shape s, double r);

}  // namespace reel
