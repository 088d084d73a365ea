// tests/test_hvp.cpp — Hessian-vector and Jacobian-vector products (autograd/functional.hpp)
// checked three ways:
//   * hvp of the model's loss with respect to every parameter, for the small model of
//     every preset, against PyTorch's torch.autograd.functional.hvp (tests/golden/hvp/,
//     written by tests/reference/make_golden_hvp.py): relative error <= 1e-10 in float64;
//   * hvp against central differences of the gradient, (∇f(x + hv) - ∇f(x - hv)) / 2h,
//     on functions of several inputs and on a model;
//   * jvp (the double-vjp trick) against the Jacobian: built row by row from first-order
//     vector-Jacobian products (what gradcheck compares with finite differences), the
//     Jacobian itself checked by gradcheck, and J v by a central difference f(x ± hv).
//
// What it is not: the op-by-op second-order check (tests/test_ops_gradgrad.cpp) or the
// `oracle --hvp` program (tests/test_oracle.cpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <xtensor/xmath.hpp>

#include "autograd/autograd.hpp"
#include "nn/nn.hpp"

using namespace tg;
using namespace tg::nn;
namespace fs = std::filesystem;
using TD = Tensor<double>;
using Arr = xt::xarray<double>;

namespace {

const fs::path kGoldenDir = fs::path(TAPEGRAD_SOURCE_DIR) / "tests" / "golden" / "hvp";

std::vector<std::string> golden_cases() {
  std::vector<std::string> r;
  if (!fs::is_directory(kGoldenDir)) return r;
  for (auto& e : fs::directory_iterator(kGoldenDir))
    if (e.is_directory()) r.push_back(e.path().filename().string());
  std::sort(r.begin(), r.end());
  return r;
}

Index read_tokens(const fs::path& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in, "cannot open " << path);
  std::vector<std::vector<std::int64_t>> rows;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::vector<std::int64_t> row;
    std::int64_t v;
    while (ls >> v) row.push_back(v);
    if (!row.empty()) rows.push_back(row);
  }
  REQUIRE(!rows.empty());
  Index t = Index::from_shape({rows.size(), rows[0].size()});
  for (std::size_t b = 0; b < rows.size(); ++b) {
    REQUIRE(rows[b].size() == rows[0].size());
    for (std::size_t i = 0; i < rows[b].size(); ++i) t(b, i) = rows[b][i];
  }
  return t;
}

// max|a - b| / max|b| (absolute when b is all zeros); shapes must agree.
double rel_error(const Arr& a, const Arr& b) {
  REQUIRE(Shape(a.shape().begin(), a.shape().end()) == Shape(b.shape().begin(), b.shape().end()));
  double num = 0, den = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    num = std::max(num, std::abs(a.data()[i] - b.data()[i]));
    den = std::max(den, std::abs(b.data()[i]));
  }
  return den == 0 ? num : num / den;
}

// The model's loss as a function of its parameters (the argument is the parameter list
// itself: the model reads them from its modules).
TensorFn<double> loss_of(CausalLM<double>& model, const Index& tokens) {
  return [&model, tokens](const std::vector<TD>&) { return model.loss(tokens).loss; };
}

// Flattened concatenation of a list of arrays.
Arr flat(const std::vector<Arr>& xs) {
  std::size_t n = 0;
  for (auto& x : xs) n += x.size();
  Arr r = Arr::from_shape({n});
  std::size_t k = 0;
  for (auto& x : xs) k = std::copy(x.data(), x.data() + x.size(), r.data() + k) - r.data();
  return r;
}

// ∇f at x as plain arrays (the fast first-order backward).
std::vector<Arr> gradient(const TensorFn<double>& f, const std::vector<TD>& x) {
  for (auto t : x) t.zero_grad();
  TD y = f(x);
  y.backward();
  std::vector<Arr> g;
  for (auto& t : x) g.push_back(t.has_grad() ? t.grad() : Arr(xt::zeros<double>(t.shape())));
  for (auto t : x) t.zero_grad();
  return g;
}

