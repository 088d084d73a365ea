// tests/test_tape.cpp — the tensor handle and the tape: creation, accumulation (reuse,
// diamonds), no_grad, retain_graph, zero_grad, detach, dumps, errors, anomaly mode.
#include <doctest/doctest.h>

#include <cmath>
#include <sstream>

#include "autograd/autograd.hpp"
#include "test_util.hpp"

using namespace tg;
using TD = Tensor<double>;


TEST_CASE("creation, shape and item") {
  Generator gen(7);
  auto z = TD::zeros({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.numel() == 6);
  CHECK(z.size(-1) == 3);
  CHECK(TD::ones({4}).value()(3) == 1.0);
  CHECK(TD::full({2}, 2.5).value()(1) == 2.5);
  CHECK(TD::scalar(3.0).item() == 3.0);
  auto r = TD::arange(0, 5, 2);
  CHECK(r.shape() == Shape{3});
  CHECK(r.value()(2) == 4.0);
  auto a = TD::randn({1000}, gen);
  double m = 0;
  for (double v : a.value()) m += v;
  CHECK(std::abs(m / 1000) < 0.15);
  auto u = Tensor<float>::rand({100}, gen, -1.f, 1.f);
  for (float v : u.value()) CHECK((v >= -1.f && v < 1.f));
  // same seed, same numbers
  Generator g1(42), g2(42);
  CHECK(TD::randn({5}, g1).value() == TD::randn({5}, g2).value());
  CHECK(THROW_MSG(TD::zeros({2, 2}).item()).find("(2,2)") != std::string::npos);
  CHECK(THROW_MSG(TD().shape()).find("undefined") != std::string::npos);
  std::ostringstream s;
  s << TD::ones({2}, true).set_name("w");
  CHECK(s.str().find("'w'") != std::string::npos);
  CHECK(s.str().find("float64") != std::string::npos);
}

TEST_CASE("reuse: d(x*x)/dx = 2x accumulates both uses") {
  TD x = TD::full({3}, 1.5, true);
  TD y = sum(x * x);
  y.backward();
  for (double g : x.grad()) CHECK(g == doctest::Approx(3.0));
}

TEST_CASE("diamond graph: a -> (b, c) -> d") {
  // a = 2; b = a*3; c = a*a; d = b*c = 3a^3 -> dd/da = 9a^2 = 36
  TD a = TD::scalar(2.0, true);
  TD b = a * 3.0;
  TD c = a * a;
  TD d = b * c;
  d.backward();
  CHECK(d.item() == doctest::Approx(24.0));
  CHECK(a.grad()() == doctest::Approx(36.0));
  // intermediates we still hold keep their gradients
  CHECK(b.grad()() == doctest::Approx(4.0));   // dd/db = c
  CHECK(c.grad()() == doctest::Approx(6.0));   // dd/dc = b
}

TEST_CASE("gradients accumulate across backward calls until zero_grad") {
  TD x = TD::scalar(1.0, true);
  (x * 2.0).backward();
  (x * 3.0).backward();
  CHECK(x.grad()() == doctest::Approx(5.0));
  x.zero_grad();
  CHECK_FALSE(x.has_grad());
  (x * 4.0).backward();
  CHECK(x.grad()() == doctest::Approx(4.0));
}

TEST_CASE("no_grad records nothing") {
  TD x = TD::ones({2}, true);
  std::size_t before = Tape<double>::current().size();
  {
    NoGrad ng;
    TD y = x * x;
    CHECK_FALSE(y.requires_grad());
    CHECK(y.is_leaf());
    CHECK(Tape<double>::current().size() == before);
    CHECK(THROW_MSG(y.backward(xt::xarray<double>({1.0, 1.0}))).find("does not require grad") != std::string::npos);
  }
  TD z = x * x;
  CHECK(z.requires_grad());
  CHECK(Tape<double>::current().size() == before + 1);
}

TEST_CASE("retain_graph allows a second backward - without it, a clear error") {
  TD x = TD::scalar(3.0, true);
  TD y = x * x;
  y.backward(true);
  y.backward(true);
  CHECK(x.grad()() == doctest::Approx(12.0));
  y.backward();  // frees
  CHECK(x.grad()() == doctest::Approx(18.0));
  std::string m = THROW_MSG(y.backward());
  CHECK(m.find("already freed") != std::string::npos);
  CHECK(m.find("retain_graph") != std::string::npos);
}

TEST_CASE("backward errors: no grad, non-scalar without grad_output, wrong grad shape") {
  TD c = TD::ones({2});
  CHECK(THROW_MSG(c.backward()).find("does not require grad") != std::string::npos);
  TD x = TD::ones({2}, true);
  TD y = x * 2.0;
  CHECK(THROW_MSG(y.backward()).find("(2)") != std::string::npos);
  CHECK(THROW_MSG(y.backward(xt::xarray<double>({1.0, 2.0, 3.0}))).find("(3)") != std::string::npos);
}

TEST_CASE("backward with an explicit grad_output is a vector-Jacobian product") {
  TD x = TD::from(xt::xarray<double>{1.0, 2.0}, true);
  TD y = x * x;  // J = diag(2x)
  y.backward(xt::xarray<double>{10.0, 100.0});
  CHECK(x.grad()(0) == doctest::Approx(20.0));
  CHECK(x.grad()(1) == doctest::Approx(400.0));
}

TEST_CASE("detach cuts the graph - requires_grad_ only on leaves") {
  TD x = TD::scalar(2.0, true);
  TD y = x * x;
  TD d = y.detach();
  CHECK(d.is_leaf());
  CHECK_FALSE(d.requires_grad());
  TD z = d * x;  // only x's direct use counts
  z.backward();
  CHECK(x.grad()() == doctest::Approx(4.0));
  CHECK(THROW_MSG(y.requires_grad_(false)).find("only leaves") != std::string::npos);
}

TEST_CASE("the graph is freed with its result - the tape holds nodes weakly") {
  TD x = TD::ones({4}, true);
  std::size_t before = Tape<double>::current().size();
  {
    TD y = exp(x * 2.0);
    CHECK(Tape<double>::current().size() == before + 2);
  }
  CHECK(Tape<double>::current().size() == before);
  // after backward without retain_graph the walked nodes are gone
  TD y = sum(x * x);
  y.backward();
  CHECK(Tape<double>::current().size() == before);
}

TEST_CASE("tape dump names ops and shapes") {
  Tape<double>::current().clear();
  TD a = TD::ones({2, 3}, true);
  a.set_name("a");
  TD w = TD::ones({4, 3}, true);
  TD y = linear(a, w);
  TD l = mean(y);
  l.set_name("loss");
  std::string d = Tape<double>::current().dump();
  CHECK(d.find("linear (a:(2,3), (4,3)) -> (2,4)") != std::string::npos);
  CHECK(d.find("mean (#") != std::string::npos);  // an unnamed input shows the node that made it
  CHECK(d.find(":(2,4)) -> loss:()") != std::string::npos);
  l.backward(true);
  std::string dg = Tape<double>::current().dump(true);
  CHECK(dg.find("grad=1") != std::string::npos);
}

TEST_CASE("anomaly mode names the first op that produced NaN or Inf") {
  TD x = TD::from(xt::xarray<double>{1.0, -1.0}, true);
  {
    DetectAnomaly guard;
    std::string m = THROW_MSG(log(x));
    CHECK(m.find("'log'") != std::string::npos);
    CHECK(m.find("NaN") != std::string::npos);
    // backward: sqrt at 0 has an infinite derivative
    TD z = TD::from(xt::xarray<double>{0.0, 4.0}, true);
    TD s = sum(sqrt(z));
    std::string mb = THROW_MSG(s.backward());
    CHECK(mb.find("'sqrt'") != std::string::npos);
  }
  TD y = log(x);  // outside anomaly mode: no error, NaN propagates
  CHECK(std::isnan(y.value()(1)));
}

TEST_CASE("anomaly mode names the inputs' shapes and the module (Scope) of the op at fault") {
  DetectAnomaly guard;
  TD a = TD::from(xt::xarray<double>{{1.0, 2.0, 3.0}}, true);   // (1,3)
  TD b = TD::from(xt::xarray<double>{{0.0, 1.0, -1.0}}, true);  // (1,3)
  {
    Scope outer("model.layers.3");
    Scope inner("self_attn");
    CHECK(current_scope() == "model.layers.3.self_attn");
    std::string m = THROW_MSG(div(a, b));
    CHECK_MESSAGE(m.find("op 'div' (inputs (1,3), (1,3); in model.layers.3.self_attn) produced Inf") !=
                      std::string::npos, m);
  }
  CHECK(current_scope().empty());
  // Backward runs outside the scopes; the node remembers where its forward ran.
  TD z = TD::from(xt::xarray<double>{0.0, 4.0}, true);
  TD r;
  {
    Scope s("mlp");
    r = sqrt(z);
  }
  TD total = sum(r);
  std::string mb = THROW_MSG(total.backward());
  CHECK_MESSAGE(mb.find("op 'sqrt' (inputs (2); in mlp) produced Inf in its backward's gradient for input 0") !=
                    std::string::npos, mb);
}

TEST_CASE("to_dot draws the graph behind a tensor: boxes for tensors, ellipses for ops, values of small tensors") {
  TD a = TD::scalar(2.0, true).set_name("a");
  TD b = TD::scalar(-3.0, true).set_name("b");
  TD c = (a * b).set_name("c");
  TD big = TD::ones({3, 4}, true);
  TD l = (c + sum(big)).set_name("L");
  l.backward(/*retain_graph=*/true);
  const std::string d = to_dot<double>({l}, {.max_values = 4, .grads = true, .title = "L = a*b + sum(big)"});
  CHECK(d.rfind("digraph tape {", 0) == 0);
  CHECK(d.find("label=\"a ()\\nvalue 2\\ngrad -3\"") != std::string::npos);  // dL/da = b
  CHECK(d.find("label=\"c ()\\nvalue -6\\ngrad 1\"") != std::string::npos);
  CHECK(d.find("(3,4)\\n|grad| 3.464") != std::string::npos);  // large: the gradient's norm, sqrt(12)
  CHECK(d.find(" mul\"") != std::string::npos);
  CHECK(d.find(" sum") != std::string::npos);
  CHECK(d.find("L = a*b + sum(big)") != std::string::npos);
  // every op has one arrow out and one per input: mul (2 in), sum (1), add (2) -> 8 arrows
  std::size_t arrows = 0;
  for (std::size_t at = d.find("->"); at != std::string::npos; at = d.find("->", at + 2)) ++arrows;
  CHECK(arrows == 8);
}

TEST_CASE("float and double both work") {
  Tensor<float> x = Tensor<float>::full({2}, 2.f, true);
  auto y = sum(x * x * x);
  y.backward();
  CHECK(x.grad()(0) == doctest::Approx(12.f));
}
