// tests/test_nn_model.cpp — the causal LM: parameter names and counts, float64 gradcheck
// of a whole small model for every preset, the loss, the KV cache, float <-> double
// conversion, checkpoints, and the diagnostics.
//
// What it is not: the comparison with the PyTorch reference (test_nn_golden.cpp) or the
// layer-by-layer tests (test_nn_layers.cpp).
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>

#include <xtensor/xmath.hpp>
#include <xtensor/xview.hpp>

#include "autograd/autograd.hpp"
#include "nn/nn.hpp"
#include "test_util.hpp"

using namespace tg;
using namespace tg::nn;

namespace {

// Gradchecks run thousands of forwards of tiny models; at that size OpenMP start-up costs
// more than the work (and much more on a loaded machine), so they run single-threaded.
struct SingleThread {
  SingleThread() { tg::set_num_threads(1); }
  ~SingleThread() { tg::set_num_threads(0); }
};

// A model smaller than tiny, for gradchecks: V 11, C 8, H 4, K 2, D 4, F 6, 2 layers.
ModelConfig micro() {
  ModelConfig c = named_size("tiny");
  c.vocab_size = 11, c.hidden_size = 8, c.intermediate_size = 6, c.num_attention_heads = 4;
  c.num_key_value_heads = 2, c.head_dim = 4, c.max_position_embeddings = 16;
  return c;
}
ModelConfig micro_moe() {
  ModelConfig c = micro();
  c.num_experts = 4, c.num_experts_per_tok = 2, c.moe_intermediate_size = 3;
  c.router_aux_loss_coef = 0.1, c.router_z_loss_coef = 0.01;
  return c;
}

// Random values in every parameter: weights N(0, std), all-ones tensors 1 + 0.2 N(0,1),
// all-zero ones (biases, gate_theta) N(0, std).
template <class T>
void randomize(Module<T>& m, std::uint64_t seed, double std = 0.5) {
  Generator gen(seed);
  for (auto& [n, p] : m.named_parameters()) {
    Tensor<T> h = p;
    const bool ones = xt::all(xt::equal(p.value(), T(1)));
    for (auto& v : h.mutable_value()) v = static_cast<T>(ones ? 1.0 + 0.2 * gen.normal() : gen.normal(0.0, std));
  }
}

Index random_tokens(std::size_t B, std::size_t Tn, std::size_t V, std::uint64_t seed) {
  Generator gen(seed);
  Index t = Index::from_shape({B, Tn});
  for (auto& v : t) v = static_cast<std::int64_t>(gen.next_u64() % V);
  return t;
}

double rel_diff(const xt::xarray<double>& a, const xt::xarray<double>& b) {
  REQUIRE(a.shape() == b.shape());
  return xt::amax(xt::abs(a - b))() / std::max(xt::amax(xt::abs(b))(), 1e-300);
}

// Named configurations covering every preset and option.
std::vector<std::pair<std::string, ModelConfig>> variants(const ModelConfig& dense, const ModelConfig& moe) {
  std::vector<std::pair<std::string, ModelConfig>> r;
  for (auto& p : list_presets()) r.emplace_back(p, with_preset(p == "more_experts" ? moe : dense, p));
  auto add = [&](const std::string& name, ModelConfig c, const char* preset) {
    r.emplace_back(name, with_preset(c, preset));
  };
  ModelConfig c = dense;
  c.tie_word_embeddings = true;
  add("g1_elementwise tied", c, "g1_elementwise");
  c = dense, c.sandwich_norm = true;
  add("g1_headwise sandwich", c, "g1_headwise");
  c = dense, c.attention_bias = true;
  add("g1_elementwise attention_bias", c, "g1_elementwise");
  c = dense, c.use_qk_norm = false, c.rope_scaling = YarnScaling{2.0, 4, 32, 1};
  add("g3_elementwise no QK-norm, YaRN", c, "g3_elementwise");
  add("g1_elementwise MoE", moe, "g1_elementwise");
  c = moe, c.norm_topk_prob = false, c.sandwich_norm = true;
  add("baseline MoE unnormalised top-k, sandwich", c, "baseline");
  c = dense, c.num_key_value_heads = c.num_attention_heads;
  add("g1_headwise MHA", c, "g1_headwise");
  return r;
}

}  // namespace

TEST_CASE("model: Hugging Face parameter names") {
  CausalLM<double> m(named_size("tiny"));
  const auto np = m.named_parameters();
  std::vector<std::string> names;
  for (auto& [n, p] : np) names.push_back(n);
  auto has = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  CHECK(names.front() == "model.embed_tokens.weight");
  CHECK(names.back() == "lm_head.weight");
  for (const char* n : {"model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_proj.weight",
                        "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
                        "model.layers.0.self_attn.o_proj.weight", "model.layers.0.self_attn.q_norm.weight",
                        "model.layers.0.self_attn.k_norm.weight", "model.layers.0.post_attention_layernorm.weight",
                        "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
                        "model.layers.1.mlp.down_proj.weight", "model.norm.weight"})
    CHECK_MESSAGE(has(n), n);
  CHECK(names.size() == 3 + 2 * 11);  // embed, norm, lm_head + 11 per layer
  CHECK(m.parameter("model.layers.0.self_attn.q_proj.weight").shape() == Shape{24, 24});

  ModelConfig c = with_preset(named_size("tiny_moe"), "g1_headwise");
  c.tie_word_embeddings = true, c.sandwich_norm = true;
  CausalLM<double> g(c);
  CHECK_FALSE(g.has_parameter("lm_head.weight"));
  CHECK(g.lm_head_weight().same(g.parameter("model.embed_tokens.weight")));
  CHECK(g.parameter("model.layers.1.self_attn.q_proj.weight").shape() == Shape{24 + 4, 24});
  CHECK(g.parameter("model.layers.0.mlp.gate.weight").shape() == Shape{4, 24});
  CHECK(g.parameter("model.layers.0.mlp.experts.3.down_proj.weight").shape() == Shape{24, 16});
  CHECK(g.has_parameter("model.layers.0.post_attn_sandwich_norm.weight"));
  CHECK(g.has_parameter("model.layers.0.post_mlp_sandwich_norm.weight"));
  CHECK(with_preset(named_size("tiny"), "g2_headwise").q_proj_rows() == 24);
  CausalLM<double> g2(with_preset(named_size("tiny"), "g2_headwise"));
  CHECK(g2.parameter("model.layers.0.self_attn.gate_proj.weight").shape() == Shape{2, 24});
  CausalLM<double> g5(with_preset(named_size("tiny"), "g5_elementwise"));
  CHECK(g5.parameter("model.layers.0.self_attn.gate_proj.weight").shape() == Shape{24, 24});
  CausalLM<double> ii(with_preset(named_size("tiny"), "g1_input_independent"));
  CHECK(ii.parameter("model.layers.0.self_attn.gate_theta").shape() == Shape{4, 6});
  CausalLM<double> pr(with_preset(named_size("tiny"), "g1_rmsnorm"));
  CHECK(pr.parameter("model.layers.0.self_attn.sdpa_norm.weight").shape() == Shape{6});
}

TEST_CASE("model: num_parameters equals count_parameters for every variant") {
  for (auto& [name, c] : variants(named_size("tiny"), named_size("tiny_moe"))) {
    INFO(name);
    CausalLM<float> m(c);
    CHECK(m.num_parameters() == count_parameters(c));
  }
}

TEST_CASE("model: the loss is the shifted cross-entropy plus the MoE terms") {
  for (const ModelConfig& c : {with_preset(micro(), "g1_elementwise"), micro_moe()}) {
    CausalLM<double> m(c, 3);
    randomize(m, 31);
    const Index tokens = random_tokens(2, 7, c.vocab_size, 32);
    LossOutput<double> out = m.loss(tokens);
    const auto& L = out.logits.value();
    double ce = 0;
    for (std::size_t b = 0; b < 2; ++b)
      for (std::size_t t = 0; t + 1 < 7; ++t) {
        double mx = -1e300, z = 0;
        for (std::size_t v = 0; v < c.vocab_size; ++v) mx = std::max(mx, L(b, t, v));
        for (std::size_t v = 0; v < c.vocab_size; ++v) z += std::exp(L(b, t, v) - mx);
        ce += (mx + std::log(z) - L(b, t, static_cast<std::size_t>(tokens(b, t + 1)))) / 12.0;
      }
    CHECK(out.ce.item() == doctest::Approx(ce).epsilon(1e-13));
    if (c.is_moe()) {
      REQUIRE(out.aux.defined());
      CHECK(out.loss.item() == doctest::Approx(ce + 0.1 * out.aux.item() + 0.01 * out.z.item()).epsilon(1e-13));
      CHECK(out.aux.item() > 0);
      CHECK(out.z.item() > 0);
    } else {
      CHECK_FALSE(out.aux.defined());
      CHECK(out.loss.item() == out.ce.item());
    }
  }
  CausalLM<double> m(micro());
  CHECK_THROWS_WITH_AS(m.loss(random_tokens(2, 1, 11, 1)), doctest::Contains("T >= 2"), std::invalid_argument);
}

TEST_CASE("gradcheck: a whole small model for every preset and option") {
  SingleThread single_thread;
  for (auto& [name, c] : variants(micro(), micro_moe())) {
    INFO(name << " (" << c.gate.describe() << ")");
    CausalLM<double> m(c, 5);
    randomize(m, 51);
    const Index tokens = random_tokens(2, 5, c.vocab_size, 52);
    std::vector<Tensor<double>> params = m.parameters();
    GradcheckOptions opt;  // random projections vᵀJu of every parameter, plus a few coordinates
    opt.full_limit = 0, opt.projections = 2, opt.coordinates = 4;
    auto r = gradcheck(
        [&](const std::vector<Tensor<double>>& in) {
          m.bind_parameters(in);
          return m.loss(tokens).loss;
        },
        params, opt);
    CHECK_MESSAGE(r.ok, r.summary());
  }
}

TEST_CASE("model: anomaly mode names the op, its shapes and the layer where NaN appears") {
  CausalLM<double> m(micro(), 3);
  const Index tokens = random_tokens(2, 5, 11, 4);
  {
    DetectAnomaly guard;
    CHECK_NOTHROW(m.loss(tokens));  // a healthy model passes every check
  }
  Tensor<double> w = m.parameter("model.layers.1.mlp.down_proj.weight");  // (C, F) = (8, 6)
  w.mutable_value()(2, 3) = std::nan("");
  DetectAnomaly guard;
  const std::string msg = THROW_MSG(m.loss(tokens));
  // The first op to make NaN is the down projection of layer 1: linear(x (2,5,6), w (8,6)).
  CHECK_MESSAGE(msg.find("op 'linear' (inputs (2,5,6), (8,6); in model.layers.1.mlp) produced NaN") !=
                    std::string::npos, msg);
}

TEST_CASE("model: incremental decoding with the KV cache equals the full forward") {
  for (auto& [name, c] : variants(micro(), micro_moe())) {
    INFO(name);
    CausalLM<double> m(c, 6);
    randomize(m, 61);
    const Index tokens = random_tokens(2, 9, c.vocab_size, 62);
    NoGrad ng;
    const auto full = m.forward(tokens).value();
    KVCache<double> cache = m.make_cache();
    // a prompt of 4, then one token at a time, then a chunk of 2
    std::vector<std::pair<std::size_t, std::size_t>> steps = {{0, 4}, {4, 5}, {5, 6}, {6, 7}, {7, 9}};
    for (auto [a, b] : steps) {
      Index chunk = xt::view(tokens, xt::all(), xt::range(a, b));
      const auto part = m.forward(chunk, &cache).value();
      CHECK(cache.length() == b);
      xt::xarray<double> ref = xt::view(full, xt::all(), xt::range(a, b), xt::all());
      CHECK(rel_diff(part, ref) < 1e-12);
    }
    cache.clear();
    CHECK(cache.length() == 0);
  }
  // float too
  CausalLM<float> f(with_preset(named_size("tiny"), "g1_elementwise"), 7);
  const Index tokens = random_tokens(1, 6, 48, 63);
  const auto full = f.forward(tokens).value();
  KVCache<float> cache = f.make_cache();
  for (std::size_t t = 0; t < 6; ++t) {
    Index one = xt::view(tokens, xt::all(), xt::range(t, t + 1));
    xt::xarray<double> got = xt::cast<double>(f.forward(one, &cache).value());
    xt::xarray<double> ref = xt::cast<double>(xt::view(full, xt::all(), xt::range(t, t + 1), xt::all()));
    CHECK(rel_diff(got, ref) < 1e-5);
  }
  KVCache<double> wrong;
  CausalLM<double> d(micro());
  CHECK_THROWS_WITH_AS(d.forward(tokens, &wrong), doctest::Contains("make_cache"), std::invalid_argument);
}

TEST_CASE("model: the KV cache keeps its contents as it grows past its first capacity") {
  // The cache starts at 64 positions and doubles: 150 tokens of batch 2 grow it twice,
  // each growth copying every batch row's filled positions to the new buffer.
  CausalLM<double> m(micro(), 8);
  randomize(m, 64);
  const Index tokens = random_tokens(2, 150, micro().vocab_size, 65);
  NoGrad ng;
  const auto full = m.forward(tokens).value();
  KVCache<double> cache = m.make_cache();
  double worst = 0;
  for (std::size_t t = 0; t < 150; t += (t < 60 ? 1 : 7)) {
    const std::size_t e = std::min<std::size_t>(150, t < 60 ? t + 1 : t + 7);
    Index chunk = xt::view(tokens, xt::all(), xt::range(t, e));
    const auto part = m.forward(chunk, &cache).value();
    xt::xarray<double> ref = xt::view(full, xt::all(), xt::range(t, e), xt::all());
    worst = std::max(worst, rel_diff(part, ref));
    CHECK(cache.length() == e);
  }
  CHECK(worst < 1e-12);
  CHECK(cache.layers[0].k.shape()[1] == 256);  // 64 -> 128 -> 256
  // Keys of another shape are refused, not written out of bounds.
  xt::xarray<double> kv = xt::zeros<double>({2, 1, 2, 5});  // head_dim 5, not 4
  CHECK_THROWS_WITH_AS(cache.layers[0].append(kv, kv), doctest::Contains("KVEntry: the cache holds (B,K,D)"),
                       std::invalid_argument);
}

TEST_CASE("model: sequences longer than max_position_embeddings (RoPE table grows)") {
  ModelConfig c = micro();
  c.max_position_embeddings = 4;
  ModelConfig c2 = c;
  c2.max_position_embeddings = 64;
  CausalLM<double> a(c, 8), b(c2, 8);
  const Index tokens = random_tokens(1, 11, c.vocab_size, 81);
  CHECK(a.forward(tokens).value() == b.forward(tokens).value());
}

TEST_CASE("model: float <-> double conversion and checkpoints") {
  ModelConfig c = with_preset(named_size("tiny_moe"), "g2_headwise");
  CausalLM<double> d(c, 9);
  randomize(d, 91, 0.2);
  CausalLM<float> f = d.converted<float>();
  CHECK(f.config() == c);
  const Index tokens = random_tokens(2, 8, c.vocab_size, 92);
  xt::xarray<double> lf = xt::cast<double>(f.forward(tokens).value());
  CHECK(rel_diff(lf, d.forward(tokens).value()) < 1e-5);
  CausalLM<double> back = f.converted<double>();
  for (auto& [n, v] : back.state_dict()) CHECK(v == xt::xarray<double>(xt::cast<double>(f.parameter(n).value())));

  // through a safetensors file: identical logits
  const std::string path = (std::filesystem::temp_directory_path() / "tapegrad_test_model.safetensors").string();
  st::SafeTensorsWriter w;
  for (auto& [n, v] : d.state_dict()) w.add(n, v);
  w.write(path);
  CausalLM<double> loaded(c, 1234);
  loaded.load_from(st::SafeTensorsFile::load(path), path);
  CHECK(loaded.forward(tokens).value() == d.forward(tokens).value());
  CausalLM<double> other(with_preset(named_size("tiny_moe"), "g2_elementwise"));
  CHECK_THROWS_WITH_AS(other.load_from(st::SafeTensorsFile::load(path), path),
                       doctest::Contains("gate_proj.weight' has shape (2,24)"), std::invalid_argument);
  std::filesystem::remove(path);
}

// ---- diagnostics ---------------------------------------------------------------------------

TEST_CASE("diagnostics: recording does not change the result") {
  for (auto& [name, c] : variants(named_size("tiny"), named_size("tiny_moe"))) {
    INFO(name);
    CausalLM<float> m(c, 10);
    randomize(m, 101, 0.3);
    const Index tokens = random_tokens(2, 7, c.vocab_size, 102);
    LossOutput<float> plain = m.loss(tokens);
    Diagnostics diag;
    LossOutput<float> rec = m.loss(tokens, &diag);
    CHECK(plain.logits.value() == rec.logits.value());  // bitwise
    CHECK(plain.loss.item() == rec.loss.item());
    REQUIRE(diag.layers.size() == c.num_hidden_layers);
    const bool gated = c.gate.enabled() && !c.gate.is_probe();
    for (auto& l : diag.layers) {
      CHECK(l.has_gate_scores == gated);
      CHECK(l.first_token_attention > 0);
      CHECK(l.first_token_attention < 1);
      CHECK(l.max_ffn_residual > 0);
    }
    CHECK_FALSE(diag.table().empty());
  }
}

TEST_CASE("diagnostics: first-token attention on a hand-made case") {
  // With q_proj = k_proj = 0 every score is 0, so attention is uniform over the causal
  // prefix: query i puts 1/(i+1) on key 0. F-Attn = mean over i = 1..T-1 of 1/(i+1).
  for (const char* preset : {"baseline", "g2_elementwise"}) {
    ModelConfig c = with_preset(named_size("tiny"), preset);
    CausalLM<double> m(c, 11);
    for (auto& [n, p] : m.named_parameters())
      if (n.find("q_proj") != std::string::npos || n.find("k_proj") != std::string::npos)
        Tensor<double>(p).mutable_value().fill(0.0);
    const std::size_t Tn = 6;
    Diagnostics diag;
    m.forward(random_tokens(3, Tn, c.vocab_size, 111), nullptr, &diag);
    double expected = 0;
    for (std::size_t i = 1; i < Tn; ++i) expected += 1.0 / double(i + 1) / double(Tn - 1);
    for (auto& l : diag.layers) CHECK(l.first_token_attention == doctest::Approx(expected).epsilon(1e-14));
    CHECK(diag.mean_first_token_attention() == doctest::Approx(expected).epsilon(1e-14));
  }
  // A single token has no query past position 0, unless a cache puts it later.
  CausalLM<double> m(named_size("tiny"), 12);
  Diagnostics d1;
  KVCache<double> cache = m.make_cache();
  m.forward(random_tokens(1, 1, 48, 121), &cache, &d1);
  CHECK(std::isnan(d1.layers[0].first_token_attention));
  Diagnostics d2;
  m.forward(random_tokens(1, 1, 48, 122), &cache, &d2);
  CHECK(d2.layers[0].first_token_attention > 0);
  {  // the same with nothing recorded, the cache read in place (attention_cached)
    NoGrad ng;
    KVCache<double> c2 = m.make_cache();
    Diagnostics e1, e2;
    m.forward(random_tokens(1, 1, 48, 121), &c2, &e1);
    m.forward(random_tokens(1, 1, 48, 122), &c2, &e2);
    CHECK(std::isnan(e1.layers[0].first_token_attention));
    CHECK(e2.layers[0].first_token_attention ==
          doctest::Approx(d2.layers[0].first_token_attention).epsilon(1e-12));
  }
}

TEST_CASE("diagnostics: max |h| and gate scores match a step-by-step computation") {
  for (const char* preset : {"g2_headwise", "g1_input_independent", "g5_elementwise"}) {
    ModelConfig c = with_preset(named_size("tiny_moe"), preset);
    c.sandwich_norm = true;
    CausalLM<double> m(c, 13);
    randomize(m, 131, 0.4);
    const Index tokens = random_tokens(2, 5, c.vocab_size, 132);
    Diagnostics diag;
    m.forward(tokens, nullptr, &diag);
    const auto& rope = m.rope_table_for(5);
    auto maxabs = [](const Tensor<double>& t) { return xt::amax(xt::abs(t.value()))(); };
    Tensor<double> h = m.model().embed_tokens().forward(tokens);
    for (std::size_t i = 0; i < c.num_hidden_layers; ++i) {
      INFO(preset << " layer " << i);
      const DecoderLayer<double>& L = *m.model().layers()[i];
      const LayerDiagnostics& d = diag.layers[i];
      Tensor<double> x = L.input_layernorm().forward(h);
      Tensor<double> a = L.self_attn().forward(x, rope);
      CHECK(d.max_attn_output == maxabs(a));
      h = h + L.post_attn_sandwich_norm()->forward(a);
      CHECK(d.max_attn_residual == maxabs(h));
      Tensor<double> f = L.moe()->forward(L.post_attention_layernorm().forward(h)).y;
      CHECK(d.max_ffn_output == maxabs(f));
      h = h + L.post_mlp_sandwich_norm()->forward(f);
      CHECK(d.max_ffn_residual == maxabs(h));
      // the activated gate scores, computed here from the weights
      const std::string pre = "model.layers." + std::to_string(i) + ".self_attn.";
      xt::xarray<double> scores;
      if (std::string(preset) == "g1_input_independent") {
        scores = 1.0 / (1.0 + xt::exp(-m.parameter(pre + "gate_theta").value()));
      } else {
        scores = 1.0 / (1.0 + xt::exp(-linear(x, m.parameter(pre + "gate_proj.weight")).value()));
      }
      REQUIRE(d.has_gate_scores);
      GateStats s = gate_stats(scores);
      CHECK(d.gate.count == s.count);
      CHECK(d.gate.mean == doctest::Approx(s.mean).epsilon(1e-14));
      CHECK(d.gate.std == doctest::Approx(s.std).epsilon(1e-12));
      CHECK(d.gate.min == s.min);
      CHECK(d.gate.max == s.max);
      CHECK(d.gate.frac_below_1e2 == s.frac_below_1e2);
    }
    CHECK(diag.max_activation() >= diag.mean_max_activation());
  }
}

TEST_CASE("diagnostics: gate statistics") {
  xt::xarray<double> a = {0.5, 0.005, 0.0001, 0.9, 0.2, 0.0};
  GateStats s = gate_stats(a);
  CHECK(s.count == 6);
  CHECK(s.mean == doctest::Approx((0.5 + 0.005 + 0.0001 + 0.9 + 0.2) / 6));
  CHECK(s.min == 0.0);
  CHECK(s.max == 0.9);
  CHECK(s.frac_below_1e2 == doctest::Approx(3.0 / 6));
  CHECK(s.frac_below_1e3 == doctest::Approx(2.0 / 6));
  double var = 0;
  for (double v : a) var += (v - s.mean) * (v - s.mean) / 6;
  CHECK(s.std == doctest::Approx(std::sqrt(var)));
  // a zero-initialised input-independent gate is sigmoid(0) = 0.5 everywhere
  CausalLM<double> m(with_preset(named_size("tiny"), "g1_input_independent"));
  Diagnostics d;
  m.forward(random_tokens(1, 4, 48, 1), nullptr, &d);
  CHECK(d.layers[0].gate.mean == 0.5);
  CHECK(d.layers[0].gate.std == 0.0);
  CHECK(d.mean_gate_score() == 0.5);
}

TEST_SUITE("slow") {
  TEST_CASE("gradcheck: the tiny model for every preset and option (slow)") {
    SingleThread single_thread;
    for (auto& [name, c] : variants(named_size("tiny"), named_size("tiny_moe"))) {
      INFO(name);
      CausalLM<double> m(c, 14);
      randomize(m, 141, 0.3);
      const Index tokens = random_tokens(2, 6, c.vocab_size, 142);
      GradcheckOptions opt;
      opt.full_limit = 0, opt.projections = 3, opt.coordinates = 8;
      auto r = gradcheck(
          [&](const std::vector<Tensor<double>>& in) {
            m.bind_parameters(in);
            return m.loss(tokens).loss;
          },
          m.parameters(), opt);
      CHECK_MESSAGE(r.ok, r.summary());
    }
  }
}
