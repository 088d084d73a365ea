// tests/test_nn_layers.cpp — Module and the layers of nn/: names, initialisation, state
// dicts, forward values against hand-written loops, and float64 gradchecks of every layer
// (Attention under every gate configuration of the zoo).
//
// What it is not: whole-model tests (test_nn_model.cpp) or the comparison with PyTorch
// (test_nn_golden.cpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include <xtensor/xmath.hpp>
#include <xtensor/xview.hpp>

#include "autograd/autograd.hpp"
#include "nn/nn.hpp"

using namespace tg;
using namespace tg::nn;

namespace {

// Gradchecks run thousands of forwards of tiny models; at that size OpenMP start-up costs
// more than the work (and much more on a loaded machine), so they run single-threaded.
struct SingleThread {
  SingleThread() { tg::set_num_threads(1); }
  ~SingleThread() { tg::set_num_threads(0); }
};

std::vector<std::string> names_of(const Module<double>& m) {
  std::vector<std::string> r;
  for (auto& [n, p] : m.named_parameters()) r.push_back(n);
  return r;
}

// Random values in every parameter: weights N(0, std), norm-like (all-ones) ones 1 + 0.2 N.
template <class T>
void randomize(Module<T>& m, std::uint64_t seed, double std = 0.5) {
  Generator gen(seed);
  for (auto& [n, p] : m.named_parameters()) {
    Tensor<T> h = p;
    const bool ones = xt::all(xt::equal(p.value(), T(1)));
    for (auto& v : h.mutable_value()) v = static_cast<T>(ones ? 1.0 + 0.2 * gen.normal() : gen.normal(0.0, std));
  }
}

// Gradcheck of f(extra inputs..., parameters of m) with respect to all of them.
template <class F>
GradcheckResult check_module(Module<double>& m, std::vector<Tensor<double>> extra, F f,
                             GradcheckOptions opt = {}) {
  const std::size_t n_extra = extra.size();
  std::vector<Tensor<double>> inputs = extra;
  for (auto& p : m.parameters()) inputs.push_back(p);
  return gradcheck(
      [&](const std::vector<Tensor<double>>& in) {
        m.bind_parameters(std::vector<Tensor<double>>(in.begin() + n_extra, in.end()));
        return f(std::vector<Tensor<double>>(in.begin(), in.begin() + n_extra));
      },
      inputs, opt);
}

// The same for second order: gradgradcheck of f with respect to the extra inputs and the
// parameters (the derivatives of its vector-Jacobian product, through every op's vjp).
template <class F>
GradcheckResult gradgrad_module(Module<double>& m, std::vector<Tensor<double>> extra, F f,
                                GradcheckOptions opt = {}) {
  const std::size_t n_extra = extra.size();
  std::vector<Tensor<double>> inputs = extra;
  for (auto& p : m.parameters()) inputs.push_back(p);
  return gradgradcheck(
      [&](const std::vector<Tensor<double>>& in) {
        m.bind_parameters(std::vector<Tensor<double>>(in.begin() + n_extra, in.end()));
        return f(std::vector<Tensor<double>>(in.begin(), in.begin() + n_extra));
      },
      inputs, opt);
}

double max_abs_diff(const xt::xarray<double>& a, const xt::xarray<double>& b) {
  REQUIRE(a.shape() == b.shape());
  return xt::amax(xt::abs(a - b))();
}

ModelConfig micro() {
  ModelConfig c = named_size("tiny");
  c.vocab_size = 11, c.hidden_size = 8, c.intermediate_size = 6, c.num_attention_heads = 4;
  c.num_key_value_heads = 2, c.head_dim = 4, c.max_position_embeddings = 16;
  return c;
}

}  // namespace

// ---- Module ----------------------------------------------------------------------------

