// tests/test_ops_gradgrad.cpp — second order for every op of autograd/ops.hpp: a float64
// gradgradcheck (central differences of vector-Jacobian products against the derivatives
// of the ops' differentiable backwards), broadcasting, masks, GQA and edge cases included;
// and the differentiable backward agreeing with the fast one at first order.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include <xtensor/xmath.hpp>

#include "autograd/autograd.hpp"
#include "test_util.hpp"

using namespace tg;
using TD = Tensor<double>;
using Arr = xt::xarray<double>;

namespace {

TD rnd(const Shape& s, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Generator g(seed);
  return TD::rand(s, g, lo, hi, true);
}

// The first-order gradients of grad() (the differentiable backward, run without
// recording) equal those of the fast backward(), for a random cotangent.
void check_vjp_matches_fast(const GradcheckFn& f, const std::vector<TD>& in_) {
  std::vector<TD> in, req;
  for (auto& t : in_) {
    in.push_back(t.defined() ? t.clone_leaf() : TD());
    if (t.defined() && t.requires_grad()) req.push_back(in.back());
  }
  TD y = f(in);
  Generator gen(99);
  Arr v = TD::randn(y.shape(), gen).value();
  std::vector<TD> g = grad<double>({y}, req, {TD(v)}, false, true);
  y.backward(v);
  for (std::size_t i = 0; i < req.size(); ++i) {
    Arr fast = req[i].has_grad() ? req[i].grad() : Arr(xt::zeros<double>(req[i].shape()));
    Arr slow = g[i].defined() ? g[i].value() : Arr(xt::zeros<double>(req[i].shape()));
    REQUIRE(fast.shape() == slow.shape());
    double scale = std::max(1.0, xt::amax(xt::abs(fast))());
    CHECK(xt::amax(xt::abs(fast - slow))() <= 1e-12 * scale);
  }
}

// gradgradcheck f, and its vjp against the fast backward.
void check2(const GradcheckFn& f, const std::vector<TD>& in, GradcheckOptions opt = {}) {
  GradcheckResult r = gradgradcheck(f, in, opt);
  INFO(r.summary());
  CHECK(r.ok);
  CHECK(r.checks > 0);
  check_vjp_matches_fast(f, in);
}

}  // namespace

TEST_CASE("gradgrad: add, sub, mul, div with broadcasting - neg, scalars") {
  std::vector<std::pair<Shape, Shape>> pairs = {{{3, 4}, {4}}, {{2, 1, 3}, {1, 2, 1}}, {{3}, {}}, {{2, 3}, {2, 3}}};
  int seed = 1;
  for (auto& [sa, sb] : pairs) {
    TD x = rnd(sa, seed++), y = rnd(sb, seed++, 0.5, 2.0);
    check2([](auto& v) { return add(v[0], v[1]); }, {x, y});
    check2([](auto& v) { return sub(v[0], v[1]); }, {x, y});
    check2([](auto& v) { return mul(v[0], v[1]); }, {x, y});
    check2([](auto& v) { return div(v[0], v[1]); }, {x, y});
  }
  // one input constant
  TD c = TD::from(Arr{0.5, 1.5, 2.5});
  check2([c](auto& v) { return div(c, v[0]); }, {rnd({2, 3}, 11, 0.5, 2.0)});
  check2([](auto& v) { return neg(v[0]) * v[0]; }, {rnd({3}, 12)});
  check2([](auto& v) { return (v[0] * 3.0 + 2.0) * v[0]; }, {rnd({3}, 13)});
}

TEST_CASE("gradgrad: unary functions") {
  TD x = rnd({2, 5}, 21), xp = rnd({2, 5}, 22, 0.3, 2.0);
  check2([](auto& v) { return exp(v[0]); }, {x});
  check2([](auto& v) { return log(v[0]); }, {xp});
  check2([](auto& v) { return sqrt(v[0]); }, {xp});
  check2([](auto& v) { return rsqrt(v[0]); }, {xp});
  check2([](auto& v) { return abs(v[0]) * v[0]; }, {x});
  check2([](auto& v) { return relu(v[0]) * v[0]; }, {x});
  check2([](auto& v) { return sigmoid(v[0]); }, {x});
  check2([](auto& v) { return tanh(v[0]); }, {x});
  check2([](auto& v) { return silu(v[0]); }, {x});
  check2([](auto& v) { return gelu(v[0], GeluApprox::Erf); }, {x});
  check2([](auto& v) { return gelu(v[0], GeluApprox::Tanh); }, {x});
  check2([](auto& v) { return pow(v[0], 3.0); }, {x});
  check2([](auto& v) { return pow(v[0], 2.5); }, {xp});
  check2([](auto& v) { return clamp(v[0], -0.5, 0.5) * v[0]; }, {x});
}

