// autograd/kernels/unary.cpp — the unary maps (exp, log, sqrt, ..., the gelus) and their backward; see elementwise.hpp.
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

// Arrays shorter than these stay on the calling thread: below them OpenMP's
// fork/join costs more than the loop. Transcendental maps are ~10x dearer
// per element than the memory-bound ones, hence the two thresholds.
constexpr int64_t kGrainMath = int64_t(1) << 14;
constexpr int64_t kGrainSimple = int64_t(1) << 16;

// ---- constants shared by the fast and the naive kernels ----

constexpr double kSqrt2OverPi = 0.79788456080286535587989211986876;  // √(2/π)
constexpr double kGeluC = 0.044715;
constexpr double kGeluClamp = 1e4;                                     // Note [Stable gelu]
constexpr double kSqrt1_2 = 0.70710678118654752440084436210485;       // 1/√2
constexpr double kInvSqrt2Pi = 0.39894228040143267793994605993438;    // 1/√(2π)

// ---- vector erfc (Note [Vector erfc]) ----

// G(t) = erfcx(z) (z + 2), t = (z - 2)/(z + 2): monomial coefficients in t,
// lowest degree first, from the Chebyshev interpolant (mpmath, 60 digits).
constexpr double kErfcG_double[] = {
    1.02158270524202297513,     -0.687160684413810597723,   0.279472092556054984054,
    -0.0364422315068777639482,  -0.0215106618895108216188,  0.00647918506767227846385,
    0.0030906120601144902338,   -0.000837296060749871925791, -0.00066307352194255901598,
    0.0000343714109149792704908, 0.000144470914857875914563, 0.0000341491171371999626639,
    -0.0000216972215249628927297, -0.0000161221305623419653546, -0.00000112174068486469062192,
    0.0000036481743337201174512, 0.00000199230005220477918131, -8.73598960246800375533e-9,
    -5.54640157145419274946e-7, -3.05849306816127694446e-7,  -2.33172171863921670201e-8,
    8.78041277634382456342e-8,  7.46414128697626149932e-8,   8.95140598120651554893e-9,
    -2.84881230243343219329e-8, -1.37196576365500460908e-8,  5.28988832636706536863e-9,
    4.14323556216086080696e-9,  -4.11365018170048289775e-10, -4.77994710515129246502e-10};
constexpr float kErfcG_float[] = {
    1.02158270552244715569f,    -0.687160665940192725915f,  0.279472065323773130658f,
    -0.0364427684915142132133f, -0.0215102323055092804211f, 0.00648370979073500840989f,
    0.0030880953661785011721f,  -0.000854040301524499840078f, -0.000656200295970283062771f,
    0.0000659030785403706523538f, 0.000135375613794690369516f, 0.00000265479103535238400736f,
    -0.000017017739800638252254f};

template <class T>
struct ErfcTable;
template <>
struct ErfcTable<double> {
  static constexpr const double* c = kErfcG_double;
  static constexpr int degree = int(std::size(kErfcG_double)) - 1;
  static constexpr double zmax = 30.0;  // erfc(z) < 1e-320 beyond
};
template <>
struct ErfcTable<float> {
  static constexpr const float* c = kErfcG_float;
  static constexpr int degree = int(std::size(kErfcG_float)) - 1;
  static constexpr float zmax = 11.0f;  // erfc(z) < 1e-54 beyond
};

template <class T>
xsimd::batch<T> erfc_vec(xsimd::batch<T> z) {
  using V = xsimd::batch<T>;
  using Tab = ErfcTable<T>;
  const V a = xsimd::abs(z);
  const V inv = V(T(1)) / (a + V(T(2)));
  const V t = (a - V(T(2))) * inv;
  V g(Tab::c[Tab::degree]);
  for (int k = Tab::degree - 1; k >= 0; --k) g = fmadd(g, t, V(Tab::c[k]));
  const V hi = a * a;
  const V lo = fmsub(a, a, hi);  // a² = hi + lo exactly
  const V e = xsimd::exp(-hi) * (V(T(1)) - lo);
  V r = e * g * inv;
  r = xsimd::select(a > V(Tab::zmax), V(T(0)), r);  // also keeps ∞ from making 0·∞
  return xsimd::select(z < V(T(0)), V(T(2)) - r, r);
}

