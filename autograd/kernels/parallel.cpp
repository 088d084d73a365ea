// autograd/kernels/parallel.cpp — see parallel.hpp.
#include "autograd/kernels/parallel.hpp"

#include <omp.h>

namespace tg {

namespace {
int g_threads = 0;  // 0: not set from code, use OpenMP's default
}

int num_threads() {
  if (g_threads > 0) return g_threads;
  int n = omp_get_max_threads();
  return n > 0 ? n : 1;
}

void set_num_threads(int n) { g_threads = n > 0 ? n : 0; }

}  // namespace tg

#include "autograd/kernels/dispatch.hpp"

namespace tg {
namespace {
thread_local bool t_reference = false;
}
bool use_reference_kernels() { return t_reference; }
void set_use_reference_kernels(bool on) { t_reference = on; }
}  // namespace tg
