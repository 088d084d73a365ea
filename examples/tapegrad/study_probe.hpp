// examples/tapegrad/study_probe.hpp — one layer's attention probabilities and gate scores,
// in full, for the study's heat map and gate-score histogram.
//
// What it is for: nn::Diagnostics keeps summaries only (F-Attn, max |h|, gate-score
// statistics). The attention heat map needs the probabilities (B,H,T,T) of one layer and
// the histogram needs the gate scores themselves, so probe_layer() runs the model up to a
// layer (embed_tokens and the earlier DecoderLayers, the model's own code) and then
// recomputes that layer's attention scores from its parameters, following nn/MODEL.md
// "Attention" and "Gates" step by step (G1 scores from the widened q_proj, G2..G5 from
// gate_proj, head-shared means, the input-independent θ, the four activations).
// tests/test_study.cpp checks it against the model's Diagnostics: the F-Attn computed from
// these probabilities and the gate-score statistics must match the model's own.
//
// What it is not: a second model. It only reads parameters and calls autograd ops under
// NoGrad; it does not compute the layer's output. Remove it once Diagnostics can hand out
// the probabilities and the scores (see the study's report to the team).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "autograd/ops.hpp"
#include "autograd/tape.hpp"
#include "nn/model.hpp"

namespace tg::study {

template <class T>
struct LayerProbe {
  xt::xarray<T> probs;  // (B,H,T,T) causal attention probabilities of the layer
  // The activated gate scores, as the gate applies them: (B,T,n,D) elementwise or
  // (B,T,n,1) headwise (n heads of the gated position, 1 when head-shared), (B,T,C) for
  // G5, (H,D) for the input-independent gate. Only when has_gate_scores (not for no gate
  // and the probes).
  xt::xarray<T> gate_scores;
  bool has_gate_scores = false;
};

namespace detail {

template <class T>
Tensor<T> optional_param(const nn::Module<T>& m, const std::string& name) {
  return m.has_parameter(name) ? m.parameter(name) : Tensor<T>();
}

template <class T>
Tensor<T> activate(const Tensor<T>& s, nn::GateActivation a) {
  switch (a) {
    case nn::GateActivation::Sigmoid: return sigmoid(s);
    case nn::GateActivation::Silu: return silu(s);
    case nn::GateActivation::Identity: return s;
    case nn::GateActivation::NsSigmoid: return sigmoid(s) * T(0.5) + T(0.5);
  }
  return s;
}

template <class T>
Tensor<T> combine(const Tensor<T>& y, const Tensor<T>& a, nn::GateCombine c) {
  return c == nn::GateCombine::Multiplicative ? y * a : y + a;
}

}  // namespace detail

// tokens (B,T) -> the layer's probabilities and gate scores (see LayerProbe).
template <class T>
LayerProbe<T> probe_layer(const nn::CausalLM<T>& model, const Index& tokens, std::size_t layer) {
  const nn::ModelConfig& c = model.config();
  const auto& layers = model.model().layers();
  if (layer >= layers.size())
    throw std::invalid_argument("probe_layer: layer " + std::to_string(layer) + " of a model with " +
                                std::to_string(layers.size()) + " layers");
  if (tokens.dimension() != 2) throw std::invalid_argument("probe_layer: tokens must be (B,T)");
  NoGrad no_grad;
  const auto B = static_cast<std::int64_t>(tokens.shape()[0]), Tn = static_cast<std::int64_t>(tokens.shape()[1]);
  const auto H = static_cast<std::int64_t>(c.num_attention_heads), K = static_cast<std::int64_t>(c.num_key_value_heads);
  const auto D = static_cast<std::int64_t>(c.head_dim);
  const nn::GateConfig& g = c.gate;
  const std::int64_t Dg = g.granularity == nn::GateGranularity::Elementwise ? D : 1;

  // ---- the residual stream entering the layer, by the model's own code ----
  const RopeTable<T>& rope_tab = model.rope_table_for(static_cast<std::size_t>(Tn));
  Tensor<T> h = model.model().embed_tokens().forward(tokens);  // (B,T,C)
  for (std::size_t i = 0; i < layer; ++i) h = layers[i]->forward(h, rope_tab).h;
  const nn::DecoderLayer<T>& L = *layers[layer];
  const Tensor<T> x = L.input_layernorm().forward(h);  // (B,T,C)
  const nn::Attention<T>& A = L.self_attn();

  // ---- projections (nn/MODEL.md "Attention"); G1 scores from the widened q_proj ----
  LayerProbe<T> out;
  Tensor<T> qp = linear(x, A.parameter("q_proj.weight"), detail::optional_param(A, "q_proj.bias"));
  Tensor<T> q, s;
  if (g.in_q_proj()) {
    const std::int64_t G = H / K;  // (B,T,K,group): each group G*D query columns, then G*Dg gate columns
    auto parts = split(reshape(qp, {B, Tn, K, G * D + G * Dg}),
                       {static_cast<std::size_t>(G * D), static_cast<std::size_t>(G * Dg)}, -1);
    q = reshape(parts[0], {B, Tn, H, D});
    s = reshape(parts[1], {B, Tn, H, Dg});
  } else {
    q = reshape(qp, {B, Tn, H, D});
  }
  Tensor<T> k = reshape(linear(x, A.parameter("k_proj.weight"), detail::optional_param(A, "k_proj.bias")), {B, Tn, K, D});
  Tensor<T> v = reshape(linear(x, A.parameter("v_proj.weight"), detail::optional_param(A, "v_proj.bias")), {B, Tn, K, D});

  // ---- gate scores: G2..G5 from gate_proj, or the input-independent θ ----
  if (g.has_score_weights() && !g.in_q_proj()) {
    Tensor<T> sp = linear(x, A.parameter("gate_proj.weight"));
    if (g.position == nn::GatePosition::Dense) {
      s = sp;  // (B,T,C)
    } else {
      const std::int64_t n = g.position == nn::GatePosition::Query ? H : K;
      s = reshape(sp, {B, Tn, n, Dg});
    }
  }
  Tensor<T> a;  // the activated scores
  if (s.defined()) {
    if (g.head_shared) s = mean(s, {2}, true);  // one gate for all heads
    a = detail::activate(s, g.activation);
  } else if (g.position == nn::GatePosition::Sdpa && !g.is_probe() && !g.input_dependent) {
    a = detail::activate(A.parameter("gate_theta"), g.activation);  // (H,D)
  }
  // G3 and G4 change the probabilities; G1, G2, G5 do not.
  if (g.position == nn::GatePosition::Query && a.defined()) q = detail::combine(q, a, g.combine);
  if (g.position == nn::GatePosition::Key && a.defined()) k = detail::combine(k, a, g.combine);

  // ---- QK-norm, RoPE, causal softmax ----
  if (c.use_qk_norm) {
    q = rmsnorm(q, A.parameter("q_norm.weight"), c.rms_norm_eps);
    k = rmsnorm(k, A.parameter("k_norm.weight"), c.rms_norm_eps);
  }
  q = rope(q, rope_tab);
  k = rope(k, rope_tab);
  attention(q, k, v, std::nullopt, &out.probs);  // probs (B,H,T,T)
  if (a.defined()) out.gate_scores = a.value(), out.has_gate_scores = true;
  return out;
}

// F-Attn of one probability tensor (B,H,T,T): the mean probability on key 0 over batch,
// heads and queries 1..T-1 (nn/MODEL.md "Diagnostics"); of one head when head >= 0.
template <class T>
double first_token_attention(const xt::xarray<T>& probs, std::int64_t head = -1) {
  const std::size_t Bn = probs.shape()[0], Hn = probs.shape()[1], Tq = probs.shape()[2], Tk = probs.shape()[3];
  double sum = 0;
  std::size_t n = 0;
  for (std::size_t b = 0; b < Bn; ++b)
    for (std::size_t hh = 0; hh < Hn; ++hh) {
      if (head >= 0 && hh != static_cast<std::size_t>(head)) continue;
      for (std::size_t i = 0; i < Tq; ++i)
        if (Tk - Tq + i >= 1) sum += double(probs.data()[((b * Hn + hh) * Tq + i) * Tk]), ++n;
    }
  return n ? sum / double(n) : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace tg::study
