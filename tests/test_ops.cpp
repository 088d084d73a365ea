// tests/test_ops.cpp — every op of autograd/ops.hpp: known-value forwards, a float64
// gradcheck on random inputs (broadcast shapes and edge cases included), float32
// forwards agreeing with float64, and bad arguments whose messages name the op and shapes.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include <xtensor/xmath.hpp>
#include <xtensor/xview.hpp>

#include "autograd/autograd.hpp"
#include "test_util.hpp"

using namespace tg;
using TD = Tensor<double>;
using TF = Tensor<float>;
using Arr = xt::xarray<double>;


namespace {

// Random leaf in float64 that requires grad.
TD rnd(const Shape& s, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Generator g(seed);
  return TD::rand(s, g, lo, hi, true);
}

// gradcheck f on inputs and report the summary on failure.
void check_grad(const GradcheckFn& f, const std::vector<TD>& in, GradcheckOptions opt = {}) {
  GradcheckResult r = gradcheck(f, in, opt);
  INFO(r.summary());
  CHECK(r.ok);
  CHECK(r.checks > 0);
}

// The same computation in float32 agrees with float64 to float round-off.
template <class F>
void check_float_matches_double(F f, const std::vector<TD>& in, double tol = 2e-5) {
  std::vector<TF> inf;
  for (auto& t : in) inf.push_back(TF(xt::xarray<float>(xt::cast<float>(t.value())), t.requires_grad()));
  TD yd = f(in);
  TF yf = f(inf);
  REQUIRE(yd.shape() == yf.shape());
  double scale = std::max(1.0, xt::amax(xt::abs(yd.value()))());
  double err = xt::amax(xt::abs(xt::cast<double>(yf.value()) - yd.value()))();
  CHECK(err <= tol * scale);
}

}  // namespace

// ---- elementwise binary --------------------------------------------------------------

TEST_CASE("add/sub/mul/div: values, broadcasting, gradients") {
  TD a = TD::from(Arr{{1.0, 2.0}, {3.0, 4.0}});
  TD b = TD::from(Arr{10.0, 20.0});
  CHECK(add(a, b).value() == Arr{{11, 22}, {13, 24}});
  CHECK(sub(a, b).value() == Arr{{-9, -18}, {-7, -16}});
  CHECK(mul(a, b).value() == Arr{{10, 40}, {30, 80}});
  CHECK(xt::allclose(div(a, b).value(), Arr{{0.1, 0.1}, {0.3, 0.2}}));
  CHECK((-a).value()(1, 1) == -4.0);
  CHECK((a * 2.0 + 1.0).value()(0, 1) == 5.0);
  CHECK((1.0 - a).value()(0, 0) == 0.0);
  // broadcast pairs: trailing, leading, size-1 axes on both sides, scalar (0-d); the
  // attention gates (B,T,H,D) with (B,T,H,1) and with (H,D); scalar-like (1,1,1) on the left
  std::vector<std::pair<Shape, Shape>> pairs = {
      {{3, 4}, {4}}, {{2, 3, 4}, {3, 1}}, {{2, 1, 4}, {1, 3, 1}}, {{3, 4}, {}}, {{1}, {5}}, {{1, 1}, {1, 1}},
      {{2, 3, 2, 5}, {2, 3, 2, 1}}, {{2, 3, 2, 5}, {2, 5}}, {{1, 1, 1}, {2, 3, 4}}};
  int seed = 1;
  for (auto& [sa, sb] : pairs) {
    TD x = rnd(sa, seed++), y = rnd(sb, seed++, 0.5, 2.0);  // y away from 0 for div
    check_grad([](auto& v) { return add(v[0], v[1]); }, {x, y});
    check_grad([](auto& v) { return sub(v[0], v[1]); }, {x, y});
    check_grad([](auto& v) { return mul(v[0], v[1]); }, {x, y});
    check_grad([](auto& v) { return div(v[0], v[1]); }, {x, y});
  }
  check_grad([](auto& v) { return neg(v[0]); }, {rnd({3}, 9)});
  check_grad([](auto& v) { return v[0] * 3.0 + 2.0; }, {rnd({3}, 10)});
  check_float_matches_double([](auto& v) { return div(mul(v[0], v[1]), v[1] + 3.0); }, {rnd({4, 5}, 3), rnd({5}, 4)});
}

TEST_CASE("binary ops reject shapes that do not broadcast, naming the op and shapes") {
  std::string m = THROW_MSG(add(TD::ones({2, 3}), TD::ones({4})));
  CHECK(m.find("add") == 0);
  CHECK(m.find("(2,3)") != std::string::npos);
  CHECK(m.find("(4)") != std::string::npos);
  CHECK(THROW_MSG(mul(TD::ones({2}), TD())).find("undefined") != std::string::npos);
}

TEST_CASE("sum_to undoes broadcasting") {
  Arr g = xt::ones<double>({2, 3, 4});
  CHECK(sum_to(g, {3, 1}) == Arr(xt::full_like(Arr::from_shape({3, 1}), 8.0)));
  CHECK(sum_to(g, {})() == 24.0);
  CHECK(sum_to(g, {2, 3, 4}) == g);
}

// ---- unary ------------------------------------------------------------------------

