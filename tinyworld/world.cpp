#include "tinyworld/world.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace reel {

namespace {

constexpr double kPi = 3.14159265358979323846;

// splitmix64: portable, unlike std:: distributions whose output differs between standard libraries.
uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

double unit_from(uint64_t h) {
    return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);  // 53 bits -> [0, 1)
}

double positive_mod(double a, double m) {
    double r = std::fmod(a, m);
    return r < 0 ? r + m : r;
}

// Is point (px, py) inside the shape centred at (cx, cy)?
bool inside(Shape s, double r, double cx, double cy, double px, double py) {
    double dx = px - cx, dy = py - cy;
    switch (s) {
        case Shape::Circle:
            return dx * dx + dy * dy <= r * r;
        case Shape::Square: {
            double h = shape_half_extent(Shape::Square, r);
            return std::fabs(dx) <= h && std::fabs(dy) <= h;
        }
        case Shape::Triangle: {
            // Apex up at (cx, cy - a), base along y = cy + a from cx - a to cx + a.
            double a = shape_half_extent(Shape::Triangle, r);
            if (dy < -a || dy > a) {
                return false;
            }
            return std::fabs(dx) <= 0.5 * (dy + a);
        }
    }
    return false;
}

int motion_dx(Motion m) {
    return m == Motion::Left ? -1 : m == Motion::Right ? 1 : 0;
}
int motion_dy(Motion m) {
    return m == Motion::Up ? -1 : m == Motion::Down ? 1 : 0;
}

// Position along one axis of a bouncing object: a triangle wave over [ext, size - ext] that starts at
// fraction u of the free range and first moves in direction dir (+1 / -1).
double bounce_position(double u, double travelled, int dir, double size, double ext) {
    double range = std::max(size - 2.0 * ext, 1e-9);
    double m = positive_mod(u * range + travelled, 2.0 * range);
    double p = m <= range ? m : 2.0 * range - m;
    return dir >= 0 ? ext + p : size - ext - p;
}

}  // namespace

double shape_half_extent(Shape s, double r) {
    switch (s) {
        case Shape::Circle:
            return r;
        case Shape::Square:
            return 0.5 * std::sqrt(kPi) * r;  // side^2 = pi r^2
        case Shape::Triangle:
            return std::sqrt(kPi / 2.0) * r;  // (2a)(2a)/2 = pi r^2
    }
    return r;
}

World::World(const SceneSpec& scene, uint64_t seed, int width, int height)
    : scene_(scene), width_(width), height_(height) {
    if (width < 16 || height < 16) {
        throw std::runtime_error("tinyworld: frame size " + std::to_string(width) + "x" + std::to_string(height) +
                                 " is too small, need at least 16x16");
    }
    if (scene.objects.empty()) {
        throw std::runtime_error("tinyworld: a scene needs at least one object");
    }
    radius_ = std::min(width, height) / 8.0;
    px_per_unit_ = std::min(width, height) / 64.0;
    for (size_t i = 0; i < scene.objects.size(); ++i) {
        uint64_t h = splitmix64(seed ^ splitmix64(0x7469776f726c64ULL + i));
        double u = unit_from(splitmix64(h)), v = unit_from(splitmix64(h + 1));
        // Later objects start away from earlier ones where possible, so frame 0 shows them apart.
        for (int attempt = 1; attempt < 32 && i > 0; ++attempt) {
            bool clear = true;
            for (size_t j = 0; j < i; ++j) {
                double dx = std::fabs(u - start_u_[j]) * width, dy = std::fabs(v - start_v_[j]) * height;
                dx = std::min(dx, width - dx);
                dy = std::min(dy, height - dy);
                clear = clear && std::hypot(dx, dy) >= 3.0 * radius_;
            }
            if (clear) {
                break;
            }
            u = unit_from(splitmix64(h + 2 * attempt));
            v = unit_from(splitmix64(h + 2 * attempt + 1));
        }
        start_u_.push_back(u);
        start_v_.push_back(v);
    }
}

