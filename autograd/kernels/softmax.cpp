// autograd/kernels/softmax.cpp — see softmax.hpp.
//
// Layout: row helpers (max, Σ exp, Σ of products), then each public kernel
// followed by its naive twin, then explicit instantiation. Each row is done
// by one thread from start to end, so every result is independent of the
// thread count; within a row the vector loop has a fixed order for a given n.
#include "autograd/kernels/softmax.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "autograd/kernels/simd.hpp"

namespace tg::kernels {

namespace {

// Below this many elements (rows · n) a call stays on the calling thread.
constexpr int64_t kGrain = int64_t(1) << 14;

using simd::fmadd;  // one rounding, also on AVX-512 (Note [xsimd fma on AVX-512])

template <class T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

void check_shape(const char* kernel, int64_t rows, int64_t n) {
  if (rows < 0 || n < 0)
    throw std::invalid_argument(std::string(kernel) + ": negative shape (" + std::to_string(rows) +
                                ", " + std::to_string(n) + ")");
}

template <class F>
void for_rows(int64_t rows, int64_t n, F&& body) {
  const int nt = tg::num_threads();
  if (rows * n >= kGrain && nt > 1 && rows > 1) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; ++r) body(r);
  } else {
    for (int64_t r = 0; r < rows; ++r) body(r);
  }
}

// max_j x[j], NaNs skipped; -inf for an empty or all-NaN row.
template <class T>
T row_max(const T* x, int64_t n) {
  using V = xsimd::batch<T>;
  constexpr int64_t W = V::size;
  V m0(kNegInf<T>), m1(kNegInf<T>);
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    const V v0 = V::load_unaligned(x + j), v1 = V::load_unaligned(x + j + W);
    m0 = xsimd::select(v0 > m0, v0, m0);  // a NaN compares false: skipped
    m1 = xsimd::select(v1 > m1, v1, m1);
  }
  alignas(64) T lanes[W];
  xsimd::select(m1 > m0, m1, m0).store_aligned(lanes);
  T m = kNegInf<T>;
  for (int64_t l = 0; l < W; ++l)
    if (lanes[l] > m) m = lanes[l];
  for (; j < n; ++j)
    if (x[j] > m) m = x[j];
  return m;
}

template <class T>
bool all_neg_inf(const T* x, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    if (!(x[j] == kNegInf<T>)) return false;
  return true;
}

// The naive twins' max: a plain loop (NaNs skipped, as in row_max).
template <class T>
T naive_max(const T* x, int64_t n) {
  T m = kNegInf<T>;
  for (int64_t j = 0; j < n; ++j)
    if (x[j] > m) m = x[j];
  return m;
}

// The row loop of softmax and log_softmax forward: row r of x and y and the row's max; a
// fully masked row (every x = -inf) is filled with `masked` (Note [Fully masked rows]),
// any other goes to body(xr, yr, m). Naive: one thread and naive_max, for the twins.
template <bool Naive, class T, class F>
void softmax_rows(int64_t rows, int64_t n, const T* x, T* y, T masked, F&& body) {
  auto row = [&](int64_t r) {
    const T* xr = x + r * n;
    T* yr = y + r * n;
    const T m = Naive ? naive_max(xr, n) : row_max(xr, n);
    if (m == kNegInf<T> && all_neg_inf(xr, n)) {
      std::fill_n(yr, n, masked);
      return;
    }
    body(xr, yr, m);
  };
  if constexpr (Naive) {
    for (int64_t r = 0; r < rows; ++r) row(r);
  } else {
    for_rows(rows, n, row);
  }
}

// The row loop of the backward kernels: body(yr, dyr, dxr) for row r of y, dy and dx.
template <bool Naive, class T, class F>
void backward_rows(int64_t rows, int64_t n, const T* y, const T* dy, T* dx, F&& body) {
  auto row = [&](int64_t r) { body(y + r * n, dy + r * n, dx + r * n); };
  if constexpr (Naive) {
    for (int64_t r = 0; r < rows; ++r) row(r);
  } else {
    for_rows(rows, n, row);
  }
}