TEST_CASE("gradgrad: matmul (shared and batched) and linear") {
  check2([](auto& v) { return matmul(v[0], v[1]); }, {rnd({3, 4}, 31), rnd({4, 2}, 32)});
  check2([](auto& v) { return matmul(v[0], v[1]); }, {rnd({2, 3, 4}, 33), rnd({4, 2}, 34)});
  check2([](auto& v) { return matmul(v[0], v[1]); }, {rnd({2, 3, 4}, 35), rnd({2, 4, 2}, 36)});
  check2([](auto& v) { return tanh(matmul(v[0], v[1])); }, {rnd({2, 2, 3}, 37), rnd({3, 2}, 38)});
  check2([](auto& v) { return linear(v[0], v[1], v[2]); }, {rnd({2, 3, 4}, 39), rnd({5, 4}, 40), rnd({5}, 41)});
  check2([](auto& v) { return sigmoid(linear(v[0], v[1])); }, {rnd({3, 4}, 42), rnd({2, 4}, 43)});
  check2([](auto& v) { return linear(v[0], v[1], v[2]) * v[2]; }, {rnd({4}, 44), rnd({3, 4}, 45), rnd({3}, 46)});
}

TEST_CASE("gradgrad: sum, mean, max") {
  TD x = rnd({2, 3, 4}, 51);
  check2([](auto& v) { return sum(v[0] * v[0], {1}); }, {x});
  check2([](auto& v) { return sum(v[0] * v[0]); }, {x});
  check2([](auto& v) { return mean(exp(v[0]), {0, 2}, true); }, {x});
  check2([](auto& v) { return max(v[0] * v[0], 1); }, {x});
  check2([](auto& v) { return max(v[0], -1, true) * v[0]; }, {x});
}

TEST_CASE("gradgrad: softmax, log_softmax, cross_entropy (masked rows, ignore_index, reductions)") {
  TD x = rnd({3, 5}, 61, -2, 2);
  check2([](auto& v) { return softmax(v[0], -1); }, {x});
  check2([](auto& v) { return softmax(v[0], 0); }, {x});
  check2([](auto& v) { return log_softmax(v[0], -1); }, {x});
  check2([](auto& v) { return log_softmax(v[0], 0); }, {x});
  // a fully masked row: zero probabilities, zero gradients
  xt::xarray<bool> row = xt::zeros<bool>({3, 1});
  row(1, 0) = true;
  check2([row](auto& v) { return softmax(masked_fill(v[0], row, -std::numeric_limits<double>::infinity()), -1); }, {x});
  Index t = {4, -100, 0};
  check2([t](auto& v) { return cross_entropy(v[0], t); }, {x});
  check2([t](auto& v) { return cross_entropy(v[0], t, -100, Reduction::Sum); }, {x});
  check2([t](auto& v) { return cross_entropy(v[0], t, -100, Reduction::None); }, {x});
  Index t2 = {{1, 2}, {0, 3}};
  check2([t2](auto& v) { return cross_entropy(v[0], t2); }, {rnd({2, 2, 4}, 62, -2, 2)});
}

