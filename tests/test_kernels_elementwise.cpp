// tests/test_kernels_elementwise.cpp — the elementwise kernels
// (autograd/kernels/elementwise.hpp) against their naive twins, in float and
// double, on lengths that hit the empty, tail-only, vector+tail and OpenMP
// paths; the naive backward formulas against central finite differences in
// double; special values; reproducibility at a fixed thread count. The
// broadcasting binary kernels against their naive twins on the models'
// broadcast patterns, edge shapes and random shapes of rank 1-5, at 1-3 threads.
//
// Not here: softmax and cross-entropy (test_kernels_softmax.cpp), and the ops
// that call these kernels (their gradchecks live with the ops).
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

using namespace tg::kernels;

namespace {

// Lengths: empty, shorter than one vector, a vector plus a tail, and long
// enough (> the OpenMP thresholds) to be split across threads.
const int64_t kSizes[] = {0, 1, 7, 31, 1000, 100003};

const Unary kAllUnary[] = {Unary::Exp,     Unary::Log,  Unary::Sqrt,     Unary::Rsqrt,
                           Unary::Tanh,    Unary::Sigmoid, Unary::Silu,  Unary::Relu,
                           Unary::GeluTanh, Unary::GeluErf, Unary::Abs};
const Binary kAllBinary[] = {Binary::Add, Binary::Sub, Binary::Mul, Binary::Div};

// Sets the kernel thread count for one scope.
struct Threads {
  explicit Threads(int n) { tg::set_num_threads(n); }
  ~Threads() { tg::set_num_threads(0); }
};

template <class T>
std::vector<T> uniform(int64_t n, double lo, double hi, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& e : v) e = T(d(g));
  return v;
}

// Positive values spread evenly in log scale over [lo, hi].
template <class T>
std::vector<T> log_uniform(int64_t n, double lo, double hi, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> d(std::log(lo), std::log(hi));
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& e : v) e = T(std::exp(d(g)));
  return v;
}

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
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Checks |got - want| <= rtol * scale + atol elementwise (scale = |want|
// unless given); NaN must meet NaN and an infinity the same infinity.
// Reports the worst element.
template <class T>
void check_close(const std::vector<T>& got, const std::vector<T>& want, double rtol, double atol,
                 const std::string& what, const std::vector<double>* scale = nullptr) {
  REQUIRE(got.size() == want.size());
  double worst = 0.0;  // worst |err| / allowed
  std::size_t wi = 0;
  bool special_ok = true;
  std::size_t si = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = double(got[i]), w = double(want[i]);
    if (std::isnan(w) || std::isinf(w)) {
      const bool ok = std::isnan(w) ? std::isnan(g) : g == w;
      if (!ok && special_ok) {
        special_ok = false;
        si = i;
      }
      continue;
    }
    const double allowed = rtol * (scale ? (*scale)[i] : std::abs(w)) + atol;
    const double err = std::isfinite(g) ? std::abs(g - w) : std::numeric_limits<double>::infinity();
    if (err > worst * allowed) {
      worst = allowed > 0 ? err / allowed : (err > 0 ? std::numeric_limits<double>::infinity() : 0);
      wi = i;
    }
  }
  std::ostringstream msg;
  msg.precision(17);
  if (!got.empty())
    msg << what << ": worst at i=" << wi << " got " << double(got[wi]) << " want " << double(want[wi])
        << " (err/allowed = " << worst << ")";
  CHECK_MESSAGE(worst <= 1.0, msg.str());
  std::ostringstream smsg;
  if (!special_ok) smsg << what << ": special value mismatch at i=" << si << " got " << double(got[si]) << " want " << double(want[si]);
  CHECK_MESSAGE(special_ok, smsg.str());
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

// ============================================================================
// binary maps with broadcasting
// ============================================================================

namespace {

using Dims = std::vector<int64_t>;

std::string dims_str(const Dims& d) {
  std::string s = "(";
  for (std::size_t k = 0; k < d.size(); ++k) s += (k ? "," : "") + std::to_string(d[k]);
  return s + ")";
}

int64_t numel(const Dims& d) {
  int64_t n = 1;
  for (int64_t v : d) n *= v;
  return n;
}

// z's shape: both shapes aligned on the right, the larger size on each axis.
Dims broadcast_of(const Dims& a, const Dims& b) {
  const std::size_t r = std::max(a.size(), b.size());
  Dims z(r);
  for (std::size_t k = 0; k < r; ++k) {
    const int64_t da = k < r - a.size() ? 1 : a[k - (r - a.size())];
    const int64_t db = k < r - b.size() ? 1 : b[k - (r - b.size())];
    z[k] = da == 1 ? db : da;
  }
  return z;
}

Dims strides_of(const Dims& z, const Dims& in) {
  Dims s(z.size());
  broadcast_strides(int(z.size()), z.data(), int(in.size()), in.data(), s.data());
  return s;
}

// Nonzero values of either sign, |v| in [0.5, 2]: divisors stay tame.
template <class T>
std::vector<T> away_from_zero(int64_t n, uint64_t seed) {
  auto v = uniform<T>(n, 0.5, 2.0, seed);
  for (std::size_t i = 0; i < v.size(); i += 3) v[i] = -v[i];
  return v;
}

template <class T>
std::vector<T> abs_of(std::vector<T> v) {
  for (auto& e : v) e = std::abs(e);
  return v;
}

// a op b for inputs of shapes as and bs: the fast kernels against their naive
// twins. Forward bitwise; backward bitwise for an input that is not summed
// (same element count as z), else within one rounding of the double sum,
// measured against Σ|term| (the naive backward on |dz|, |a|, |b|). The
// gradients are pre-filled with NaN: the kernels must write every element.
template <class T>
void check_broadcast_case(const Dims& as, const Dims& bs, uint64_t seed) {
  const Dims zs = broadcast_of(as, bs);
  const int rank = int(zs.size());
  const Dims sa = strides_of(zs, as), sb = strides_of(zs, bs);
  const int64_t na = numel(as), nb = numel(bs), nz = numel(zs);
  const auto a = uniform<T>(na, -2, 2, seed);
  const auto b = away_from_zero<T>(nb, seed + 1);
  const auto dz = uniform<T>(nz, -1, 1, seed + 2);
  const auto aa = abs_of(a), ab = abs_of(b), adz = abs_of(dz);
  const bool fl = std::is_same_v<T, float>;
  const double rtol = fl ? 2.5e-7 : 1e-12;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (Binary op : kAllBinary) {
    const std::string name = std::string(binary_name(op)) + " " + dims_str(as) + " with " + dims_str(bs);
    CAPTURE(name);
    std::vector<T> z1(std::size_t(nz), nan), z2(std::size_t(nz), nan);
    binary_broadcast_forward(op, rank, zs.data(), sa.data(), sb.data(), a.data(), b.data(), z1.data());
    binary_broadcast_forward_naive(op, rank, zs.data(), sa.data(), sb.data(), a.data(), b.data(), z2.data());
    CHECK_MESSAGE(same_bits(z1, z2), name, " forward");

    std::vector<T> da1(std::size_t(na), nan), db1(std::size_t(nb), nan), da2 = da1, db2 = db1;
    binary_broadcast_backward(op, rank, zs.data(), sa.data(), sb.data(), a.data(), b.data(), dz.data(),
                              da1.data(), db1.data());
    binary_broadcast_backward_naive(op, rank, zs.data(), sa.data(), sb.data(), a.data(), b.data(),
                                    dz.data(), da2.data(), db2.data());
    std::vector<T> sca(static_cast<std::size_t>(na)), scb(static_cast<std::size_t>(nb));  // Σ|term|
    binary_broadcast_backward_naive(op, rank, zs.data(), sa.data(), sb.data(), aa.data(), ab.data(),
                                    adz.data(), sca.data(), scb.data());
    std::vector<double> scale_a, scale_b;  // Sub's and Div's db terms are negative: |Σ|
    for (T v : sca) scale_a.push_back(std::abs(double(v)));
    for (T v : scb) scale_b.push_back(std::abs(double(v)));
    if (na == nz) CHECK_MESSAGE(same_bits(da1, da2), name, " da (not summed)");
    else check_close(da1, da2, rtol, 0.0, name + " da", &scale_a);
    if (nb == nz) CHECK_MESSAGE(same_bits(db1, db2), name, " db (not summed)");
    else check_close(db1, db2, rtol, 0.0, name + " db", &scale_b);

    // One gradient alone: the same values.
    std::vector<T> only_a(std::size_t(na), nan), only_b(std::size_t(nb), nan);
    binary_broadcast_backward(op, rank, zs.data(), sa.data(), sb.data(), a.data(), b.data(), dz.data(),
                              only_a.data(), static_cast<T*>(nullptr));
    binary_broadcast_backward(op, rank, zs.data(), sa.data(), sb.data(), a.data(), b.data(), dz.data(),
                              static_cast<T*>(nullptr), only_b.data());
    CHECK_MESSAGE(same_bits(only_a, da1), name, " da alone");
    CHECK_MESSAGE(same_bits(only_b, db1), name, " db alone");
  }
}

// The patterns the models make, and the edges of the iteration.
const std::pair<Dims, Dims> kBroadcastCases[] = {
    {{2, 3, 4, 64}, {2, 3, 4, 1}},   // headwise gate: one value per row of D
    {{2, 3, 4, 64}, {4, 64}},        // a (H,D) parameter over B, T
    {{2, 5, 33}, {33}},              // bias over (B,T)
    {{3, 4, 5}, {1, 1, 1}},          // scalar-like
    {{1, 1, 1}, {3, 4, 5}},          // the left input broadcast
    {{2, 1, 4}, {1, 3, 1}},          // both broadcast
    {{5, 1, 7}, {5, 3, 7}},          // size 1 in the middle
    {{5, 3, 7}, {5, 3, 1}},          // size 1 at the end
    {{3, 1, 2, 1, 5}, {4, 1, 3, 5}}, // rank 5, alternating
    {{7}, {1}},                      // rank 1
    {{}, {3}},                       // 0-d against rank 1
    {{}, {}},                        // one element
    {{2, 3}, {2, 3}},                // equal shapes
    {{0, 3}, {1, 3}},                // empty z
    {{2, 1}, {2, 0}},                // empty z, a not empty: da = 0
    // Above the threading threshold: rows split across threads; one row split
    // inside; a summed input with fewer rows than threads (per-thread partials).
    {{8, 64, 6, 64}, {8, 64, 6, 1}},
    {{8, 64, 6, 64}, {6, 64}},
    {{512, 384}, {384}},
    {{1, 100003}, {1}},
    {{3, 70001}, {1, 70001}},
    {{2, 40000}, {2, 1}},
};

}  // namespace

TEST_CASE("broadcast_strides: zero on missing and size-1 axes, errors") {
  const Dims z = {2, 3, 4, 64};
  CHECK(strides_of(z, {4, 64}) == Dims{0, 0, 64, 1});
  CHECK(strides_of(z, {2, 3, 4, 1}) == Dims{12, 4, 1, 0});
  CHECK(strides_of(z, {}) == Dims{0, 0, 0, 0});
  CHECK(strides_of(z, {2, 1, 4, 64}) == Dims{256, 0, 64, 1});
  Dims s(4);
  const Dims bad = {3, 64};
  CHECK_THROWS_AS(broadcast_strides(4, z.data(), 2, bad.data(), s.data()), std::invalid_argument);
  const Dims longer = {1, 2, 3, 4, 64};
  CHECK_THROWS_AS(broadcast_strides(4, z.data(), 5, longer.data(), s.data()), std::invalid_argument);
}

TEST_CASE_TEMPLATE("broadcast binary kernels match their naive twins: model patterns and edges", T, float,
                   double) {
  for (int nt : {1, 2, 3}) {
    Threads th(nt);
    uint64_t seed = 1000;
    for (const auto& [as, bs] : kBroadcastCases) {
      CAPTURE(nt);
      check_broadcast_case<T>(as, bs, seed += 10);
    }
  }
}

TEST_CASE_TEMPLATE("broadcast binary kernels match their naive twins: random shapes", T, float, double) {
  // Rank 1-5, odd and vector-sized axes; each input drops some leading axes
  // and has each remaining axis at full size or 1.
  std::mt19937_64 g(7);
  const int64_t sizes[] = {1, 2, 3, 5, 7, 8, 9, 16, 17, 33};
  Threads th(2);
  for (int iter = 0; iter < 150; ++iter) {
    const int rank = 1 + int(g() % 5);
    Dims z;
    int64_t total = 1;
    for (int k = 0; k < rank; ++k) {
      int64_t n = sizes[g() % std::size(sizes)];
      if (total * n > 40000) n = 1;
      z.push_back(n);
      total *= n;
    }
    auto pick = [&]() {
      const std::size_t lead = g() % 3 == 0 ? g() % (z.size() + 1) : 0;  // leading axes missing
      Dims d;
      for (std::size_t k = lead; k < z.size(); ++k) d.push_back(g() % 5 < 2 ? 1 : z[k]);
      return d;
    };
    const Dims as = pick(), bs = pick();
    CAPTURE(iter);
    check_broadcast_case<T>(as, bs, 5000 + uint64_t(iter) * 10);
  }
}

TEST_CASE("broadcast binary kernels: reproducible at a thread count, forward independent of it") {
  const Dims zs = {8, 64, 6, 64}, gs = {8, 64, 6, 1}, ps = {6, 64};
  const auto y = uniform<float>(numel(zs), -2, 2, 11);
  const auto gv = away_from_zero<float>(numel(gs), 12);
  const auto pv = away_from_zero<float>(numel(ps), 13);
  const auto dz = uniform<float>(numel(zs), -1, 1, 14);
  for (const Dims* bs : {&gs, &ps}) {
    const std::vector<float>& b = bs == &gs ? gv : pv;
    const Dims sa = strides_of(zs, zs), sb = strides_of(zs, *bs);
    auto run = [&](int nt, std::vector<float>& z, std::vector<float>& da, std::vector<float>& db) {
      Threads th(nt);
      z.assign(std::size_t(numel(zs)), 0.f);
      da.assign(std::size_t(numel(zs)), 0.f);
      db.assign(b.size(), 0.f);
      binary_broadcast_forward(Binary::Mul, 4, zs.data(), sa.data(), sb.data(), y.data(), b.data(), z.data());
      binary_broadcast_backward(Binary::Div, 4, zs.data(), sa.data(), sb.data(), y.data(), b.data(),
                                dz.data(), da.data(), db.data());
    };
    std::vector<float> z1, da1, db1, z2, da2, db2, z3, da3, db3;
    run(2, z1, da1, db1);
    run(2, z2, da2, db2);
    CHECK(same_bits(z1, z2));
    CHECK(same_bits(da1, da2));
    CHECK(same_bits(db1, db2));
    run(1, z3, da3, db3);
    CHECK(same_bits(z1, z3));
    CHECK(same_bits(da1, da3));
  }
}

TEST_CASE("broadcast binary kernels reject bad strides and missing arrays") {
  const Dims z = {2, 3, 4};
  const Dims ok = {12, 4, 1}, bcast = {0, 0, 1}, wrong = {3, 4, 1};
  std::vector<double> a(24, 1.0), b(4, 1.0), out(24), dz(24, 1.0), da(24), db(4);
  CHECK_THROWS_AS(binary_broadcast_forward(Binary::Add, 3, z.data(), wrong.data(), bcast.data(), a.data(),
                                           b.data(), out.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(binary_broadcast_forward_naive(Binary::Add, 3, z.data(), ok.data(), wrong.data(), a.data(),
                                                 b.data(), out.data()),
                  std::invalid_argument);
  const Dims neg = {2, -3, 4};
  CHECK_THROWS_AS(binary_broadcast_forward(Binary::Add, 3, neg.data(), ok.data(), bcast.data(), a.data(),
                                           b.data(), out.data()),
                  std::invalid_argument);
  // Mul's db needs a; Div's da needs b.
  CHECK_THROWS_AS(binary_broadcast_backward(Binary::Mul, 3, z.data(), ok.data(), bcast.data(),
                                            static_cast<const double*>(nullptr), b.data(), dz.data(),
                                            static_cast<double*>(nullptr), db.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(binary_broadcast_backward_naive(Binary::Div, 3, z.data(), ok.data(), bcast.data(), a.data(),
                                                  static_cast<const double*>(nullptr), dz.data(), da.data(),
                                                  static_cast<double*>(nullptr)),
                  std::invalid_argument);
  // Add reads neither input.
  binary_broadcast_backward(Binary::Add, 3, z.data(), ok.data(), bcast.data(), static_cast<const double*>(nullptr),
                            static_cast<const double*>(nullptr), dz.data(), da.data(), db.data());
  CHECK(db == std::vector<double>(4, 6.0));
  CHECK(da == std::vector<double>(24, 1.0));
}
