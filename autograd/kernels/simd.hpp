// autograd/kernels/simd.hpp — the helpers the SIMD kernel files share (private to
// autograd/kernels/*.cpp; not installed for users, not part of the kernel API).
//
// What it is for: xsimd with GCC's false warnings silenced, an FMA with one rounding on
// every instruction set (fmadd / fmsub), the thread count for a loop of a given size
// (threads_for), and the vector map with its padded tail that the elementwise kernels are
// made of (vmap), plus the plain loop their naive twins use (each).
//
// What it is not: a kernel. Nothing here knows a shape or an op.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

// GCC 12 reports "__Y may be used uninitialized" from inside xsimd 8.1's AVX-512
// exp/ldexp/sqrt (the _mm512_undefined_* idiom) once inlined into a kernel file; the
// warning is about xsimd's and the compiler's own headers, not ours, and would bury real
// ones. (A pragma in a header holds for the rest of the including file.)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <xsimd/xsimd.hpp>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// Note [Exact float division and sqrt on aarch64]
// xsimd 8.1 gives its neon64 arch exact instructions for double only: a float batch's
// `a / b` and xsimd::sqrt fall back to the 32-bit ARM (neon) kernels, a reciprocal or
// reciprocal-square-root estimate refined by two Newton steps. Those are a few ulp off the
// correctly rounded result (the broadcast div and AdamW were not bitwise equal to their
// scalar twins under qemu-aarch64), where every x86 arch divides and takes square roots
// exactly. AArch64 has the exact instructions (FDIV, FSQRT on .4s); these explicit
// specializations of xsimd's own neon kernels for the neon64 arch use them, so every
// kernel file and xsimd's own math functions (which divide too) get exact results. They
// must come before any float batch is divided, which is why they are here, right after
// xsimd is included; the GEMM files, which include xsimd themselves, never divide.
// (Later xsimd releases give neon64 these kernels themselves.)
#if defined(__aarch64__) && defined(__ARM_NEON)
namespace xsimd::kernel {
template <>
inline batch<float, neon64> div<neon64>(batch<float, neon64> const& lhs, batch<float, neon64> const& rhs,
                                        requires_arch<neon>) noexcept {
  return vdivq_f32(lhs, rhs);
}
template <>
inline batch<float, neon64> sqrt<neon64>(batch<float, neon64> const& arg, requires_arch<neon>) noexcept {
  return vsqrtq_f32(arg);
}
}  // namespace xsimd::kernel
#endif

#include "autograd/kernels/parallel.hpp"

namespace tg::kernels::simd {

// Note [xsimd fma on AVX-512]
// xsimd 8.1 has no AVX-512 fma/fms kernels: on an avx512 arch xsimd::fma falls back to
// the generic `x * y + z`, two roundings (and with -std=c++20 GCC does not contract it).
// Where one rounding matters we call the intrinsic ourselves; on other archs with FMA
// (FMA3, NEON) xsimd::fma is the real instruction. An x86 arch without FMA (the x86-64
// baseline copy of the portable build, Note [Portable kernels] in isa.hpp) gets the same
// for the same reason: xsimd's fallback is again `x * y + z`, and the kernels that need one
// rounding (AdamW's PyTorch-exact moments, erfc's exact a² = hi + lo split) would silently
// lose it. There each lane goes through std::fma: correctly rounded, slower (a software
// fma on such a CPU), and a CPU without FMA is a 2012 one.

// x * y + z (or x * y - z when `sub`) with one rounding, lane by lane through std::fma.
template <class T, class A>
xsimd::batch<T, A> per_lane_fma(const xsimd::batch<T, A>& x, const xsimd::batch<T, A>& y,
                                const xsimd::batch<T, A>& z, bool sub) {
  constexpr std::size_t W = xsimd::batch<T, A>::size;
  alignas(64) T a[W], b[W], c[W];
  x.store_aligned(a);
  y.store_aligned(b);
  z.store_aligned(c);
  for (std::size_t i = 0; i < W; ++i) a[i] = std::fma(a[i], b[i], sub ? -c[i] : c[i]);
  return xsimd::batch<T, A>::load_aligned(a);
}

// x * y + z with one rounding.
template <class T, class A>
xsimd::batch<T, A> fmadd(const xsimd::batch<T, A>& x, const xsimd::batch<T, A>& y,
                         const xsimd::batch<T, A>& z) {
#if defined(__AVX512F__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    if constexpr (std::is_same_v<T, float>) return _mm512_fmadd_ps(x, y, z);
    else return _mm512_fmadd_pd(x, y, z);
  } else
#endif
#if defined(__x86_64__) && !defined(__FMA__) && !defined(__AVX512F__)
  return per_lane_fma(x, y, z, false);
#else
    return xsimd::fma(x, y, z);
#endif
}

