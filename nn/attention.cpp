// nn/attention.cpp — see attention.hpp.
//
// Note [G1 layout]
// The paper's released code widens q_proj instead of adding a gate projection. Its output
// (B,T,·) is viewed as (B,T,K,group), and each of the K groups holds first the (H/K)*D
// query columns of its H/K query heads, then their gate columns: (H/K)*D for
// elementwise, H/K for headwise. So the score of query head h = g*(H/K) + j comes from
// group g, slot j, and splitting the last axis of the (B,T,K,group) view into
// [(H/K)*D, (H/K)*Dg] and viewing the two parts as (B,T,H,D) and (B,T,H,Dg) gives the
// queries and the scores of every head in order (Dg = D or 1).
#include "nn/attention.hpp"
#include "nn/diagnostics.hpp"

#include <algorithm>
#include <cmath>

#include <xtensor/xmath.hpp>

namespace tg::nn {

template <class T>
GateStats gate_stats(const xt::xarray<T>& a) {
  GateStats s;
  s.count = a.size();
  if (s.count == 0) return s;
  double sum = 0, mn = std::numeric_limits<double>::infinity(), mx = -mn;
  std::size_t below2 = 0, below3 = 0;
  for (T v : a) {
    const double x = double(v);
    sum += x;
    mn = std::min(mn, x);
    mx = std::max(mx, x);
    below2 += x < 1e-2;
    below3 += x < 1e-3;
  }
  s.mean = sum / double(s.count);
  double ss = 0;
  for (T v : a) ss += (double(v) - s.mean) * (double(v) - s.mean);
  s.std = std::sqrt(ss / double(s.count));
  s.min = mn, s.max = mx;
  s.frac_below_1e2 = double(below2) / double(s.count);
  s.frac_below_1e3 = double(below3) / double(s.count);
  return s;
}

namespace {
// Fills the record's gate fields from the activated scores a: (B,T,...) split at token
// position 0 (absolute position `offset` of the first row), or (H,D) for a θ gate.
template <class T>
void record_gate(AttentionRecord* record, const xt::xarray<T>& a, bool per_token, std::size_t offset) {
  record->has_gate_scores = true;
  record->gate = gate_stats(a);
  if (per_token && a.dimension() >= 2 && a.shape()[1] > 0) {
    const std::size_t B = a.shape()[0], Tn = a.shape()[1], row = a.size() / (B * Tn);
    const std::size_t first_rows = offset == 0 ? 1 : 0;
    xt::xarray<T> f = xt::xarray<T>::from_shape({B * first_rows * row}), r = xt::xarray<T>::from_shape({B * (Tn - first_rows) * row});
    for (std::size_t b = 0; b < B; ++b) {
      const T* src = a.data() + b * Tn * row;
      std::copy_n(src, first_rows * row, f.data() + b * first_rows * row);
      std::copy_n(src + first_rows * row, (Tn - first_rows) * row, r.data() + b * (Tn - first_rows) * row);
    }
    record->gate_first = gate_stats(f);
    record->gate_rest = gate_stats(r);
  } else {
    record->gate_first = record->gate_rest = record->gate;
  }
  if (record->keep_tensors) record->gate_scores = xt::cast<double>(a);
}
}  // namespace

template <class T>
Attention<T>::Attention(const ModelConfig& c, Generator& gen)
    : gate_(c.gate), C_(c.hidden_size), H_(c.num_attention_heads), K_(c.num_key_value_heads), D_(c.head_dim) {
  c.validate();
  const double std = c.initializer_range;
  const bool bias = c.attention_bias;
  q_proj_ = &this->register_module("q_proj", std::make_unique<Linear<T>>(C_, c.q_proj_rows(), bias, gen, std));
  k_proj_ = &this->register_module("k_proj", std::make_unique<Linear<T>>(C_, K_ * D_, bias, gen, std));
  v_proj_ = &this->register_module("v_proj", std::make_unique<Linear<T>>(C_, K_ * D_, bias, gen, std));
  o_proj_ = &this->register_module("o_proj", std::make_unique<Linear<T>>(H_ * D_, C_, bias, gen, std));
  if (c.use_qk_norm) {
    q_norm_ = &this->register_module("q_norm", std::make_unique<RMSNorm<T>>(D_, c.rms_norm_eps));
    k_norm_ = &this->register_module("k_norm", std::make_unique<RMSNorm<T>>(D_, c.rms_norm_eps));
  }
  const bool ew = gate_.granularity == GateGranularity::Elementwise;
  if (gate_.has_score_weights() && !gate_.in_q_proj()) {
    // W_θ for value / key / query / dense: (n*D or n, C), or (C, C); never a bias.
    std::size_t rows = 0;
    switch (gate_.position) {
      case GatePosition::Value:
      case GatePosition::Key: rows = ew ? K_ * D_ : K_; break;
      case GatePosition::Query: rows = ew ? H_ * D_ : H_; break;
      case GatePosition::Dense: rows = C_; break;
      default: break;
    }
    gate_proj_ = &this->register_module("gate_proj", std::make_unique<Linear<T>>(C_, rows, false, gen, std));
  }
  if (gate_.position == GatePosition::Sdpa && !gate_.is_probe() && !gate_.input_dependent) {
    has_theta_ = true;
    theta_ = this->register_parameter("gate_theta", Tensor<T>::zeros({H_, D_}));
  }
  if (gate_.probe == GateProbe::RmsNorm)
    sdpa_norm_ = &this->register_module("sdpa_norm", std::make_unique<RMSNorm<T>>(D_, c.rms_norm_eps));
}

template <class T>
Tensor<T> Attention<T>::activate(const Tensor<T>& s) const {
  switch (gate_.activation) {
    case GateActivation::Sigmoid: return sigmoid(s);
    case GateActivation::Silu: return silu(s);
    case GateActivation::Identity: return s;
    case GateActivation::NsSigmoid: return sigmoid(s) * T(0.5) + T(0.5);  // 0.5 + 0.5 σ(s)
  }
  return s;
}

template <class T>
Tensor<T> Attention<T>::apply_gate(const Tensor<T>& y, Tensor<T> s, AttentionRecord* record,
                                   std::size_t offset) const {
  // y (B,T,n,D) and s (B,T,n,Dg), or y and s (B,T,C) for dense.
  if (gate_.head_shared) s = mean(s, {2}, true);  // (B,T,1,Dg): one gate for all heads
  if (gate_.activation == GateActivation::Sigmoid && gate_.combine == GateCombine::Multiplicative &&
      s.shape() == y.shape()) {
    // The paper's best gate (elementwise sigmoid): one fused op, σ(s) is never stored.
    if (record || this->has_forward_hooks()) {
      NoGrad no_grad;
      Tensor<T> a = sigmoid(s);
      if (record) record_gate(record, a.value(), true, offset);
      if (this->has_forward_hooks()) this->emit("gate", a);
    }
    return sigmoid_gate(y, s);
  }
  Tensor<T> a = activate(s);
  if (record) record_gate(record, a.value(), true, offset);
  if (this->has_forward_hooks()) this->emit("gate", a);
  return gate_.combine == GateCombine::Multiplicative ? y * a : y + a;
}

// ---- the KV cache ----------------------------------------------------------------------
namespace {
// (B,len,K,D) from the first len positions of a (B,capacity,K,D) buffer.
template <class T>
xt::xarray<T> prefix(const xt::xarray<T>& buf, std::size_t len) {
  const std::size_t B = buf.shape()[0], cap = buf.shape()[1], row = buf.shape()[2] * buf.shape()[3];
  xt::xarray<T> out = xt::xarray<T>::from_shape({B, len, buf.shape()[2], buf.shape()[3]});
  for (std::size_t b = 0; b < B; ++b) std::copy_n(buf.data() + b * cap * row, len * row, out.data() + b * len * row);
  return out;
}
}  // namespace

template <class T>
void KVEntry<T>::append(const xt::xarray<T>& kn, const xt::xarray<T>& vn) {
  const std::size_t B = kn.shape()[0], Tn = kn.shape()[1], Kh = kn.shape()[2], D = kn.shape()[3], row = Kh * D;
  const std::size_t cap = k.dimension() == 4 ? k.shape()[1] : 0;
  if (cap > 0 && (k.shape()[0] != B || k.shape()[2] != Kh || k.shape()[3] != D))
    throw std::invalid_argument("KVEntry: the cache holds (B,K,D) = (" + std::to_string(k.shape()[0]) + "," +
                                std::to_string(k.shape()[2]) + "," + std::to_string(k.shape()[3]) +
                                ") but the new keys are " + shape_to_string(kn.shape()));
  if (len + Tn > cap) {  // grow: double, at least 64 positions
    const std::size_t ncap = std::max({len + Tn, 2 * cap, std::size_t(64)});
    for (xt::xarray<T>* buf : {&k, &v}) {
      xt::xarray<T> nb = xt::xarray<T>::from_shape({B, ncap, Kh, D});
      for (std::size_t b = 0; b < B && len > 0; ++b)
        std::copy_n(buf->data() + b * cap * row, len * row, nb.data() + b * ncap * row);
      *buf = std::move(nb);
    }
  }
  const std::size_t c = k.shape()[1];
  for (std::size_t b = 0; b < B; ++b) {
    std::copy_n(kn.data() + b * Tn * row, Tn * row, k.data() + (b * c + len) * row);
    std::copy_n(vn.data() + b * Tn * row, Tn * row, v.data() + (b * c + len) * row);
  }
  len += Tn;
}

template <class T>
Tensor<T> KVEntry<T>::keys() const {
  return Tensor<T>(prefix(k, len));
}
template <class T>
Tensor<T> KVEntry<T>::values() const {
  return Tensor<T>(prefix(v, len));
}

template <class T>
Tensor<T> Attention<T>::forward(const Tensor<T>& x, const RopeTable<T>& rope_tab, KVEntry<T>* cache,
                                AttentionRecord* record) const {
  const Shape sx = x.shape();
  if (sx.size() != 3 || sx[2] != C_)
    throw std::invalid_argument("Attention: x must be (B,T," + std::to_string(C_) + "), got " + x.shape_str());
  const auto B = static_cast<std::int64_t>(sx[0]), Tn = static_cast<std::int64_t>(sx[1]);
  const auto H = static_cast<std::int64_t>(H_), K = static_cast<std::int64_t>(K_), D = static_cast<std::int64_t>(D_);
  const std::int64_t Dg = gate_.granularity == GateGranularity::Elementwise ? D : 1;

  // ---- projections; G1 scores out of the widened q_proj (Note [G1 layout]) ----
  Tensor<T> q, s_sdpa;
  Tensor<T> qp = q_proj_->forward(x);  // (B,T,q_rows)
  if (gate_.in_q_proj()) {
    const std::int64_t G = H / K;
    auto parts = split(reshape(qp, {B, Tn, K, G * D + G * Dg}),
                       {static_cast<std::size_t>(G * D), static_cast<std::size_t>(G * Dg)}, -1);
    q = reshape(parts[0], {B, Tn, H, D});
    s_sdpa = reshape(parts[1], {B, Tn, H, Dg});
  } else {
    q = reshape(qp, {B, Tn, H, D});
  }
  Tensor<T> k = reshape(k_proj_->forward(x), {B, Tn, K, D});
  Tensor<T> v = reshape(v_proj_->forward(x), {B, Tn, K, D});

  // ---- G2 / G3 / G4: on the projections, before QK-norm and RoPE ----
  const std::size_t offset = cache ? cache->length() : 0;  // absolute position of the first token
  if (gate_proj_ && gate_.position != GatePosition::Dense) {
    const std::int64_t n = gate_.position == GatePosition::Query ? H : K;
    Tensor<T> s = reshape(gate_proj_->forward(x), {B, Tn, n, Dg});
    if (gate_.position == GatePosition::Value) v = apply_gate(v, s, record, offset);
    if (gate_.position == GatePosition::Key) k = apply_gate(k, s, record, offset);
    if (gate_.position == GatePosition::Query) q = apply_gate(q, s, record, offset);
  }

  // ---- QK-norm, RoPE, the cache ----
  if (q_norm_) {
    q = q_norm_->forward(q);  // RMSNorm over D, per head
    k = k_norm_->forward(k);
  }
  q = rope(q, rope_tab, offset);
  k = rope(k, rope_tab, offset);
  // With a cache: decoding (nothing to differentiate) reads the cache in place; with
  // gradients wanted, the cached positions are copied and concatenated so that k and v
  // of the new tokens stay on the graph.
  bool in_place = false;
  if (cache) {
    if (cache->length() > 0 && cache->batch() != sx[0])
      throw std::invalid_argument("Attention: the KV cache holds batch " + std::to_string(cache->batch()) +
                                  " but x is " + x.shape_str());
    in_place = !(grad_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad()));
    if (!in_place && cache->length() > 0) {
      Tensor<T> kc = cache->keys(), vc = cache->values();
      cache->append(k.value(), v.value());
      k = concat<T>({kc, k}, 1);  // (B,Tc+T,K,D)
      v = concat<T>({vc, v}, 1);
    } else {
      cache->append(k.value(), v.value());
    }
  }

