// tests/test_hooks.cpp — Tensor::register_hook (Note [Gradient hooks] in autograd/tensor.hpp):
// what a hook sees on an intermediate and on a leaf, replacing a gradient, the order of two
// hooks, removal, errors, and hooks inside grad() and backward(create_graph=true).
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "autograd/autograd.hpp"
#include "test_util.hpp"

using namespace tg;
using TD = Tensor<double>;

TEST_CASE("hook on an intermediate: sees its whole gradient, and a replacement flows upstream") {
  TD x = TD::from(xt::xarray<double>{1.0, 2.0, 3.0}, true);
  TD y = x * x;             // dy/dx = 2x
  TD z = y * 3.0 + y;       // y used twice: its gradient is 3 + 1 = 4 per element
  std::vector<double> seen;
  y.register_hook([&](const TD& g) {
    for (double v : g.value()) seen.push_back(v);
    return g * 0.5;  // replace: halve it
  });
  sum(z).backward();
  REQUIRE(seen.size() == 3);
  for (double v : seen) CHECK(v == 4.0);
  // x's gradient is the halved one: 0.5 * 4 * 2x
  CHECK(x.grad()(0) == doctest::Approx(4.0));
  CHECK(x.grad()(2) == doctest::Approx(12.0));
}

TEST_CASE("hook on a leaf: runs once per pass on that pass's gradient, before it is added to .grad") {
  TD x = TD::from(xt::xarray<double>{2.0}, true);
  int calls = 0;
  std::vector<double> seen;
  x.register_hook([&](const TD& g) {
    ++calls;
    seen.push_back(g.item());
    return TD();  // undefined: keep it
  });
  sum(x * x + x).backward();  // 2x + 1 = 5, from two consumers, one call
  CHECK(calls == 1);
  CHECK(x.grad()(0) == 5.0);
  sum(x * 3.0).backward();  // the second pass: the hook sees 3, not 8
  CHECK(calls == 2);
  CHECK(seen[1] == 3.0);
  CHECK(x.grad()(0) == 8.0);
  // A hook that replaces a leaf's gradient changes only what this pass adds.
  const auto id = x.register_hook([](const TD& g) { return g * 0.0; });
  sum(x * 10.0).backward();
  CHECK(calls == 3);
  CHECK(seen[2] == 10.0);  // the first hook ran first, on the unreplaced gradient
  CHECK(x.grad()(0) == 8.0);
  x.remove_hook(id);
  sum(x * 1.0).backward();
  CHECK(x.grad()(0) == 9.0);
  CHECK(THROW_MSG(x.remove_hook(id)).find("no hook with id " + std::to_string(id)) != std::string::npos);
}

TEST_CASE("hooks run in registration order, each on the previous one's result") {
  TD x = TD::from(xt::xarray<double>{1.0}, true);
  TD y = x * 2.0;
  std::vector<double> seen;
  y.register_hook([&](const TD& g) { seen.push_back(g.item()); return g + 1.0; });
  y.register_hook([&](const TD& g) { seen.push_back(g.item()); return g * 10.0; });
  sum(y).backward();
  CHECK(seen == std::vector<double>{1.0, 2.0});
  CHECK(x.grad()(0) == 40.0);  // (1 + 1) * 10 * 2
}

TEST_CASE("hook errors: a wrong shape names the tensor and both shapes - a tensor without grad is refused") {
  TD x = TD::from(xt::xarray<double>{1.0, 2.0}, true);
  TD y = x * 2.0;
  y.set_name("twice");
  y.register_hook([](const TD&) { return TD::zeros({3}); });
  const std::string msg = THROW_MSG(sum(y).backward());
  CHECK(msg.find("'twice'") != std::string::npos);
  CHECK(msg.find("(2)") != std::string::npos);
  CHECK(msg.find("(3)") != std::string::npos);
  TD c = TD::ones({2});
  CHECK(THROW_MSG(c.register_hook([](const TD& g) { return g; })).find("does not require grad") != std::string::npos);
}

TEST_CASE("hooks in grad() and in backward(create_graph=true) are differentiated with the rest") {
  // y = x^3; a hook on y doubles its gradient: d/dx = 2 * 3x^2, and d2/dx2 = 2 * 6x.
  TD x = TD::from(xt::xarray<double>{1.5}, true);
  TD y = x * x * x;
  y.register_hook([](const TD& g) { return g * 2.0; });
  auto g = grad<double>({sum(y)}, {x}, {}, /*create_graph=*/true);
  CHECK(g[0].item() == doctest::Approx(2 * 3 * 1.5 * 1.5));
  auto h = grad<double>({sum(g[0])}, {x});
  CHECK(h[0].item() == doctest::Approx(2 * 6 * 1.5));
  // A hook on the leaf in the create_graph walk: g -> g * x, so grad = x * 3x^2 * 2.
  TD w = TD::from(xt::xarray<double>{2.0}, true);
  TD v = w * w * w;
  const auto hid = w.register_hook([&](const TD& gr) { return gr * w; });
  sum(v).backward(true, /*create_graph=*/true);
  CHECK(w.grad()(0) == doctest::Approx(2.0 * 3 * 4));
  // d/dw of that gradient, w * 3w^2, is 9 w^2; grad() runs w's hook on it too (times w).
  TD gw = w.grad_tensor();
  w.zero_grad();
  auto second = grad<double>({sum(gw)}, {w});
  CHECK(second[0].item() == doctest::Approx(9.0 * 4 * 2));
  w.remove_hook(hid);
  CHECK(grad<double>({sum(gw)}, {w})[0].item() == doctest::Approx(9.0 * 4));
}

TEST_CASE("a hook that removes itself runs once") {
  TD x = TD::from(xt::xarray<double>{1.0}, true);
  TD y = x * 2.0;
  int calls = 0;
  std::uint64_t id = 0;
  id = y.register_hook([&](const TD&) { ++calls; y.remove_hook(id); return TD(); });
  sum(y).backward(true);
  sum(y).backward(true);
  CHECK(calls == 1);
  CHECK(x.grad()(0) == 4.0);
}
