// tests/test_optim.cpp — optim/: AdamW and SGD against hand-computed steps, parameter
// groups, state save/load, the learning-rate schedule, gradient clipping and gradient
// accumulation. The 20-step trajectories of torch.optim (golden files):
// test_optim_golden.cpp.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>
#include <xtensor/xview.hpp>

#include "autograd/autograd.hpp"
#include "optim_test_util.hpp"
#include "test_util.hpp"
#include "nn/safetensors.hpp"
#include "optim/optim.hpp"

using namespace tg;
using namespace tg::optim;
using tg::testing::rel_err;
using tg::testing::set_grad;
using TD = Tensor<double>;
using TF = Tensor<float>;
using AD = xt::xarray<double>;

namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

template <class T>
Tensor<T> param(const xt::xarray<T>& v) {
  return Tensor<T>(v, true);
}


// The textbook AdamW step (bias-corrected moments, eps added to sqrt(v_hat)), written
// independently of the library's operation order: the oracle for vectors.
struct TextbookAdamW {
  double lr, b1, b2, eps, wd;
  AD m, v;
  int k = 0;
  void step(AD& p, const AD& g) {
    if (k == 0) {  // (a default xarray is 0-d with one element, not empty)
      m = xt::zeros<double>(p.shape());
      v = xt::zeros<double>(p.shape());
    }
    ++k;
    for (std::size_t i = 0; i < p.size(); ++i) {
      p.flat(i) -= lr * wd * p.flat(i);
      m.flat(i) = b1 * m.flat(i) + (1 - b1) * g.flat(i);
      v.flat(i) = b2 * v.flat(i) + (1 - b2) * g.flat(i) * g.flat(i);
      const double mhat = m.flat(i) / (1 - std::pow(b1, k));
      const double vhat = v.flat(i) / (1 - std::pow(b2, k));
      p.flat(i) -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

}  // namespace

// =====================================================================================
// AdamW
// =====================================================================================

TEST_CASE("AdamW: two scalar steps computed by hand (float64)") {
  // p0 = 1.5, g = 0.3 then -0.7; lr 0.01, betas (0.9, 0.95), eps 1e-8, weight decay 0.1.
  auto p = param<double>(AD{1.5});
  AdamW<double> opt({{"p", p}}, {0.01, 0.9, 0.95, 1e-8, 0.1});
  set_grad(p, AD{0.3});
  opt.step();
  // step 1: m = 0.1*0.3 = 0.03, v = 0.05*0.09 = 0.0045, bc1 = 0.1, bc2 = 0.05,
  // m/bc1 = 0.3, sqrt(v/bc2) = 0.3, decay factor 1 - 0.01*0.1 = 0.999.
  const double p1 = 1.5 * 0.999 - 0.01 * 0.3 / (0.3 + 1e-8);
  CHECK(p.value()(0) == doctest::Approx(p1).epsilon(1e-15));
  CHECK(opt.step_count() == 1);
  set_grad(p, AD{-0.7});
  opt.step();
  // step 2: m = 0.9*0.03 + 0.1*(-0.7) = -0.043, v = 0.95*0.0045 + 0.05*0.49 = 0.028775,
  // bc1 = 1 - 0.81 = 0.19, bc2 = 1 - 0.9025 = 0.0975.
  const double p2 = p1 * 0.999 - 0.01 * (-0.043 / 0.19) / (std::sqrt(0.028775 / 0.0975) + 1e-8);
  CHECK(p.value()(0) == doctest::Approx(p2).epsilon(1e-14));
  CHECK(opt.step_count() == 2);
  // the exported moments are the hand values
  auto sd = opt.state_dict();
  REQUIRE(sd.size() == 4);
  CHECK(sd[0].first == "exp_avg.p");
  CHECK(sd[0].second(0) == doctest::Approx(-0.043).epsilon(1e-15));
  CHECK(sd[1].first == "exp_avg_sq.p");
  CHECK(sd[1].second(0) == doctest::Approx(0.028775).epsilon(1e-15));
  CHECK(sd[2].first == "step.p");
  CHECK(sd[2].second(0) == 2.0);
  CHECK(sd[3].first == "step");
  CHECK(sd[3].second(0) == 2.0);
}

TEST_CASE("AdamW: vectors (SIMD body and tail) follow the textbook formula, float64 and float32") {
  Generator gen(3);
  for (std::size_t n : {1u, 7u, 37u, 4099u}) {
    CAPTURE(n);
    auto p = TD::randn({n}, gen, 0.0, 1.0, true);
    auto pf = TF::from(xt::cast<float>(p.value()), true);
    AD ref = p.value();
    TextbookAdamW oracle{3e-3, 0.9, 0.99, 1e-8, 0.05, {}, {}};
    AdamWOptions o{3e-3, 0.9, 0.99, 1e-8, 0.05};
    AdamW<double> opt({{"w", p}}, o);
    AdamW<float> optf({{"w", pf}}, o);
    for (int t = 0; t < 5; ++t) {
      AD g = TD::randn({n}, gen).value();
      set_grad(p, g);
      set_grad(pf, xt::xarray<float>(xt::cast<float>(g)));
      opt.step();
      optf.step();
      oracle.step(ref, g);
      CHECK(rel_err(p.value(), ref) < 1e-14);
      CHECK(rel_err(xt::cast<double>(pf.value()), ref) < 1e-5);
    }
  }
}

TEST_CASE("AdamW: a parameter without a gradient is skipped and keeps its own step count") {
  auto a = param<double>(AD{1.0, -2.0});
  auto b = param<double>(AD{0.5, 0.25});
  auto b_alone = param<double>(AD{0.5, 0.25});
  AdamWOptions o{0.1, 0.9, 0.999, 1e-8, 0.01};
  AdamW<double> opt({{"a", a}, {"b", b}}, o);
  AdamW<double> ref({{"b", b_alone}}, o);
  // step 1: only a has a gradient
  set_grad(a, AD{0.1, 0.2});
  opt.step();
  CHECK(b.value() == AD{0.5, 0.25});  // no decay either
  // steps 2, 3: both; b's updates must be b's first and second (bias corrections k = 1, 2)
  for (int t = 0; t < 2; ++t) {
    AD gb{0.3 * (t + 1), -0.1};
    set_grad(a, AD{0.1, 0.2});
    set_grad(b, gb);
    set_grad(b_alone, gb);
    opt.step();
    ref.step();
    CHECK(b.value() == b_alone.value());
  }
  CHECK(opt.step_count() == 3);
  for (auto& [name, arr] : opt.state_dict()) {
    if (name == "step.a") CHECK(arr(0) == 3.0);
    if (name == "step.b") CHECK(arr(0) == 2.0);
    if (name == "step") CHECK(arr(0) == 3.0);
  }
}

TEST_CASE("AdamW: groups have their own weight decay and learning-rate multiplier") {
  // Three copies of the same parameter and gradients; groups differ only in wd / lr_scale.
  AD v0{0.7, -1.1, 2.0};
  auto p_plain = param<double>(v0), p_nodecay = param<double>(v0), p_double = param<double>(v0);
  auto ref_nodecay = param<double>(v0), ref_double = param<double>(v0);
  AdamWOptions o{0.02, 0.9, 0.999, 1e-8, 0.3};
  std::vector<ParamGroup<double>> groups{{"plain", {{"p_plain", p_plain}}, std::nullopt, 1.0},
                                         {"nodecay", {{"p_nodecay", p_nodecay}}, 0.0, 1.0},
                                         {"double", {{"p_double", p_double}}, std::nullopt, 2.0}};
  AdamW<double> opt(groups, o);
  AdamWOptions o_nodecay = o, o_double = o;
  o_nodecay.weight_decay = 0.0;
  o_double.lr = 0.04;
  AdamW<double> r1({{"x", ref_nodecay}}, o_nodecay), r2({{"x", ref_double}}, o_double);
  for (int t = 0; t < 3; ++t) {
    AD g{0.1 * t - 0.05, 0.3, -0.2};
    for (auto* p : {&p_plain, &p_nodecay, &p_double, &ref_nodecay, &ref_double}) set_grad(*p, g);
    opt.set_lr(0.02);
    opt.step();
    r1.step();
    r2.step();
    CHECK(p_nodecay.value() == ref_nodecay.value());
    CHECK(p_double.value() == ref_double.value());
  }
  // decay pulls the decayed copy towards 0 relative to the undecayed one
  CHECK(std::abs(p_plain.value()(2)) < std::abs(p_nodecay.value()(2)));
  // lr 0 (as a schedule may give) changes nothing, not even by weight decay
  AD before = p_plain.value();
  set_grad(p_plain, AD{1.0, 1.0, 1.0});
  opt.set_lr(0.0);
  opt.step();
  CHECK(p_plain.value() == before);
}

TEST_CASE("AdamW and SGD: argument and parameter errors name the problem") {
  auto p = param<double>(AD{1.0});
  CHECK(contains(THROW_MSG(AdamW<double>({{"p", p}}, {0.1, 1.0, 0.9, 1e-8, 0.0})), "beta1"));
  CHECK(contains(THROW_MSG(AdamW<double>({{"p", p}}, {0.1, 0.9, -0.1, 1e-8, 0.0})), "beta2"));
  CHECK(contains(THROW_MSG(AdamW<double>({{"p", p}}, {-0.1, 0.9, 0.9, 1e-8, 0.0})), "lr"));
  CHECK(contains(THROW_MSG(AdamW<double>({{"p", p}}, {0.1, 0.9, 0.9, -1.0, 0.0})), "eps"));
  CHECK(contains(THROW_MSG(AdamW<double>({{"p", p}}, {0.1, 0.9, 0.9, 1e-8, -1.0})), "weight_decay"));
  CHECK(contains(THROW_MSG(SGD<double>({{"p", p}}, {0.1, 0.0, 0.0, 0.0, true})), "nesterov"));
  CHECK(contains(THROW_MSG(SGD<double>({{"p", p}}, {0.1, 0.9, 0.1, 0.0, true})), "nesterov"));
  CHECK(contains(THROW_MSG(SGD<double>({{"p", p}}, {0.1, -0.9, 0.0, 0.0, false})), "momentum"));
  CHECK(contains(THROW_MSG(AdamW<double>({{"p", p}, {"p", param<double>(AD{2.0})}})), "'p' appears twice"));
  CHECK(contains(THROW_MSG(AdamW<double>({{"w", p}, {"tied", p}})), "'tied' is a tensor already listed"));
  auto q = p * 2.0;
  CHECK(contains(THROW_MSG(AdamW<double>({{"q", q}})), "'q' is not a leaf"));
  CHECK(contains(THROW_MSG(AdamW<double>({{"", p}})), "no name"));
  std::vector<ParamGroup<double>> bad{{"g", {{"p", p}}, -0.5, 1.0}};
  CHECK(contains(THROW_MSG(AdamW<double>(bad)), "group 'g': weight_decay"));
  AdamW<double> opt({{"p", p}});
  CHECK(contains(THROW_MSG(opt.set_lr(std::nan(""))), "lr must be finite"));
  // a gradient of the wrong shape is caught before anything is updated
  auto r = param<double>(AD{1.0, 2.0});
  AdamW<double> opt2({{"p", p}, {"r", r}});
  set_grad(p, AD{0.5});
  r.mutable_grad() = AD{1.0, 2.0, 3.0};
  CHECK(contains(THROW_MSG(opt2.step()), "parameter 'r' is (2)"));
  CHECK(p.value()(0) == 1.0);
  CHECK(opt2.step_count() == 0);
}

// =====================================================================================
// SGD
// =====================================================================================

TEST_CASE("SGD: plain, momentum with dampening, and Nesterov, computed by hand (float64)") {
  SUBCASE("plain with weight decay") {
    auto p = param<double>(AD{2.0});
    SGD<double> opt({{"p", p}}, {0.1, 0.0, 0.0, 0.01, false});
    set_grad(p, AD{0.5});
    opt.step();
    CHECK(p.value()(0) == doctest::Approx(2.0 - 0.1 * (0.5 + 0.01 * 2.0)).epsilon(1e-15));
    // no momentum buffer is exported
    auto sd = opt.state_dict();
    REQUIRE(sd.size() == 2);
    CHECK(sd[0].first == "step.p");
    CHECK(sd[1].first == "step");
  }
  SUBCASE("momentum 0.9, dampening 0.1: the first step sets the buffer to d, undamped") {
    auto p = param<double>(AD{2.0});
    SGD<double> opt({{"p", p}}, {0.1, 0.9, 0.1, 0.01, false});
    set_grad(p, AD{0.5});
    opt.step();
    // d = 0.5 + 0.01*2 = 0.52, buf = 0.52, p = 2 - 0.052
    CHECK(p.value()(0) == doctest::Approx(1.948).epsilon(1e-15));
    set_grad(p, AD{-0.25});
    opt.step();
    // d = -0.25 + 0.01*1.948 = -0.23052, buf = 0.9*0.52 + 0.9*(-0.23052) = 0.260532,
    // p = 1.948 - 0.0260532
    CHECK(p.value()(0) == doctest::Approx(1.9219468).epsilon(1e-15));
    auto sd = opt.state_dict();
    REQUIRE(sd.size() == 3);
    CHECK(sd[0].first == "momentum_buffer.p");
    CHECK(sd[0].second(0) == doctest::Approx(0.260532).epsilon(1e-15));
  }
  SUBCASE("Nesterov") {
    auto p = param<double>(AD{2.0});
    SGD<double> opt({{"p", p}}, {0.1, 0.9, 0.0, 0.01, true});
    set_grad(p, AD{0.5});
    opt.step();
    // d = 0.52, buf = 0.52, d = 0.52 + 0.9*0.52 = 0.988, p = 2 - 0.0988
    CHECK(p.value()(0) == doctest::Approx(1.9012).epsilon(1e-15));
    set_grad(p, AD{-0.25});
    opt.step();
    // d = -0.25 + 0.019012 = -0.230988, buf = 0.468 - 0.230988 = 0.237012,
    // d = -0.230988 + 0.9*0.237012 = -0.0176772, p = 1.9012 + 0.00176772
    CHECK(p.value()(0) == doctest::Approx(1.90296772).epsilon(1e-15));
  }
}

TEST_CASE("SGD: vectors match a plain loop, and a late parameter starts its own buffer") {
  Generator gen(5);
  const std::size_t n = 4099;
  auto p = TD::randn({n}, gen, 0.0, 1.0, true);
  auto late = TD::randn({n}, gen, 0.0, 1.0, true);
  AD ref = p.value(), ref_late = late.value(), buf, buf_late;
  const double lr = 0.05, mom = 0.8, damp = 0.25, wd = 0.02;
  SGD<double> opt({{"p", p}, {"late", late}}, {lr, mom, damp, wd, false});
  auto loop = [&](AD& x, AD& b, const AD& g) {
    AD d = g + wd * x;
    if (b.shape() != x.shape())  // not started yet (a default xarray is 0-d)
      b = d;
    else
      b = mom * b + (1 - damp) * d;
    x = x - lr * b;
  };
  for (int t = 0; t < 4; ++t) {
    AD g = TD::randn({n}, gen).value(), gl = TD::randn({n}, gen).value();
    set_grad(p, g);
    loop(ref, buf, g);
    if (t >= 2) {
      set_grad(late, gl);
      loop(ref_late, buf_late, gl);
    }
    opt.step();
    CHECK(rel_err(p.value(), ref) < 1e-14);
    CHECK(rel_err(late.value(), ref_late) < 1e-14);
  }
}

// =====================================================================================
// parameter groups
// =====================================================================================

TEST_CASE("make_param_groups: no decay for norm weights, biases and 1-D parameters by default") {
  Generator gen(1);
  NamedParameters<double> params{
      {"model.embed_tokens.weight", TD::randn({16, 4}, gen)},
      {"model.layers.0.input_layernorm.weight", TD::ones({4})},
      {"model.layers.0.self_attn.q_proj.weight", TD::randn({4, 4}, gen)},
      {"model.layers.0.self_attn.q_proj.bias", TD::zeros({4})},
      {"model.layers.0.self_attn.q_norm.weight", TD::ones({2})},
      {"model.layers.0.self_attn.gate.scale", TD::ones({4})},   // 1-D: no decay
      {"model.layers.0.attn.normal_init.weight", TD::randn({3, 3}, gen)},  // contains "norm"
      {"model.layers.0.mlp.down_proj.weight", TD::randn({4, 8}, gen)},
      {"model.biased.weight", TD::randn({2, 2}, gen)},  // "bias" inside a name is not ".bias"
      {"model.norm.weight", TD::ones({4})},
      {"lm_head.weight", TD::randn({16, 4}, gen)},
  };
  auto groups = make_param_groups(params, 0.1);
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].name == "decay");
  CHECK(*groups[0].weight_decay == 0.1);
  CHECK(groups[1].name == "no_decay");
  CHECK(*groups[1].weight_decay == 0.0);
  std::vector<std::string> decay, plain;
  for (auto& [n, p] : groups[0].params) decay.push_back(n);
  for (auto& [n, p] : groups[1].params) plain.push_back(n);
  CHECK(decay == std::vector<std::string>{"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                                          "model.layers.0.mlp.down_proj.weight", "model.biased.weight",
                                          "lm_head.weight"});
  CHECK(plain == std::vector<std::string>{"model.layers.0.input_layernorm.weight",
                                          "model.layers.0.self_attn.q_proj.bias",
                                          "model.layers.0.self_attn.q_norm.weight",
                                          "model.layers.0.self_attn.gate.scale",
                                          "model.layers.0.attn.normal_init.weight", "model.norm.weight"});
  CHECK(groups[0].params[0].second.same(params[0].second));  // the same tensors, not copies

