// tests/test_kernels_elementwise.cpp — the elementwise kernels
// (autograd/kernels/elementwise.hpp) against their naive twins, in float and
// double, on lengths that hit the empty, tail-only, vector+tail and OpenMP
// paths; the naive backward formulas against central finite differences in
// double; special values; reproducibility at a fixed thread count.
//
// Not here: the broadcasting binary kernels (test_kernels_broadcast.cpp), softmax
// and cross-entropy (test_kernels_softmax.cpp), and the ops that call these
// kernels (their gradchecks live with the ops).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/kernels/elementwise.hpp"
#include "autograd/kernels/parallel.hpp"
#include "kernel_test_util.hpp"

using namespace tg::kernels;
using namespace tg::testing;

namespace {

// Lengths: empty, shorter than one vector, a vector plus a tail, and long
// enough (> the OpenMP thresholds) to be split across threads.
const int64_t kSizes[] = {0, 1, 7, 31, 1000, 100003};

const Unary kAllUnary[] = {Unary::Exp,     Unary::Log,  Unary::Sqrt,     Unary::Rsqrt,
                           Unary::Tanh,    Unary::Sigmoid, Unary::Silu,  Unary::Relu,
                           Unary::GeluTanh, Unary::GeluErf, Unary::Abs};
const Binary kAllBinary[] = {Binary::Add, Binary::Sub, Binary::Mul, Binary::Div};

// Small integers: every sum of up to ~10^6 of them is exact in float.
template <class T>
std::vector<T> small_ints(int64_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int> d(-8, 8);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& e : v) e = T(d(g));
  return v;
}

template <class T>
constexpr double rtol_for() {
  return std::is_same_v<T, float> ? 1e-6 : 1e-14;
}
// Absolute floor: the fast maps flush results near the bottom of the normal
// range to zero (xsimd::exp saturates early; Note [Accuracy of the fast maps]).
template <class T>
constexpr double atol_for() {
  return 1e6 * double(std::numeric_limits<T>::min());
}

// Inputs that exercise each function over its useful range, including large
// arguments for the saturating ones and tiny/huge ones for log/sqrt.
template <class T>
std::vector<T> unary_inputs(Unary f, int64_t n, uint64_t seed) {
  const bool fl = std::is_same_v<T, float>;
  switch (f) {
    case Unary::Exp: return fl ? uniform<T>(n, -87, 88.3, seed) : uniform<T>(n, -708, 709.4, seed);
    case Unary::Log:
    case Unary::Sqrt:
    case Unary::Rsqrt:
      return fl ? log_uniform<T>(n, 1e-30, 1e30, seed) : log_uniform<T>(n, 1e-300, 1e300, seed);
    case Unary::Tanh: return uniform<T>(n, -20, 20, seed);
    case Unary::Sigmoid:
    case Unary::Silu: return fl ? uniform<T>(n, -100, 100, seed) : uniform<T>(n, -800, 800, seed);
    case Unary::Relu:
    case Unary::Abs: {
      auto v = uniform<T>(n, -10, 10, seed);
      for (std::size_t i = 0; i < v.size(); i += 5) v[i] = T(0);  // the kink
      return v;
    }
    case Unary::GeluTanh: {
      auto v = uniform<T>(n, -20, 20, seed);
      for (std::size_t i = 0; i < v.size(); i += 7) v[i] *= T(1000);  // past the clamp
      return v;
    }
    case Unary::GeluErf: return fl ? uniform<T>(n, -14, 14, seed) : uniform<T>(n, -40, 40, seed);
  }
  return {};
}

// |terms| of f'(x): the scale against which the backward's rounding is
// measured (a sum of terms can cancel; its rounding error cannot).
long double deriv_scale(Unary f, long double x, long double y) {
  const long double s = 1.0L / (1.0L + std::exp(-x));
  switch (f) {
    case Unary::Exp: return std::abs(y);
    case Unary::Log: return 1.0L / std::abs(x);
    case Unary::Sqrt: return 0.5L / std::abs(y);
    case Unary::Rsqrt: return 0.5L * std::abs(y * y * y);
    case Unary::Tanh: return 1.0L + y * y;
    case Unary::Sigmoid: return std::abs(y) * (1.0L + std::abs(y));
    case Unary::Silu: return s * (1.0L + std::abs(x) * (1.0L - s));
    case Unary::Relu:
    case Unary::Abs: return 1.0L;
    case Unary::GeluTanh: {
      const long double xc = std::clamp(x, -1e4L, 1e4L);
      const long double c = 0.79788456080286535588L;
      const long double u = c * (xc + 0.044715L * xc * xc * xc);
      const long double s2 = 1.0L / (1.0L + std::exp(-2.0L * u));
      return s2 + 2.0L * std::abs(x) * s2 * (1.0L - s2) * c * (1.0L + 3 * 0.044715L * xc * xc);
    }
    case Unary::GeluErf:
      return 0.5L * std::erfc(-x / std::sqrt(2.0L)) +
             std::abs(x) * std::exp(-0.5L * x * x) * 0.39894228040143267794L;
  }
  return 1.0L;
}

}  // namespace

// ============================================================================
// unary maps
// ============================================================================

TEST_CASE_TEMPLATE("unary_forward matches its naive twin", T, float, double) {
  Threads th(2);
  for (Unary f : kAllUnary) {
    for (int64_t n : kSizes) {
      const auto x = unary_inputs<T>(f, n, 1000 + uint64_t(n));
      std::vector<T> fast(x.size()), naive(x.size());
      unary_forward(f, n, x.data(), fast.data());
      unary_forward_naive(f, n, x.data(), naive.data());
      // gelu_tanh's deep negative tail is x·sigmoid(2u) with |2u| ≈ 1.6|x|(1 + 0.0447x²):
      // one rounding of the exponent's argument moves the result by ≈ |2u| ulps, so the
      // allowed relative error grows with |2u| there (how the compiler rounds u differs
      // between builds, e.g. the sanitizer build).
      std::vector<double> scale(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) {
        const double xi = double(x[i]), a = 1.6 * std::abs(xi) * (1 + 0.0447 * xi * xi);
        scale[i] = std::abs(double(naive[i])) * (f == Unary::GeluTanh ? std::max(1.0, a) : 1.0);
      }
      check_close(fast, naive, rtol_for<T>(), atol_for<T>(),
                  std::string(unary_name(f)) + " n=" + std::to_string(n), &scale);
      if (f == Unary::Sqrt || f == Unary::Rsqrt || f == Unary::Relu || f == Unary::Abs)
        CHECK_MESSAGE(same_bits(fast, naive), std::string(unary_name(f)), " should be bitwise exact, n=", n);
    }
  }
}

TEST_CASE_TEMPLATE("unary_forward near zero and in place", T, float, double) {
  // Relative accuracy where the functions are small: tanh, sigmoid's
  // complement region, silu and the gelus near 0, log near 1.
  const int64_t n = 1000;
  for (Unary f : {Unary::Tanh, Unary::Silu, Unary::GeluTanh, Unary::GeluErf, Unary::Exp}) {
    const auto x = uniform<T>(n, -1e-3, 1e-3, 7);
    std::vector<T> fast(n), naive(n);
    unary_forward(f, n, x.data(), fast.data());
    unary_forward_naive(f, n, x.data(), naive.data());
    check_close(fast, naive, rtol_for<T>(), 0.0, std::string(unary_name(f)) + " near 0");
  }
  const auto x = uniform<T>(n, 0.5, 2.0, 8);
  std::vector<T> fast(n), naive(n);
  unary_forward(Unary::Log, n, x.data(), fast.data());
  unary_forward_naive(Unary::Log, n, x.data(), naive.data());
  check_close(fast, naive, rtol_for<T>(), 0.0, "log near 1");
  // y may alias x.
  auto inplace = x;
  unary_forward(Unary::Log, n, inplace.data(), inplace.data());
  CHECK(same_bits(inplace, fast));
}

TEST_CASE_TEMPLATE("unary_backward matches its naive twin and accumulates", T, float, double) {
  Threads th(2);
  for (Unary f : kAllUnary) {
    for (int64_t n : kSizes) {
      const auto x = unary_inputs<T>(f, n, 2000 + uint64_t(n));
      std::vector<T> y(x.size());
      unary_forward_naive(f, n, x.data(), y.data());
      const auto dy = uniform<T>(n, -1, 1, 3000 + uint64_t(n));
      const auto dx0 = uniform<T>(n, -1, 1, 4000 + uint64_t(n));
      auto fast = dx0, naive = dx0;
      // Pass only the array the function needs (the other may be null).
      const T* xp = unary_backward_uses_x(f) ? x.data() : nullptr;
      const T* yp = unary_backward_uses_y(f) ? y.data() : nullptr;
      unary_backward(f, n, xp, yp, dy.data(), fast.data());
      unary_backward_naive(f, n, xp, yp, dy.data(), naive.data());
      std::vector<double> scale(x.size());
      for (std::size_t i = 0; i < x.size(); ++i)
        scale[i] = std::abs(double(dx0[i])) +
                   std::abs(double(dy[i])) * double(deriv_scale(f, x[i], y[i]));
      check_close(fast, naive, rtol_for<T>(), atol_for<T>(),
                  std::string("d") + unary_name(f) + " n=" + std::to_string(n), &scale);
      // Accumulation: starting from dx0 adds what starting from 0 gives (up
      // to one rounding: the compiler may fuse the add into an FMA).
      std::vector<T> from_zero(x.size(), T(0));
      unary_backward(f, n, xp, yp, dy.data(), from_zero.data());
      std::vector<T> sum(x.size());
      std::vector<double> sum_scale(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) {
        sum[i] = dx0[i] + from_zero[i];
        sum_scale[i] = std::abs(double(dx0[i])) + std::abs(double(from_zero[i]));
      }
      check_close(fast, sum, 2.0 * std::numeric_limits<T>::epsilon(), 0.0,
                  std::string("d") + unary_name(f) + " accumulates, n=" + std::to_string(n), &sum_scale);
    }
  }
}

TEST_CASE("naive unary backward formulas match central differences (double)") {
  struct Case {
    Unary f;
    double lo, hi;
  };
  const Case cases[] = {{Unary::Exp, -5, 5},       {Unary::Log, 0.1, 10},    {Unary::Sqrt, 0.1, 10},
                        {Unary::Rsqrt, 0.1, 10},   {Unary::Tanh, -3, 3},     {Unary::Sigmoid, -8, 8},
                        {Unary::Silu, -8, 8},      {Unary::Relu, -3, 3},     {Unary::GeluTanh, -5, 5},
                        {Unary::GeluErf, -5, 5},   {Unary::Abs, -3, 3}};
  for (const Case& c : cases) {
    auto x = uniform<double>(64, c.lo, c.hi, 11);
    for (auto& v : x)
      if (std::abs(v) < 1e-2) v = 0.5;  // keep away from the kinks of relu and abs
    const int64_t n = int64_t(x.size());
    std::vector<double> y(x.size()), ones(x.size(), 1.0), grad(x.size(), 0.0);
    unary_forward_naive(c.f, n, x.data(), y.data());
    unary_backward_naive(c.f, n, x.data(), y.data(), ones.data(), grad.data());
    std::vector<double> fd(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double h = 1e-6 * std::max(1.0, std::abs(x[i]));
      double xp = x[i] + h, xm = x[i] - h, yp, ym;
      unary_forward_naive(c.f, 1, &xp, &yp);
      unary_forward_naive(c.f, 1, &xm, &ym);
      fd[i] = (yp - ym) / (xp - xm);
    }
    check_close(grad, fd, 1e-7, 1e-8, std::string("finite differences of ") + unary_name(c.f));
  }
}

TEST_CASE("the stable gelu forms equal the textbook ones where those are accurate (double)") {
  // Note [Stable gelu]: 0.5 x (1 + tanh u) = x sigmoid(2u), and
  // 0.5 x (1 + erf(x/√2)) = 0.5 x erfc(-x/√2). On |x| <= 3 the textbook
  // forms lose at most ~1e-13 to cancellation.
  const auto x = uniform<double>(2000, -3, 3, 12);
  const int64_t n = int64_t(x.size());
  std::vector<double> gt(x.size()), ge(x.size()), bt(x.size()), be(x.size());
  unary_forward_naive(Unary::GeluTanh, n, x.data(), gt.data());
  unary_forward_naive(Unary::GeluErf, n, x.data(), ge.data());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    bt[i] = 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    be[i] = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
  }
  check_close(gt, bt, 1e-12, 1e-300, "gelu_tanh vs textbook");
  check_close(ge, be, 1e-12, 1e-300, "gelu_erf vs textbook");
  // And against values from the definition, at a few points (Φ(1) = 0.841344746068543).
  const double one = 1.0, mone = -1.0;
  double g1, gm1;
  unary_forward(Unary::GeluErf, 1, &one, &g1);
  unary_forward(Unary::GeluErf, 1, &mone, &gm1);
  CHECK(g1 == doctest::Approx(0.841344746068543).epsilon(1e-14));
  CHECK(gm1 == doctest::Approx(-(1.0 - 0.841344746068543)).epsilon(1e-13));
}

TEST_CASE_TEMPLATE("unary special values", T, float, double) {
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  for (Unary f : kAllUnary) {
    // NaN in, NaN out, in the body and in the tail.
    std::vector<T> x(37, T(0.5));
    x[3] = nan;
    x[36] = nan;
    std::vector<T> y(x.size()), yn(x.size());
    unary_forward(f, int64_t(x.size()), x.data(), y.data());
    unary_forward_naive(f, int64_t(x.size()), x.data(), yn.data());
    CHECK_MESSAGE(std::isnan(y[3]), std::string(unary_name(f)));
    CHECK_MESSAGE(std::isnan(y[36]), std::string(unary_name(f)));
    CHECK_MESSAGE(std::isnan(yn[3]), std::string(unary_name(f)));
  }
  const std::vector<T> big = {T(-1000), T(1000), inf, -inf};
  std::vector<T> y(4);
  unary_forward(Unary::Exp, 4, big.data(), y.data());
  CHECK(y[0] == T(0));
  CHECK(y[1] == inf);
  CHECK(y[2] == inf);
  CHECK(y[3] == T(0));
  unary_forward(Unary::Sigmoid, 4, big.data(), y.data());
  CHECK(y[0] == T(0));
  CHECK(y[1] == T(1));
  unary_forward(Unary::Tanh, 4, big.data(), y.data());
  CHECK(y[0] == T(-1));
  CHECK(y[1] == T(1));
  const std::vector<T> zeros = {T(0), T(-1), T(0), T(4)};
  unary_forward(Unary::Log, 4, zeros.data(), y.data());
  CHECK(y[0] == -inf);
  CHECK(std::isnan(y[1]));
  CHECK(y[3] == doctest::Approx(std::log(4.0)));
  unary_forward(Unary::Sqrt, 4, zeros.data(), y.data());
  CHECK(y[0] == T(0));
  CHECK(std::isnan(y[1]));
  CHECK(y[3] == T(2));
  // Silu and the gelus far out: x for large x, -0 or a tiny negative for very
  // negative x, and finite derivatives (no 0·∞).
  const std::vector<T> far = {T(-1e6), T(1e6), T(-1000), T(1000)};
  for (Unary f : {Unary::GeluTanh, Unary::GeluErf, Unary::Silu}) {
    unary_forward(f, 4, far.data(), y.data());
    CHECK_MESSAGE(y[1] == T(1e6), std::string(unary_name(f)));
    CHECK_MESSAGE(y[3] == T(1000), std::string(unary_name(f)));
    CHECK_MESSAGE((y[0] <= T(0) && y[0] > T(-1e-30)), std::string(unary_name(f)));
    std::vector<T> dy(4, T(1)), dx(4, T(0));
    unary_backward(f, 4, far.data(), y.data(), dy.data(), dx.data());
    for (int i = 0; i < 4; ++i) CHECK_MESSAGE(std::isfinite(dx[i]), std::string(unary_name(f)), " i=", i);
    CHECK(dx[1] == T(1));
    CHECK(std::abs(dx[0]) < T(1e-30));
  }
}

