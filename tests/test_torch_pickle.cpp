// The torch.save reader against checkpoints written by real torch.save (tests/data/golden/pickle,
// described by its manifest.json) and hand-made edge cases (tests/data/weights, make_fixtures.py).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/golden_util.h"
#include "weights/safetensors.h"
#include "weights/torch_pickle.h"

using namespace reel;
using reel::test::error_of;
namespace fs = std::filesystem;

namespace {

const std::string kPickle = test::golden_path("pickle/");
const std::string kData = std::string(REEL_TEST_DATA) + "/weights/";

nlohmann::json manifest() {
    return test::read_golden_json("pickle/manifest.json");
}

at::ScalarType dtype_of(const std::string& name) {
    if (name == "float32")
        return at::kFloat;
    if (name == "float16")
        return at::kHalf;
    if (name == "bfloat16")
        return at::kBFloat16;
    if (name == "float64")
        return at::kDouble;
    if (name == "int64")
        return at::kLong;
    ADD_FAILURE() << "manifest dtype " << name;
    return at::kFloat;
}

// One tensor against its manifest entry: dtype, shape, sum (1e-5 relative) and the first values.
void expect_matches(const std::string& name, const at::Tensor& t, const nlohmann::json& ref, double* max_rel) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(t.defined());
    EXPECT_EQ(t.scalar_type(), dtype_of(ref["dtype"].get<std::string>()));
    EXPECT_EQ(t.sizes().vec(), ref["shape"].get<std::vector<int64_t>>());
    at::Tensor d = t.to(at::kDouble).reshape(-1);
    double sum = d.sum().item<double>();
    double want = ref["sum"].get<double>();
    double scale = std::max(std::fabs(want), d.abs().sum().item<double>() * 1e-2);  // guard cancelling sums
    double rel = std::fabs(sum - want) / std::max(scale, 1e-12);
    *max_rel = std::max(*max_rel, rel);
    EXPECT_LE(rel, 1e-5) << "sum " << sum << " vs " << want;
    auto first = ref["first"].get<std::vector<double>>();
    ASSERT_GE(d.numel(), (int64_t)first.size());
    for (size_t i = 0; i < first.size(); i++)
        EXPECT_NEAR(d[(int64_t)i].item<double>(), first[i], 1e-6 * (1 + std::fabs(first[i]))) << "element " << i;
}

}  // namespace

TEST(TorchPickle, GoldenFilesMatchManifest) {
    auto m = manifest();
    double max_rel = 0;
    int files = 0, tensors = 0;
    for (auto it = m["files"].begin(); it != m["files"].end(); ++it) {
        const std::string file = it.key();
        if (!it.value().contains("tensors"))
            continue;  // malicious / truncated / nested: tested below
        SCOPED_TRACE(file);
        TensorMap got = load_torch_checkpoint(kPickle + file);
        const auto& want = it.value()["tensors"];
        EXPECT_EQ(got.size(), want.size());
        for (auto t = want.begin(); t != want.end(); ++t) {
            ASSERT_TRUE(got.count(t.key())) << "missing " << t.key();
            expect_matches(t.key(), got[t.key()], t.value(), &max_rel);
            tensors++;
        }
        files++;
    }
    EXPECT_GE(files, 5);
    std::printf("golden pickles: %d files, %d tensors, max relative sum error %.3g\n", files, tensors, max_rel);
}

TEST(TorchPickle, SelfForcingStyleNestedNames) {
    auto m = manifest();
    const auto& ref = m["files"]["selfforcing_style.pt"];
    std::vector<std::string> skipped;
    TensorMap got = load_torch_checkpoint(kPickle + "selfforcing_style.pt", "", &skipped);
    double max_rel = 0;
    for (const char* group : {"generator", "generator_ema"}) {
        for (auto t = ref[group].begin(); t != ref[group].end(); ++t) {
            std::string name = std::string(group) + "/" + t.key();
            ASSERT_TRUE(got.count(name)) << "missing " << name;
            expect_matches(name, got[name], t.value(), &max_rel);
        }
    }
    int critic = 0;
    for (const auto& kv : got)
        critic += kv.first.rfind("critic/", 0) == 0;
    EXPECT_GT(critic, 0);

    // Only one group: names lose the prefix, and the other groups' storages are not touched.
    TensorMap ema = load_torch_checkpoint(kPickle + "selfforcing_style.pt", "generator_ema");
    EXPECT_EQ(ema.size(), ref["generator_ema"].size());
    for (auto t = ref["generator_ema"].begin(); t != ref["generator_ema"].end(); ++t)
        ASSERT_TRUE(ema.count(t.key())) << t.key();
    EXPECT_NE(error_of([] {
                  load_torch_checkpoint(kPickle + "selfforcing_style.pt", "optimizer");
              }).find("no top-level entry 'optimizer'"),
              std::string::npos);
}

