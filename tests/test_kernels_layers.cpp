// tests/test_kernels_layers.cpp — the fused layer kernels against their naive twins.
//
// What it checks: RoPE (and its tables), SwiGLU, the sigmoid gate and embedding in
// autograd/kernels/ (the norms: test_kernels_norm.cpp; the optimizer updates:
// test_kernels_optim.cpp):
// - each fast kernel against its `_naive` twin, float and double, on odd and even sizes,
//   with and without optional weights, with pre-filled gradient buffers (accumulation);
// - each naive backward against central finite differences in double, so the oracles
//   themselves are right;
// - RoPE tables against the direct formula, the rotate_half pairing by hand;
// - errors: bad ids, bad sizes;
// - determinism: every layer kernel (the norms too) bitwise identical from run to run at a
//   fixed thread count.
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
#include "kernel_test_util.hpp"

namespace k = tg::kernels;
using namespace tg::testing;


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
