// autograd/kernels/norm.cpp — RMSNorm and LayerNorm kernels; see norm.hpp for the formulas.
//
// Layout of each kernel: argument checks, then a loop over rows (OpenMP when the input is
// big enough), and inside a row xsimd loops along C with a scalar tail. The naive twins
// below each fast kernel are the same formulas as plain scalar loops.
#include "autograd/kernels/norm.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>


#include "autograd/kernels/simd.hpp"

namespace tg::kernels {

namespace {

// Inputs with fewer elements than this stay on one thread: starting a parallel region
// costs a few microseconds, as much as normalising ~30k elements.
constexpr int64_t kParallelMin = int64_t(1) << 15;

// Threads to use for `work` elements split into at most `max_chunks` pieces.
int threads_for(int64_t work, int64_t max_chunks) { return simd::threads_for(work, max_chunks, kParallelMin); }

std::string sizes(int64_t rows, int64_t C) {
  return "rows=" + std::to_string(rows) + ", C=" + std::to_string(C);
}

void check_sizes(const char* kernel, int64_t rows, int64_t C) {
  if (rows < 0 || C < 0)
    throw std::invalid_argument(std::string(kernel) + ": sizes must be >= 0, got " +
                                sizes(rows, C));
}

void check_ptr(const char* kernel, const void* p, const char* name, int64_t rows, int64_t C) {
  if (p == nullptr)
    throw std::invalid_argument(std::string(kernel) + ": " + name + " is nullptr (" +
                                sizes(rows, C) + ")");
}

// Horizontal sum of a vector, lanes added in order. (Written out instead of
// xsimd::hadd, whose AVX-512 double version trips GCC 12's -Wuninitialized inside
// the intrinsics headers.)
template <class T, class A>
T hsum(const xsimd::batch<T, A>& v) {
  alignas(64) T lanes[xsimd::batch<T, A>::size];
  v.store_aligned(lanes);
  T s = lanes[0];
  for (std::size_t i = 1; i < xsimd::batch<T, A>::size; ++i) s += lanes[i];
  return s;
}

// sum_i a_i * b_i, two vector accumulators then a scalar tail.
template <class T>
T dot(const T* a, const T* b, int64_t n) {
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  B acc0(T(0)), acc1(T(0));
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    acc0 = xsimd::fma(B::load_unaligned(a + i), B::load_unaligned(b + i), acc0);
    acc1 = xsimd::fma(B::load_unaligned(a + i + W), B::load_unaligned(b + i + W), acc1);
  }
  for (; i + W <= n; i += W)
    acc0 = xsimd::fma(B::load_unaligned(a + i), B::load_unaligned(b + i), acc0);
  T s = hsum(acc0 + acc1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// sum_i a_i * b_i * c_i
template <class T>
T dot3(const T* a, const T* b, const T* c, int64_t n) {
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  B acc0(T(0)), acc1(T(0));
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    acc0 = xsimd::fma(B::load_unaligned(a + i) * B::load_unaligned(b + i),
                      B::load_unaligned(c + i), acc0);
    acc1 = xsimd::fma(B::load_unaligned(a + i + W) * B::load_unaligned(b + i + W),
                      B::load_unaligned(c + i + W), acc1);
  }
  for (; i + W <= n; i += W)
    acc0 = xsimd::fma(B::load_unaligned(a + i) * B::load_unaligned(b + i),
                      B::load_unaligned(c + i), acc0);
  T s = hsum(acc0 + acc1);
  for (; i < n; ++i) s += a[i] * b[i] * c[i];
  return s;
}

// sum_i x_i
template <class T>
T sum(const T* x, int64_t n) {
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  B acc0(T(0)), acc1(T(0));
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    acc0 += B::load_unaligned(x + i);
    acc1 += B::load_unaligned(x + i + W);
  }
  for (; i + W <= n; i += W) acc0 += B::load_unaligned(x + i);
  T s = hsum(acc0 + acc1);
  for (; i < n; ++i) s += x[i];
  return s;
}

// sum_i (x_i - m)^2
template <class T>
T sum_sq_dev(const T* x, T m, int64_t n) {
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  const B mv(m);
  B acc0(T(0)), acc1(T(0));
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    B d0 = B::load_unaligned(x + i) - mv;
    B d1 = B::load_unaligned(x + i + W) - mv;
    acc0 = xsimd::fma(d0, d0, acc0);
    acc1 = xsimd::fma(d1, d1, acc1);
  }
  for (; i + W <= n; i += W) {
    B d = B::load_unaligned(x + i) - mv;
    acc0 = xsimd::fma(d, d, acc0);
  }
  T s = hsum(acc0 + acc1);
  for (; i < n; ++i) s += (x[i] - m) * (x[i] - m);
  return s;
}