// x * y - z with one rounding.
template <class T, class A>
xsimd::batch<T, A> fmsub(const xsimd::batch<T, A>& x, const xsimd::batch<T, A>& y,
                         const xsimd::batch<T, A>& z) {
#if defined(__AVX512F__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    if constexpr (std::is_same_v<T, float>) return _mm512_fmsub_ps(x, y, z);
    else return _mm512_fmsub_pd(x, y, z);
  } else
#endif
#if defined(__x86_64__) && !defined(__FMA__) && !defined(__AVX512F__)
  return per_lane_fma(x, y, z, true);
#else
    return xsimd::fms(x, y, z);
#endif
}

// Threads for a loop over `work` elements cut into at most `max_chunks` independent
// pieces: 1 below `min_work` (starting a parallel region costs a few microseconds, as
// much as a memory-bound pass over ~30k elements), else tg::num_threads(), capped.
inline int threads_for(int64_t work, int64_t max_chunks, int64_t min_work) {
  if (work < min_work) return 1;
  return int(std::max<int64_t>(1, std::min<int64_t>(tg::num_threads(), max_chunks)));
}

// body(i0, i1) on every block [i0, i1) of `block` elements of [0, n), the blocks shared out
// over threads_for(n, blocks, min_work) threads by a static schedule (so the split depends
// only on n and the thread count; a block is never cut).
template <class F>
void for_blocks(int64_t n, int64_t block, int64_t min_work, F&& body) {
  const int64_t nblocks = (n + block - 1) / block;
  const int nt = threads_for(n, nblocks, min_work);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t blk = 0; blk < nblocks; ++blk) body(blk * block, std::min(n, blk * block + block));
}

// Throws std::invalid_argument naming `kernel` if n < 0.
inline void check_n(const char* kernel, int64_t n) {
  if (n < 0)
    throw std::invalid_argument(std::string(kernel) + ": negative length n = " + std::to_string(n));
}

// Runs body(i0, i1) over [0, nvec·W) split into per-thread ranges of whole vectors
// (static, one contiguous range per thread) when `big`, else once.
template <class Body>
void parallel_vectors(int64_t nvec, int64_t W, bool big, Body&& body) {
  const int nt = tg::num_threads();
  if (big && nt > 1 && nvec > 1) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int p = 0; p < nt; ++p) body(nvec * p / nt * W, nvec * (p + 1) / nt * W);
  } else {
    body(0, nvec * W);
  }
}

// The vector loop of vmap over [i0, i1). The pointers are parameters (not captured by
// reference), so the compiler keeps them in registers instead of reloading them after
// every store.
template <class V, class F, class T, class... In>
void vmap_range(int64_t i0, int64_t i1, F f, T* out, const In*... in) {
  for (int64_t i = i0; i < i1; i += int64_t(V::size)) f(V::load_unaligned(in + i)...).store_unaligned(out + i);
}

// out[i] = f(in_0[i], in_1[i], ...) for i in [0, n), f a function of xsimd::batch<T>,
// threaded from `grain` elements on. out may alias any input. The last n % W elements
// are copied into vectors padded with 1 (a value every f here accepts), so they go
// through the same f as the rest: results do not depend on the length, the alignment
// or the thread count.
template <class T, class F, class... In>
void vmap(int64_t n, int64_t grain, F f, T* out, const In*... in) {
  using V = xsimd::batch<T>;
  constexpr int64_t W = V::size;
  static_assert((std::is_same_v<In, T> && ...), "vmap: all arrays have the same type");
  const int64_t nvec = n / W;
  parallel_vectors(nvec, W, n >= grain,
                   [&](int64_t i0, int64_t i1) { vmap_range<V>(i0, i1, f, out, in...); });
  const int64_t i0 = nvec * W, k = n - i0;
  if (k == 0) return;
  constexpr std::size_t N = sizeof...(In);
  alignas(64) T buf[N][W];
  const T* src[N] = {in...};
  for (std::size_t a = 0; a < N; ++a)
    for (int64_t j = 0; j < W; ++j) buf[a][j] = j < k ? src[a][i0 + j] : T(1);
  alignas(64) T res[W];
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    f(V::load_aligned(buf[I])...).store_aligned(res);
  }(std::make_index_sequence<N>{});
  for (int64_t j = 0; j < k; ++j) out[i0 + j] = res[j];
}

// A plain loop, for the naive twins.
template <class F>
void each(int64_t n, F&& body) {
  for (int64_t i = 0; i < n; ++i) body(i);
}

}  // namespace tg::kernels::simd