  // a custom rule: decay everything except the embedding
  auto custom = make_param_groups(params, 0.05, [](const std::string& n, const Shape&) {
    return contains(n, "embed_tokens");
  });
  CHECK(custom[0].params.size() == params.size() - 1);
  REQUIRE(custom[1].params.size() == 1);
  CHECK(custom[1].params[0].first == "model.embed_tokens.weight");

  CHECK(default_no_decay("bias", {3}));
  CHECK(default_no_decay("x", {}));
  CHECK(!default_no_decay("w", {3, 3}));
  CHECK(contains(THROW_MSG(make_param_groups(params, -1.0)), "weight_decay"));

  // the groups drive AdamW: a norm weight (no decay) with a zero gradient stays put while
  // a matrix (decay) with a zero gradient shrinks by exactly 1 - lr*wd
  AdamW<double> opt(groups, {0.01, 0.9, 0.999, 1e-8, 0.5});
  for (auto& [n, p] : params) set_grad(p, AD(xt::zeros<double>(p.shape())));
  AD norm_before = params[1].second.value(), mat_before = params[2].second.value();
  opt.step();
  CHECK(params[1].second.value() == norm_before);
  CHECK(rel_err(params[2].second.value(), mat_before * (1 - 0.01 * 0.1)) < 1e-15);
}

