// reel profile: the report writers on synthetic rows (CSV, JSON, SVG, summary figures, --compare parsing), then the
// subcommand end to end through the built binary on the toy model.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "process_util.h"
#include "src/engine/profile_report.h"

namespace {

using namespace reel::test;
using nlohmann::json;
using reel::ProfileRun;

// A chunk row as Engine::generate reports it.
json make_row(int64_t chunk, int64_t frame, double denoise_ms, double cache_ms, int64_t kv, int64_t rss) {
    return {{"chunk", chunk},
            {"frame", frame},
            {"denoise_ms", denoise_ms},
            {"cache_pass_ms", cache_ms},
            {"decode_ms", 2.5},
            {"encode_ms", 0.25},
            {"kv_bytes", kv},
            {"kv_bytes_fp", kv},
            {"kv_bytes_quant", 0},
            {"kv_bytes_merged", 0},
            {"kv_bytes_live", kv},
            {"kv_entries", kv / 100},
            {"kv_merged_entries", 0},
            {"merge_rate", 0.0},
            {"kv_frames", 3 * (chunk + 1)},
            {"rss_bytes", rss},
            {"peak_rss_bytes", rss + 7},
            {"gpu_allocated_bytes", 0},
            {"gpu_peak_bytes", 0}};
}

// 100 chunks, 10 frames each: a full cache (KV grows by 100 bytes a chunk, DiT time by 1 ms a chunk) and a window
// (KV flat from chunk 10 on, DiT time flat).
std::vector<ProfileRun> synthetic_runs() {
    ProfileRun full, window;
    full.policy = "full";
    full.spec = "full";
    window.policy = "window:sink=1,recent=3";
    window.spec = "window:sink=1,recent=3,rope=relative";
    for (int64_t c = 0; c < 100; ++c) {
        full.rows.push_back(make_row(c, 10 * (c + 1), 10.0 + c, 1.0, 100 * (c + 1), 1000000 + 1000 * c));
        window.rows.push_back(make_row(c, 10 * (c + 1), 20.0, 2.0, 100 * std::min<int64_t>(c + 1, 10), 2000000));
    }
    return {full, window};
}

size_t count(const std::string& hay, const std::string& needle) {
    size_t n = 0;
    for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1))
        ++n;
    return n;
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::stringstream ss(text);
    std::string l;
    while (std::getline(ss, l))
        out.push_back(l);
    return out;
}

}  // namespace

TEST(ProfilePolicy, PartsMapOntoTheCacheFlags) {
    reel::PolicyFlags f = reel::policy_flags("window:sink=3,recent=12+tempcache:tau=0.9+int4-hadamard");
    EXPECT_EQ(f.cache, "window:sink=3,recent=12");
    EXPECT_EQ(f.merge, "tempcache:tau=0.9");
    EXPECT_EQ(f.kv_quant, "int4-hadamard");

    f = reel::policy_flags("full");
    EXPECT_EQ(f.cache, "full");
    EXPECT_EQ(f.merge, "");
    EXPECT_EQ(f.kv_quant, "");

    // Parts in any order; a bare window takes the given default, a window with options keeps them.
    f = reel::policy_flags("int8+window", "window:sink=2,recent=6");
    EXPECT_EQ(f.cache, "window:sink=2,recent=6");
    EXPECT_EQ(f.kv_quant, "int8");
    EXPECT_EQ(reel::policy_flags("window:sink=1,recent=3", "window:sink=2,recent=6").cache, "window:sink=1,recent=3");
    EXPECT_EQ(reel::policy_flags("window").cache, "window");

    // Only merge or quantization: the cache flag of the command line applies.
    f = reel::policy_flags("flowcache:keep=0.2");
    EXPECT_EQ(f.cache, "");
    EXPECT_EQ(f.merge, "flowcache:keep=0.2");

    EXPECT_EQ(reel::policy_label({"window:sink=1,recent=3", "none", "int4"}), "window:sink=1,recent=3+int4");
    EXPECT_EQ(reel::policy_label({"full", "tempcache", ""}), "full+tempcache");
}