TEST_CASE("gradgrad: embedding, rmsnorm, layernorm, swiglu, sigmoid_gate, dropout") {
  Index ids = {{1, 0, 1}, {2, 2, 0}};
  check2([ids](auto& v) { return embedding(ids, v[0]) * embedding(ids, v[0]); }, {rnd({3, 4}, 71)});
  TD x = rnd({2, 3, 4}, 72), w = rnd({4}, 73, 0.5, 1.5), b = rnd({4}, 74);
  check2([](auto& v) { return rmsnorm(v[0], v[1], 1e-5); }, {x, w});
  check2([](auto& v) { return rmsnorm(v[0], TD(), 1e-5); }, {x});
  check2([](auto& v) { return layernorm(v[0], v[1], v[2], 1e-5); }, {x, w, b});
  check2([](auto& v) { return layernorm(v[0], TD(), TD(), 1e-5); }, {x});
  check2([](auto& v) { return swiglu(v[0], v[1]); }, {rnd({2, 5}, 75), rnd({2, 5}, 76)});
  check2([](auto& v) { return sigmoid_gate(v[0], v[1]); }, {rnd({2, 5}, 77), rnd({2, 5}, 78)});
  check2([](auto& v) {
    Generator g(5);  // the same mask at every evaluation
    return dropout(v[0] * v[0], 0.4, g);
  }, {rnd({3, 4}, 79)});
}

TEST_CASE("gradgrad: rope (offset, YaRN) and attention (GQA, Tq < Tk, explicit scale)") {
  auto tab = rope_table<double>(8, 4, 10000.0);
  auto yarn = rope_table<double>(8, 4, 100.0, YarnScaling{4.0, 4, 32, 1});
  check2([&](auto& v) { return rope(v[0], tab, 0) * v[0]; }, {rnd({1, 3, 2, 4}, 81)});
  check2([&](auto& v) { return rope(v[0] * v[0], tab, 2); }, {rnd({2, 3, 1, 4}, 82)});
  check2([&](auto& v) { return rope(v[0], yarn, 1) * v[0]; }, {rnd({1, 4, 2, 4}, 83)});
  GradcheckOptions opt;
  opt.full_limit = 1500;  // larger problems by projections
  check2([](auto& v) { return attention(v[0], v[1], v[2]); }, {rnd({1, 3, 2, 2}, 84), rnd({1, 3, 1, 2}, 85), rnd({1, 3, 1, 2}, 86)}, opt);
  check2([](auto& v) { return attention(v[0], v[1], v[2], 0.7); }, {rnd({2, 2, 4, 3}, 87), rnd({2, 4, 2, 3}, 88), rnd({2, 4, 2, 3}, 89)}, opt);
  check2([](auto& v) { return attention_reference(v[0], v[1], v[2]); }, {rnd({1, 3, 2, 2}, 90), rnd({1, 3, 1, 2}, 91), rnd({1, 3, 1, 2}, 92)}, opt);
}

TEST_CASE("attention_reference equals the fused attention") {
  TD q = rnd({2, 3, 4, 5}, 93), k = rnd({2, 5, 2, 5}, 94), v = rnd({2, 5, 2, 5}, 95);
  CHECK(xt::allclose(attention_reference(q, k, v).value(), attention(q, k, v).value(), 1e-12, 1e-12));
  CHECK(xt::allclose(attention_reference(q, k, v, 0.3).value(), attention(q, k, v, 0.3).value(), 1e-12, 1e-12));
  CHECK(THROW_MSG(attention_reference(q, k, TD::zeros({2, 5, 3, 5}))).find("attention_reference") != std::string::npos);
}

