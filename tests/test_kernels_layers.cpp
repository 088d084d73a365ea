// tests/test_kernels_layers.cpp — the fused layer kernels against their naive twins.
//
// What it checks: RMSNorm, LayerNorm, RoPE (and its tables), SwiGLU, embedding and the
// AdamW / SGD updates in autograd/kernels/:
// - each fast kernel against its `_naive` twin, float and double, on odd and even sizes,
//   with and without optional weights, with pre-filled gradient buffers (accumulation);
// - each naive backward against central finite differences in double, so the oracles
//   themselves are right;
// - RoPE tables against the direct formula, the rotate_half pairing by hand;
// - errors: bad ids, bad sizes, bad hyper-parameters;
// - determinism: bitwise identical results from run to run at a fixed thread count;
// - AdamW and SGD over a few steps against a scalar textbook reference in long double,
//   and bit for bit against PyTorch's order of operations and roundings.
//
// What it does not check: speed (benchmarks do that), or the ops built on these kernels.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/kernels/adamw.hpp"
#include "autograd/kernels/embedding.hpp"
#include "autograd/kernels/norm.hpp"
#include "autograd/kernels/parallel.hpp"
#include "autograd/kernels/rope.hpp"
#include "autograd/kernels/swiglu.hpp"

namespace k = tg::kernels;

namespace {

// Sizes are int64_t in the kernels' API; vectors want size_t.
inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

template <class T>
std::vector<T> randn(size_t n, uint64_t seed, double scale = 1.0, double shift = 0.0) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = T(shift + scale * d(gen));
  return v;
}

// Tolerance of a fast-vs-naive comparison: the two differ only in summation order and
// fused multiply-adds.
template <class T>
constexpr double tol() {
  return sizeof(T) == 4 ? 1e-4 : 1e-11;
}

// Worst |a_i - b_i| / (|b_i| + rms(b)): relative error, floored by the vector's rms so
// elements that cancel to ~0 are judged against the scale of their neighbours.
template <class T>
double worst_err(const std::vector<T>& a, const std::vector<T>& b, size_t* where = nullptr) {
  REQUIRE(a.size() == b.size());
  double ss = 0;
  for (T x : b) ss += double(x) * double(x);
  const double rms = b.empty() ? 0.0 : std::sqrt(ss / double(b.size())) + 1e-300;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = std::abs(double(a[i]) - double(b[i])) / (std::abs(double(b[i])) + rms);
    if (!(e <= worst)) {  // also catches NaN
      worst = std::isnan(e) ? INFINITY : e;
      if (where) *where = i;
    }
  }
  return worst;
}

