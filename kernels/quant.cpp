#include "kernels/quant.h"

#include <ATen/ATen.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "kernels/aten_fallback.h"

// Encoding notes (the contract both paths follow, byte for byte):
// - Token-wise: values are two's complement, a whole byte for INT8 and a nibble for INT4 (-7 is 0x9).
// - Channel-wise (KIVI): unsigned codes 0..15 / 0..255 with x ~ zero + q * scale.
// - Scales and zero points are rounded to float16 *before* quantizing and the rounding is directed (scale up, zero
//   down), so every value lies inside the stored range and the round-trip error stays within scale / 2 with the stored
//   scale. Values are assumed to be within float16 range (|x| <= 65504), as K/V activations are; beyond it scales
//   saturate at 65504 and values clip.
// - Rounding is to nearest, ties to even, in both paths (ATen's round does the same).

namespace reel {
namespace {

constexpr float kHalfMax = 65504.f;
// Below this many elements a call runs on one thread: thread start-up would cost more than the work.
constexpr int64_t kParallelMin = int64_t(1) << 15;

float qmax_symmetric(int bits) {
    return static_cast<float>((1 << (bits - 1)) - 1);
}
float qmax_unsigned(int bits) {
    return static_cast<float>((1 << bits) - 1);
}

// Round to nearest, ties to even, for |t| <= 2^22: adding 1.5 * 2^23 pushes the fraction out of the mantissa.
// Unlike std::nearbyint this compiles to two adds on any x86-64, not a libm call per element.
inline float round_even(float t) {
    constexpr float kMagic = 12582912.f;
    return (t + kMagic) - kMagic;
}

// The smallest float16 >= v, for 0 <= v <= 65504.
inline c10::Half half_at_least(float v) {
    c10::Half h(v);
    if (static_cast<float>(h) < v)
        h = c10::Half(static_cast<uint16_t>(h.x + 1), c10::Half::from_bits());
    return h;
}

// The largest float16 <= v, for |v| <= 65504.
inline c10::Half half_at_most(float v) {
    c10::Half h(v);
    if (static_cast<float>(h) > v) {
        uint16_t b = h.x;
        if ((b & 0x7fff) == 0)
            b = 0x8001;  // +-0 steps to the smallest negative subnormal
        else if (b & 0x8000)
            b = static_cast<uint16_t>(b + 1);  // negative: a larger magnitude is lower
        else
            b = static_cast<uint16_t>(b - 1);
        h = c10::Half(b, c10::Half::from_bits());
    }
    return h;
}

std::string sizes_str(at::IntArrayRef s) {
    std::ostringstream os;
    os << s;
    return os.str();
}

void check_bits(const char* fn, int bits) {
    if (bits != 4 && bits != 8)
        throw std::runtime_error(std::string(fn) + ": bits must be 4 or 8, got " + std::to_string(bits));
}

// A tensor of the contract: defined, given dtype (or any floating dtype when `dtype` is Undefined), exact sizes,
// and contiguous rows (unit stride on the last dimension) when `rows_contiguous`.
void check_tensor(const char* fn,
                  const char* name,
                  const at::Tensor& t,
                  at::ScalarType dtype,
                  const std::vector<int64_t>& sizes,
                  bool rows_contiguous) {
    const std::string where = std::string(fn) + ": " + name;
    if (!t.defined())
        throw std::runtime_error(where + " is undefined");
    if (dtype == at::ScalarType::Undefined) {
        if (!at::isFloatingType(t.scalar_type()))
            throw std::runtime_error(where + " must be a floating tensor, got " +
                                     std::string(c10::toString(t.scalar_type())));
    } else if (t.scalar_type() != dtype) {
        throw std::runtime_error(where + " must be " + std::string(c10::toString(dtype)) + ", got " +
                                 std::string(c10::toString(t.scalar_type())));
    }
    if (t.sizes() != at::IntArrayRef(sizes))
        throw std::runtime_error(where + " must have shape " + sizes_str(sizes) + ", got " + sizes_str(t.sizes()));
    if (rows_contiguous && t.dim() > 0 && t.size(-1) > 1 && t.stride(-1) != 1)
        throw std::runtime_error(where + " rows must be contiguous (stride 1 on the last dimension), got strides " +
                                 sizes_str(t.strides()));
}

void check_same_device(const char* fn, const at::Tensor& a, std::initializer_list<const at::Tensor*> others) {
    for (const at::Tensor* t : others)
        if (t->device() != a.device())
            throw std::runtime_error(std::string(fn) + ": tensors on different devices (" + a.device().str() + " and " +
                                     t->device().str() + ")");
}

bool all_cpu(std::initializer_list<const at::Tensor*> ts) {
    for (const at::Tensor* t : ts)
        if (!t->device().is_cpu())
            return false;
    return true;
}

// ---- validation, shared by both paths ----------------------------------------------------------------------------

// x: [M, D] float, q: [M, bytes] uint8, scale: [M, D / group] float16
void check_tokens(const char* fn,
                  const at::Tensor& x,
                  const char* x_name,
                  int bits,
                  int64_t group,
                  const at::Tensor& q,
                  const at::Tensor& scale) {
    check_bits(fn, bits);
    if (!x.defined() || x.dim() != 2)
        throw std::runtime_error(std::string(fn) + ": " + x_name + " must be [M, D], got " +
                                 (x.defined() ? sizes_str(x.sizes()) : std::string("undefined")));
    const int64_t m = x.size(0), d = x.size(1);
    if (group <= 0 || d % group != 0)
        throw std::runtime_error(std::string(fn) + ": group " + std::to_string(group) +
                                 " must divide D = " + std::to_string(d));
    if (bits == 4 && d % 2 != 0)
        throw std::runtime_error(std::string(fn) + ": INT4 packs two values per byte, D must be even, got " +
                                 std::to_string(d));
    check_tensor(fn, x_name, x, at::ScalarType::Undefined, {m, d}, false);
    check_tensor(fn, "q", q, at::kByte, {m, quant_row_bytes(d, bits)}, true);
    check_tensor(fn, "scale", scale, at::kHalf, {m, d / group}, true);
    check_same_device(fn, x, {&q, &scale});
}

// x: [P, G, D] float, q: [P, G, bytes] uint8, scale, zero: [P, D] float16
void check_channels(const char* fn,
                    const at::Tensor& x,
                    const char* x_name,
                    int bits,
                    const at::Tensor& q,
                    const at::Tensor& scale,
                    const at::Tensor& zero) {
    check_bits(fn, bits);
    if (!x.defined() || x.dim() != 3)
        throw std::runtime_error(std::string(fn) + ": " + x_name + " must be [P, G, D], got " +
                                 (x.defined() ? sizes_str(x.sizes()) : std::string("undefined")));
    const int64_t p = x.size(0), g = x.size(1), d = x.size(2);
    if (bits == 4 && d % 2 != 0)
        throw std::runtime_error(std::string(fn) + ": INT4 packs two values per byte, D must be even, got " +
                                 std::to_string(d));
    check_tensor(fn, x_name, x, at::ScalarType::Undefined, {p, g, d}, false);
    check_tensor(fn, "q", q, at::kByte, {p, g, quant_row_bytes(d, bits)}, true);
    check_tensor(fn, "scale", scale, at::kHalf, {p, d}, true);
    check_tensor(fn, "zero", zero, at::kHalf, {p, d}, true);
    check_same_device(fn, x, {&q, &scale, &zero});
}

// ---- CPU loops ---------------------------------------------------------------------------------------------------

// A float32 view of x whose last dimension has unit stride (a copy only when x is not one already).
at::Tensor float_rows(const at::Tensor& x) {
    at::Tensor xf = x.to(at::kFloat);
    if (xf.size(-1) > 1 && xf.stride(-1) != 1)
        xf = xf.contiguous();
    return xf;
}

// Symmetric code of v for a stored scale s, as an int in [-qmax, qmax]. Callers pass s = 1 for a scale of 0: that is
// an all-zero group, whose values then give code 0 without a 0 / 0.
inline int quant_symmetric(float v, float s, float qmax) {
    return static_cast<int>(round_even(std::min(std::max(v / s, -qmax), qmax)));
}

// Unsigned code of v for a stored scale s and zero point z, in [0, qmax]. As above, s = 1 stands for a scale of 0,
// which only a constant channel equal to its zero point gets (code 0).
inline int quant_unsigned(float v, float z, float s, float qmax) {
    return static_cast<int>(round_even(std::min(std::max((v - z) / s, 0.f), qmax)));
}

// max |v[i]| over n values; eight running maxima instead of one, which the compiler can keep in vector registers
// (a single max chain is a serial dependency it may not reorder).
inline float abs_max(const float* __restrict v, int64_t n) {
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; ++k)
            acc[k] = std::max(acc[k], std::abs(v[i + k]));
    float m = 0.f;
    for (int k = 0; k < 8; ++k)
        m = std::max(m, acc[k]);
    for (; i < n; ++i)
        m = std::max(m, std::abs(v[i]));
    return m;
}

// Codes are computed this many at a time into a stack buffer (a vectorizable loop) and then stored or packed.
constexpr int64_t kCodeChunk = 256;

// x: [M, D] float32 rows, q: [M, bytes], scale: [M, D / group]
void quantize_tokens_cpu(const at::Tensor& x, int bits, int64_t group, at::Tensor& q, at::Tensor& scale) {
    const at::Tensor xf = float_rows(x);
    const int64_t m = xf.size(0), d = xf.size(1), groups = d / group;
    const float qmax = qmax_symmetric(bits);
    const float* xp = xf.data_ptr<float>();
    uint8_t* qp = q.data_ptr<uint8_t>();
    c10::Half* sp = scale.data_ptr<c10::Half>();
    const int64_t xs = xf.stride(0), qs = q.stride(0), ss = scale.stride(0);
#pragma omp parallel for if (m * d >= kParallelMin)
    for (int64_t r = 0; r < m; ++r) {
        // __restrict: uint8_t may alias anything, and without it the byte stores block vectorization.
        const float* __restrict xr = xp + r * xs;
        uint8_t* __restrict qr = qp + r * qs;
        c10::Half* __restrict sr = sp + r * ss;
        int8_t codes[kCodeChunk];
        for (int64_t g = 0; g < groups; ++g) {
            const c10::Half sh = half_at_least(std::min(abs_max(xr + g * group, group) / qmax, kHalfMax));
            sr[g] = sh;
            // Codes use the stored (float16) scale, so dequantization sees exactly what quantization used.
            const float s = static_cast<float>(sh) == 0.f ? 1.f : static_cast<float>(sh);
            for (int64_t begin = g * group; begin < (g + 1) * group; begin += kCodeChunk) {
                const int64_t n = std::min(kCodeChunk, (g + 1) * group - begin);
                for (int64_t i = 0; i < n; ++i)
                    codes[i] = static_cast<int8_t>(quant_symmetric(xr[begin + i], s, qmax));
                if (bits == 8) {
                    for (int64_t i = 0; i < n; ++i)
                        qr[begin + i] = static_cast<uint8_t>(codes[i]);  // two's complement byte
                } else if (begin % 2 == 0 && n % 2 == 0) {
                    for (int64_t i = 0; i < n; i += 2)
                        qr[(begin + i) >> 1] = static_cast<uint8_t>((codes[i] & 0xf) | ((codes[i + 1] & 0xf) << 4));
                } else {
                    // Odd group sizes end mid-byte: nibbles placed one at a time, low first.
                    for (int64_t i = 0; i < n; ++i) {
                        const int64_t e = begin + i;
                        const auto v = static_cast<uint8_t>(codes[i] & 0xf);
                        uint8_t& b = qr[e >> 1];
                        b = (e & 1) ? static_cast<uint8_t>(b | (v << 4)) : v;
                    }
                }
            }
        }
    }
}

// out: [M, D] float32 rows (written), q: [M, bytes], scale: [M, D / group]
void dequantize_tokens_cpu(const at::Tensor& q, const at::Tensor& scale, int bits, int64_t group, at::Tensor& out) {
    const int64_t m = out.size(0), d = out.size(1), groups = d / group;
    const uint8_t* qp = q.data_ptr<uint8_t>();
    const c10::Half* sp = scale.data_ptr<c10::Half>();
    float* op = out.data_ptr<float>();
    const int64_t qs = q.stride(0), ss = scale.stride(0), os = out.stride(0);
#pragma omp parallel for if (m * d >= kParallelMin)
    for (int64_t r = 0; r < m; ++r) {
        const uint8_t* __restrict qr = qp + r * qs;
        const c10::Half* __restrict sr = sp + r * ss;
        float* __restrict o = op + r * os;
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t begin = g * group, end = begin + group;
            const float s = static_cast<float>(sr[g]);
            if (bits == 8) {
                for (int64_t i = begin; i < end; ++i)
                    o[i] = static_cast<float>(static_cast<int8_t>(qr[i])) * s;
            } else if (group % 2 == 0) {
                for (int64_t i = begin; i < end; i += 2) {
                    const int b = qr[i >> 1];
                    // sign-extend the 4-bit two's complement
                    o[i] = static_cast<float>(((b & 0xf) ^ 8) - 8) * s;
                    o[i + 1] = static_cast<float>(((b >> 4) ^ 8) - 8) * s;
                }
            } else {
                for (int64_t i = begin; i < end; ++i) {
                    const int nib = (qr[i >> 1] >> ((i & 1) * 4)) & 0xf;
                    o[i] = static_cast<float>((nib ^ 8) - 8) * s;
                }
            }
        }
    }
}