ObjectState World::object_state(int object, int64_t frame_index) const {
    const ObjectSpec& o = scene_.objects.at(object);
    ObjectState st;
    st.half_extent = shape_half_extent(o.shape, radius_);
    double travelled = o.speed * px_per_unit_ * static_cast<double>(frame_index);
    int dx = motion_dx(o.motion), dy = motion_dy(o.motion);
    double u = start_u_[object], v = start_v_[object];
    if (o.bounce) {
        double ext = st.half_extent + 1.0;  // one pixel margin keeps anti-aliased edges off the border
        st.x = dx != 0 ? bounce_position(u, travelled, dx, width_, ext) : ext + u * std::max(width_ - 2 * ext, 0.0);
        st.y = dy != 0 ? bounce_position(v, travelled, dy, height_, ext) : ext + v * std::max(height_ - 2 * ext, 0.0);
    } else {
        st.x = positive_mod(u * width_ + dx * travelled, width_);
        st.y = positive_mod(v * height_ + dy * travelled, height_);
    }
    return st;
}

void World::place(int object, int64_t frame_index, double x, double y) {
    const ObjectSpec& o = scene_.objects.at(object);
    if (o.bounce) {
        throw std::runtime_error("tinyworld: World::place needs a wrapping object, not a bouncing one");
    }
    const double travelled = o.speed * px_per_unit_ * static_cast<double>(frame_index);
    start_u_[object] = positive_mod(x - motion_dx(o.motion) * travelled, width_) / width_;
    start_v_[object] = positive_mod(y - motion_dy(o.motion) * travelled, height_) / height_;
}

World World::with_scene(const SceneSpec& scene) const {
    if (scene.objects.size() != scene_.objects.size()) {
        throw std::runtime_error("tinyworld: World::with_scene needs " + std::to_string(scene_.objects.size()) +
                                 " objects, got " + std::to_string(scene.objects.size()));
    }
    World w = *this;
    w.scene_ = scene;
    return w;
}

void World::render(int64_t frame_index, uint8_t* rgb) const {
    const Rgb bg = background_rgb(scene_.background);
    for (int i = 0; i < width_ * height_; ++i) {
        rgb[3 * i + 0] = bg[0];
        rgb[3 * i + 1] = bg[1];
        rgb[3 * i + 2] = bg[2];
    }
    constexpr int kSub = 4;  // 4x4 supersampling: anti-aliased edges make sub-pixel motion smooth
    for (size_t oi = 0; oi < scene_.objects.size(); ++oi) {
        const ObjectSpec& o = scene_.objects[oi];
        const ObjectState st = object_state(static_cast<int>(oi), frame_index);
        const Rgb col = palette_rgb(o.color);
        // Wrapping objects are drawn at every periodic copy that can touch the frame.
        for (int ky = -1; ky <= 1; ++ky) {
            for (int kx = -1; kx <= 1; ++kx) {
                double cx = st.x + kx * width_, cy = st.y + ky * height_;
                int x0 = std::max(0, static_cast<int>(std::floor(cx - st.half_extent)) - 1);
                int x1 = std::min(width_ - 1, static_cast<int>(std::ceil(cx + st.half_extent)) + 1);
                int y0 = std::max(0, static_cast<int>(std::floor(cy - st.half_extent)) - 1);
                int y1 = std::min(height_ - 1, static_cast<int>(std::ceil(cy + st.half_extent)) + 1);
                for (int y = y0; y <= y1; ++y) {
                    for (int x = x0; x <= x1; ++x) {
                        int hits = 0;
                        for (int sy = 0; sy < kSub; ++sy) {
                            for (int sx = 0; sx < kSub; ++sx) {
                                hits += inside(o.shape, radius_, cx, cy, x + (sx + 0.5) / kSub, y + (sy + 0.5) / kSub);
                            }
                        }
                        if (hits == 0) {
                            continue;
                        }
                        double cov = hits / double(kSub * kSub);
                        uint8_t* p = rgb + 3 * (static_cast<size_t>(y) * width_ + x);
                        for (int c = 0; c < 3; ++c) {
                            p[c] = static_cast<uint8_t>(std::lround(p[c] * (1.0 - cov) + col[c] * cov));
                        }
                    }
                }
            }
        }
    }
}

std::vector<uint8_t> World::render(int64_t frame_index) const {
    std::vector<uint8_t> out(static_cast<size_t>(width_) * height_ * 3);
    render(frame_index, out.data());
    return out;
}

std::vector<std::vector<uint8_t>> World::render_frames(int64_t start, int count) const {
    std::vector<std::vector<uint8_t>> out;
    out.reserve(count);
    for (int i = 0; i < count; ++i) {
        out.push_back(render(start + i));
    }
    return out;
}

}  // namespace reel