#define CHECK_CLOSE(a, b, t)                                               \
  do {                                                                     \
    size_t where_ = 0;                                                     \
    const double err_ = worst_err(a, b, &where_);                          \
    INFO(#a " vs " #b ": worst error " << err_ << " at index " << where_); \
    CHECK(err_ <= (t));                                                    \
  } while (0)

// Central finite differences of loss() with respect to every element of x (double).
template <class F>
std::vector<double> numgrad(std::vector<double>& x, F loss, double h = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
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

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

template <class T>
std::vector<T> plus(const std::vector<T>& a, const std::vector<T>& b) {
  std::vector<T> c(a.size());
  for (size_t i = 0; i < a.size(); ++i) c[i] = a[i] + b[i];
  return c;
}

// Runs f with the kernels' thread count set to n, then restores the default.
template <class F>
void with_threads(int n, F f) {
  tg::set_num_threads(n);
  try {
    f();
  } catch (...) {
    tg::set_num_threads(0);
    throw;
  }
  tg::set_num_threads(0);
}

const int64_t kRows[] = {1, 3, 64, 257};
const int64_t kCols[] = {1, 7, 24, 64, 384, 1000};

}  // namespace

// ======================================================================================
// RMSNorm
// ======================================================================================

TEST_CASE_TEMPLATE("rmsnorm: fast forward and backward match the naive twin", T, float, double) {
  uint64_t seed = 1;
  for (int64_t rows : kRows)
    for (int64_t C : kCols)
      for (bool with_w : {true, false}) {
        CAPTURE(rows);
        CAPTURE(C);
        CAPTURE(with_w);
        const size_t n = sz(rows * C);
        const auto x = randn<T>(n, ++seed, 2.0, 0.3);
        const auto w = randn<T>(sz(C), ++seed, 0.5, 1.0);
        const auto dy = randn<T>(n, ++seed);
        const T* wp = with_w ? w.data() : nullptr;
        const T eps = T(1e-6);

        std::vector<T> y(n), y0(n), rstd(sz(rows)), rstd0(sz(rows));
        k::rmsnorm_forward(rows, C, x.data(), wp, eps, y.data(), rstd.data());
        k::rmsnorm_forward_naive(rows, C, x.data(), wp, eps, y0.data(), rstd0.data());
        CHECK_CLOSE(y, y0, tol<T>());
        CHECK_CLOSE(rstd, rstd0, tol<T>());

        // Pre-filled buffers: the kernels must add to them.
        const auto dx_init = randn<T>(n, ++seed);
        const auto dw_init = randn<T>(sz(C), ++seed);
        auto dx = dx_init, dx0 = dx_init;
        auto dw = dw_init, dw0 = dw_init;
        T* dwp = with_w ? dw.data() : nullptr;
        T* dwp0 = with_w ? dw0.data() : nullptr;
        k::rmsnorm_backward(rows, C, x.data(), wp, rstd0.data(), dy.data(), dx.data(), dwp);
        k::rmsnorm_backward_naive(rows, C, x.data(), wp, rstd0.data(), dy.data(), dx0.data(),
                                  dwp0);
        CHECK_CLOSE(dx, dx0, tol<T>());
        if (with_w) CHECK_CLOSE(dw, dw0, tol<T>());
        if (!with_w) CHECK(dw == dw_init);

        // Accumulation: (pre-filled + gradient) == pre-filled + (gradient from zero).
        std::vector<T> dxz(n, T(0)), dwz(sz(C), T(0));
        k::rmsnorm_backward(rows, C, x.data(), wp, rstd0.data(), dy.data(), dxz.data(),
                            with_w ? dwz.data() : nullptr);
        CHECK_CLOSE(dx, plus(dx_init, dxz), tol<T>());
        if (with_w) CHECK_CLOSE(dw, plus(dw_init, dwz), tol<T>());

        // Only one of the gradients wanted.
        std::vector<T> dx_only(n, T(0));
        k::rmsnorm_backward(rows, C, x.data(), wp, rstd0.data(), dy.data(), dx_only.data(),
                            static_cast<T*>(nullptr));
        CHECK_CLOSE(dx_only, dxz, tol<T>());
        if (with_w) {
          std::vector<T> dw_only(sz(C), T(0));
          k::rmsnorm_backward(rows, C, x.data(), wp, rstd0.data(), dy.data(),
                              static_cast<T*>(nullptr), dw_only.data());
          CHECK_CLOSE(dw_only, dwz, tol<T>());
        }
      }
}

TEST_CASE("rmsnorm: in-place forward equals out-of-place") {
  const int64_t rows = 5, C = 37;
  auto x = randn<float>(sz(rows * C), 7);
  const auto w = randn<float>(sz(C), 8);
  std::vector<float> y(x.size()), r(sz(rows));
  k::rmsnorm_forward(rows, C, x.data(), w.data(), 1e-5f, y.data(), r.data());
  k::rmsnorm_forward(rows, C, x.data(), w.data(), 1e-5f, x.data(), static_cast<float*>(nullptr));
  CHECK(x == y);
}

TEST_CASE("rmsnorm: naive backward matches finite differences (double)") {
  for (bool with_w : {true, false}) {
    CAPTURE(with_w);
    const int64_t rows = 3, C = 7;
    const size_t n = sz(rows * C);
    auto x = randn<double>(n, 11, 1.5, 0.2);
    auto w = randn<double>(sz(C), 12, 0.5, 1.0);
    const auto R = randn<double>(n, 13);  // L = sum(R * y), so dL/dy = R
    const double eps = 1e-5;
    const double* wp = with_w ? w.data() : nullptr;
    auto loss = [&] {
      std::vector<double> y(n), r(sz(rows));
      k::rmsnorm_forward_naive(rows, C, x.data(), with_w ? w.data() : nullptr, eps, y.data(),
                               r.data());
      return dot(R, y);
    };
    std::vector<double> y(n), rstd(sz(rows)), dx(n, 0.0), dw(sz(C), 0.0);
    k::rmsnorm_forward_naive(rows, C, x.data(), wp, eps, y.data(), rstd.data());
    k::rmsnorm_backward_naive(rows, C, x.data(), wp, rstd.data(), R.data(), dx.data(),
                              with_w ? dw.data() : nullptr);
    CHECK_CLOSE(dx, numgrad(x, loss), 1e-7);
    if (with_w) CHECK_CLOSE(dw, numgrad(w, loss), 1e-7);
  }
}

TEST_CASE("rmsnorm: argument errors name the kernel") {
  std::vector<float> x(6), y(6), r(2), w(3);
  CHECK_THROWS_WITH_AS(k::rmsnorm_forward<float>(-1, 3, x.data(), w.data(), 1e-5f, y.data(),
                                                 r.data()),
                       doctest::Contains("rmsnorm_forward"), std::invalid_argument);
  CHECK_THROWS_AS(k::rmsnorm_forward<float>(2, 3, nullptr, w.data(), 1e-5f, y.data(), r.data()),
                  std::invalid_argument);
  CHECK_THROWS_WITH_AS(k::rmsnorm_backward<float>(2, 3, x.data(), nullptr, r.data(), y.data(),
                                                  x.data(), w.data()),
                       doctest::Contains("dw given but w is nullptr"), std::invalid_argument);
}

// ======================================================================================
// LayerNorm
// ======================================================================================

TEST_CASE_TEMPLATE("layernorm: fast forward and backward match the naive twin", T, float,
                   double) {
  uint64_t seed = 100;
  for (int64_t rows : kRows)
    for (int64_t C : kCols)
      for (int affine = 0; affine < 4; ++affine) {  // bit 0: weight, bit 1: bias
        const bool with_w = affine & 1, with_b = affine & 2;
        CAPTURE(rows);
        CAPTURE(C);
        CAPTURE(with_w);
        CAPTURE(with_b);
        const size_t n = sz(rows * C);
        const auto x = randn<T>(n, ++seed, 2.0, 1.5);  // a mean far from 0
        const auto w = randn<T>(sz(C), ++seed, 0.5, 1.0);
        const auto b = randn<T>(sz(C), ++seed, 0.5);
        const auto dy = randn<T>(n, ++seed);
        const T* wp = with_w ? w.data() : nullptr;
        const T* bp = with_b ? b.data() : nullptr;
        const T eps = T(1e-5);

        std::vector<T> y(n), y0(n), mu(sz(rows)), mu0(sz(rows)), rs(sz(rows)),
            rs0(sz(rows));
        k::layernorm_forward(rows, C, x.data(), wp, bp, eps, y.data(), mu.data(), rs.data());
        k::layernorm_forward_naive(rows, C, x.data(), wp, bp, eps, y0.data(), mu0.data(),
                                   rs0.data());
        CHECK_CLOSE(y, y0, tol<T>());
        CHECK_CLOSE(mu, mu0, tol<T>());
        CHECK_CLOSE(rs, rs0, tol<T>());

        const auto dx_init = randn<T>(n, ++seed);
        const auto dw_init = randn<T>(sz(C), ++seed);
        const auto db_init = randn<T>(sz(C), ++seed);
        auto dx = dx_init, dx0 = dx_init, dw = dw_init, dw0 = dw_init, db = db_init,
             db0 = db_init;
        k::layernorm_backward(rows, C, x.data(), wp, mu0.data(), rs0.data(), dy.data(),
                              dx.data(), with_w ? dw.data() : nullptr, db.data());
        k::layernorm_backward_naive(rows, C, x.data(), wp, mu0.data(), rs0.data(), dy.data(),
                                    dx0.data(), with_w ? dw0.data() : nullptr, db0.data());
        CHECK_CLOSE(dx, dx0, tol<T>());
        if (with_w) CHECK_CLOSE(dw, dw0, tol<T>());
        CHECK_CLOSE(db, db0, tol<T>());

        // Accumulation, and each gradient alone.
        std::vector<T> dxz(n, T(0)), dwz(sz(C), T(0)), dbz(sz(C), T(0));
        k::layernorm_backward(rows, C, x.data(), wp, mu0.data(), rs0.data(), dy.data(),
                              dxz.data(), with_w ? dwz.data() : nullptr, dbz.data());
        CHECK_CLOSE(dx, plus(dx_init, dxz), tol<T>());
        CHECK_CLOSE(db, plus(db_init, dbz), tol<T>());
        if (with_w) CHECK_CLOSE(dw, plus(dw_init, dwz), tol<T>());
        std::vector<T> db_only(sz(C), T(0));
        k::layernorm_backward(rows, C, x.data(), wp, mu0.data(), rs0.data(), dy.data(),
                              static_cast<T*>(nullptr), static_cast<T*>(nullptr),
                              db_only.data());
        CHECK_CLOSE(db_only, dbz, tol<T>());
        if (with_w) {
          std::vector<T> dw_only(sz(C), T(0));
          k::layernorm_backward(rows, C, x.data(), wp, mu0.data(), rs0.data(), dy.data(),
                                static_cast<T*>(nullptr), dw_only.data(),
                                static_cast<T*>(nullptr));
          CHECK_CLOSE(dw_only, dwz, tol<T>());
        }
      }
}

TEST_CASE("layernorm: naive backward matches finite differences (double)") {
  const int64_t rows = 3, C = 7;
  const size_t n = sz(rows * C);
  auto x = randn<double>(n, 21, 1.5, 0.7);
  auto w = randn<double>(sz(C), 22, 0.5, 1.0);
  auto b = randn<double>(sz(C), 23);
  const auto R = randn<double>(n, 24);
  const double eps = 1e-5;
  auto loss = [&] {
    std::vector<double> y(n), m(sz(rows)), r(sz(rows));
    k::layernorm_forward_naive(rows, C, x.data(), w.data(), b.data(), eps, y.data(), m.data(),
                               r.data());
    return dot(R, y);
  };
  std::vector<double> y(n), mu(sz(rows)), rs(sz(rows));
  std::vector<double> dx(n, 0.0), dw(sz(C), 0.0), db(sz(C), 0.0);
  k::layernorm_forward_naive(rows, C, x.data(), w.data(), b.data(), eps, y.data(), mu.data(),
                             rs.data());
  k::layernorm_backward_naive(rows, C, x.data(), w.data(), mu.data(), rs.data(), R.data(),
                              dx.data(), dw.data(), db.data());
  CHECK_CLOSE(dx, numgrad(x, loss), 1e-7);
  CHECK_CLOSE(dw, numgrad(w, loss), 1e-7);
  CHECK_CLOSE(db, numgrad(b, loss), 1e-7);

  // Without affine parameters the normalised rows have mean 0 and variance 1 - eps-ish.
  std::vector<double> z(n);
  k::layernorm_forward_naive(rows, C, x.data(), static_cast<const double*>(nullptr),
                             static_cast<const double*>(nullptr), 0.0, z.data(), mu.data(),
                             rs.data());
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0, ss = 0;
    for (int64_t c = 0; c < C; ++c) s += z[sz(r * C + c)], ss += z[sz(r * C + c)] * z[sz(r * C + c)];
    CHECK(std::abs(s / C) < 1e-12);
    CHECK(std::abs(ss / C - 1.0) < 1e-12);
  }
}