// Channels are processed in chunks of this many (even, so INT4 pairs never straddle chunks), with their scales and
// zero points as float32 on the stack: converting float16 once per page instead of once per element.
constexpr int64_t kChannelChunk = 256;

// x: [P, G, D] float, q: [P, G, bytes], scale, zero: [P, D]
void quantize_channels_cpu(const at::Tensor& x, int bits, at::Tensor& q, at::Tensor& scale, at::Tensor& zero) {
    const at::Tensor xf = x.to(at::kFloat).contiguous();
    const int64_t pages = xf.size(0), tokens = xf.size(1), d = xf.size(2);
    const int64_t chunks = (d + kChannelChunk - 1) / kChannelChunk;
    const float qmax = qmax_unsigned(bits);
    const float* xp = xf.data_ptr<float>();
    uint8_t* qp = q.data_ptr<uint8_t>();
    c10::Half* sp = scale.data_ptr<c10::Half>();
    c10::Half* zp = zero.data_ptr<c10::Half>();
    const int64_t qs0 = q.stride(0), qs1 = q.stride(1), ss = scale.stride(0), zs = zero.stride(0);
#pragma omp parallel for collapse(2) if (pages * tokens * d >= kParallelMin)
    for (int64_t p = 0; p < pages; ++p) {
        for (int64_t ch = 0; ch < chunks; ++ch) {
            const int64_t c0 = ch * kChannelChunk, n = std::min(kChannelChunk, d - c0);
            const float* __restrict xpage = xp + p * tokens * d + c0;
            // sf: the divisor, the stored scale or 1 where it is 0
            float mn[kChannelChunk], mx[kChannelChunk], zf[kChannelChunk], sf[kChannelChunk];
            for (int64_t c = 0; c < n; ++c) {
                mn[c] = std::numeric_limits<float>::infinity();
                mx[c] = -std::numeric_limits<float>::infinity();
            }
            for (int64_t t = 0; t < tokens; ++t) {  // token-major: contiguous reads
                const float* __restrict xr = xpage + t * d;
                for (int64_t c = 0; c < n; ++c) {
                    const float v = xr[c];
                    mn[c] = v < mn[c] ? v : mn[c];
                    mx[c] = v > mx[c] ? v : mx[c];
                }
            }
            for (int64_t c = 0; c < n; ++c) {
                const c10::Half z = half_at_most(std::min(std::max(mn[c], -kHalfMax), kHalfMax));
                zf[c] = static_cast<float>(z);
                const float hi = std::min(std::max(mx[c], -kHalfMax), kHalfMax);
                const c10::Half s = half_at_least(std::min((hi - zf[c]) / qmax, kHalfMax));
                sf[c] = static_cast<float>(s) == 0.f ? 1.f : static_cast<float>(s);
                zp[p * zs + c0 + c] = z;
                sp[p * ss + c0 + c] = s;
            }
            for (int64_t t = 0; t < tokens; ++t) {
                const float* __restrict xr = xpage + t * d;
                if (bits == 8) {
                    uint8_t* __restrict qr = qp + p * qs0 + t * qs1 + c0;
                    for (int64_t c = 0; c < n; ++c)
                        qr[c] = static_cast<uint8_t>(quant_unsigned(xr[c], zf[c], sf[c], qmax));
                } else {
                    uint8_t* __restrict qr = qp + p * qs0 + t * qs1 + c0 / 2;
                    for (int64_t c = 0; c < n; c += 2) {
                        const int lo = quant_unsigned(xr[c], zf[c], sf[c], qmax);
                        const int hi = quant_unsigned(xr[c + 1], zf[c + 1], sf[c + 1], qmax);
                        qr[c / 2] = static_cast<uint8_t>(lo | (hi << 4));
                    }
                }
            }
        }
    }
}