// Adds the T values p[0..W) to double accumulators (two for float, whose
// vector holds twice as many lanes as a double vector).
template <class T>
struct DoubleAcc {
  using D = xsimd::batch<double>;
  static constexpr int64_t WD = D::size;
  D a0 = D(0.0), a1 = D(0.0);  // not D{0.0}: braces pick the initializer-list constructor
  void add(const T* p) {
    if constexpr (std::is_same_v<T, double>) {
      a0 += D::load_unaligned(p);
    } else {  // loads with conversion float -> double
      a0 += D::load_unaligned(p);
      a1 += D::load_unaligned(p + WD);
    }
  }
  double total() const { return xsimd::hadd(a0 + a1); }
};

// Σ_j exp(x[j] - m) in double; when e is not null, also e[j] = exp(x[j] - m).
// The tail is padded with -inf, whose exp is 0.
template <class T>
double exp_sum(const T* x, int64_t n, T m, T* e) {
  using V = xsimd::batch<T>;
  constexpr int64_t W = V::size;
  const V mv(m);
  DoubleAcc<T> acc;
  alignas(64) T buf[W];
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    T* dst = e ? e + j : buf;
    xsimd::exp(V::load_unaligned(x + j) - mv).store_unaligned(dst);
    acc.add(dst);
  }
  const int64_t k = n - j;
  if (k > 0) {
    for (int64_t l = 0; l < W; ++l) buf[l] = l < k ? x[j + l] : kNegInf<T>;
    xsimd::exp(V::load_aligned(buf) - mv).store_aligned(buf);
    acc.add(buf);
    if (e) std::copy_n(buf, k, e + j);
  }
  return acc.total();
}

// Σ_j a[j] b[j] in double (for float the products are exact in double).
template <class T>
double dot_double(const T* a, const T* b, int64_t n) {
  using D = xsimd::batch<double>;
  constexpr int64_t W = D::size;
  D s0(0.0), s1(0.0);
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    s0 = fmadd(D::load_unaligned(a + j), D::load_unaligned(b + j), s0);
    s1 = fmadd(D::load_unaligned(a + j + W), D::load_unaligned(b + j + W), s1);
  }
  double s = xsimd::hadd(s0 + s1);
  for (; j < n; ++j) s += double(a[j]) * double(b[j]);
  return s;
}

// Σ_j a[j] in double.
template <class T>
double sum_double(const T* a, int64_t n) {
  using D = xsimd::batch<double>;
  constexpr int64_t W = D::size;
  D s0(0.0), s1(0.0);
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    s0 += D::load_unaligned(a + j);
    s1 += D::load_unaligned(a + j + W);
  }
  double s = xsimd::hadd(s0 + s1);
  for (; j < n; ++j) s += double(a[j]);
  return s;
}

// out[j] = f(in_0[j], ...) over one row, f a function of batches; the tail
// goes through a padded vector (pad value `pad`), so every element sees f.
template <class T, class F, class... In>
void row_map(int64_t n, T pad, F f, T* out, const In*... in) {
  using V = xsimd::batch<T>;
  constexpr int64_t W = V::size;
  int64_t j = 0;
  for (; j + W <= n; j += W) f(V::load_unaligned(in + j)...).store_unaligned(out + j);
  const int64_t k = n - j;
  if (k == 0) return;
  constexpr std::size_t N = sizeof...(In);
  alignas(64) T buf[N][W];
  const T* src[N] = {in...};
  for (std::size_t a = 0; a < N; ++a)
    for (int64_t l = 0; l < W; ++l) buf[a][l] = l < k ? src[a][j + l] : pad;
  alignas(64) T res[W];
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    f(V::load_aligned(buf[I])...).store_aligned(res);
  }(std::make_index_sequence<N>{});
  std::copy_n(res, k, out + j);
}