TEST(ProfilePolicy, BadPartsAreNamed) {
    struct Case {
        std::string policy, expect;
    };
    for (const Case& c : std::vector<Case>{{"window+bogus", "unknown part 'bogus'"},
                                           {"int3", "unknown part 'int3'"},
                                           {"full+window", "two cache parts"},
                                           {"full+int8+int4", "two kv-quant parts"},
                                           {"full++int4", "empty part"},
                                           {"  ", "empty policy"}}) {
        try {
            reel::policy_flags(c.policy);
            ADD_FAILURE() << "no error for '" << c.policy << "'";
        } catch (const std::exception& e) {
            EXPECT_NE(std::string(e.what()).find(c.expect), std::string::npos) << e.what();
        }
    }
}

TEST(ProfileReport, CsvHasTheColumnsAndOneRowPerChunk) {
    const auto runs = synthetic_runs();
    std::ostringstream out;
    reel::write_profile_csv(out, runs);
    const auto lines = lines_of(out.str());
    ASSERT_EQ(lines.size(), 1u + 200u);
    EXPECT_EQ(lines[0].rfind("policy,chunk,frame,denoise_ms,cache_pass_ms,", 0), 0u) << lines[0];
    for (const char* col : {"decode_ms", "encode_ms", "kv_bytes", "kv_bytes_fp", "kv_bytes_quant", "kv_bytes_merged",
                            "kv_entries", "merge_rate", "rss_bytes", "peak_rss_bytes", "gpu_peak_bytes"})
        EXPECT_NE(lines[0].find(std::string(",") + col), std::string::npos) << col;
    const size_t ncols = reel::profile_csv_columns().size();
    EXPECT_EQ(count(lines[0], ","), ncols - 1);

    // Chunk 2 of full: frame 30, denoise 12, cache pass 1 (dit 13), kv 300.
    EXPECT_EQ(
        lines[3].rfind("full,2,30,12.000,1.000,13.000,2.500,0.250,300,300,0,0,300,3,0,0,9,1002000,1002007,0,0", 0), 0u)
        << lines[3];
    // A policy with commas is quoted, so every row still has as many fields as the header.
    EXPECT_EQ(lines[101].rfind("\"window:sink=1,recent=3\",0,10,", 0), 0u) << lines[101];
    EXPECT_EQ(count(lines[101], ","), ncols - 1 + 1);  // the one comma inside the quotes

    // A field a row lacks stays empty rather than becoming 0.
    json partial = {{"chunk", 0}, {"frame", 9}, {"kv_bytes", 5}};
    const std::string row = reel::profile_csv_row("p", partial);
    EXPECT_EQ(row.rfind("p,0,9,,,0.000,,,5,", 0), 0u) << row;
}

TEST(ProfileReport, SummaryFiguresFromSyntheticRows) {
    const auto runs = synthetic_runs();
    const reel::ProfileSummary full = reel::summarize_profile(runs[0].rows);
    EXPECT_EQ(full.frames, 1000);
    EXPECT_EQ(full.chunks, 100);
    EXPECT_EQ(full.steady_from, 500);
    // Steady rows: frame >= 500, chunks 49..99.
    EXPECT_EQ(full.kv_min, 5000);
    EXPECT_EQ(full.kv_max, 10000);
    EXPECT_DOUBLE_EQ(full.kv_ratio, 2.0);
    EXPECT_EQ(full.rss_min, 1049000);
    EXPECT_EQ(full.rss_max, 1099000);
    EXPECT_DOUBLE_EQ(full.rss_ratio, 1099000.0 / 1049000.0);
    EXPECT_EQ(full.kv_peak, 10000);
    EXPECT_EQ(full.peak_rss, 1099007);
    // Chunk 0 is warm-up; 99 left, 9 per tenth: early = chunks 1..9 (dit 12..20), late = 91..99 (dit 102..110).
    EXPECT_DOUBLE_EQ(full.dit_early_ms, 16.0);
    EXPECT_DOUBLE_EQ(full.dit_late_ms, 106.0);
    EXPECT_DOUBLE_EQ(full.latency_ratio, 106.0 / 16.0);
    EXPECT_DOUBLE_EQ(full.dit_mean_ms, 11.0 + 49.5);
    EXPECT_DOUBLE_EQ(full.decode_mean_ms, 2.5);

    const reel::ProfileSummary win = reel::summarize_profile(runs[1].rows);
    EXPECT_EQ(win.kv_min, 1000);
    EXPECT_EQ(win.kv_max, 1000);
    EXPECT_DOUBLE_EQ(win.kv_ratio, 1.0);
    EXPECT_DOUBLE_EQ(win.rss_ratio, 1.0);
    EXPECT_DOUBLE_EQ(win.latency_ratio, 1.0);

    // A run shorter than 1000 frames measures its steady state over its second half.
    std::vector<json> short_rows(runs[0].rows.begin(), runs[0].rows.begin() + 10);  // frames 10..100
    const reel::ProfileSummary s = reel::summarize_profile(short_rows);
    EXPECT_EQ(s.steady_from, 50);
    EXPECT_EQ(s.kv_min, 500);
    EXPECT_EQ(s.kv_max, 1000);
    // 9 chunks after warm-up: one chunk each side.
    EXPECT_DOUBLE_EQ(s.dit_early_ms, 12.0);
    EXPECT_DOUBLE_EQ(s.dit_late_ms, 20.0);

    // An empty cache at the start of the steady rows makes the ratio unbounded, written as null in JSON.
    std::vector<json> zero = {make_row(0, 10, 1, 0, 0, 5), make_row(1, 20, 1, 0, 100, 5)};
    const reel::ProfileSummary z = reel::summarize_profile(zero);
    EXPECT_TRUE(std::isinf(z.kv_ratio));
    EXPECT_TRUE(reel::to_json(z)["kv_ratio"].is_null());
    EXPECT_EQ(reel::summarize_profile({}).chunks, 0);
}