// out: [P, G, D] float32 with contiguous rows (written), q: [P, G, bytes], scale, zero: [P, D]
void dequantize_channels_cpu(const at::Tensor& q,
                             const at::Tensor& scale,
                             const at::Tensor& zero,
                             int bits,
                             at::Tensor& out) {
    const int64_t pages = out.size(0), tokens = out.size(1), d = out.size(2);
    const int64_t chunks = (d + kChannelChunk - 1) / kChannelChunk;
    const uint8_t* qp = q.data_ptr<uint8_t>();
    const c10::Half* sp = scale.data_ptr<c10::Half>();
    const c10::Half* zp = zero.data_ptr<c10::Half>();
    float* op = out.data_ptr<float>();
    const int64_t qs0 = q.stride(0), qs1 = q.stride(1), ss = scale.stride(0), zs = zero.stride(0);
    const int64_t os0 = out.stride(0), os1 = out.stride(1);
#pragma omp parallel for collapse(2) if (pages * tokens * d >= kParallelMin)
    for (int64_t p = 0; p < pages; ++p) {
        for (int64_t ch = 0; ch < chunks; ++ch) {
            const int64_t c0 = ch * kChannelChunk, n = std::min(kChannelChunk, d - c0);
            float zf[kChannelChunk], sf[kChannelChunk];
            for (int64_t c = 0; c < n; ++c) {
                sf[c] = static_cast<float>(sp[p * ss + c0 + c]);
                zf[c] = static_cast<float>(zp[p * zs + c0 + c]);
            }
            for (int64_t t = 0; t < tokens; ++t) {
                float* __restrict o = op + p * os0 + t * os1 + c0;
                if (bits == 8) {
                    const uint8_t* __restrict qr = qp + p * qs0 + t * qs1 + c0;
                    for (int64_t c = 0; c < n; ++c)
                        o[c] = static_cast<float>(qr[c]) * sf[c] + zf[c];
                } else {
                    const uint8_t* __restrict qr = qp + p * qs0 + t * qs1 + c0 / 2;
                    for (int64_t c = 0; c < n; c += 2) {
                        const uint8_t b = qr[c / 2];
                        o[c] = static_cast<float>(b & 0xf) * sf[c] + zf[c];
                        o[c + 1] = static_cast<float>(b >> 4) * sf[c + 1] + zf[c + 1];
                    }
                }
            }
        }
    }
}

