// nn/layers.cpp — see layers.hpp.
#include "nn/layers.hpp"

#include <stdexcept>
#include <string>

#include <xtensor/xadapt.hpp>
#include <xtensor/xmath.hpp>

namespace tg::nn {

template <class T>
Tensor<T> normal_init(const Shape& shape, Generator& gen, double std) {
  xt::xarray<T> v = xt::xarray<T>::from_shape(shape);
  for (auto& x : v) x = static_cast<T>(gen.normal(0.0, std));
  return Tensor<T>(std::move(v));
}

// ---- Linear ----

template <class T>
Linear<T>::Linear(std::size_t in, std::size_t out, bool bias, Generator& gen, double init_std)
    : in_(in), out_(out), has_bias_(bias) {
  weight_ = this->register_parameter("weight", normal_init<T>({out, in}, gen, init_std));
  if (bias) bias_ = this->register_parameter("bias", Tensor<T>::zeros({out}));
}

template <class T>
Tensor<T> Linear<T>::forward(const Tensor<T>& x) const {
  Tensor<T> y = linear(x, weight(), bias());  // x (...,in) -> (...,out)
  if (this->has_forward_hooks()) this->emit("output", y);
  return y;
}

// ---- Embedding ----

template <class T>
Embedding<T>::Embedding(std::size_t V, std::size_t C, Generator& gen, double init_std) {
  weight_ = this->register_parameter("weight", normal_init<T>({V, C}, gen, init_std));
}

template <class T>
Tensor<T> Embedding<T>::forward(const Index& ids) const {
  Tensor<T> y = embedding(ids, weight());  // ids (...) -> (...,C)
  if (this->has_forward_hooks()) this->emit("output", y);
  return y;
}

// ---- RMSNorm, LayerNorm ----

template <class T>
RMSNorm<T>::RMSNorm(std::size_t dim, double eps) : eps_(eps) {
  weight_ = this->register_parameter("weight", Tensor<T>::ones({dim}));
}

template <class T>
Tensor<T> RMSNorm<T>::forward(const Tensor<T>& x) const {
  Tensor<T> y = rmsnorm(x, weight(), static_cast<T>(eps_));
  if (this->has_forward_hooks()) this->emit("output", y);
  return y;
}

template <class T>
LayerNorm<T>::LayerNorm(std::size_t dim, double eps, bool bias) : eps_(eps), has_bias_(bias) {
  weight_ = this->register_parameter("weight", Tensor<T>::ones({dim}));
  if (bias) bias_ = this->register_parameter("bias", Tensor<T>::zeros({dim}));
}

template <class T>
Tensor<T> LayerNorm<T>::forward(const Tensor<T>& x) const {
  Tensor<T> y = layernorm(x, this->param(weight_), has_bias_ ? this->param(bias_) : Tensor<T>(), static_cast<T>(eps_));
  if (this->has_forward_hooks()) this->emit("output", y);
  return y;
}

// ---- SwiGLU MLP ----

template <class T>
MLP<T>::MLP(std::size_t C, std::size_t F, Generator& gen, double init_std) {
  gate_proj_ = &this->register_module("gate_proj", std::make_unique<Linear<T>>(C, F, false, gen, init_std));
  up_proj_ = &this->register_module("up_proj", std::make_unique<Linear<T>>(C, F, false, gen, init_std));
  down_proj_ = &this->register_module("down_proj", std::make_unique<Linear<T>>(F, C, false, gen, init_std));
}

template <class T>
Tensor<T> MLP<T>::forward(const Tensor<T>& x) const {
  // x (...,C) -> g, u (...,F) -> silu(g) * u -> (...,C)
  Tensor<T> y = down_proj_->forward(swiglu(gate_proj_->forward(x), up_proj_->forward(x)));
  if (this->has_forward_hooks()) this->emit("output", y);
  return y;
}

// ---- MoE ----

template <class T>
MoE<T>::MoE(std::size_t C, std::size_t Fm, std::size_t E, std::size_t k, bool norm_topk_prob, Generator& gen,
            double init_std)
    : top_k_(k), norm_topk_prob_(norm_topk_prob) {
  if (E == 0 || k == 0 || k > E)
    throw std::invalid_argument("MoE: top_k " + std::to_string(k) + " must be in [1, num_experts = " +
                                std::to_string(E) + "]");
  router_ = &this->register_module("gate", std::make_unique<Linear<T>>(C, E, false, gen, init_std));
  for (std::size_t e = 0; e < E; ++e)
    experts_.push_back(&this->register_module("experts." + std::to_string(e),
                                              std::make_unique<MLP<T>>(C, Fm, gen, init_std)));
}

template <class T>
MoEOutput<T> MoE<T>::forward(const Tensor<T>& x) const {
  const Shape sx = x.shape();
  const std::size_t C = sx.back(), N = x.numel() / C, E = experts_.size(), k = top_k_;
  Tensor<T> xf = reshape(x, {-1, static_cast<std::int64_t>(C)});  // (N,C)
  Tensor<T> logits = router_->forward(xf);                         // (N,E)
  Tensor<T> p = softmax(logits, -1);                                // (N,E)
  if (this->has_forward_hooks()) this->emit("router_probs", p);
  Index idx;
  Tensor<T> w = topk(p, k, &idx);                                   // (N,k), idx (N,k)
  if (norm_topk_prob_) w = w / sum(w, {-1}, true);

  MoEOutput<T> out;
  // Load balancing: aux = E * sum_e (c_e / N) * P_e, P_e = mean over tokens of p_e.
  out.tokens_per_expert.assign(E, 0);
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t j = 0; j < k; ++j) ++out.tokens_per_expert[static_cast<std::size_t>(idx(n, j))];
  xt::xarray<T> frac = xt::xarray<T>::from_shape({E});
  for (std::size_t e = 0; e < E; ++e) frac(e) = static_cast<T>(double(out.tokens_per_expert[e]) / double(N));
  out.aux = sum(mean(p, {0}) * Tensor<T>(std::move(frac))) * static_cast<T>(E);
  out.prob_sum = sum(p, {0});  // (E), for the pooled variant
  out.tokens = N;
  // Router z-loss: mean over tokens of lse^2, lse = m + log(sum(exp(logits - m))), m the
  // row maximum held constant (its gradient cancels exactly).
  Tensor<T> m(xt::xarray<T>(xt::amax(logits.value(), {1}, xt::keep_dims)));  // (N,1)
  Tensor<T> lse = log(sum(exp(logits - m), {-1})) + reshape(m, {-1});      // (N)
  out.z = mean(lse * lse);

