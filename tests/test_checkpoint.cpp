// load_checkpoint: format detection by magic bytes, choice of the generator group in Self-Forcing
// style training checkpoints, wrapper-name normalization, listing, and the error messages.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/golden_util.h"
#include "weights/checkpoint.h"
#include "weights/safetensors.h"
#include "weights/torch_pickle.h"

using namespace reel;
using reel::test::error_of;
namespace fs = std::filesystem;

namespace {

const std::string kGolden = test::golden_path("");
const std::string kPickle = test::golden_path("pickle/");
const std::string kData = std::string(REEL_TEST_DATA) + "/weights/";

std::string tmp_path(const std::string& name) {
    return (fs::temp_directory_path() / ("reel_test_ckpt_" + std::to_string(getpid()) + "_" + name)).string();
}

}  // namespace

TEST(Checkpoint, NormalizeWanKey) {
    EXPECT_EQ(normalize_wan_key("blocks.0.self_attn.q.weight"), "blocks.0.self_attn.q.weight");
    EXPECT_EQ(normalize_wan_key("model.blocks.0.self_attn.q.weight"), "blocks.0.self_attn.q.weight");
    EXPECT_EQ(normalize_wan_key("model._fsdp_wrapped_module.head.head.weight"), "head.head.weight");
    EXPECT_EQ(normalize_wan_key("_orig_mod.model.patch_embedding.bias"), "patch_embedding.bias");
    EXPECT_EQ(normalize_wan_key("model.blocks.3._checkpoint_wrapped_module.ffn.0.weight"), "blocks.3.ffn.0.weight");
    EXPECT_EQ(normalize_wan_key("model._fsdp_wrapped_module.blocks.1._fsdp_wrapped_module._checkpoint_wrapped_module."
                                "self_attn.o.bias"),
              "blocks.1.self_attn.o.bias");
    // Only whole components, and "model." only at the front.
    EXPECT_EQ(normalize_wan_key("blocks.0.model.weight"), "blocks.0.model.weight");
    EXPECT_EQ(normalize_wan_key("my_orig_mod.weight"), "my_orig_mod.weight");
    EXPECT_EQ(normalize_wan_key("modelx.weight"), "modelx.weight");
    EXPECT_EQ(normalize_wan_key("model"), "model");
    EXPECT_EQ(normalize_wan_key("generator/model.head.bias"), "generator/head.bias");
}

TEST(Checkpoint, DetectsFormatByMagic) {
    EXPECT_EQ(detect_checkpoint_format(kGolden + "dit_weights.safetensors"), CheckpointFormat::Safetensors);
    EXPECT_EQ(detect_checkpoint_format(kPickle + "state_dict_ordered.pt"), CheckpointFormat::TorchZip);
    EXPECT_EQ(detect_checkpoint_format(kPickle + "legacy_format.pth"), CheckpointFormat::TorchLegacy);
    EXPECT_EQ(detect_checkpoint_format(kGolden + "README.md"), CheckpointFormat::Unknown);
    // The extension means nothing: a safetensors file named .pt is still safetensors.
    const std::string renamed = tmp_path("really_safetensors.pt");
    fs::copy_file(kGolden + "scheduler.safetensors", renamed, fs::copy_options::overwrite_existing);
    EXPECT_EQ(detect_checkpoint_format(renamed), CheckpointFormat::Safetensors);
    EXPECT_EQ(load_checkpoint(renamed).size(), load_safetensors(kGolden + "scheduler.safetensors").size());
    fs::remove(renamed);
    EXPECT_NE(error_of([] { detect_checkpoint_format(kPickle + "nope.pt"); }).find("not found"), std::string::npos);
}

TEST(Checkpoint, SelfForcingEmaAndGenerator) {
    auto ref = test::read_golden_json("pickle/manifest.json")["files"]["selfforcing_style.pt"];
    for (bool ema : {true, false}) {
        SCOPED_TRACE(ema ? "ema" : "generator");
        std::string group;
        CheckpointOptions opts;
        opts.ema = ema;
        TensorMap t = load_checkpoint(kPickle + "selfforcing_style.pt", opts, &group);
        const char* want_group = ema ? "generator_ema" : "generator";
        EXPECT_EQ(group, want_group);
        const auto& want = ref[want_group];
        ASSERT_EQ(t.size(), want.size());
        for (auto it = want.begin(); it != want.end(); ++it) {
            std::string name = normalize_wan_key(it.key());
            ASSERT_TRUE(t.count(name)) << name;
            EXPECT_EQ(name.find("model."), std::string::npos);
            const at::Tensor& x = t.at(name);
            EXPECT_EQ(x.sizes().vec(), it.value()["shape"].get<std::vector<int64_t>>());
            EXPECT_NEAR(x.to(at::kDouble).sum().item<double>(), it.value()["sum"].get<double>(),
                        1e-5 * (1 + std::fabs(it.value()["sum"].get<double>())))
                << name;
        }
    }
    // The normalized names are exactly those of the plain state dict.
    TensorMap plain = load_checkpoint(kPickle + "state_dict_ordered.pt");
    TensorMap gen = load_checkpoint(kPickle + "selfforcing_style.pt", {false});
    ASSERT_EQ(plain.size(), gen.size());
    for (const auto& kv : plain) {
        ASSERT_TRUE(gen.count(kv.first)) << kv.first;
        EXPECT_TRUE(at::equal(gen.at(kv.first), kv.second)) << kv.first;
    }
}

TEST(Checkpoint, EmaFallsBackToTheOnlyGroup) {
    std::string group;
    TensorMap t = load_checkpoint(kData + "only_generator.pt", {true}, &group);
    EXPECT_EQ(group, "generator");  // --ema asked, no generator_ema: not an error, the caller is told
    ASSERT_EQ(t.size(), 3u);
    EXPECT_TRUE(at::equal(t.at("patch_embedding.bias"), at::tensor({0.5f, -1.25f, 2.0f, 3.5f})));
    EXPECT_TRUE(t.count("head.weight"));
    EXPECT_TRUE(t.count("steps"));
}

TEST(Checkpoint, PlainStateDictsAndOtherFormats) {
    std::string group = "unset";
    TensorMap t = load_checkpoint(kPickle + "single_entry.pt", {}, &group);
    EXPECT_EQ(group, "");
    ASSERT_EQ(t.size(), 1u);
    EXPECT_EQ(t.at("only").sizes().vec(), std::vector<int64_t>{7});

    TensorMap legacy = load_checkpoint(kPickle + "legacy_format.pth");
    TensorMap zip = load_checkpoint(kPickle + "state_dict_ordered.pt");
    ASSERT_EQ(legacy.size(), zip.size());
    for (const auto& kv : zip)
        EXPECT_TRUE(at::equal(legacy.at(kv.first), kv.second)) << kv.first;

    TensorMap st = load_checkpoint(kGolden + "dit_weights.safetensors", {}, &group);
    EXPECT_EQ(group, "");
    EXPECT_EQ(st.size(), load_safetensors(kGolden + "dit_weights.safetensors").size());

    // Several groups, none of them a generator: returned as is, '/'-joined.
    TensorMap nested = load_checkpoint(kData + "nested_lists.pt", {}, &group);
    EXPECT_EQ(group, "");
    EXPECT_TRUE(nested.count("layers/0"));
}

TEST(Checkpoint, ListsWithoutLoadingOrNormalizing) {
    auto st = list_checkpoint(kGolden + "dit_weights.safetensors");
    ASSERT_FALSE(st.empty());
    EXPECT_EQ(st.front().name, "blocks.0.cross_attn.k.bias");
    EXPECT_EQ(st.front().dtype, "F32");
    EXPECT_EQ(st.front().nbytes, 320u);

    auto sf = list_checkpoint(kPickle + "selfforcing_style.pt");
    bool found = false;
    for (const auto& e : sf) {
        if (e.name == "generator_ema/model._fsdp_wrapped_module.patch_embedding.weight") {
            found = true;
            EXPECT_EQ(e.shape, (std::vector<int64_t>{8, 4, 1, 2, 2}));
            EXPECT_EQ(e.nbytes, 8u * 4 * 2 * 2 * 4);
        }
    }
    EXPECT_TRUE(found);
    EXPECT_TRUE(std::is_sorted(sf.begin(), sf.end(),
                               [](const CheckpointEntry& a, const CheckpointEntry& b) { return a.name < b.name; }));

    // Listing a safetensors file whose data is cut off still works: the data is not read...
    const std::string cut = tmp_path("cut.safetensors");
    {
        std::ifstream in(kGolden + "dit_weights.safetensors", std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::ofstream(cut, std::ios::binary).write(bytes.data(), 20000);
    }
    // ...but its header is still checked against the file size.
    EXPECT_NE(error_of([&] { list_checkpoint(cut); }).find("truncated"), std::string::npos);
    fs::remove(cut);
}

TEST(Checkpoint, ClearErrors) {
    std::string err = error_of([] { load_checkpoint(kPickle + "missing.pt"); });
    EXPECT_NE(err.find("not found"), std::string::npos) << err;
    EXPECT_NE(err.find("missing.pt"), std::string::npos) << err;

    err = error_of([] { load_checkpoint(kGolden + "README.md"); });
    EXPECT_NE(err.find("unknown checkpoint format"), std::string::npos) << err;

    err = error_of([] { load_checkpoint(kGolden); });
    EXPECT_NE(err.find("is a directory"), std::string::npos) << err;

    const std::string empty = tmp_path("empty.safetensors");
    save_safetensors(empty, {});
    err = error_of([&] { load_checkpoint(empty); });
    EXPECT_NE(err.find("contains no tensors"), std::string::npos) << err;
    fs::remove(empty);

    const std::string zero = tmp_path("zero.pt");
    std::ofstream(zero).close();
    err = error_of([&] { load_checkpoint(zero); });
    EXPECT_NE(err.find("the file is empty"), std::string::npos) << err;
    fs::remove(zero);

    err = error_of([] { load_checkpoint(kPickle + "malicious.pt"); });
    EXPECT_NE(err.find("global 'posix.system' is not allowed"), std::string::npos) << err;
    err = error_of([] { load_checkpoint(kPickle + "truncated.pt"); });
    EXPECT_NE(err.find("truncated"), std::string::npos) << err;

    // Two names that collapse to one after normalization are refused rather than silently merged.
    const std::string clash = tmp_path("clash.safetensors");
    save_safetensors(clash, {{"model.head.bias", at::ones({2})}, {"head.bias", at::zeros({2})}});
    err = error_of([&] { load_checkpoint(clash); });
    EXPECT_NE(err.find("both normalize to 'head.bias'"), std::string::npos) << err;
    fs::remove(clash);
}
