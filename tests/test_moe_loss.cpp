// tests/test_moe_loss.cpp — the two MoE load-balancing losses of nn/MODEL.md "MoE losses",
// each against a computation by hand from the router logits of every layer.
//
// What it is for: per_layer (this project: each layer's E * sum_e f_e P_e, then the mean
// over layers) and pooled (Hugging Face's load_balancing_loss_func: all layers' router
// outputs concatenated first), output_router_logits switching the term off, no z-loss for
// files from Hugging Face. What it is not: a test of the MoE forward (test_nn_model.cpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "nn/model.hpp"

using namespace tg;
using namespace tg::nn;

namespace {

// Router logits (N,E) of every MoE layer, stepping through the layers by hand.
std::vector<xt::xarray<double>> router_logits(const CausalLM<double>& m, const Index& tokens) {
  const ModelConfig& c = m.config();
  const auto& rope = m.rope_table_for(tokens.shape()[1]);
  std::vector<xt::xarray<double>> r;
  Tensor<double> h = m.model().embed_tokens().forward(tokens);
  for (std::size_t i = 0; i < c.num_hidden_layers; ++i) {
    const DecoderLayer<double>& L = *m.model().layers()[i];
    h = h + L.self_attn().forward(L.input_layernorm().forward(h), rope);
    Tensor<double> y = L.post_attention_layernorm().forward(h);
    const auto w = m.parameter("model.layers." + std::to_string(i) + ".mlp.gate.weight").value();  // (E,C)
    const auto& yv = y.value();
    const std::size_t C = c.hidden_size, N = yv.size() / C, E = c.num_experts;
    xt::xarray<double> lg = xt::zeros<double>({N, E});
    for (std::size_t n = 0; n < N; ++n)
      for (std::size_t e = 0; e < E; ++e)
        for (std::size_t k = 0; k < C; ++k) lg(n, e) += yv.data()[n * C + k] * w(e, k);
    r.push_back(lg);
    h = h + L.moe()->forward(y).y;
  }
  return r;
}

// E * sum_e (count_e / N) * mean_e(p) over the rows of `logits` (N,E), top-k counts.
double balance(const xt::xarray<double>& logits, std::size_t k) {
  const std::size_t N = logits.shape()[0], E = logits.shape()[1];
  std::vector<double> count(E, 0), pmean(E, 0);
  for (std::size_t n = 0; n < N; ++n) {
    double mx = -1e300, z = 0;
    for (std::size_t e = 0; e < E; ++e) mx = std::max(mx, logits(n, e));
    std::vector<double> p(E);
    for (std::size_t e = 0; e < E; ++e) z += p[e] = std::exp(logits(n, e) - mx);
    std::vector<std::size_t> order(E);
    for (std::size_t e = 0; e < E; ++e) order[e] = e, p[e] /= z, pmean[e] += p[e] / double(N);
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return p[a] > p[b]; });
    for (std::size_t j = 0; j < k; ++j) count[order[j]] += 1;
  }
  double s = 0;
  for (std::size_t e = 0; e < E; ++e) s += count[e] / double(N) * pmean[e];
  return double(E) * s;
}

ModelConfig moe_config() {
  ModelConfig c = named_size("tiny_moe");
  c.num_hidden_layers = 3, c.num_experts = 6, c.num_experts_per_tok = 2;
  c.router_aux_loss_coef = 0.1, c.router_z_loss_coef = 0.01;
  return c;
}

}  // namespace

TEST_CASE("MoE losses: per_layer and pooled against a hand computation") {
  ModelConfig c = moe_config();
  CausalLM<double> m(c, 5);
  Generator gen(17);
  for (auto& [n, p] : m.named_parameters()) {
    Tensor<double> h = p;
    if (n.find("mlp.gate.weight") != std::string::npos)
      for (auto& v : h.mutable_value()) v = gen.normal(0.0, 1.5);  // routers that differ between layers
  }
  Index tokens = Index::from_shape({2, 9});
  for (auto& v : tokens) v = static_cast<std::int64_t>(gen.next_u64() % c.vocab_size);
  const auto logits = router_logits(m, tokens);
  REQUIRE(logits.size() == 3);
  double per_layer = 0;
  for (auto& l : logits) per_layer += balance(l, 2) / 3.0;
  xt::xarray<double> pooled_logits = xt::concatenate(xt::xtuple(logits[0], logits[1], logits[2]), 0);
  const double pooled = balance(pooled_logits, 2);
  CHECK(std::abs(per_layer - pooled) > 1e-3);  // the two differ on this model

  LossOutput<double> a = m.loss(tokens);
  CHECK(a.aux.item() == doctest::Approx(per_layer).epsilon(1e-12));
  CHECK(a.loss.item() == doctest::Approx(a.ce.item() + 0.1 * per_layer + 0.01 * a.z.item()).epsilon(1e-12));

  ModelConfig hf = c;
  hf.moe_aux_loss = MoeAuxLoss::Pooled;
  CausalLM<double> mh(hf, 5);
  mh.copy_state_from(m);
  LossOutput<double> b = mh.loss(tokens);
  CHECK(b.aux.item() == doctest::Approx(pooled).epsilon(1e-12));
  CHECK(b.z.item() == doctest::Approx(a.z.item()).epsilon(1e-14));
  CHECK(b.ce.item() == doctest::Approx(a.ce.item()).epsilon(1e-14));

  // Hugging Face: no z-loss, and the aux term only with output_router_logits.
  hf.router_z_loss_coef = 0, hf.output_router_logits = true;
  CausalLM<double> m2(hf, 5);
  m2.copy_state_from(m);
  CHECK(m2.loss(tokens).loss.item() == doctest::Approx(a.ce.item() + 0.1 * pooled).epsilon(1e-12));
  hf.output_router_logits = false;
  CausalLM<double> m3(hf, 5);
  m3.copy_state_from(m);
  LossOutput<double> d = m3.loss(tokens);
  CHECK(d.loss.item() == d.ce.item());
  CHECK(d.aux.item() == doctest::Approx(pooled).epsilon(1e-12));  // still reported

  // the pooled loss has the gradient of its formula: compare with a finite difference
  hf.output_router_logits = true, hf.router_aux_loss_coef = 1.0;
  CausalLM<double> m4(hf, 5);
  m4.copy_state_from(m);
  Tensor<double> w = m4.parameter("model.layers.1.mlp.gate.weight");
  m4.zero_grad();
  m4.loss(tokens).aux.backward();
  const double g = w.grad()(2, 3);
  const double eps = 1e-6, w0 = w.value()(2, 3);
  w.mutable_value()(2, 3) = w0 + eps;
  const double up = m4.loss(tokens).aux.item();
  w.mutable_value()(2, 3) = w0 - eps;
  const double down = m4.loss(tokens).aux.item();
  w.mutable_value()(2, 3) = w0;
  CHECK(g == doctest::Approx((up - down) / (2 * eps)).epsilon(1e-5));
}