// (∇f(x + hv) - ∇f(x - hv)) / 2h, flattened; x's values are restored.
Arr fd_hvp(const TensorFn<double>& f, std::vector<TD> x, const std::vector<TD>& v, double h) {
  auto shift = [&](double s) {
    for (std::size_t i = 0; i < x.size(); ++i) x[i].mutable_value() += s * v[i].value();
  };
  shift(h);
  Arr gp = flat(gradient(f, x));
  shift(-2 * h);
  Arr gm = flat(gradient(f, x));
  shift(h);
  return Arr((gp - gm) / (2 * h));
}

std::vector<Arr> values(const std::vector<TD>& ts) {
  std::vector<Arr> r;
  for (auto& t : ts) r.push_back(t.value());
  return r;
}

}  // namespace

TEST_CASE("hvp golden: the folder covers every preset (no vacuous pass)") {
  REQUIRE_MESSAGE(fs::is_directory(kGoldenDir), kGoldenDir.string() << " is missing: run "
                                                                        "tests/reference/make_golden_hvp.py");
  for (const auto& p : list_presets()) CHECK_MESSAGE(fs::is_directory(kGoldenDir / p), "no hvp golden case for preset " << p);
}

TEST_CASE("hvp of the loss w.r.t. every parameter matches torch.autograd.functional.hvp (float64, 1e-10)") {
  const auto cases = golden_cases();
  REQUIRE(!cases.empty());
  double worst = 0;
  for (const auto& name : cases) {
    INFO("hvp golden case " << name);
    const fs::path dir = kGoldenDir / name;
    CausalLM<double> model(ModelConfig::load((dir / "config.json").string()));
    model.load_from(st::SafeTensorsFile::load((dir / "weights.safetensors").string()), name);
    model.eval();
    const Index tokens = read_tokens(dir / "tokens.txt");
    const auto direction = st::SafeTensorsFile::load((dir / "direction.safetensors").string());
    const auto expected = st::SafeTensorsFile::load((dir / "expected.safetensors").string());
    std::vector<TD> params, v;
    std::vector<std::string> names;
    for (const auto& [pname, p] : model.named_parameters()) {
      REQUIRE_MESSAGE(direction.contains(pname), name << ": no direction for " << pname);
      names.push_back(pname);
      params.push_back(p);
      v.push_back(TD(direction.get<double>(pname)));
    }
    CHECK(direction.names().size() == names.size());
    std::set<std::string> hvp_keys;
    for (const auto& k : expected.names())
      if (k.rfind("hvp.", 0) == 0) hvp_keys.insert(k.substr(4));
    CHECK(hvp_keys == std::set<std::string>(names.begin(), names.end()));

    const std::vector<TD> hv = hvp<double>(loss_of(model, tokens), params, v);
    REQUIRE(hv.size() == params.size());
    double case_worst = 0;
    std::string where;
    for (std::size_t i = 0; i < names.size(); ++i) {
      const double e = rel_error(hv[i].value(), expected.get<double>("hvp." + names[i]));
      CHECK_MESSAGE(e <= 1e-10, name << " hvp." << names[i] << " rel err " << e);
      if (e >= case_worst) case_worst = e, where = names[i];
    }
    // and the whole vector, relative to its largest element
    std::vector<Arr> want;
    for (auto& n : names) want.push_back(expected.get<double>("hvp." + n));
    const double all = rel_error(flat(values(hv)), flat(want));
    CHECK(all <= 1e-10);
    // hvp() leaves no gradient behind and the parameters untouched
    for (auto& p : params) CHECK_FALSE(p.has_grad());
    CHECK(rel_error(model.loss(tokens).loss.value(), expected.get<double>("loss")) <= 1e-12);
    MESSAGE(name << ": " << names.size() << " parameters, worst tensor rel err " << case_worst << " (" << where
                 << "), whole vector " << all);
    worst = std::max(worst, case_worst);
  }
  MESSAGE(cases.size() << " presets, worst relative error " << worst << " (tolerance 1e-10)");
}

