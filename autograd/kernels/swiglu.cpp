// autograd/kernels/swiglu.cpp — SwiGLU and sigmoid-gate kernels; see swiglu.hpp for the formulas.
//
// Threading: the n elements are cut into blocks of kBlock (a multiple of every vector
// width), and OpenMP hands out whole blocks. Only the last block has a scalar tail, so
// every element is computed the same way whatever the thread count: the results do not
// depend on it at all.
#include "autograd/kernels/swiglu.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "autograd/kernels/simd.hpp"

namespace tg::kernels {

namespace {

constexpr int64_t kBlock = 2048;                       // elements per OpenMP work item
constexpr int64_t kParallelMin = int64_t(1) << 14;     // below this, one thread

void check(const char* K, int64_t n, const void* g, const void* u, const void* third,
           const char* third_name) {
  if (n < 0) throw std::invalid_argument(std::string(K) + ": n must be >= 0, got n=" + std::to_string(n));
  if (n > 0 && (!g || !u || !third))
    throw std::invalid_argument(std::string(K) + ": an input or " + std::string(third_name) +
                                " is nullptr (n=" + std::to_string(n) + ")");
}

template <class F>
void for_blocks(int64_t n, F&& body) { simd::for_blocks(n, kBlock, kParallelMin, body); }

template <class B>
B sigmoid(const B& g) {
  return B(typename B::value_type(1)) / (B(typename B::value_type(1)) + xsimd::exp(-g));
}

}  // namespace

template <class T>
void swiglu_forward(int64_t n, const T* g, const T* u, T* y) {
  check("swiglu_forward", n, g, u, y, "y");
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  static_assert(kBlock % W == 0, "kBlock must be a multiple of the vector width");
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + W <= i1; i += W) {
      const B gv = B::load_unaligned(g + i);
      (gv * sigmoid(gv) * B::load_unaligned(u + i)).store_unaligned(y + i);
    }
    for (; i < i1; ++i) {
      const T s = T(1) / (T(1) + std::exp(-g[i]));
      y[i] = g[i] * s * u[i];
    }
  });
}

template <class T>
void swiglu_forward_naive(int64_t n, const T* g, const T* u, T* y) {
  check("swiglu_forward_naive", n, g, u, y, "y");
  for (int64_t i = 0; i < n; ++i) {
    const T s = T(1) / (T(1) + std::exp(-g[i]));
    y[i] = (g[i] * s) * u[i];
  }
}

template <class T>
void swiglu_backward(int64_t n, const T* g, const T* u, const T* dy, T* dg, T* du) {
  check("swiglu_backward", n, g, u, dy, "dy");
  if (!dg && !du) return;
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  const B one(T(1));
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + W <= i1; i += W) {
      const B gv = B::load_unaligned(g + i);
      const B dyv = B::load_unaligned(dy + i);
      const B s = sigmoid(gv);
      if (dg) {
        const B dsilu = s * xsimd::fma(gv, one - s, one);  // s * (1 + g (1 - s))
        xsimd::fma(dyv * B::load_unaligned(u + i), dsilu, B::load_unaligned(dg + i))
            .store_unaligned(dg + i);
      }
      if (du) xsimd::fma(dyv, gv * s, B::load_unaligned(du + i)).store_unaligned(du + i);
    }
    for (; i < i1; ++i) {
      const T s = T(1) / (T(1) + std::exp(-g[i]));
      if (dg) dg[i] += dy[i] * u[i] * (s * (T(1) + g[i] * (T(1) - s)));
      if (du) du[i] += dy[i] * (g[i] * s);
    }
  });
}

template <class T>
void swiglu_backward_naive(int64_t n, const T* g, const T* u, const T* dy, T* dg, T* du) {
  check("swiglu_backward_naive", n, g, u, dy, "dy");
  for (int64_t i = 0; i < n; ++i) {
    const T s = T(1) / (T(1) + std::exp(-g[i]));
    const T silu = g[i] * s;
    const T dsilu = s * (T(1) + g[i] * (T(1) - s));
    if (dg) dg[i] += dy[i] * u[i] * dsilu;
    if (du) du[i] += dy[i] * silu;
  }
}

// ---- the sigmoid gate: y = x * sigmoid(s) ----------------------------------------------

template <class T>
void sigmoid_gate_forward(int64_t n, const T* x, const T* s, T* y) {
  check("sigmoid_gate_forward", n, x, s, y, "y");
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + W <= i1; i += W)
      (B::load_unaligned(x + i) * sigmoid(B::load_unaligned(s + i))).store_unaligned(y + i);
    for (; i < i1; ++i) y[i] = x[i] * (T(1) / (T(1) + std::exp(-s[i])));
  });
}

template <class T>
void sigmoid_gate_forward_naive(int64_t n, const T* x, const T* s, T* y) {
  check("sigmoid_gate_forward_naive", n, x, s, y, "y");
  for (int64_t i = 0; i < n; ++i) {
    const T a = T(1) / (T(1) + std::exp(-s[i]));
    y[i] = x[i] * a;
  }
}

template <class T>
void sigmoid_gate_backward(int64_t n, const T* x, const T* s, const T* dy, T* dx, T* ds) {
  check("sigmoid_gate_backward", n, x, s, dy, "dy");
  if (!dx && !ds) return;
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  const B one(T(1));
  for_blocks(n, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + W <= i1; i += W) {
      const B a = sigmoid(B::load_unaligned(s + i));
      const B dyv = B::load_unaligned(dy + i);
      if (dx) xsimd::fma(dyv, a, B::load_unaligned(dx + i)).store_unaligned(dx + i);
      if (ds)
        xsimd::fma(dyv * B::load_unaligned(x + i), a * (one - a), B::load_unaligned(ds + i))
            .store_unaligned(ds + i);
    }
    for (; i < i1; ++i) {
      const T a = T(1) / (T(1) + std::exp(-s[i]));
      if (dx) dx[i] += dy[i] * a;
      if (ds) ds[i] += dy[i] * x[i] * (a * (T(1) - a));
    }
  });
}

template <class T>
void sigmoid_gate_backward_naive(int64_t n, const T* x, const T* s, const T* dy, T* dx, T* ds) {
  check("sigmoid_gate_backward_naive", n, x, s, dy, "dy");
  for (int64_t i = 0; i < n; ++i) {
    const T a = T(1) / (T(1) + std::exp(-s[i]));
    if (dx) dx[i] += dy[i] * a;
    if (ds) ds[i] += dy[i] * x[i] * (a * (T(1) - a));
  }
}

#define TG_INSTANTIATE_SWIGLU(T)                                                     \
  template void swiglu_forward<T>(int64_t, const T*, const T*, T*);                  \
  template void swiglu_forward_naive<T>(int64_t, const T*, const T*, T*);            \
  template void swiglu_backward<T>(int64_t, const T*, const T*, const T*, T*, T*);   \
  template void swiglu_backward_naive<T>(int64_t, const T*, const T*, const T*, T*, T*);  \
  template void sigmoid_gate_forward<T>(int64_t, const T*, const T*, T*);            \
  template void sigmoid_gate_forward_naive<T>(int64_t, const T*, const T*, T*);      \
  template void sigmoid_gate_backward<T>(int64_t, const T*, const T*, const T*, T*, T*); \
  template void sigmoid_gate_backward_naive<T>(int64_t, const T*, const T*, const T*, T*, T*);

TG_INSTANTIATE_SWIGLU(float)
TG_INSTANTIATE_SWIGLU(double)
#undef TG_INSTANTIATE_SWIGLU

}  // namespace tg::kernels
