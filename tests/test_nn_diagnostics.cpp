// tests/test_nn_diagnostics.cpp — the attention-sink metrics (nn/diagnostics.hpp): Sink_1^eps
// and per-head first-token attention on hand-made attention tensors with known answers, the
// uniform reference, and what the model records (per head, position 0 against the rest).
#include <doctest/doctest.h>

#include <cmath>

#include "autograd/autograd.hpp"
#include "nn/diagnostics.hpp"
#include "nn/nn.hpp"

using namespace tg;
using namespace tg::nn;

namespace {
// Causal probabilities (B=1, H, T, T): head h puts `sink[h]` on key 0 for every query >= 1
// and spreads the rest evenly over keys 1..i.
xt::xarray<double> handmade(const std::vector<double>& sink, std::size_t T) {
  const std::size_t H = sink.size();
  xt::xarray<double> p = xt::zeros<double>({std::size_t(1), H, T, T});
  for (std::size_t h = 0; h < H; ++h) {
    p(0, h, 0, 0) = 1;
    for (std::size_t i = 1; i < T; ++i) {
      p(0, h, i, 0) = sink[h];
      for (std::size_t j = 1; j <= i; ++j) p(0, h, i, j) = (1 - sink[h]) / double(i);
    }
  }
  return p;
}
}  // namespace

TEST_CASE("head_key_attention and sink_rate on a hand-made attention tensor") {
  // Layer 0: heads with 0.9, 0.1, 0.31, 0.3 on the first token; layer 1: 0.5, 0.0, 0.0, 0.0.
  const auto l0 = handmade({0.9, 0.1, 0.31, 0.3}, 6), l1 = handmade({0.5, 0.0, 0.0, 0.0}, 6);
  const auto h0 = head_key_attention(l0, 0), h1 = head_key_attention(l1, 0);
  REQUIRE(h0.size() == 4);
  CHECK(h0[0] == doctest::Approx(0.9));
  CHECK(h0[1] == doctest::Approx(0.1));
  CHECK(h0[2] == doctest::Approx(0.31));
  CHECK(h1[0] == doctest::Approx(0.5));
  // Query 0 (which can only see itself, probability 1) does not count.
  CHECK(h1[1] == doctest::Approx(0.0));
  const SinkRate r = sink_rate({h0, h1}, 0.3);
  REQUIRE(r.per_layer.size() == 2);
  CHECK(r.per_layer[0] == doctest::Approx(0.5));   // 0.9 and 0.31 (0.3 is not above 0.3)
  CHECK(r.per_layer[1] == doctest::Approx(0.25));  // 0.5
  CHECK(r.overall == doctest::Approx(3.0 / 8.0));
  CHECK(sink_rate({h0, h1}, 0.05).overall == doctest::Approx(5.0 / 8.0));
  // Key 1: query i >= 1 gives (1 - sink) / i; head 1 of layer 1 has sink 0.
  const auto k1 = head_key_attention(l1, 1);
  double want = 0;
  for (int i = 1; i < 6; ++i) want += 1.0 / i;
  CHECK(k1[1] == doctest::Approx(want / 5));
  CHECK(mean_over_heads({0.2, std::nan(""), 0.4}) == doctest::Approx(0.3));
  CHECK_THROWS_AS(head_key_attention(xt::xarray<double>(xt::zeros<double>({2, 2})), 0), std::invalid_argument);
}

TEST_CASE("uniform_first_token_attention is F-Attn of uniform causal attention") {
  const std::size_t T = 7;
  std::vector<double> none(1, 0.0);
  // Uniform attention over keys 0..i: 1/(i+1) on key 0.
  xt::xarray<double> p = xt::zeros<double>({std::size_t(1), std::size_t(1), T, T});
  for (std::size_t i = 0; i < T; ++i)
    for (std::size_t j = 0; j <= i; ++j) p(0, 0, i, j) = 1.0 / double(i + 1);
  CHECK(head_key_attention(p, 0)[0] == doctest::Approx(uniform_first_token_attention(T)));
  CHECK(uniform_first_token_attention(512) == doctest::Approx(0.01194).epsilon(0.01));
  CHECK(std::isnan(uniform_first_token_attention(1)));
}

TEST_CASE("the model records per-head first-token attention, position 0 against the rest") {
  ModelConfig c = with_preset(named_size("tiny"), "g1_elementwise");
  c.vocab_size = 257;
  CausalLM<float> m(c, 3);
  Index x = Index::from_shape({2, 9});
  for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = std::int64_t((i * 37) % 256);
  x(0, 0) = x(1, 0) = 256;  // a BOS
  NoGrad ng;
  Diagnostics d;
  d.keep_tensors = true;
  const Tensor<float> plain = m.forward(x);
  const Tensor<float> with = m.forward(x, nullptr, &d);
  CHECK(xt::allclose(plain.value(), with.value()));  // recording does not change the result
  REQUIRE(d.layers.size() == c.num_hidden_layers);
  for (const auto& l : d.layers) {
    REQUIRE(l.head_first_token_attention.size() == c.num_attention_heads);
    CHECK(mean_over_heads(l.head_first_token_attention) == doctest::Approx(l.first_token_attention));
    // The kept probabilities give the same numbers.
    const auto again = head_key_attention(l.probs, 0);
    for (std::size_t h = 0; h < again.size(); ++h) CHECK(again[h] == doctest::Approx(l.head_first_token_attention[h]));
    CHECK(std::max(l.max_h_first, l.max_h_rest) == doctest::Approx(l.max_ffn_residual));
    REQUIRE(l.has_gate_scores);
    // gate_first and gate_rest partition the scores: their count-weighted mean is the mean.
    CHECK(l.gate_first.count + l.gate_rest.count == l.gate.count);
    CHECK((l.gate_first.mean * l.gate_first.count + l.gate_rest.mean * l.gate_rest.count) / l.gate.count ==
          doctest::Approx(l.gate.mean));
    CHECK(l.gate_scores.size() == l.gate.count);
  }
  const SinkSummary s = summarize_sinks(d, 9);
  CHECK(s.f_attn_mean == doctest::Approx(d.mean_first_token_attention()));
  CHECK(s.f_attn_uniform == doctest::Approx(uniform_first_token_attention(9)));
  CHECK(sink_csv_row(5, 90, s).rfind("5,90,", 0) == 0);
}