// ---- ATen ops (any device) ---------------------------------------------------------------------------------------

// v: float, 0 <= v <= 65504. The smallest float16 >= v, elementwise (float16 bits step up by one).
at::Tensor half_at_least(const at::Tensor& v) {
    at::Tensor h = v.to(at::kHalf);
    at::Tensor bump = h.to(at::kFloat).lt(v).to(at::kShort);
    return h.view(at::kShort).add(bump).view(at::kHalf);
}

// v: float, |v| <= 65504. The largest float16 <= v, elementwise.
at::Tensor half_at_most(const at::Tensor& v) {
    at::Tensor h = v.to(at::kHalf);
    at::Tensor bits = h.view(at::kShort).to(at::kInt).bitwise_and(0xffff);  // the 16 bits as 0..65535
    at::Tensor stepped = at::where(bits.bitwise_and(0x7fff).eq(0), at::full_like(bits, 0x8001),
                                   at::where(bits.bitwise_and(0x8000).ne(0), bits + 1, bits - 1));
    bits = at::where(h.to(at::kFloat).gt(v), stepped, bits);
    bits = at::where(bits.ge(0x8000), bits - 0x10000, bits);  // back to int16 two's complement
    return bits.to(at::kShort).view(at::kHalf);
}

// v: [..., D] integer codes 0..15 (D even). Returns [..., D / 2] uint8, element 2j in the low nibble.
at::Tensor pack_nibbles(const at::Tensor& v) {
    std::vector<int64_t> pairs(v.sizes().begin(), v.sizes().end());
    pairs.back() /= 2;
    pairs.push_back(2);
    at::Tensor vp = v.reshape(pairs);
    return vp.select(-1, 0).bitwise_or(vp.select(-1, 1).bitwise_left_shift(4)).to(at::kByte);
}

// q: [..., B] uint8. Returns [..., 2B] int32 nibbles 0..15, low nibble first.
at::Tensor unpack_nibbles(const at::Tensor& q) {
    at::Tensor qi = q.to(at::kInt);
    at::Tensor v = at::stack({qi.bitwise_and(0xf), qi.bitwise_right_shift(4)}, -1);
    std::vector<int64_t> sizes(q.sizes().begin(), q.sizes().end());
    sizes.back() *= 2;
    return v.reshape(sizes);
}

void quantize_tokens_aten(const at::Tensor& x, int bits, int64_t group, at::Tensor& q, at::Tensor& scale) {
    const int64_t m = x.size(0), d = x.size(1);
    const float qmax = qmax_symmetric(bits);
    at::Tensor xg = x.to(at::kFloat).reshape({m, d / group, group});
    at::Tensor sh = half_at_least(xg.abs().amax(-1).div(qmax).clamp_max(kHalfMax));  // [M, D / group]
    at::Tensor sf = sh.to(at::kFloat).unsqueeze(-1);
    at::Tensor code =
        at::where(sf.gt(0), xg.div(sf), at::zeros_like(xg)).round().clamp(-qmax, qmax).to(at::kInt).reshape({m, d});
    if (bits == 8)
        q.copy_(code.bitwise_and(0xff).to(at::kByte));
    else
        q.copy_(pack_nibbles(code.bitwise_and(0xf)));
    scale.copy_(sh);
}

