// optim/clip.cpp — global-norm gradient clipping; see clip.hpp for the formula.
//
// The two loops here (a sum of squares in double and an in-place scale) are short enough
// to live beside their only caller; both split the data into fixed blocks of kBlock
// elements, so the result is the same for every thread count.
#include "optim/clip.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/kernels/parallel.hpp"

namespace tg::optim {

namespace {

constexpr std::int64_t kBlock = 1 << 14;  // elements per partial sum / OpenMP work item

// sum of x[i]^2 over [0, n), in double, four interleaved accumulators combined in order.
template <class T>
double sumsq_serial(const T* x, std::int64_t n) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const double x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
    a0 += x0 * x0;
    a1 += x1 * x1;
    a2 += x2 * x2;
    a3 += x3 * x3;
  }
  for (; i < n; ++i) a0 += double(x[i]) * double(x[i]);
  return (a0 + a1) + (a2 + a3);
}

// sum of x^2 over (n): per-block partial sums (in parallel when large), added in order.
template <class T>
double sumsq(const T* x, std::int64_t n) {
  const std::int64_t nb = (n + kBlock - 1) / kBlock;
  if (nb <= 1) return sumsq_serial(x, n);
  std::vector<double> part(std::size_t(nb), 0.0);
  const int nt = int(std::min<std::int64_t>(tg::num_threads(), nb));
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t b = 0; b < nb; ++b) {
    const std::int64_t i0 = b * kBlock;
    part[std::size_t(b)] = sumsq_serial(x + i0, std::min(n, i0 + kBlock) - i0);
  }
  double s = 0;
  for (double p : part) s += p;
  return s;
}

// x *= s over (n).
template <class T>
void scale_inplace(T* x, std::int64_t n, T s) {
  const std::int64_t nb = (n + kBlock - 1) / kBlock;
  const int nt = int(std::max<std::int64_t>(1, std::min<std::int64_t>(tg::num_threads(), nb)));
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (std::int64_t b = 0; b < nb; ++b) {
    const std::int64_t i1 = std::min(n, (b + 1) * kBlock);
    for (std::int64_t i = b * kBlock; i < i1; ++i) x[i] *= s;
  }
}

}  // namespace

template <class T>
double grad_norm(const std::vector<Tensor<T>>& params) {
  double total = 0;
  for (const auto& p : params)
    if (p.defined() && p.has_grad()) total += sumsq(p.grad().data(), std::int64_t(p.grad().size()));
  return std::sqrt(total);
}

template <class T>
double clip_grad_norm(const std::vector<Tensor<T>>& params, double max_norm, bool error_if_nonfinite) {
  if (!(max_norm > 0.0) || !std::isfinite(max_norm))
    throw std::invalid_argument("clip_grad_norm: max_norm must be finite and > 0, got " + std::to_string(max_norm));
  const double norm = grad_norm(params);
  if (!std::isfinite(norm)) {
    if (error_if_nonfinite)
      throw std::runtime_error("clip_grad_norm: the total gradient norm is " + std::to_string(norm) +
                               " (a NaN or Inf in the gradients), so it cannot be clipped");
    return norm;
  }
  const double scale = max_norm / (norm + 1e-6);
  if (scale < 1.0)
    for (const auto& p : params)
      if (p.defined() && p.has_grad()) {
        Tensor<T> h = p;  // a handle to the same gradient, which is scaled in place
        auto& g = h.mutable_grad();
        scale_inplace(g.data(), std::int64_t(g.size()), T(scale));
      }
  return norm;
}

template double grad_norm<float>(const std::vector<Tensor<float>>&);
template double grad_norm<double>(const std::vector<Tensor<double>>&);
template double clip_grad_norm<float>(const std::vector<Tensor<float>>&, double, bool);
template double clip_grad_norm<double>(const std::vector<Tensor<double>>&, double, bool);

}  // namespace tg::optim