TEST_CASE("module: names, order, counts") {
  Generator gen(1);
  Linear<double> lin(3, 5, true, gen, 0.02);
  CHECK(names_of(lin) == std::vector<std::string>{"weight", "bias"});
  CHECK(lin.num_parameters() == 15 + 5);
  CHECK(lin.weight().shape() == Shape{5, 3});
  CHECK(lin.parameter("bias").shape() == Shape{5});
  CHECK_THROWS_WITH_AS(lin.parameter("nope"), doctest::Contains("nope"), std::out_of_range);
  MLP<double> mlp(4, 6, gen, 0.02);
  CHECK(names_of(mlp) == std::vector<std::string>{"gate_proj.weight", "up_proj.weight", "down_proj.weight"});
  MoE<double> moe(4, 3, 3, 2, true, gen, 0.02);
  auto n = names_of(moe);
  REQUIRE(n.size() == 1 + 3 * 3);
  CHECK(n[0] == "gate.weight");
  CHECK(n[1] == "experts.0.gate_proj.weight");
  CHECK(n[9] == "experts.2.down_proj.weight");
  CHECK(moe.num_parameters() == 3 * 4 + 3 * 3 * 4 * 3);
  for (auto& p : mlp.parameters()) CHECK(p.requires_grad());
  for (auto& p : mlp.parameters()) CHECK(p.is_leaf());
}

TEST_CASE("module: train / eval, zero_grad, requires_grad_") {
  Generator gen(2);
  MLP<double> mlp(4, 6, gen, 0.1);
  CHECK(mlp.training());
  mlp.eval();
  CHECK_FALSE(mlp.training());
  mlp.train();
  CHECK(mlp.training());
  Tensor<double> x = Tensor<double>::randn({2, 4}, gen);
  sum(mlp.forward(x)).backward();
  for (auto& p : mlp.parameters()) CHECK(p.has_grad());
  mlp.zero_grad();
  for (auto& p : mlp.parameters()) CHECK_FALSE(p.has_grad());
  mlp.requires_grad_(false);
  for (auto& p : mlp.parameters()) CHECK_FALSE(p.requires_grad());
}

TEST_CASE("module: initialisation is seeded and follows MODEL.md") {
  ModelConfig c = named_size("tiny");
  c.attention_bias = true;
  c.initializer_range = 0.05;
  apply_preset(c, "g1_input_independent");
  CausalLM<double> a(c, 7), b(c, 7), d(c, 8);
  CausalLM<float> f(c, 7);
  auto sa = a.state_dict(), sb = b.state_dict(), sd = d.state_dict();
  auto sf = f.state_dict();
  bool any_diff = false;
  for (std::size_t i = 0; i < sa.size(); ++i) {
    CHECK(sa[i].second == sb[i].second);  // same seed: identical
    any_diff |= sa[i].second != sd[i].second;
    CHECK(sf[i].second == xt::xarray<float>(xt::cast<float>(sa[i].second)));  // float = rounded double
  }
  CHECK(any_diff);
  // weights ~ N(0, 0.05), norms ones, biases zeros, gate_theta zeros
  std::vector<double> w;
  for (auto& [n, v] : sa) {
    INFO(n);
    if (n.find("norm") != std::string::npos) CHECK(xt::all(xt::equal(v, 1.0)));
    else if (n.find(".bias") != std::string::npos || n.find("gate_theta") != std::string::npos)
      CHECK(xt::all(xt::equal(v, 0.0)));
    else
      w.insert(w.end(), v.begin(), v.end());
  }
  const double mean = std::accumulate(w.begin(), w.end(), 0.0) / double(w.size());
  double var = 0;
  for (double x : w) var += (x - mean) * (x - mean);
  const double sd_ = std::sqrt(var / double(w.size()));
  CHECK(std::abs(mean) < 0.002);
  CHECK(sd_ == doctest::Approx(0.05).epsilon(0.03));
}