// Throws on the first target outside [0, V) that is not ignore_index;
// returns the number of kept rows.
int64_t check_targets(const char* kernel, int64_t N, int64_t V, const int64_t* targets,
                      int64_t ignore_index) {
  if (N < 0 || V < 0)
    throw std::invalid_argument(std::string(kernel) + ": negative shape (N, V) = (" +
                                std::to_string(N) + ", " + std::to_string(V) + ")");
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = targets[i];
    if (t == ignore_index) continue;
    if (t < 0 || t >= V)
      throw std::invalid_argument(std::string(kernel) + ": row " + std::to_string(i) +
                                  " has target " + std::to_string(t) + ", outside [0, " +
                                  std::to_string(V) + ") and not ignore_index (" +
                                  std::to_string(ignore_index) + "); logits are (" +
                                  std::to_string(N) + ", " + std::to_string(V) + ")");
    ++count;
  }
  return count;
}

}  // namespace

// ============================================================================
// softmax
// ============================================================================

template <class T>
void softmax_forward(int64_t rows, int64_t n, const T* x, T* y) {
  using V = xsimd::batch<T>;
  check_shape("softmax_forward", rows, n);
  softmax_rows<false>(rows, n, x, y, T(0), [&](const T* xr, T* yr, T m) {
    const double s = exp_sum(xr, n, m, yr);  // yr holds exp(x - m)
    const V inv(T(1.0 / s));
    row_map(n, T(0), [=](V e) { return e * inv; }, yr, yr);
  });
}

template <class T>
void softmax_forward_naive(int64_t rows, int64_t n, const T* x, T* y) {
  check_shape("softmax_forward_naive", rows, n);
  softmax_rows<true>(rows, n, x, y, T(0), [&](const T* xr, T* yr, T m) {
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      yr[j] = std::exp(xr[j] - m);
      s += double(yr[j]);
    }
    for (int64_t j = 0; j < n; ++j) yr[j] = T(double(yr[j]) / s);
  });
}

template <class T>
void softmax_backward(int64_t rows, int64_t n, const T* y, const T* dy, T* dx) {
  using V = xsimd::batch<T>;
  check_shape("softmax_backward", rows, n);
  backward_rows<false>(rows, n, y, dy, dx, [&](const T* yr, const T* dyr, T* dxr) {
    const V dot(T(dot_double(dyr, yr, n)));
    row_map(n, T(0), [=](V yv, V d, V acc) { return acc + yv * (d - dot); }, dxr, yr, dyr, dxr);
  });
}

template <class T>
void softmax_backward_naive(int64_t rows, int64_t n, const T* y, const T* dy, T* dx) {
  check_shape("softmax_backward_naive", rows, n);
  backward_rows<true>(rows, n, y, dy, dx, [&](const T* yr, const T* dyr, T* dxr) {
    double dot = 0.0;
    for (int64_t j = 0; j < n; ++j) dot += double(dyr[j]) * double(yr[j]);
    for (int64_t j = 0; j < n; ++j) dxr[j] += yr[j] * (dyr[j] - T(dot));
  });
}

// ============================================================================
// log_softmax
// ============================================================================

template <class T>
void log_softmax_forward(int64_t rows, int64_t n, const T* x, T* y) {
  using V = xsimd::batch<T>;
  check_shape("log_softmax_forward", rows, n);
  softmax_rows<false>(rows, n, x, y, kNegInf<T>, [&](const T* xr, T* yr, T m) {
    const V mv(m), ls(T(std::log(exp_sum(xr, n, m, static_cast<T*>(nullptr)))));
    row_map(n, T(0), [=](V xv) { return (xv - mv) - ls; }, yr, xr);
  });
}

template <class T>
void log_softmax_forward_naive(int64_t rows, int64_t n, const T* x, T* y) {
  check_shape("log_softmax_forward_naive", rows, n);
  softmax_rows<true>(rows, n, x, y, kNegInf<T>, [&](const T* xr, T* yr, T m) {
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) s += double(std::exp(xr[j] - m));
    const T ls = T(std::log(s));
    for (int64_t j = 0; j < n; ++j) yr[j] = (xr[j] - m) - ls;
  });
}