void dequantize_tokens_aten(const at::Tensor& q, const at::Tensor& scale, int bits, int64_t group, at::Tensor& out) {
    const int64_t m = out.size(0), d = out.size(1);
    at::Tensor v = bits == 8 ? q.to(at::kInt) : unpack_nibbles(q);
    const int64_t half_range = bits == 8 ? 128 : 8;
    v = at::where(v.ge(half_range), v - 2 * half_range, v);  // two's complement sign
    at::Tensor y = v.to(at::kFloat).reshape({m, d / group, group}).mul(scale.to(at::kFloat).unsqueeze(-1));
    out.copy_(y.reshape({m, d}));
}

void quantize_channels_aten(const at::Tensor& x, int bits, at::Tensor& q, at::Tensor& scale, at::Tensor& zero) {
    const float qmax = qmax_unsigned(bits);
    at::Tensor xf = x.to(at::kFloat);
    at::Tensor mn = xf.amin(1).clamp(-kHalfMax, kHalfMax);  // [P, D]
    at::Tensor mx = xf.amax(1).clamp(-kHalfMax, kHalfMax);
    at::Tensor zh = half_at_most(mn);
    at::Tensor zf = zh.to(at::kFloat);
    at::Tensor sh = half_at_least(mx.sub(zf).div(qmax).clamp_max(kHalfMax));
    at::Tensor sf = sh.to(at::kFloat).unsqueeze(1);  // [P, 1, D]
    at::Tensor code =
        at::where(sf.gt(0), xf.sub(zf.unsqueeze(1)).div(sf), at::zeros_like(xf)).round().clamp(0, qmax).to(at::kInt);
    q.copy_(bits == 8 ? code.to(at::kByte) : pack_nibbles(code));
    scale.copy_(sh);
    zero.copy_(zh);
}

void dequantize_channels_aten(const at::Tensor& q,
                              const at::Tensor& scale,
                              const at::Tensor& zero,
                              int bits,
                              at::Tensor& out) {
    at::Tensor v = bits == 8 ? q.to(at::kInt) : unpack_nibbles(q);
    out.copy_(v.to(at::kFloat).mul(scale.to(at::kFloat).unsqueeze(1)).add(zero.to(at::kFloat).unsqueeze(1)));
}

// The CPU loops write float32 rows; any other output goes through one float32 temporary.
bool float_rows_out(const at::Tensor& out) {
    return out.scalar_type() == at::kFloat && (out.size(-1) <= 1 || out.stride(-1) == 1);
}

}  // namespace