TEST_CASE("hvp equals central differences of the gradient") {
  Generator gen(7);
  SUBCASE("a function of three inputs (matmul, tanh, softmax, broadcasting)") {
    TD a = TD::randn({3, 4}, gen, 0, 1, true), b = TD::randn({4, 5}, gen, 0, 1, true), c = TD::randn({5}, gen, 0, 1, true);
    TensorFn<double> f = [](const std::vector<TD>& x) {
      TD h = tanh(matmul(x[0], x[1]) + x[2]);
      return sum(softmax(h * h, -1) * exp(h * 0.5));
    };
    std::vector<TD> x = {a, b, c}, v = {TD::randn({3, 4}, gen), TD::randn({4, 5}, gen), TD::randn({5}, gen)};
    const Arr an = flat(values(hvp<double>(f, x, v)));
    const Arr fd = fd_hvp(f, x, v, 1e-5);
    CHECK(rel_error(an, fd) <= 1e-7);
    // linear in v
    std::vector<TD> v2 = {v[0] * 3.0, v[1] * 3.0, v[2] * 3.0};
    CHECK(rel_error(flat(values(hvp<double>(f, x, v2))), Arr(an * 3.0)) <= 1e-12);
  }
  SUBCASE("a quadratic form: H v = (A + Aᵀ) v exactly") {
    TD A = TD::randn({4, 4}, gen);
    TD x = TD::randn({4, 1}, gen, 0, 1, true), v = TD::randn({4, 1}, gen);
    TensorFn<double> f = [A](const std::vector<TD>& xs) { return sum(xs[0] * matmul(A, xs[0])); };
    const Arr hv = hvp<double>(f, {x}, {v})[0].value();
    Arr want = xt::zeros<double>({4, 1});
    for (std::size_t i = 0; i < 4; ++i)
      for (std::size_t j = 0; j < 4; ++j) want(i, 0) += (A.value()(i, j) + A.value()(j, i)) * v.value()(j, 0);
    CHECK(rel_error(hv, want) <= 1e-14);
  }
  SUBCASE("the loss of a small model w.r.t. every parameter (g1_elementwise, more_experts)") {
    for (const std::string name : {"g1_elementwise", "more_experts"}) {
      INFO(name);
      const fs::path dir = kGoldenDir / name;
      REQUIRE(fs::is_directory(dir));
      CausalLM<double> model(ModelConfig::load((dir / "config.json").string()));
      model.load_from(st::SafeTensorsFile::load((dir / "weights.safetensors").string()), name);
      const Index tokens = read_tokens(dir / "tokens.txt");
      std::vector<TD> params, v;
      Generator g2(11);
      for (const auto& [pname, p] : model.named_parameters()) {
        params.push_back(p);
        v.push_back(TD::randn(p.shape(), g2));
      }
      const Arr an = flat(values(hvp<double>(loss_of(model, tokens), params, v)));
      const Arr fd = fd_hvp(loss_of(model, tokens), params, v, 1e-5);
      MESSAGE(name << ": hvp vs central difference of the gradient, rel err " << rel_error(an, fd));
      CHECK(rel_error(an, fd) <= 1e-6);
    }
  }
}