template <class T>
void log_softmax_backward(int64_t rows, int64_t n, const T* y, const T* dy, T* dx) {
  using V = xsimd::batch<T>;
  check_shape("log_softmax_backward", rows, n);
  backward_rows<false>(rows, n, y, dy, dx, [&](const T* yr, const T* dyr, T* dxr) {
    if (row_max(yr, n) == kNegInf<T> && all_neg_inf(yr, n)) return;  // Note [Fully masked rows]
    const V sdy(T(sum_double(dyr, n)));
    row_map(n, T(0), [=](V yv, V d, V acc) { return acc + (d - xsimd::exp(yv) * sdy); }, dxr, yr,
            dyr, dxr);
  });
}

template <class T>
void log_softmax_backward_naive(int64_t rows, int64_t n, const T* y, const T* dy, T* dx) {
  check_shape("log_softmax_backward_naive", rows, n);
  backward_rows<true>(rows, n, y, dy, dx, [&](const T* yr, const T* dyr, T* dxr) {
    if (all_neg_inf(yr, n)) return;
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) s += double(dyr[j]);
    for (int64_t j = 0; j < n; ++j) dxr[j] += dyr[j] - std::exp(yr[j]) * T(s);
  });
}

// ============================================================================
// cross-entropy
// ============================================================================

template <class T>
int64_t cross_entropy_forward(int64_t N, int64_t V, const T* logits, const int64_t* targets,
                              int64_t ignore_index, T* loss_per_row, T* lse) {
  const int64_t count = check_targets("cross_entropy_forward", N, V, targets, ignore_index);
  for_rows(N, V, [&](int64_t i) {
    const int64_t t = targets[i];
    if (t == ignore_index) {
      loss_per_row[i] = T(0);
      lse[i] = T(0);
      return;
    }
    const T* xr = logits + i * V;
    const T m = row_max(xr, V);
    const double ls = std::log(exp_sum(xr, V, m, static_cast<T*>(nullptr)));
    lse[i] = T(double(m) + ls);
    loss_per_row[i] = T((double(m) - double(xr[t])) + ls);
  });
  return count;
}

template <class T>
int64_t cross_entropy_forward_naive(int64_t N, int64_t V, const T* logits, const int64_t* targets,
                                    int64_t ignore_index, T* loss_per_row, T* lse) {
  const int64_t count = check_targets("cross_entropy_forward_naive", N, V, targets, ignore_index);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = targets[i];
    if (t == ignore_index) {
      loss_per_row[i] = T(0);
      lse[i] = T(0);
      continue;
    }
    const T* xr = logits + i * V;
    const T m = naive_max(xr, V);
    double s = 0.0;
    for (int64_t j = 0; j < V; ++j) s += double(std::exp(xr[j] - m));
    const double ls = std::log(s);
    lse[i] = T(double(m) + ls);
    loss_per_row[i] = T((double(m) - double(xr[t])) + ls);
  }
  return count;
}