TEST_CASE("unary functions: known values and gradients") {
  TD x = TD::from(Arr{-2.0, -0.5, 0.0, 0.7, 3.0});
  CHECK(xt::allclose(exp(x).value(), xt::exp(x.value())));
  CHECK(xt::allclose(sigmoid(x).value(), 1.0 / (1.0 + xt::exp(-x.value()))));
  CHECK(xt::allclose(tanh(x).value(), xt::tanh(x.value())));
  CHECK(xt::allclose(relu(x).value(), Arr{0, 0, 0, 0.7, 3.0}));
  CHECK(xt::allclose(silu(x).value(), x.value() / (1.0 + xt::exp(-x.value()))));
  CHECK(abs(x).value()(0) == 2.0);
  CHECK(gelu(TD::scalar(1.0)).item() == doctest::Approx(0.8413447460685429));
  CHECK(gelu(TD::scalar(1.0), GeluApprox::Tanh).item() == doctest::Approx(0.8411919906082768));
  CHECK(pow(TD::scalar(2.0), 3.0).item() == doctest::Approx(8.0));
  CHECK(clamp(x, -1.0, 1.0).value() == Arr{-1.0, -0.5, 0.0, 0.7, 1.0});
  TD p = TD::from(Arr{0.25, 4.0});
  CHECK(sqrt(p).value() == Arr{0.5, 2.0});
  CHECK(rsqrt(p).value() == Arr{2.0, 0.5});
  CHECK(log(TD::scalar(std::exp(1.0))).item() == doctest::Approx(1.0));

  // gradients away from kinks (abs, relu, clamp are checked off their corners)
  TD r = rnd({3, 4}, 11, -3, 3);
  TD pos = rnd({3, 4}, 12, 0.2, 3);
  TD off0 = TD::from(Arr{{-2.0, -0.7, 0.4, 1.3}, {0.9, -1.1, 2.2, -0.3}}, true);
  check_grad([](auto& v) { return exp(v[0]); }, {r});
  check_grad([](auto& v) { return log(v[0]); }, {pos});
  check_grad([](auto& v) { return sqrt(v[0]); }, {pos});
  check_grad([](auto& v) { return rsqrt(v[0]); }, {pos});
  check_grad([](auto& v) { return abs(v[0]); }, {off0});
  check_grad([](auto& v) { return relu(v[0]); }, {off0});
  check_grad([](auto& v) { return sigmoid(v[0]); }, {r});
  check_grad([](auto& v) { return tanh(v[0]); }, {r});
  check_grad([](auto& v) { return silu(v[0]); }, {r});
  check_grad([](auto& v) { return gelu(v[0]); }, {r});
  check_grad([](auto& v) { return gelu(v[0], GeluApprox::Tanh); }, {r});
  check_grad([](auto& v) { return pow(v[0], 2.5); }, {pos});
  check_grad([](auto& v) { return pow(v[0], -1.0); }, {pos});
  check_grad([](auto& v) { return clamp(v[0], -1.0, 1.0); }, {off0});
  // large magnitudes stay finite
  TD big = TD::from(Arr{-800.0, 800.0});
  CHECK(sigmoid(big).value() == Arr{0.0, 1.0});
  CHECK(tanh(big).value() == Arr{-1.0, 1.0});
  CHECK(silu(big).value()(1) == 800.0);
  check_float_matches_double([](auto& v) { return gelu(silu(v[0])) + sigmoid(v[0]) * tanh(v[0]); }, {r});
  CHECK(THROW_MSG(clamp(x, 1.0, -1.0)).find("clamp") == 0);
}

// ---- linear algebra -------------------------------------------------------------------

TEST_CASE("matmul and linear: values, batching, gradients, errors") {
  TD a = TD::from(Arr{{1, 2, 3}, {4, 5, 6}});
  TD b = TD::from(Arr{{1, 0}, {0, 1}, {1, 1}});
  CHECK(matmul(a, b).value() == Arr{{4, 5}, {10, 11}});
  TD w = TD::from(Arr{{1, 0, 1}, {0, 1, 1}});  // (out=2, in=3)
  TD bias = TD::from(Arr{0.5, -0.5});
  CHECK(linear(a, w, bias).value() == Arr{{4.5, 4.5}, {10.5, 10.5}});
  CHECK(linear(a, w).value() == Arr{{4, 5}, {10, 11}});

  check_grad([](auto& v) { return matmul(v[0], v[1]); }, {rnd({3, 4}, 1), rnd({4, 5}, 2)});
  check_grad([](auto& v) { return matmul(v[0], v[1]); }, {rnd({2, 3, 4}, 3), rnd({4, 2}, 4)});      // shared b
  check_grad([](auto& v) { return matmul(v[0], v[1]); }, {rnd({2, 3, 4}, 5), rnd({2, 4, 2}, 6)});   // batched
  check_grad([](auto& v) { return matmul(v[0], v[1]); }, {rnd({1, 1}, 7), rnd({1, 1}, 8)});         // 1x1
  check_grad([](auto& v) { return linear(v[0], v[1], v[2]); }, {rnd({2, 3, 4}, 9), rnd({5, 4}, 10), rnd({5}, 11)});
  check_grad([](auto& v) { return linear(v[0], v[1]); }, {rnd({3, 4}, 12), rnd({2, 4}, 13)});
  // a larger product goes through the projection mode of gradcheck
  check_grad([](auto& v) { return matmul(v[0], v[1]); }, {rnd({17, 33}, 14), rnd({33, 9}, 15)});
  check_float_matches_double([](auto& v) { return linear(v[0], v[1], v[2]); }, {rnd({7, 13}, 1), rnd({5, 13}, 2), rnd({5}, 3)});

  std::string m = THROW_MSG(matmul(TD::ones({2, 3}), TD::ones({4, 5})));
  CHECK(m == "matmul: (2,3) @ (4,5): inner dimensions 3 != 4");
  CHECK(THROW_MSG(matmul(TD::ones({2, 2, 3}), TD::ones({3, 3, 4}))).find("batch") != std::string::npos);
  CHECK(THROW_MSG(matmul(TD::ones({3}), TD::ones({3, 4}))).find("(3)") != std::string::npos);
  std::string ml = THROW_MSG(linear(TD::ones({2, 3}), TD::ones({4, 5})));
  CHECK(ml.find("linear") == 0);
  CHECK(ml.find("(4,5)") != std::string::npos);
  CHECK(THROW_MSG(linear(TD::ones({2, 3}), TD::ones({4, 3}), TD::ones({3}))).find("bias (3)") != std::string::npos);
}