// ---- scalar forms used by the naive twins ----

template <class T>
T gelu_u(T x) {  // u(x) of gelu_tanh, with x clamped (Note [Stable gelu])
  const T xc = std::clamp(x, T(-kGeluClamp), T(kGeluClamp));
  return T(kSqrt2OverPi) * (xc + T(kGeluC) * xc * xc * xc);
}
template <class T>
T gelu_du(T x) {  // u'(x)
  const T xc = std::clamp(x, T(-kGeluClamp), T(kGeluClamp));
  return T(kSqrt2OverPi) * (T(1) + T(3 * kGeluC) * xc * xc);
}

// ---- vector forms used by the fast kernels (same operation order) ----

template <class V>
V v_gelu_u(V x) {
  using T = typename V::value_type;
  const V xc = xsimd::clip(x, V(T(-kGeluClamp)), V(T(kGeluClamp)));
  return V(T(kSqrt2OverPi)) * (xc + V(T(kGeluC)) * xc * xc * xc);
}
template <class V>
V v_gelu_du(V x) {
  using T = typename V::value_type;
  const V xc = xsimd::clip(x, V(T(-kGeluClamp)), V(T(kGeluClamp)));
  return V(T(kSqrt2OverPi)) * (V(T(1)) + V(T(3 * kGeluC)) * xc * xc);
}

// A plain loop, for the naive twins.
}  // namespace

// ============================================================================
// unary maps
// ============================================================================

const char* unary_name(Unary f) {
  switch (f) {
    case Unary::Exp: return "exp";
    case Unary::Log: return "log";
    case Unary::Sqrt: return "sqrt";
    case Unary::Rsqrt: return "rsqrt";
    case Unary::Tanh: return "tanh";
    case Unary::Sigmoid: return "sigmoid";
    case Unary::Silu: return "silu";
    case Unary::Relu: return "relu";
    case Unary::GeluTanh: return "gelu_tanh";
    case Unary::GeluErf: return "gelu_erf";
    case Unary::Abs: return "abs";
  }
  return "?";
}

bool unary_backward_uses_x(Unary f) {
  switch (f) {
    case Unary::Log:
    case Unary::Silu:
    case Unary::GeluTanh:
    case Unary::GeluErf:
    case Unary::Abs: return true;
    default: return false;
  }
}

bool unary_backward_uses_y(Unary f) { return !unary_backward_uses_x(f); }

namespace {
// Maps with no transcendental call are memory bound and get the larger grain.
bool unary_forward_is_cheap(Unary f) { return f == Unary::Relu || f == Unary::Abs; }
bool unary_backward_is_cheap(Unary f) {
  return !(f == Unary::Silu || f == Unary::GeluTanh || f == Unary::GeluErf);
}

template <class T>
void check_unary_backward(Unary f, int64_t n, const T* x, const T* y, const T* dy, T* dx) {
  check_n("unary_backward", n);
  if (n == 0) return;
  const bool bad = (unary_backward_uses_x(f) && !x) || (unary_backward_uses_y(f) && !y) || !dy || !dx;
  if (bad)
    throw std::invalid_argument(std::string("unary_backward(") + unary_name(f) + ", n = " +
                                std::to_string(n) + "): a needed array is null (" +
                                (unary_backward_uses_x(f) ? "x" : "y") + ", dy and dx are needed)");
}
}  // namespace

