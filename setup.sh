#!/usr/bin/env bash
# setup.sh — install everything tapegrad needs on Debian 12 (as root), fetch the default
# corpus, and build. Safe to run again: each step is skipped or quick when already done.
#
#   bash setup.sh            install + data + Release build in build/
#   BUILD_DIR=b bash setup.sh    build somewhere else
#   TAPEGRAD_CMAKE_ARGS="-DTAPEGRAD_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo" bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
BUILD_DIR=${BUILD_DIR:-build}

PACKAGES=(
  g++ cmake make                      # toolchain
  xtensor-dev libxsimd-dev xtl-dev    # tensors and SIMD
  doctest-dev                         # tests
  nlohmann-json3-dev libcli11-dev     # config.json / safetensors headers, command lines
  libpcre2-dev libutf8proc-dev pkg-config  # tokenizer.json: the pre-tokenizer's regex, NFC
  libopenblas-dev                     # the peer in the GEMM benchmark (benchmarks only)
  libopenmpi-dev openmpi-bin          # data-parallel training (mpirun -np N tapegrad train)
  python3 python3-numpy python3-torch # reference scripts (golden files, cross-checks)
  gnuplot-nox                         # loss-curve and study plots (PNG)
  graphviz                            # drawings of the tape (tapegrad demo --dot, autograd/dot.hpp)
  bible-kjv                           # the default training corpus
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The default corpus: the King James Bible as plain text (about 4.3 MB), in data/ (git-ignored).
mkdir -p data
if [[ ! -s data/kjv.txt ]]; then
  echo "setup: writing data/kjv.txt from the bible-kjv package"
  bible gen1:1-rev22:21 > data/kjv.txt.tmp
  mv data/kjv.txt.tmp data/kjv.txt
fi

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${TAPEGRAD_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
echo "setup: built into $BUILD_DIR/ (programs in $BUILD_DIR/bin/)"
