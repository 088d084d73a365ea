// The doctest entry point shared by every test executable in tests/.
// With TAPEGRAD_REFERENCE_KERNELS=1 in the environment, the whole executable runs on the
// naive kernel twins instead of the fast kernels (see autograd/kernels/dispatch.hpp), so
// the same op-level tests check both paths.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>

#include "autograd/kernels/dispatch.hpp"

int main(int argc, char** argv) {
  const char* ref = std::getenv("TAPEGRAD_REFERENCE_KERNELS");
  if (ref && std::strcmp(ref, "0") != 0) tg::set_use_reference_kernels(true);
  doctest::Context context;
  context.applyCommandLine(argc, argv);
  return context.run();
}
