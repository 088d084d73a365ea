// tests/test_forward_hooks.cpp — Module::register_forward_hook (Note [Forward hooks] in
// nn/module.hpp): which modules report what, paths relative to the module the hook is on,
// the attention probabilities and gate scores equal to what the diagnostics record, MoE
// router probabilities, removal, and hooks inside a checkpointed layer.
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>

#include "autograd/autograd.hpp"
#include "nn/config.hpp"
#include "nn/diagnostics.hpp"
#include "nn/model.hpp"
#include "test_util.hpp"

using namespace tg;
using TD = Tensor<double>;

namespace {

Index some_tokens(std::size_t B, std::size_t T, std::size_t V, std::uint64_t seed) {
  Generator gen(seed);
  Index t = Index::from_shape({B, T});
  for (auto& x : t) x = std::int64_t(gen.next_u64() % V);
  return t;
}

nn::ModelConfig gated_tiny() {
  nn::ModelConfig c = nn::named_size("tiny");
  nn::apply_preset(c, "g1_elementwise");
  return c;
}

}  // namespace

TEST_CASE("forward hooks: every module reports its output under its path, the model its logits") {
  const nn::ModelConfig c = gated_tiny();
  nn::CausalLM<double> model(c, 4);
  std::map<std::string, Shape> seen;  // "path what" -> shape
  model.register_forward_hook([&](const auto& e) { seen[e.module + " " + e.what] = e.value.shape(); });
  const Index tokens = some_tokens(2, 7, c.vocab_size, 1);
  const TD logits = model.forward(tokens);
  const std::size_t C = c.hidden_size;
  CHECK(seen.at("model.embed_tokens output") == Shape{2, 7, C});
  CHECK(seen.at("model.layers.0.input_layernorm output") == Shape{2, 7, C});
  CHECK(seen.at("model.layers.0.self_attn.q_proj output").at(2) > 0);
  CHECK(seen.at("model.layers.1.self_attn output") == Shape{2, 7, C});
  CHECK(seen.at("model.layers.1.mlp output") == Shape{2, 7, C});
  CHECK(seen.at("model.layers.1 output") == Shape{2, 7, C});
  CHECK(seen.at("model.norm output") == Shape{2, 7, C});
  CHECK(seen.at(" logits") == logits.shape());
  CHECK(seen.at("model.layers.0.self_attn probs") ==
        Shape{2, c.num_attention_heads, 7, 7});
  CHECK(seen.count("model.layers.0.self_attn gate") == 1);
}

TEST_CASE("forward hooks: the attention probabilities and gate scores are the diagnostics' own") {
  const nn::ModelConfig c = gated_tiny();
  nn::CausalLM<double> model(c, 5);
  const Index tokens = some_tokens(2, 9, c.vocab_size, 2);
  std::map<std::string, xt::xarray<double>> probs, gates;
  const auto id = model.register_forward_hook([&](const auto& e) {
    if (std::string(e.what) == "probs") probs[e.module] = e.value.value();
    if (std::string(e.what) == "gate") gates[e.module] = e.value.value();
  });
  NoGrad off;
  model.forward(tokens);
  model.remove_forward_hook(id);
  nn::Diagnostics diag;
  diag.keep_tensors = true;
  model.forward(tokens, nullptr, &diag);
  REQUIRE(probs.size() == c.num_hidden_layers);
  for (std::size_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string path = "model.layers." + std::to_string(l) + ".self_attn";
    CAPTURE(path);
    const auto& p = probs.at(path);
    const auto& want = diag.layers[l].probs;
    REQUIRE(p.shape() == want.shape());
    double d = 0;
    for (std::size_t i = 0; i < p.size(); ++i) d = std::max(d, std::abs(p.data()[i] - want.data()[i]));
    CHECK(d < 1e-15);
    // each query's row sums to one over the keys it can see
    for (std::size_t i = 0; i < p.size(); i += 9) {
      double row = 0;
      for (std::size_t j = 0; j < 9; ++j) row += p.data()[i + j];
      CHECK(row == doctest::Approx(1.0));
    }
    const auto& g = gates.at(path);
    double lo = 1, hi = 0, mean = 0;
    for (double v : g) lo = std::min(lo, v), hi = std::max(hi, v), mean += v;
    mean /= double(g.size());
    CHECK(lo > 0);
    CHECK(hi < 1);
    CHECK(mean == doctest::Approx(diag.layers[l].gate.mean).epsilon(1e-12));
  }
}

TEST_CASE("forward hooks: on a submodule paths are relative to it - removal, and an unknown id") {
  nn::CausalLM<double> model(nn::named_size("tiny"), 6);
  const auto& layer = *model.model().layers()[1];
  std::set<std::string> paths;
  const auto id = layer.register_forward_hook([&](const auto& e) { paths.insert(e.module + " " + e.what); });
  model.forward(some_tokens(1, 5, 48, 3));
  CHECK(paths.count(" output") == 1);
  CHECK(paths.count("self_attn output") == 1);
  CHECK(paths.count("mlp.down_proj output") == 1);
  CHECK(paths.count("model.layers.0.self_attn output") == 0);
  layer.remove_forward_hook(id);
  paths.clear();
  model.forward(some_tokens(1, 5, 48, 3));
  CHECK(paths.empty());
  CHECK(THROW_MSG(layer.remove_forward_hook(id)).find("no forward hook with id " + std::to_string(id)) !=
        std::string::npos);
}

TEST_CASE("forward hooks: MoE router probabilities, and a checkpointed layer reports again when recomputed") {
  nn::CausalLM<double> model(nn::named_size("tiny_moe"), 7);
  const nn::ModelConfig& c = model.config();
  int router = 0, layer0 = 0;
  model.register_forward_hook([&](const auto& e) {
    if (std::string(e.what) == "router_probs") {
      ++router;
      CHECK(e.value.shape() == Shape{3 * 6, c.num_experts});
      for (std::size_t n = 0; n < 3 * 6; ++n) {
        double s = 0;
        for (std::size_t k = 0; k < c.num_experts; ++k) s += e.value.value()(n, k);
        CHECK(s == doctest::Approx(1.0));
      }
    }
    if (e.module == "model.layers.0" && std::string(e.what) == "output") ++layer0;
  });
  const Index tokens = some_tokens(3, 6, c.vocab_size, 4);
  model.loss(tokens).loss.backward();
  CHECK(router == int(c.num_hidden_layers));
  CHECK(layer0 == 1);
  model.set_checkpoint_layers(true);
  router = layer0 = 0;
  model.loss(tokens).loss.backward();
  CHECK(router == 2 * int(c.num_hidden_layers));  // the forward, and backward's recomputation
  CHECK(layer0 == 2);
}