// dst[c] += sum_t part[t*C + c], t = 0..nt-1 in order (the fixed-order combine of the
// per-thread partials of a reduction over rows).
template <class T>
void combine_partials(int64_t C, int nt, const std::vector<T>& part, T* dst) {
  for (int64_t c = 0; c < C; ++c) {
    T s = part[size_t(c)];
    for (int t = 1; t < nt; ++t) s += part[size_t(t) * size_t(C) + size_t(c)];
    dst[c] += s;
  }
}

}  // namespace

// ======================================================================================
// RMSNorm forward
// ======================================================================================

namespace {
// The checks of both norms' forward.
template <class T>
void check_norm_forward(const char* K, int64_t rows, int64_t C, const T* x, T eps, T* y) {
  check_sizes(K, rows, C);
  if (rows == 0) return;
  if (C == 0) throw std::invalid_argument(std::string(K) + ": C must be > 0, got " + sizes(rows, C));
  check_ptr(K, x, "x", rows, C);
  check_ptr(K, y, "y", rows, C);
  if (!(eps >= T(0)))
    throw std::invalid_argument(std::string(K) + ": eps must be >= 0 (" + sizes(rows, C) + ")");
}
}  // namespace

template <class T>
void rmsnorm_forward(int64_t rows, int64_t C, const T* x, const T* w, T eps, T* y, T* rstd) {
  check_norm_forward("rmsnorm_forward", rows, C, x, eps, y);
  if (rows == 0) return;

  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  const int nt = threads_for(rows * C, rows);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t r = 0; r < rows; ++r) {  // a plain loop, not a lambda: Note [Block bodies as functions] (adamw.cpp)
    const T* xr = x + r * C;  // (C)
    T* yr = y + r * C;        // (C)
    const T rs = T(1) / std::sqrt(dot(xr, xr, C) / T(C) + eps);
    if (rstd) rstd[r] = rs;
    const B rsv(rs);
    int64_t i = 0;
    if (w) {
      for (; i + W <= C; i += W)
        (B::load_unaligned(w + i) * (B::load_unaligned(xr + i) * rsv)).store_unaligned(yr + i);
      for (; i < C; ++i) yr[i] = w[i] * (xr[i] * rs);
    } else {
      for (; i + W <= C; i += W) (B::load_unaligned(xr + i) * rsv).store_unaligned(yr + i);
      for (; i < C; ++i) yr[i] = xr[i] * rs;
    }
  }
}

template <class T>
void rmsnorm_forward_naive(int64_t rows, int64_t C, const T* x, const T* w, T eps, T* y,
                           T* rstd) {
  check_norm_forward("rmsnorm_forward_naive", rows, C, x, eps, y);
  if (rows == 0) return;
  for (int64_t r = 0; r < rows; ++r) {
    T ss = 0;
    for (int64_t i = 0; i < C; ++i) ss += x[r * C + i] * x[r * C + i];
    const T rs = T(1) / std::sqrt(ss / T(C) + eps);
    if (rstd) rstd[r] = rs;
    for (int64_t i = 0; i < C; ++i) {
      const T xhat = x[r * C + i] * rs;
      y[r * C + i] = w ? w[i] * xhat : xhat;
    }
  }
}

// ======================================================================================
// RMSNorm backward
// ======================================================================================

namespace {
// The checks of both norms' backward; mean is RMSNorm's nullptr (it has none) and checked
// only for LayerNorm.
template <class T>
void check_norm_backward(const char* K, int64_t rows, int64_t C, const T* x, const T* w, bool has_mean,
                         const T* mean, const T* rstd, const T* dy, T* dw) {
  check_sizes(K, rows, C);
  if (rows == 0 || C == 0) return;
  check_ptr(K, x, "x", rows, C);
  if (has_mean) check_ptr(K, mean, "mean", rows, C);
  check_ptr(K, rstd, "rstd", rows, C);
  check_ptr(K, dy, "dy", rows, C);
  if (dw && !w)
    throw std::invalid_argument(std::string(K) + ": dw given but w is nullptr (no weight) (" +
                                sizes(rows, C) + ")");
}
}  // namespace