int64_t quant_row_bytes(int64_t dim, int bits) {
    check_bits("quant_row_bytes", bits);
    if (dim < 0)
        throw std::runtime_error("quant_row_bytes: negative dimension " + std::to_string(dim));
    if (bits == 4 && dim % 2 != 0)
        throw std::runtime_error("quant_row_bytes: INT4 packs two values per byte, the dimension must be even, got " +
                                 std::to_string(dim));
    return bits == 8 ? dim : dim / 2;
}

void quantize_tokens(const at::Tensor& x, int bits, int64_t group, at::Tensor& q, at::Tensor& scale) {
    check_tokens("quantize_tokens", x, "x", bits, group, q, scale);
    if (x.numel() == 0)
        return;
    if (all_cpu({&x, &q, &scale}))
        quantize_tokens_cpu(x, bits, group, q, scale);
    else
        quantize_tokens_aten(x, bits, group, q, scale);
}

void dequantize_tokens(const at::Tensor& q, const at::Tensor& scale, int bits, int64_t group, at::Tensor& out) {
    check_tokens("dequantize_tokens", out, "out", bits, group, q, scale);
    if (out.numel() == 0)
        return;
    if (!all_cpu({&q, &scale, &out})) {
        dequantize_tokens_aten(q, scale, bits, group, out);
    } else if (float_rows_out(out)) {
        dequantize_tokens_cpu(q, scale, bits, group, out);
    } else {
        at::Tensor tmp = at::empty(out.sizes(), out.options().dtype(at::kFloat));
        dequantize_tokens_cpu(q, scale, bits, group, tmp);
        out.copy_(tmp);
    }
}

void quantize_channels(const at::Tensor& x, int bits, at::Tensor& q, at::Tensor& scale, at::Tensor& zero) {
    check_channels("quantize_channels", x, "x", bits, q, scale, zero);
    if (x.numel() == 0)
        return;
    if (all_cpu({&x, &q, &scale, &zero}))
        quantize_channels_cpu(x, bits, q, scale, zero);
    else
        quantize_channels_aten(x, bits, q, scale, zero);
}

void dequantize_channels(const at::Tensor& q,
                         const at::Tensor& scale,
                         const at::Tensor& zero,
                         int bits,
                         at::Tensor& out) {
    check_channels("dequantize_channels", out, "out", bits, q, scale, zero);
    if (out.numel() == 0)
        return;
    if (!all_cpu({&q, &scale, &zero, &out})) {
        dequantize_channels_aten(q, scale, zero, bits, out);
    } else if (float_rows_out(out)) {
        dequantize_channels_cpu(q, scale, zero, bits, out);
    } else {
        at::Tensor tmp = at::empty(out.sizes(), out.options().dtype(at::kFloat));
        dequantize_channels_cpu(q, scale, zero, bits, tmp);
        out.copy_(tmp);
    }
}

namespace aten_fallback {

void quantize_tokens(const at::Tensor& x, int bits, int64_t group, at::Tensor& q, at::Tensor& scale) {
    check_tokens("quantize_tokens", x, "x", bits, group, q, scale);
    if (x.numel() > 0)
        quantize_tokens_aten(x, bits, group, q, scale);
}

void dequantize_tokens(const at::Tensor& q, const at::Tensor& scale, int bits, int64_t group, at::Tensor& out) {
    check_tokens("dequantize_tokens", out, "out", bits, group, q, scale);
    if (out.numel() > 0)
        dequantize_tokens_aten(q, scale, bits, group, out);
}

void quantize_channels(const at::Tensor& x, int bits, at::Tensor& q, at::Tensor& scale, at::Tensor& zero) {
    check_channels("quantize_channels", x, "x", bits, q, scale, zero);
    if (x.numel() > 0)
        quantize_channels_aten(x, bits, q, scale, zero);
}

void dequantize_channels(const at::Tensor& q,
                         const at::Tensor& scale,
                         const at::Tensor& zero,
                         int bits,
                         at::Tensor& out) {
    check_channels("dequantize_channels", out, "out", bits, q, scale, zero);
    if (out.numel() > 0)
        dequantize_channels_aten(q, scale, zero, bits, out);
}

}  // namespace aten_fallback
}  // namespace reel
