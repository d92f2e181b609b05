// The command line as users and scripts drive it: the `reel` binary run on the toy model folder.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "process_util.h"
#include "src/video/video_reader.h"
#include "src/video/video_writer.h"
#include "tinyworld/prompt.h"
#include "tinyworld/world.h"

namespace {

using namespace reel::test;

const std::string kReel = REEL_BINARY;
const std::string kToy = std::string(REEL_TEST_DATA) + "/toy_model";

struct Result {
    int rc = -1;
    std::string out, err;
};

class Cli : public TempDirTest {
  protected:
    Result run(const std::string& args) {
        Result r;
        r.rc = run_captured(kReel + " " + args, &r.out, &r.err);
        return r;
    }
};

int64_t count_frames(const std::string& path, reel::VideoInfo* info = nullptr) {
    auto r = reel::VideoReader::open(path);
    if (info)
        *info = r->info();
    std::vector<uint8_t> rgb;
    int64_t n = 0;
    while (r->read(rgb))
        ++n;
    return n;
}

TEST_F(Cli, HelpListsEverySubcommand) {
    Result r = run("--help");
    EXPECT_EQ(r.rc, 0);
    for (const char* sub : {"generate", "inspect", "eval", "profile"})
        EXPECT_NE(r.out.find(sub), std::string::npos) << sub;
    Result e = run("eval --help");
    for (const char* sub : {"tinyworld", "fidelity"})
        EXPECT_NE(e.out.find(sub), std::string::npos) << sub;
    // Every cache and attention flag is documented in generate's help.
    Result g = run("generate --help");
    for (const char* flag : {"--cache", "--merge", "--kv-quant", "--cache-budget", "--attn", "--cross-attn"})
        EXPECT_NE(g.out.find(flag), std::string::npos) << flag;
}

TEST_F(Cli, GenerateWritesPlayableMp4AndRecord) {
    const std::string mp4 = path("a.mp4");
    Result r = run("generate -m " + kToy + " -p 'a red circle moving right' -n 33 --seed 7 -q -o " + mp4);
    ASSERT_EQ(r.rc, 0) << r.err;
    reel::VideoInfo info;
    EXPECT_EQ(count_frames(mp4, &info), 33);
    EXPECT_EQ(info.width, 64);
    EXPECT_EQ(info.height, 64);
    EXPECT_DOUBLE_EQ(info.fps, 16.0);

    nlohmann::json rec = nlohmann::json::parse(slurp(mp4 + ".json"));
    EXPECT_EQ(rec["prompt"], "a red circle moving right");
    EXPECT_EQ(rec["seed"], 7);
    EXPECT_EQ(rec["frames"], 33);
    EXPECT_EQ(rec["model"]["name"], "toy");
    for (const char* k : {"text", "denoise", "cache_pass", "decode", "encode", "total"}) {
        ASSERT_TRUE(rec["timing_s"].contains(k)) << k;
        EXPECT_GE(rec["timing_s"][k].get<double>(), 0.0) << k;
    }
    EXPECT_GT(rec["timing_s"]["denoise"].get<double>(), 0.0);
    EXPECT_GT(rec["peak_rss_bytes"].get<int64_t>(), 0);
    // 2 layers x 9 latent frames x 16 tokens x 4 heads x 20 x (k + v) x 4 bytes at least.
    EXPECT_GE(rec["peak_kv_bytes"].get<int64_t>(), 2 * 9 * 16 * 4 * 20 * 2 * 4);
    for (const char* k : {"steps", "shift", "chunk", "fps", "width", "height", "cache", "device", "threads"})
        EXPECT_TRUE(rec["settings"].contains(k)) << k;
}

// -m NAME finds a model folder by name in $REEL_MODEL_PATH (then share/reel/weights, then the source weights/).
TEST_F(Cli, ModelByName) {
    Result r = run("generate -m toy_model -p 'a red circle' -n 9 -q -o " + path("n.mp4"));
    EXPECT_NE(r.rc, 0);
    EXPECT_NE(r.err.find("unknown model 'toy_model'"), std::string::npos) << r.err;
    const std::string env = "REEL_MODEL_PATH=/nonexistent:" + std::string(REEL_TEST_DATA) + " ";
    const std::string cmd = env + kReel + " generate -m toy_model -p 'a red circle' -n 9 -q -o " + path("n.mp4");
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    EXPECT_EQ(count_frames(path("n.mp4")), 9);
}

TEST_F(Cli, FramesRoundUpToWholeChunksAndSaySo) {
    Result r = run("generate -m " + kToy + " -p 'a blue square' -n 20 -o " + path("b.mp4"));
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.err.find("rounded up to 21"), std::string::npos) << r.err;
    EXPECT_EQ(count_frames(path("b.mp4")), 21);
}

