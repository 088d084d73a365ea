// autograd/kernels/binary.cpp — the binary maps z = x op y on equal-length arrays and their backward; see elementwise.hpp.
//
// Each public kernel is followed by its naive twin. Every fast kernel computes each
// element with exactly one vector function, whether the element sits in the body or in
// the tail (vmap copies the tail into a padded vector), so elementwise results do not
// depend on the array length, the alignment or the thread count.
#include "autograd/kernels/elementwise.hpp"

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

using namespace simd;

namespace {

// Arrays shorter than this stay on the calling thread: below it OpenMP's fork/join
// costs more than the (memory-bound) loop.
constexpr int64_t kGrainSimple = int64_t(1) << 16;

}  // namespace

// ============================================================================
// binary maps
// ============================================================================

const char* binary_name(Binary op) {
  switch (op) {
    case Binary::Add: return "add";
    case Binary::Sub: return "sub";
    case Binary::Mul: return "mul";
    case Binary::Div: return "div";
  }
  return "?";
}

template <class T>
void binary_forward(Binary op, int64_t n, const T* x, const T* y, T* z) {
  using V = xsimd::batch<T>;
  check_n("binary_forward", n);
  const int64_t g = kGrainSimple;
  switch (op) {
    case Binary::Add: vmap(n, g, [](V a, V b) { return a + b; }, z, x, y); break;
    case Binary::Sub: vmap(n, g, [](V a, V b) { return a - b; }, z, x, y); break;
    case Binary::Mul: vmap(n, g, [](V a, V b) { return a * b; }, z, x, y); break;
    case Binary::Div: vmap(n, g, [](V a, V b) { return a / b; }, z, x, y); break;
  }
}

template <class T>
void binary_forward_naive(Binary op, int64_t n, const T* x, const T* y, T* z) {
  check_n("binary_forward_naive", n);
  switch (op) {
    case Binary::Add: each(n, [&](int64_t i) { z[i] = x[i] + y[i]; }); break;
    case Binary::Sub: each(n, [&](int64_t i) { z[i] = x[i] - y[i]; }); break;
    case Binary::Mul: each(n, [&](int64_t i) { z[i] = x[i] * y[i]; }); break;
    case Binary::Div: each(n, [&](int64_t i) { z[i] = x[i] / y[i]; }); break;
  }
}
namespace {
template <class T>
void check_binary_backward(const char* kernel, Binary op, int64_t n, const T* x, const T* y,
                           const T* dz, T* dx, T* dy) {
  check_n(kernel, n);
  if (n == 0 || (!dx && !dy)) return;
  const bool mul_div = op == Binary::Mul || op == Binary::Div;
  const bool need_x = mul_div && dy;
  const bool need_y = (op == Binary::Mul && dx) || (op == Binary::Div);
  if (!dz || (need_x && !x) || (need_y && !y))
    throw std::invalid_argument(std::string(kernel) + "(" + binary_name(op) + ", n = " +
                                std::to_string(n) + "): a needed input array is null");
}
}  // namespace

template <class T>
void binary_backward(Binary op, int64_t n, const T* x, const T* y, const T* dz, T* dx, T* dy) {
  using V = xsimd::batch<T>;
  check_binary_backward("binary_backward", op, n, x, y, dz, dx, dy);
  if (n == 0) return;
  const int64_t g = kGrainSimple;
  // Each output is its own pass, so each loop owns its writes.
  switch (op) {
    case Binary::Add:
      if (dx) vmap(n, g, [](V d, V acc) { return acc + d; }, dx, dz, dx);
      if (dy) vmap(n, g, [](V d, V acc) { return acc + d; }, dy, dz, dy);
      break;
    case Binary::Sub:
      if (dx) vmap(n, g, [](V d, V acc) { return acc + d; }, dx, dz, dx);
      if (dy) vmap(n, g, [](V d, V acc) { return acc - d; }, dy, dz, dy);
      break;
    case Binary::Mul:
      if (dx) vmap(n, g, [](V yv, V d, V acc) { return acc + d * yv; }, dx, y, dz, dx);
      if (dy) vmap(n, g, [](V xv, V d, V acc) { return acc + d * xv; }, dy, x, dz, dy);
      break;
    case Binary::Div:
      if (dx) vmap(n, g, [](V yv, V d, V acc) { return acc + d / yv; }, dx, y, dz, dx);
      if (dy)
        vmap(n, g, [](V xv, V yv, V d, V acc) { return acc - (d / yv) * xv / yv; }, dy, x, y, dz,
             dy);
      break;
  }
}

template <class T>
void binary_backward_naive(Binary op, int64_t n, const T* x, const T* y, const T* dz, T* dx,
                           T* dy) {
  check_binary_backward("binary_backward_naive", op, n, x, y, dz, dx, dy);
  if (n == 0) return;
  switch (op) {
    case Binary::Add:
      if (dx) each(n, [&](int64_t i) { dx[i] += dz[i]; });
      if (dy) each(n, [&](int64_t i) { dy[i] += dz[i]; });
      break;
    case Binary::Sub:
      if (dx) each(n, [&](int64_t i) { dx[i] += dz[i]; });
      if (dy) each(n, [&](int64_t i) { dy[i] -= dz[i]; });
      break;
    case Binary::Mul:
      if (dx) each(n, [&](int64_t i) { dx[i] += dz[i] * y[i]; });
      if (dy) each(n, [&](int64_t i) { dy[i] += dz[i] * x[i]; });
      break;
    case Binary::Div:
      if (dx) each(n, [&](int64_t i) { dx[i] += dz[i] / y[i]; });
      if (dy) each(n, [&](int64_t i) { dy[i] -= (dz[i] / y[i]) * x[i] / y[i]; });
      break;
  }
}

// ---- explicit instantiation ----

#define TG_INSTANTIATE(T) \
  template void binary_forward<T>(Binary, int64_t, const T*, const T*, T*); \
  template void binary_forward_naive<T>(Binary, int64_t, const T*, const T*, T*); \
  template void binary_backward<T>(Binary, int64_t, const T*, const T*, const T*, T*, T*); \
  template void binary_backward_naive<T>(Binary, int64_t, const T*, const T*, const T*, T*, T*);

TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels
