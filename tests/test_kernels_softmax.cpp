// tests/test_kernels_softmax.cpp — softmax, log-softmax and cross-entropy
// kernels (autograd/kernels/softmax.hpp) against their naive twins in float
// and double; the fully-masked-row rules (Note [Fully masked rows]);
// single-element rows; huge logits; ignore_index and bad targets; the naive
// backward formulas against central finite differences in double; results
// independent of the thread count.
//
// Not here: the ops that call these kernels (their gradchecks live with the
// ops), attention's online softmax.
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

#include "autograd/kernels/parallel.hpp"
#include "autograd/kernels/softmax.hpp"
#include "kernel_test_util.hpp"

using namespace tg::kernels;
using namespace tg::testing;

namespace {

struct Shape {
  int64_t rows, n;
};
// Empty both ways, single elements, rows shorter than a vector, odd lengths,
// many short rows (threaded), a few very long rows, the model's logits shape.
const Shape kShapes[] = {{0, 5},     {4, 0},   {1, 1},      {9, 1},     {3, 7},
                         {5, 31},    {64, 1000}, {3, 100003}, {2048, 256}};

// Logits in [-20, 20] with every 9th entry masked to -inf (never a whole row
// unless n == 1... which is then kept finite).
template <class T>
std::vector<T> masked_logits(int64_t rows, int64_t n, uint64_t seed) {
  auto x = uniform<T>(rows * n, -20, 20, seed);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 1; j < n; j += 9) x[sz(r * n + j)] = -std::numeric_limits<T>::infinity();
  return x;
}

template <class T>
constexpr double rtol_for() {
  return std::is_same_v<T, float> ? 1e-6 : 1e-14;
}
// For kernels that sum a row: in double there is no wider accumulator, so
// two summation orders differ by ~eps·√n.
template <class T>
double rtol_rows(int64_t n) {
  return std::is_same_v<T, float> ? 1e-6 : 1e-14 + 4e-16 * std::sqrt(double(n));
}
template <class T>
constexpr double atol_for() {
  return 1e6 * double(std::numeric_limits<T>::min());
}

std::string shape_str(int64_t rows, int64_t n) {
  return "(" + std::to_string(rows) + "," + std::to_string(n) + ")";
}

// Targets in [0, V) with every 5th row ignored (kIgnoreIndex).
std::vector<int64_t> targets_for(int64_t N, int64_t V, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int64_t> t(sz(N));
  for (int64_t i = 0; i < N; ++i) t[sz(i)] = (i % 5 == 3 || V == 0) ? kIgnoreIndex : int64_t(g() % uint64_t(V));
  return t;
}

}  // namespace

// ============================================================================
// softmax and log_softmax against the naive twins
// ============================================================================

TEST_CASE_TEMPLATE("softmax and log_softmax forward match the naive twins", T, float, double) {
  Threads th(2);
  for (const Shape& sh : kShapes) {
    const auto x = masked_logits<T>(sh.rows, sh.n, 100 + uint64_t(sh.rows * sh.n));
    std::vector<T> a(x.size()), b(x.size());
    softmax_forward(sh.rows, sh.n, x.data(), a.data());
    softmax_forward_naive(sh.rows, sh.n, x.data(), b.data());
    check_close(a, b, rtol_rows<T>(sh.n), atol_for<T>(), "softmax " + shape_str(sh.rows, sh.n));

    log_softmax_forward(sh.rows, sh.n, x.data(), a.data());
    log_softmax_forward_naive(sh.rows, sh.n, x.data(), b.data());
    // y = (x - m) - log Σ: its rounding is absolute, relative to
    // |x - m| + |log Σ| + 1 (log of a sum >= 1), and log Σ = -max_j y_j.
    std::vector<double> scale(x.size());
    for (int64_t r = 0; r < sh.rows; ++r) {
      double ls = 0.0;
      if (sh.n > 0) ls = -double(*std::max_element(b.begin() + r * sh.n, b.begin() + (r + 1) * sh.n));
      for (int64_t j = 0; j < sh.n; ++j) scale[sz(r * sh.n + j)] = std::abs(double(b[sz(r * sh.n + j)])) + 2 * std::abs(ls) + 1.0;
    }
    check_close(a, b, rtol_rows<T>(sh.n), atol_for<T>(), "log_softmax " + shape_str(sh.rows, sh.n), &scale);

    // y may alias x.
    auto inplace = x;
    softmax_forward(sh.rows, sh.n, inplace.data(), inplace.data());
    std::vector<T> outplace(x.size());
    softmax_forward(sh.rows, sh.n, x.data(), outplace.data());
    CHECK(same_bits(inplace, outplace));
  }
}