  // Dispatch: each expert runs on the tokens routed to it; contributions w * expert(x)
  // are scattered back into (N,C) with one index_add (fixed order: experts, then tokens).
  Tensor<T> wflat = reshape(w, {-1});  // (N*k), slot n*k + j
  std::vector<Tensor<T>> parts;
  std::vector<std::int64_t> all_rows;
  for (std::size_t e = 0; e < E; ++e) {
    std::vector<std::int64_t> rows, slots;
    for (std::size_t n = 0; n < N; ++n)
      for (std::size_t j = 0; j < k; ++j)
        if (static_cast<std::size_t>(idx(n, j)) == e) {
          rows.push_back(static_cast<std::int64_t>(n));
          slots.push_back(static_cast<std::int64_t>(n * k + j));
        }
    if (rows.empty()) continue;
    const auto ne = static_cast<std::int64_t>(rows.size());
    Index r = xt::adapt(rows, {rows.size()}), s = xt::adapt(slots, {slots.size()});
    Tensor<T> ye = experts_[e]->forward(index_select(xf, r));    // (n_e,C)
    Tensor<T> we = reshape(index_select(wflat, s), {ne, 1});      // (n_e,1)
    parts.push_back(ye * we);
    all_rows.insert(all_rows.end(), rows.begin(), rows.end());
  }
  Index rows_all = xt::adapt(all_rows, {all_rows.size()});
  Tensor<T> yf = index_add(N, rows_all, parts.size() == 1 ? parts[0] : concat(parts, 0));  // (N,C)
  std::vector<std::int64_t> shape(sx.begin(), sx.end());
  out.y = reshape(yf, shape);
  if (this->has_forward_hooks()) this->emit("output", out.y);
  return out;
}

template Tensor<float> normal_init<float>(const Shape&, Generator&, double);
template Tensor<double> normal_init<double>(const Shape&, Generator&, double);
template class Linear<float>;
template class Linear<double>;
template class Embedding<float>;
template class Embedding<double>;
template class RMSNorm<float>;
template class RMSNorm<double>;
template class LayerNorm<float>;
template class LayerNorm<double>;
template class MLP<float>;
template class MLP<double>;
template class MoE<float>;
template class MoE<double>;

}  // namespace tg::nn
