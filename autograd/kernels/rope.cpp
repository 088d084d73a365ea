// autograd/kernels/rope.cpp — RoPE kernels and tables; see rope.hpp for the formulas.
#include "autograd/kernels/rope.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>


#include "autograd/kernels/simd.hpp"

namespace tg::kernels {

namespace {

// Inputs with fewer elements than this stay on one thread.
constexpr int64_t kParallelMin = int64_t(1) << 15;

int threads_for(int64_t work, int64_t max_chunks) { return simd::threads_for(work, max_chunks, kParallelMin); }

std::string fail(const char* kernel, const std::string& what) {
  return std::string(kernel) + ": " + what;
}

// Checks shared by forward and backward; in/out are the row-major input and output.
void check_rope(const char* K, int64_t n_rows, int64_t D, const void* in, int64_t in_stride,
                const int64_t* pos, const void* cos, const void* sin, const void* out,
                int64_t out_stride, const char* in_name, const char* out_name) {
  const std::string sz = "n_rows=" + std::to_string(n_rows) + ", D=" + std::to_string(D);
  if (n_rows < 0) throw std::invalid_argument(fail(K, "n_rows must be >= 0 (" + sz + ")"));
  if (D <= 0 || D % 2 != 0)
    throw std::invalid_argument(fail(K, "D must be even and > 0 (" + sz + ")"));
  if (n_rows == 0) return;
  if (in_stride < D || out_stride < D)
    throw std::invalid_argument(fail(K, std::string("row strides must be >= D (") + sz + ", " +
                                            in_name + "_row_stride=" + std::to_string(in_stride) +
                                            ", " + out_name +
                                            "_row_stride=" + std::to_string(out_stride) + ")"));
  if (!in || !pos || !cos || !sin || !out)
    throw std::invalid_argument(fail(K, std::string("a buffer is nullptr (") + in_name + ", pos, cos, sin, " +
                                            out_name + "; " + sz + ")"));
  for (int64_t r = 0; r < n_rows; ++r)
    if (pos[r] < 0)
      throw std::invalid_argument(fail(K, "pos[" + std::to_string(r) +
                                              "] = " + std::to_string(pos[r]) +
                                              " is negative (" + sz + ")"));
}

}  // namespace

// ======================================================================================
// forward
// ======================================================================================

template <class T>
void rope_forward(int64_t n_rows, int64_t D, const T* x, int64_t x_row_stride,
                  const int64_t* pos, const T* cos, const T* sin, T* y, int64_t y_row_stride) {
  check_rope("rope_forward", n_rows, D, x, x_row_stride, pos, cos, sin, y, y_row_stride, "x",
             "y");
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  const int64_t h = D / 2;
  const int nt = threads_for(n_rows * D, n_rows);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t r = 0; r < n_rows; ++r) {
    const T* x1 = x + r * x_row_stride;  // (h) first half
    const T* x2 = x1 + h;                // (h) second half
    T* y1 = y + r * y_row_stride;
    T* y2 = y1 + h;
    const T* c = cos + pos[r] * D;  // (D)
    const T* s = sin + pos[r] * D;  // (D)
    int64_t i = 0;
    // Both halves are loaded before either is stored, so y == x is safe.
    for (; i + W <= h; i += W) {
      const B a = B::load_unaligned(x1 + i), b = B::load_unaligned(x2 + i);
      const B ya = xsimd::fnma(b, B::load_unaligned(s + i), a * B::load_unaligned(c + i));
      const B yb = xsimd::fma(a, B::load_unaligned(s + h + i), b * B::load_unaligned(c + h + i));
      ya.store_unaligned(y1 + i);
      yb.store_unaligned(y2 + i);
    }
    for (; i < h; ++i) {
      const T a = x1[i], b = x2[i];
      y1[i] = a * c[i] - b * s[i];
      y2[i] = b * c[h + i] + a * s[h + i];
    }
  }
}

