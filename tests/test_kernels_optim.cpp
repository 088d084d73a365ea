// tests/test_kernels_optim.cpp — the fused optimizer updates (autograd/kernels/adamw.hpp).
//
// What it checks: AdamW and SGD (momentum, dampening, Nesterov, weight decay) over a few
// steps against a scalar textbook reference in long double, bit for bit against PyTorch
// 1.13's order of operations and roundings, and bit for bit against their naive twins on
// sizes that hit the vector body, several OpenMP blocks and the scalar tail; bad
// hyper-parameters are errors that name the kernel.
//
// What it does not check: speed (benchmarks do that), or the optimizers built on these
// kernels (test_optim.cpp).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "autograd/kernels/adamw.hpp"
#include "kernel_test_util.hpp"

namespace k = tg::kernels;
using namespace tg::testing;

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