// ---- reductions -----------------------------------------------------------------------

TEST_CASE("sum, mean, max: values, axes, keepdims, gradients") {
  TD x = TD::from(Arr{{1, 5, 3}, {4, 2, 6}});
  CHECK(sum(x).item() == 21.0);
  CHECK(sum(x, {0}).value() == Arr{5, 7, 9});
  CHECK(sum(x, {-1}, true).shape() == Shape{2, 1});
  CHECK(mean(x, {1}).value() == Arr{3, 4});
  CHECK(mean(x).item() == 3.5);
  CHECK(max(x, 1).value() == Arr{5, 6});
  CHECK(max(x, 0, true).value() == Arr{{4, 5, 6}});
  check_grad([](auto& v) { return sum(v[0]); }, {rnd({3, 4}, 1)});
  check_grad([](auto& v) { return sum(v[0], {0, 2}); }, {rnd({2, 3, 4}, 2)});
  check_grad([](auto& v) { return sum(v[0], {1}, true); }, {rnd({2, 3, 4}, 3)});
  check_grad([](auto& v) { return mean(v[0], {-1}); }, {rnd({2, 3, 4}, 4)});
  check_grad([](auto& v) { return mean(v[0]); }, {rnd({1}, 5)});  // single-element reduction
  check_grad([](auto& v) { return sum(v[0], {0}); }, {rnd({1, 3}, 6)});  // size-1 axis
  check_grad([](auto& v) { return max(v[0], 1); }, {rnd({3, 5}, 7)});
  check_grad([](auto& v) { return max(v[0], 0, true); }, {rnd({4, 2, 3}, 8)});
  check_grad([](auto& v) { return max(v[0], 0); }, {rnd({1}, 9)});
  // ties: the gradient goes to the first maximum only
  TD t = TD::from(Arr{2.0, 7.0, 7.0}, true);
  max(t, 0).backward();
  CHECK(t.grad() == Arr{0.0, 1.0, 0.0});
  CHECK(THROW_MSG(sum(x, {2})).find("sum: axis 2") == 0);
  CHECK(THROW_MSG(sum(x, {1, -1})).find("twice") != std::string::npos);
}

// ---- softmax family ------------------------------------------------------------------

TEST_CASE("softmax and log_softmax: values, large logits, masked rows, gradients") {
  TD x = TD::from(Arr{{1.0, 2.0, 3.0}});
  Arr e = xt::exp(x.value());
  CHECK(xt::allclose(softmax(x).value(), e / xt::sum(e)()));
  CHECK(xt::allclose(log_softmax(x).value(), x.value() - std::log(xt::sum(e)())));
  // huge logits: no overflow
  TD big = TD::from(Arr{{1000.0, 1000.0, -1000.0}});
  CHECK(xt::allclose(softmax(big).value(), Arr{{0.5, 0.5, 0.0}}));
  CHECK(log_softmax(big).value()(0, 0) == doctest::Approx(-std::log(2.0)));
  // a fully masked row (all -inf) gives zeros, with zero gradient
  const double ninf = -std::numeric_limits<double>::infinity();
  TD m = TD::from(Arr{{ninf, ninf}, {0.0, ninf}}, true);
  TD s = softmax(m);
  CHECK(s.value() == Arr{{0.0, 0.0}, {1.0, 0.0}});
  sum(s * TD::from(Arr{{1.0, 2.0}, {3.0, 4.0}})).backward();
  CHECK(m.grad() == Arr{{0.0, 0.0}, {0.0, 0.0}});
  TD ls = log_softmax(TD::from(Arr{{ninf, ninf}}, true));
  CHECK(std::isinf(ls.value()(0, 0)));

  check_grad([](auto& v) { return softmax(v[0]); }, {rnd({3, 4}, 1, -3, 3)});
  check_grad([](auto& v) { return softmax(v[0], 0); }, {rnd({3, 4}, 2, -3, 3)});
  check_grad([](auto& v) { return softmax(v[0], 1); }, {rnd({2, 3, 2}, 3, -3, 3)});
  check_grad([](auto& v) { return log_softmax(v[0]); }, {rnd({3, 4}, 4, -3, 3)});
  check_grad([](auto& v) { return log_softmax(v[0], 0); }, {rnd({2, 3, 2}, 5, -3, 3)});
  check_grad([](auto& v) { return softmax(v[0]); }, {rnd({2, 1}, 6)});  // single-element rows
  // large logits keep correct gradients
  check_grad([](auto& v) { return softmax(v[0] * 1.0); }, {rnd({2, 4}, 7, 500, 502)});
  check_grad([](auto& v) { return log_softmax(v[0]); }, {rnd({2, 4}, 8, -502, -500)});
  check_float_matches_double([](auto& v) { return softmax(v[0]); }, {rnd({4, 9}, 9, -5, 5)});
}