TEST_F(Cli, SameSeedSameVideoOtherSeedOther) {
    ASSERT_EQ(run("generate -m " + kToy + " -p 'x' -n 9 --seed 1 -q --frames-dir " + path("s1")).rc, 0);
    ASSERT_EQ(run("generate -m " + kToy + " -p 'x' -n 9 --seed 1 -q --frames-dir " + path("s1b")).rc, 0);
    ASSERT_EQ(run("generate -m " + kToy + " -p 'x' -n 9 --seed 2 -q --frames-dir " + path("s2")).rc, 0);
    EXPECT_EQ(slurp(path("s1/frame_000004.png")), slurp(path("s1b/frame_000004.png")));
    EXPECT_NE(slurp(path("s1/frame_000004.png")), slurp(path("s2/frame_000004.png")));
    EXPECT_FALSE(exists(path("s1/frame_000009.png")));
}

// --guidance runs the DiT on [conditional; unconditional] rows: a different video than without it, the scale in the
// record, and the same video again for the same seed. --cfg is its alias.
TEST_F(Cli, GuidanceChangesTheVideoAndIsRecorded) {
    const std::string base = "generate -m " + kToy + " -p 'a red circle' -n 9 --seed 3 -q";
    ASSERT_EQ(run(base + " --frames-dir " + path("g1") + " -o " + path("g1.y4m")).rc, 0);
    ASSERT_EQ(run(base + " --guidance 3 --frames-dir " + path("g3") + " -o " + path("g3.y4m")).rc, 0);
    ASSERT_EQ(run(base + " --cfg 3 --frames-dir " + path("g3b")).rc, 0);
    EXPECT_NE(slurp(path("g1/frame_000004.png")), slurp(path("g3/frame_000004.png")));
    EXPECT_EQ(slurp(path("g3/frame_000004.png")), slurp(path("g3b/frame_000004.png")));
    nlohmann::json r1 = nlohmann::json::parse(slurp(path("g1.y4m.json")));
    nlohmann::json r3 = nlohmann::json::parse(slurp(path("g3.y4m.json")));
    EXPECT_EQ(r1["settings"]["guidance"].get<double>(), 1.0);  // the toy model recommends none
    EXPECT_EQ(r3["settings"]["guidance"].get<double>(), 3.0);
    Result bad = run(base + " --guidance -1 -o " + path("bad.mp4"));
    EXPECT_NE(bad.rc, 0);
    EXPECT_FALSE(exists(path("bad.mp4")));
}

// A negative prompt replaces the empty prompt in --guidance (a different video), a swap list is applied to the prompt
// (swap:red=blue on 'a red circle' is the same video as the negative prompt 'a blue circle'; the toy model reads 8
// characters, so the swap is early in the prompt), and --negative-guidance gives it a third branch; all recorded.
TEST_F(Cli, NegativePromptAndGuidanceChangeTheVideoAndAreRecorded) {
    const std::string base = "generate -m " + kToy + " -p 'a red circle' -n 9 --seed 3 -q --guidance 2";
    ASSERT_EQ(run(base + " --frames-dir " + path("n0")).rc, 0);
    ASSERT_EQ(run(base + " --negative-prompt 'a blue circle' --frames-dir " + path("n1")).rc, 0);
    ASSERT_EQ(run(base + " --negative-prompt swap:red=blue --frames-dir " + path("n2") + " -o " + path("n2.y4m")).rc,
              0);
    ASSERT_EQ(run(base + " --negative-prompt swap:red=blue --negative-guidance 1.5 --frames-dir " + path("n3") +
                  " -o " + path("n3.y4m"))
                  .rc,
              0);
    const std::string f = "/frame_000004.png";
    // EXPECT_TRUE, not EXPECT_EQ: gtest would print the PNG bytes.
    EXPECT_TRUE(slurp(path("n0") + f) != slurp(path("n1") + f));
    EXPECT_TRUE(slurp(path("n1") + f) == slurp(path("n2") + f));
    EXPECT_TRUE(slurp(path("n2") + f) != slurp(path("n3") + f));
    EXPECT_TRUE(slurp(path("n0") + f) != slurp(path("n3") + f));
    nlohmann::json r2 = nlohmann::json::parse(slurp(path("n2.y4m.json")));
    nlohmann::json r3 = nlohmann::json::parse(slurp(path("n3.y4m.json")));
    EXPECT_EQ(r2["settings"]["negative_prompt"].get<std::string>(), "swap:red=blue");
    EXPECT_EQ(r2["settings"]["negative_guidance"].get<double>(), 0.0);
    EXPECT_EQ(r3["settings"]["negative_guidance"].get<double>(), 1.5);
}