TEST_CASE_TEMPLATE("softmax and log_softmax backward match the naive twins and accumulate", T, float, double) {
  Threads th(2);
  for (const Shape& sh : kShapes) {
    const auto x = masked_logits<T>(sh.rows, sh.n, 200 + uint64_t(sh.rows * sh.n));
    const auto dy = uniform<T>(sh.rows * sh.n, -1, 1, 300 + uint64_t(sh.rows * sh.n));
    const auto dx0 = uniform<T>(sh.rows * sh.n, -1, 1, 400 + uint64_t(sh.rows * sh.n));
    std::vector<T> y(x.size());
    std::vector<double> scale(x.size());

    softmax_forward_naive(sh.rows, sh.n, x.data(), y.data());
    auto a = dx0, b = dx0;
    softmax_backward(sh.rows, sh.n, y.data(), dy.data(), a.data());
    softmax_backward_naive(sh.rows, sh.n, y.data(), dy.data(), b.data());
    for (int64_t r = 0; r < sh.rows; ++r) {
      double dot = 0.0;
      for (int64_t j = 0; j < sh.n; ++j) dot += std::abs(double(dy[sz(r * sh.n + j)]) * double(y[sz(r * sh.n + j)]));
      for (int64_t j = 0; j < sh.n; ++j) {
        const std::size_t i = sz(r * sh.n + j);
        scale[i] = std::abs(double(dx0[i])) + std::abs(double(y[i])) * (std::abs(double(dy[i])) + dot);
      }
    }
    check_close(a, b, rtol_rows<T>(sh.n), atol_for<T>(), "softmax_backward " + shape_str(sh.rows, sh.n), &scale);
    // Accumulates: from dx0 = dx0 + (from zero), up to one rounding.
    std::vector<T> z(x.size(), T(0));
    softmax_backward(sh.rows, sh.n, y.data(), dy.data(), z.data());
    std::vector<T> sum(x.size());
    std::vector<double> sscale(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      sum[i] = dx0[i] + z[i];
      sscale[i] = std::abs(double(dx0[i])) + std::abs(double(z[i]));
    }
    check_close(a, sum, 2 * std::numeric_limits<T>::epsilon(), 0.0, "softmax_backward accumulates", &sscale);

    log_softmax_forward_naive(sh.rows, sh.n, x.data(), y.data());
    a = dx0;
    b = dx0;
    log_softmax_backward(sh.rows, sh.n, y.data(), dy.data(), a.data());
    log_softmax_backward_naive(sh.rows, sh.n, y.data(), dy.data(), b.data());
    for (int64_t r = 0; r < sh.rows; ++r) {
      double sdy = 0.0;
      for (int64_t j = 0; j < sh.n; ++j) sdy += std::abs(double(dy[sz(r * sh.n + j)]));
      for (int64_t j = 0; j < sh.n; ++j) {
        const std::size_t i = sz(r * sh.n + j);
        scale[i] = std::abs(double(dx0[i])) + std::abs(double(dy[i])) + std::exp(double(y[i])) * sdy;
      }
    }
    check_close(a, b, rtol_rows<T>(sh.n), atol_for<T>(), "log_softmax_backward " + shape_str(sh.rows, sh.n), &scale);
  }
}

// ============================================================================
// edge cases
// ============================================================================