template <class T>
void unary_forward(Unary f, int64_t n, const T* x, T* y) {
  using V = xsimd::batch<T>;
  check_n("unary_forward", n);
  const int64_t g = unary_forward_is_cheap(f) ? kGrainSimple : kGrainMath;
  const V one(T(1)), zero(T(0));
  switch (f) {
    case Unary::Exp: vmap(n, g, [](V a) { return xsimd::exp(a); }, y, x); break;
    case Unary::Log: vmap(n, g, [](V a) { return xsimd::log(a); }, y, x); break;
    case Unary::Sqrt: vmap(n, g, [](V a) { return xsimd::sqrt(a); }, y, x); break;
    // Not xsimd::rsqrt: that is the ~12-bit hardware estimate.
    case Unary::Rsqrt: vmap(n, g, [=](V a) { return one / xsimd::sqrt(a); }, y, x); break;
    case Unary::Tanh: vmap(n, g, [](V a) { return xsimd::tanh(a); }, y, x); break;
    case Unary::Sigmoid: vmap(n, g, [=](V a) { return one / (one + xsimd::exp(-a)); }, y, x); break;
    case Unary::Silu: vmap(n, g, [=](V a) { return a / (one + xsimd::exp(-a)); }, y, x); break;
    case Unary::Relu: vmap(n, g, [=](V a) { return xsimd::select(a < zero, zero, a); }, y, x); break;
    case Unary::GeluTanh:
      vmap(n, g, [=](V a) { return a / (one + xsimd::exp(V(T(-2)) * v_gelu_u(a))); }, y, x);
      break;
    case Unary::GeluErf:
      vmap(n, g, [](V a) { return V(T(0.5)) * a * erfc_vec(a * V(T(-kSqrt1_2))); }, y, x);
      break;
    case Unary::Abs: vmap(n, g, [](V a) { return xsimd::abs(a); }, y, x); break;
  }
}

template <class T>
void unary_forward_naive(Unary f, int64_t n, const T* x, T* y) {
  check_n("unary_forward_naive", n);
  switch (f) {
    case Unary::Exp: each(n, [&](int64_t i) { y[i] = std::exp(x[i]); }); break;
    case Unary::Log: each(n, [&](int64_t i) { y[i] = std::log(x[i]); }); break;
    case Unary::Sqrt: each(n, [&](int64_t i) { y[i] = std::sqrt(x[i]); }); break;
    case Unary::Rsqrt: each(n, [&](int64_t i) { y[i] = T(1) / std::sqrt(x[i]); }); break;
    case Unary::Tanh: each(n, [&](int64_t i) { y[i] = std::tanh(x[i]); }); break;
    case Unary::Sigmoid: each(n, [&](int64_t i) { y[i] = T(1) / (T(1) + std::exp(-x[i])); }); break;
    case Unary::Silu: each(n, [&](int64_t i) { y[i] = x[i] / (T(1) + std::exp(-x[i])); }); break;
    case Unary::Relu: each(n, [&](int64_t i) { y[i] = x[i] < T(0) ? T(0) : x[i]; }); break;
    case Unary::GeluTanh:
      each(n, [&](int64_t i) { y[i] = x[i] / (T(1) + std::exp(T(-2) * gelu_u(x[i]))); });
      break;
    case Unary::GeluErf:
      each(n, [&](int64_t i) { y[i] = T(0.5) * x[i] * std::erfc(x[i] * T(-kSqrt1_2)); });
      break;
    case Unary::Abs: each(n, [&](int64_t i) { y[i] = std::abs(x[i]); }); break;
  }
}

template <class T>
void unary_backward(Unary f, int64_t n, const T* x, const T* y, const T* dy, T* dx) {
  using V = xsimd::batch<T>;
  check_unary_backward(f, n, x, y, dy, dx);
  if (n == 0) return;
  const int64_t g = unary_backward_is_cheap(f) ? kGrainSimple : kGrainMath;
  const V one(T(1)), zero(T(0));
  switch (f) {
    case Unary::Exp:
      vmap(n, g, [](V yv, V d, V acc) { return acc + d * yv; }, dx, y, dy, dx);
      break;
    case Unary::Log:
      vmap(n, g, [](V xv, V d, V acc) { return acc + d / xv; }, dx, x, dy, dx);
      break;
    case Unary::Sqrt:
      vmap(n, g, [](V yv, V d, V acc) { return acc + V(T(0.5)) * d / yv; }, dx, y, dy, dx);
      break;
    case Unary::Rsqrt:
      vmap(n, g, [](V yv, V d, V acc) { return acc + V(T(-0.5)) * d * yv * yv * yv; }, dx, y, dy,
           dx);
      break;
    case Unary::Tanh:
      vmap(n, g, [=](V yv, V d, V acc) { return acc + d * (one - yv * yv); }, dx, y, dy, dx);
      break;
    case Unary::Sigmoid:
      vmap(n, g, [=](V yv, V d, V acc) { return acc + d * yv * (one - yv); }, dx, y, dy, dx);
      break;
    case Unary::Silu:
      vmap(n, g,
           [=](V xv, V d, V acc) {
             const V s = one / (one + xsimd::exp(-xv));
             return acc + d * (s * (one + xv * (one - s)));
           },
           dx, x, dy, dx);
      break;
    case Unary::Relu:
      vmap(n, g, [=](V yv, V d, V acc) { return acc + xsimd::select(yv > zero, d, zero); }, dx, y,
           dy, dx);
      break;
    case Unary::GeluTanh:
      vmap(n, g,
           [=](V xv, V d, V acc) {
             const V s = one / (one + xsimd::exp(V(T(-2)) * v_gelu_u(xv)));
             return acc + d * (s + V(T(2)) * xv * s * (one - s) * v_gelu_du(xv));
           },
           dx, x, dy, dx);
      break;
    case Unary::GeluErf:
      vmap(n, g,
           [](V xv, V d, V acc) {
             const V cdf = V(T(0.5)) * erfc_vec(xv * V(T(-kSqrt1_2)));
             const V pdf = xsimd::exp(V(T(-0.5)) * xv * xv) * V(T(kInvSqrt2Pi));
             return acc + d * (cdf + xv * pdf);
           },
           dx, x, dy, dx);
      break;
    case Unary::Abs:
      vmap(n, g,
           [=](V xv, V d, V acc) {
             return acc + xsimd::select(xv > zero, d, xsimd::select(xv < zero, -d, zero));
           },
           dx, x, dy, dx);
      break;
  }
}

