// nn/model.hpp — the Qwen3-style causal language model of nn/MODEL.md.
//
// What it is for: DecoderLayer (pre-norm attention and SwiGLU-or-MoE blocks, optional
// sandwich norms), CausalLM (embed_tokens -> layers -> norm -> lm_head, tied or untied)
// with a full forward, the training loss of MODEL.md "Loss", an incremental forward over
// a KVCache for sampling, float <-> double conversion, and the per-layer diagnostics of
// MODEL.md "Diagnostics" (first-token attention, max |h| of the sublayer outputs and
// residual streams, gate-score statistics), recorded without changing the result.
//
// What it is not: checkpoint I/O (nn/safetensors.hpp; CausalLM::load_from() takes a
// loaded file), an optimizer (optim/), or a sampler (the programs in examples/).
//
// Parameter names follow Hugging Face: model.embed_tokens.weight,
// model.layers.{i}.{input_layernorm, self_attn.*, post_attention_layernorm, mlp.*}.weight,
// model.layers.{i}.post_attn_sandwich_norm.weight / post_mlp_sandwich_norm.weight
// (sandwich_norm), model.norm.weight, lm_head.weight (untied only).
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "autograd/ops.hpp"
#include "nn/attention.hpp"
#include "nn/config.hpp"
#include "nn/layers.hpp"
#include "nn/module.hpp"

namespace tg::nn {

// ---- diagnostics (nn/MODEL.md "Diagnostics") ----
struct LayerDiagnostics {
  double first_token_attention = std::numeric_limits<double>::quiet_NaN();  // F-Attn
  double max_attn_output = 0;    // max |self_attn(x)| (before a sandwich norm)
  double max_attn_residual = 0;  // max |h + a|
  double max_ffn_output = 0;     // max |mlp(y)| (before a sandwich norm)
  double max_ffn_residual = 0;   // max |h + f|: the layer output (M-Act)
  bool has_gate_scores = false;
  GateStats gate;                // activated gate scores, when the layer has a gate
  // For the sink metrics (nn/diagnostics.hpp): first-token attention per head, attention
  // on key 1, max |layer output| at position 0 and elsewhere (NaN / 0 when not in this
  // call), gate scores at position 0 and elsewhere.
  std::vector<double> head_first_token_attention;
  double second_token_attention = std::numeric_limits<double>::quiet_NaN();
  double max_h_first = std::numeric_limits<double>::quiet_NaN(), max_h_rest = 0;
  GateStats gate_first, gate_rest;
  // With Diagnostics::keep_tensors: probs (B,H,Tq,Tk) and the activated gate scores.
  xt::xarray<double> probs, gate_scores;
  bool keep_tensors = false;  // set by forward_full from Diagnostics::keep_tensors
};

struct Diagnostics {
  bool keep_tensors = false;  // ask for the full probabilities and gate scores per layer
  std::vector<LayerDiagnostics> layers;
  double mean_first_token_attention() const;  // F-Attn averaged over layers
  double mean_max_activation() const;         // M-Act: max_ffn_residual averaged over layers
  double max_activation() const;              // the largest max_ffn_residual of any layer
  double mean_gate_score() const;             // gate mean averaged over layers (NaN: no gate)
  // A readable table, one row per layer.
  std::string table() const;
};

// Keys and values of every layer for incremental decoding.
template <class T>
struct KVCache {
  std::vector<KVEntry<T>> layers;
  std::size_t length() const { return layers.empty() ? 0 : layers[0].length(); }
  void clear() {
    for (auto& l : layers) l = KVEntry<T>{};
  }
};

// What a decoder layer returns: the new hidden state and, for MoE, its auxiliary losses.
template <class T>
struct LayerOutput {
  Tensor<T> h;       // (B,T,C)
  Tensor<T> aux, z;  // [] each; undefined without MoE
  // MoE: the router statistics the pooled aux loss needs (MoEOutput).
  Tensor<T> prob_sum;                          // (E)
  std::vector<std::size_t> tokens_per_expert;  // (E)
  std::size_t tokens = 0;
};

template <class T>
class DecoderLayer : public Module<T> {
 public:
  DecoderLayer(const ModelConfig& config, Generator& gen);
  // h (B,T,C) -> (B,T,C). See nn/MODEL.md "Forward".
  LayerOutput<T> forward(const Tensor<T>& h, const RopeTable<T>& rope, KVEntry<T>* cache = nullptr,
                         LayerDiagnostics* diag = nullptr) const;

  // The sublayers, for tests and teaching (step through a layer by hand).
  const RMSNorm<T>& input_layernorm() const { return *input_layernorm_; }
  const Attention<T>& self_attn() const { return *self_attn_; }
  const RMSNorm<T>* post_attn_sandwich_norm() const { return post_attn_sandwich_norm_; }
  const RMSNorm<T>& post_attention_layernorm() const { return *post_attention_layernorm_; }
  const MLP<T>* mlp() const { return mlp_; }
  const MoE<T>* moe() const { return moe_; }
  const RMSNorm<T>* post_mlp_sandwich_norm() const { return post_mlp_sandwich_norm_; }

