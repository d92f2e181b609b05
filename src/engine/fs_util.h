// File-system questions the CLI and the model lookup ask.
#pragma once
#include <sys/stat.h>

#include <string>

namespace reel {

inline bool path_exists(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0;
}

inline bool is_directory(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace reel