template <class T>
void rmsnorm_backward(int64_t rows, int64_t C, const T* x, const T* w, const T* rstd,
                      const T* dy, T* dx, T* dw) {
  check_norm_backward("rmsnorm_backward", rows, C, x, w, false, static_cast<const T*>(nullptr), rstd, dy, dw);
  if (rows == 0 || C == 0 || (!dx && !dw)) return;

  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  const int nt = threads_for(rows * C, rows);
  // part is (nt, C): thread t's sum over its rows of dy * x * rstd.
  std::vector<T> part(dw ? size_t(nt) * size_t(C) : 0, T(0));

#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int t = 0; t < nt; ++t) {
    const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
    T* pw = dw ? part.data() + size_t(t) * size_t(C) : nullptr;  // (C)
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * C;    // (C)
      const T* dyr = dy + r * C;  // (C)
      const T rs = rstd[r];
      if (dx) {
        T* dxr = dx + r * C;  // (C)
        const T gx = w ? dot3(w, dyr, xr, C) : dot(dyr, xr, C);  // sum_k g_k x_k
        const T a = rs, bcoef = rs * rs * rs * gx / T(C);
        const B av(a), bv(bcoef);
        int64_t i = 0;
        for (; i + W <= C; i += W) {
          B g = B::load_unaligned(dyr + i);
          if (w) g *= B::load_unaligned(w + i);
          B d = xsimd::fma(av, g, B::load_unaligned(dxr + i));
          d = xsimd::fnma(bv, B::load_unaligned(xr + i), d);
          d.store_unaligned(dxr + i);
        }
        for (; i < C; ++i) {
          const T g = w ? w[i] * dyr[i] : dyr[i];
          dxr[i] += a * g - bcoef * xr[i];
        }
      }
      if (pw) {
        const B rsv(rs);
        int64_t i = 0;
        for (; i + W <= C; i += W)
          xsimd::fma(B::load_unaligned(dyr + i), B::load_unaligned(xr + i) * rsv,
                     B::load_unaligned(pw + i))
              .store_unaligned(pw + i);
        for (; i < C; ++i) pw[i] += dyr[i] * (xr[i] * rs);
      }
    }
  }
  if (dw) combine_partials(C, nt, part, dw);
}

template <class T>
void rmsnorm_backward_naive(int64_t rows, int64_t C, const T* x, const T* w, const T* rstd,
                            const T* dy, T* dx, T* dw) {
  check_norm_backward("rmsnorm_backward_naive", rows, C, x, w, false, static_cast<const T*>(nullptr), rstd, dy, dw);
  if (rows == 0 || C == 0) return;
  for (int64_t r = 0; r < rows; ++r) {
    const T rs = rstd[r];
    T gx = 0;
    for (int64_t i = 0; i < C; ++i) {
      const T g = w ? w[i] * dy[r * C + i] : dy[r * C + i];
      gx += g * x[r * C + i];
    }
    for (int64_t i = 0; i < C; ++i) {
      const T g = w ? w[i] * dy[r * C + i] : dy[r * C + i];
      if (dx) dx[r * C + i] += rs * g - rs * rs * rs / T(C) * x[r * C + i] * gx;
      if (dw) dw[i] += dy[r * C + i] * (x[r * C + i] * rs);
    }
  }
}

// ======================================================================================
// LayerNorm forward
// ======================================================================================

template <class T>
void layernorm_forward(int64_t rows, int64_t C, const T* x, const T* w, const T* b, T eps, T* y,
                       T* mean, T* rstd) {
  check_norm_forward("layernorm_forward", rows, C, x, eps, y);
  if (rows == 0) return;

  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  const int nt = threads_for(rows * C, rows);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t r = 0; r < rows; ++r) {  // a plain loop, not a lambda: Note [Block bodies as functions] (adamw.cpp)
    const T* xr = x + r * C;  // (C)
    T* yr = y + r * C;        // (C)
    const T mu = sum(xr, C) / T(C);
    const T rs = T(1) / std::sqrt(sum_sq_dev(xr, mu, C) / T(C) + eps);
    if (mean) mean[r] = mu;
    if (rstd) rstd[r] = rs;
    const B muv(mu), rsv(rs);
    int64_t i = 0;
    for (; i + W <= C; i += W) {
      B v = (B::load_unaligned(xr + i) - muv) * rsv;  // xhat
      if (w && b)
        v = xsimd::fma(v, B::load_unaligned(w + i), B::load_unaligned(b + i));
      else if (w)
        v *= B::load_unaligned(w + i);
      else if (b)
        v += B::load_unaligned(b + i);
      v.store_unaligned(yr + i);
    }
    for (; i < C; ++i) {
      T v = (xr[i] - mu) * rs;
      if (w) v *= w[i];
      if (b) v += b[i];
      yr[i] = v;
    }
  }
}

template <class T>
void layernorm_forward_naive(int64_t rows, int64_t C, const T* x, const T* w, const T* b, T eps,
                             T* y, T* mean, T* rstd) {
  check_norm_forward("layernorm_forward_naive", rows, C, x, eps, y);
  for (int64_t r = 0; r < rows; ++r) {
    T s = 0;
    for (int64_t i = 0; i < C; ++i) s += x[r * C + i];
    const T mu = s / T(C);
    T ss = 0;
    for (int64_t i = 0; i < C; ++i) ss += (x[r * C + i] - mu) * (x[r * C + i] - mu);
    const T rs = T(1) / std::sqrt(ss / T(C) + eps);
    if (mean) mean[r] = mu;
    if (rstd) rstd[r] = rs;
    for (int64_t i = 0; i < C; ++i) {
      const T xhat = (x[r * C + i] - mu) * rs;
      y[r * C + i] = xhat * (w ? w[i] : T(1)) + (b ? b[i] : T(0));
    }
  }
}

// ======================================================================================
// LayerNorm backward
// ======================================================================================

template <class T>
void layernorm_backward(int64_t rows, int64_t C, const T* x, const T* w, const T* mean,
                        const T* rstd, const T* dy, T* dx, T* dw, T* db) {
  check_norm_backward("layernorm_backward", rows, C, x, w, true, mean, rstd, dy, dw);
  if (rows == 0 || C == 0 || (!dx && !dw && !db)) return;

  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  const int nt = threads_for(rows * C, rows);
  // pw, pb are (nt, C): thread t's sums over its rows of dy * xhat and of dy.
  std::vector<T> pw(dw ? size_t(nt) * size_t(C) : 0, T(0));
  std::vector<T> pb(db ? size_t(nt) * size_t(C) : 0, T(0));

#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int t = 0; t < nt; ++t) {
    const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
    T* pwt = dw ? pw.data() + size_t(t) * size_t(C) : nullptr;  // (C)
    T* pbt = db ? pb.data() + size_t(t) * size_t(C) : nullptr;  // (C)
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * C;    // (C)
      const T* dyr = dy + r * C;  // (C)
      const T mu = mean[r], rs = rstd[r];
      const B muv(mu), rsv(rs);
      if (dx) {
        T* dxr = dx + r * C;  // (C)
        // One pass for sum(g) and sum(g * xhat).
        B sg0(T(0)), sgx0(T(0));
        int64_t i = 0;
        for (; i + W <= C; i += W) {
          B g = B::load_unaligned(dyr + i);
          if (w) g *= B::load_unaligned(w + i);
          const B xh = (B::load_unaligned(xr + i) - muv) * rsv;
          sg0 += g;
          sgx0 = xsimd::fma(g, xh, sgx0);
        }
        T sg = hsum(sg0), sgx = hsum(sgx0);
        for (; i < C; ++i) {
          const T g = w ? w[i] * dyr[i] : dyr[i];
          sg += g;
          sgx += g * ((xr[i] - mu) * rs);
        }
        // dx_j += rs * (g_j - mg - xhat_j * mgx). Subtracting inside the bracket, before
        // scaling by rs, keeps the cancellation g_j - mg at the scale of g, not of rs*g.
        const T mg = sg / T(C), mgx = sgx / T(C);
        const B mgv(mg), mgxv(mgx);
        i = 0;
        for (; i + W <= C; i += W) {
          B g = B::load_unaligned(dyr + i);
          if (w) g *= B::load_unaligned(w + i);
          const B xh = (B::load_unaligned(xr + i) - muv) * rsv;
          const B t = xsimd::fnma(xh, mgxv, g - mgv);
          xsimd::fma(rsv, t, B::load_unaligned(dxr + i)).store_unaligned(dxr + i);
        }
        for (; i < C; ++i) {
          const T g = w ? w[i] * dyr[i] : dyr[i];
          dxr[i] += rs * (g - mg - ((xr[i] - mu) * rs) * mgx);
        }
      }
      if (pwt || pbt) {
        int64_t i = 0;
        for (; i + W <= C; i += W) {
          const B d = B::load_unaligned(dyr + i);
          if (pwt) {
            const B xh = (B::load_unaligned(xr + i) - muv) * rsv;
            xsimd::fma(d, xh, B::load_unaligned(pwt + i)).store_unaligned(pwt + i);
          }
          if (pbt) (B::load_unaligned(pbt + i) + d).store_unaligned(pbt + i);
        }
        for (; i < C; ++i) {
          if (pwt) pwt[i] += dyr[i] * ((xr[i] - mu) * rs);
          if (pbt) pbt[i] += dyr[i];
        }
      }
    }
  }
  if (dw) combine_partials(C, nt, pw, dw);
  if (db) combine_partials(C, nt, pb, db);
}