  // ---- causal SDPA: (B,T,H,D) ----
  xt::xarray<T> probs;
  const bool want_probs = record || this->has_forward_hooks();  // Note [Forward hooks]: "probs"
  Tensor<T> o = in_place ? attention_cached(q, cache->k, cache->v, cache->length(), want_probs ? &probs : nullptr)
                         : attention(q, k, v, std::optional<T>{}, want_probs ? &probs : nullptr);
  if (this->has_forward_hooks()) this->emit("probs", Tensor<T>(probs));
  if (record) {
    // probs (B,H,Tq,Tk); query i sits at absolute position Tk - Tq + i.
    record->head_first_token_attention = head_key_attention(probs, 0);
    record->first_token_attention = mean_over_heads(record->head_first_token_attention);
    record->second_token_attention = mean_over_heads(head_key_attention(probs, 1));
    if (record->keep_tensors) record->probs = xt::cast<double>(probs);
  }

  // ---- G1: gate (or probe) on the SDPA output ----
  if (gate_.position == GatePosition::Sdpa) {
    if (gate_.probe == GateProbe::RmsNorm) {
      o = sdpa_norm_->forward(o);
    } else if (gate_.probe == GateProbe::Silu) {
      o = silu(o);
    } else if (gate_.input_dependent) {
      o = apply_gate(o, s_sdpa, record, offset);
    } else {
      Tensor<T> a = activate(this->param(theta_));  // (H,D), broadcast over B, T
      if (record) record_gate(record, a.value(), false, offset);
      if (this->has_forward_hooks()) this->emit("gate", a);
      o = o * a;
    }
  }

  Tensor<T> out = o_proj_->forward(reshape(o, {B, Tn, H * D}));  // (B,T,C)

  // ---- G5: on o_proj's output ----
  if (gate_.position == GatePosition::Dense) out = apply_gate(out, gate_proj_->forward(x), record, offset);
  if (this->has_forward_hooks()) this->emit("output", out);
  return out;
}

template GateStats gate_stats<float>(const xt::xarray<float>&);
template GateStats gate_stats<double>(const xt::xarray<double>&);
template struct KVEntry<float>;
template struct KVEntry<double>;
template class Attention<float>;
template class Attention<double>;

}  // namespace tg::nn
