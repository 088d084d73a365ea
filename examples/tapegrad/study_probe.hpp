// examples/tapegrad/study_probe.hpp — one layer's attention probabilities and gate scores,
// in full, for the study's heat map and gate-score histogram.
//
// What it is for: nn::Diagnostics keeps summaries only (F-Attn, max |h|, gate-score
// statistics). The attention heat map needs the probabilities (B,H,T,T) of one layer and
// the histogram needs the gate scores themselves, so probe_layer() runs the model's own
// forward with a forward hook on that layer's attention (Note [Forward hooks] in
// nn/module.hpp), which hands out both as the layer computes them. tests/test_study.cpp
// checks them against the model's Diagnostics: the F-Attn computed from these
// probabilities and the gate-score statistics must match the model's own.
//
// What it is not: a second implementation of attention (it was one, until the hooks).
#pragma once

#include <cstdint>
#include <limits>
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

// tokens (B,T) -> the layer's probabilities and gate scores (see LayerProbe), read from the
// model's own forward through a forward hook (Note [Forward hooks] in nn/module.hpp).
template <class T>
LayerProbe<T> probe_layer(const nn::CausalLM<T>& model, const Index& tokens, std::size_t layer) {
  const auto& layers = model.model().layers();
  if (layer >= layers.size())
    throw std::invalid_argument("probe_layer: layer " + std::to_string(layer) + " of a model with " +
                                std::to_string(layers.size()) + " layers");
  if (tokens.dimension() != 2) throw std::invalid_argument("probe_layer: tokens must be (B,T)");
  LayerProbe<T> r;
  const auto& attn = layers[layer]->self_attn();
  const std::uint64_t id = attn.register_forward_hook([&r](const auto& e) {
    if (!e.module.empty()) return;  // the attention itself, not its projections
    if (std::string(e.what) == "probs") r.probs = e.value.value();
    if (std::string(e.what) == "gate") r.gate_scores = e.value.value(), r.has_gate_scores = true;
  });
  try {
    NoGrad no_grad;
    model.forward(tokens);
  } catch (...) {
    attn.remove_forward_hook(id);
    throw;
  }
  attn.remove_forward_hook(id);
  return r;
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
