// tests/test_memory.cpp — keep_freed_memory(): a repeated training-step-like
// allocation pattern stops faulting pages in once the policy is on.
#include <doctest/doctest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <vector>

#include "autograd/autograd.hpp"

namespace {

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// One "step": allocate tensors of mixed sizes (128 KiB .. 24 MiB, as a step's
// activations), write every page, and free them in the opposite order. Returns
// the pages written.
long one_step(std::uint64_t seed) {
  std::vector<std::size_t> sizes = {32 << 10, 6 << 20, 2 << 20, 1 << 18, 4 << 20, 3 << 19, 1 << 20};  // floats
  std::vector<tg::Tensor<float>> live;
  long pages = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const std::size_t n = sizes[(i + seed) % sizes.size()];
    live.push_back(tg::Tensor<float>::full({n}, 1.0f));
    pages += static_cast<long>(n * sizeof(float) / 4096);
  }
  while (!live.empty()) live.pop_back();
  return pages;
}

// Whether this process's heap can grow by brk, tried in a child so the heap here is left
// alone. The pages keep_freed_memory keeps are those at the top of glibc's brk heap; where
// brk cannot grow (qemu-user 7.2 refuses a 64 MiB increment, so the suite under
// scripts/aarch64.sh meets this), glibc maps the heap's growth with mmap instead and the
// policy has no heap top to keep.
bool brk_heap_grows() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(::sbrk(64 << 20) == reinterpret_cast<void*>(-1) ? 1 : 0);
  if (pid < 0) return true;  // cannot tell: check the policy anyway
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return true;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace

TEST_CASE("keep_freed_memory: the second step reuses the first step's pages") {
  if (!tg::keep_freed_memory()) {
    MESSAGE("this C library (or a sanitizer's malloc) does not support the policy; nothing to check");
    return;
  }
  CHECK(tg::keep_freed_memory());  // calling it again is harmless
  if (!brk_heap_grows()) {
    MESSAGE("the heap cannot grow by brk here (a user-mode emulator?): glibc grows it with mmap and the policy "
            "has no heap top to keep; nothing to check");
    return;
  }
  one_step(0);                      // the first step faults its pages in
  long pages = 0;
  const long before = minor_faults();
  for (std::uint64_t s = 1; s <= 3; ++s) pages += one_step(s);
  const long faults = minor_faults() - before;
  INFO("pages written: " << pages << ", minor faults: " << faults);
  // Without the policy most of these pages would be faulted in again
  // (blocks above the mmap threshold are unmapped on free).
  CHECK(pages > 10000);
  CHECK(faults < pages / 50);
}