template <class T>
void cross_entropy_backward(int64_t N, int64_t V, const T* logits, const int64_t* targets,
                            int64_t ignore_index, const T* lse, const T* dloss_per_row,
                            T* dlogits) {
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  check_targets("cross_entropy_backward", N, V, targets, ignore_index);
  // Note [Renormalised cross-entropy backward]: one row of exp(x - lse) per
  // thread, divided by its own sum, so the rounding of lse to T cancels.
  std::vector<T> scratch(std::size_t(tg::num_threads()) * std::size_t(V));
  for_rows(N, V, [&](int64_t i) {
    const int64_t t = targets[i];
    if (t == ignore_index) return;
    const T* xr = logits + i * V;
    T* dxr = dlogits + i * V;
    T* e = scratch.data() + std::size_t(omp_get_thread_num()) * std::size_t(V);
    const double s = exp_sum(xr, V, lse[i], e);  // e = exp(x - lse), s = Σ e ≈ 1
    const B inv(T(1.0 / s)), g(dloss_per_row[i]);
    // g (p - onehot) for every element; the block holding the target takes
    // its one-hot in a buffer, so p - 1 is formed before scaling by g.
    const int64_t tb = t / W * W;
    int64_t j = 0;
    for (; j + W <= V; j += W) {
      B p = B::load_unaligned(e + j) * inv;
      if (j == tb) {
        alignas(64) T buf[W];
        p.store_aligned(buf);
        buf[t - j] -= T(1);
        p = B::load_aligned(buf);
      }
      (B::load_unaligned(dxr + j) + g * p).store_unaligned(dxr + j);
    }
    const int64_t k = V - j;
    if (k > 0) {
      alignas(64) T buf[W], acc[W];
      for (int64_t l = 0; l < W; ++l) {
        buf[l] = l < k ? e[j + l] : T(0);
        acc[l] = l < k ? dxr[j + l] : T(0);
      }
      B p = B::load_aligned(buf) * inv;
      p.store_aligned(buf);
      if (tb == j) buf[t - j] -= T(1);
      (B::load_aligned(acc) + g * B::load_aligned(buf)).store_aligned(acc);
      std::copy_n(acc, k, dxr + j);
    }
  });
}

template <class T>
void cross_entropy_backward_naive(int64_t N, int64_t V, const T* logits, const int64_t* targets,
                                  int64_t ignore_index, const T* lse, const T* dloss_per_row,
                                  T* dlogits) {
  // The textbook form: softmax from scratch (lse is not needed here).
  check_targets("cross_entropy_backward_naive", N, V, targets, ignore_index);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = targets[i];
    if (t == ignore_index) continue;
    const T* xr = logits + i * V;
    T* dxr = dlogits + i * V;
    const T m = naive_max(xr, V);
    double s = 0.0;
    for (int64_t j = 0; j < V; ++j) s += double(std::exp(xr[j] - m));
    for (int64_t j = 0; j < V; ++j) {
      const T p = T(double(std::exp(xr[j] - m)) / s);
      dxr[j] += dloss_per_row[i] * (p - (j == t ? T(1) : T(0)));
    }
  }
}

// ============================================================================
// explicit instantiation
// ============================================================================

#define TG_SOFTMAX_INSTANTIATE(T)                                                               \
  template void softmax_forward<T>(int64_t, int64_t, const T*, T*);                             \
  template void softmax_forward_naive<T>(int64_t, int64_t, const T*, T*);                       \
  template void softmax_backward<T>(int64_t, int64_t, const T*, const T*, T*);                  \
  template void softmax_backward_naive<T>(int64_t, int64_t, const T*, const T*, T*);            \
  template void log_softmax_forward<T>(int64_t, int64_t, const T*, T*);                         \
  template void log_softmax_forward_naive<T>(int64_t, int64_t, const T*, T*);                   \
  template void log_softmax_backward<T>(int64_t, int64_t, const T*, const T*, T*);              \
  template void log_softmax_backward_naive<T>(int64_t, int64_t, const T*, const T*, T*);        \
  template int64_t cross_entropy_forward<T>(int64_t, int64_t, const T*, const int64_t*, int64_t, \
                                            T*, T*);                                            \
  template int64_t cross_entropy_forward_naive<T>(int64_t, int64_t, const T*, const int64_t*,   \
                                                  int64_t, T*, T*);                             \
  template void cross_entropy_backward<T>(int64_t, int64_t, const T*, const int64_t*, int64_t,  \
                                          const T*, const T*, T*);                              \
  template void cross_entropy_backward_naive<T>(int64_t, int64_t, const T*, const int64_t*,     \
                                                int64_t, const T*, const T*, T*);

TG_SOFTMAX_INSTANTIATE(float)
TG_SOFTMAX_INSTANTIATE(double)

#undef TG_SOFTMAX_INSTANTIATE

}  // namespace tg::kernels
