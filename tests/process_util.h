// Helpers for the test programs that run reel's binaries: a fresh temporary folder per test, reading the files
// they write, and the exit code of std::system. Header-only, no LibTorch.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace reel::test {

inline std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline bool exists(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0;
}

// std::system's status as the program's exit code (-1 when it did not exit).
inline int exit_code(int status) {
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A test with a temporary folder of its own, removed afterwards.
class TempDirTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/reel_test_XXXXXX";
        dir_ = mkdtemp(tmpl);
    }
    void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
    std::string path(const std::string& name) const { return dir_ + "/" + name; }
    // Runs a shell command with its stdout and stderr caught in this folder; returns its exit code.
    int run_captured(const std::string& cmd, std::string* out = nullptr, std::string* err = nullptr) {
        const std::string o = path("stdout"), e = path("stderr");
        const int st = std::system((cmd + " >" + o + " 2>" + e).c_str());
        if (out)
            *out = slurp(o);
        if (err)
            *err = slurp(e);
        return exit_code(st);
    }

    std::string dir_;
};

}  // namespace reel::test
