#!/usr/bin/env bash
# scripts/aarch64.sh — build tapegrad for 64-bit ARM (aarch64, NEON through xsimd) with
# Debian's cross compiler and run the test suite under qemu-user (issue 13, item 3).
#
#   bash scripts/aarch64.sh            # installs what it needs (root: apt-get), builds into
#                                      # build-aarch64/, runs `ctest -LE slow` there
#   JOBS=4 BUILD=dir bash scripts/aarch64.sh
#
# Not part of the default CI (it takes long under emulation); run it before stopping
# whenever kernels change. What it needs: g++-aarch64-linux-gnu, qemu-user (and its binfmt
# registration, so that a test that starts bin/tapegrad as a child process runs the ARM
# program too), the arm64 builds of PCRE2 and utf8proc (Debian multiarch) and the arm64 C++
# and OpenMP runtimes the programs run with (see Note [One glibc under qemu] below). No MPI
# (OpenMPI's arm64 packages are not installed) and no benchmarks (OpenBLAS peer).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-aarch64}
JOBS=${JOBS:-$(nproc)}
export DEBIAN_FRONTEND=noninteractive

need=""
for p in g++-aarch64-linux-gnu qemu-user qemu-user-binfmt libpcre2-dev:arm64 libutf8proc-dev:arm64 \
         libstdc++6:arm64 libgomp1:arm64; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need="$need $p"
done
if [[ -n "$need" ]]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
# A child process (tests start bin/tapegrad) is an ARM executable started by an emulated
# one: the kernel runs it through qemu only with binfmt_misc registered.
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
  [[ -e /proc/sys/fs/binfmt_misc/register ]] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  if [[ -w /proc/sys/fs/binfmt_misc/register ]]; then
    cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register || true
  fi
fi
[[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] ||
  echo "aarch64.sh: warning: no binfmt_misc entry for aarch64: the tests that start bin/tapegrad will fail" >&2
# Note [One glibc under qemu]
# The programs must run on one C library. With QEMU_LD_PREFIX=/usr/aarch64-linux-gnu (the
# cross toolchain's sysroot) the guest took its loader from there (libc6-arm64-cross) but
# libc.so.6 from /lib/aarch64-linux-gnu (libc6:arm64, a different build, installed with the
# arm64 PCRE2), where the library search found it (qemu -strace shows the paths). Loader
# and libc share private data; with the two mixed, every pthread_create and every fork() of
# a dynamically linked program hung in a lock (a six-line std::thread program too; the same
# program linked statically ran). So the guest's root is /: loader, libc, libstdc++ and
# libgomp all come from the arm64 multiarch packages, one build.
export QEMU_LD_PREFIX=/

# setup.sh writes data/kjv.txt, which some tests read.
[[ -s data/kjv.txt ]] || { echo "aarch64.sh: run 'bash setup.sh' first (it writes data/kjv.txt)" >&2; exit 1; }

cmake -S . -B "$BUILD" -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release \
  -DTAPEGRAD_NATIVE=OFF -DTAPEGRAD_BENCH=OFF -DTAPEGRAD_MPI=OFF -DCMAKE_CXX_FLAGS="-O3 -march=armv8-a" \
  ${TAPEGRAD_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD" -j"$JOBS"
file "$BUILD/bin/tapegrad"
"$BUILD/bin/tapegrad" --version
# Threads and child processes work (Note [One glibc under qemu]); emulation is slow, so a
# test gets 300 s. No MPI in this build (no arm64 OpenMPI packages): test_distributed runs
# its one-process cases and skips those that start mpirun.
ctest --test-dir "$BUILD" -LE slow --output-on-failure -j"$JOBS" --timeout 300
