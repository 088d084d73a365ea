// nn/layers.hpp — the building blocks: Linear, Embedding, RMSNorm, LayerNorm, the SwiGLU
// MLP and the mixture-of-experts feed-forward.
//
// What it is for: thin modules over the fused ops of autograd/ops.hpp, owning their
// parameters under the Hugging Face names (weight, bias, gate_proj, experts.{e}, ...), with
// the initialisation of nn/MODEL.md: Linear and Embedding weights ~ Normal(0, std) drawn
// from an explicit Generator in registration order, norm weights ones, biases zeros.
//
// What it is not: attention (nn/attention.hpp) or the decoder (nn/model.hpp). No layer
// holds activations between calls; every forward is a pure function of its inputs and the
// parameters, recorded on the tape when gradients are on.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "autograd/ops.hpp"
#include "nn/module.hpp"

namespace tg::nn {

// Normal(0, std) values of a shape drawn from gen (in double, then cast), in row-major order.
template <class T>
Tensor<T> normal_init(const Shape& shape, Generator& gen, double std);

// y = x W^T + b: x (...,in) -> (...,out); weight (out,in), bias (out) optional.
template <class T>
class Linear : public Module<T> {
 public:
  Linear(std::size_t in_features, std::size_t out_features, bool bias, Generator& gen, double init_std);
  Tensor<T> forward(const Tensor<T>& x) const;
  const Tensor<T>& weight() const { return this->param(weight_); }
  Tensor<T> bias() const { return has_bias_ ? this->param(bias_) : Tensor<T>(); }
  std::size_t in_features() const { return in_; }
  std::size_t out_features() const { return out_; }

 private:
  std::size_t in_, out_;
  bool has_bias_;
  std::size_t weight_ = 0, bias_ = 0;
};

// ids (...) in [0,V) -> rows of weight (V,C): (...,C).
template <class T>
class Embedding : public Module<T> {
 public:
  Embedding(std::size_t num_embeddings, std::size_t dim, Generator& gen, double init_std);
  Tensor<T> forward(const Index& ids) const;
  const Tensor<T>& weight() const { return this->param(weight_); }

 private:
  std::size_t weight_ = 0;
};

// y = x / sqrt(mean(x^2, last axis) + eps) * weight; weight (C) initialised to ones.
template <class T>
class RMSNorm : public Module<T> {
 public:
  RMSNorm(std::size_t dim, double eps);
  Tensor<T> forward(const Tensor<T>& x) const;
  const Tensor<T>& weight() const { return this->param(weight_); }
  double eps() const { return eps_; }

 private:
  double eps_;
  std::size_t weight_ = 0;
};

// y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis (bias optional).
template <class T>
class LayerNorm : public Module<T> {
 public:
  LayerNorm(std::size_t dim, double eps, bool bias = true);
  Tensor<T> forward(const Tensor<T>& x) const;

 private:
  double eps_;
  bool has_bias_;
  std::size_t weight_ = 0, bias_ = 0;
};

// SwiGLU feed-forward: down_proj(silu(gate_proj(x)) * up_proj(x)), no biases.
// x (...,C) -> (...,C) through an inner width F.
template <class T>
class MLP : public Module<T> {
 public:
  MLP(std::size_t hidden, std::size_t intermediate, Generator& gen, double init_std);
  Tensor<T> forward(const Tensor<T>& x) const;

 private:
  Linear<T>* gate_proj_;
  Linear<T>* up_proj_;
  Linear<T>* down_proj_;
};

// What a mixture-of-experts layer hands back: its output and its two auxiliary losses.
template <class T>
struct MoEOutput {
  Tensor<T> y;    // (B,T,C)
  Tensor<T> aux;  // [] load balancing: E * sum_e (c_e / N) * P_e
  Tensor<T> z;    // [] router z-loss: mean over tokens of logsumexp(router logits)^2
  std::vector<std::size_t> tokens_per_expert;  // c_e: tokens whose top-k contains e
  // For Hugging Face's pooled aux loss (MODEL.md "MoE losses"): sum over the N tokens of
  // the routing probabilities p, (E), with gradient; and N.
  Tensor<T> prob_sum;
  std::size_t tokens = 0;
};

// Mixture of experts (Qwen3-MoE): router `gate` (E,C) without bias; per token
// p = softmax(x W_r^T), the top-k experts (ties: lower index first) weighted by their
// probabilities (renormalised to sum 1 when norm_topk_prob), each expert a SwiGLU MLP
// `experts.{e}` of width moe_intermediate_size. See nn/MODEL.md "MoE feed-forward".
template <class T>
class MoE : public Module<T> {
 public:
  MoE(std::size_t hidden, std::size_t expert_intermediate, std::size_t num_experts, std::size_t top_k,
      bool norm_topk_prob, Generator& gen, double init_std);
  MoEOutput<T> forward(const Tensor<T>& x) const;  // x (B,T,C) (any leading shape)
  std::size_t num_experts() const { return experts_.size(); }

 private:
  std::size_t top_k_;
  bool norm_topk_prob_;
  Linear<T>* router_;
  std::vector<MLP<T>*> experts_;
};

extern template class Linear<float>;
extern template class Linear<double>;
extern template class Embedding<float>;
extern template class Embedding<double>;
extern template class RMSNorm<float>;
extern template class RMSNorm<double>;
extern template class LayerNorm<float>;
extern template class LayerNorm<double>;
extern template class MLP<float>;
extern template class MLP<double>;
extern template class MoE<float>;
extern template class MoE<double>;

}  // namespace tg::nn
