// nn/model.cpp — see model.hpp.
#include "nn/model.hpp"

#include "autograd/activation_checkpoint.hpp"

#include <cmath>
#include <iomanip>
#include <sstream>

#include <xtensor/xmath.hpp>

namespace tg::nn {

namespace {

template <class T>
double max_abs(const Tensor<T>& t) {
  double m = 0;
  for (T v : t.value()) m = std::max(m, double(std::abs(v)));
  return m;
}

double mean_of(const std::vector<LayerDiagnostics>& ls, double LayerDiagnostics::*field) {
  if (ls.empty()) return std::numeric_limits<double>::quiet_NaN();
  double s = 0;
  for (auto& l : ls) s += l.*field;
  return s / double(ls.size());
}

}  // namespace

// ---- Diagnostics ----

double Diagnostics::mean_first_token_attention() const {
  return mean_of(layers, &LayerDiagnostics::first_token_attention);
}

double Diagnostics::mean_max_activation() const { return mean_of(layers, &LayerDiagnostics::max_ffn_residual); }

double Diagnostics::max_activation() const {
  double m = 0;
  for (auto& l : layers) m = std::max(m, l.max_ffn_residual);
  return m;
}

double Diagnostics::mean_gate_score() const {
  double s = 0;
  std::size_t n = 0;
  for (auto& l : layers)
    if (l.has_gate_scores) s += l.gate.mean, ++n;
  return n ? s / double(n) : std::numeric_limits<double>::quiet_NaN();
}

std::string Diagnostics::table() const {
  std::ostringstream o;
  o << "layer   F-Attn  max|attn_out|  max|attn_res|  max|ffn_out|  max|ffn_res|   gate mean    std      min      max  <1e-2  <1e-3\n";
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    o << std::setw(5) << i << std::fixed << std::setprecision(4) << std::setw(9) << l.first_token_attention
      << std::setprecision(3) << std::setw(15) << l.max_attn_output << std::setw(15) << l.max_attn_residual
      << std::setw(14) << l.max_ffn_output << std::setw(14) << l.max_ffn_residual;
    if (l.has_gate_scores)
      o << std::setprecision(4) << std::setw(12) << l.gate.mean << std::setw(9) << l.gate.std << std::setw(9)
        << l.gate.min << std::setw(9) << l.gate.max << std::setw(7) << l.gate.frac_below_1e2 << std::setw(7)
        << l.gate.frac_below_1e3;
    o << "\n";
  }
  o << "mean  " << std::setprecision(4) << std::setw(8) << mean_first_token_attention() << "   M-Act mean "
    << std::setprecision(3) << mean_max_activation() << ", max " << max_activation();
  if (!std::isnan(mean_gate_score())) o << ", gate mean " << std::setprecision(4) << mean_gate_score();
  o << "\n";
  return o.str();
}

// ---- DecoderLayer ----

template <class T>
DecoderLayer<T>::DecoderLayer(const ModelConfig& c, Generator& gen) {
  const double eps = c.rms_norm_eps, std = c.initializer_range;
  input_layernorm_ = &this->register_module("input_layernorm", std::make_unique<RMSNorm<T>>(c.hidden_size, eps));
  self_attn_ = &this->register_module("self_attn", std::make_unique<Attention<T>>(c, gen));
  if (c.sandwich_norm)
    post_attn_sandwich_norm_ =
        &this->register_module("post_attn_sandwich_norm", std::make_unique<RMSNorm<T>>(c.hidden_size, eps));
  post_attention_layernorm_ =
      &this->register_module("post_attention_layernorm", std::make_unique<RMSNorm<T>>(c.hidden_size, eps));
  if (c.is_moe())
    moe_ = &this->register_module("mlp", std::make_unique<MoE<T>>(c.hidden_size, c.moe_intermediate_size,
                                                                  c.num_experts, c.num_experts_per_tok,
                                                                  c.norm_topk_prob, gen, std));
  else
    mlp_ = &this->register_module("mlp", std::make_unique<MLP<T>>(c.hidden_size, c.intermediate_size, gen, std));
  if (c.sandwich_norm)
    post_mlp_sandwich_norm_ =
        &this->register_module("post_mlp_sandwich_norm", std::make_unique<RMSNorm<T>>(c.hidden_size, eps));
}