// ======================================================================================
// RoPE
// ======================================================================================

TEST_CASE("rope: tables match the direct formula") {
  const int64_t P = 64;
  for (int64_t D : {2, 8, 64, 128}) {
    CAPTURE(D);
    const double theta = 10000.0;
    std::vector<double> c(sz(P * D)), s(sz(P * D)), c0(c.size()), s0(s.size());
    k::rope_tables<double>(P, D, theta, nullptr, 1.0, c.data(), s.data());
    k::rope_tables_naive<double>(P, D, theta, nullptr, 1.0, c0.data(), s0.data());
    CHECK(c == c0);
    CHECK(s == s0);
    double worst = 0;
    for (int64_t p = 0; p < P; ++p)
      for (int64_t j = 0; j < D; ++j) {
        const int64_t i = j % (D / 2);
        const long double ang = (long double)p * std::pow((long double)theta, -2.0L * i / D);
        worst = std::max<double>(worst, double(std::abs(c[sz(p * D + j)] - std::cos(ang))));
        worst = std::max<double>(worst, double(std::abs(s[sz(p * D + j)] - std::sin(ang))));
      }
    CHECK(worst < 1e-13);
    // Position 0 is the identity rotation.
    for (int64_t j = 0; j < D; ++j) {
      CHECK(c[sz(j)] == 1.0);
      CHECK(s[sz(j)] == 0.0);
    }
  }

  // Custom inverse frequencies and an attention scale (YaRN); float tables.
  const int64_t D = 6;
  const std::vector<double> inv = {1.0, 0.25, 0.0625};
  std::vector<float> c(sz(P * D)), s(sz(P * D)), c0(c.size()), s0(s.size());
  k::rope_tables<float>(P, D, 0.0, inv.data(), 1.25, c.data(), s.data());
  k::rope_tables_naive<float>(P, D, 0.0, inv.data(), 1.25, c0.data(), s0.data());
  CHECK(c == c0);
  CHECK(s == s0);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t j = 0; j < D; ++j) {
      const double ang = double(p) * double(inv[sz(j % 3)]);
      CHECK(c[sz(p * D + j)] == float(std::cos(ang) * 1.25));
      CHECK(s[sz(p * D + j)] == float(std::sin(ang) * 1.25));
    }

  CHECK_THROWS_WITH_AS(k::rope_tables<float>(4, 5, 1e4, nullptr, 1.0f, c.data(), s.data()),
                       doctest::Contains("rope_tables"), std::invalid_argument);
  CHECK_THROWS_AS(k::rope_tables<float>(4, 4, 0.0, nullptr, 1.0f, c.data(), s.data()),
                  std::invalid_argument);
}

