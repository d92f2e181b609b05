// --negative-prompt: plain text as given, "swap:a=b,..." the prompt with whole words swapped (simultaneously, without
// case), and malformed swap lists refused with the item named.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "src/engine/negative_prompt.h"

using namespace reel;

TEST(NegativePrompt, PlainTextAndEmpty) {
    EXPECT_EQ(negative_prompt_for("a red square", ""), "");
    EXPECT_EQ(negative_prompt_for("a red square", "blurry, static"), "blurry, static");
}

TEST(NegativePrompt, SwapsWholeWordsAtOnce) {
    const std::string spec = "swap:square=circle,triangle=circle,circle=square";
    EXPECT_EQ(negative_prompt_for("a red square moving left on a black background", spec),
              "a red circle moving left on a black background");
    EXPECT_EQ(negative_prompt_for("a blue circle and a green triangle", spec), "a blue square and a green circle");
    // Only whole words, punctuation kept, case ignored in the match.
    EXPECT_EQ(negative_prompt_for("Square squares, square.", spec), "circle squares, circle.");
    EXPECT_EQ(negative_prompt_for("a yellow star", spec), "a yellow star");
}

// The branches' texts in CausalRollout's row order: cond, [uncond], [negative].
TEST(NegativePrompt, GuidancePromptsInRowOrder) {
    const std::string p = "a red square", swap = "swap:square=circle";
    EXPECT_EQ(guidance_prompts(p, 1.0, swap, 0.0), (std::vector<std::string>{p}));
    EXPECT_EQ(guidance_prompts(p, 1.5, "", 0.0), (std::vector<std::string>{p, ""}));
    EXPECT_EQ(guidance_prompts(p, 1.5, swap, 0.0), (std::vector<std::string>{p, "a red circle"}));
    EXPECT_EQ(guidance_prompts(p, 1.5, swap, 1.0), (std::vector<std::string>{p, "", "a red circle"}));
    EXPECT_EQ(guidance_prompts(p, 1.0, swap, 1.0), (std::vector<std::string>{p, "a red circle"}));
}

TEST(NegativePrompt, MalformedSwapListsAreRefused) {
    for (const char* bad : {"swap:", "swap:square", "swap:=circle", "swap:square=", "swap:a=b,,c=d",
                            "swap:square=circle,square=triangle", "swap:big square=circle"}) {
        EXPECT_THROW(check_negative_prompt(bad), std::runtime_error) << bad;
        EXPECT_THROW(negative_prompt_for("a square", bad), std::runtime_error) << bad;
    }
    try {
        check_negative_prompt("swap:square=circle,tri");
        FAIL() << "no error";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("'tri'"), std::string::npos) << e.what();
    }
    EXPECT_NO_THROW(check_negative_prompt("a plain negative prompt = fine"));
    // The validator's form: empty when fine, else the problem without the "negative prompt: " prefix.
    EXPECT_EQ(negative_prompt_problem("swap:square=circle"), "");
    EXPECT_EQ(negative_prompt_problem("anything"), "");
    EXPECT_EQ(negative_prompt_problem("swap:square=circle,square=x"), "'square' is swapped twice");
}
