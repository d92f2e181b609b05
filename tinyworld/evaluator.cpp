#include "tinyworld/evaluator.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "tinyworld/suite.h"

namespace reel {

namespace {

constexpr double kPi = 3.14159265358979323846;

// A pixel closer than this (L2, RGB) to the background is background; the nearest object colour is >= 130 away.
constexpr double kBackgroundDistance = 30.0;
// Fraction of the way from the background towards an object colour at which a pixel counts as object. 0.5 keeps
// the area of a blurred shape unchanged (its edge ramp is cut in the middle), so fill ratios survive blur.
constexpr double kObjectThreshold = 0.5;
// Blobs smaller than this share of a nominal object (pi r^2, r = min(w, h) / 8) are specks, not objects.
constexpr double kMinAreaShare = 0.15;

// Shape decision (see docs/tinyworld.md): triangles are lopsided (centroid 1/6 of the box below its centre) and
// half-filled; squares fill their box, circles fill pi/4 of it. Thresholds sit between the rendered values and
// leave room for the rounding a blurred rendering or a learned decoder adds.
constexpr double kTriangleAsym = 0.08;
constexpr double kTriangleFill = 0.62;
constexpr double kSquareFill = 0.87;

double dist2(const uint8_t* p, const Rgb& c) {
    double d0 = p[0] - c[0], d1 = p[1] - c[1], d2 = p[2] - c[2];
    return d0 * d0 + d1 * d1 + d2 * d2;
}

// Minimal-image difference of two positions on a circle of circumference n: in (-n/2, n/2].
double wrap_diff(double a, double b, double n) {
    double d = std::fmod(a - b, n);
    if (d > n / 2) {
        d -= n;
    } else if (d <= -n / 2) {
        d += n;
    }
    return d;
}

// Start of the largest circular run of unoccupied cells, shifted past its end: the coordinate origin that
// makes a wrapped object contiguous. Returns 0 when every cell is occupied.
int unwrap_origin(const std::vector<char>& occupied) {
    int n = static_cast<int>(occupied.size());
    int best_len = 0, best_end = 0;
    // Walk twice around so runs crossing the end are measured whole.
    int run = 0;
    for (int i = 0; i < 2 * n; ++i) {
        if (!occupied[i % n]) {
            run = std::min(run + 1, n);
            if (run > best_len) {
                best_len = run;
                best_end = (i + 1) % n;
            }
        } else {
            run = 0;
        }
    }
    return best_len == 0 ? 0 : best_end;
}

Shape classify_shape(double fill, double asym) {
    if (asym > kTriangleAsym || fill < kTriangleFill) {
        return Shape::Triangle;
    }
    return fill > kSquareFill ? Shape::Square : Shape::Circle;
}

// Features of one connected set of pixels (indices into the frame), with wrap-around undone.
Blob measure_blob(const std::vector<int>& pixels, const std::vector<int8_t>& label, int w, int h) {
    Blob b;
    b.area = static_cast<int>(pixels.size());
    int counts[kNumColors] = {0};
    std::vector<char> cols(w, 0), rows(h, 0);
    for (int p : pixels) {
        counts[label[p]]++;
        cols[p % w] = 1;
        rows[p / w] = 1;
    }
    b.color = Color(std::max_element(counts, counts + kNumColors) - counts);
    const int ox = unwrap_origin(cols), oy = unwrap_origin(rows);
    double sx = 0, sy = 0;
    int minx = w, maxx = -1, miny = h, maxy = -1;
    for (int p : pixels) {
        int x = (p % w - ox + w) % w, y = (p / w - oy + h) % h;
        sx += x;
        sy += y;
        minx = std::min(minx, x);
        maxx = std::max(maxx, x);
        miny = std::min(miny, y);
        maxy = std::max(maxy, y);
    }
    const double mx = sx / b.area, my = sy / b.area;
    const double bw = maxx - minx + 1, bh = maxy - miny + 1;
    b.fill = b.area / (bw * bh);
    b.asym = std::max(std::fabs(mx - 0.5 * (minx + maxx)) / bw, std::fabs(my - 0.5 * (miny + maxy)) / bh);
    b.shape = classify_shape(b.fill, b.asym);
    b.cx = std::fmod(mx + ox, static_cast<double>(w));
    b.cy = std::fmod(my + oy, static_cast<double>(h));
    return b;
}

Background detect_background(const uint8_t* rgb, int w, int h) {
    int votes[kNumBackgrounds] = {0};
    auto vote = [&](int x, int y) {
        const uint8_t* p = rgb + 3 * (static_cast<size_t>(y) * w + x);
        int best = 0;
        for (int b = 1; b < kNumBackgrounds; ++b) {
            if (dist2(p, background_rgb(Background(b))) < dist2(p, background_rgb(Background(best)))) {
                best = b;
            }
        }
        votes[best]++;
    };
    for (int x = 0; x < w; ++x) {
        vote(x, 0);
        vote(x, h - 1);
    }
    for (int y = 1; y < h - 1; ++y) {
        vote(0, y);
        vote(w - 1, y);
    }
    return Background(std::max_element(votes, votes + kNumBackgrounds) - votes);
}

// Direction of one window from per-frame displacements: the prompt's motion if it matches, for scoring.
Motion window_motion(const std::vector<double>& dx, const std::vector<double>& dy, bool bounce, double still) {
    double sx = 0, sy = 0, ax = 0, ay = 0;
    for (size_t i = 0; i < dx.size(); ++i) {
        sx += dx[i];
        sy += dy[i];
        ax += std::fabs(dx[i]);
        ay += std::fabs(dy[i]);
    }
    if (bounce) {
        // A bounce can reverse inside the window: only the axis of travel is reliable. Report it as the
        // direction along that axis of the net displacement, or of the first step when it cancels out.
        if (std::max(ax, ay) < still) {
            return Motion::Still;
        }
        if (ax >= ay) {
            return (sx != 0 ? sx : dx[0]) < 0 ? Motion::Left : Motion::Right;
        }
        return (sy != 0 ? sy : dy[0]) < 0 ? Motion::Up : Motion::Down;
    }
    if (std::hypot(sx, sy) < still) {
        return Motion::Still;
    }
    if (std::fabs(sx) >= std::fabs(sy)) {
        return sx < 0 ? Motion::Left : Motion::Right;
    }
    return sy < 0 ? Motion::Up : Motion::Down;
}

bool same_axis(Motion a, Motion b) {
    auto horizontal = [](Motion m) { return m == Motion::Left || m == Motion::Right; };
    auto vertical = [](Motion m) { return m == Motion::Up || m == Motion::Down; };
    return (horizontal(a) && horizontal(b)) || (vertical(a) && vertical(b));
}

}  // namespace

FrameDetection detect_frame(const uint8_t* rgb, int w, int h) {
    FrameDetection fd;
    fd.background = detect_background(rgb, w, h);
    const Rgb bg = background_rgb(fd.background);
    Color bg_color = Color::Red;
    const bool bg_is_color = background_color(fd.background, &bg_color);

    // Label each pixel with the object colour whose line from the background explains it best: blur and
    // anti-aliasing mix an object with the background, so edge pixels lie on that line (a red edge over white
    // is pink, which is nearer orange than red as a point but exactly on the white-red line).
    const int n = w * h;
    std::vector<int8_t> label(n, -1);
    for (int i = 0; i < n; ++i) {
        const uint8_t* p = rgb + 3 * static_cast<size_t>(i);
        if (dist2(p, bg) < kBackgroundDistance * kBackgroundDistance) {
            continue;
        }
        const double d[3] = {double(p[0]) - bg[0], double(p[1]) - bg[1], double(p[2]) - bg[2]};
        int best = -1;
        double best_res = 0, best_t = 0;
        for (int c = 0; c < kNumColors; ++c) {
            if (bg_is_color && Color(c) == bg_color) {
                continue;
            }
            const Rgb col = palette_rgb(Color(c));
            const double e[3] = {double(col[0]) - bg[0], double(col[1]) - bg[1], double(col[2]) - bg[2]};
            const double ee = e[0] * e[0] + e[1] * e[1] + e[2] * e[2];
            const double t = (d[0] * e[0] + d[1] * e[1] + d[2] * e[2]) / ee;
            if (t <= 0) {
                continue;
            }
            const double tc = std::min(t, 1.0);
            const double r0 = d[0] - tc * e[0], r1 = d[1] - tc * e[1], r2 = d[2] - tc * e[2];
            const double res = r0 * r0 + r1 * r1 + r2 * r2;
            if (best < 0 || res < best_res) {
                best = c;
                best_res = res;
                best_t = t;
            }
        }
        if (best >= 0 && best_t >= kObjectThreshold) {
            label[i] = static_cast<int8_t>(best);
            fd.color_pixels[best]++;
        }
    }

    // 8-connected components of object pixels on the torus (objects wrap around the borders).
    const double r = std::min(w, h) / 8.0;
    const int min_area = std::max(4, static_cast<int>(kMinAreaShare * kPi * r * r));
    std::vector<char> seen(n, 0);
    std::vector<int> stack, pixels;
    for (int start = 0; start < n; ++start) {
        if (label[start] < 0 || seen[start]) {
            continue;
        }
        pixels.clear();
        stack.assign(1, start);
        seen[start] = 1;
        while (!stack.empty()) {
            int p = stack.back();
            stack.pop_back();
            pixels.push_back(p);
            int x = p % w, y = p / w;
            for (int oy = -1; oy <= 1; ++oy) {
                for (int ox = -1; ox <= 1; ++ox) {
                    int q = ((y + oy + h) % h) * w + (x + ox + w) % w;
                    if (label[q] >= 0 && !seen[q]) {
                        seen[q] = 1;
                        stack.push_back(q);
                    }
                }
            }
        }
        if (static_cast<int>(pixels.size()) >= min_area) {
            fd.blobs.push_back(measure_blob(pixels, label, w, h));
        }
    }
    std::stable_sort(fd.blobs.begin(), fd.blobs.end(), [](const Blob& a, const Blob& b) { return a.area > b.area; });
    return fd;
}

EvalReport evaluate_frames(const std::vector<std::vector<uint8_t>>& frames,
                           int w,
                           int h,
                           const std::string& prompt,
                           const EvalOptions& options) {
    const SceneSpec scene = parse_prompt(prompt);
    if (w < 8 || h < 8) {
        throw std::runtime_error("tinyworld evaluator: frame size " + std::to_string(w) + "x" + std::to_string(h) +
                                 " is too small");
    }
    if (options.window < 2) {
        throw std::runtime_error("tinyworld evaluator: window must be >= 2 frames, got " +
                                 std::to_string(options.window));
    }
    EvalReport rep;
    rep.prompt = prompt;
    rep.frames = static_cast<int>(frames.size());
    const size_t frame_bytes = static_cast<size_t>(w) * h * 3;
    for (size_t i = 0; i < frames.size(); ++i) {
        if (frames[i].size() != frame_bytes) {
            throw std::runtime_error("tinyworld evaluator: frame " + std::to_string(i) + " has " +
                                     std::to_string(frames[i].size()) + " bytes, expected " +
                                     std::to_string(frame_bytes) + " (" + std::to_string(w) + "x" + std::to_string(h) +
                                     "x3)");
        }
        rep.detections.push_back(detect_frame(frames[i].data(), w, h));
    }
    const int nf = rep.frames;
    if (nf == 0) {
        rep.objects.resize(scene.objects.size());
        return rep;
    }

    int bg_ok = 0;
    for (const FrameDetection& fd : rep.detections) {
        bg_ok += fd.background == scene.background;
    }
    rep.background = double(bg_ok) / nf;

    const bool multi = scene.objects.size() > 1;
    const double r = std::min(w, h) / 8.0;
    const double min_area = std::max(4.0, kMinAreaShare * kPi * r * r);
    const double still = options.still_px_per_frame * std::min(w, h) / 64.0 * (options.window - 1);
    const int win = std::min(options.window, nf);
    const int nwin = nf >= 2 ? nf / win : 0;
    rep.windows = nwin;

    double pair_count = 0, area_jitter = 0, color_changes = 0, shape_changes = 0;
    for (const ObjectSpec& spec : scene.objects) {
        // The object's blob in each frame: the largest one (single object), or the largest of its colour.
        std::vector<const Blob*> track(nf, nullptr);
        std::vector<char> present(nf, 0);
        for (int f = 0; f < nf; ++f) {
            const FrameDetection& fd = rep.detections[f];
            for (const Blob& b : fd.blobs) {
                if (!multi || b.color == spec.color) {
                    track[f] = &b;
                    break;
                }
            }
            // Two overlapping objects form one blob: the hidden one's colour still counts as present.
            present[f] = multi ? fd.color_pixels[static_cast<int>(spec.color)] >= min_area : track[f] != nullptr;
        }
        ObjectScores os;
        os.spec = spec;
        int n_present = 0, n_color = 0, n_shape = 0;
        for (int f = 0; f < nf; ++f) {
            n_present += present[f];
            n_color += multi ? present[f] : (track[f] && track[f]->color == spec.color);
            n_shape += track[f] && track[f]->shape == spec.shape;
        }
        os.present = double(n_present) / nf;
        os.color = double(n_color) / nf;
        os.shape = double(n_shape) / nf;

        int dir_ok = 0;
        for (int k = 0; k < nwin; ++k) {
            std::vector<double> dx, dy;
            bool complete = true;
            for (int f = k * win; f + 1 < (k + 1) * win; ++f) {
                if (!track[f] || !track[f + 1]) {
                    complete = false;
                    break;
                }
                dx.push_back(wrap_diff(track[f + 1]->cx, track[f]->cx, w));
                dy.push_back(wrap_diff(track[f + 1]->cy, track[f]->cy, h));
            }
            if (!complete) {
                continue;  // the object vanished inside the window: its motion is wrong
            }
            Motion m = window_motion(dx, dy, spec.bounce, still * (win - 1) / (options.window - 1));
            dir_ok += spec.bounce && spec.motion != Motion::Still ? same_axis(m, spec.motion) : m == spec.motion;
        }
        os.direction = nwin ? double(dir_ok) / nwin : 0.0;

        for (int f = 0; f + 1 < nf; ++f) {
            if (multi) {
                color_changes += present[f] != present[f + 1];
                pair_count += 1;
                if (track[f] && track[f + 1]) {
                    area_jitter += std::fabs(track[f + 1]->area - track[f]->area) / double(w * h);
                    shape_changes += track[f]->shape != track[f + 1]->shape;
                }
            } else if (track[f] && track[f + 1]) {
                pair_count += 1;
                area_jitter += std::fabs(track[f + 1]->area - track[f]->area) / double(w * h);
                color_changes += track[f]->color != track[f + 1]->color;
                shape_changes += track[f]->shape != track[f + 1]->shape;
            }
        }
        rep.objects.push_back(os);
    }
    const double nobj = static_cast<double>(rep.objects.size());
    for (const ObjectScores& os : rep.objects) {
        rep.color += os.color / nobj;
        rep.shape += os.shape / nobj;
        rep.direction += os.direction / nobj;
        rep.object_present += os.present / nobj;
    }
    if (pair_count > 0) {
        rep.area_jitter = area_jitter / pair_count;
        rep.color_change_rate = color_changes / pair_count;
        rep.shape_change_rate = shape_changes / pair_count;
    }
    rep.overall = (rep.background + rep.color + rep.shape + rep.direction) / 4.0;
    return rep;
}

nlohmann::json EvalReport::to_json() const {
    nlohmann::json j;
    j["prompt"] = prompt;
    j["frames"] = frames;
    j["windows"] = windows;
    j["background"] = background;
    j["color"] = color;
    j["shape"] = shape;
    j["direction"] = direction;
    j["overall"] = overall;
    j["object_present"] = object_present;
    j["area_jitter"] = area_jitter;
    j["color_change_rate"] = color_change_rate;
    j["shape_change_rate"] = shape_change_rate;
    if (objects.size() > 1) {
        nlohmann::json arr = nlohmann::json::array();
        for (const ObjectScores& os : objects) {
            arr.push_back({{"color_name", color_name(os.spec.color)},
                           {"shape_name", shape_name(os.spec.shape)},
                           {"motion", motion_name(os.spec.motion)},
                           {"present", os.present},
                           {"color", os.color},
                           {"shape", os.shape},
                           {"direction", os.direction}});
        }
        j["objects"] = arr;
    }
    return j;
}

namespace {

void add_report(EvalMeans* m, const EvalReport& r) {
    m->videos++;
    m->background += r.background;
    m->color += r.color;
    m->shape += r.shape;
    m->direction += r.direction;
    m->overall += r.overall;
    m->object_present += r.object_present;
    m->area_jitter += r.area_jitter;
    m->color_change_rate += r.color_change_rate;
    m->shape_change_rate += r.shape_change_rate;
}

void finish(EvalMeans* m) {
    if (m->videos == 0) {
        return;
    }
    double n = m->videos;
    for (double* v : {&m->background, &m->color, &m->shape, &m->direction, &m->overall, &m->object_present,
                      &m->area_jitter, &m->color_change_rate, &m->shape_change_rate}) {
        *v /= n;
    }
}

nlohmann::json means_json(const EvalMeans& m) {
    return {{"videos", m.videos},
            {"background", m.background},
            {"color", m.color},
            {"shape", m.shape},
            {"direction", m.direction},
            {"overall", m.overall},
            {"object_present", m.object_present},
            {"area_jitter", m.area_jitter},
            {"color_change_rate", m.color_change_rate},
            {"shape_change_rate", m.shape_change_rate}};
}

}  // namespace

EvalSummary summarize_reports(const std::vector<EvalReport>& reports) {
    EvalSummary s;
    for (const EvalReport& r : reports) {
        add_report(&s.all, r);
        add_report(is_heldout(parse_prompt(r.prompt)) ? &s.heldout : &s.seen, r);
    }
    finish(&s.all);
    finish(&s.seen);
    finish(&s.heldout);
    return s;
}

nlohmann::json EvalSummary::to_json() const {
    return {{"all", means_json(all)}, {"seen", means_json(seen)}, {"heldout", means_json(heldout)}};
}

}  // namespace reel