TEST_CASE_TEMPLATE("fully masked rows: softmax zeros, log_softmax -inf, backward adds nothing", T, float, double) {
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t n : {1, 7, 40}) {
    // Row 1 of 3 is all -inf; rows 0 and 2 are ordinary.
    auto x = uniform<T>(3 * n, -3, 3, 7);
    for (int64_t j = 0; j < n; ++j) x[sz(n + j)] = ninf;
    const auto dy = uniform<T>(3 * n, -1, 1, 8);
    const auto dx0 = uniform<T>(3 * n, -1, 1, 9);
    for (int variant = 0; variant < 2; ++variant) {  // fast, naive
      std::vector<T> y(x.size()), ly(x.size());
      if (variant == 0) {
        softmax_forward(3, n, x.data(), y.data());
        log_softmax_forward(3, n, x.data(), ly.data());
      } else {
        softmax_forward_naive(3, n, x.data(), y.data());
        log_softmax_forward_naive(3, n, x.data(), ly.data());
      }
      for (int64_t j = 0; j < n; ++j) {
        CHECK(y[sz(n + j)] == T(0));
        CHECK(ly[sz(n + j)] == ninf);
        CHECK(std::isfinite(y[sz(j)]));
        CHECK(std::isfinite(ly[sz(2 * n + j)]));
      }
      auto dxs = dx0, dxl = dx0;
      if (variant == 0) {
        softmax_backward(3, n, y.data(), dy.data(), dxs.data());
        log_softmax_backward(3, n, ly.data(), dy.data(), dxl.data());
      } else {
        softmax_backward_naive(3, n, y.data(), dy.data(), dxs.data());
        log_softmax_backward_naive(3, n, ly.data(), dy.data(), dxl.data());
      }
      for (int64_t j = 0; j < n; ++j) {
        CHECK(dxs[sz(n + j)] == dx0[sz(n + j)]);
        CHECK(dxl[sz(n + j)] == dx0[sz(n + j)]);
      }
      // The ordinary rows did get a gradient.
      if (n > 1) CHECK(dxl[0] != dx0[0]);
    }
  }
}

TEST_CASE_TEMPLATE("single-element rows, partly masked rows, NaN and +inf", T, float, double) {
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  // (rows, 1): softmax is exactly 1, log_softmax exactly 0, and both backwards add 0.
  const auto x = uniform<T>(9, -1e4, 1e4, 3);
  const auto dy = uniform<T>(9, -1, 1, 4);
  std::vector<T> y(9), ly(9), dx(9, T(0.25)), dxl(9, T(0.25));
  softmax_forward(9, 1, x.data(), y.data());
  log_softmax_forward(9, 1, x.data(), ly.data());
  softmax_backward(9, 1, y.data(), dy.data(), dx.data());
  log_softmax_backward(9, 1, ly.data(), dy.data(), dxl.data());
  for (int i = 0; i < 9; ++i) {
    CHECK(y[sz(i)] == T(1));
    CHECK(ly[sz(i)] == T(0));
    CHECK(dx[sz(i)] == T(0.25));
    CHECK(dxl[sz(i)] == T(0.25));
  }
  // A row with one finite entry among -inf: a one-hot.
  std::vector<T> row(37, -inf), out(37);
  row[20] = T(-5);
  softmax_forward(1, 37, row.data(), out.data());
  for (int j = 0; j < 37; ++j) CHECK(out[sz(j)] == T(j == 20 ? 1 : 0));
  log_softmax_forward(1, 37, row.data(), out.data());
  for (int j = 0; j < 37; ++j) CHECK(out[sz(j)] == (j == 20 ? T(0) : -inf));
  // NaN anywhere or +inf: the whole row is NaN (as in PyTorch); other rows untouched.
  for (T bad : {nan, inf}) {
    std::vector<T> two(2 * 37, T(1)), o(2 * 37), on(2 * 37);
    two[33] = bad;  // in the tail of row 0
    softmax_forward(2, 37, two.data(), o.data());
    softmax_forward_naive(2, 37, two.data(), on.data());
    for (int j = 0; j < 37; ++j) {
      CHECK(std::isnan(o[sz(j)]));
      CHECK(std::isnan(on[sz(j)]));
      CHECK(o[sz(37 + j)] == doctest::Approx(1.0 / 37));
    }
    log_softmax_forward(2, 37, two.data(), o.data());
    for (int j = 0; j < 37; ++j) CHECK(std::isnan(o[sz(j)]));
  }
}

