// autograd/gradcheck.cpp — see gradcheck.hpp.
#include "autograd/gradcheck.hpp"

#include <cmath>
#include <sstream>

#include <xtensor/xmath.hpp>

#include "autograd/functional.hpp"
#include "autograd/ops.hpp"
#include "autograd/tape.hpp"

namespace tg {

namespace {

using Arr = xt::xarray<double>;

// Unravel a flat index into "(i,j,k)" for a shape.
std::string unravel(std::size_t flat, const Shape& s) {
  std::vector<std::size_t> idx(s.size());
  for (std::size_t d = s.size(); d-- > 0;) {
    idx[d] = s[d] ? flat % s[d] : 0;
    flat = s[d] ? flat / s[d] : 0;
  }
  return shape_to_string(idx);
}

struct Checker {
  const GradcheckOptions& opt;
  GradcheckResult& res;
  void compare(double analytic, double numeric, const std::string& where) {
    ++res.checks;
    double abs_err = std::abs(analytic - numeric);
    double rel_err = abs_err / std::max(std::abs(numeric), 1e-12);
    bool bad = !(abs_err <= opt.atol + opt.rtol * std::abs(numeric));  // NaN counts as bad
    double score = abs_err / (opt.atol + opt.rtol * std::abs(numeric));
    static thread_local double worst_score;
    if (res.checks == 1) worst_score = -1;
    if (std::isnan(analytic) || std::isnan(numeric)) score = INFINITY;
    if (score > worst_score) {
      worst_score = score;
      std::ostringstream s;
      s.precision(10);
      s << where << ": analytic " << analytic << ", numeric " << numeric;
      res.worst = s.str();
    }
    res.max_abs_err = std::max(res.max_abs_err, abs_err);
    res.max_rel_err = std::max(res.max_rel_err, std::isfinite(rel_err) ? rel_err : 0.0);
    if (bad) res.ok = false;
  }
};

// vᵀ f(inputs), evaluated without recording.
double project(const GradcheckFn& f, const std::vector<Tensor<double>>& in, const Arr& v) {
  NoGrad ng;
  Tensor<double> y = f(in);
  return xt::sum(y.value() * v)();
}

}  // namespace

std::string GradcheckResult::summary() const {
  std::ostringstream s;
  s << (ok ? "gradcheck passed" : "gradcheck FAILED") << " (" << mode << ", " << checks
    << " checks, max abs err " << max_abs_err << ", max rel err " << max_rel_err << ")";
  if (!worst.empty()) s << "; worst: " << worst;
  return s.str();
}

GradcheckResult gradcheck(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs_in,
                          const GradcheckOptions& opt) {
  GradcheckResult res;
  Checker chk{opt, res};
  Generator gen(opt.seed);
  // Work on copies that are leaves, so perturbing them never touches the caller's tensors.
  std::vector<Tensor<double>> in;
  std::vector<std::size_t> checked;
  std::size_t n_in = 0;
  for (std::size_t i = 0; i < inputs_in.size(); ++i) {
    in.push_back(inputs_in[i].defined() ? inputs_in[i].clone_leaf() : Tensor<double>());
    if (in.back().defined() && in.back().requires_grad()) {
      checked.push_back(i);
      n_in += in.back().numel();
    }
  }
  if (checked.empty()) throw std::invalid_argument("gradcheck: no input requires grad");
  Shape out_shape;
  std::size_t n_out;
  {
    NoGrad ng;
    Tensor<double> y = f(in);
    out_shape = y.shape();
    n_out = y.numel();
  }
  // Analytic vᵀJ for every checked input: one backward with grad_output v.
  auto vjp = [&](const Arr& v) {
    for (auto i : checked) in[i].zero_grad();
    Tensor<double> y = f(in);
    if (!y.requires_grad()) throw std::logic_error("gradcheck: f's output does not depend on any input that requires grad");
    y.backward(v);
    std::vector<Arr> g;
    for (auto i : checked) g.push_back(in[i].has_grad() ? in[i].grad() : Arr(xt::zeros<double>(in[i].shape())));
    return g;
  };
  auto numeric = [&](std::size_t input, const Arr& u, const Arr& v) {
    // (vᵀf(x + εu) - vᵀf(x - εu)) / 2ε
    Arr x0 = in[input].value();
    in[input].mutable_value() = x0 + opt.eps * u;
    double fp = project(f, in, v);
    in[input].mutable_value() = x0 - opt.eps * u;
    double fm = project(f, in, v);
    in[input].mutable_value() = x0;
    return (fp - fm) / (2 * opt.eps);
  };

  if (n_in * n_out <= opt.full_limit) {
    res.mode = "full jacobian";
    // Row j of J from backward with a one-hot v; column entries from central differences.
    for (std::size_t j = 0; j < n_out; ++j) {
      Arr v = xt::zeros<double>(out_shape);
      v.data()[j] = 1.0;
      auto g = vjp(v);
      for (std::size_t c = 0; c < checked.size(); ++c) {
        const std::size_t i = checked[c];
        for (std::size_t e = 0; e < in[i].numel(); ++e) {
          Arr u = xt::zeros<double>(in[i].shape());
          u.data()[e] = 1.0;
          chk.compare(g[c].data()[e], numeric(i, u, v),
                      "input " + std::to_string(i) + " element " + unravel(e, in[i].shape()) + ", output element " +
                          unravel(j, out_shape));
        }
      }
    }
    return res;
  }

  res.mode = "projections";
  for (int p = 0; p < opt.projections; ++p) {
    Arr v = Tensor<double>::randn(out_shape, gen).value();
    auto g = vjp(v);
    for (std::size_t c = 0; c < checked.size(); ++c) {
      const std::size_t i = checked[c];
      Arr u = Tensor<double>::randn(in[i].shape(), gen).value();
      chk.compare(xt::sum(g[c] * u)(), numeric(i, u, v),
                  "input " + std::to_string(i) + " projection vᵀJu #" + std::to_string(p));
      if (p == 0) {  // sampled coordinates, to name an element when something is off
        for (int s = 0; s < opt.coordinates; ++s) {
          std::size_t e = gen.next_u64() % in[i].numel();
          Arr ue = xt::zeros<double>(in[i].shape());
          ue.data()[e] = 1.0;
          chk.compare(g[c].data()[e], numeric(i, ue, v),
                      "input " + std::to_string(i) + " element " + unravel(e, in[i].shape()) + " (random vᵀJ)");
        }
      }
    }
  }
  return res;
}

GradcheckResult gradgradcheck(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs,
                              const GradcheckOptions& opt) {
  std::vector<std::size_t> checked;
  for (std::size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i].defined() && inputs[i].requires_grad()) checked.push_back(i);
  if (checked.empty()) throw std::invalid_argument("gradgradcheck: no input requires grad");
  Shape out_shape;
  {
    NoGrad ng;
    out_shape = f(inputs).shape();
  }
  // The direction v over f's output, an input of the checked function too.
  Generator gen(opt.seed + 1);
  Tensor<double> v = Tensor<double>::randn(out_shape, gen, 0.0, 1.0, true);
  const std::size_t n = inputs.size();
  GradcheckFn vjp_fn = [&f, &checked, n](const std::vector<Tensor<double>>& in) {
    // (inputs, v) -> concat of the flattened vᵀ ∂f/∂input over the checked inputs. The
    // graph is needed to take the vjp even when gradcheck evaluates without one; the vjp
    // is recorded (create_graph) only when the caller records.
    const bool outer = grad_enabled();
    EnableGrad on;
    std::vector<Tensor<double>> xs(in.begin(), in.begin() + n), req;
    for (auto i : checked) req.push_back(xs[i]);
    Tensor<double> y = f(xs);
    if (!y.requires_grad())
      throw std::logic_error("gradgradcheck: f's output does not depend on any input that requires grad");
    std::vector<Tensor<double>> g = grad<double>({y}, req, {in[n]}, /*create_graph=*/outer, /*allow_unused=*/true);
    std::vector<Tensor<double>> parts;
    for (std::size_t c = 0; c < g.size(); ++c)
      parts.push_back(g[c].defined() ? reshape(g[c], {-1}) : Tensor<double>::zeros({req[c].numel()}));
    Tensor<double> r = parts.size() == 1 ? parts[0] : concat(parts, 0);
    if (!outer) return r.detach();
    return r;
  };
  std::vector<Tensor<double>> all(inputs.begin(), inputs.end());
  all.push_back(v);
  GradcheckResult r = gradcheck(vjp_fn, all, opt);
  r.mode = "gradgrad, " + r.mode;
  // The differentiable vjp itself must equal the fast backward's (first order): a vjp that
  // is wrong but consistent with its own ops would pass the differences above.
  {
    std::vector<Tensor<double>> in, req;
    for (auto& t : inputs) in.push_back(t.defined() ? t.clone_leaf() : Tensor<double>());
    for (auto i : checked) req.push_back(in[i]);
    Tensor<double> y = f(in);
    std::vector<Tensor<double>> g = grad<double>({y}, req, {v.detach()}, false, true);
    y.backward(v.value());
    Checker chk{opt, r};
    for (std::size_t c = 0; c < req.size(); ++c) {
      Arr fast = req[c].has_grad() ? req[c].grad() : Arr(xt::zeros<double>(req[c].shape()));
      Arr slow = g[c].defined() ? g[c].value() : Arr(xt::zeros<double>(req[c].shape()));
      for (std::size_t e = 0; e < fast.size(); ++e)
        chk.compare(slow.data()[e], fast.data()[e],
                    "input " + std::to_string(checked[c]) + " element " + unravel(e, req[c].shape()) +
                        ": differentiable vjp vs the fast backward");
    }
  }
  return r;
}

}  // namespace tg
