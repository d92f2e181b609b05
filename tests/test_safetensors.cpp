// safetensors reader/writer: the golden files (written by the Python safetensors package) load with
// the dtypes and shapes their .json sidecars give, round-trip bit-exactly, and corrupt files built
// here are refused with a message (and without a huge allocation or a crash).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "weights/safetensors.h"

using namespace reel;
namespace fs = std::filesystem;

namespace {

const std::string kGolden = std::string(REEL_TEST_DATA) + "/golden/";

std::string tmp_path(const std::string& name) {
    return (fs::temp_directory_path() / ("reel_test_st_" + std::to_string(getpid()) + "_" + name)).string();
}

bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
    if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes())
        return false;
    at::Tensor ca = a.contiguous(), cb = b.contiguous();
    return std::memcmp(ca.data_ptr(), cb.data_ptr(), (size_t)(ca.numel() * ca.element_size())) == 0;
}

std::string dtype_from_torch(const std::string& t) {
    if (t == "torch.float32")
        return "F32";
    if (t == "torch.float64")
        return "F64";
    if (t == "torch.int64")
        return "I64";
    return "?" + t;
}

// Writes an 8-byte length (given, so it can lie), the header and `data` bytes.
void write_raw(const std::string& path, uint64_t header_len, const std::string& header, const std::string& data) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    for (int i = 0; i < 8; i++)
        out.put((char)(header_len >> (8 * i)));
    out << header << data;
}

void write_header(const std::string& path, const std::string& header, size_t data_bytes) {
    write_raw(path, header.size(), header, std::string(data_bytes, '\0'));
}

std::string error_of(const std::string& path) {
    try {
        load_safetensors(path);
    } catch (const std::runtime_error& e) {
        // The header-only reader must agree.
        try {
            read_safetensors_header(path);
            ADD_FAILURE() << "read_safetensors_header accepted what load_safetensors refused: " << e.what();
        } catch (const std::runtime_error&) {
        }
        return e.what();
    }
    return "<no error>";
}

}  // namespace

TEST(Safetensors, GoldenFilesMatchSidecars) {
    int checked = 0;
    std::set<std::string> dtypes;
    for (const char* name : {"scheduler", "t5_case", "dit_weights", "vae_cases", "dit_rollout_global"}) {
        SCOPED_TRACE(name);
        std::ifstream in(kGolden + name + ".json");
        auto side = nlohmann::json::parse(in)["tensors"];
        TensorMap t = load_safetensors(kGolden + name + ".safetensors");
        auto infos = read_safetensors_header(kGolden + name + ".safetensors");
        EXPECT_EQ(t.size(), infos.size());
        for (auto it = side.begin(); it != side.end(); ++it) {
            ASSERT_TRUE(t.count(it.key())) << it.key();
            const at::Tensor& x = t.at(it.key());
            std::vector<int64_t> shape = it.value().is_array() ? it.value().get<std::vector<int64_t>>()
                                                               : it.value()["shape"].get<std::vector<int64_t>>();
            EXPECT_EQ(x.sizes().vec(), shape) << it.key();
            if (it.value().is_object()) {
                EXPECT_EQ(safetensors_dtype_name(x.scalar_type()),
                          dtype_from_torch(it.value()["dtype"].get<std::string>()))
                    << it.key();
            }
            dtypes.insert(safetensors_dtype_name(x.scalar_type()));
            checked++;
        }
    }
    EXPECT_EQ(dtypes, (std::set<std::string>{"F32", "F64", "I64"}));
    std::printf("golden safetensors: %d tensors checked against sidecars\n", checked);

    // A few values from the README / scheduler.json.
    TensorMap s = load_safetensors(kGolden + "scheduler.safetensors");
    EXPECT_TRUE(at::equal(s.at("selfforcing.step_list_unwarped"), at::tensor({1000, 750, 500, 250}, at::kLong)));
    EXPECT_EQ(s.at("selfforcing.step_list_warped")[2].item<float>(), 833.3333129882812f);
    EXPECT_EQ(s.at("shift5.sigmas_f64").scalar_type(), at::kDouble);
    EXPECT_EQ(s.at("shift5.sigmas_f64")[0].item<double>(), 1.0);

    int64_t params = 0;
    for (const auto& kv : load_safetensors(kGolden + "dit_weights.safetensors"))
        params += kv.second.numel();
    EXPECT_EQ(params, 224944);
}

TEST(Safetensors, RoundTripIsBitExact) {
    for (const char* name : {"scheduler", "t5_case", "dit_weights"}) {
        SCOPED_TRACE(name);
        TensorMap a = load_safetensors(kGolden + name + ".safetensors");
        const std::string path = tmp_path(std::string(name) + ".safetensors");
        save_safetensors(path, a, {{"source", name}});
        std::map<std::string, std::string> meta;
        auto infos = read_safetensors_header(path, &meta);
        EXPECT_EQ(meta.at("source"), name);
        for (const auto& i : infos)
            EXPECT_EQ(i.offset % std::max<size_t>(1, c10::elementSize(safetensors_dtype(i.dtype))), 0u) << i.name;
        TensorMap b = load_safetensors(path);
        ASSERT_EQ(a.size(), b.size());
        for (const auto& kv : a)
            EXPECT_TRUE(bit_equal(kv.second, b.at(kv.first))) << kv.first;
        fs::remove(path);
    }
}