TEST_CASE("module: state dicts, loading errors, float <-> double") {
  Generator gen(3);
  MLP<double> a(4, 6, gen, 0.3), b(4, 6, gen, 0.3);
  std::map<std::string, xt::xarray<double>> m;
  for (auto& [n, v] : a.state_dict()) m[n] = v;
  b.load_state_dict(m);
  Tensor<double> x = Tensor<double>::randn({3, 4}, gen);
  CHECK(a.forward(x).value() == b.forward(x).value());

  MLP<double> c(4, 6, gen, 0.3);
  const auto before = c.state_dict();
  auto bad = m;
  bad.erase("up_proj.weight");
  bad["down_proj.weight"] = xt::zeros<double>({4, 5});
  bad["extra.weight"] = xt::zeros<double>({1});
  try {
    c.load_state_dict(bad, "my.safetensors");
    FAIL("no error");
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    CHECK(msg.find("my.safetensors") != std::string::npos);
    CHECK(msg.find("missing parameter 'up_proj.weight'") != std::string::npos);
    CHECK(msg.find("'down_proj.weight' has shape (4,5)") != std::string::npos);
    CHECK(msg.find("(4,6) in the model") != std::string::npos);
    CHECK(msg.find("unexpected entry 'extra.weight'") != std::string::npos);
  }
  const auto after = c.state_dict();
  for (std::size_t i = 0; i < before.size(); ++i) CHECK(before[i].second == after[i].second);  // untouched

  // float <-> double
  Generator g2(3);
  MLP<float> fm(4, 6, g2, 0.3);
  fm.copy_state_from(a);
  MLP<double> back(4, 6, g2, 0.3);
  back.copy_state_from(fm);
  for (auto& [n, v] : back.state_dict())
    CHECK(max_abs_diff(v, a.parameter(n).value()) <= 1e-7 * xt::amax(xt::abs(v))());
  // loading keeps the handles: a tensor taken before sees the new values
  Tensor<double> w = c.parameter("gate_proj.weight");
  c.load_state_dict(m);
  CHECK(w.value() == m["gate_proj.weight"]);
}

TEST_CASE("module: bind_parameters swaps the tensors a forward reads") {
  Generator gen(4);
  Linear<double> lin(3, 2, true, gen, 1.0);
  Tensor<double> w = Tensor<double>::ones({2, 3}), b = Tensor<double>::full({2}, 0.5);
  lin.bind_parameters({w, b});
  Tensor<double> x = Tensor<double>::from(xt::xarray<double>{{1, 2, 3}});
  CHECK(lin.forward(x).value() == xt::xarray<double>{{6.5, 6.5}});
  CHECK(lin.parameter("weight").same(w));
  CHECK_THROWS_WITH_AS(lin.bind_parameters({w}), doctest::Contains("bind_parameters"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(lin.bind_parameters({b, w}), doctest::Contains("weight"), std::invalid_argument);
}

// ---- forward values against hand loops ----------------------------------------------

TEST_CASE("layers: forward values") {
  Generator gen(5);
  const std::size_t C = 5, F = 7, N = 4;
  Tensor<double> x = Tensor<double>::randn({N, C}, gen);
  const auto& X = x.value();

  Linear<double> lin(C, 3, true, gen, 0.5);
  randomize(lin, 51);
  auto y = lin.forward(x).value();
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t o = 0; o < 3; ++o) {
      double s = lin.bias().value()(o);
      for (std::size_t i = 0; i < C; ++i) s += X(n, i) * lin.weight().value()(o, i);
      CHECK(y(n, o) == doctest::Approx(s).epsilon(1e-13));
    }

  Embedding<double> emb(6, C, gen, 1.0);
  Index ids = {{3, 0}, {5, 3}};
  auto e = emb.forward(ids).value();
  CHECK(e.shape() == std::vector<std::size_t>{2, 2, C});
  for (std::size_t i = 0; i < C; ++i) CHECK(e(1, 0, i) == emb.weight().value()(5, i));

  RMSNorm<double> rms(C, 1e-6);
  randomize(rms, 52);
  auto r = rms.forward(x).value();
  for (std::size_t n = 0; n < N; ++n) {
    double ms = 0;
    for (std::size_t i = 0; i < C; ++i) ms += X(n, i) * X(n, i) / double(C);
    for (std::size_t i = 0; i < C; ++i)
      CHECK(r(n, i) == doctest::Approx(X(n, i) / std::sqrt(ms + 1e-6) * rms.weight().value()(i)).epsilon(1e-12));
  }

  LayerNorm<double> ln(C, 1e-5);
  randomize(ln, 53);
  auto l = ln.forward(x).value();
  for (std::size_t n = 0; n < N; ++n) {
    double mu = 0, var = 0;
    for (std::size_t i = 0; i < C; ++i) mu += X(n, i) / double(C);
    for (std::size_t i = 0; i < C; ++i) var += (X(n, i) - mu) * (X(n, i) - mu) / double(C);
    for (std::size_t i = 0; i < C; ++i)
      CHECK(l(n, i) == doctest::Approx((X(n, i) - mu) / std::sqrt(var + 1e-5) * ln.parameter("weight").value()(i) +
                                       ln.parameter("bias").value()(i))
                           .epsilon(1e-12));
  }

  MLP<double> mlp(C, F, gen, 0.5);
  auto m = mlp.forward(x).value();
  const auto &Wg = mlp.parameter("gate_proj.weight").value(), &Wu = mlp.parameter("up_proj.weight").value(),
             &Wd = mlp.parameter("down_proj.weight").value();
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t o = 0; o < C; ++o) {
      double s = 0;
      for (std::size_t f = 0; f < F; ++f) {
        double g = 0, u = 0;
        for (std::size_t i = 0; i < C; ++i) g += X(n, i) * Wg(f, i), u += X(n, i) * Wu(f, i);
        s += Wd(o, f) * g / (1 + std::exp(-g)) * u;
      }
      CHECK(m(n, o) == doctest::Approx(s).epsilon(1e-12));
    }
}