TEST_CASE("softmax and log_softmax on a middle axis equal the last-axis kernel on the transposed tensor") {
  // (2,5,3) along axis 1 against (2,3,5) along the last axis, with one fully masked column
  const double ninf = -std::numeric_limits<double>::infinity();
  Arr a = rnd({2, 5, 3}, 11, -4, 4).value();
  for (std::size_t k = 0; k < 5; ++k) a(1, k, 2) = ninf;
  const Arr w = rnd({2, 5, 3}, 12).value();
  for (bool log : {false, true}) {
    CAPTURE(log);
    TD x = TD::from(a, true), xt_ = TD::from(Arr(xt::transpose(a, {0, 2, 1})), true);
    TD y = log ? log_softmax(x, 1) : softmax(x, 1);
    TD yt = log ? log_softmax(xt_, -1) : softmax(xt_, -1);
    const Arr back = xt::transpose(yt.value(), {0, 2, 1});
    for (std::size_t i = 0; i < back.size(); ++i) {
      if (std::isinf(back.data()[i])) CHECK(y.value().data()[i] == back.data()[i]);
      else CHECK(std::abs(y.value().data()[i] - back.data()[i]) <= 1e-15);
    }
    // masked column: softmax 0, log_softmax -inf, and no gradient through it
    CHECK(y.value()(1, 3, 2) == (log ? ninf : 0.0));
    const Arr wl = log ? Arr(xt::where(xt::isinf(y.value()), 0.0, w)) : w;  // -inf * w would be NaN
    sum(y * TD::from(wl)).backward();
    sum(yt * TD::from(Arr(xt::transpose(wl, {0, 2, 1})))).backward();
    const Arr gback = xt::transpose(xt_.grad(), {0, 2, 1});
    for (std::size_t i = 0; i < gback.size(); ++i) CHECK(std::abs(x.grad().data()[i] - gback.data()[i]) <= 1e-15);
    for (std::size_t k = 0; k < 5; ++k) CHECK(x.grad()(1, k, 2) == 0.0);
  }
}

TEST_CASE("cross_entropy: values, ignore_index, reductions, large logits, gradients, errors") {
  TD logits = TD::from(Arr{{2.0, 1.0, 0.1}, {0.5, 2.5, 0.3}});
  Index t = {0, 1};
  double l0 = -std::log(std::exp(2.0) / (std::exp(2.0) + std::exp(1.0) + std::exp(0.1)));
  double l1 = -std::log(std::exp(2.5) / (std::exp(0.5) + std::exp(2.5) + std::exp(0.3)));
  CHECK(cross_entropy(logits, t).item() == doctest::Approx((l0 + l1) / 2));
  CHECK(cross_entropy(logits, t, -100, Reduction::Sum).item() == doctest::Approx(l0 + l1));
  CHECK(cross_entropy(logits, t, -100, Reduction::None).value()(1) == doctest::Approx(l1));
  CHECK(cross_entropy(logits, Index{0, -100}).item() == doctest::Approx(l0));  // ignored row
  CHECK(cross_entropy(logits, Index{-100, -100}).item() == 0.0);               // nothing counted
  // huge logits
  TD big = TD::from(Arr{{1e4, 0.0, -1e4}});
  CHECK(cross_entropy(big, Index{0}).item() == doctest::Approx(0.0));
  CHECK(cross_entropy(big, Index{1}).item() == doctest::Approx(1e4));

  Index t3 = {{0, 3}, {2, 1}, {4, 0}};
  check_grad([&](auto& v) { return cross_entropy(v[0], t3); }, {rnd({3, 2, 5}, 1, -2, 2)});
  check_grad([&](auto& v) { return cross_entropy(v[0], Index{{1, -100}, {-100, 2}, {0, 4}}); }, {rnd({3, 2, 5}, 2)});
  check_grad([&](auto& v) { return cross_entropy(v[0], Index{3, 1}, 3); }, {rnd({2, 4}, 3)});  // custom ignore_index
  check_grad([&](auto& v) { return cross_entropy(v[0], t3, -100, Reduction::Sum); }, {rnd({3, 2, 5}, 4)});
  check_grad([&](auto& v) { return cross_entropy(v[0], t3, -100, Reduction::None); }, {rnd({3, 2, 5}, 5)});
  check_grad([&](auto& v) { return cross_entropy(v[0], Index{0, 2}); }, {rnd({2, 3}, 6, 300, 310)});  // large
  check_grad([&](auto& v) { return cross_entropy(v[0], Index{0}); }, {rnd({1, 1}, 7)});  // V = 1

  std::string m = THROW_MSG(cross_entropy(logits, Index{0, 3}));
  CHECK(m.find("cross_entropy: target 3 at row 1") == 0);
  CHECK(THROW_MSG(cross_entropy(logits, Index{0, 1, 2})).find("(2,3)") != std::string::npos);
}

// ---- layers ---------------------------------------------------------------------------