TEST(Safetensors, AllDtypesNonContiguousAndEmpty) {
    TensorMap t;
    t["f32"] = at::randn({3, 4}).t();  // non-contiguous: saved as its contiguous copy
    t["f16"] = at::randn({5}).to(at::kHalf);
    t["bf16"] = at::randn({2, 3}).to(at::kBFloat16);
    t["f64"] = at::randn({2}, at::kDouble);
    t["i64"] = at::arange(7, at::kLong);
    t["i32"] = at::arange(3, at::kInt);
    t["i8"] = at::arange(-3, 3, at::kChar);
    t["u8"] = at::arange(0, 250, 7, at::kByte);
    t["bool"] = at::arange(5) % 2 == 0;
    t["scalar"] = at::scalar_tensor(3.25);
    t["empty"] = at::empty({0, 4});
    const std::string path = tmp_path("dtypes.safetensors");
    save_safetensors(path, t);
    TensorMap u = load_safetensors(path);
    ASSERT_EQ(u.size(), t.size());
    for (const auto& kv : t)
        EXPECT_TRUE(bit_equal(kv.second, u.at(kv.first))) << kv.first;
    EXPECT_EQ(u.at("scalar").dim(), 0);
    // Loaded tensors are writable (copy-on-write mapping) and the file keeps its contents.
    u.at("f32").fill_(7.0f);
    EXPECT_TRUE(bit_equal(load_safetensors(path).at("f32"), t.at("f32")));
    fs::remove(path);
}

TEST(Safetensors, SaveReplacesAtomically) {
    const std::string path = tmp_path("atomic.safetensors");
    TensorMap t;
    t["a"] = at::ones({2});
    save_safetensors(path, t);
    TensorMap bad;
    bad["x"] = at::ones({2}, at::kComplexFloat);  // unsupported dtype: refused before anything is written
    EXPECT_THROW(save_safetensors(path, bad), std::runtime_error);
    EXPECT_TRUE(at::equal(load_safetensors(path).at("a"), at::ones({2})));
    // A directory that doesn't exist: an error, no stray temp file.
    EXPECT_THROW(save_safetensors(tmp_path("no_such_dir") + "/x.safetensors", t), std::runtime_error);
    for (const auto& e : fs::directory_iterator(fs::temp_directory_path()))
        EXPECT_EQ(e.path().string().find("atomic.safetensors.tmp"), std::string::npos);
    fs::remove(path);
}

TEST(Safetensors, CorruptFilesAreRefused) {
    const std::string path = tmp_path("corrupt.safetensors");
    struct Case {
        const char* what;
        std::function<void()> write;
        const char* expect;
    };
    const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    std::vector<Case> cases = {
        {"file shorter than 8 bytes", [&] { std::ofstream(path, std::ios::binary) << "abc"; }, "too short"},
        {"header length 0", [&] { write_raw(path, 0, "", std::string(16, '\0')); }, "header length is 0"},
        {"header length larger than the file", [&] { write_raw(path, 1000, ok, std::string(8, '\0')); },
         "larger than the file"},
        {"header length 2^60", [&] { write_raw(path, 1ull << 60, ok, std::string(8, '\0')); }, "larger than the file"},
        {"header length 2^64-1", [&] { write_raw(path, ~0ull, ok, ""); }, "larger than the file"},
        {"non-JSON header", [&] { write_header(path, "{not json at all", 8); }, "not valid JSON"},
        {"JSON array header", [&] { write_header(path, "[1,2]", 8); }, "not a JSON object"},
        {"offsets out of range",
         [&] { write_header(path, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4); },
         "run past the end"},
        {"huge offsets",
         [&] {
             write_header(
                 path, R"({"a":{"dtype":"U8","shape":[1152921504606846976],"data_offsets":[0,1152921504606846976]}})",
                 8);
         },
         "run past the end"},
        {"overlapping offsets",
         [&] {
             write_header(
                 path,
                 R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 12);
         },
         "overlapping"},
        {"truncated data", [&] { write_header(path, ok, 5); }, "truncated"},
        {"unknown dtype", [&] { write_header(path, R"({"a":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,2]}})", 8); },
         "unknown dtype 'F8_E9'"},
        {"nbytes mismatch", [&] { write_header(path, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8); },
         "needs 12"},
        {"shape overflow",
         [&] {
             write_header(path, R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8);
         },
         "overflows"},
        {"negative dimension",
         [&] { write_header(path, R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8); }, "negative"},
        {"begin > end", [&] { write_header(path, R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8); },
         "begin > end"},
        {"missing dtype", [&] { write_header(path, R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8); }, "dtype"},
        {"bad metadata", [&] { write_header(path, R"({"__metadata__":{"k":3}})", 0); }, "__metadata__"},
    };
    for (const auto& c : cases) {
        c.write();
        std::string err = error_of(path);
        std::printf("%-36s -> %s\n", c.what, err.c_str());
        EXPECT_NE(err.find(c.expect), std::string::npos) << c.what << ": " << err;
        EXPECT_NE(err.find(path), std::string::npos) << c.what << ": the message should name the file";
    }
    fs::remove(path);
    EXPECT_NE(error_of(tmp_path("missing.safetensors")).find("not found"), std::string::npos);
}

TEST(Safetensors, EveryPrefixOfAValidFileFailsCleanly) {
    TensorMap t;
    t["w"] = at::arange(6, at::kFloat).view({2, 3});
    t["b"] = at::arange(3, at::kLong);
    const std::string path = tmp_path("full.safetensors");
    save_safetensors(path, t);
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string cut = tmp_path("cut.safetensors");
    for (size_t n = 0; n < bytes.size(); n++) {
        std::ofstream(cut, std::ios::binary | std::ios::trunc).write(bytes.data(), (std::streamsize)n);
        EXPECT_THROW(load_safetensors(cut), std::runtime_error) << n << " bytes";
    }
    fs::remove(cut);
    fs::remove(path);
}