TEST_CASE_TEMPLATE("huge logits stay finite and exact", T, float, double) {
  // Logits of size 1e4 (and gaps of 2e4) overflow a naive exp; taken
  // relative to the row max they are harmless. Compare with long double.
  const int64_t rows = 4, n = 50;
  auto x = uniform<T>(rows * n, -1e4, 1e4, 5);
  x[3] = T(1e4);
  x[4] = T(1e4 - 1);  // two near-equal maxima in row 0
  for (int64_t j = 0; j < n; ++j) x[sz(n + j)] = T(1e4);  // row 1: all equal
  std::vector<T> y(x.size()), ly(x.size());
  softmax_forward(rows, n, x.data(), y.data());
  log_softmax_forward(rows, n, x.data(), ly.data());
  for (int64_t r = 0; r < rows; ++r) {
    long double m = -INFINITY, s = 0.0L;
    for (int64_t j = 0; j < n; ++j) m = std::max(m, (long double)x[sz(r * n + j)]);
    for (int64_t j = 0; j < n; ++j) s += std::exp((long double)x[sz(r * n + j)] - m);
    double total = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const std::size_t i = sz(r * n + j);
      const long double lp = ((long double)x[i] - m) - std::log(s);
      CHECK(std::isfinite(double(y[i])));
      const double p = double(std::exp(lp));  // 0 once below double's range
      CHECK(std::abs(double(y[i]) - p) <= rtol_for<T>() * p + atol_for<T>());
      if (std::exp(lp) > 1e-30L) CHECK(double(ly[i]) == doctest::Approx(double(lp)).epsilon(rtol_for<T>()));
      total += double(y[i]);
    }
    CHECK(total == doctest::Approx(1.0).epsilon(10 * n * std::numeric_limits<T>::epsilon()));
  }
  CHECK(y[sz(n)] == doctest::Approx(1.0 / n).epsilon(rtol_for<T>()));
}

// ============================================================================
// cross-entropy
// ============================================================================

TEST_CASE_TEMPLATE("cross_entropy forward and backward match the naive twins", T, float, double) {
  Threads th(2);
  for (const Shape& sh : kShapes) {
    const int64_t N = sh.rows, V = sh.n;
    if (V == 0) continue;  // no valid target exists
    const auto logits = uniform<T>(N * V, -20, 20, 500 + uint64_t(N * V));
    const auto t = targets_for(N, V, 600 + uint64_t(N));
    std::vector<T> la(sz(N), T(-7)), lb(sz(N), T(-7)), sa(sz(N), T(-7)), sb(sz(N), T(-7));
    const int64_t ca = cross_entropy_forward(N, V, logits.data(), t.data(), kIgnoreIndex, la.data(), sa.data());
    const int64_t cb = cross_entropy_forward_naive(N, V, logits.data(), t.data(), kIgnoreIndex, lb.data(), sb.data());
    int64_t kept = 0;
    for (int64_t i = 0; i < N; ++i) kept += t[sz(i)] != kIgnoreIndex;
    CHECK(ca == kept);
    CHECK(cb == kept);
    // loss = (m - x_t) + log Σ: relative to |m - x_t| + |log Σ| <= |loss| + ...
    std::vector<double> scale(sz(N));
    for (int64_t i = 0; i < N; ++i) scale[sz(i)] = std::abs(double(lb[sz(i)])) + std::log(double(V)) + 1.0;
    check_close(la, lb, rtol_rows<T>(V), 0.0, "cross_entropy loss " + shape_str(N, V), &scale);
    check_close(sa, sb, rtol_rows<T>(V), 0.0, "cross_entropy lse " + shape_str(N, V));
    for (int64_t i = 0; i < N; ++i)
      if (t[sz(i)] == kIgnoreIndex) {
        CHECK(la[sz(i)] == T(0));
        CHECK(sa[sz(i)] == T(0));
      }

    const auto g = uniform<T>(N, -1, 1, 700 + uint64_t(N));
    const auto d0 = uniform<T>(N * V, -1, 1, 800 + uint64_t(N * V));
    auto da = d0, db = d0;
    cross_entropy_backward(N, V, logits.data(), t.data(), kIgnoreIndex, sb.data(), g.data(), da.data());
    cross_entropy_backward_naive(N, V, logits.data(), t.data(), kIgnoreIndex, sb.data(), g.data(), db.data());
    std::vector<double> dscale(sz(N * V));
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < V; ++j) {
        const std::size_t k = sz(i * V + j);
        const double p = std::exp(double(logits[k]) - double(sb[sz(i)]));
        dscale[k] = std::abs(double(d0[k])) + std::abs(double(g[sz(i)])) * (p + 1.0);
      }
    check_close(da, db, rtol_rows<T>(V), atol_for<T>(), "cross_entropy_backward " + shape_str(N, V), &dscale);
    // Ignored rows get nothing; kept rows' gradients sum to ~0 (Σ p = 1).
    std::vector<T> fz(sz(N * V), T(0));
    cross_entropy_backward(N, V, logits.data(), t.data(), kIgnoreIndex, sb.data(), g.data(), fz.data());
    for (int64_t i = 0; i < N; ++i) {
      double s = 0.0, sa_ = 0.0;
      for (int64_t j = 0; j < V; ++j) {
        if (t[sz(i)] == kIgnoreIndex) CHECK(da[sz(i * V + j)] == d0[sz(i * V + j)]);
        s += double(fz[sz(i * V + j)]);
        sa_ += std::abs(double(fz[sz(i * V + j)]));
      }
      CHECK(std::abs(s) <= 4 * std::numeric_limits<T>::epsilon() * (sa_ + 1.0) * std::sqrt(double(V)) + 1e-12);
    }
  }
}