TEST_CASE("unary_backward rejects a missing array it needs") {
  std::vector<double> a(8, 1.0), b(8, 0.0);
  CHECK_THROWS_AS(unary_backward(Unary::Exp, 8, a.data(), static_cast<const double*>(nullptr), a.data(), b.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(unary_backward(Unary::Log, 8, static_cast<const double*>(nullptr), a.data(), a.data(), b.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(unary_forward(Unary::Exp, -1, a.data(), b.data()), std::invalid_argument);
  CHECK_NOTHROW(unary_backward(Unary::Exp, 0, static_cast<const double*>(nullptr),
                               static_cast<const double*>(nullptr), static_cast<const double*>(nullptr),
                               static_cast<double*>(nullptr)));
}

// ============================================================================
// binary maps and BLAS-1 helpers: exactly rounded, so bitwise equal
// ============================================================================

TEST_CASE_TEMPLATE("binary kernels equal their naive twins bitwise", T, float, double) {
  Threads th(2);
  for (int64_t n : kSizes) {
    const auto x = uniform<T>(n, -10, 10, 50 + uint64_t(n));
    auto y = uniform<T>(n, -10, 10, 60 + uint64_t(n));
    for (auto& v : y)
      if (std::abs(v) < T(0.1)) v = T(0.5);  // keep division tame
    const auto dz = uniform<T>(n, -1, 1, 70 + uint64_t(n));
    for (Binary op : kAllBinary) {
      const std::string name = std::string(binary_name(op)) + " n=" + std::to_string(n);
      std::vector<T> a(x.size()), b(x.size());
      binary_forward(op, n, x.data(), y.data(), a.data());
      binary_forward_naive(op, n, x.data(), y.data(), b.data());
      CHECK_MESSAGE(same_bits(a, b), name);
      // In place: z aliases x.
      auto inplace = x;
      binary_forward(op, n, inplace.data(), y.data(), inplace.data());
      binary_forward_naive(op, n, x.data(), y.data(), b.data());
      CHECK_MESSAGE(same_bits(inplace, b), name, " in place");

      // Backward, accumulating into non-zero gradients; either side may be skipped.
      const auto dx0 = uniform<T>(n, -1, 1, 80 + uint64_t(n));
      const auto dy0 = uniform<T>(n, -1, 1, 90 + uint64_t(n));
      auto dxa = dx0, dya = dy0, dxb = dx0, dyb = dy0;
      binary_backward(op, n, x.data(), y.data(), dz.data(), dxa.data(), dya.data());
      binary_backward_naive(op, n, x.data(), y.data(), dz.data(), dxb.data(), dyb.data());
      CHECK_MESSAGE(same_bits(dxa, dxb), name, " dx");
      CHECK_MESSAGE(same_bits(dya, dyb), name, " dy");
      auto only_dx = dx0, only_dy = dy0;
      binary_backward(op, n, x.data(), y.data(), dz.data(), only_dx.data(), static_cast<T*>(nullptr));
      binary_backward(op, n, x.data(), y.data(), dz.data(), static_cast<T*>(nullptr), only_dy.data());
      CHECK_MESSAGE(same_bits(only_dx, dxb), name, " dx alone");
      CHECK_MESSAGE(same_bits(only_dy, dyb), name, " dy alone");
    }
  }
}

TEST_CASE("naive binary backward formulas match central differences (double)") {
  const auto x = uniform<double>(32, -3, 3, 21);
  auto y = uniform<double>(32, 0.5, 3, 22);
  for (std::size_t i = 0; i < y.size(); i += 2) y[i] = -y[i];
  for (Binary op : kAllBinary) {
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double dz = 1.0;
      double gx = 0.0, gy = 0.0;
      binary_backward_naive(op, 1, &x[i], &y[i], &dz, &gx, &gy);
      auto f = [&](double a, double b) {
        double z;
        binary_forward_naive(op, 1, &a, &b, &z);
        return z;
      };
      const double h = 1e-6;
      const double fx = (f(x[i] + h, y[i]) - f(x[i] - h, y[i])) / (2 * h);
      const double fy = (f(x[i], y[i] + h) - f(x[i], y[i] - h)) / (2 * h);
      CHECK_MESSAGE(gx == doctest::Approx(fx).epsilon(1e-7), std::string(binary_name(op)), " dx at ", i);
      CHECK_MESSAGE(gy == doctest::Approx(fy).epsilon(1e-7), std::string(binary_name(op)), " dy at ", i);
    }
  }
}

// ============================================================================
// threads
// ============================================================================

TEST_CASE("elementwise results do not depend on the thread count") {
  // Each element goes through the same vector function wherever it sits
  // (body or padded tail, any thread), so results are bitwise identical
  // across thread counts, not only across runs.
  const int64_t n = 100003;
  const auto x = uniform<float>(n, -5, 5, 99);
  const auto dy = uniform<float>(n, -1, 1, 98);
  std::vector<float> y1(n), y2(n), d1(n, 0.f), d2(n, 0.f);
  for (Unary f : {Unary::Exp, Unary::GeluErf, Unary::Silu, Unary::Tanh}) {
    {
      Threads th(1);
      unary_forward(f, n, x.data(), y1.data());
      unary_backward(f, n, x.data(), y1.data(), dy.data(), d1.data());
    }
    {
      Threads th(3);
      unary_forward(f, n, x.data(), y2.data());
      unary_backward(f, n, x.data(), y2.data(), dy.data(), d2.data());
    }
    CHECK_MESSAGE(same_bits(y1, y2), std::string(unary_name(f)));
    CHECK_MESSAGE(same_bits(d1, d2), std::string(unary_name(f)));
  }
  // And an element's value does not depend on where the array starts.
  std::vector<float> shifted(n - 3);
  unary_forward(Unary::GeluErf, n - 3, x.data() + 3, shifted.data());
  unary_forward(Unary::GeluErf, n, x.data(), y1.data());
  CHECK(std::memcmp(shifted.data(), y1.data() + 3, (n - 3) * sizeof(float)) == 0);
}
