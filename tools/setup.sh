#!/usr/bin/env bash
# Installs everything reel needs on Debian 12 (idempotent), then configures and builds into ./build.
# Usage: tools/setup.sh [--no-build] [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    build-essential cmake ninja-build pkg-config git
    libtorch-dev libopenblas0-openmp libopenblas-openmp-dev  # LibTorch; OpenBLAS makes its CPU matmuls ~30x faster
    libfaiss-dev                                             # ANN indexes (static: needs OpenMP, BLAS, LAPACK)
    libavformat-dev libavcodec-dev libavutil-dev libswscale-dev  # MP4/H.264 output (libx264 is built in)
    libsentencepiece-dev sentencepiece                       # umT5 tokenizer (loaded at run time); spm_train for training
    libcli11-dev libgtest-dev nlohmann-json3-dev
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ "${1:-}" = "--no-build" ] && exit 0
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [ ! -f build/CMakeCache.txt ]; then
    cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
fi
cmake --build build -j "$(nproc)"
echo "setup: built build/reel"