TEST_CASE_TEMPLATE("cross_entropy agrees with log_softmax and handles huge logits", T, float, double) {
  const int64_t N = 6, V = 300;
  auto logits = uniform<T>(N * V, -1e4, 1e4, 9);
  logits[sz(0 * V + 17)] = T(1e4);  // target is the max
  logits[sz(1 * V + 0)] = T(-1e4);  // target far below the max
  std::vector<int64_t> t = {17, 0, 299, 5, kIgnoreIndex, 150};
  std::vector<T> loss(N), lse(N), ls(N * V);
  CHECK(cross_entropy_forward(N, V, logits.data(), t.data(), kIgnoreIndex, loss.data(), lse.data()) == 5);
  log_softmax_forward_naive(N, V, logits.data(), ls.data());
  for (int64_t i = 0; i < N; ++i) {
    CHECK(std::isfinite(double(loss[sz(i)])));
    CHECK(std::isfinite(double(lse[sz(i)])));
    if (t[sz(i)] == kIgnoreIndex) continue;
    // Exact value from long double.
    long double m = -INFINITY, s = 0.0L;
    for (int64_t j = 0; j < V; ++j) m = std::max(m, (long double)logits[sz(i * V + j)]);
    for (int64_t j = 0; j < V; ++j) s += std::exp((long double)logits[sz(i * V + j)] - m);
    const long double exact = (m - (long double)logits[sz(i * V + t[sz(i)])]) + std::log(s);
    CHECK(double(loss[sz(i)]) == doctest::Approx(double(exact)).epsilon(rtol_for<T>()).scale(1.0));
    // loss = -log_softmax[t] (log_softmax's rounding is relative to |x - m| ~ 2e4 in float).
    CHECK(double(loss[sz(i)]) == doctest::Approx(-double(ls[sz(i * V + t[sz(i)])]))
                                     .epsilon(4 * std::numeric_limits<T>::epsilon())
                                     .scale(std::abs(double(exact)) + 2e4 * std::numeric_limits<T>::epsilon()));
  }
  std::vector<T> g(N, T(1)), d(N * V, T(0));
  cross_entropy_backward(N, V, logits.data(), t.data(), kIgnoreIndex, lse.data(), g.data(), d.data());
  for (T v : d) CHECK(std::isfinite(v));
  // d = p - onehot against long double, for the two targets at the extremes.
  for (int64_t i : {0, 1}) {
    long double m = -INFINITY, s = 0.0L;
    for (int64_t j = 0; j < V; ++j) m = std::max(m, (long double)logits[sz(i * V + j)]);
    for (int64_t j = 0; j < V; ++j) s += std::exp((long double)logits[sz(i * V + j)] - m);
    const int64_t ti = t[sz(i)];
    const double want = double(std::exp((long double)logits[sz(i * V + ti)] - m) / s) - 1.0;
    CHECK(double(d[sz(i * V + ti)]) == doctest::Approx(want).epsilon(4 * rtol_for<T>()));
  }
  CHECK(d[sz(1 * V + 0)] == T(-1));  // p_t = exp(-2e4) = 0 exactly
}