TEST(TorchPickle, SharedStorageViewsShareOneStorage) {
    TensorMap t = load_torch_checkpoint(kPickle + "shared_storage_views.pt");
    at::Tensor base = t.at("base");
    EXPECT_TRUE(at::equal(base, at::arange(24, at::kFloat).view({4, 6})));
    // Read once: every view aliases the same memory.
    for (const auto& kv : t)
        EXPECT_EQ(kv.second.storage().data(), base.storage().data()) << kv.first;
    EXPECT_TRUE(at::equal(t.at("row_slice"), base.slice(0, 1, 3)));
    EXPECT_TRUE(at::equal(t.at("transposed"), base.t()));
    EXPECT_EQ(t.at("strided").strides().vec(), (std::vector<int64_t>{12, 3}));
    EXPECT_TRUE(at::equal(t.at("strided"), base.slice(0, 0, 4, 2).slice(1, 0, 6, 3)));
}

TEST(TorchPickle, MaliciousGlobalIsRefusedAndNothingRuns) {
    const fs::path marker = fs::current_path() / "reel_pickle_was_executed";
    fs::remove(marker);
    std::string err = error_of([] { load_torch_checkpoint(kPickle + "malicious.pt"); });
    std::printf("malicious.pt: %s\n", err.c_str());
    EXPECT_NE(err.find("refusing to load"), std::string::npos) << err;
    EXPECT_NE(err.find("'posix.system'"), std::string::npos) << err;
    EXPECT_FALSE(fs::exists(marker));
    // Listing goes through the same unpickler.
    EXPECT_NE(error_of([] { list_torch_checkpoint(kPickle + "malicious.pt"); }).find("posix.system"),
              std::string::npos);

    err = error_of([] { load_torch_checkpoint(kData + "stack_global_eval.pt"); });
    EXPECT_NE(err.find("'builtins.eval'"), std::string::npos) << err;
    err = error_of([] { load_torch_checkpoint(kData + "bad_opcode.pt"); });
    EXPECT_NE(err.find("unsupported pickle opcode 0x69"), std::string::npos) << err;
}