// A per-token loop version of the MoE layer of MODEL.md, for one token row.
struct MoERef {
  std::vector<double> y;
  std::vector<double> p;  // router probabilities
  std::vector<std::size_t> chosen;
  double lse;
};

MoERef moe_token(const MoE<double>& moe, const xt::xarray<double>& X, std::size_t n, std::size_t k, bool renorm) {
  const std::size_t C = X.shape()[1], E = moe.num_experts();
  const auto& Wr = moe.parameter("gate.weight").value();
  MoERef r;
  std::vector<double> logit(E);
  for (std::size_t e = 0; e < E; ++e) {
    logit[e] = 0;
    for (std::size_t i = 0; i < C; ++i) logit[e] += X(n, i) * Wr(e, i);
  }
  const double m = *std::max_element(logit.begin(), logit.end());
  double z = 0;
  for (double l : logit) z += std::exp(l - m);
  r.lse = m + std::log(z);
  for (double l : logit) r.p.push_back(std::exp(l - r.lse));
  std::vector<std::size_t> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return r.p[a] > r.p[b]; });
  r.chosen.assign(order.begin(), order.begin() + k);
  double wsum = 0;
  for (auto e : r.chosen) wsum += r.p[e];
  r.y.assign(C, 0.0);
  for (auto e : r.chosen) {
    const double w = renorm ? r.p[e] / wsum : r.p[e];
    const std::string pre = "experts." + std::to_string(e) + ".";
    const auto &Wg = moe.parameter(pre + "gate_proj.weight").value(), &Wu = moe.parameter(pre + "up_proj.weight").value(),
               &Wd = moe.parameter(pre + "down_proj.weight").value();
    const std::size_t F = Wg.shape()[0];
    for (std::size_t o = 0; o < C; ++o) {
      double s = 0;
      for (std::size_t f = 0; f < F; ++f) {
        double g = 0, u = 0;
        for (std::size_t i = 0; i < C; ++i) g += X(n, i) * Wg(f, i), u += X(n, i) * Wu(f, i);
        s += Wd(o, f) * g / (1 + std::exp(-g)) * u;
      }
      r.y[o] += w * s;
    }
  }
  return r;
}

