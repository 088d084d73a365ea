// tests/kernel_test_util.hpp — what the kernel test files (test_kernels_*.cpp) share: seeded
// inputs, bitwise and tolerance comparisons that report the worst element, and a scoped
// thread count. Each kernel file's own inputs (shapes, special values, finite differences)
// stay in that file.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/kernels/parallel.hpp"

namespace tg::testing {

// Sizes are int64_t in the kernels' API; vectors want size_t.
inline std::size_t sz(int64_t n) { return static_cast<std::size_t>(n); }

// n values uniform in [lo, hi), from `seed`.
template <class T>
std::vector<T> uniform(int64_t n, double lo, double hi, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<T> v(sz(n));
  for (auto& e : v) e = T(d(g));
  return v;
}

// n positive values spread evenly in log scale over [lo, hi].
template <class T>
std::vector<T> log_uniform(int64_t n, double lo, double hi, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> d(std::log(lo), std::log(hi));
  std::vector<T> v(sz(n));
  for (auto& e : v) e = T(std::exp(d(g)));
  return v;
}

// n values shift + scale * N(0, 1), from `seed`.
template <class T>
std::vector<T> randn(std::size_t n, uint64_t seed, double scale = 1.0, double shift = 0.0) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = T(shift + scale * d(gen));
  return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Checks |got - want| <= rtol * scale + atol elementwise (scale = |want| unless given);
// NaN must meet NaN and an infinity the same infinity. Reports the worst element.
template <class T>
void check_close(const std::vector<T>& got, const std::vector<T>& want, double rtol, double atol,
                 const std::string& what, const std::vector<double>* scale = nullptr) {
  REQUIRE(got.size() == want.size());
  double worst = 0.0;  // worst |err| / allowed
  std::size_t wi = 0, si = 0;
  bool special_ok = true;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = double(got[i]), w = double(want[i]);
    if (std::isnan(w) || std::isinf(w)) {
      if (!(std::isnan(w) ? std::isnan(g) : g == w) && special_ok) {
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
  if (!special_ok)
    smsg << what << ": special value mismatch at i=" << si << " got " << double(got[si]) << " want "
         << double(want[si]);
  CHECK_MESSAGE(special_ok, smsg.str());
}

// Worst |a_i - b_i| / (|b_i| + rms(b)): relative error, floored by the vector's rms so
// elements that cancel to ~0 are judged against the scale of their neighbours.
template <class T>
double worst_err(const std::vector<T>& a, const std::vector<T>& b, std::size_t* where = nullptr) {
  REQUIRE(a.size() == b.size());
  double ss = 0;
  for (T x : b) ss += double(x) * double(x);
  const double rms = b.empty() ? 0.0 : std::sqrt(ss / double(b.size())) + 1e-300;
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double e = std::abs(double(a[i]) - double(b[i])) / (std::abs(double(b[i])) + rms);
    if (!(e <= worst)) {  // also catches NaN
      worst = std::isnan(e) ? INFINITY : e;
      if (where) *where = i;
    }
  }
  return worst;
}

// Tolerance of a fast-vs-naive comparison: the two differ only in summation order and
// fused multiply-adds.
template <class T>
constexpr double tol() {
  return sizeof(T) == 4 ? 1e-4 : 1e-11;
}

// Central finite differences of loss() with respect to every element of x (double).
template <class F>
std::vector<double> numgrad(std::vector<double>& x, F loss, double h = 1e-6) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

template <class T>
std::vector<T> plus(const std::vector<T>& a, const std::vector<T>& b) {
  std::vector<T> c(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) c[i] = a[i] + b[i];
  return c;
}

// Sets the kernels' thread count for one scope (0, the default, again at its end).
struct Threads {
  explicit Threads(int n) { tg::set_num_threads(n); }
  ~Threads() { tg::set_num_threads(0); }
  Threads(const Threads&) = delete;
  Threads& operator=(const Threads&) = delete;
};

// Runs f with the kernels' thread count set to n, then restores the default.
template <class F>
void with_threads(int n, F f) {
  Threads th(n);
  f();
}

}  // namespace tg::testing

// worst_err(a, b) <= t, reporting where the worst element is.
#define CHECK_CLOSE(a, b, t)                                               \
  do {                                                                     \
    std::size_t where_ = 0;                                                \
    const double err_ = tg::testing::worst_err(a, b, &where_);             \
    INFO(#a " vs " #b ": worst error " << err_ << " at index " << where_); \
    CHECK(err_ <= (t));                                                    \
  } while (0)