// --context-noise re-noises each finished chunk before the pass that writes its K/V: the first chunk is made before
// any cache pass and stays the same, later chunks change. A model folder's reel.json can recommend it.
TEST_F(Cli, ContextNoiseChangesLaterChunksAndComesFromTheModel) {
    const std::string base = " -p 'a red circle' -n 21 --seed 3 -q";
    ASSERT_EQ(run("generate -m " + kToy + base + " --frames-dir " + path("c0") + " -o " + path("c0.y4m")).rc, 0);
    ASSERT_EQ(run("generate -m " + kToy + base + " --context-noise 200 --frames-dir " + path("c2")).rc, 0);
    EXPECT_EQ(slurp(path("c0/frame_000000.png")), slurp(path("c2/frame_000000.png")));
    EXPECT_NE(slurp(path("c0/frame_000020.png")), slurp(path("c2/frame_000020.png")));
    EXPECT_EQ(nlohmann::json::parse(slurp(path("c0.y4m.json")))["settings"]["context_noise"].get<double>(), 0.0);

    // The same toy model, recommending context noise 200: its default run is the --context-noise 200 run.
    nlohmann::json man = nlohmann::json::parse(slurp(kToy + "/reel.json"));
    for (const char* part : {"dit", "vae", "text_encoder"})
        man[part]["file"] = kToy + "/" + man[part]["file"].get<std::string>();
    man["tokenizer"]["file"] = kToy + "/tokenizer.model";
    man["recommended"]["context_noise"] = 200;
    const std::string rec = path("rec_model");
    ASSERT_EQ(mkdir(rec.c_str(), 0755), 0);
    std::ofstream(rec + "/reel.json") << man.dump(2);
    ASSERT_EQ(run("generate -m " + rec + base + " --frames-dir " + path("r2") + " -o " + path("r2.y4m")).rc, 0);
    EXPECT_EQ(slurp(path("r2/frame_000020.png")), slurp(path("c2/frame_000020.png")));
    EXPECT_EQ(nlohmann::json::parse(slurp(path("r2.y4m.json")))["settings"]["context_noise"].get<double>(), 200.0);

    Result bad = run("generate -m " + kToy + base + " --context-noise 1000 -o " + path("bad.mp4"));
    EXPECT_NE(bad.rc, 0);
    EXPECT_NE(bad.err.find("--context-noise"), std::string::npos) << bad.err;
    EXPECT_FALSE(exists(path("bad.mp4")));
}

TEST_F(Cli, Y4mToStdout) {
    Result r = run("generate -m " + kToy + " -p 'a cat' -n 9 -q -o -");
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out.rfind("YUV4MPEG2 W64 H64", 0), 0u);
    size_t frames = 0;
    for (size_t p = r.out.find("FRAME"); p != std::string::npos; p = r.out.find("FRAME", p + 1))
        ++frames;
    EXPECT_EQ(frames, 9u);
}

TEST_F(Cli, JsonProgressEvents) {
    Result r = run("generate -m " + kToy + " -p 'a dog' -n 21 --json -o " + path("j.mp4"));
    ASSERT_EQ(r.rc, 0) << r.err;
    std::stringstream ss(r.err);
    std::string line;
    int progress = 0, done = 0;
    while (std::getline(ss, line)) {
        auto j = nlohmann::json::parse(line);  // every line is JSON
        if (j["event"] == "progress")
            ++progress;
        if (j["event"] == "done") {
            ++done;
            EXPECT_EQ(j["frames_done"], 21);
        }
    }
    EXPECT_EQ(progress, 2);
    EXPECT_EQ(done, 1);
}

// The decode thread changes when the VAE runs, not what it computes: with one intra-op thread per stage the video
// is byte-identical to a single-threaded sequential run, and a failing writer still stops the run with its error.
TEST_F(Cli, DecodeThreadGivesTheSameVideo) {
    const std::string base = "generate -m " + kToy + " -p 'a red fox' -n 33 -q --seed 3";
    Result off = run(base + " --threads 1 --decode-thread off -o " + path("off.y4m"));
    ASSERT_EQ(off.rc, 0) << off.err;
    Result on = run(base + " --threads 2 --decode-thread on -o " + path("on.y4m"));
    ASSERT_EQ(on.rc, 0) << on.err;
    const std::string a = slurp(path("off.y4m")), b = slurp(path("on.y4m"));
    ASSERT_GT(a.size(), 33u * 64 * 64 * 3);
    EXPECT_TRUE(a == b) << "the decode thread changed the video";
    nlohmann::json r_off = nlohmann::json::parse(slurp(path("off.y4m.json")));
    nlohmann::json r_on = nlohmann::json::parse(slurp(path("on.y4m.json")));
    EXPECT_FALSE(r_off["settings"]["decode_thread"].get<bool>());
    EXPECT_TRUE(r_on["settings"]["decode_thread"].get<bool>());
    EXPECT_EQ(r_on["settings"]["dit_threads"], 1);
    EXPECT_EQ(r_on["settings"]["decode_threads"], 1);
    EXPECT_EQ(r_on["frames"], 33);

    // A writer that fails mid-run (a full disk): the error reaches the user from the decode thread too.
    const std::string full = path("full.y4m");
    ASSERT_EQ(symlink("/dev/full", full.c_str()), 0);
    Result bad = run("generate -m " + kToy + " -p 'a red fox' -n 201 -q --decode-thread on -o " + full);
    EXPECT_EQ(bad.rc, 1);
    EXPECT_NE(bad.err.find("No space left on device"), std::string::npos) << bad.err;
}

// Ctrl-C mid-run: the run stops after the chunk in flight and the MP4 holds exactly the frames made.
TEST_F(Cli, InterruptLeavesPlayableVideo) {
    const std::string mp4 = path("int.mp4"), err = path("int.err");
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        freopen(err.c_str(), "w", stderr);
        execl(kReel.c_str(), kReel.c_str(), "generate", "-m", kToy.c_str(), "-p", "a long one", "-n", "100000",
              "--decode-thread", "on", "--json", "-o", mp4.c_str(), (char*)nullptr);
        _exit(127);
    }
    // Wait for the second progress event, then interrupt.
    for (int i = 0; i < 600; ++i) {
        usleep(100 * 1000);
        std::string e = slurp(err);
        size_t first = e.find("\"progress\"");
        if (first != std::string::npos && e.find("\"progress\"", first + 1) != std::string::npos)
            break;
    }
    kill(pid, SIGINT);
    int st = 0;
    waitpid(pid, &st, 0);
    ASSERT_TRUE(WIFEXITED(st));
    EXPECT_EQ(WEXITSTATUS(st), 130);
    nlohmann::json rec = nlohmann::json::parse(slurp(mp4 + ".json"));
    EXPECT_TRUE(rec["interrupted"].get<bool>());
    const int64_t frames = rec["frames"].get<int64_t>();
    EXPECT_GE(frames, 21);
    EXPECT_LT(frames, 100000);
    EXPECT_EQ(count_frames(mp4), frames);
}