template <class T>
LayerOutput<T> DecoderLayer<T>::forward(const Tensor<T>& h_in, const RopeTable<T>& rope, KVEntry<T>* cache,
                                        LayerDiagnostics* diag) const {
  LayerOutput<T> out;
  AttentionRecord rec;
  rec.keep_tensors = diag && diag->keep_tensors;
  const std::size_t offset = cache ? cache->length() : 0;  // absolute position of row 0
  // Each block runs in a Scope named like its parameters (Note [Anomaly mode]).
  // attention block: h = h + [sandwich](self_attn(input_layernorm(h)))
  Tensor<T> a;
  {
    Tensor<T> x;
    {
      Scope s("input_layernorm");
      x = input_layernorm_->forward(h_in);
    }
    Scope s("self_attn");
    a = self_attn_->forward(x, rope, cache, diag ? &rec : nullptr);
  }
  if (diag) diag->max_attn_output = max_abs(a);
  if (post_attn_sandwich_norm_) {
    Scope s("post_attn_sandwich_norm");
    a = post_attn_sandwich_norm_->forward(a);
  }
  Tensor<T> h = h_in + a;  // attn_residual
  if (diag) diag->max_attn_residual = max_abs(h);
  // feed-forward block: h = h + [sandwich](mlp(post_attention_layernorm(h)))
  Tensor<T> y;
  {
    Scope s("post_attention_layernorm");
    y = post_attention_layernorm_->forward(h);
  }
  Tensor<T> f;
  if (moe_) {
    Scope s("mlp");
    MoEOutput<T> m = moe_->forward(y);
    f = m.y, out.aux = m.aux, out.z = m.z;
    out.prob_sum = m.prob_sum, out.tokens_per_expert = std::move(m.tokens_per_expert), out.tokens = m.tokens;
  } else {
    Scope s("mlp");
    f = mlp_->forward(y);
  }
  if (diag) diag->max_ffn_output = max_abs(f);
  if (post_mlp_sandwich_norm_) {
    Scope s("post_mlp_sandwich_norm");
    f = post_mlp_sandwich_norm_->forward(f);
  }
  out.h = h + f;  // ffn_residual = layer output
  if (this->has_forward_hooks()) this->emit("output", out.h);
  if (diag) {
    diag->max_ffn_residual = max_abs(out.h);
    diag->first_token_attention = rec.first_token_attention;
    diag->has_gate_scores = rec.has_gate_scores;
    diag->gate = rec.gate;
    diag->head_first_token_attention = std::move(rec.head_first_token_attention);
    diag->second_token_attention = rec.second_token_attention;
    diag->gate_first = rec.gate_first, diag->gate_rest = rec.gate_rest;
    diag->probs = std::move(rec.probs), diag->gate_scores = std::move(rec.gate_scores);
    // max |h| of the layer output at position 0 and at the others: h (B,T,C).
    const auto& hv = out.h.value();
    const std::size_t Bn = hv.shape()[0], Tn = hv.shape()[1], Cn = hv.shape()[2];
    double first = 0, rest = 0;
    for (std::size_t b = 0; b < Bn; ++b)
      for (std::size_t t = 0; t < Tn; ++t) {
        const T* row = hv.data() + (b * Tn + t) * Cn;
        double m = 0;
        for (std::size_t c = 0; c < Cn; ++c) m = std::max(m, std::abs(double(row[c])));
        (offset + t == 0 ? first : rest) = std::max(offset + t == 0 ? first : rest, m);
      }
    diag->max_h_first = offset == 0 && Tn > 0 ? first : std::numeric_limits<double>::quiet_NaN();
    diag->max_h_rest = rest;
  }
  return out;
}

// ---- DecoderModel ----