TEST_CASE("layers: MoE forward, load-balancing loss and z-loss against a per-token loop") {
  for (bool renorm : {true, false}) {
    Generator gen(6);
    const std::size_t B = 2, Tn = 5, C = 6, E = 5, k = 2;
    MoE<double> moe(C, 4, E, k, renorm, gen, 0.7);
    Tensor<double> x = Tensor<double>::randn({B, Tn, C}, gen);
    MoEOutput<double> out = moe.forward(x);
    CHECK(out.y.shape() == Shape{B, Tn, C});
    xt::xarray<double> X = x.value();
    X.reshape({B * Tn, C});
    std::vector<double> P(E, 0.0), c(E, 0.0);
    double z = 0;
    for (std::size_t n = 0; n < B * Tn; ++n) {
      MoERef r = moe_token(moe, X, n, k, renorm);
      for (std::size_t o = 0; o < C; ++o) CHECK(out.y.value().data()[n * C + o] == doctest::Approx(r.y[o]).epsilon(1e-12));
      for (std::size_t e = 0; e < E; ++e) P[e] += r.p[e] / double(B * Tn);
      for (auto e : r.chosen) c[e] += 1;
      z += r.lse * r.lse / double(B * Tn);
    }
    double aux = 0;
    for (std::size_t e = 0; e < E; ++e) {
      aux += double(E) * c[e] / double(B * Tn) * P[e];
      CHECK(out.tokens_per_expert[e] == std::size_t(c[e]));
    }
    CHECK(out.aux.item() == doctest::Approx(aux).epsilon(1e-13));
    CHECK(out.z.item() == doctest::Approx(z).epsilon(1e-13));
  }
}

// ---- gradchecks ------------------------------------------------------------------------

TEST_CASE("gradcheck: Linear, Embedding, RMSNorm, LayerNorm, MLP") {
  SingleThread single_thread;
  Generator gen(7);
  Tensor<double> x = Tensor<double>::randn({2, 3, 5}, gen, 0.0, 1.0, true);
  {
    Linear<double> m(5, 4, true, gen, 0.5);
    randomize(m, 71);
    auto r = check_module(m, {x}, [&](auto in) { return m.forward(in[0]); });
    CHECK_MESSAGE(r.ok, r.summary());
  }
  {
    Linear<double> m(5, 4, false, gen, 0.5);
    auto r = check_module(m, {x}, [&](auto in) { return m.forward(in[0]); });
    CHECK_MESSAGE(r.ok, r.summary());
  }
  {
    Embedding<double> m(7, 3, gen, 1.0);
    Index ids = {{1, 6, 1}, {0, 2, 6}};
    auto r = check_module(m, {}, [&](auto) { return m.forward(ids); });
    CHECK_MESSAGE(r.ok, r.summary());
  }
  {
    RMSNorm<double> m(5, 1e-6);
    randomize(m, 72);
    auto r = check_module(m, {x}, [&](auto in) { return m.forward(in[0]); });
    CHECK_MESSAGE(r.ok, r.summary());
  }
  {
    LayerNorm<double> m(5, 1e-5);
    randomize(m, 73);
    auto r = check_module(m, {x}, [&](auto in) { return m.forward(in[0]); });
    CHECK_MESSAGE(r.ok, r.summary());
  }
  {
    MLP<double> m(5, 6, gen, 0.5);
    auto r = check_module(m, {x}, [&](auto in) { return m.forward(in[0]); });
    CHECK_MESSAGE(r.ok, r.summary());
  }
}

TEST_CASE("gradcheck: MoE output, aux and z losses") {
  SingleThread single_thread;
  for (bool renorm : {true, false}) {
    Generator gen(8);
    MoE<double> m(5, 3, 4, 2, renorm, gen, 0.6);
    Tensor<double> x = Tensor<double>::randn({2, 3, 5}, gen, 0.0, 1.0, true);
    // a scalar mixing all three outputs, with fixed random weights on y
    Tensor<double> v = Tensor<double>::randn({2, 3, 5}, gen);
    auto r = check_module(m, {x}, [&](auto in) {
      MoEOutput<double> o = m.forward(in[0]);
      return sum(o.y * v) + o.aux * 0.7 + o.z * 0.3;
    });
    CHECK_MESSAGE(r.ok, r.summary());
  }
}