template <class T>
void rope_forward_naive(int64_t n_rows, int64_t D, const T* x, int64_t x_row_stride,
                        const int64_t* pos, const T* cos, const T* sin, T* y,
                        int64_t y_row_stride) {
  check_rope("rope_forward_naive", n_rows, D, x, x_row_stride, pos, cos, sin, y, y_row_stride,
             "x", "y");
  const int64_t h = D / 2;
  for (int64_t r = 0; r < n_rows; ++r) {
    const T* xr = x + r * x_row_stride;
    T* yr = y + r * y_row_stride;
    const T* c = cos + pos[r] * D;
    const T* s = sin + pos[r] * D;
    for (int64_t i = 0; i < h; ++i) {
      const T a = xr[i], b = xr[i + h];
      yr[i] = a * c[i] - b * s[i];
      yr[i + h] = b * c[i + h] + a * s[i + h];
    }
  }
}

// ======================================================================================
// backward
// ======================================================================================

template <class T>
void rope_backward(int64_t n_rows, int64_t D, const T* dy, int64_t dy_row_stride,
                   const int64_t* pos, const T* cos, const T* sin, T* dx,
                   int64_t dx_row_stride) {
  check_rope("rope_backward", n_rows, D, dy, dy_row_stride, pos, cos, sin, dx, dx_row_stride,
             "dy", "dx");
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  const int64_t h = D / 2;
  const int nt = threads_for(n_rows * D, n_rows);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t r = 0; r < n_rows; ++r) {
    const T* g1 = dy + r * dy_row_stride;  // (h)
    const T* g2 = g1 + h;                  // (h)
    T* d1 = dx + r * dx_row_stride;
    T* d2 = d1 + h;
    const T* c = cos + pos[r] * D;
    const T* s = sin + pos[r] * D;
    int64_t i = 0;
    for (; i + W <= h; i += W) {
      const B a = B::load_unaligned(g1 + i), b = B::load_unaligned(g2 + i);
      B da = xsimd::fma(a, B::load_unaligned(c + i), B::load_unaligned(d1 + i));
      da = xsimd::fma(b, B::load_unaligned(s + h + i), da);
      B db = xsimd::fma(b, B::load_unaligned(c + h + i), B::load_unaligned(d2 + i));
      db = xsimd::fnma(a, B::load_unaligned(s + i), db);
      da.store_unaligned(d1 + i);
      db.store_unaligned(d2 + i);
    }
    for (; i < h; ++i) {
      const T a = g1[i], b = g2[i];
      d1[i] += a * c[i] + b * s[h + i];
      d2[i] += b * c[h + i] - a * s[i];
    }
  }
}

template <class T>
void rope_backward_naive(int64_t n_rows, int64_t D, const T* dy, int64_t dy_row_stride,
                         const int64_t* pos, const T* cos, const T* sin, T* dx,
                         int64_t dx_row_stride) {
  check_rope("rope_backward_naive", n_rows, D, dy, dy_row_stride, pos, cos, sin, dx,
             dx_row_stride, "dy", "dx");
  const int64_t h = D / 2;
  for (int64_t r = 0; r < n_rows; ++r) {
    const T* g = dy + r * dy_row_stride;
    T* d = dx + r * dx_row_stride;
    const T* c = cos + pos[r] * D;
    const T* s = sin + pos[r] * D;
    for (int64_t i = 0; i < h; ++i) {
      d[i] += g[i] * c[i] + g[i + h] * s[i + h];
      d[i + h] += g[i + h] * c[i + h] - g[i] * s[i];
    }
  }
}

// ======================================================================================
// tables
// ======================================================================================

