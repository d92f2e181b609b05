// The training tool end to end at toy size: every stage of the recipe runs, resumes, exports a model folder that
// `reel generate` serves, and the export carries what the DiT was trained with (context noise) into reel.json.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "process_util.h"

namespace {

using namespace reel::test;

const std::string kTool = REEL_TRAIN_TOOL;
const std::string kReel = REEL_BINARY;

class TrainTool : public TempDirTest {
  protected:
    // Runs the tool on this test's folders with toy sizes; returns its exit status, its output in `log`.
    int tool(const std::string& args,
             std::string* log = nullptr,
             const std::string& model = "model",
             const std::string& state = "state",
             int dit_layers = 1) {
        const std::string common = " --out " + dir_ + "/" + model + " --state " + dir_ + "/" + state +
                                   " --threads 1 --seed 1 --eval-prompts 1 --eval-frames 9"
                                   " --vae-dim 8 --vae-dec-dim 8 --vae-mult 1 2 4 --vae-res 1"
                                   " --latent-clips 4 --chunks 2 --dit-batch 2 --dit-dim 32 --dit-ffn 64"
                                   " --dit-heads 2 --text-dim 32 --dit-patch 4 --recommend-sink 3 --dit-layers " +
                                   std::to_string(dit_layers);
        std::string out, err;
        const int rc = run_captured(kTool + " " + args + common, &out, &err);
        if (log)
            *log = out + err;
        return rc;
    }
};

TEST_F(TrainTool, RecipeRunsResumesAndExportsAServableModel) {
    std::string log;
    ASSERT_EQ(tool("--stage tokenizer", &log), 0) << log;
    ASSERT_EQ(tool("--stage vae --max-steps 2 --vae-batch 1 --vae-frames 9", &log), 0) << log;
    // The pixels another shape would change weigh more in the decoder's loss.
    ASSERT_EQ(tool("--stage vae --resume --max-steps 3 --vae-batch 1 --vae-frames 9 --contrast-weight 8", &log), 0)
        << log;
    EXPECT_NE(log.find("\"step\":3"), std::string::npos) << log;
    const std::string dit = "--stage dit --context-noise 100 --self-context 0.5 --self-context-chain";
    ASSERT_EQ(tool(dit + " --max-steps 2", &log), 0) << log;
    EXPECT_EQ(nlohmann::json::parse(slurp(path("state/dit.json")))["step"].get<int>(), 2);
    // Resumed with the median-seeking loss: the checkpoint records which loss its last steps used.
    ASSERT_EQ(tool(dit + " --resume --max-steps 3 --dit-loss l1", &log), 0) << log;
    const nlohmann::json ck = nlohmann::json::parse(slurp(path("state/dit.json")));
    EXPECT_EQ(ck["step"].get<int>(), 3);
    EXPECT_EQ(ck["dit_loss"].get<std::string>(), "l1");
    // World-corrected rollout windows join the batches: made once from the folder's own rollouts, then cached.
    const std::string corrected =
        " --corrected-rollouts 2 --corrected-chunks 4 --corrected-every 1 --corrected-share 0.5";
    ASSERT_EQ(tool(dit + " --resume --max-steps 4" + corrected, &log), 0) << log;
    EXPECT_NE(log.find("6 world-corrected windows from 2 rollouts"), std::string::npos) << log;
    EXPECT_EQ(nlohmann::json::parse(slurp(path("state/dit.json")))["step"].get<int>(), 4);
    ASSERT_EQ(tool(dit + " --resume --max-steps 5" + corrected, &log), 0) << log;
    EXPECT_NE(log.find("6 cached world-corrected windows"), std::string::npos) << log;
    // The pixel loss decodes the x0 estimate of one chunk per step through the folder's frozen decoder.
    ASSERT_EQ(tool(dit + " --resume --max-steps 6 --dit-pixel-weight 1 --dit-pixel-rows 1 --dit-pixel-max-t 500", &log),
              0)
        << log;
    EXPECT_NE(log.find("dit step 6 "), std::string::npos) << log;
    EXPECT_NE(log.find("pixel loss ema"), std::string::npos) << log;
    // With a shape-conditioned discriminator on crops of the decoded estimates, saved beside the checkpoint.
    ASSERT_EQ(tool(dit + " --resume --max-steps 7 --dit-gan-weight 0.1 --dit-gan-warmup 0 --gan-frames 4", &log), 0)
        << log;
    EXPECT_NE(log.find("D(real)"), std::string::npos) << log;
    EXPECT_TRUE(exists(path("state/dit_disc.safetensors")));
    // A frozen shape classifier judges the decoded estimates' crops: trained once, then loaded from the state.
    ASSERT_EQ(tool(dit + " --resume --max-steps 8 --dit-shape-weight 0.1 --dit-shape-steps 2 --gan-frames 4", &log), 0)
        << log;
    EXPECT_NE(log.find("shape classifier trained 2 steps"), std::string::npos) << log;
    EXPECT_NE(log.find("shape CE ema"), std::string::npos) << log;
    ASSERT_EQ(tool(dit + " --resume --max-steps 9 --dit-shape-weight 0.1 --gan-frames 4", &log), 0) << log;
    EXPECT_NE(log.find("shape classifier (cached)"), std::string::npos) << log;
    // Latent cells where another shape would differ weigh more, in clips and in corrected windows alike.
    ASSERT_EQ(tool(dit + " --resume --max-steps 10 --dit-contrast-weight 16" + corrected, &log), 0) << log;
    EXPECT_NE(log.find("shape-contrast weight 16.0"), std::string::npos) << log;
    EXPECT_NE(log.find("dit step 10 "), std::string::npos) << log;
    for (const char* f :
         {"reel.json", "dit.safetensors", "vae.safetensors", "text_encoder.safetensors", "tokenizer.model"})
        EXPECT_TRUE(exists(path("model/") + f)) << f;

    // The export recommends the context noise the DiT was trained with, and the eval runs it that way.
    const nlohmann::json man = nlohmann::json::parse(slurp(path("model/reel.json")));
    EXPECT_EQ(man["recommended"]["context_noise"].get<double>(), 100.0);
    EXPECT_EQ(man["recommended"]["cache"].get<std::string>(), "window:sink=3,recent=3");
    ASSERT_EQ(tool("--stage eval --context-noise 100", &log), 0) << log;
    const nlohmann::json ev = nlohmann::json::parse(slurp(path("state/eval_9.json")));
    EXPECT_EQ(ev["context_noise"].get<double>(), 100.0);
    EXPECT_EQ(ev["all"]["videos"].get<int>(), 1);
    // Without the flag the eval follows the model folder's recommendation.
    ASSERT_EQ(tool("--stage eval", &log), 0) << log;
    EXPECT_EQ(nlohmann::json::parse(slurp(path("state/eval_9.json")))["context_noise"].get<double>(), 100.0);
    ASSERT_EQ(tool("--stage eval --eval-context-noise 0", &log), 0) << log;
    EXPECT_EQ(nlohmann::json::parse(slurp(path("state/eval_9.json")))["context_noise"].get<double>(), 0.0);

    // Continuing the rendered clip's first chunk: the score covers the frames after it, and the summary splits
    // shape by the prompted shape.
    ASSERT_EQ(tool("--stage eval --eval-prefix-chunks 1", &log), 0) << log;
    const nlohmann::json pe = nlohmann::json::parse(slurp(path("state/eval_9.json")));
    EXPECT_EQ(pe["prefix_chunks"].get<int>(), 1);
    ASSERT_EQ(pe["by_prompted_shape"].size(), 1u) << pe.dump();
    EXPECT_EQ(pe["by_prompted_shape"].begin().value()["videos"].get<int>(), 1);
    // What a token of the DiT's width can carry: the VAE alone, principal components, the head's span.
    ASSERT_EQ(tool("--stage patch-rank", &log), 0) << log;
    EXPECT_NE(log.find("patch-rank: identity"), std::string::npos) << log;
    EXPECT_NE(log.find("span of the DiT's head"), std::string::npos) << log;
    // The latent probe reads what the folder's DiT writes, too: its rollouts' latents, cached in the state.
    ASSERT_EQ(tool("--stage latent-probe --probe-rollouts 3", &log), 0) << log;
    EXPECT_NE(log.find("latent probe: 3 clips of DiT rollouts"), std::string::npos) << log;
    EXPECT_NE(log.find("latent probe: shape, mlp"), std::string::npos) << log;
    EXPECT_TRUE(exists(path("state/cache/dit_samples.safetensors")));
    // A deeper DiT grows from the folder's (in a copy of it: the VAE and tokenizer stay): the missing block starts
    // as an identity.
    std::filesystem::copy(path("model"), path("grown"));
    ASSERT_EQ(tool("--stage dit --max-steps 1 --dit-init " + path("model"), &log, "grown", "grown_state", 2), 0) << log;
    EXPECT_NE(log.find("1 blocks beyond the init's start as identities"), std::string::npos) << log;

    // reel serves the folder with the recommended settings.
    const std::string cmd = kReel + " generate -m " + path("model") +
                            " -p 'a red circle moving right on a black background' -n 21 --threads 1 -q -o " +
                            path("out.mp4") + " 2>" + path("gen.err");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << slurp(path("gen.err"));
    const nlohmann::json rec = nlohmann::json::parse(slurp(path("out.mp4.json")));
    EXPECT_EQ(rec["settings"]["context_noise"].get<double>(), 100.0);
    EXPECT_EQ(rec["frames"].get<int>(), 21);
}

TEST_F(TrainTool, BadFlagsAreRefusedByName) {
    std::string log;
    EXPECT_NE(tool("--stage dit --self-context 2", &log), 0);
    EXPECT_NE(log.find("--self-context"), std::string::npos) << log;
    EXPECT_NE(tool("--stage eval --eval-context-noise 1000", &log), 0);
    EXPECT_NE(log.find("--eval-context-noise"), std::string::npos) << log;
    EXPECT_NE(tool("--stage dit --dit-loss huber", &log), 0);
    EXPECT_NE(log.find("--dit-loss"), std::string::npos) << log;
    EXPECT_NE(tool("--stage dit --dit-shape-weight -1", &log), 0);
    EXPECT_NE(log.find("--dit-shape-weight"), std::string::npos) << log;
    EXPECT_NE(tool("--stage dit --dit-pixel-weight -1", &log), 0);
    EXPECT_NE(log.find("--dit-pixel-weight"), std::string::npos) << log;
    EXPECT_NE(tool("--stage dit --dit-contrast-weight -1", &log), 0);
    EXPECT_NE(log.find("--dit-contrast-weight"), std::string::npos) << log;
    EXPECT_NE(tool("--stage vae --contrast-weight -2", &log), 0);
    EXPECT_NE(log.find("--contrast-weight"), std::string::npos) << log;
    EXPECT_NE(tool("--stage dit --corrected-share 0.95", &log), 0);
    EXPECT_NE(log.find("--corrected-share"), std::string::npos) << log;
}

}  // namespace
