// tests/test_kernels_norm.cpp — RMSNorm and LayerNorm (autograd/kernels/norm.hpp) against
// their naive twins.
//
// What it checks: each fast forward and backward against its `_naive` twin, float and
// double, on odd and even sizes, with and without the optional weights (and bias), with
// pre-filled gradient buffers (accumulation), in place; each naive backward against central
// finite differences in double, so the oracles themselves are right; argument errors.
//
// What it does not check: speed (benchmarks do that), or the ops built on these kernels.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/kernels/norm.hpp"
#include "kernel_test_util.hpp"

namespace k = tg::kernels;
using namespace tg::testing;

namespace {
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