namespace {

// Every gate configuration the zoo has, plus attention options.
std::vector<std::pair<std::string, ModelConfig>> attention_configs() {
  std::vector<std::pair<std::string, ModelConfig>> r;
  for (auto& p : list_presets()) {
    if (p == "more_experts") continue;
    r.emplace_back(p, with_preset(micro(), p));
  }
  ModelConfig c = with_preset(micro(), "g1_elementwise");
  c.attention_bias = true;
  r.emplace_back("g1_elementwise + attention_bias", c);
  c = with_preset(micro(), "g4_elementwise");
  c.gate.granularity = GateGranularity::Headwise, c.gate.head_shared = true, c.gate.combine = GateCombine::Additive;
  c.gate.activation = GateActivation::NsSigmoid;
  r.emplace_back("query headwise head-shared additive ns_sigmoid", c);
  c = with_preset(micro(), "g3_elementwise");
  c.gate.granularity = GateGranularity::Headwise, c.gate.activation = GateActivation::Silu;
  r.emplace_back("key headwise silu", c);
  c = with_preset(micro(), "g1_headwise");
  c.gate.head_shared = true, c.gate.activation = GateActivation::Identity;
  r.emplace_back("sdpa headwise head-shared identity", c);
  c = with_preset(micro(), "g5_elementwise");
  c.gate.combine = GateCombine::Additive;
  r.emplace_back("dense additive", c);
  c = with_preset(micro(), "g1_input_independent");
  c.gate.activation = GateActivation::NsSigmoid;
  r.emplace_back("input-independent ns_sigmoid", c);
  c = with_preset(micro(), "g2_elementwise");
  c.use_qk_norm = false;
  c.rope_scaling = YarnScaling{2.0, 4, 32, 1};
  r.emplace_back("value gate, no QK-norm, YaRN", c);
  return r;
}

}  // namespace

TEST_CASE("gradcheck: Attention under every gate configuration") {
  SingleThread single_thread;
  for (auto& [name, cfg] : attention_configs()) {
    INFO(name << ": " << cfg.gate.describe());
    Generator gen(9);
    Attention<double> att(cfg, gen);
    randomize(att, 91);
    const auto rope = rope_table<double>(16, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling);
    Tensor<double> x = Tensor<double>::randn({2, 5, cfg.hidden_size}, gen, 0.0, 1.0, true);
    Tensor<double> v = Tensor<double>::randn({2, 5, cfg.hidden_size}, gen);
    GradcheckOptions opt;  // projections plus sampled coordinates (the full Jacobian is slow here)
    opt.full_limit = 0, opt.projections = 3, opt.coordinates = 8;
    auto r = check_module(att, {x}, [&](auto in) { return sum(att.forward(in[0], rope) * v); }, opt);
    CHECK_MESSAGE(r.ok, r.summary());
  }
}