TEST_CASE("embedding: gather, scatter-add gradient with repeated ids, errors") {
  TD w = TD::from(Arr{{1, 2}, {3, 4}, {5, 6}}, true);
  Index ids = {{2, 0}, {2, 2}};
  TD y = embedding(ids, w);
  CHECK(y.shape() == Shape{2, 2, 2});
  CHECK(y.value()(0, 0, 1) == 6.0);
  sum(y).backward();
  CHECK(w.grad() == Arr{{1, 1}, {0, 0}, {3, 3}});
  check_grad([&](auto& v) { return embedding(ids, v[0]); }, {rnd({3, 2}, 1)});
  std::string m = THROW_MSG(embedding(Index{0, 3}, w));
  CHECK(m.find("embedding: id 3 at position 1") == 0);
  CHECK(THROW_MSG(embedding(ids, TD::ones({3}))).find("(3)") != std::string::npos);
}

TEST_CASE("rmsnorm and layernorm: values, gradients, errors") {
  TD x = TD::from(Arr{{1.0, 2.0, 3.0, 4.0}});
  double rms = std::sqrt((1 + 4 + 9 + 16) / 4.0 + 1e-6);
  CHECK(rmsnorm(x, TD(), 1e-6).value()(0, 3) == doctest::Approx(4.0 / rms));
  TD w = TD::from(Arr{1.0, 2.0, 3.0, 4.0});
  CHECK(rmsnorm(x, w, 1e-6).value()(0, 3) == doctest::Approx(16.0 / rms));
  TD ln = layernorm(x, TD(), TD(), 0.0);
  CHECK(xt::sum(ln.value())() == doctest::Approx(0.0).epsilon(1e-12));
  CHECK(ln.value()(0, 0) == doctest::Approx(-1.5 / std::sqrt(1.25)));

  check_grad([](auto& v) { return rmsnorm(v[0], v[1], 1e-5); }, {rnd({3, 5}, 1), rnd({5}, 2, 0.5, 1.5)});
  check_grad([](auto& v) { return rmsnorm(v[0], TD(), 1e-5); }, {rnd({2, 3, 4}, 3)});
  check_grad([](auto& v) { return rmsnorm(v[0], v[1], 1e-5); }, {rnd({1, 1}, 4), rnd({1}, 5)});  // C = 1
  check_grad([](auto& v) { return layernorm(v[0], v[1], v[2], 1e-5); }, {rnd({3, 5}, 6), rnd({5}, 7), rnd({5}, 8)});
  check_grad([](auto& v) { return layernorm(v[0], TD(), TD(), 1e-5); }, {rnd({2, 2, 6}, 9)});
  check_float_matches_double([](auto& v) { return rmsnorm(v[0], v[1], 1e-6) + layernorm(v[0], v[1], v[1], 1e-5); },
                             {rnd({6, 32}, 10), rnd({32}, 11)});
  CHECK(THROW_MSG(rmsnorm(x, TD::ones({3}), 1e-6)).find("rmsnorm: weight (3)") == 0);
  CHECK(THROW_MSG(layernorm(x, TD(), TD::ones({2}), 1e-6)).find("layernorm: bias (2)") == 0);
}

TEST_CASE("swiglu and dropout") {
  TD g = TD::from(Arr{0.0, 1.0}), u = TD::from(Arr{3.0, 2.0});
  CHECK(swiglu(g, u).value()(1) == doctest::Approx(2.0 / (1.0 + std::exp(-1.0))));
  check_grad([](auto& v) { return swiglu(v[0], v[1]); }, {rnd({3, 4}, 1, -3, 3), rnd({3, 4}, 2)});
  CHECK(THROW_MSG(swiglu(TD::ones({2}), TD::ones({3}))).find("swiglu") == 0);

  // sigmoid_gate(x, s) = x * sigmoid(s), fused; the same as the two ops it replaces.
  TD gx = rnd({3, 4}, 3), gs = rnd({3, 4}, 4, -3, 3);
  CHECK(xt::amax(xt::abs(sigmoid_gate(gx, gs).value() - (gx * sigmoid(gs)).value()))() < 1e-15);
  check_grad([](auto& v) { return sigmoid_gate(v[0], v[1]); }, {rnd({3, 4}, 5), rnd({3, 4}, 6, -3, 3)});
  CHECK(THROW_MSG(sigmoid_gate(TD::ones({2, 3}), TD::ones({2, 1}))).find("sigmoid_gate: x (2,3)") == 0);

  TD x = TD::ones({1000}, true);
  Generator gen(3);
  TD d = dropout(x, 0.25, gen);
  std::size_t zeros = 0;
  for (double v : d.value()) {
    CHECK((v == 0.0 || v == doctest::Approx(1.0 / 0.75)));
    zeros += v == 0.0;
  }
  CHECK(zeros > 180);
  CHECK(zeros < 320);
  CHECK(dropout(x, 0.5, gen, false).same(x));  // eval mode: identity
  // gradient through a fixed mask (re-seeded inside f so f is deterministic)
  check_grad([](auto& v) {
    Generator g2(11);
    return dropout(v[0], 0.3, g2);
  }, {rnd({4, 5}, 3)});
  CHECK(THROW_MSG(dropout(x, 1.5, gen)).find("dropout: p = 1.5") == 0);
}

// ---- RoPE --------------------------------------------------------------------------

