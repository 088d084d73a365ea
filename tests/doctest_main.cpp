// The doctest entry point shared by every test executable in tests/.
//
// Environment:
//   TAPEGRAD_REFERENCE_KERNELS=1  run the whole executable on the naive kernel twins
//                                 instead of the fast kernels (autograd/kernels/dispatch.hpp),
//                                 so the same op-level tests check both paths;
//   TAPEGRAD_TEST_THREADS=N       kernel threads for the tests (default 1: ctest runs test
//                                 processes in parallel already; the kernel tests that check
//                                 threading set their own counts).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>

#include "autograd/kernels/dispatch.hpp"
#include "autograd/kernels/parallel.hpp"

int main(int argc, char** argv) {
  const char* ref = std::getenv("TAPEGRAD_REFERENCE_KERNELS");
  if (ref && std::strcmp(ref, "0") != 0) tg::set_use_reference_kernels(true);
  const char* threads = std::getenv("TAPEGRAD_TEST_THREADS");
  tg::set_num_threads(threads ? std::atoi(threads) : 1);
  doctest::Context context;
  context.applyCommandLine(argc, argv);
  return context.run();
}