TEST_F(Cli, BadInputGivesOneClearErrorAndNoJunk) {
    struct Case {
        std::string args, expect;
    };
    std::string missing_part = path("broken_model");
    std::system(("mkdir -p " + missing_part + " && cp " + kToy + "/reel.json " + kToy + "/tokenizer.model " +
                 missing_part +
                 "/ && sed -i -e 's#../golden/vae_weights.safetensors#vae_missing.safetensors#' -e 's#\"../golden/#\"" +
                 kToy + "/../golden/#' " + missing_part + "/reel.json")
                    .c_str());
    const std::string out = path("bad.mp4");
    std::vector<Case> cases = {
        {"generate -m " + kToy + " -p '' -o " + out, "prompt is empty"},
        {"generate -m no_such_model -p 'a' -o " + out, "unknown model 'no_such_model'"},
        {"generate -m " + kToy + " -p 'a' --width 65 -o " + out, "multiple of 16"},
        {"generate -m " + kToy + " -p 'a' -o /nonexistent_dir/x.mp4", "/nonexistent_dir/x.mp4"},
        {"generate -m " + missing_part + " -p 'a' -o " + out, "missing its vae file"},
        {"generate -m " + kToy + " -p 'a' --dit " + std::string(REEL_TEST_DATA) +
             "/golden/vae_weights.safetensors -o " + out,
         "does not hold a Wan DiT"},
        {"generate -m " + kToy + " -p 'a' --bogus-flag -o " + out, "bogus-flag"},
        {"generate -m " + kToy + " -p 'a' --steps 1000,abc -o " + out, "--steps"},
        {"generate -m " + kToy + " -p 'a' --cache window:sink=1,recent=0 -o " + out, "recent"},
        {"generate -m " + kToy + " -p 'a' --device tpu -o " + out, "--device"},
        {"generate -m " + kToy + " -p 'a' --decode-thread maybe -o " + out, "--decode-thread"},
        {"generate -m " + kToy + " -p 'a' --merge tempcash -o " + out, "--merge"},
        {"generate -m " + kToy + " -p 'a' --merge tempcache:tau=3 -o " + out, "tau"},
        {"generate -m " + kToy + " -p 'a' --kv-quant int3 -o " + out, "--kv-quant"},
        {"generate -m " + kToy + " -p 'a' --cache-budget 12X -o " + out, "--cache-budget"},
        {"generate -m " + kToy + " -p 'a' --cache-budget 1K -o " + out, "budget"},
        {"generate -m " + kToy + " -p 'a' --negative-prompt swap:square -o " + out, "'square' is not a word swap"},
        {"generate -m " + kToy + " -p 'a' --negative-guidance -2 -o " + out, "--negative-guidance"},
        {"inspect /nonexistent.safetensors", "/nonexistent.safetensors"},
        {"inspect " + std::string(REEL_TEST_DATA) + "/golden/pickle/malicious.pt", "system"},
        {"eval tinyworld " + std::string(REEL_TEST_DATA) +
             "/golden/README.md -p 'a red circle moving right on a "
             "black background'",
         "README.md"},
    };
    for (const auto& c : cases) {
        Result r = run(c.args);
        EXPECT_NE(r.rc, 0) << c.args;
        EXPECT_NE(r.err.find("reel: error:"), std::string::npos) << c.args << "\n" << r.err;
        EXPECT_NE(r.err.find(c.expect), std::string::npos) << c.args << "\n" << r.err;
        EXPECT_FALSE(exists(out)) << c.args;
        EXPECT_FALSE(exists(out + ".json")) << c.args;
    }
}

TEST_F(Cli, InspectReportsTensorsAndDetectedModel) {
    Result r = run("inspect " + std::string(REEL_TEST_DATA) + "/golden/dit_weights.safetensors --heads 4 --json");
    ASSERT_EQ(r.rc, 0) << r.err;
    auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["model_type"], "wan-dit");
    EXPECT_EQ(j["parameters"], 224944);
    EXPECT_EQ(j["config"]["num_layers"], 2);
    EXPECT_EQ(j["config"]["dim"], 80);
    EXPECT_EQ(j["config"]["num_heads"], 4);

    r = run("inspect " + std::string(REEL_TEST_DATA) + "/golden/pickle/selfforcing_style.pt");
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("generator_ema"), std::string::npos);

    r = run("inspect " + std::string(REEL_TEST_DATA) + "/golden/vae_weights.safetensors --json");
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)["model_type"], "wan-vae");
}