TEST(ProfileReport, JsonHasPoliciesWithSummaryAndRows) {
    auto runs = synthetic_runs();
    runs[1].interrupted = true;
    runs[1].settings = {{"cache", "window:sink=1,recent=3"}};
    const json j = reel::profile_json(runs, {{"tool", "reel profile"}, {"prompt", "x"}});
    EXPECT_EQ(j["tool"], "reel profile");
    ASSERT_TRUE(j["policies"].is_array());
    ASSERT_EQ(j["policies"].size(), 2u);
    const json& p = j["policies"][1];
    EXPECT_EQ(p["policy"], "window:sink=1,recent=3");
    EXPECT_EQ(p["spec"], "window:sink=1,recent=3,rope=relative");
    EXPECT_EQ(p["settings"]["cache"], "window:sink=1,recent=3");
    EXPECT_TRUE(p["interrupted"].get<bool>());
    EXPECT_FALSE(p.contains("error"));
    ASSERT_EQ(p["rows"].size(), 100u);
    EXPECT_EQ(p["rows"][99]["frame"], 1000);
    for (const char* k :
         {"frames", "chunks", "kv_bytes_min", "kv_bytes_max", "kv_ratio", "rss_bytes_min", "rss_bytes_max", "rss_ratio",
          "dit_ms_early", "dit_ms_late", "latency_ratio", "peak_rss_bytes"})
        EXPECT_TRUE(p["summary"].contains(k)) << k;
    EXPECT_DOUBLE_EQ(j["policies"][0]["summary"]["kv_ratio"].get<double>(), 2.0);
    EXPECT_TRUE(j["policies"][0]["settings"].is_object());
    // Round-trips through text.
    EXPECT_EQ(json::parse(j.dump()), j);
}

TEST(ProfileReport, SvgHasOnePolylinePerPolicyPerPanel) {
    auto runs = synthetic_runs();
    runs[1].policy = "window<&>";  // must be escaped in the legend
    std::string svg = reel::profile_svg(runs, "title \"quoted\"");
    EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
    EXPECT_NE(svg.find("</svg>\n"), std::string::npos);
    EXPECT_EQ(svg.size() - svg.rfind("</svg>"), 7u);
    EXPECT_EQ(count(svg, "<polyline"), 3u * 2u);
    EXPECT_EQ(count(svg, "<g "), count(svg, "</g>"));
    EXPECT_EQ(count(svg, "<text"), count(svg, "</text>"));
    EXPECT_NE(svg.find("window&lt;&amp;&gt;"), std::string::npos);
    EXPECT_EQ(svg.find("window<&>"), std::string::npos);
    EXPECT_NE(svg.find("KV cache (MB)"), std::string::npos);
    EXPECT_NE(svg.find("DiT ms per chunk"), std::string::npos);
    // Each polyline has one point per row.
    const size_t at = svg.find("<polyline");
    const size_t b = svg.find("points=\"", at) + 8, e = svg.find('"', b);
    EXPECT_EQ(count(svg.substr(b, e - b), ","), 100u);

    // A policy stopped before its first chunk gets a legend entry but no line; no rows at all still draws.
    runs.push_back(ProfileRun{"int4", "full+int4", json(), {}, true, ""});
    svg = reel::profile_svg(runs);
    EXPECT_EQ(count(svg, "<polyline"), 3u * 2u);
    EXPECT_NE(svg.find("[interrupted]"), std::string::npos);
    EXPECT_EQ(reel::profile_svg({}).rfind("<svg", 0), 0u);
}

TEST(ProfileReport, SummaryTableHasOneLinePerPolicy) {
    const std::string t = reel::profile_summary_table(synthetic_runs());
    const auto lines = lines_of(t);
    ASSERT_EQ(lines.size(), 3u);
    EXPECT_NE(lines[0].find("ratio"), std::string::npos);
    EXPECT_EQ(lines[1].rfind("full ", 0), 0u);
    EXPECT_NE(lines[1].find("16.0..106.0"), std::string::npos) << lines[1];
    EXPECT_NE(lines[1].find("6.62"), std::string::npos) << lines[1];  // 106 / 16
    EXPECT_EQ(lines[2].rfind("window:sink=1,recent=3 ", 0), 0u);
}

TEST(ProfileReport, WriteTextFileNamesTheBadPath) {
    try {
        reel::write_text_file("/nonexistent_dir/p.json", "{}");
        ADD_FAILURE() << "no error";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find("/nonexistent_dir/p.json"), std::string::npos) << e.what();
    }
    char tmpl[] = "/tmp/reel_profile_w_XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    reel::write_text_file(dir + "/a.txt", "hello\n");
    EXPECT_EQ(slurp(dir + "/a.txt"), "hello\n");
    EXPECT_FALSE(exists(dir + "/a.txt.tmp"));
    std::system(("rm -rf " + dir).c_str());
}

// --- the subcommand through the built binary -------------------------------------------------------------------

namespace {

const std::string kReel = REEL_BINARY;
const std::string kToy = std::string(REEL_TEST_DATA) + "/toy_model";

class ProfileCli : public TempDirTest {
  protected:
    int run(const std::string& args, std::string* out = nullptr, std::string* err = nullptr) {
        return run_captured(kReel + " " + args, out, err);
    }
};

}  // namespace

TEST_F(ProfileCli, ComparesTwoPoliciesIntoCsvJsonAndPlot) {
    std::string out, err;
    const int rc = run(
        "profile -m " + kToy + " -n 24 --compare full,window:sink=1,recent=3 -q --out-dir " + path("rep"), &out, &err);
    ASSERT_EQ(rc, 0) << err;
    ASSERT_TRUE(exists(path("rep/profile.csv")));
    ASSERT_TRUE(exists(path("rep/profile.json")));
    ASSERT_TRUE(exists(path("rep/profile.svg")));
    EXPECT_FALSE(exists(path("rep/profile.json.tmp")));

    // 24 frames round up to 3 chunks (33 frames) of 3 latent frames; one CSV row per chunk per policy.
    const auto lines = lines_of(slurp(path("rep/profile.csv")));
    ASSERT_EQ(lines.size(), 1u + 3u + 3u);
    EXPECT_EQ(lines[0].rfind("policy,chunk,frame,denoise_ms,cache_pass_ms,", 0), 0u);
    for (int i = 1; i <= 3; ++i)
        EXPECT_EQ(lines[i].rfind("full,", 0), 0u) << lines[i];
    for (int i = 4; i <= 6; ++i)
        EXPECT_EQ(lines[i].rfind("\"window:sink=1,recent=3\",", 0), 0u) << lines[i];

    const json j = json::parse(slurp(path("rep/profile.json")));
    ASSERT_EQ(j["policies"].size(), 2u);
    EXPECT_EQ(j["model"]["name"], "toy");
    EXPECT_EQ(j["policies"][0]["policy"], "full");
    EXPECT_EQ(j["policies"][1]["policy"], "window:sink=1,recent=3");
    EXPECT_NE(j["policies"][1]["spec"].get<std::string>().find("window"), std::string::npos);
    for (const json& p : j["policies"]) {
        ASSERT_EQ(p["rows"].size(), 3u);
        EXPECT_EQ(p["summary"]["frames"], 33);
        EXPECT_FALSE(p["interrupted"].get<bool>());
        EXPECT_EQ(p["rows"][2]["frame"], 33);
        EXPECT_GT(p["rows"][2]["kv_bytes"].get<int64_t>(), 0);
        EXPECT_GT(p["rows"][2]["rss_bytes"].get<int64_t>(), 0);
        EXPECT_GT(p["summary"]["peak_rss_bytes"].get<int64_t>(), 0);
    }
    // After three chunks the window (1 sink + 3 recent latent frames) holds less than the full cache.
    EXPECT_LT(j["policies"][1]["rows"][2]["kv_bytes"].get<int64_t>(),
              j["policies"][0]["rows"][2]["kv_bytes"].get<int64_t>());

    const std::string svg = slurp(path("rep/profile.svg"));
    EXPECT_EQ(svg.rfind("<svg", 0), 0u);
    EXPECT_EQ(count(svg, "<polyline"), 3u * 2u);

    // The summary table on stdout: a header and one line per policy.
    const auto table = lines_of(out);
    ASSERT_EQ(table.size(), 3u) << out;
    EXPECT_EQ(table[1].rfind("full ", 0), 0u);
    EXPECT_EQ(table[2].rfind("window:sink=1,recent=3 ", 0), 0u);
}

TEST_F(ProfileCli, SinglePolicyWithExplicitFilesAndVideo) {
    const int rc = run("profile -m " + kToy + " -n 9 --cache full -q --csv " + path("a.csv") + " --json-out " +
                       path("a.json") + " --plot " + path("a.svg") + " -o " + path("v.mp4"));
    ASSERT_EQ(rc, 0);
    EXPECT_TRUE(exists(path("v.mp4")));
    const json j = json::parse(slurp(path("a.json")));
    ASSERT_EQ(j["policies"].size(), 1u);
    EXPECT_EQ(j["policies"][0]["policy"], "full");
    EXPECT_EQ(j["policies"][0]["rows"].size(), 1u);
    EXPECT_EQ(lines_of(slurp(path("a.csv"))).size(), 2u);
    EXPECT_EQ(count(slurp(path("a.svg")), "<polyline"), 3u);
}

TEST_F(ProfileCli, BadInputFailsBeforeAnyWork) {
    std::string err;
    EXPECT_NE(run("profile -m " + kToy + " -n 9 --compare full,window+bogus --out-dir " + path("r1"), nullptr, &err),
              0);
    EXPECT_NE(err.find("unknown part 'bogus'"), std::string::npos) << err;
    EXPECT_FALSE(exists(path("r1/profile.csv")));

    EXPECT_NE(run("profile -m " + kToy + " -n 9 --out-dir /nonexistent_dir/sub", nullptr, &err), 0);
    EXPECT_NE(err.find("/nonexistent_dir/sub"), std::string::npos) << err;

    EXPECT_NE(run("profile -m " + kToy + " -n 9 --plot " + path("p.png"), nullptr, &err), 0);
    EXPECT_NE(err.find("SVG"), std::string::npos) << err;

    EXPECT_NE(run("profile -m " + kToy + " -n 9 --json-out /nonexistent_dir/p.json", nullptr, &err), 0);
    EXPECT_NE(err.find("/nonexistent_dir/p.json"), std::string::npos) << err;
}

// Ctrl-C during the first policy: the run stops after the chunk in flight, the second policy never starts, and the
// reports hold what was made.
TEST_F(ProfileCli, InterruptStillWritesReports) {
    const std::string err = path("int.err"), rep = path("int");
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        freopen(err.c_str(), "w", stderr);
        freopen(path("int.out").c_str(), "w", stdout);
        execl(kReel.c_str(), kReel.c_str(), "profile", "-m", kToy.c_str(), "-n", "100000", "--compare",
              "full,window:sink=1,recent=3", "--decode-thread", "off", "--json", "--out-dir", rep.c_str(),
              (char*)nullptr);
        _exit(127);
    }
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
    const json j = json::parse(slurp(rep + "/profile.json"));
    ASSERT_EQ(j["policies"].size(), 1u);
    EXPECT_TRUE(j["policies"][0]["interrupted"].get<bool>());
    const size_t rows = j["policies"][0]["rows"].size();
    EXPECT_GE(rows, 2u);
    EXPECT_EQ(lines_of(slurp(rep + "/profile.csv")).size(), 1u + rows);
    EXPECT_EQ(count(slurp(rep + "/profile.svg"), "<polyline"), 3u);
    EXPECT_NE(slurp(path("int.out")).find("(interrupted)"), std::string::npos);
}
