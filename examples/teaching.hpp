// examples/teaching.hpp — the teaching walk-throughs, shared by the small programs in
// examples/ and by `tapegrad demo`.
//
//   scalar_tape_demo(): a scalar expression, its tape, and the gradient of every node.
//   two_moons_demo():   an MLP trained with plain SGD on a seeded two-moons data set,
//                       printing the loss falling, the accuracy, and the decision boundary.
//   newton_demo():      second order: Newton's method on a small function, the Hessian
//                       taken as the gradient of the gradient (grad with create_graph).
//   gradient_penalty_demo(): the gradient of a loss that contains a gradient, its tape
//                       (the backward of the backward, recorded as ops) and a check.
//   softplus():         a custom op, written as a user of the engine writes one (attach()
//                       with a hand-written backward and its differentiable form).
//   custom_op_demo():   that op checked by gradcheck and gradgradcheck.
//   write_dot():        a graph as Graphviz DOT (autograd/dot.hpp), and PNG when `dot` is there.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "autograd/autograd.hpp"

namespace tg::teaching {

// Writes `dot_text` to path (.dot) and, if Graphviz's `dot` is installed, renders the PNG
// beside it (path with .png). Says what it wrote on os.
inline void write_dot(const std::string& dot_text, const std::string& path, std::ostream& os = std::cout) {
  {
    std::ofstream f(path);
    f << dot_text;
    if (!f) {
      os << "(could not write " << path << ")\n";
      return;
    }
  }
  std::string png = path.size() > 4 && path.substr(path.size() - 4) == ".dot" ? path.substr(0, path.size() - 4) : path;
  png += ".png";
  auto q = [](const std::string& x) {
    std::string r = "'";
    for (char c : x) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return r + "'";
  };
  const bool have_dot = std::system("command -v dot >/dev/null 2>&1") == 0;
  if (have_dot && std::system(("dot -Tpng " + q(path) + " -o " + q(png)).c_str()) == 0)
    os << "wrote " << path << " and " << png << " (Graphviz)\n";
  else
    os << "wrote " << path << (have_dot ? " (dot failed to render it)" : " (install graphviz to render it: dot -Tpng)")
       << "\n";
}

// f(a, b) = tanh(a*b + b^2) / (1 + exp(-a)), at a = 0.5, b = -1.5.
// dot_path: also draw f's graph with its values and gradients there (empty: no).
inline void scalar_tape_demo(std::ostream& os = std::cout, const std::string& dot_path = {}) {
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
  if (!dot_path.empty()) write_dot(to_dot<double>({f}, {.title = "f = tanh(a*b + b^2) * sigmoid(a)"}), dot_path, os);
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

// Newton's method on f(x, y) = (1 - x)^2 + 5 (y - x^2)^2 (a gentle Rosenbrock valley, its
// minimum at (1, 1)): each step solves H d = -g, where the gradient g comes from grad()
// with create_graph=true, so that g is itself a graph, and each row of the Hessian H is
// the gradient of one entry of g. Returns the final distance to (1, 1).
inline double newton_demo(std::ostream& os = std::cout, int steps = 12) {
  using TD = Tensor<double>;
  double x = -1.2, y = 1.0;
  auto f_of = [](const TD& v) {
    TD a = slice(v, 0, 0, 1), b = slice(v, 0, 1, 2);
    TD one_minus = 1.0 - a, valley = b - a * a;
    return sum(one_minus * one_minus + 5.0 * valley * valley);
  };
  char line[200];
  os << "Newton's method on f(x, y) = (1 - x)^2 + 5 (y - x^2)^2, from (-1.2, 1):\n"
     << "  g = grad(f, v, create_graph) is a tensor with a graph; H's row i = grad(g_i, v).\n";
  for (int k = 0; k <= steps; ++k) {
    TD v = TD::from(xt::xarray<double>{x, y}, true);
    TD f = f_of(v);
    TD g = grad<double>({f}, {v}, {}, /*create_graph=*/true)[0];  // (2), differentiable
    TD h0 = grad<double>({slice(g, 0, 0, 1)}, {v}, {TD::ones({1})})[0];  // row 0 of H
    TD h1 = grad<double>({slice(g, 0, 1, 2)}, {v}, {TD::ones({1})})[0];  // row 1 of H
    const double g0 = g.value()(0), g1 = g.value()(1);
    std::snprintf(line, sizeof line, "  step %d: (x, y) = (%+.10f, %+.10f)  f = %.3e  |g| = %.3e\n", k, x, y,
                  f.item(), std::hypot(g0, g1));
    os << line;
    if (k == steps || std::hypot(g0, g1) < 1e-12) break;
    // solve [a b; c d] d = -g
    const double a = h0.value()(0), b = h0.value()(1), c = h1.value()(0), d = h1.value()(1), det = a * d - b * c;
    x += -(d * g0 - b * g1) / det;
    y += -(-c * g0 + a * g1) / det;
  }
  const double dist = std::hypot(x - 1, y - 1);
  std::snprintf(line, sizeof line, "  distance to the minimum (1, 1): %.2e (Newton converges quadratically)\n", dist);
  os << line;
  return dist;
}

// A gradient penalty: L(w) = f(w, x) + lam * |df/dx|^2 with f = tanh(w . x). The penalty is a
// gradient, so dL/dw needs the derivative of a derivative: backward(create_graph) records
// the backward's ops on the tape, and L.backward() walks them. Prints that tape and checks
// dL/dw against central differences. dot_path: also draw L's graph there (empty: no).
// Returns the largest difference from the central differences.
inline double gradient_penalty_demo(std::ostream& os = std::cout, const std::string& dot_path = {}) {
  using TD = Tensor<double>;
  const xt::xarray<double> w0 = {0.5, -1.0, 0.25}, xv = {1.0, 2.0, -0.5};
  const double lam = 0.3;
  auto loss_at = [&](const xt::xarray<double>& wv, bool record, TD* w_out) {
    TD w = TD::from(wv, true).set_name("w");
    TD x = TD::from(xv, true).set_name("x");
    TD f = tanh(sum(w * x)).set_name("f");
    TD dfdx = grad<double>({f}, {x}, {}, /*create_graph=*/record)[0].set_name("df/dx");  // (3) = (1 - f^2) w
    TD L = (f + lam * sum(dfdx * dfdx)).set_name("L");
    if (w_out) *w_out = w;
    return L;
  };
  Tape<double>::current().clear();
  TD w;
  TD L = loss_at(w0, true, &w);
  os << "L(w) = tanh(w . x) + " << lam << " |df/dx|^2 at w = (0.5, -1, 0.25), x = (1, 2, -0.5)\n"
     << "df/dx was computed by grad(create_graph=true): its ops are on the tape, after f's:\n"
     << Tape<double>::current().dump();
  if (!dot_path.empty()) write_dot(to_dot<double>({L}, {.max_values = 3, .grads = false, .title = "L = f + lam |df/dx|^2"}), dot_path, os);
  L.backward();
  double worst = 0;
  char line[200];
  for (std::size_t i = 0; i < 3; ++i) {
    const double h = 1e-6;
    xt::xarray<double> up = w0, down = w0;
    up(i) += h, down(i) -= h;
    const double fd = (loss_at(up, false, nullptr).item() - loss_at(down, false, nullptr).item()) / (2 * h);
    worst = std::max(worst, std::abs(fd - w.grad()(i)));
    std::snprintf(line, sizeof line, "  dL/dw%zu = %+.10f   central difference %+.10f\n", i, w.grad()(i), fd);
    os << line;
  }
  return worst;
}

// ---- a custom op, step by step --------------------------------------------------------------
// Note [Writing an op]
// An op is a function from Tensors to a Tensor that, when a gradient is wanted, records a
// node on the tape. Four steps, all beside each other, as every op in autograd/ does:
//   1. compute the forward value as a plain array (xtensor, or a kernel);
//   2. ask needs_grad({&x, ...}): grad mode on and some input requires grad — if not, return;
//   3. attach(out, "name", {inputs}, backward): backward gets d(loss)/d(out) as an array
//      and ADDS each input's gradient with accumulate_grad (an input used twice gets two
//      contributions); capture what it needs by value (Tensor handles are cheap copies);
//   4. set .vjp on the node attach returned: the same product written with ops, taking
//      (out, dout) as Tensors and returning one gradient per input. Run with recording on,
//      its ops are recorded too, which is what second order (grad with create_graph, hvp,
//      jvp, gradgradcheck) differentiates. Without a vjp, first order still works and
//      create_graph fails with an error naming the op.
// Then check it: gradcheck (float64 central differences of the backward) and gradgradcheck
// (central differences of the vjp's derivatives).
//
// softplus(x) = log(1 + e^x), computed stably as max(x, 0) + log1p(e^-|x|);
// d/dx = σ(x); d²/dx² = σ(x)(1 - σ(x)).
template <class T>
Tensor<T> softplus(const Tensor<T>& x) {
  const xt::xarray<T>& v = x.value();
  Tensor<T> out(xt::xarray<T>(xt::maximum(v, T(0)) + xt::log1p(xt::exp(-xt::abs(v)))));  // 1. forward
  if (!needs_grad<T>({&x})) return out;                                                   // 2.
  attach<T>(out, "softplus", {x}, [x](const xt::xarray<T>& dout) {                        // 3. backward
    const xt::xarray<T> s = T(1) / (T(1) + xt::exp(-x.value()));                          //    σ(x)
    x.accumulate_grad(xt::xarray<T>(dout * s), "softplus");
  }).vjp = [x](const Tensor<T>&, const Tensor<T>& dout) -> Grads<T> {                      // 4. with ops
    return {dout * sigmoid(x)};
  };
  return out;
}

// Runs gradcheck and gradgradcheck on softplus inside a small function and prints both
// summaries. Returns true when both pass.
inline bool custom_op_demo(std::ostream& os = std::cout) {
  using TD = Tensor<double>;
  Generator gen(1);
  std::vector<TD> inputs = {TD::randn({3, 4}, gen, 0, 2, true), TD::randn({4}, gen, 0, 1, true)};
  GradcheckFn f = [](const std::vector<TD>& in) { return sum(softplus(in[0] * in[1]) * softplus(in[1])); };
  const GradcheckResult first = gradcheck(f, inputs);
  const GradcheckResult second = gradgradcheck(f, inputs);
  os << "softplus, a custom op (examples/teaching.hpp, Note [Writing an op]), inside sum(softplus(x*w) * softplus(w)):\n"
     << "  " << first.summary() << "\n  " << second.summary() << "\n";
  return first.ok && second.ok;
}

}  // namespace tg::teaching