// The real Wan2.1 + Self-Forcing file layout (torch.save checkpoints, config.json, google/umt5-xxl/spiece.model),
// in miniature: see tests/data/wan_layout/make_fixture.py.
TEST_F(Cli, WanLayoutFolderWithSelfForcingCheckpoint) {
    const std::string wan = std::string(REEL_TEST_DATA) + "/wan_layout/model";
    const std::string common = " -p 'a red fox' -n 9 --width 64 --height 64 -q --seed 3";
    Result r = run("generate -m " + wan + common + " --frames-dir " + path("ema"));
    ASSERT_EQ(r.rc, 0) << r.err;
    r = run("generate -m " + wan + common + " --frames-dir " + path("ema2") + " --record " + path("ema2.json"));
    ASSERT_EQ(r.rc, 0) << r.err;
    nlohmann::json rec = nlohmann::json::parse(slurp(path("ema2.json")));
    EXPECT_EQ(rec["model"]["dit_group"], "generator_ema");
    EXPECT_NE(rec["model"]["dit"].get<std::string>().find("self_forcing_dmd.pt"), std::string::npos);
    r = run("generate -m " + wan + common + " --no-ema --frames-dir " + path("gen"));
    ASSERT_EQ(r.rc, 0) << r.err;
    // The fixture's EMA differs from the generator in the head: the videos must differ.
    EXPECT_EQ(slurp(path("ema/frame_000008.png")), slurp(path("ema2/frame_000008.png")));
    EXPECT_NE(slurp(path("ema/frame_000008.png")), slurp(path("gen/frame_000008.png")));

    r = run("inspect " + wan);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("wan-dit (Wan2.1 DiT, 2 layers, dim 80, 4 heads)"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("wan-vae"), std::string::npos);
    EXPECT_NE(r.out.find("umt5-encoder"), std::string::npos);

    // A folder missing a part says which part and what it looked for.
    std::system(("mkdir -p " + path("partial") + " && cp " + wan + "/self_forcing_dmd.pt " + wan + "/config.json " +
                 path("partial"))
                    .c_str());
    r = run("generate -m " + path("partial") + " -p 'a' -o " + path("p.mp4"));
    EXPECT_NE(r.rc, 0);
    EXPECT_NE(r.err.find("has no VAE (looked for Wan2.1_VAE.pth"), std::string::npos) << r.err;
    EXPECT_FALSE(exists(path("p.mp4")));
}

// AnnSA's recall and softmax-mass coverage on a real tinyworld cache (the shipped model, full cache so that older
// entries pile up): an exact index finds every true top key; an approximate one (LSH, short codes) finds fewer.
TEST_F(Cli, AnnRecallOnTinyworldCaches) {
    auto recall_of = [&](const std::string& attn, double* mass) {
        const std::string out = path("ann_" + std::to_string(std::hash<std::string>()(attn)) + ".mp4");
        Result r =
            run("generate -p 'a red circle moving right on a black background' -n 57 --threads 1 --cache full "
                "--attn '" +
                attn + "' -o " + out);
        EXPECT_EQ(r.rc, 0) << r.err;
        std::ifstream in(out + ".json");
        const auto rec = nlohmann::json::parse(in);
        *mass = rec["ann"]["mass"].get<double>();
        return rec["ann"]["recall"].get<double>();
    };
    double mass_flat = 0, mass_lsh = 0;
    const double flat = recall_of("ann:index=flat,k=8,local=0,sink=0,recall=8", &mass_flat);
    const double lsh = recall_of("ann:index=lsh,bits=16,k=8,local=0,sink=0,center=0,recall=8", &mass_lsh);
    EXPECT_GT(flat, 0.999);
    EXPECT_GT(mass_flat, 0.0);
    EXPECT_LE(mass_flat, 1.0 + 1e-6);
    EXPECT_LT(lsh, flat);  // 16-bit codes cannot rank every query's keys exactly
    EXPECT_GT(mass_lsh, 0.0);
}

// The evaluator through the CLI, on a video rendered by the world itself (so adherence must be ~1).
TEST_F(Cli, EvalTinyworldScoresWorldVideo) {
    const std::string prompt = "a yellow square moving down on a navy background";
    reel::World world(reel::parse_prompt(prompt), 3);
    reel::VideoFormat fmt;
    fmt.width = 64;
    fmt.height = 64;
    auto w = reel::open_video_writer(path("w.mp4"), fmt);
    for (int i = 0; i < 48; ++i)
        w->write(world.render(i).data());
    w->close();
    Result r = run("eval tinyworld " + path("w.mp4") + " -p '" + prompt + "'");
    ASSERT_EQ(r.rc, 0) << r.err;
    auto j = nlohmann::json::parse(r.out);
    EXPECT_GE(j["videos"][0]["overall"].get<double>(), 0.95) << r.out;
    EXPECT_EQ(j["summary"]["all"]["videos"], 1);
    // A window of the video: --start skips, --frames bounds; past the end is an error naming the frame.
    r = run("eval tinyworld " + path("w.mp4") + " -p '" + prompt + "' --start 40 --frames 6");
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)["videos"][0]["frames"], 6) << r.out;
    r = run("eval tinyworld " + path("w.mp4") + " -p '" + prompt + "' --start 100");
    EXPECT_NE(r.rc, 0);
    EXPECT_NE(r.err.find("from frame 100"), std::string::npos) << r.err;
    r = run("eval fidelity " + path("w.mp4") + " " + path("w.mp4") + " --frames 10");
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)["videos"][0]["frames"], 10) << r.out;
}

}  // namespace