namespace {
template <class T>
void check_tables(const char* K, int64_t P, int64_t D, double theta, const double* inv_freq, T* cos,
                  T* sin) {
  const std::string sz = "P=" + std::to_string(P) + ", D=" + std::to_string(D);
  if (P < 0) throw std::invalid_argument(fail(K, "P must be >= 0 (" + sz + ")"));
  if (D <= 0 || D % 2 != 0)
    throw std::invalid_argument(fail(K, "D must be even and > 0 (" + sz + ")"));
  if (!inv_freq && !(theta > 0))
    throw std::invalid_argument(
        fail(K, "theta must be > 0, got " + std::to_string(theta) + " (" + sz + ")"));
  if (P > 0 && (!cos || !sin)) throw std::invalid_argument(fail(K, "cos or sin is nullptr (" + sz + ")"));
}

// The D/2 inverse frequencies, in double.
std::vector<double> inverse_frequencies(int64_t D, double theta, const double* inv_freq) {
  const int64_t h = D / 2;
  std::vector<double> f(static_cast<size_t>(h));
  for (int64_t i = 0; i < h; ++i)
    f[size_t(i)] = inv_freq ? double(inv_freq[i])
                            : 1.0 / std::pow(theta, double(2 * i) / double(D));
  return f;
}
}  // namespace

template <class T>
void rope_tables(int64_t P, int64_t D, double theta, const double* inv_freq, double attention_scale,
                 T* cos, T* sin) {
  check_tables("rope_tables", P, D, theta, inv_freq, cos, sin);
  const int64_t h = D / 2;
  const std::vector<double> f = inverse_frequencies(D, theta, inv_freq);
  const double scale = double(attention_scale);
  // cos and sin cost ~20 ns each: parallel from a much smaller size than the row kernels.
  const int nt = (P * h >= 4096) ? int(std::min<int64_t>(tg::num_threads(), P)) : 1;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t p = 0; p < P; ++p) {
    T* c = cos + p * D;  // (D)
    T* s = sin + p * D;  // (D)
    for (int64_t i = 0; i < h; ++i) {
      const double angle = double(p) * f[size_t(i)];
      c[i] = c[i + h] = T(std::cos(angle) * scale);
      s[i] = s[i + h] = T(std::sin(angle) * scale);
    }
  }
}

template <class T>
void rope_tables_naive(int64_t P, int64_t D, double theta, const double* inv_freq, double attention_scale,
                       T* cos, T* sin) {
  check_tables("rope_tables_naive", P, D, theta, inv_freq, cos, sin);
  const int64_t h = D / 2;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t j = 0; j < D; ++j) {
      const int64_t i = j % h;
      const double f = inv_freq ? double(inv_freq[i])
                                : 1.0 / std::pow(theta, double(2 * i) / double(D));
      cos[p * D + j] = T(std::cos(double(p) * f) * double(attention_scale));
      sin[p * D + j] = T(std::sin(double(p) * f) * double(attention_scale));
    }
}

// ---- explicit instantiations ---------------------------------------------------------
#define TG_INSTANTIATE_ROPE(T)                                                                 \
  template void rope_forward<T>(int64_t, int64_t, const T*, int64_t, const int64_t*, const T*, \
                                const T*, T*, int64_t);                                        \
  template void rope_forward_naive<T>(int64_t, int64_t, const T*, int64_t, const int64_t*,     \
                                      const T*, const T*, T*, int64_t);                        \
  template void rope_backward<T>(int64_t, int64_t, const T*, int64_t, const int64_t*,          \
                                 const T*, const T*, T*, int64_t);                             \
  template void rope_backward_naive<T>(int64_t, int64_t, const T*, int64_t, const int64_t*,    \
                                       const T*, const T*, T*, int64_t);                       \
  template void rope_tables<T>(int64_t, int64_t, double, const double*, double, T*, T*);       \
  template void rope_tables_naive<T>(int64_t, int64_t, double, const double*, double, T*, T*);

TG_INSTANTIATE_ROPE(float)
TG_INSTANTIATE_ROPE(double)
#undef TG_INSTANTIATE_ROPE

}  // namespace tg::kernels