template <class T>
void layernorm_backward_naive(int64_t rows, int64_t C, const T* x, const T* w, const T* mean,
                              const T* rstd, const T* dy, T* dx, T* dw, T* db) {
  check_norm_backward("layernorm_backward_naive", rows, C, x, w, true, mean, rstd, dy, dw);
  if (rows == 0 || C == 0) return;
  for (int64_t r = 0; r < rows; ++r) {
    const T mu = mean[r], rs = rstd[r];
    T sg = 0, sgx = 0;
    for (int64_t i = 0; i < C; ++i) {
      const T g = w ? w[i] * dy[r * C + i] : dy[r * C + i];
      sg += g;
      sgx += g * ((x[r * C + i] - mu) * rs);
    }
    for (int64_t i = 0; i < C; ++i) {
      const T g = w ? w[i] * dy[r * C + i] : dy[r * C + i];
      const T xhat = (x[r * C + i] - mu) * rs;
      if (dx) dx[r * C + i] += rs * (g - sg / T(C) - xhat * (sgx / T(C)));
      if (dw) dw[i] += dy[r * C + i] * xhat;
      if (db) db[i] += dy[r * C + i];
    }
  }
}

// ---- explicit instantiations ---------------------------------------------------------
#define TG_INSTANTIATE_NORM(T)                                                                 \
  template void rmsnorm_forward<T>(int64_t, int64_t, const T*, const T*, T, T*, T*);          \
  template void rmsnorm_forward_naive<T>(int64_t, int64_t, const T*, const T*, T, T*, T*);    \
  template void rmsnorm_backward<T>(int64_t, int64_t, const T*, const T*, const T*, const T*, \
                                    T*, T*);                                                   \
  template void rmsnorm_backward_naive<T>(int64_t, int64_t, const T*, const T*, const T*,     \
                                          const T*, T*, T*);                                   \
  template void layernorm_forward<T>(int64_t, int64_t, const T*, const T*, const T*, T, T*,   \
                                     T*, T*);                                                  \
  template void layernorm_forward_naive<T>(int64_t, int64_t, const T*, const T*, const T*, T, \
                                           T*, T*, T*);                                        \
  template void layernorm_backward<T>(int64_t, int64_t, const T*, const T*, const T*,         \
                                      const T*, const T*, T*, T*, T*);                         \
  template void layernorm_backward_naive<T>(int64_t, int64_t, const T*, const T*, const T*,   \
                                            const T*, const T*, T*, T*, T*);

TG_INSTANTIATE_NORM(float)
TG_INSTANTIATE_NORM(double)
#undef TG_INSTANTIATE_NORM

}  // namespace tg::kernels