// =====================================================================================
// state save / load
// =====================================================================================

TEST_CASE("AdamW and SGD: state_dict / load_state_dict round trip gives identical later steps") {
  Generator gen(11);
  auto run = [&](auto make_opt) {
    // two identical models, one optimizer continues, the other is rebuilt from the state
    NamedParameters<double> a{{"w", TD::randn({3, 5}, gen, 0.0, 1.0, true)},
                              {"b", TD::randn({5}, gen, 0.0, 1.0, true)}};
    NamedParameters<double> b{{"w", a[0].second.clone_leaf()}, {"b", a[1].second.clone_leaf()}};
    auto opt_a = make_opt(make_param_groups(a, 0.1));
    std::vector<std::vector<AD>> grads;
    for (int t = 0; t < 6; ++t) grads.push_back({TD::randn({3, 5}, gen).value(), TD::randn({5}, gen).value()});
    for (int t = 0; t < 3; ++t) {
      set_grad(a[0].second, grads[t][0]);
      set_grad(a[1].second, grads[t][1]);
      opt_a->step();
    }
    // "checkpoint": parameter values and optimizer state
    b[0].second.mutable_value() = a[0].second.value();
    b[1].second.mutable_value() = a[1].second.value();
    auto opt_b = make_opt(make_param_groups(b, 0.1));
    opt_b->load_state_dict(opt_a->state_dict());
    CHECK(opt_b->step_count() == 3);
    for (int t = 3; t < 6; ++t) {
      for (auto* m : {&a, &b}) {
        set_grad((*m)[0].second, grads[t][0]);
        set_grad((*m)[1].second, grads[t][1]);
      }
      opt_a->step();
      opt_b->step();
      CHECK(a[0].second.value() == b[0].second.value());  // bitwise
      CHECK(a[1].second.value() == b[1].second.value());
    }
    auto sa = opt_a->state_dict(), sb = opt_b->state_dict();
    REQUIRE(sa.size() == sb.size());
    for (std::size_t i = 0; i < sa.size(); ++i) {
      CHECK(sa[i].first == sb[i].first);
      CHECK(sa[i].second == sb[i].second);
    }
  };
  SUBCASE("AdamW") {
    run([](std::vector<ParamGroup<double>> g) {
      return std::make_unique<AdamW<double>>(std::move(g), AdamWOptions{0.01, 0.9, 0.95, 1e-8, 0.0});
    });
  }
  SUBCASE("SGD") {
    run([](std::vector<ParamGroup<double>> g) {
      return std::make_unique<SGD<double>>(std::move(g), SGDOptions{0.05, 0.9, 0.0, 0.0, true});
    });
  }
}

TEST_CASE("load_state_dict: a missing, mis-shaped or unknown entry is an error naming it and changes nothing") {
  auto w = param<double>(AD{{1.0, 2.0}, {3.0, 4.0}});
  auto b = param<double>(AD{0.5, 0.5});
  AdamW<double> opt({{"w", w}, {"b", b}});
  set_grad(w, AD{{0.1, 0.2}, {0.3, 0.4}});
  set_grad(b, AD{0.1, -0.1});
  opt.step();
  const auto good = opt.state_dict();

  auto without = [&](const std::string& name) {
    StateDict<double> s;
    for (auto& e : good)
      if (e.first != name) s.push_back(e);
    return s;
  };
  auto fresh = [&]() { return AdamW<double>({{"w", w}, {"b", b}}); };
  {
    auto o = fresh();
    CHECK(THROW_MSG(o.load_state_dict(without("exp_avg_sq.b"))) ==
          "AdamW::load_state_dict: missing entry 'exp_avg_sq.b'");
    CHECK(o.step_count() == 0);  // unchanged
    CHECK(contains(THROW_MSG(o.load_state_dict(without("step"))), "missing entry 'step'"));
    CHECK(contains(THROW_MSG(o.load_state_dict(without("step.w"))), "missing entry 'step.w'"));
  }
  {
    auto s = good;
    for (auto& e : s)
      if (e.first == "exp_avg.w") e.second = AD{1.0, 2.0, 3.0, 4.0};
    auto o = fresh();
    CHECK(THROW_MSG(o.load_state_dict(s)) == "AdamW::load_state_dict: entry 'exp_avg.w' has shape (4), expected (2,2)");
  }
  {
    auto s = good;
    for (auto& e : s)
      if (e.first == "step") e.second = AD{2.5};
    auto o = fresh();
    CHECK(contains(THROW_MSG(o.load_state_dict(s)), "'step' is not a step count"));
  }
  {
    auto s = good;
    s.emplace_back("exp_avg.other", AD{1.0});
    auto o = fresh();
    CHECK(contains(THROW_MSG(o.load_state_dict(s)), "unexpected entry 'exp_avg.other'"));
    CHECK(o.step_count() == 0);
    o.load_state_dict(s, /*strict=*/false);
    CHECK(o.step_count() == 1);
    s.push_back(s.front());
    CHECK(contains(THROW_MSG(o.load_state_dict(s, false)), "entry 'exp_avg.w' appears twice"));
  }
  {
    // a failed load leaves the state as it was: the next step equals the one of a twin
    auto w2 = param<double>(w.value()), b2 = param<double>(b.value());
    AdamW<double> o1({{"w", w}, {"b", b}}), o2({{"w", w2}, {"b", b2}});
    o1.load_state_dict(good);
    o2.load_state_dict(good);
    CHECK(!THROW_MSG(o1.load_state_dict(without("exp_avg.b"))).empty());
    for (auto* p : {&w, &w2}) set_grad(*p, AD{{0.5, 0.5}, {0.5, 0.5}});
    for (auto* p : {&b, &b2}) set_grad(*p, AD{0.5, 0.5});
    o1.step();
    o2.step();
    CHECK(w.value() == w2.value());
    CHECK(b.value() == b2.value());
  }
  {
    SGD<double> s({{"w", w}}, {0.1, 0.9, 0.0, 0.0, false});
    CHECK(THROW_MSG(s.load_state_dict({{"step.w", AD{0.0}}, {"step", AD{0.0}}})) ==
          "SGD::load_state_dict: missing entry 'momentum_buffer.w'");
  }
}

// =====================================================================================
// schedule
// =====================================================================================

TEST_CASE("LrSchedule: linear warm-up then cosine to a floor, and constant") {
  // peak 1e-3, 10 warm-up steps, 110 total, floor 1e-4
  auto s = LrSchedule::warmup_cosine(1e-3, 10, 110, 1e-4);
  CHECK(s.at(0) == doctest::Approx(1e-4).epsilon(1e-15));     // 1e-3 * 1/10
  CHECK(s.at(4) == doctest::Approx(5e-4).epsilon(1e-15));     // 1e-3 * 5/10
  CHECK(s.at(9) == doctest::Approx(1e-3).epsilon(1e-15));     // end of warm-up
  CHECK(s.at(10) == doctest::Approx(1e-3).epsilon(1e-15));    // cosine at its top
  CHECK(s.at(60) == doctest::Approx(5.5e-4).epsilon(1e-14));  // half way: (peak+floor)/2
  // a quarter of the way: floor + (peak-floor)*0.5*(1+cos(pi/4))
  CHECK(s.at(35) == doctest::Approx(1e-4 + 9e-4 * 0.5 * (1 + std::sqrt(0.5))).epsilon(1e-14));
  CHECK(s.at(110) == doctest::Approx(1e-4).epsilon(1e-15));
  CHECK(s.at(5000) == doctest::Approx(1e-4).epsilon(1e-15));  // stays at the floor
  for (int t = 10; t < 120; ++t) CHECK(s.at(t + 1) <= s.at(t));
  CHECK(s(60) == s.at(60));
  CHECK(s.describe() == "warmup_cosine(peak=0.001, warmup=10, total=110, floor=0.0001)");

  auto nw = LrSchedule::warmup_cosine(2.0, 0, 4, 0.0);  // no warm-up: 2, 1.707.., 1, 0.29.., 0
  CHECK(nw.at(0) == 2.0);
  CHECK(nw.at(2) == doctest::Approx(1.0).epsilon(1e-15));
  CHECK(nw.at(4) == doctest::Approx(0.0));
  auto all_warm = LrSchedule::warmup_cosine(1.0, 4, 4, 0.25);  // W == N
  CHECK(all_warm.at(3) == 1.0);
  CHECK(all_warm.at(4) == 0.25);

  auto c = LrSchedule::constant(3e-4);
  CHECK(c.at(0) == 3e-4);
  CHECK(c.at(123456) == 3e-4);
  CHECK(c.describe() == "constant(lr=0.0003)");

  CHECK(contains(THROW_MSG(LrSchedule::warmup_cosine(1e-3, 10, 5, 0.0)), "warmup_steps"));
  CHECK(contains(THROW_MSG(LrSchedule::warmup_cosine(1e-3, -1, 5, 0.0)), "warmup_steps"));
  CHECK(contains(THROW_MSG(LrSchedule::warmup_cosine(1e-3, 0, 0, 0.0)), "total_steps"));
  CHECK(contains(THROW_MSG(LrSchedule::warmup_cosine(1e-3, 1, 5, 2e-3)), "floor_lr"));
  CHECK(contains(THROW_MSG(LrSchedule::warmup_cosine(-1e-3, 1, 5, 0.0)), "peak_lr"));
  CHECK(contains(THROW_MSG(LrSchedule::constant(std::nan(""))), "lr"));
  CHECK(contains(THROW_MSG(s.at(-1)), ">= 0"));
}

// =====================================================================================
// clipping
// =====================================================================================

TEST_CASE("clip_grad_norm: global L2 norm, scaled by max_norm/(norm+1e-6) only when above") {
  auto a = param<double>(AD{0.0, 0.0});
  auto b = param<double>(AD{0.0});
  auto c = param<double>(AD{5.0});  // no gradient: left out
  set_grad(a, AD{3.0, 4.0});
  set_grad(b, AD{12.0});
  std::vector<TD> ps{a, b, c};
  CHECK(grad_norm(ps) == 13.0);
  // max_norm above the norm: untouched
  CHECK(clip_grad_norm(ps, 100.0) == 13.0);
  CHECK(a.grad() == AD{3.0, 4.0});
  // max_norm == norm: scale 13/(13+1e-6) < 1, applied (as torch)
  const double s1 = 13.0 / (13.0 + 1e-6);
  CHECK(clip_grad_norm(ps, 13.0) == 13.0);
  CHECK(a.grad()(1) == doctest::Approx(4.0 * s1).epsilon(1e-15));
  // clip to 1.3: norm afterwards ~1.3
  set_grad(a, AD{3.0, 4.0});
  set_grad(b, AD{12.0});
  CHECK(clip_grad_norm(ps, 1.3) == 13.0);
  const double s = 1.3 / (13.0 + 1e-6);
  CHECK(a.grad()(0) == doctest::Approx(3.0 * s).epsilon(1e-15));
  CHECK(b.grad()(0) == doctest::Approx(12.0 * s).epsilon(1e-15));
  CHECK(grad_norm(ps) == doctest::Approx(1.3).epsilon(1e-6));
  CHECK(!c.has_grad());
  // named parameters work too
  NamedParameters<double> named{{"a", a}, {"b", b}};
  CHECK(clip_grad_norm(named, 100.0) == doctest::Approx(13.0 * s).epsilon(1e-15));
  // nothing has a gradient: norm 0
  CHECK(clip_grad_norm(std::vector<TD>{c}, 1.0) == 0.0);
  CHECK(contains(THROW_MSG(clip_grad_norm(ps, 0.0)), "max_norm"));
}

TEST_CASE("clip_grad_norm: a non-finite norm is reported, gradients untouched, or an error on request") {
  auto a = param<double>(AD{0.0, 0.0});
  std::vector<TD> ps{a};
  set_grad(a, AD{1.0, std::numeric_limits<double>::infinity()});
  CHECK(std::isinf(clip_grad_norm(ps, 1.0)));
  CHECK(a.grad()(0) == 1.0);
  set_grad(a, AD{1.0, std::nan("")});
  CHECK(std::isnan(clip_grad_norm(ps, 1.0)));
  CHECK(a.grad()(0) == 1.0);
  CHECK(contains(THROW_MSG(clip_grad_norm(ps, 1.0, /*error_if_nonfinite=*/true)), "cannot be clipped"));
}

TEST_CASE("clip_grad_norm: large float gradients, norm in double, the same at every thread count") {
  Generator gen(9);
  auto a = TF::randn({100003}, gen, 0.f, 1.f, true);
  auto b = TF::randn({70000}, gen, 0.f, 1.f, true);
  set_grad(a, a.value());
  set_grad(b, b.value());
  long double ref = 0;
  for (float x : a.value()) ref += (long double)x * x;
  for (float x : b.value()) ref += (long double)x * x;
  std::vector<TF> ps{a, b};
  const int saved = tg::num_threads();
  tg::set_num_threads(1);
  const double n1 = grad_norm(ps);
  tg::set_num_threads(2);
  const double n2 = grad_norm(ps);
  tg::set_num_threads(saved);
  CHECK(n1 == n2);
  CHECK(n1 == doctest::Approx(double(std::sqrt(ref))).epsilon(1e-13));
  const float before = a.grad()(77777);
  clip_grad_norm(ps, 1.0);
  CHECK(a.grad()(77777) == doctest::Approx(before / (n1 + 1e-6)).epsilon(1e-6));
  CHECK(grad_norm(ps) == doctest::Approx(1.0).epsilon(1e-5));
}

// =====================================================================================
// gradient accumulation (Note [Gradient accumulation] in optim/optim.hpp)
// =====================================================================================

TEST_CASE("gradient accumulation: k backward() calls of loss/k add up to the full-batch gradient") {
  Generator gen(21);
  // a linear model y = x W^T + b, loss = mean((y - target)^2) over a batch of 8
  auto W = TD::randn({3, 4}, gen, 0.0, 1.0, true);
  auto bias = TD::randn({3}, gen, 0.0, 1.0, true);
  AD x = TD::randn({8, 4}, gen).value(), target = TD::randn({8, 3}, gen).value();
  auto loss_of = [&](std::size_t lo, std::size_t hi) {
    auto xb = TD::from(xt::view(x, xt::range(lo, hi), xt::all()));
    auto tb = TD::from(xt::view(target, xt::range(lo, hi), xt::all()));
    auto d = tg::linear(xb, W, bias) - tb;
    return tg::mean(d * d);
  };
  loss_of(0, 8).backward();
  const AD dW_full = W.grad(), db_full = bias.grad();

  AdamW<double> opt({{"W", W}, {"bias", bias}});
  opt.zero_grad();
  CHECK(!W.has_grad());
  const int k = 4;
  for (int i = 0; i < k; ++i) (loss_of(2 * i, 2 * i + 2) / double(k)).backward();
  CHECK(rel_err(W.grad(), dW_full) < 1e-14);
  CHECK(rel_err(bias.grad(), db_full) < 1e-14);
  // the micro-batches really differ: the last one alone gives another gradient
  opt.zero_grad();
  loss_of(6, 8).backward();
  CHECK(rel_err(W.grad(), dW_full) > 1e-3);
}