TEST_CASE_TEMPLATE("cross_entropy honours a custom ignore_index and rejects bad targets", T, float, double) {
  const int64_t N = 4, V = 5;
  const auto logits = uniform<T>(N * V, -2, 2, 10);
  std::vector<T> loss(N, T(-9)), lse(N, T(-9));
  // ignore_index 3: rows with target 3 are skipped even though 3 is a class.
  const std::vector<int64_t> t = {3, 1, 3, 4};
  CHECK(cross_entropy_forward(N, V, logits.data(), t.data(), 3, loss.data(), lse.data()) == 2);
  CHECK(loss[0] == T(0));
  CHECK(loss[2] == T(0));
  CHECK(loss[1] > T(0));

  for (int64_t bad : {int64_t(5), int64_t(-1), int64_t(1000), int64_t(-100)}) {
    std::vector<int64_t> tb = {0, 1, bad, 2};
    std::fill(loss.begin(), loss.end(), T(-9));
    // -100 is only bad when it is not the ignore_index.
    const int64_t ignore = bad == -100 ? int64_t(-1000) : kIgnoreIndex;
    for (int variant = 0; variant < 4; ++variant) {
      std::string what;
      try {
        std::vector<T> g(N, T(1)), d(N * V, T(0));
        if (variant == 0) cross_entropy_forward(N, V, logits.data(), tb.data(), ignore, loss.data(), lse.data());
        if (variant == 1) cross_entropy_forward_naive(N, V, logits.data(), tb.data(), ignore, loss.data(), lse.data());
        if (variant == 2) cross_entropy_backward(N, V, logits.data(), tb.data(), ignore, lse.data(), g.data(), d.data());
        if (variant == 3) cross_entropy_backward_naive(N, V, logits.data(), tb.data(), ignore, lse.data(), g.data(), d.data());
      } catch (const std::invalid_argument& e) {
        what = e.what();
      }
      INFO("variant ", variant, " target ", bad, ": '", what, "'");
      CHECK(what.find("cross_entropy") != std::string::npos);
      CHECK(what.find("row 2") != std::string::npos);
      CHECK(what.find(std::to_string(bad)) != std::string::npos);
    }
    for (T v : loss) CHECK(v == T(-9));  // nothing written
  }
}

// ============================================================================
// the naive backward formulas against finite differences
// ============================================================================