TEST_CASE("rope: rotate_half pairs element i with element i + D/2") {
  // D = 4: pairs (0,2) and (1,3), frequencies inv = {a, b}.
  const int64_t D = 4, P = 3;
  const std::vector<double> inv = {0.7, 0.2};
  std::vector<double> c(sz(P * D)), s(sz(P * D));
  k::rope_tables<double>(P, D, 0.0, inv.data(), 1.0, c.data(), s.data());
  const std::vector<double> x = {1.0, 2.0, 3.0, 4.0};
  const std::vector<int64_t> pos = {2};
  std::vector<double> y(4);
  k::rope_forward<double>(1, D, x.data(), D, pos.data(), c.data(), s.data(), y.data(), D);
  const double a = 2 * 0.7, b = 2 * 0.2;  // angles at position 2
  CHECK(y[0] == doctest::Approx(1.0 * std::cos(a) - 3.0 * std::sin(a)).epsilon(1e-14));
  CHECK(y[2] == doctest::Approx(3.0 * std::cos(a) + 1.0 * std::sin(a)).epsilon(1e-14));
  CHECK(y[1] == doctest::Approx(2.0 * std::cos(b) - 4.0 * std::sin(b)).epsilon(1e-14));
  CHECK(y[3] == doctest::Approx(4.0 * std::cos(b) + 2.0 * std::sin(b)).epsilon(1e-14));
}

TEST_CASE_TEMPLATE("rope: fast forward and backward match the naive twin", T, float, double) {
  uint64_t seed = 300;
  const int64_t P = 300;
  for (int64_t D : {2, 6, 32, 64, 96, 128})
    for (int64_t n_rows : {1, 3, 64, 257, 1100}) {
      CAPTURE(D);
      CAPTURE(n_rows);
      std::vector<T> c(sz(P * D)), s(sz(P * D));
      k::rope_tables<T>(P, D, 1e6, nullptr, T(1), c.data(), s.data());
      // The kernels take any tables; the rotation checks below need real ones.
      const auto cr = randn<T>(sz(P * D), ++seed), sr = randn<T>(sz(P * D), ++seed);
      std::mt19937_64 gen(++seed);
      std::vector<int64_t> pos(sz(n_rows));
      for (auto& p : pos) p = int64_t(gen() % uint64_t(P));
      const int64_t xs = D + 3, ys = D + 1;  // padded rows, as when heads are interleaved
      const auto x = randn<T>(sz(n_rows * xs), ++seed);
      std::vector<T> y(sz(n_rows * ys), T(7)), y0 = y;
      k::rope_forward(n_rows, D, x.data(), xs, pos.data(), c.data(), s.data(), y.data(), ys);
      k::rope_forward_naive(n_rows, D, x.data(), xs, pos.data(), c.data(), s.data(), y0.data(),
                            ys);
      CHECK_CLOSE(y, y0, tol<T>());
      // The padding between rows is untouched.
      for (int64_t r = 0; r < n_rows; ++r) CHECK(y[sz(r * ys + D)] == T(7));

      // A rotation keeps every row's norm.
      double worst = 0;
      for (int64_t r = 0; r < n_rows; ++r) {
        double nx = 0, ny = 0;
        for (int64_t j = 0; j < D; ++j)
          nx += double(x[sz(r * xs + j)]) * double(x[sz(r * xs + j)]),
              ny += double(y[sz(r * ys + j)]) * double(y[sz(r * ys + j)]);
        worst = std::max(worst, std::abs(std::sqrt(ny) - std::sqrt(nx)) / (std::sqrt(nx) + 1e-30));
      }
      CHECK(worst < tol<T>());

      // In place (y == x, same stride).
      auto xin = x;
      k::rope_forward(n_rows, D, xin.data(), xs, pos.data(), c.data(), s.data(), xin.data(), xs);
      std::vector<T> yx(xin.size());
      k::rope_forward_naive(n_rows, D, x.data(), xs, pos.data(), c.data(), s.data(), yx.data(),
                            xs);
      double worst_inplace = 0;
      for (int64_t r = 0; r < n_rows; ++r)
        for (int64_t j = 0; j < D; ++j)
          worst_inplace = std::max(
              worst_inplace, std::abs(double(xin[sz(r * xs + j)]) - double(yx[sz(r * xs + j)])));
      CHECK(worst_inplace < 10 * tol<T>());

      // Backward accumulates into a pre-filled dx.
      const auto dy = randn<T>(sz(n_rows * ys), ++seed);
      const auto dx_init = randn<T>(sz(n_rows * xs), ++seed);
      auto dx = dx_init, dx0 = dx_init;
      k::rope_backward(n_rows, D, dy.data(), ys, pos.data(), c.data(), s.data(), dx.data(), xs);
      k::rope_backward_naive(n_rows, D, dy.data(), ys, pos.data(), c.data(), s.data(),
                             dx0.data(), xs);
      CHECK_CLOSE(dx, dx0, tol<T>());
      std::vector<T> dxz(dx.size(), T(0));
      k::rope_backward(n_rows, D, dy.data(), ys, pos.data(), c.data(), s.data(), dxz.data(), xs);
      CHECK_CLOSE(dx, plus(dx_init, dxz), tol<T>());

      // General tables (halves differ).
      k::rope_forward(n_rows, D, x.data(), xs, pos.data(), cr.data(), sr.data(), y.data(), ys);
      k::rope_forward_naive(n_rows, D, x.data(), xs, pos.data(), cr.data(), sr.data(),
                            y0.data(), ys);
      CHECK_CLOSE(y, y0, tol<T>());
      k::rope_backward(n_rows, D, dy.data(), ys, pos.data(), cr.data(), sr.data(), dx.data(), xs);
      k::rope_backward_naive(n_rows, D, dy.data(), ys, pos.data(), cr.data(), sr.data(),
                             dx0.data(), xs);
      CHECK_CLOSE(dx, dx0, tol<T>());
    }
}

