// tests/test_isa.cpp — the kernels say which instruction set they were compiled for, and
// in the portable build (Note [Portable kernels] in autograd/kernels/isa.hpp) the copy the
// loader took is the best one this CPU runs, or the one GLIBC_TUNABLES forced.
#include <doctest/doctest.h>

#include <cstdlib>
#include <string>

#include "autograd/kernels/isa.hpp"

namespace {

// The level this test file was compiled for (in the default build the library was compiled
// with the same -march=native; in the portable build this file is the x86-64 baseline).
std::string own_level() { return TG_COMPILED_LEVEL; }

#if defined(__x86_64__)
// The copy the loader should take: the highest level of {v4, v3} that the CPU has and
// GLIBC_TUNABLES does not mask (the mask names the feature, e.g. -AVX512F), else the
// baseline copy (no v2 copy is built).
std::string expected_portable_level() {
  const char* t = std::getenv("GLIBC_TUNABLES");
  const std::string tun = t ? t : "";
  const bool no512 = tun.find("-AVX512F") != std::string::npos;
  const bool no2 = tun.find("-AVX2") != std::string::npos;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4") && !no512 && !no2) return "x86-64-v4";
  if (__builtin_cpu_supports("x86-64-v3") && !no2) return "x86-64-v3";
  return "x86-64";
}
#endif

}  // namespace

TEST_CASE("kernel_isa names the kernels' arch and level, and the line says how they were chosen") {
  const auto k = tg::kernels::kernel_isa();
  MESSAGE("kernels: " << tg::kernels::kernel_isa_line());
  CHECK(!k.arch.empty());
  CHECK(!k.file.empty());
  const std::string line = tg::kernels::kernel_isa_line();
  CHECK(line.rfind(k.arch + " (" + k.level + "; ", 0) == 0);
  if (!k.portable) {
    CHECK(k.level == own_level());
    CHECK(line.find("compiled into the program") != std::string::npos);
    return;
  }
#if defined(__x86_64__)
  CHECK(own_level() == "x86-64");  // the engine outside the kernels is the baseline
  const std::string want = expected_portable_level();
  CHECK(k.level == want);
  CHECK(k.file.find("libtapegrad_kernels.so") != std::string::npos);
  const bool in_v4 = k.file.find("glibc-hwcaps/x86-64-v4/") != std::string::npos;
  const bool in_v3 = k.file.find("glibc-hwcaps/x86-64-v3/") != std::string::npos;
  CHECK(in_v4 == (want == "x86-64-v4"));
  CHECK(in_v3 == (want == "x86-64-v3"));
  if (want == "x86-64-v4") CHECK(k.arch.find("avx512") != std::string::npos);
  if (want == "x86-64-v3") CHECK(k.arch.find("avx2") != std::string::npos);
  if (want == "x86-64") CHECK(k.arch == "sse2");
  CHECK(line.find("chosen at start-up by CPU features") != std::string::npos);
#else
  FAIL("the portable build is x86-64 only");
#endif
}