TEST_CASE("rope: rotate_half convention, position 0 is identity, norms kept, gradients") {
  auto tab = rope_table<double>(16, 4, 10000.0);
  // position p, pair (0, 2) rotates by p * theta^0 = p radians
  TD x = TD::from(Arr{1.0, 0.0, 0.0, 0.0});
  TD xx = reshape(x, {1, 1, 1, 4});
  TD xs = concat<double>({xx, xx, xx}, 1);  // (1,3,1,4): positions 0,1,2
  TD y = rope(xs, tab);
  CHECK(y.value()(0, 0, 0, 0) == doctest::Approx(1.0));
  CHECK(y.value()(0, 1, 0, 0) == doctest::Approx(std::cos(1.0)));
  CHECK(y.value()(0, 1, 0, 2) == doctest::Approx(std::sin(1.0)));
  CHECK(y.value()(0, 2, 0, 2) == doctest::Approx(std::sin(2.0)));
  // the offset shifts positions
  CHECK(rope(xx, tab, 2).value()(0, 0, 0, 2) == doctest::Approx(std::sin(2.0)));
  // a rotation keeps norms
  TD r = rnd({2, 5, 3, 8}, 1);
  auto tab8 = rope_table<double>(32, 8, 10000.0);
  TD ry = rope(r, tab8, 3);
  CHECK(xt::sum(ry.value() * ry.value())() == doctest::Approx(xt::sum(r.value() * r.value())()));
  check_grad([&](auto& v) { return rope(v[0], tab8, 1); }, {rnd({1, 3, 2, 8}, 2)});
  CHECK(THROW_MSG(rope(r, tab8, 30)).find("rope: positions up to 34") == 0);
  CHECK(THROW_MSG(rope(r, tab, 0)).find("head_dim") != std::string::npos);
  CHECK(THROW_MSG(rope_table<double>(4, 5, 10000.0)).find("even") != std::string::npos);
}

TEST_CASE("rope YaRN frequencies follow Hugging Face's formula") {
  // D = 8, theta = 10000, factor 4, original 64, beta_fast 32, beta_slow 1
  double scale = 0;
  auto inv = rope_inv_freq(8, 10000.0, YarnScaling{4.0, 64, 32, 1}, &scale);
  CHECK(scale == doctest::Approx(0.1 * std::log(4.0) + 1.0));
  const double pi = 3.14159265358979323846;
  auto dim = [&](double r) { return 8 * std::log(64 / (r * 2 * pi)) / (2 * std::log(10000.0)); };
  double low = std::max(std::floor(dim(32)), 0.0), high = std::min(std::ceil(dim(1)), 7.0);
  for (int i = 0; i < 4; ++i) {
    double base = std::pow(10000.0, -2.0 * i / 8);
    double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    double expect = base / 4 * ramp + base * (1 - ramp);
    CHECK(inv[i] == doctest::Approx(expect).epsilon(1e-14));
  }
  // low-index (high-frequency) dimensions keep their frequency, the last is interpolated
  CHECK(inv[0] == doctest::Approx(1.0));
  CHECK(inv[3] == doctest::Approx(std::pow(10000.0, -6.0 / 8) / 4));
  auto t = rope_table<double>(4, 8, 10000.0, YarnScaling{4.0, 64, 32, 1});
  CHECK(t.cos(0, 0) == doctest::Approx(scale));  // mscale multiplies cos and sin
}

// ---- attention ------------------------------------------------------------------------

namespace {
// Attention written as separate ops (matmul, masked softmax) to check the fused op.
TD attention_by_ops(const TD& q, const TD& k, const TD& v) {
  // q (B,T,H,D) -> (B,H,T,D)
  const std::size_t T = q.size(1), H = q.size(2), Hkv = k.size(2), D = q.size(3);
  TD qh = permute(q, {0, 2, 1, 3});
  std::vector<TD> ks, vs;
  for (std::size_t h = 0; h < H; ++h) {  // repeat kv heads for grouped-query attention
    ks.push_back(slice(k, 2, h / (H / Hkv), h / (H / Hkv) + 1));
    vs.push_back(slice(v, 2, h / (H / Hkv), h / (H / Hkv) + 1));
  }
  TD kh = permute(concat(ks, 2), {0, 2, 3, 1});  // (B,H,D,T)
  TD vh = permute(concat(vs, 2), {0, 2, 1, 3});  // (B,H,T,D)
  TD s = matmul(qh, kh) * (1.0 / std::sqrt(double(D)));
  xt::xarray<bool> mask = xt::zeros<bool>({T, T});
  for (std::size_t i = 0; i < T; ++i)
    for (std::size_t j = i + 1; j < T; ++j) mask(i, j) = true;
  TD p = softmax(masked_fill(s, mask, -std::numeric_limits<double>::infinity()));
  return permute(matmul(p, vh), {0, 2, 1, 3});
}
}  // namespace

