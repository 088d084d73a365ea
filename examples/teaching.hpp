// examples/teaching.hpp — the teaching walk-throughs, shared by the small programs in
// examples/ and by `tapegrad demo`.
//
//   scalar_tape_demo(): a scalar expression, its tape, and the gradient of every node.
//   two_moons_demo():   an MLP trained with plain SGD on a seeded two-moons data set,
//                       printing the loss falling, the accuracy, and the decision boundary.
#pragma once

#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "autograd/autograd.hpp"

namespace tg::teaching {

// f(a, b) = tanh(a*b + b^2) / (1 + exp(-a)), at a = 0.5, b = -1.5.
inline void scalar_tape_demo(std::ostream& os = std::cout) {
  using TD = Tensor<double>;
  Tape<double>::current().clear();
  TD a = TD::scalar(0.5, true).set_name("a");
  TD b = TD::scalar(-1.5, true).set_name("b");
  TD ab = (a * b).set_name("ab");
  TD bb = (b * b).set_name("bb");
  TD t = tanh(ab + bb).set_name("t");
  TD s = sigmoid(a).set_name("s");
  TD f = (t * s).set_name("f");
  os << "f(a, b) = tanh(a*b + b^2) * sigmoid(a)   at a = 0.5, b = -1.5\n\n"
     << "The tape, in creation order (op (inputs) -> output):\n"
     << Tape<double>::current().dump();
  f.backward(/*retain_graph=*/true);
  os << "\nAfter f.backward(): the gradient of f with respect to each node's output\n"
     << Tape<double>::current().dump(/*with_grads=*/true);
  // By hand: df/da = (1 - t^2) * b * s + t * s * (1 - s);  df/db = (1 - t^2) * (a + 2b) * s
  double tv = t.item(), sv = s.item();
  double da = (1 - tv * tv) * -1.5 * sv + tv * sv * (1 - sv);
  double db = (1 - tv * tv) * (0.5 - 3.0) * sv;
  char line[200];
  std::snprintf(line, sizeof line, "\nf = %.6f\ndf/da = %.6f (by hand %.6f)\ndf/db = %.6f (by hand %.6f)\n", f.item(),
                a.grad()(), da, b.grad()(), db);
  os << line;
}

struct TwoMoons {
  xt::xarray<double> x;  // (N, 2)
  Index y;               // (N) labels 0 / 1
};

// Two interleaved half circles with Gaussian noise, drawn from gen.
inline TwoMoons make_two_moons(std::size_t n, double noise, Generator& gen) {
  TwoMoons d{xt::xarray<double>::from_shape({n, 2}), Index::from_shape({n})};
  const double pi = 3.14159265358979323846;
  for (std::size_t i = 0; i < n; ++i) {
    double angle = gen.uniform(0, pi);
    bool upper = i % 2 == 0;
    d.x(i, 0) = upper ? std::cos(angle) : 1 - std::cos(angle);
    d.x(i, 1) = upper ? std::sin(angle) : 0.5 - std::sin(angle);
    d.x(i, 0) += gen.normal(0, noise);
    d.x(i, 1) += gen.normal(0, noise);
    d.y(i) = upper ? 0 : 1;
  }
  return d;
}

// A 2 -> H -> H -> 2 MLP with tanh, trained with full-batch SGD on cross-entropy.
struct Mlp {
  std::vector<Tensor<double>> params;  // w1, b1, w2, b2, w3, b3
  Mlp(std::size_t hidden, Generator& gen) {
    auto init = [&](std::size_t out, std::size_t in) {
      return Tensor<double>::randn({out, in}, gen, 0.0, 1.0 / std::sqrt(double(in)), true);
    };
    params = {init(hidden, 2), Tensor<double>::zeros({hidden}, true), init(hidden, hidden),
              Tensor<double>::zeros({hidden}, true), init(2, hidden), Tensor<double>::zeros({2}, true)};
  }
  // x (N,2) -> logits (N,2)
  Tensor<double> operator()(const Tensor<double>& x) const {
    auto h = tanh(linear(x, params[0], params[1]));
    h = tanh(linear(h, params[2], params[3]));
    return linear(h, params[4], params[5]);
  }
};

inline double accuracy(const Mlp& mlp, const TwoMoons& d) {
  NoGrad ng;
  auto logits = mlp(Tensor<double>(d.x)).value();
  std::size_t ok = 0;
  for (std::size_t i = 0; i < d.y.size(); ++i) ok += (logits(i, 1) > logits(i, 0)) == (d.y(i) == 1);
  return double(ok) / double(d.y.size());
}

// Returns the final training accuracy.
inline double two_moons_demo(std::size_t steps = 600, double lr = 0.5, std::uint64_t seed = 0,
                             std::ostream& os = std::cout, bool draw = true) {
  Generator gen(seed);
  TwoMoons train = make_two_moons(200, 0.1, gen);
  TwoMoons test = make_two_moons(200, 0.1, gen);
  Mlp mlp(16, gen);
  Tensor<double> x(train.x);
  os << "MLP 2-16-16-2 (tanh) on two moons (200 points, noise 0.1, seed " << seed << "), SGD lr " << lr << "\n";
  for (std::size_t step = 0; step <= steps; ++step) {
    Tensor<double> loss = cross_entropy(mlp(x), train.y);
    for (auto& p : mlp.params) p.zero_grad();
    loss.backward();
    {
      NoGrad ng;  // the update is not part of any graph
      for (auto& p : mlp.params) p.mutable_value() -= lr * p.grad();
    }
    if (step % (steps / 10) == 0) {
      char line[120];
      std::snprintf(line, sizeof line, "step %4zu  loss %.4f  train accuracy %.3f\n", step, loss.item(),
                    accuracy(mlp, train));
      os << line;
    }
  }
  double acc_train = accuracy(mlp, train), acc_test = accuracy(mlp, test);
  char line[120];
  std::snprintf(line, sizeof line, "final: train accuracy %.3f, test accuracy %.3f\n", acc_train, acc_test);
  os << line;
  if (draw) {
    // The decision boundary on a character grid: '.' class 0, '#' class 1, 'o' / 'x' data.
    const int W = 60, H = 20;
    std::vector<std::string> grid(H, std::string(W, ' '));
    xt::xarray<double> pts = xt::xarray<double>::from_shape({std::size_t(W * H), 2});
    for (int r = 0; r < H; ++r)
      for (int c = 0; c < W; ++c) {
        pts(r * W + c, 0) = -1.5 + 4.0 * c / (W - 1);
        pts(r * W + c, 1) = 1.5 - 2.5 * r / (H - 1);
      }
    NoGrad ng;
    auto lg = mlp(Tensor<double>(pts)).value();
    for (int r = 0; r < H; ++r)
      for (int c = 0; c < W; ++c) grid[r][c] = lg(r * W + c, 1) > lg(r * W + c, 0) ? '#' : '.';
    for (std::size_t i = 0; i < train.y.size(); ++i) {
      int c = int(std::lround((train.x(i, 0) + 1.5) / 4.0 * (W - 1)));
      int r = int(std::lround((1.5 - train.x(i, 1)) / 2.5 * (H - 1)));
      if (r >= 0 && r < H && c >= 0 && c < W) grid[r][c] = train.y(i) ? 'x' : 'o';
    }
    os << "\ndecision boundary ('.' class 0, '#' class 1; data 'o' class 0, 'x' class 1):\n";
    for (auto& row : grid) os << "  " << row << "\n";
  }
  return acc_test;
}

}  // namespace tg::teaching