TEST_CASE("attention: the G1 gate rows sit in q_proj in the released-code layout") {
  // A G1 gate whose score rows have zero weights and bias c is the constant act(c): the
  // same as the ungated attention with o_proj's input columns scaled by sigmoid(c). The
  // query rows are copied group by group (Note [G1 layout]), the gate biases set per head.
  for (auto gran : {GateGranularity::Headwise, GateGranularity::Elementwise}) {
    ModelConfig base = micro();
    base.attention_bias = true;
    ModelConfig gated = with_preset(base, gran == GateGranularity::Headwise ? "g1_headwise" : "g1_elementwise");
    Generator gen(10);
    Attention<double> a0(base, gen), a1(gated, gen);
    randomize(a0, 101);
    const std::size_t C = base.hidden_size, H = base.num_attention_heads, K = base.num_key_value_heads,
                      D = base.head_dim, G = H / K, Dg = gran == GateGranularity::Headwise ? 1 : D;
    // every parameter but q_proj is shared
    for (auto& [n, p] : a0.named_parameters())
      if (n.rfind("q_proj", 0) != 0) a1.parameter(n).mutable_value() = p.value();
    const auto& W0 = a0.parameter("q_proj.weight").value();
    const auto& b0 = a0.parameter("q_proj.bias").value();
    xt::xarray<double> W1 = xt::zeros<double>({H * D + H * Dg, C}), b1 = xt::zeros<double>({H * D + H * Dg});
    xt::xarray<double> c = xt::zeros<double>({H, Dg});
    Generator cg(11);
    for (auto& v : c) v = cg.normal(0.0, 2.0);
    const std::size_t width = G * D + G * Dg;
    for (std::size_t g = 0; g < K; ++g) {
      for (std::size_t r = 0; r < G * D; ++r) {  // the group's query rows
        xt::view(W1, g * width + r, xt::all()) = xt::view(W0, g * G * D + r, xt::all());
        b1(g * width + r) = b0(g * G * D + r);
      }
      for (std::size_t j = 0; j < G; ++j)  // then its gate rows, head by head
        for (std::size_t d = 0; d < Dg; ++d) b1(g * width + G * D + j * Dg + d) = c(g * G + j, d);
    }
    a1.parameter("q_proj.weight").mutable_value() = W1;
    a1.parameter("q_proj.bias").mutable_value() = b1;
    // the ungated twin: o_proj columns of head h (element d) scaled by sigmoid(c[h, d])
    auto& Wo = a0.parameter("o_proj.weight").mutable_value();
    for (std::size_t h = 0; h < H; ++h)
      for (std::size_t d = 0; d < D; ++d)
        xt::view(Wo, xt::all(), h * D + d) *= 1.0 / (1.0 + std::exp(-c(h, Dg == 1 ? 0 : d)));
    const auto rope = rope_table<double>(16, D, base.rope_theta);
    Tensor<double> x = Tensor<double>::randn({2, 6, C}, gen);
    CHECK(max_abs_diff(a1.forward(x, rope).value(), a0.forward(x, rope).value()) < 1e-12);
  }
}

// ---- second order: gradgradcheck of every module -----------------------------------------

TEST_CASE("gradgradcheck: Linear, Embedding, RMSNorm, LayerNorm, MLP, MoE") {
  SingleThread single_thread;
  Generator gen(17);
  Tensor<double> x = Tensor<double>::randn({2, 3, 5}, gen, 0.0, 1.0, true);
  Tensor<double> v = Tensor<double>::randn({2, 3, 4}, gen);
  GradcheckOptions opt;  // projections plus sampled coordinates
  opt.full_limit = 0, opt.projections = 3, opt.coordinates = 8;
  {
    Linear<double> m(5, 4, true, gen, 0.5);
    randomize(m, 171);
    auto r = gradgrad_module(m, {x}, [&](auto in) { return sum(tanh(m.forward(in[0])) * v); }, opt);
    CHECK_MESSAGE(r.ok, r.summary());
  }
  {
    Embedding<double> m(7, 3, gen, 1.0);
    Index ids = {{1, 6, 1}, {0, 2, 6}};
    auto r = gradgrad_module(m, {}, [&](auto) { Tensor<double> e = m.forward(ids); return sum(e * e * e); }, opt);
    CHECK_MESSAGE(r.ok, r.summary());
  }
  {
    RMSNorm<double> m(5, 1e-6);
    randomize(m, 172);
    auto r = gradgrad_module(m, {x}, [&](auto in) { return sum(m.forward(in[0]) * x.detach()); }, opt);
    CHECK_MESSAGE(r.ok, r.summary());
  }
  {
    LayerNorm<double> m(5, 1e-5);
    randomize(m, 173);
    auto r = gradgrad_module(m, {x}, [&](auto in) { return sum(m.forward(in[0]) * x.detach()); }, opt);
    CHECK_MESSAGE(r.ok, r.summary());
  }
  {
    MLP<double> m(5, 6, gen, 0.5);
    auto r = gradgrad_module(m, {x}, [&](auto in) { Tensor<double> y = m.forward(in[0]); return sum(y * y); }, opt);
    CHECK_MESSAGE(r.ok, r.summary());
  }
  {
    MoE<double> m(5, 3, 4, 2, true, gen, 0.6);
    Tensor<double> w = Tensor<double>::randn({2, 3, 5}, gen);
    auto r = gradgrad_module(m, {x}, [&](auto in) {
      MoEOutput<double> o = m.forward(in[0]);
      return sum(o.y * o.y * w) + o.aux * 0.7 + o.z * 0.3;
    }, opt);
    CHECK_MESSAGE(r.ok, r.summary());
  }
}

TEST_CASE("gradgradcheck: Attention under every gate configuration, DecoderLayer, CausalLM") {
  SingleThread single_thread;
  GradcheckOptions opt;
  opt.full_limit = 0, opt.projections = 2, opt.coordinates = 4;
  // atol 3e-7, not 1e-7: the gated-key configuration's first-order backward carries about
  // 1e-13 of rounding noise (1.4e-7 x eps below), which the finite difference divides
  // by eps = 1e-6. Its worst check, analytic 0.00200862531 in every build, came out
  // numerically 0.0020084840 on the portable build's SSE2 kernels (1.4e-7 off, failing at
  // 1e-7), 0.0020086427 at eps 3e-6 and 0.0020086212 at eps 1e-5: the error shrinks as eps
  // grows, so it is the difference's rounding, not the analytic second derivative.
  opt.atol = 3e-7;
  for (auto& [name, cfg] : attention_configs()) {
    INFO(name << ": " << cfg.gate.describe());
    Generator gen(19);
    Attention<double> att(cfg, gen);
    randomize(att, 191);
    const auto rope = rope_table<double>(16, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling);
    Tensor<double> x = Tensor<double>::randn({1, 4, cfg.hidden_size}, gen, 0.0, 1.0, true);
    Tensor<double> v = Tensor<double>::randn({1, 4, cfg.hidden_size}, gen);
    auto r = gradgrad_module(att, {x}, [&](auto in) { Tensor<double> y = att.forward(in[0], rope); return sum(y * y * v); }, opt);
    CHECK_MESSAGE(r.ok, r.summary());
  }
  opt.atol = GradcheckOptions{}.atol;
  ModelConfig moe = micro();
  moe.num_experts = 4, moe.num_experts_per_tok = 2, moe.moe_intermediate_size = 4;
  const std::vector<std::pair<std::string, ModelConfig>> models = {
      {"baseline", micro()}, {"g1_elementwise", with_preset(micro(), "g1_elementwise")}, {"moe", moe}};
  for (const auto& [name, c] : models) {
    INFO(name);
    CausalLM<double> model(c, 23);
    randomize(model, 231);
    const Index tokens = {{1, 5, 2, 7, 3}, {0, 9, 9, 4, 1}};
    auto r = gradgrad_module(model, {}, [&](auto) { return model.loss(tokens).loss; }, opt);
    CHECK_MESSAGE(r.ok, r.summary());
    const DecoderLayer<double>& layer = *model.model().layers()[0];
    const auto rope = rope_table<double>(16, c.head_dim, c.rope_theta, c.rope_scaling);
    Generator gen(29);
    Tensor<double> h = Tensor<double>::randn({1, 4, c.hidden_size}, gen, 0.0, 1.0, true);
    auto& lm = const_cast<DecoderLayer<double>&>(layer);
    auto rl = gradgrad_module(lm, {h}, [&](auto in) { Tensor<double> y = lm.forward(in[0], rope).h; return sum(y * y); }, opt);
    CHECK_MESSAGE(rl.ok, rl.summary());
  }
}