TEST_CASE("attention: matches the composition of ops, GQA, decoding offset, probabilities, gradients") {
  TD q = rnd({2, 5, 4, 3}, 1), k = rnd({2, 5, 2, 3}, 2), v = rnd({2, 5, 2, 3}, 3);
  TD o = attention(q, k, v);
  TD ref = attention_by_ops(q, k, v);
  CHECK(xt::allclose(o.value(), ref.value(), 1e-12, 1e-14));
  // probabilities: rows sum to 1, zero above the diagonal, first row all on key 0
  xt::xarray<double> P;
  attention(q, k, v, std::nullopt, &P);
  CHECK(P.shape()[3] == 5);
  CHECK(xt::allclose(xt::sum(P, {3}), xt::ones<double>({2, 4, 5})));
  CHECK(P(1, 3, 0, 0) == doctest::Approx(1.0));
  CHECK(P(0, 0, 1, 4) == 0.0);
  // decoding: the last query against all keys equals the last row of full attention
  TD q_last = slice(q, 1, 4, 5);
  TD o_last = attention(q_last, k, v);
  CHECK(xt::allclose(o_last.value(), xt::view(o.value(), xt::all(), xt::range(4, 5)), 1e-12, 1e-14));

  check_grad([](auto& v) { return attention(v[0], v[1], v[2]); }, {rnd({1, 4, 2, 3}, 4), rnd({1, 4, 1, 3}, 5), rnd({1, 4, 1, 3}, 6)});
  check_grad([](auto& v) { return attention(v[0], v[1], v[2]); }, {rnd({2, 3, 2, 2}, 7), rnd({2, 3, 2, 2}, 8), rnd({2, 3, 2, 2}, 9)});
  check_grad([](auto& v) { return attention(v[0], v[1], v[2]); }, {rnd({1, 2, 2, 3}, 10), rnd({1, 5, 1, 3}, 11), rnd({1, 5, 1, 3}, 12)});  // Tq < Tk
  check_grad([](auto& v) { return attention(v[0], v[1], v[2], 0.7); }, {rnd({1, 1, 1, 2}, 13), rnd({1, 1, 1, 2}, 14), rnd({1, 1, 1, 2}, 15)});  // T = 1
  // large scores stay finite
  TD big = attention(rnd({1, 4, 1, 2}, 16, 100, 101), rnd({1, 4, 1, 2}, 17, 100, 101), rnd({1, 4, 1, 2}, 18));
  CHECK(xt::all(xt::isfinite(big.value())));
  check_float_matches_double([](auto& v) { return attention(v[0], v[1], v[2]); }, {rnd({2, 7, 4, 8}, 19), rnd({2, 7, 2, 8}, 20), rnd({2, 7, 2, 8}, 21)});

  std::string m = THROW_MSG(attention(TD::ones({1, 2, 3, 4}), TD::ones({1, 2, 2, 4}), TD::ones({1, 2, 2, 4})));
  CHECK(m.find("attention: q (1,2,3,4)") == 0);
  CHECK(m.find("not a multiple") != std::string::npos);
  CHECK(THROW_MSG(attention(TD::ones({1, 3, 2, 4}), TD::ones({1, 2, 2, 4}), TD::ones({1, 2, 2, 4}))).find("more queries") != std::string::npos);
}

TEST_CASE("attention_cached: the first Tk positions of a larger cache, read in place") {
  // q (B=2,Tq=2,H=4,D=3) against 5 filled positions of a cache (2,8,Hkv=2,3).
  TD q = TD::from(rnd({2, 2, 4, 3}, 31).value());  // no grad
  const Arr kbuf = rnd({2, 8, 2, 3}, 32).value(), vbuf = rnd({2, 8, 2, 3}, 33).value();
  const Arr k = xt::view(kbuf, xt::all(), xt::range(0, 5)), v = xt::view(vbuf, xt::all(), xt::range(0, 5));
  xt::xarray<double> p1, p2;
  const Arr want = attention(q, TD::from(k), TD::from(v), std::nullopt, &p1).value();
  const Arr got = attention_cached(q, kbuf, vbuf, 5, &p2).value();
  CHECK(xt::amax(xt::abs(got - want))() < 1e-14);
  CHECK(xt::amax(xt::abs(p2 - p1))() < 1e-14);
  CHECK(THROW_MSG(attention_cached(q, kbuf, vbuf, 9)).find("attention_cached: q (2,2,4,3) against 9") == 0);
  TD qg = rnd({2, 2, 4, 3}, 34);
  qg.requires_grad_(true);
  CHECK(THROW_MSG(attention_cached(qg, kbuf, vbuf, 5)).find("requires grad") != std::string::npos);
}

// ---- shape ops ----------------------------------------------------------------------

