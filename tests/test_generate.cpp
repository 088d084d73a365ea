// tests/test_generate.cpp — nn/generate.hpp: token picking and the decode loop, on a micro
// model with random weights (no training, no files).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "autograd/kernels/parallel.hpp"
#include "nn/config.hpp"
#include "nn/generate.hpp"
#include "nn/model.hpp"

using namespace tg;
using namespace tg::nn;

namespace {

// V 13, C 8, H 4, K 2, D 4, F 6, 2 layers: small enough to run a full forward per step.
ModelConfig micro() {
  ModelConfig c = named_size("tiny");
  c.vocab_size = 13, c.hidden_size = 8, c.intermediate_size = 6, c.num_attention_heads = 4;
  c.num_key_value_heads = 2, c.head_dim = 4, c.max_position_embeddings = 64;
  return c;
}

// Weights N(0, 0.5) so that the logits differ clearly (the default init is nearly uniform).
template <class T>
void randomize(Module<T>& m, std::uint64_t seed) {
  Generator gen(seed);
  for (auto& [n, p] : m.named_parameters()) {
    Tensor<T> h = p;
    const bool ones = xt::all(xt::equal(p.value(), T(1)));
    for (auto& v : h.mutable_value()) v = static_cast<T>(ones ? 1.0 + 0.2 * gen.normal() : gen.normal(0.0, 0.5));
  }
}

// The argmax (lowest id on ties) of the last position of a full forward over `tokens`.
template <class T>
std::int64_t full_argmax(const CausalLM<T>& m, const std::vector<std::int64_t>& tokens) {
  NoGrad ng;
  Index x = Index::from_shape({std::size_t(1), tokens.size()});
  std::copy(tokens.begin(), tokens.end(), x.data());
  const auto logits = m.forward(x).value();  // (1,n,V)
  const std::size_t V = m.config().vocab_size;
  const T* row = logits.data() + (tokens.size() - 1) * V;
  return static_cast<std::int64_t>(std::max_element(row, row + V) - row);
}

}  // namespace

TEST_CASE("generate: greedy decoding with the KV cache is the argmax of the full forward at every step") {
  tg::set_num_threads(1);
  CausalLM<double> m(micro(), 3);
  randomize(m, 11);
  const std::vector<std::int64_t> prompt = {1, 5, 2};
  SampleOptions o;
  o.temperature = 0.0;
  o.length = 24;
  o.context = 64;  // no window restart: every step is one cached token
  const auto got = generate(m, prompt, o);
  REQUIRE(got.size() == o.length);
  std::vector<std::int64_t> tokens = prompt;
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("step " << i);
    CHECK(got[i] == full_argmax(m, tokens));
    tokens.push_back(got[i]);
  }
  // Not a constant sequence (the check above would be weak on one).
  CHECK(std::count(got.begin(), got.end(), got[0]) < static_cast<long>(got.size()));
  // The same with and without the cache, also across window restarts (context 8).
  o.context = 8;
  const auto cached = generate(m, prompt, o);
  o.use_cache = false;
  CHECK(generate(m, prompt, o) == cached);
  tg::set_num_threads(0);
}

TEST_CASE("generate: a seeded sample reproduces - another seed differs - the callback sees every token") {
  tg::set_num_threads(1);
  CausalLM<float> m(micro(), 4);
  randomize(m, 12);
  SampleOptions o;
  o.temperature = 1.0;
  o.length = 40;
  o.seed = 7;
  std::vector<std::int64_t> seen;
  const auto a = generate(m, {3}, o, [&](std::int64_t t) { seen.push_back(t); });
  CHECK(seen == a);
  CHECK(generate(m, {3}, o) == a);
  o.seed = 8;
  CHECK(generate(m, {3}, o) != a);
  // top-k 1 is greedy, whatever the temperature and seed.
  o.top_k = 1;
  const auto k1 = generate(m, {3}, o);
  SampleOptions g = o;
  g.top_k = 0, g.temperature = 0.0;
  CHECK(k1 == generate(m, {3}, g));
  tg::set_num_threads(0);
}

TEST_CASE("pick_token: greedy, top-k and top-p keep the right candidates - the draw follows the probabilities") {
  const double logits[5] = {0.0, 2.0, 1.0, 2.0, -1.0};
  Generator gen(1);
  SampleOptions o;
  o.temperature = 0.0;
  CHECK(pick_token(logits, 5, o, gen) == 1);  // lowest id on ties
  o.temperature = 1.0;
  o.top_k = 2;  // ids 1 and 3 only
  std::map<std::int64_t, int> count;
  for (int i = 0; i < 4000; ++i) ++count[pick_token(logits, 5, o, gen)];
  CHECK(count.size() == 2);
  CHECK(count[1] > 1800);
  CHECK(count[3] > 1800);
  // top-p: p ∝ e^{0,2,1,2,-1}; ids 1,3 hold 0.73 of the mass, adding 2 reaches 0.87.
  o.top_k = 0;
  o.top_p = 0.8;
  count.clear();
  for (int i = 0; i < 4000; ++i) ++count[pick_token(logits, 5, o, gen)];
  CHECK(count.size() == 3);
  CHECK(count.count(2) == 1);
  // Unrestricted at temperature 1: frequencies near softmax.
  o.top_p = 1.0;
  count.clear();
  const int N = 20000;
  for (int i = 0; i < N; ++i) ++count[pick_token(logits, 5, o, gen)];
  double z = 0;
  for (double l : logits) z += std::exp(l);
  for (int v = 0; v < 5; ++v) CHECK(std::abs(count[v] / double(N) - std::exp(logits[v]) / z) < 0.015);
  const double bad[2] = {0.0, std::nan("")};
  CHECK_THROWS_WITH_AS(pick_token(bad, 2, o, gen), doctest::Contains("NaN"), std::runtime_error);
}

TEST_CASE("generate: bad prompts are refused with a clear error") {
  CausalLM<float> m(micro());
  SampleOptions o;
  CHECK_THROWS_WITH_AS(generate(m, {}, o), doctest::Contains("at least one token"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(generate(m, {13}, o), doctest::Contains("outside the vocabulary"), std::invalid_argument);
}