template <class T>
void unary_backward_naive(Unary f, int64_t n, const T* x, const T* y, const T* dy, T* dx) {
  check_unary_backward(f, n, x, y, dy, dx);
  if (n == 0) return;
  switch (f) {
    case Unary::Exp: each(n, [&](int64_t i) { dx[i] += dy[i] * y[i]; }); break;
    case Unary::Log: each(n, [&](int64_t i) { dx[i] += dy[i] / x[i]; }); break;
    case Unary::Sqrt: each(n, [&](int64_t i) { dx[i] += T(0.5) * dy[i] / y[i]; }); break;
    case Unary::Rsqrt:
      each(n, [&](int64_t i) { dx[i] += T(-0.5) * dy[i] * y[i] * y[i] * y[i]; });
      break;
    case Unary::Tanh: each(n, [&](int64_t i) { dx[i] += dy[i] * (T(1) - y[i] * y[i]); }); break;
    case Unary::Sigmoid: each(n, [&](int64_t i) { dx[i] += dy[i] * y[i] * (T(1) - y[i]); }); break;
    case Unary::Silu:
      each(n, [&](int64_t i) {
        const T s = T(1) / (T(1) + std::exp(-x[i]));
        dx[i] += dy[i] * (s * (T(1) + x[i] * (T(1) - s)));
      });
      break;
    case Unary::Relu: each(n, [&](int64_t i) { dx[i] += y[i] > T(0) ? dy[i] : T(0); }); break;
    case Unary::GeluTanh:
      each(n, [&](int64_t i) {
        const T s = T(1) / (T(1) + std::exp(T(-2) * gelu_u(x[i])));
        dx[i] += dy[i] * (s + T(2) * x[i] * s * (T(1) - s) * gelu_du(x[i]));
      });
      break;
    case Unary::GeluErf:
      each(n, [&](int64_t i) {
        const T cdf = T(0.5) * std::erfc(x[i] * T(-kSqrt1_2));
        const T pdf = std::exp(T(-0.5) * x[i] * x[i]) * T(kInvSqrt2Pi);
        dx[i] += dy[i] * (cdf + x[i] * pdf);
      });
      break;
    case Unary::Abs:
      each(n, [&](int64_t i) {
        dx[i] += x[i] > T(0) ? dy[i] : (x[i] < T(0) ? -dy[i] : T(0));
      });
      break;
  }
}

// ---- explicit instantiation ----

#define TG_INSTANTIATE(T) \
  template void unary_forward<T>(Unary, int64_t, const T*, T*); \
  template void unary_forward_naive<T>(Unary, int64_t, const T*, T*); \
  template void unary_backward<T>(Unary, int64_t, const T*, const T*, const T*, T*); \
  template void unary_backward_naive<T>(Unary, int64_t, const T*, const T*, const T*, T*);

TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels
