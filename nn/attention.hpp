// nn/attention.hpp — self-attention of the Qwen3-style decoder, with every gate of the zoo.
//
// What it is for: grouped-query causal attention with QK-norm and RoPE (nn/MODEL.md
// "Attention"), and the gated-attention variants of the paper, all driven by one
// GateConfig (Note [One gate configuration] in nn/config.hpp): position G1..G5,
// elementwise or headwise scores, head-specific or head-shared, multiplicative or
// additive, sigmoid / SiLU / identity / NS-sigmoid, input-dependent or a learned θ, and
// the G1 probes (per-head RMSNorm, SiLU). It also serves incremental decoding with a
// KV cache and reports what the diagnostics want (first-token attention, gate scores).
//
// What it is not: the attention kernel (autograd/ops.hpp `attention`, token-major
// (B,T,H,D), causal, GQA-aware) or the decoder block (nn/model.hpp).
//
// Parameter names (under `self_attn.`): q_proj, k_proj, v_proj, o_proj (weight, and bias
// with attention_bias), q_norm, k_norm (use_qk_norm), gate_proj (G2..G5 with W_θ; no bias),
// gate_theta (input-independent G1), sdpa_norm (G1 RMSNorm probe). G1 score rows live in
// the widened q_proj, see Note [G1 layout] in attention.cpp.
#pragma once

#include <cstddef>
#include <limits>

#include "autograd/ops.hpp"
#include "nn/config.hpp"
#include "nn/layers.hpp"
#include "nn/module.hpp"

namespace tg::nn {

// Statistics of the activated gate scores act(s) of one layer (nn/MODEL.md "Diagnostics").
// std is the population standard deviation (divides by count).
struct GateStats {
  std::size_t count = 0;
  double mean = 0, std = 0, min = 0, max = 0;
  double frac_below_1e2 = 0, frac_below_1e3 = 0;  // fraction of scores < 1e-2, < 1e-3
};
template <class T>
GateStats gate_stats(const xt::xarray<T>& scores);

// What one attention call reports when diagnostics are on (nn/diagnostics.hpp computes
// the sink metrics from it).
struct AttentionRecord {
  // Asked by the caller: also keep the full probabilities and gate scores (heat maps,
  // histograms); off by default (they are (B,H,T,T)).
  bool keep_tensors = false;
  // Attention probability on key 0, averaged over batch, heads and the queries at
  // absolute positions >= 1 (NaN when there is none).
  double first_token_attention = std::numeric_limits<double>::quiet_NaN();
  // The same per head (H), and the attention on key 1 (the first text token after a BOS)
  // averaged over heads and the queries at positions >= 1 (NaN when key 1 is not seen).
  std::vector<double> head_first_token_attention;
  double second_token_attention = std::numeric_limits<double>::quiet_NaN();
  bool has_gate_scores = false;  // false for no gate and for the probes
  GateStats gate;
  // The gate scores of the token at absolute position 0 and of the others (the
  // input-independent gate is the same everywhere: both equal `gate`).
  GateStats gate_first, gate_rest;
  // With keep_tensors: probs (B,H,Tq,Tk) and the activated gate scores as the gate applies
  // them ((B,T,n,Dg), (B,T,C) for G5, (H,D) input-independent).
  xt::xarray<double> probs, gate_scores;
};

// One layer's cache: keys after k_norm and RoPE (and a G3 gate), values (after a G2
// gate), both stored (B,capacity,K,D) with the first length() positions filled. New
// tokens are written in place and the capacity doubles when full, so decoding a token
// does not copy the whole cache (as appending by concat would, at every token). Held
// without a graph (the cache is for inference).
template <class T>
struct KVEntry {
  xt::xarray<T> k, v;  // (B,capacity,K,D)
  std::size_t len = 0;
  std::size_t length() const { return len; }
  std::size_t batch() const { return k.dimension() == 4 ? k.shape()[0] : 0; }
  // Appends kn, vn (B,T,K,D) at positions length() .. length()+T-1.
  void append(const xt::xarray<T>& kn, const xt::xarray<T>& vn);
  // The filled positions as (B,length(),K,D) tensors (copies).
  Tensor<T> keys() const;
  Tensor<T> values() const;
};

template <class T>
class Attention : public Module<T> {
 public:
  Attention(const ModelConfig& config, Generator& gen);

  // x (B,T,C) is the attention input (after input_layernorm) -> (B,T,C). The tokens sit
  // at positions offset .. offset+T-1 where offset = cache->length() (0 without a cache);
  // with a cache, the new keys and values are appended to it. `rope` must cover them.
  Tensor<T> forward(const Tensor<T>& x, const RopeTable<T>& rope, KVEntry<T>* cache = nullptr,
                    AttentionRecord* record = nullptr) const;

 private:
  // Y' = Y * act(s) or Y + act(s), s averaged over heads first when head-shared.
  // offset: the absolute position of the first token (for the record's position-0 split).
  Tensor<T> apply_gate(const Tensor<T>& y, Tensor<T> s, AttentionRecord* record, std::size_t offset) const;
  Tensor<T> activate(const Tensor<T>& s) const;

  GateConfig gate_;
  std::size_t C_, H_, K_, D_;
  Linear<T>* q_proj_ = nullptr;
  Linear<T>* k_proj_ = nullptr;
  Linear<T>* v_proj_ = nullptr;
  Linear<T>* o_proj_ = nullptr;
  RMSNorm<T>* q_norm_ = nullptr;  // null without use_qk_norm
  RMSNorm<T>* k_norm_ = nullptr;
  Linear<T>* gate_proj_ = nullptr;   // G2..G5 input-dependent
  RMSNorm<T>* sdpa_norm_ = nullptr;  // G1 RMSNorm probe
  bool has_theta_ = false;
  std::size_t theta_ = 0;            // slot of gate_theta (H,D)
};

extern template struct KVEntry<float>;
extern template struct KVEntry<double>;
extern template class Attention<float>;
extern template class Attention<double>;

}  // namespace tg::nn
