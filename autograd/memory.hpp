// autograd/memory.hpp — how the process keeps the memory tensors free.
//
// What it is for: a training step allocates the same activations, gradients and
// scratch buffers every step, hundreds of megabytes of them, and frees them again
// when the tape is released. With glibc's default malloc policy, blocks above its
// mmap threshold come straight from the kernel and go back to it on free, and the
// top of the heap is trimmed whenever enough of it is free; either way the next
// step touches fresh pages, and every 4 KiB page costs a page fault and a
// zero-fill. At the baby size that is about 130,000 faults and a quarter of the
// step's time (bench/README.md, "malloc kept").
//
// keep_freed_memory() turns that off for the whole process: blocks up to
// kKeptBlockBytes are served from the heap, and the heap is never trimmed, so the
// second step reuses the first step's pages. It is what PyTorch's caching
// allocators do on a GPU, done with two mallopt() settings instead of an allocator
// of our own (xt::xarray keeps std::allocator, so tensors stay plain xtensor
// containers). The price: the process keeps its peak resident set until it exits.
//
// What it is not: an allocator, or a default. A library should not change its
// host process's malloc behind its back, so nothing calls this implicitly; the
// programs in examples/ and bench/ call it first thing, and so can yours. The
// same policy can be had without code through the environment:
//   GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296
#pragma once

#include <cstddef>

namespace tg {

// The largest block kept in the heap: glibc's ceiling for its mmap threshold
// on 64-bit systems (32 MiB). Larger blocks are still mapped and unmapped.
inline constexpr std::size_t kKeptBlockBytes = std::size_t(32) << 20;

// Keep freed memory in the process (see above). Returns false where the C
// library does not support it (not glibc, or a sanitizer's malloc): then
// nothing changed. Calling it again is harmless.
bool keep_freed_memory();

}  // namespace tg