template <class T>
DecoderModel<T>::DecoderModel(const ModelConfig& c, Generator& gen) {
  embed_tokens_ = &this->register_module(
      "embed_tokens", std::make_unique<Embedding<T>>(c.vocab_size, c.hidden_size, gen, c.initializer_range));
  for (std::size_t i = 0; i < c.num_hidden_layers; ++i)
    layers_.push_back(
        &this->register_module("layers." + std::to_string(i), std::make_unique<DecoderLayer<T>>(c, gen)));
  norm_ = &this->register_module("norm", std::make_unique<RMSNorm<T>>(c.hidden_size, c.rms_norm_eps));
}

// ---- CausalLM ----

template <class T>
CausalLM<T>::CausalLM(const ModelConfig& c, std::uint64_t seed) : config_(c) {
  config_.validate();
  Generator gen(seed);
  model_ = &this->register_module("model", std::make_unique<DecoderModel<T>>(config_, gen));
  if (!config_.tie_word_embeddings)
    lm_head_ = &this->register_module("lm_head", std::make_unique<Linear<T>>(config_.hidden_size, config_.vocab_size,
                                                                             false, gen, config_.initializer_range));
  rope_table_for(std::min<std::size_t>(config_.max_position_embeddings, 8192));
}

template <class T>
const Tensor<T>& CausalLM<T>::lm_head_weight() const {
  return lm_head_ ? lm_head_->weight() : model_->embed_tokens().weight();
}

template <class T>
const RopeTable<T>& CausalLM<T>::rope_table_for(std::size_t n) const {
  if (!rope_ || rope_->max_positions() < n) {
    std::size_t P = rope_ ? rope_->max_positions() : 0;
    P = std::max({n, 2 * P, std::size_t(1)});
    // Grow geometrically; every row depends on its position only, so a longer table
    // extends the shorter one exactly.
    rope_ = std::make_shared<RopeTable<T>>(
        tg::rope_table<T>(P, config_.head_dim, config_.rope_theta, config_.rope_scaling));
  }
  return *rope_;
}

template <class T>
ForwardOutput<T> CausalLM<T>::forward_full(const Index& tokens, KVCache<T>* cache, Diagnostics* diag) const {
  if (tokens.dimension() != 2)
    throw std::invalid_argument("CausalLM::forward: tokens must be (B,T), got " + shape_to_string(tokens.shape()));
  const std::size_t L = config_.num_hidden_layers;
  if (cache && cache->layers.size() != L)
    throw std::invalid_argument("CausalLM::forward: the KV cache has " + std::to_string(cache->layers.size()) +
                                " layers, the model " + std::to_string(L) + " (use make_cache())");
  const std::size_t offset = cache ? cache->length() : 0;
  const RopeTable<T>& rope = rope_table_for(offset + tokens.shape()[1]);
  if (diag) {
    diag->layers.assign(L, LayerDiagnostics{});
    for (auto& l : diag->layers) l.keep_tensors = diag->keep_tensors;
  }

  Tensor<T> h;
  {
    Scope s("model.embed_tokens");
    h = model_->embed_tokens().forward(tokens);  // (B,T,C)
  }
  ForwardOutput<T> out;
  std::vector<Tensor<T>> auxes, zs, prob_sums;
  std::vector<std::size_t> counts;  // (E) summed over the MoE layers
  std::size_t pooled_tokens = 0;
  const bool segments = checkpoint_layers_ && !cache && !diag && grad_enabled();
  for (std::size_t i = 0; i < L; ++i) {
    const std::string path = "model.layers." + std::to_string(i);
    LayerOutput<T> lo;
    if (segments) {
      // One checkpointed segment per layer. The closure outlives this call (backward runs
      // it again), so it holds the RoPE table and the router counts by shared pointer.
      const DecoderLayer<T>* layer = model_->layers()[i];
      auto table = rope_;
      auto counts = std::make_shared<LayerOutput<T>>();
      auto outs = checkpoint<T>(
          [layer, table, counts, path](const std::vector<Tensor<T>>& in) {
            Scope s(path);
            LayerOutput<T> r = layer->forward(in[0], *table);
            counts->tokens_per_expert = r.tokens_per_expert, counts->tokens = r.tokens;
            if (r.aux.defined()) return std::vector<Tensor<T>>{r.h, r.aux, r.z, r.prob_sum};
            return std::vector<Tensor<T>>{r.h};
          },
          {h}, path);
      lo.h = outs[0];
      if (outs.size() == 4) lo.aux = outs[1], lo.z = outs[2], lo.prob_sum = outs[3];
      lo.tokens_per_expert = counts->tokens_per_expert, lo.tokens = counts->tokens;
    } else {
      Scope s(path);
      lo = model_->layers()[i]->forward(h, rope, cache ? &cache->layers[i] : nullptr, diag ? &diag->layers[i] : nullptr);
    }
    h = lo.h;
    if (lo.aux.defined()) {
      auxes.push_back(lo.aux), zs.push_back(lo.z), prob_sums.push_back(lo.prob_sum);
      counts.resize(lo.tokens_per_expert.size(), 0);
      for (std::size_t e = 0; e < counts.size(); ++e) counts[e] += lo.tokens_per_expert[e];
      pooled_tokens += lo.tokens;
    }
  }
  {
    Scope s("model.norm");
    h = model_->norm().forward(h);
  }
  {
    Scope s("lm_head");
    out.logits = linear(h, lm_head_weight());  // (B,T,V)
  }
  if (this->has_forward_hooks()) this->emit("logits", out.logits);
  if (!auxes.empty()) {
    // means over the MoE layers
    Tensor<T> a = auxes[0], z = zs[0];
    for (std::size_t i = 1; i < auxes.size(); ++i) a = a + auxes[i], z = z + zs[i];
    out.aux = a * (T(1) / T(auxes.size()));
    out.z = z * (T(1) / T(zs.size()));
    if (config_.moe_aux_loss == MoeAuxLoss::Pooled) {
      // Hugging Face: E * sum_e (c_e / N) * P_e over the tokens of all layers, N = L_moe * B*T.
      Tensor<T> ps = prob_sums[0];
      for (std::size_t i = 1; i < prob_sums.size(); ++i) ps = ps + prob_sums[i];
      const std::size_t E = counts.size();
      xt::xarray<T> frac = xt::xarray<T>::from_shape({E});
      for (std::size_t e = 0; e < E; ++e) frac(e) = static_cast<T>(double(counts[e]) / double(pooled_tokens));
      out.aux = sum(ps * Tensor<T>(std::move(frac))) * static_cast<T>(double(E) / double(pooled_tokens));
    }
  }
  return out;
}

Index next_token_targets(const Index& tokens, std::int64_t ignore_index) {
  if (tokens.dimension() != 2) throw std::invalid_argument("next_token_targets: tokens must be (B,T)");
  const std::size_t B = tokens.shape()[0], Tn = tokens.shape()[1];
  Index t = Index::from_shape({B, Tn});
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t i = 0; i < Tn; ++i) t(b, i) = i + 1 < Tn ? tokens(b, i + 1) : ignore_index;
  return t;
}

template <class T>
LossOutput<T> CausalLM<T>::loss(const Index& tokens, Diagnostics* diag) const {
  if (tokens.dimension() != 2 || tokens.shape()[1] < 2)
    throw std::invalid_argument("CausalLM::loss: tokens must be (B,T) with T >= 2, got " +
                                shape_to_string(tokens.shape()));
  ForwardOutput<T> f = forward_full(tokens, nullptr, diag);
  LossOutput<T> out;
  out.logits = f.logits;
  // The last position has no next token: its target is ignored (the mean is over B*(T-1)).
  out.ce = cross_entropy(f.logits, next_token_targets(tokens, -100), -100, Reduction::Mean);
  out.loss = out.ce;
  if (f.aux.defined()) {
    out.aux = f.aux, out.z = f.z;
    // Hugging Face adds the aux loss only with output_router_logits (aux_loss_weight() is 0
    // then); it has no z-loss (a file from it reads router_z_loss_coef 0).
    out.loss = out.ce + f.aux * static_cast<T>(config_.aux_loss_weight()) +
               f.z * static_cast<T>(config_.z_loss_weight());
  }
  return out;
}

template class DecoderLayer<float>;
template class DecoderLayer<double>;
template class DecoderModel<float>;
template class DecoderModel<double>;
template class CausalLM<float>;
template class CausalLM<double>;

}  // namespace tg::nn
