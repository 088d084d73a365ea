// autograd/memory.cpp — keep_freed_memory(): glibc's mallopt settings. See memory.hpp.
#include "autograd/memory.hpp"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace tg {

bool keep_freed_memory() {
#if defined(__SANITIZE_ADDRESS__)
  return false;  // ASan's malloc ignores mallopt
#elif defined(__GLIBC__)
  // Fixing the mmap threshold also stops glibc from adjusting it on its own.
  const bool mmap_ok = mallopt(M_MMAP_THRESHOLD, static_cast<int>(kKeptBlockBytes)) == 1;
  // The trim threshold is an int: the heap is trimmed only once 2 GiB lie free at its top.
  const bool trim_ok = mallopt(M_TRIM_THRESHOLD, 0x7fffffff) == 1;
  return mmap_ok && trim_ok;
#else
  return false;
#endif
}

}  // namespace tg