 private:
  RMSNorm<T>* input_layernorm_;
  Attention<T>* self_attn_;
  RMSNorm<T>* post_attn_sandwich_norm_ = nullptr;
  RMSNorm<T>* post_attention_layernorm_;
  MLP<T>* mlp_ = nullptr;  // dense feed-forward
  MoE<T>* moe_ = nullptr;  // or MoE (also named "mlp")
  RMSNorm<T>* post_mlp_sandwich_norm_ = nullptr;
};

// The decoder stack without the head: Hugging Face's Qwen3Model, named "model".
template <class T>
class DecoderModel : public Module<T> {
 public:
  DecoderModel(const ModelConfig& config, Generator& gen);
  const Embedding<T>& embed_tokens() const { return *embed_tokens_; }
  const std::vector<DecoderLayer<T>*>& layers() const { return layers_; }
  const RMSNorm<T>& norm() const { return *norm_; }

 private:
  Embedding<T>* embed_tokens_;
  std::vector<DecoderLayer<T>*> layers_;
  RMSNorm<T>* norm_;
};

template <class T>
struct ForwardOutput {
  Tensor<T> logits;  // (B,T,V)
  // [] undefined without MoE. aux: per_layer, the mean over layers of each layer's
  // load-balancing loss; pooled, Hugging Face's loss of all layers' routers pooled
  // (MODEL.md "MoE losses"). z: the mean over layers.
  Tensor<T> aux, z;
};

template <class T>
struct LossOutput {
  Tensor<T> loss;    // [] ce + aux_loss_weight() * aux + z_loss_weight() * z (ModelConfig)
  Tensor<T> ce;      // [] mean cross-entropy of logits[:, :-1] against tokens[:, 1:]
  Tensor<T> aux, z;  // [] undefined without MoE
  Tensor<T> logits;  // (B,T,V)
};

template <class T>
class CausalLM : public Module<T> {
 public:
  // Builds the model and initialises it from a Generator seeded with `seed`
  // (nn/MODEL.md "Initialisation"; parameters drawn in registration order).
  explicit CausalLM(const ModelConfig& config, std::uint64_t seed = 0);

  const ModelConfig& config() const { return config_; }
  const DecoderModel<T>& model() const { return *model_; }
  // lm_head.weight, or model.embed_tokens.weight when tied: (V,C).
  const Tensor<T>& lm_head_weight() const;

  // tokens (B,T) of ids in [0,V) -> logits (B,T,V), and the MoE terms. With a cache the
  // tokens continue the cached sequence (positions cache.length() ...) and are appended
  // to it. With diag, per-layer diagnostics are recorded (the result is unchanged).
  ForwardOutput<T> forward_full(const Index& tokens, KVCache<T>* cache = nullptr,
                                Diagnostics* diag = nullptr) const;
  Tensor<T> forward(const Index& tokens, KVCache<T>* cache = nullptr, Diagnostics* diag = nullptr) const {
    return forward_full(tokens, cache, diag).logits;
  }
  // Activation checkpointing (Note [Activation checkpointing] in autograd/activation_checkpoint.hpp):
  // when on, each decoder layer is one checkpointed segment in a forward that records
  // (grad mode on, no cache, no diagnostics): its activations are recomputed in backward
  // instead of kept. Same values and gradients; less memory, one more layer forward each.
  void set_checkpoint_layers(bool on) { checkpoint_layers_ = on; }
  bool checkpoint_layers() const { return checkpoint_layers_; }
  // The training loss of nn/MODEL.md "Loss" (needs T >= 2).
  LossOutput<T> loss(const Index& tokens, Diagnostics* diag = nullptr) const;
  // An empty cache with one entry per layer.
  KVCache<T> make_cache() const { return KVCache<T>{std::vector<KVEntry<T>>(config_.num_hidden_layers)}; }

  // A model of the same config in the other scalar type, holding this model's state.
  template <class U>
  CausalLM<U> converted() const {
    CausalLM<U> m(config_);
    m.copy_state_from(*this);
    return m;
  }

  // The RoPE table covering positions [0, n): built for min(max_position_embeddings,
  // 8192) positions at construction and grown when a longer sequence arrives (as in
  // Hugging Face, positions past max_position_embeddings are computed, not refused).
  // Not thread-safe: one forward at a time per model.
  const RopeTable<T>& rope_table_for(std::size_t n) const;

 private:
  ModelConfig config_;
  DecoderModel<T>* model_;
  Linear<T>* lm_head_ = nullptr;  // null when tied
  mutable std::shared_ptr<RopeTable<T>> rope_;
  bool checkpoint_layers_ = false;
};

// Shifted next-token targets: targets(b,t) = tokens(b,t+1), the last column ignore_index.
Index next_token_targets(const Index& tokens, std::int64_t ignore_index = -100);

extern template class DecoderLayer<float>;
extern template class DecoderLayer<double>;
extern template class DecoderModel<float>;
extern template class DecoderModel<double>;
extern template class CausalLM<float>;
extern template class CausalLM<double>;

}  // namespace tg::nn
