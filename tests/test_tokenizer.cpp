// SentencePiece tokenizer, umT5 style, with a tiny committed unigram model (tests/data/tokenizer/README.md) that has
// the umT5 special ids (pad 0, EOS 1, unk 2, no BOS).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>

#include "diffusion/tokenizer.h"

namespace reel {
namespace {

const std::string& tiny_model() {
    static const std::string path = std::string(REEL_TEST_DATA) + "/tokenizer/tiny_unigram.model";
    return path;
}

TEST(Tokenizer, LoadErrorsNameThePath) {
    try {
        Tokenizer::load("/nonexistent/spiece.model");
        FAIL() << "expected an error";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("/nonexistent/spiece.model"), std::string::npos) << e.what();
    }
    char tmpl[] = "/tmp/reel_tokenizer_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    const std::string bad = std::string(tmpl) + "/garbage.model";
    std::ofstream(bad) << "this is not a protobuf";
    struct Cleanup {
        std::string f, d;
        ~Cleanup() {
            std::remove(f.c_str());
            rmdir(d.c_str());
        }
    } cleanup{bad, tmpl};
    try {
        Tokenizer::load(bad);
        FAIL() << "expected an error";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("not a valid SentencePiece model"), std::string::npos) << e.what();
    }
}

TEST(Tokenizer, EncodesPiecesThenEos) {
    Tokenizer tok = Tokenizer::load(tiny_model());
    EXPECT_EQ(tok.eos_id(), 1);
    EXPECT_EQ(tok.pad_id(), 0);
    EXPECT_GT(tok.vocab_size(), 20);
    std::vector<int> ids = tok.encode("a red fox runs through the forest");
    ASSERT_GE(ids.size(), 3u);
    EXPECT_EQ(ids.back(), 1);
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
        EXPECT_GT(ids[i], 2) << "piece " << i << " is a special id";
        EXPECT_LT(ids[i], tok.vocab_size());
    }
    EXPECT_EQ(tok.decode(ids), "a red fox runs through the forest");
    // Whitespace is collapsed and trimmed before encoding, as the reference's whitespace_clean does.
    EXPECT_EQ(tok.encode("  a red\tfox \n runs   through the forest  "), ids);
    EXPECT_EQ(Tokenizer::clean("  a \t\n b  "), "a b");
    EXPECT_EQ(tok.encode(""), std::vector<int>{1});
}

TEST(Tokenizer, PadsAndTruncatesKeepingEos) {
    Tokenizer tok = Tokenizer::load(tiny_model());
    std::vector<int> ids = tok.encode("the camera pans slowly over a quiet harbor with small boats");
    TokenBatch b = tok.pad(ids, 64);
    ASSERT_EQ(b.ids.sizes(), (at::IntArrayRef{1, 64}));
    ASSERT_EQ(b.mask.sizes(), (at::IntArrayRef{1, 64}));
    EXPECT_EQ(b.ids.scalar_type(), at::kLong);
    EXPECT_EQ(b.length, int64_t(ids.size()));
    EXPECT_EQ(b.mask.sum().item<int64_t>(), int64_t(ids.size()));
    for (size_t i = 0; i < ids.size(); ++i)
        EXPECT_EQ(b.ids[0][int64_t(i)].item<int64_t>(), ids[i]);
    EXPECT_EQ(b.ids.narrow(1, int64_t(ids.size()), 64 - int64_t(ids.size())).abs().sum().item<int64_t>(), 0);

    ASSERT_GT(ids.size(), 5u);
    TokenBatch t = tok.pad(ids, 5);
    EXPECT_EQ(t.length, 5);
    EXPECT_EQ(t.mask.sum().item<int64_t>(), 5);
    for (int i = 0; i < 4; ++i)
        EXPECT_EQ(t.ids[0][i].item<int64_t>(), ids[size_t(i)]);
    EXPECT_EQ(t.ids[0][4].item<int64_t>(), 1);

    TokenBatch u = tok.tokenize("waves crash against the rocks", 16);
    EXPECT_EQ(u.ids[0][u.length - 1].item<int64_t>(), 1);
    EXPECT_THROW(tok.pad(ids, 0), std::runtime_error);
}

}  // namespace
}  // namespace reel
