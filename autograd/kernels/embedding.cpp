// autograd/kernels/embedding.cpp — embedding gather and scatter-add; see embedding.hpp.
#include "autograd/kernels/embedding.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include <xsimd/xsimd.hpp>

#include "autograd/kernels/parallel.hpp"

namespace tg::kernels {

namespace {

constexpr int64_t kParallelMin = int64_t(1) << 15;  // elements moved; below this, one thread

std::string sizes(int64_t N, int64_t V, int64_t C) {
  return "N=" + std::to_string(N) + ", V=" + std::to_string(V) + ", C=" + std::to_string(C);
}

// Size, pointer and id checks shared by all four kernels; all run before any write.
void check(const char* K, int64_t N, int64_t V, int64_t C, const int64_t* ids, const void* src,
           const void* dst, const char* src_name, const char* dst_name) {
  if (N < 0 || V < 0 || C < 0)
    throw std::invalid_argument(std::string(K) + ": sizes must be >= 0 (" + sizes(N, V, C) + ")");
  if (N == 0) return;
  if (!ids || !src || !dst)
    throw std::invalid_argument(std::string(K) + ": ids, " + src_name + " or " + dst_name +
                                " is nullptr (" + sizes(N, V, C) + ")");
  for (int64_t i = 0; i < N; ++i)
    if (ids[i] < 0 || ids[i] >= V)
      throw std::invalid_argument(std::string(K) + ": id " + std::to_string(ids[i]) +
                                  " at position " + std::to_string(i) + " is outside [0, " +
                                  std::to_string(V) + ") (" + sizes(N, V, C) + ")");
}

// dst[c] += src[c] for c in [c0, c1).
template <class T>
void add_row(const T* src, T* dst, int64_t c0, int64_t c1) {
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  int64_t c = c0;
  for (; c + W <= c1; c += W)
    (B::load_unaligned(dst + c) + B::load_unaligned(src + c)).store_unaligned(dst + c);
  for (; c < c1; ++c) dst[c] += src[c];
}

}  // namespace

template <class T>
void embedding_forward(int64_t N, int64_t V, int64_t C, const int64_t* ids, const T* W, T* y) {
  check("embedding_forward", N, V, C, ids, W, y, "W", "y");
  if (N == 0 || C == 0) return;
  const int nt = (N * C >= kParallelMin) ? int(std::min<int64_t>(tg::num_threads(), N)) : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < N; ++i) std::copy_n(W + ids[i] * C, C, y + i * C);
}

template <class T>
void embedding_forward_naive(int64_t N, int64_t V, int64_t C, const int64_t* ids, const T* W,
                             T* y) {
  check("embedding_forward_naive", N, V, C, ids, W, y, "W", "y");
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < C; ++c) y[i * C + c] = W[ids[i] * C + c];
}

template <class T>
void embedding_backward(int64_t N, int64_t V, int64_t C, const int64_t* ids, const T* dy,
                        T* dW) {
  check("embedding_backward", N, V, C, ids, dy, dW, "dy", "dW");
  if (N == 0 || C == 0) return;
  constexpr int64_t Wd = xsimd::batch<T>::size;
  const int nt = (N * C >= kParallelMin) ? tg::num_threads() : 1;
  if (nt == 1) {
    for (int64_t i = 0; i < N; ++i) add_row(dy + i * C, dW + ids[i] * C, 0, C);
    return;
  }
  if (C >= int64_t(nt) * 4 * Wd) {
    // Column slices, cut at multiples of the vector width. See Note [Embedding scatter-add].
    const int64_t nvec = C / Wd;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; ++t) {
      const int64_t c0 = nvec * t / nt * Wd;
      const int64_t c1 = (t + 1 == nt) ? C : nvec * (t + 1) / nt * Wd;
      for (int64_t i = 0; i < N; ++i) add_row(dy + i * C, dW + ids[i] * C, c0, c1);
    }
  } else {
    // Vocabulary slices: thread t owns rows [v0, v1) of dW.
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; ++t) {
      const int64_t v0 = V * t / nt, v1 = V * (t + 1) / nt;
      for (int64_t i = 0; i < N; ++i)
        if (ids[i] >= v0 && ids[i] < v1) add_row(dy + i * C, dW + ids[i] * C, 0, C);
    }
  }
}

template <class T>
void embedding_backward_naive(int64_t N, int64_t V, int64_t C, const int64_t* ids, const T* dy,
                              T* dW) {
  check("embedding_backward_naive", N, V, C, ids, dy, dW, "dy", "dW");
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < C; ++c) dW[ids[i] * C + c] += dy[i * C + c];
}

#define TG_INSTANTIATE_EMBEDDING(T)                                                          \
  template void embedding_forward<T>(int64_t, int64_t, int64_t, const int64_t*, const T*, T*); \
  template void embedding_forward_naive<T>(int64_t, int64_t, int64_t, const int64_t*,        \
                                           const T*, T*);                                    \
  template void embedding_backward<T>(int64_t, int64_t, int64_t, const int64_t*, const T*,   \
                                      T*);                                                   \
  template void embedding_backward_naive<T>(int64_t, int64_t, int64_t, const int64_t*,       \
                                            const T*, T*);

TG_INSTANTIATE_EMBEDDING(float)
TG_INSTANTIATE_EMBEDDING(double)
#undef TG_INSTANTIATE_EMBEDDING

}  // namespace tg::kernels