TEST_CASE("reshape, permute, transpose, slice, concat, split: values, gradients, errors") {
  TD x = TD::from(Arr{{1, 2, 3}, {4, 5, 6}});
  CHECK(reshape(x, {3, -1}).value() == Arr{{1, 2}, {3, 4}, {5, 6}});
  CHECK(transpose(x, 0, 1).value() == Arr{{1, 4}, {2, 5}, {3, 6}});
  CHECK(slice(x, 1, 1, 3).value() == Arr{{2, 3}, {5, 6}});
  CHECK(slice(x, -1, -1, 3).shape() == Shape{2, 1});
  CHECK(slice(x, -1, -1, 3).value()(1, 0) == 6.0);
  CHECK(concat<double>({x, x}, 0).shape() == Shape{4, 3});
  auto parts = split(x, {1, 2}, 1);
  CHECK(parts[1].value() == Arr{{2, 3}, {5, 6}});

  check_grad([](auto& v) { return reshape(v[0], {4, -1}); }, {rnd({2, 3, 2}, 1)});
  {  // to its own shape: the same tensor, no copy, and gradients still reach x
    TD w = rnd({2, 3}, 5);
    TD same = reshape(w, {2, -1});
    CHECK(same.impl() == w.impl());
    CHECK(reshape(w, {3, 2}).impl() != w.impl());
    check_grad([](auto& v) { return reshape(reshape(v[0], {2, 3}) * v[0], {6}); }, {rnd({2, 3}, 6)});
  }
  check_grad([](auto& v) { return permute(v[0], {2, 0, 1}); }, {rnd({2, 3, 2}, 2)});
  check_grad([](auto& v) { return transpose(v[0], -1, 0); }, {rnd({2, 3}, 3)});
  check_grad([](auto& v) { return slice(v[0], 1, 1, 3); }, {rnd({2, 4, 2}, 4)});
  check_grad([](auto& v) { return concat<double>({v[0], v[1], v[0]}, 1); }, {rnd({2, 1, 3}, 5), rnd({2, 2, 3}, 6)});
  check_grad([](auto& v) {
    auto p = split(v[0], {2, 1, 1}, 0);
    return p[0] * 2.0 + concat<double>({p[1], p[2]}, 0) * p[0];
  }, {rnd({4, 3}, 7)});
  CHECK(THROW_MSG(reshape(x, {4, 2})).find("reshape: (2,3)") == 0);
  CHECK(THROW_MSG(reshape(x, {-1, -1})).find("more than one -1") != std::string::npos);
  CHECK(THROW_MSG(permute(x, {0, 0})).find("permute") == 0);
  CHECK(THROW_MSG(slice(x, 1, 2, 5)).find("slice: [2:5)") == 0);
  CHECK(THROW_MSG(concat<double>({x, TD::ones({2, 2})}, 0)).find("concat: shapes (2,3) and (2,2)") == 0);
  CHECK(THROW_MSG(split(x, {1, 1}, 1)).find("split: sizes (1,1) add up to 2") == 0);
}

TEST_CASE("index_select and index_add (MoE dispatch and combine)") {
  TD x = TD::from(Arr{{1, 2}, {3, 4}, {5, 6}});
  Index idx = {2, 0, 2};
  CHECK(index_select(x, idx).value() == Arr{{5, 6}, {1, 2}, {5, 6}});
  CHECK(index_add(3, idx, TD::ones({3, 2})).value() == Arr{{1, 1}, {0, 0}, {2, 2}});
  check_grad([&](auto& v) { return index_select(v[0], idx); }, {rnd({3, 2}, 1)});
  check_grad([&](auto& v) { return index_add(4, idx, v[0]); }, {rnd({3, 2}, 2)});
  CHECK(THROW_MSG(index_select(x, Index{3})).find("index_select: index 3") == 0);
  CHECK(THROW_MSG(index_add(2, idx, TD::ones({3, 2}))).find("index_add: index 2") == 0);
}

TEST_CASE("masked_fill, where, topk") {
  TD x = TD::from(Arr{{1, 2}, {3, 4}}, true);
  xt::xarray<bool> mask = {{false, true}, {true, false}};
  CHECK(masked_fill(x, mask, -9.0).value() == Arr{{1, -9}, {-9, 4}});
  xt::xarray<bool> row = {true, false};  // broadcast over rows
  CHECK(tg::where(row, x, TD::full({2, 2}, 0.0)).value() == Arr{{1, 0}, {3, 0}});
  check_grad([&](auto& v) { return masked_fill(v[0], mask, 0.5); }, {rnd({2, 2}, 1)});
  check_grad([&](auto& v) { return tg::where(row, v[0], v[1]); }, {rnd({2, 2}, 2), rnd({2}, 3)});
  CHECK(THROW_MSG(masked_fill(x, xt::xarray<bool>{true, false, true}, 0.0)).find("masked_fill") == 0);

  TD s = TD::from(Arr{{0.1, 0.5, 0.2, 0.5}, {3.0, 1.0, 2.0, 0.0}});
  Index ti;
  TD top = topk(s, 2, &ti);
  CHECK(top.value() == Arr{{0.5, 0.5}, {3.0, 2.0}});
  CHECK(ti == Index{{1, 3}, {0, 2}});  // ties: lower index first
  check_grad([](auto& v) { return topk(v[0], 3, nullptr); }, {rnd({3, 5}, 4)});
  CHECK(THROW_MSG(topk(s, 5, &ti)).find("topk: k = 5") == 0);
}

TEST_CASE("ops compose: a two-layer MLP in float64 passes gradcheck") {
  Index targets = {1, 0, 2};
  check_grad([&](auto& v) {
    TD h = gelu(linear(v[0], v[1], v[2]));
    TD logits = linear(rmsnorm(h, TD(), 1e-6), v[3]);
    return cross_entropy(logits, targets);
  }, {rnd({3, 4}, 1), rnd({6, 4}, 2), rnd({6}, 3), rnd({3, 6}, 4)});
}

TEST_CASE("gradcheck catches a wrong gradient and says where") {
  // f(x) = x * x, but the caller pretends d/dx = x by detaching one factor
  GradcheckResult r = gradcheck([](auto& v) { return v[0] * v[0].detach(); }, {rnd({3}, 1)});
  CHECK_FALSE(r.ok);
  CHECK(r.worst.find("input 0 element") == 0);
  CHECK(r.summary().find("FAILED") != std::string::npos);
  // a large input goes through projections and still catches it
  GradcheckResult r2 = gradcheck([](auto& v) { return sum(v[0] * v[0].detach()); }, {rnd({80, 80}, 2)});
  CHECK_FALSE(r2.ok);
  CHECK(r2.mode == "projections");
  CHECK(THROW_MSG(gradcheck([](auto& v) { return v[0]; }, {TD::ones({2})})).find("no input requires grad") != std::string::npos);
}