TEST_CASE("gradgrad: shape ops, index ops, masked_fill, where, topk, sum_to, broadcast_to") {
  TD x = rnd({2, 3, 4}, 101);
  check2([](auto& v) { return reshape(v[0], {4, -1}) * reshape(v[0], {4, 6}); }, {x});
  check2([](auto& v) { return permute(v[0], {2, 0, 1}) * permute(v[0], {2, 0, 1}); }, {x});
  check2([](auto& v) { return transpose(exp(v[0]), 0, 2); }, {x});
  check2([](auto& v) { return slice(v[0], 1, 1, 3) * slice(v[0], 1, 0, 2); }, {x});
  check2([](auto& v) { return slice(v[0] * v[0], -1, 0, 4); }, {x});
  check2([](auto& v) { return concat(std::vector<TD>{v[0], v[1] * v[0]}, 1); }, {rnd({2, 2}, 102), rnd({2, 2}, 103)});
  check2([](auto& v) {
    auto parts = split(v[0], {1, 3}, -1);
    return parts[0] * parts[1];
  }, {x});
  Index idx = {2, 0, 2};
  check2([idx](auto& v) { return index_select(v[0], idx) * index_select(v[0], idx); }, {rnd({3, 2}, 104)});
  check2([idx](auto& v) { return index_add(4, idx, v[0] * v[0]); }, {rnd({3, 2}, 105)});
  xt::xarray<bool> m = xt::zeros<bool>({1, 4});
  m(0, 0) = m(0, 3) = true;
  check2([m](auto& v) { return masked_fill(v[0] * v[0], m, 3.0); }, {rnd({3, 4}, 106)});
  xt::xarray<bool> c = xt::zeros<bool>({4});
  c(0) = c(2) = true;
  check2([c](auto& v) { return tg::where(c, v[0] * v[0], v[1] * v[0]); }, {rnd({3, 4}, 107), rnd({4}, 108)});
  check2([](auto& v) {
    Index ix;
    return topk(v[0] * v[0], 2, &ix);
  }, {rnd({3, 5}, 109)});
  check2([](auto& v) { return sum_to(v[0] * v[0], {3, 1}); }, {rnd({2, 3, 4}, 110)});
  check2([](auto& v) { return broadcast_to(v[0], {2, 3, 4}) * broadcast_to(v[0], {2, 3, 4}); }, {rnd({3, 1}, 111)});
}

TEST_CASE("sum_to and broadcast_to as ops: values, each other's gradient, errors") {
  TD x = TD::from(Arr{{1.0, 2.0}, {3.0, 4.0}}, true);
  CHECK(sum_to(x, {2}).value() == Arr{4.0, 6.0});
  CHECK(sum_to(x, {2, 1}).value()(1, 0) == 7.0);
  CHECK(sum_to(x, {}).value()() == 10.0);
  CHECK(sum_to(x, {2, 2}).same(x));
  CHECK(broadcast_to(TD::from(Arr{1.0, 2.0}), {3, 2}).value() == Arr{{1, 2}, {1, 2}, {1, 2}});
  CHECK(THROW_MSG(sum_to(x, {3})).find("sum_to") != std::string::npos);
  CHECK(THROW_MSG(broadcast_to(x, {3, 3})).find("broadcast_to") != std::string::npos);
  GradcheckResult r1 = gradcheck([](auto& v) { return sum_to(v[0], {3, 1}); }, {rnd({2, 3, 4}, 112)});
  GradcheckResult r2 = gradcheck([](auto& v) { return broadcast_to(v[0], {2, 3, 4}); }, {rnd({3, 1}, 113)});
  INFO(r1.summary() << " / " << r2.summary());
  CHECK(r1.ok);
  CHECK(r2.ok);
}

TEST_CASE("gradgrad: ops compose (a two-layer MLP with a loss)") {
  Index t = {1, 0, 2};
  check2([t](auto& v) {
    TD h = gelu(linear(v[0], v[1], v[2]), GeluApprox::Tanh);
    return cross_entropy(linear(rmsnorm(h, TD(), 1e-6), v[3]), t);
  }, {rnd({3, 4}, 121), rnd({5, 4}, 122), rnd({5}, 123), rnd({3, 5}, 124)});
}

TEST_CASE("gradgradcheck catches a wrong second derivative and says where") {
  // cube with a backward whose ops are wrong: dx = dy * 3x (not 3x²). First order is
  // right (the fast closure), the vjp is not.
  auto cube = [](const TD& x) {
    TD out(Arr(x.value() * x.value() * x.value()));
    attach<double>(out, "cube", {x}, [x](const Arr& dy) { x.accumulate_grad(Arr(dy * 3.0 * x.value() * x.value()), "cube"); })
        .vjp = [x](const TD&, const TD& dy) -> Grads<double> { return {dy * x * 3.0}; };
    return out;
  };
  TD x = rnd({3}, 131, 0.5, 1.5);
  GradcheckResult r = gradgradcheck([&](auto& v) { return cube(v[0]); }, {x});
  CHECK_FALSE(r.ok);
  CHECK(r.summary().find("gradgrad") != std::string::npos);
  CHECK(r.worst.find("input 0") != std::string::npos);
}