namespace {

// J (outputs × inputs, all inputs flattened and concatenated), one row per output
// element, each row the first-order vjp with a one-hot cotangent.
Arr jacobian_by_rows(const TensorFn<double>& f, const std::vector<TD>& x) {
  const TD y0 = f(x);
  const std::size_t m = y0.numel();
  std::size_t n = 0;
  for (auto& t : x) n += t.numel();
  Arr J = xt::zeros<double>({m, n});
  for (std::size_t r = 0; r < m; ++r) {
    Arr e = xt::zeros<double>(y0.shape());
    e.data()[r] = 1;
    const Arr row = flat(values(vjp<double>(f, x, TD(e))));
    for (std::size_t c = 0; c < n; ++c) J(r, c) = row(c);
  }
  return J;
}

// J v by a central difference of f along v; x's values are restored.
Arr fd_jvp(const TensorFn<double>& f, std::vector<TD> x, const std::vector<TD>& v, double h) {
  auto shift = [&](double s) {
    for (std::size_t i = 0; i < x.size(); ++i) x[i].mutable_value() += s * v[i].value();
  };
  NoGrad off;
  shift(h);
  Arr yp = f(x).value();
  shift(-2 * h);
  Arr ym = f(x).value();
  shift(h);
  return Arr((yp - ym) / (2 * h));
}

void check_jvp(const TensorFn<double>& f, const std::vector<TD>& x, const std::vector<TD>& v) {
  // the Jacobian the rows are built from is the one gradcheck verifies
  const GradcheckResult gc = gradcheck(f, x);
  INFO(gc.summary());
  REQUIRE(gc.ok);
  const TD jv = jvp<double>(f, x, v);
  const TD y = f(x);
  REQUIRE(jv.shape() == y.shape());
  const Arr J = jacobian_by_rows(f, x);
  const Arr vf = flat(values(v));
  Arr want = xt::zeros<double>({J.shape()[0]});
  for (std::size_t r = 0; r < J.shape()[0]; ++r)
    for (std::size_t c = 0; c < J.shape()[1]; ++c) want(r) += J(r, c) * vf(c);
  Arr got = jv.value();
  got.reshape({got.size()});
  CHECK(rel_error(got, want) <= 1e-12);
  Arr fd = fd_jvp(f, x, v, 1e-6);
  fd.reshape({fd.size()});
  CHECK(rel_error(got, fd) <= 1e-7);
}

}  // namespace

TEST_CASE("jvp equals the Jacobian (rows from vjps, checked by gradcheck) times v") {
  Generator gen(21);
  SUBCASE("elementwise and broadcasting") {
    TD a = TD::randn({3, 4}, gen, 0, 1, true), b = TD::randn({4}, gen, 0, 1, true);
    check_jvp([](const std::vector<TD>& x) { return sigmoid(x[0] * x[1]) / (exp(x[1]) + 1.0); }, {a, b},
              {TD::randn({3, 4}, gen), TD::randn({4}, gen)});
  }
  SUBCASE("matmul and a reduction (output smaller than the input)") {
    TD a = TD::randn({2, 3}, gen, 0, 1, true), b = TD::randn({3, 4}, gen, 0, 1, true);
    check_jvp([](const std::vector<TD>& x) { return sum(tanh(matmul(x[0], x[1])), {1}); }, {a, b},
              {TD::randn({2, 3}, gen), TD::randn({3, 4}, gen)});
  }
  SUBCASE("fused ops: log_softmax, rmsnorm, swiglu, attention") {
    TD x = TD::randn({2, 5}, gen, 0, 1, true), w = TD::randn({5}, gen, 0, 1, true);
    check_jvp([](const std::vector<TD>& in) { return log_softmax(rmsnorm(in[0], in[1], 1e-6), -1); }, {x, w},
              {TD::randn({2, 5}, gen), TD::randn({5}, gen)});
    TD g = TD::randn({3, 4}, gen, 0, 1, true), u = TD::randn({3, 4}, gen, 0, 1, true);
    check_jvp([](const std::vector<TD>& in) { return swiglu(in[0], in[1]); }, {g, u},
              {TD::randn({3, 4}, gen), TD::randn({3, 4}, gen)});
    TD q = TD::randn({1, 3, 2, 4}, gen, 0, 1, true), k = TD::randn({1, 3, 1, 4}, gen, 0, 1, true),
       vv = TD::randn({1, 3, 1, 4}, gen, 0, 1, true);
    check_jvp([](const std::vector<TD>& in) { return attention(in[0], in[1], in[2]); }, {q, k, vv},
              {TD::randn({1, 3, 2, 4}, gen), TD::randn({1, 3, 1, 4}, gen), TD::randn({1, 3, 1, 4}, gen)});
  }
  SUBCASE("an input that needs no gradient is refused, naming it (grad() wants every input to)") {
    TD a = TD::randn({3}, gen, 0, 1, true), c = TD::randn({3}, gen);
    CHECK_THROWS_WITH(jvp<double>([](const std::vector<TD>& x) { return x[0] * x[1]; }, {a, c},
                                  {TD::ones({3}), TD::ones({3})}),
                      doctest::Contains("input 1 of shape (3) does not require grad"));
  }
}