TEST_CASE("naive softmax, log_softmax and cross_entropy backward match central differences (double)") {
  const int64_t rows = 3, n = 7;
  auto x = uniform<double>(rows * n, -3, 3, 21);
  x[4] = -std::numeric_limits<double>::infinity();  // a masked entry stays masked
  const auto w = uniform<double>(rows * n, -1, 1, 22);
  const double h = 1e-6;
  auto objective = [&](int which, const std::vector<double>& v) {
    std::vector<double> y(v.size());
    if (which == 0) softmax_forward_naive(rows, n, v.data(), y.data());
    else log_softmax_forward_naive(rows, n, v.data(), y.data());
    double s = 0.0;
    for (std::size_t i = 0; i < y.size(); ++i)
      if (std::isfinite(y[i])) s += w[i] * y[i];
    return s;
  };
  for (int which = 0; which < 2; ++which) {
    std::vector<double> y(x.size()), grad(x.size(), 0.0), fd(x.size(), 0.0);
    if (which == 0) {
      softmax_forward_naive(rows, n, x.data(), y.data());
      softmax_backward_naive(rows, n, y.data(), w.data(), grad.data());
    } else {
      log_softmax_forward_naive(rows, n, x.data(), y.data());
      auto wm = w;
      wm[4] = 0.0;  // the masked output is not part of the objective
      log_softmax_backward_naive(rows, n, y.data(), wm.data(), grad.data());
    }
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (!std::isfinite(x[i])) continue;
      auto xp = x, xm = x;
      xp[i] += h;
      xm[i] -= h;
      fd[i] = (objective(which, xp) - objective(which, xm)) / (2 * h);
    }
    grad[4] = 0.0;
    check_close(grad, fd, 1e-6, 1e-8, which == 0 ? "softmax FD" : "log_softmax FD");
  }
  // Cross-entropy: objective Σ_i g_i loss_i, with row 1 ignored.
  const std::vector<int64_t> t = {2, kIgnoreIndex, 6};
  const std::vector<double> g = {0.7, 0.3, -1.2};
  std::vector<double> xc = uniform<double>(rows * n, -3, 3, 23);
  auto ce = [&](const std::vector<double>& v) {
    std::vector<double> loss(rows), lse(rows);
    cross_entropy_forward_naive(rows, n, v.data(), t.data(), kIgnoreIndex, loss.data(), lse.data());
    double s = 0.0;
    for (int64_t i = 0; i < rows; ++i) s += g[sz(i)] * loss[sz(i)];
    return s;
  };
  std::vector<double> loss(rows), lse(rows), grad(xc.size(), 0.0), fd(xc.size());
  cross_entropy_forward_naive(rows, n, xc.data(), t.data(), kIgnoreIndex, loss.data(), lse.data());
  cross_entropy_backward_naive(rows, n, xc.data(), t.data(), kIgnoreIndex, lse.data(), g.data(), grad.data());
  for (std::size_t i = 0; i < xc.size(); ++i) {
    auto xp = xc, xm = xc;
    xp[i] += h;
    xm[i] -= h;
    fd[i] = (ce(xp) - ce(xm)) / (2 * h);
  }
  check_close(grad, fd, 1e-6, 1e-8, "cross_entropy FD");
  for (int64_t j = 0; j < n; ++j) CHECK(grad[sz(n + j)] == 0.0);
}

// ============================================================================
// threads
// ============================================================================

TEST_CASE("softmax kernels give the same bits at every thread count") {
  // Each row is done whole by one thread, so results do not depend on the
  // thread count (and so, a fortiori, are reproducible at a fixed one).
  const int64_t rows = 2048, n = 256;
  const auto x = masked_logits<float>(rows, n, 31);
  const auto dy = uniform<float>(rows * n, -1, 1, 32);
  const auto t = targets_for(rows, n, 33);
  const auto g = uniform<float>(rows, -1, 1, 34);
  std::vector<std::vector<float>> out;
  for (int nt : {1, 2, 3, 2}) {
    Threads th(nt);
    std::vector<float> y(x.size()), ly(x.size()), dx(x.size(), 0.f), dl(x.size(), 0.f), loss(rows),
        lse(rows), dlog(x.size(), 0.f);
    softmax_forward(rows, n, x.data(), y.data());
    log_softmax_forward(rows, n, x.data(), ly.data());
    softmax_backward(rows, n, y.data(), dy.data(), dx.data());
    log_softmax_backward(rows, n, ly.data(), dy.data(), dl.data());
    cross_entropy_forward(rows, n, x.data(), t.data(), kIgnoreIndex, loss.data(), lse.data());
    cross_entropy_backward(rows, n, x.data(), t.data(), kIgnoreIndex, lse.data(), g.data(), dlog.data());
    std::vector<float> all;
    for (auto* v : {&y, &ly, &dx, &dl, &loss, &lse, &dlog}) all.insert(all.end(), v->begin(), v->end());
    out.push_back(all);
  }
  for (std::size_t k = 1; k < out.size(); ++k) CHECK(same_bits(out[0], out[k]));
}