TEST_CASE("rope: naive backward is the adjoint and matches finite differences (double)") {
  const int64_t D = 8, n_rows = 5, P = 10;
  // Arbitrary tables, not a rotation and with different halves (cos_i != cos_{i+D/2}), so
  // every index of the general formula is exercised.
  const auto c = randn<double>(sz(P * D), 33), s = randn<double>(sz(P * D), 34);
  const std::vector<int64_t> pos = {0, 3, 9, 3, 7};
  auto x = randn<double>(sz(n_rows * D), 31);
  const auto R = randn<double>(sz(n_rows * D), 32);
  auto loss = [&] {
    std::vector<double> y(x.size());
    k::rope_forward_naive(n_rows, D, x.data(), D, pos.data(), c.data(), s.data(), y.data(), D);
    return dot(R, y);
  };
  std::vector<double> dx(x.size(), 0.0);
  k::rope_backward_naive(n_rows, D, R.data(), D, pos.data(), c.data(), s.data(), dx.data(), D);
  CHECK_CLOSE(dx, numgrad(x, loss), 1e-8);
  // <R, rope(x)> == <rope^T(R), x>
  CHECK(loss() == doctest::Approx(dot(dx, x)).epsilon(1e-13));
}

TEST_CASE("rope: argument errors") {
  std::vector<float> x(16), c(16), s(16);
  std::vector<int64_t> pos = {0, -1};
  CHECK_THROWS_WITH_AS(k::rope_forward<float>(2, 3, x.data(), 3, pos.data(), c.data(), s.data(),
                                              x.data(), 3),
                       doctest::Contains("D must be even"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(k::rope_forward<float>(2, 4, x.data(), 4, pos.data(), c.data(), s.data(),
                                              x.data(), 4),
                       doctest::Contains("pos[1] = -1"), std::invalid_argument);
  pos[1] = 1;
  CHECK_THROWS_WITH_AS(k::rope_backward<float>(2, 4, x.data(), 2, pos.data(), c.data(),
                                               s.data(), x.data(), 4),
                       doctest::Contains("rope_backward"), std::invalid_argument);
}

// ======================================================================================
// SwiGLU
// ======================================================================================

TEST_CASE_TEMPLATE("swiglu: fast forward and backward match the naive twin", T, float, double) {
  uint64_t seed = 500;
  for (int64_t n : {1, 7, 24, 100, 2053, 50001}) {
    CAPTURE(n);
    auto g = randn<T>(sz(n), ++seed, 3.0);
    if (n > 10) g[3] = T(-120), g[5] = T(120), g[7] = T(0);  // saturated and zero gates
    const auto u = randn<T>(sz(n), ++seed);
    const auto dy = randn<T>(sz(n), ++seed);
    std::vector<T> y(sz(n)), y0(sz(n));
    k::swiglu_forward(n, g.data(), u.data(), y.data());
    k::swiglu_forward_naive(n, g.data(), u.data(), y0.data());
    CHECK_CLOSE(y, y0, tol<T>());

    const auto dg_init = randn<T>(sz(n), ++seed), du_init = randn<T>(sz(n), ++seed);
    auto dg = dg_init, dg0 = dg_init, du = du_init, du0 = du_init;
    k::swiglu_backward(n, g.data(), u.data(), dy.data(), dg.data(), du.data());
    k::swiglu_backward_naive(n, g.data(), u.data(), dy.data(), dg0.data(), du0.data());
    CHECK_CLOSE(dg, dg0, tol<T>());
    CHECK_CLOSE(du, du0, tol<T>());
    for (T v : dg) CHECK(std::isfinite(double(v)));

    std::vector<T> dgz(sz(n), T(0)), duz(sz(n), T(0));
    k::swiglu_backward(n, g.data(), u.data(), dy.data(), dgz.data(), static_cast<T*>(nullptr));
    k::swiglu_backward(n, g.data(), u.data(), dy.data(), static_cast<T*>(nullptr), duz.data());
    CHECK_CLOSE(dg, plus(dg_init, dgz), tol<T>());
    CHECK_CLOSE(du, plus(du_init, duz), tol<T>());
  }
}

TEST_CASE("swiglu: naive backward matches finite differences (double)") {
  const int64_t n = 13;
  auto g = randn<double>(sz(n), 41, 2.5);
  auto u = randn<double>(sz(n), 42);
  const auto R = randn<double>(sz(n), 43);
  auto loss = [&] {
    std::vector<double> y(sz(n));
    k::swiglu_forward_naive(n, g.data(), u.data(), y.data());
    return dot(R, y);
  };
  std::vector<double> dg(sz(n), 0.0), du(sz(n), 0.0);
  k::swiglu_backward_naive(n, g.data(), u.data(), R.data(), dg.data(), du.data());
  CHECK_CLOSE(dg, numgrad(g, loss), 1e-7);
  CHECK_CLOSE(du, numgrad(u, loss), 1e-7);
  // silu(x) = x * sigmoid(x), checked at a point by hand: silu(1) = 1 / (1 + e^-1).
  const double one = 1.0, two = 2.0;
  double y = 0;
  k::swiglu_forward_naive<double>(1, &one, &two, &y);
  CHECK(y == doctest::Approx(2.0 / (1.0 + std::exp(-1.0))).epsilon(1e-15));
}

TEST_CASE_TEMPLATE("sigmoid_gate: fast forward and backward match the naive twin", T, float,
                   double) {
  uint64_t seed = 700;
  for (int64_t n : {1, 7, 24, 100, 2053, 50001}) {
    CAPTURE(n);
    const auto x = randn<T>(sz(n), ++seed);
    auto s = randn<T>(sz(n), ++seed, 3.0);
    if (n > 10) s[3] = T(-120), s[5] = T(120), s[7] = T(0);  // saturated and half-open gates
    const auto dy = randn<T>(sz(n), ++seed);
    std::vector<T> y(sz(n)), y0(sz(n));
    k::sigmoid_gate_forward(n, x.data(), s.data(), y.data());
    k::sigmoid_gate_forward_naive(n, x.data(), s.data(), y0.data());
    CHECK_CLOSE(y, y0, tol<T>());

    const auto dx_init = randn<T>(sz(n), ++seed), ds_init = randn<T>(sz(n), ++seed);
    auto dx = dx_init, dx0 = dx_init, ds = ds_init, ds0 = ds_init;
    k::sigmoid_gate_backward(n, x.data(), s.data(), dy.data(), dx.data(), ds.data());
    k::sigmoid_gate_backward_naive(n, x.data(), s.data(), dy.data(), dx0.data(), ds0.data());
    CHECK_CLOSE(dx, dx0, tol<T>());
    CHECK_CLOSE(ds, ds0, tol<T>());
    for (T v : ds) CHECK(std::isfinite(double(v)));

    std::vector<T> dxz(sz(n), T(0)), dsz(sz(n), T(0));
    k::sigmoid_gate_backward(n, x.data(), s.data(), dy.data(), dxz.data(), static_cast<T*>(nullptr));
    k::sigmoid_gate_backward(n, x.data(), s.data(), dy.data(), static_cast<T*>(nullptr), dsz.data());
    CHECK_CLOSE(dx, plus(dx_init, dxz), tol<T>());
    CHECK_CLOSE(ds, plus(ds_init, dsz), tol<T>());
  }
}

TEST_CASE("sigmoid_gate: naive backward matches finite differences (double)") {
  const int64_t n = 13;
  auto x = randn<double>(sz(n), 51);
  auto s = randn<double>(sz(n), 52, 2.5);
  const auto R = randn<double>(sz(n), 53);
  auto loss = [&] {
    std::vector<double> y(sz(n));
    k::sigmoid_gate_forward_naive(n, x.data(), s.data(), y.data());
    return dot(R, y);
  };
  std::vector<double> dx(sz(n), 0.0), ds(sz(n), 0.0);
  k::sigmoid_gate_backward_naive(n, x.data(), s.data(), R.data(), dx.data(), ds.data());
  CHECK_CLOSE(dx, numgrad(x, loss), 1e-7);
  CHECK_CLOSE(ds, numgrad(s, loss), 1e-7);
  // At s = 0 the gate is one half: y = x / 2.
  const double three = 3.0, zero = 0.0;
  double y = 0;
  k::sigmoid_gate_forward_naive<double>(1, &three, &zero, &y);
  CHECK(y == 1.5);
}

// ======================================================================================
// Embedding
// ======================================================================================

TEST_CASE_TEMPLATE("embedding: fast gather and scatter-add equal the naive twin bitwise", T,
                   float, double) {
  uint64_t seed = 700;
  // (N, V, C): small; odd; wide C (column slices when threaded); narrow C with many
  // tokens (vocabulary slices when threaded); the baby model's (2048 tokens, 256, 384).
  const int64_t shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {64, 11, 1000}, {5000, 37, 7},
                               {2048, 256, 384}};
  for (int threads : {1, 2, 3})
    for (const auto& sh : shapes) {
      const int64_t N = sh[0], V = sh[1], C = sh[2];
      CAPTURE(threads);
      CAPTURE(N);
      CAPTURE(V);
      CAPTURE(C);
      std::mt19937_64 gen(++seed);
      std::vector<int64_t> ids(sz(N));
      for (auto& i : ids) i = int64_t(gen() % uint64_t(V));  // repeats when N > V
      const auto W = randn<T>(sz(V * C), ++seed);
      const auto dy = randn<T>(sz(N * C), ++seed);
      const auto dW_init = randn<T>(sz(V * C), ++seed);
      with_threads(threads, [&] {
        std::vector<T> y(sz(N * C)), y0(sz(N * C));
        k::embedding_forward(N, V, C, ids.data(), W.data(), y.data());
        k::embedding_forward_naive(N, V, C, ids.data(), W.data(), y0.data());
        CHECK(y == y0);
        auto dW = dW_init, dW0 = dW_init;
        k::embedding_backward(N, V, C, ids.data(), dy.data(), dW.data());
        k::embedding_backward_naive(N, V, C, ids.data(), dy.data(), dW0.data());
        CHECK(dW == dW0);
      });
    }
}

TEST_CASE("embedding: naive backward matches finite differences (double)") {
  const int64_t N = 6, V = 4, C = 3;
  const std::vector<int64_t> ids = {2, 0, 2, 3, 2, 0};  // id 1 unused, id 2 three times
  auto W = randn<double>(sz(V * C), 51);
  const auto R = randn<double>(sz(N * C), 52);
  auto loss = [&] {
    std::vector<double> y(sz(N * C));
    k::embedding_forward_naive(N, V, C, ids.data(), W.data(), y.data());
    return dot(R, y);
  };
  std::vector<double> dW(sz(V * C), 0.0);
  k::embedding_backward_naive(N, V, C, ids.data(), R.data(), dW.data());
  CHECK_CLOSE(dW, numgrad(W, loss), 1e-8);
  for (int64_t c = 0; c < C; ++c) CHECK(dW[sz(1 * C + c)] == 0.0);
}

TEST_CASE("embedding: an id outside 0..V-1 is an error naming the position and the id") {
  const int64_t N = 4, V = 5, C = 2;
  std::vector<float> W(sz(V * C), 1.0f), y(sz(N * C), -3.0f);
  const std::vector<int64_t> bad = {0, 4, 9, 1};
  try {
    k::embedding_forward(N, V, C, bad.data(), W.data(), y.data());
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("embedding_forward") != std::string::npos);
    CHECK(msg.find("id 9") != std::string::npos);
    CHECK(msg.find("position 2") != std::string::npos);
  }
  for (float v : y) CHECK(v == -3.0f);  // nothing written
  const std::vector<int64_t> neg = {-1, 0, 0, 0};
  CHECK_THROWS_WITH_AS(k::embedding_backward(N, V, C, neg.data(), y.data(), W.data()),
                       doctest::Contains("id -1 at position 0"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(k::embedding_forward_naive(N, V, C, bad.data(), W.data(), y.data()),
                       doctest::Contains("id 9 at position 2"), std::invalid_argument);
}

// ======================================================================================
// Determinism
// ======================================================================================

TEST_CASE("layer kernels: bitwise identical from run to run at a fixed thread count") {
  const int64_t rows = 513, C = 384, n = rows * C;  // above every parallel threshold
  const auto x = randn<float>(sz(n), 61, 1.0, 0.2);
  const auto w = randn<float>(sz(C), 62, 0.3, 1.0);
  const auto b = randn<float>(sz(C), 63);
  const auto dy = randn<float>(sz(n), 64);
  for (int threads : {2, 3}) {
    CAPTURE(threads);
    with_threads(threads, [&] {
      auto run = [&] {
        std::vector<std::vector<float>> out;
        std::vector<float> y(sz(n)), m(sz(rows)), r(sz(rows)), dx(sz(n), 0.f),
            dw(sz(C), 0.f), db(sz(C), 0.f);
        k::rmsnorm_forward(rows, C, x.data(), w.data(), 1e-6f, y.data(), r.data());
        k::rmsnorm_backward(rows, C, x.data(), w.data(), r.data(), dy.data(), dx.data(),
                            dw.data());
        out.push_back(y), out.push_back(dx), out.push_back(dw);
        std::fill(dx.begin(), dx.end(), 0.f);
        std::fill(dw.begin(), dw.end(), 0.f);
        k::layernorm_forward(rows, C, x.data(), w.data(), b.data(), 1e-5f, y.data(), m.data(),
                             r.data());
        k::layernorm_backward(rows, C, x.data(), w.data(), m.data(), r.data(), dy.data(),
                              dx.data(), dw.data(), db.data());
        out.push_back(y), out.push_back(dx), out.push_back(dw), out.push_back(db);
        std::vector<float> dg(sz(n), 0.f), du(sz(n), 0.f);
        k::swiglu_forward(n, x.data(), dy.data(), y.data());
        k::swiglu_backward(n, x.data(), dy.data(), dy.data(), dg.data(), du.data());
        out.push_back(y), out.push_back(dg), out.push_back(du);
        auto p = x, m1 = std::vector<float>(sz(n), 0.f), v1 = m1;
        for (int64_t step = 1; step <= 2; ++step)
          k::adamw_step(n, p.data(), dy.data(), m1.data(), v1.data(), 1e-3, 0.9, 0.95, 1e-8,
                        0.1, step);
        out.push_back(p);
        return out;
      };
      const auto a = run(), bb = run();
      REQUIRE(a.size() == bb.size());
      for (size_t i = 0; i < a.size(); ++i) {
        CAPTURE(i);
        CHECK(a[i] == bb[i]);
      }
    });
  }
}

// ======================================================================================
// AdamW and SGD
// ======================================================================================

namespace {
// The textbook AdamW step in long double (Loshchilov & Hutter, with PyTorch's placement
// of eps): p *= 1 - lr*wd; m, v moving averages; p -= lr * mhat / (sqrt(vhat) + eps).
struct AdamRef {
  long double p, m = 0, v = 0;
  void step(long double g, long double lr, long double b1, long double b2, long double eps,
            long double wd, int t) {
    p *= 1 - lr * wd;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const long double mhat = m / (1 - std::pow(b1, (long double)t));
    const long double vhat = v / (1 - std::pow(b2, (long double)t));
    p -= lr * mhat / (std::sqrt(vhat) + eps);
  }
};

// PyTorch 1.13's _single_tensor_adamw for one element, op by op in T, with the roundings
// PyTorch's CPU kernels make (see adamw.hpp): add_ with alpha and addcmul_ are fused
// multiply-adds, mul_ is rounded on its own (volatile keeps the compiler from fusing it
// into the next add).
template <class T>
void adam_torch_order(T& p, T& m, T& v, T g, double lr, double b1, double b2, double eps,
                      double wd, int t) {
  volatile T pd = p * T(1 - lr * wd);                        // param.mul_(1 - lr*wd)
  m = std::fma(T(1 - b1), g, m * T(b1));                     // exp_avg.mul_(b1).add_(g, alpha=1-b1)
  v = std::fma(T(1 - b2) * g, g, v * T(b2));                 // exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2)
  const double bc1 = 1 - std::pow(b1, double(t)), bc2 = 1 - std::pow(b2, double(t));
  const T denom = std::sqrt(v) / T(std::sqrt(bc2)) + T(eps);  // (v.sqrt() / sqrt(bc2)).add_(eps)
  p = pd + (T(-(lr / bc1)) * m) / denom;                     // param.addcdiv_(m, denom, value=-lr/bc1)
}
}  // namespace

TEST_CASE_TEMPLATE("adamw: steps match the textbook formula, PyTorch's rounding, and the twin",
                   T, float, double) {
  const int64_t n = 4096 + 37;  // vector body, several OpenMP blocks, scalar tail
  auto p = randn<T>(sz(n), 71), p0 = p, pt = p;
  std::vector<T> m(sz(n), T(0)), v(sz(n), T(0)), m0 = m, v0 = v, mt = m, vt = v;
  std::vector<AdamRef> ref;
  for (T x : p) ref.push_back(AdamRef{x});
  const double lr = 3e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  for (int t = 1; t <= 6; ++t) {
    const auto g = randn<T>(sz(n), 80 + uint64_t(t), 0.5);
    k::adamw_step(n, p.data(), g.data(), m.data(), v.data(), lr, b1, b2, eps, wd, t);
    k::adamw_step_naive(n, p0.data(), g.data(), m0.data(), v0.data(), lr, b1, b2, eps, wd, t);
    for (size_t i = 0; i < sz(n); ++i) {
      ref[i].step(g[i], lr, b1, b2, eps, wd, t);
      adam_torch_order(pt[i], mt[i], vt[i], g[i], lr, b1, b2, eps, wd, t);
    }
  }
  // Same maths as the textbook, up to round-off.
  std::vector<T> pr, mr, vr;
  for (auto& r : ref) pr.push_back(T(r.p)), mr.push_back(T(r.m)), vr.push_back(T(r.v));
  CHECK_CLOSE(p, pr, sizeof(T) == 4 ? 1e-5 : 1e-14);
  CHECK_CLOSE(m, mr, sizeof(T) == 4 ? 1e-5 : 1e-14);
  CHECK_CLOSE(v, vr, sizeof(T) == 4 ? 1e-5 : 1e-14);
  // Same roundings as PyTorch, and fast and naive agree, bit for bit.
  CHECK(p == pt);
  CHECK(m == mt);
  CHECK(v == vt);
  CHECK(p == p0);
  CHECK(m == m0);
  CHECK(v == v0);
}

TEST_CASE_TEMPLATE("adamw: fast equals naive on large parameters", T, float, double) {
  for (int64_t n : {1, 15, 4096 + 17, 100003}) {
    CAPTURE(n);
    auto p = randn<T>(sz(n), 91), p0 = p;
    auto m = randn<T>(sz(n), 92, 0.1), m0 = m;
    auto v = randn<T>(sz(n), 93, 0.01);
    for (auto& x : v) x = x * x;
    auto v0 = v;
    const auto g = randn<T>(sz(n), 94);
    k::adamw_step(n, p.data(), g.data(), m.data(), v.data(), 1e-3, 0.9, 0.999, 1e-8, 0.01, 7);
    k::adamw_step_naive(n, p0.data(), g.data(), m0.data(), v0.data(), 1e-3, 0.9, 0.999, 1e-8,
                        0.01, 7);
    CHECK(p == p0);
    CHECK(m == m0);
    CHECK(v == v0);
  }
}

TEST_CASE("adamw and sgd: bad hyper-parameters are errors") {
  std::vector<float> p(4), g(4), m(4), v(4);
  CHECK_THROWS_WITH_AS(k::adamw_step<float>(4, p.data(), g.data(), m.data(), v.data(), 1e-3,
                                            0.9, 0.999, 1e-8, 0.0, 0),
                       doctest::Contains("step is 1-based"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(k::adamw_step<float>(4, p.data(), g.data(), m.data(), v.data(), 1e-3,
                                            1.0, 0.999, 1e-8, 0.0, 1),
                       doctest::Contains("beta1"), std::invalid_argument);
  CHECK_THROWS_AS(k::adamw_step<float>(4, p.data(), g.data(), m.data(), v.data(), -1.0, 0.9,
                                       0.999, 1e-8, 0.0, 1),
                  std::invalid_argument);
  CHECK_THROWS_WITH_AS(k::sgd_step<float>(4, p.data(), g.data(), m.data(), 0.1, 0.9, 0.1, 0.0,
                                          true, false),
                       doctest::Contains("nesterov"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(k::sgd_step<float>(4, p.data(), g.data(), nullptr, 0.1, 0.9, 0.0, 0.0,
                                          false, true),
                       doctest::Contains("sgd_step"), std::invalid_argument);
}

TEST_CASE_TEMPLATE("sgd: steps match the textbook formula, PyTorch's rounding, and the twin", T,
                   float, double) {
  struct Cfg {
    double momentum, dampening, wd;
    bool nesterov;
  };
  const Cfg cfgs[] = {{0, 0, 0, false}, {0, 0, 0.01, false}, {0.9, 0, 0, false},
                      {0.9, 0.1, 0.01, false}, {0.9, 0, 0.01, true}};
  const int64_t n = 4096 + 19;
  for (const auto& cf : cfgs) {
    CAPTURE(cf.momentum);
    CAPTURE(cf.dampening);
    CAPTURE(cf.wd);
    CAPTURE(cf.nesterov);
    auto p = randn<T>(sz(n), 101), p0 = p, pt = p;
    std::vector<T> buf(sz(n), T(0)), buf0 = buf, buft = buf;
    std::vector<long double> pr(p.begin(), p.end()), br(sz(n), 0.0L);
    const double lr = 0.05;
    for (int t = 1; t <= 4; ++t) {
      const auto g = randn<T>(sz(n), 110 + uint64_t(t));
      T* bp = cf.momentum != 0 ? buf.data() : nullptr;
      T* bp0 = cf.momentum != 0 ? buf0.data() : nullptr;
      k::sgd_step<T>(n, p.data(), g.data(), bp, lr, cf.momentum, cf.dampening, cf.wd,
                     cf.nesterov, t == 1);
      k::sgd_step_naive<T>(n, p0.data(), g.data(), bp0, lr, cf.momentum, cf.dampening, cf.wd,
                           cf.nesterov, t == 1);
      for (size_t i = 0; i < sz(n); ++i) {
        // Textbook SGD with momentum, in long double.
        long double d = (long double)g[i] + (long double)cf.wd * pr[i];
        if (cf.momentum != 0) {
          br[i] = (t == 1) ? d : cf.momentum * br[i] + (1 - (long double)cf.dampening) * d;
          d = cf.nesterov ? d + cf.momentum * br[i] : br[i];
        }
        pr[i] -= lr * d;
        // PyTorch's _single_tensor_sgd in T: every `add(x, alpha=a)` is fma(a, x, .).
        T dt = g[i];
        if (cf.wd != 0) dt = std::fma(T(cf.wd), pt[i], dt);
        if (cf.momentum != 0) {
          buft[i] = (t == 1) ? dt : std::fma(T(1 - cf.dampening), dt, buft[i] * T(cf.momentum));
          dt = cf.nesterov ? std::fma(T(cf.momentum), buft[i], dt) : buft[i];
        }
        pt[i] = std::fma(T(-lr), dt, pt[i]);
      }
    }
    std::vector<T> prt(pr.begin(), pr.end());
    CHECK_CLOSE(p, prt, sizeof(T) == 4 ? 1e-5 : 1e-14);
    CHECK(p == pt);
    CHECK(p == p0);
    if (cf.momentum != 0) CHECK(buf == buft);
    if (cf.momentum != 0) CHECK(buf == buf0);
  }
}