TEST(TorchPickle, TruncatedAndCorruptFilesFailCleanly) {
    std::string err = error_of([] { load_torch_checkpoint(kPickle + "truncated.pt"); });
    std::printf("truncated.pt: %s\n", err.c_str());
    EXPECT_NE(err.find("truncated"), std::string::npos) << err;

    err = error_of([] { load_torch_checkpoint(kData + "huge_string.pt"); });
    EXPECT_NE(err.find("ends unexpectedly"), std::string::npos) << err;

    err = error_of([] { load_torch_checkpoint(kData + "view_out_of_bounds.pt"); });
    EXPECT_NE(err.find("reaches element 6 of storage '0' which has 6 elements"), std::string::npos) << err;

    err = error_of([] { load_torch_checkpoint(kData + "cyclic.pt"); });
    EXPECT_NE(err.find("deeper than 64 levels"), std::string::npos) << err;

    std::vector<std::string> skipped;
    err = error_of([&] { load_torch_checkpoint(kData + "memo_bomb.pt", "", &skipped); });
    EXPECT_NE(err.find("more than a million entries"), std::string::npos) << err;

    err = error_of([] { load_torch_checkpoint(kData + "deflated.pt"); });
    EXPECT_NE(err.find("compressed (method 8, deflate)"), std::string::npos) << err;

    err = error_of([] { load_torch_checkpoint(kData + "does_not_exist.pt"); });
    EXPECT_NE(err.find("not found"), std::string::npos) << err;

    // Every prefix of a valid archive must fail with an exception, never crash.
    std::ifstream in(kPickle + "single_entry.pt", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string cut = (fs::temp_directory_path() / "reel_test_cut.pt").string();
    int failures = 0;
    for (size_t n = 1; n < bytes.size(); n += 7) {
        std::ofstream(cut, std::ios::binary | std::ios::trunc).write(bytes.data(), (std::streamsize)n);
        failures += error_of([&] { load_torch_checkpoint(cut); }) != "<no error>";
    }
    EXPECT_EQ(failures, (int)((bytes.size() - 1 + 6) / 7));
    // And flipping any byte of the pickle must not crash either (errors or a changed value are fine).
    for (size_t i = 0; i < bytes.size(); i++) {
        std::string b = bytes;
        b[i] = (char)(b[i] ^ 0x5a);
        std::ofstream(cut, std::ios::binary | std::ios::trunc).write(b.data(), (std::streamsize)b.size());
        error_of([&] { load_torch_checkpoint(cut); });
    }
    fs::remove(cut);
}

TEST(TorchPickle, LegacyFormatLoadsLikeZip) {
    TensorMap legacy = load_torch_checkpoint(kPickle + "legacy_format.pth");
    TensorMap zip = load_torch_checkpoint(kPickle + "state_dict_ordered.pt");
    ASSERT_EQ(legacy.size(), zip.size());
    for (const auto& kv : zip) {
        ASSERT_TRUE(legacy.count(kv.first)) << kv.first;
        EXPECT_TRUE(at::equal(legacy.at(kv.first), kv.second)) << kv.first;
    }
    auto entries = list_torch_checkpoint(kPickle + "legacy_format.pth");
    EXPECT_EQ(entries.size(), zip.size());
}

TEST(TorchPickle, ParametersListsNonTensorLeavesAndMisalignedData) {
    std::vector<std::string> skipped;
    TensorMap t = load_torch_checkpoint(kData + "only_generator.pt", "", &skipped);
    ASSERT_EQ(t.size(), 3u);
    EXPECT_TRUE(at::equal(t.at("generator/model.patch_embedding.bias"), at::tensor({0.5f, -1.25f, 2.0f, 3.5f})));
    // Parameter with a transposed view: storage [.., .., 2, 3.5, 4, -0.75], offset 2, stride [1, 2].
    EXPECT_TRUE(at::equal(t.at("generator/model._orig_mod.head._checkpoint_wrapped_module.weight"),
                          at::tensor({2.0f, 4.0f, 3.5f, -0.75f}).view({2, 2})));
    EXPECT_TRUE(at::equal(t.at("generator/model.steps"), at::tensor({7, -3, 11}, at::kLong)));
    std::sort(skipped.begin(), skipped.end());
    EXPECT_EQ(skipped, (std::vector<std::string>{"config/lr (float)", "config/name (str)", "step (int)"}));

    TensorMap n = load_torch_checkpoint(kData + "nested_lists.pt");
    ASSERT_EQ(n.size(), 3u);
    EXPECT_TRUE(at::equal(n.at("layers/0"), at::tensor({1.0f, 2.0f})));
    EXPECT_TRUE(at::equal(n.at("layers/1"), at::tensor({3.0f, 4.0f})));
    EXPECT_TRUE(at::equal(n.at("pair/0"), at::tensor({4.0f})));

    TensorMap z = load_torch_checkpoint(kData + "zip64.pt");
    ASSERT_EQ(z.size(), 1u);
    EXPECT_TRUE(at::equal(z.at("w"), at::tensor({1.5f, 2.5f, -3.5f})));
}

TEST(TorchPickle, ListingReadsNoData) {
    auto entries = list_torch_checkpoint(kPickle + "dtypes.pt");
    ASSERT_EQ(entries.size(), 4u);
    std::map<std::string, TorchTensorEntry> by;
    for (const auto& e : entries)
        by[e.name] = e;
    EXPECT_EQ(by.at("w_bf16").dtype, "BF16");
    EXPECT_EQ(by.at("w_bf16").shape, (std::vector<int64_t>{3, 5}));
    EXPECT_EQ(by.at("w_bf16").nbytes, 30u);
    EXPECT_EQ(by.at("w_fp16").dtype, "F16");
    EXPECT_EQ(by.at("w_fp64").dtype, "F64");
    EXPECT_EQ(by.at("steps_i64").dtype, "I64");
    EXPECT_EQ(by.at("steps_i64").nbytes, 48u);
}

TEST(TorchPickle, TensorsAreWritableWithoutTouchingTheFile) {
    const std::string copy = (fs::temp_directory_path() / "reel_test_single.pt").string();
    fs::copy_file(kPickle + "single_entry.pt", copy, fs::copy_options::overwrite_existing);
    {
        TensorMap t = load_torch_checkpoint(copy);
        t.at("only").fill_(42.0f);
    }
    TensorMap again = load_torch_checkpoint(copy);
    EXPECT_NE(again.at("only")[0].item<float>(), 42.0f);
    fs::remove(copy);
}
