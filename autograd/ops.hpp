// autograd/ops.hpp — every differentiable operation of tapegrad.
//
// What it is for: the op set of the engine. Each op computes its forward value and, when
// an input requires a gradient, attaches a tape node whose backward closure is written
// right below the forward, in the same function (ops_*.cpp). The formula of each op and
// of its vector-Jacobian product is in the doc comment here.
//
// What it is not: the fast loops. Ops call kernels (autograd/kernels/) for the heavy
// work; the plain versions of those loops live beside them as `_naive` twins.
//
// Conventions: numpy broadcasting for the binary ops, undone in backward by sum_to();
// negative axes count from the end; a wrong shape or argument throws
// std::invalid_argument whose message starts with the op's name and shows the shapes,
// e.g. "matmul: (2,3) @ (4,5): inner dimensions 3 != 4".
#pragma once

#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "autograd/tape.hpp"
#include "autograd/tensor.hpp"

namespace tg {

using Index = xt::xarray<std::int64_t>;
// A scalar argument of an op on Tensor<T>: not used for deduction, so a double
// constant works with a Tensor<float> (x * 0.5, rmsnorm(x, w, 1e-6)).
template <class T>
using Scalar = std::type_identity_t<T>;  // integer ids (tokens, targets, top-k indices)

// ---- broadcasting ----------------------------------------------------------------------
// Sum g over the axes that broadcasting added or stretched, so it has shape `shape`.
// The one helper that undoes broadcasting in every backward.
template <class T>
xt::xarray<T> sum_to(const xt::xarray<T>& g, const Shape& shape);
// The broadcast shape of a and b, or an error naming `op` and both shapes.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
// The same two as ops, each the other's backward (the differentiable backwards use them):
// sum_to: y = x summed to `shape` (x must broadcast from it);  dx = broadcast_to(dy, x's shape)
template <class T> Tensor<T> sum_to(const Tensor<T>& x, const Shape& shape);
// broadcast_to: y = x copied along the axes it lacks or has as 1;  dx = sum_to(dy, x's shape)
template <class T> Tensor<T> broadcast_to(const Tensor<T>& x, const Shape& shape);

// ---- elementwise binary (broadcasting) ----------------------------------------------------
// add: z = a + b;  da = sum_to(dz), db = sum_to(dz)
template <class T> Tensor<T> add(const Tensor<T>& a, const Tensor<T>& b);
// sub: z = a - b;  da = dz, db = -dz
template <class T> Tensor<T> sub(const Tensor<T>& a, const Tensor<T>& b);
// mul: z = a * b;  da = dz * b, db = dz * a
template <class T> Tensor<T> mul(const Tensor<T>& a, const Tensor<T>& b);
// div: z = a / b;  da = dz / b, db = -dz * a / b^2
template <class T> Tensor<T> div(const Tensor<T>& a, const Tensor<T>& b);
// neg: z = -a
template <class T> Tensor<T> neg(const Tensor<T>& a);
// With a constant: z = a + s, a * s, ...
template <class T> Tensor<T> add_scalar(const Tensor<T>& a, Scalar<T> s);
template <class T> Tensor<T> mul_scalar(const Tensor<T>& a, Scalar<T> s);

template <class T> Tensor<T> operator+(const Tensor<T>& a, const Tensor<T>& b) { return add(a, b); }
template <class T> Tensor<T> operator-(const Tensor<T>& a, const Tensor<T>& b) { return sub(a, b); }
template <class T> Tensor<T> operator*(const Tensor<T>& a, const Tensor<T>& b) { return mul(a, b); }
template <class T> Tensor<T> operator/(const Tensor<T>& a, const Tensor<T>& b) { return div(a, b); }
template <class T> Tensor<T> operator-(const Tensor<T>& a) { return neg(a); }
template <class T> Tensor<T> operator+(const Tensor<T>& a, Scalar<T> s) { return add_scalar(a, s); }
template <class T> Tensor<T> operator+(Scalar<T> s, const Tensor<T>& a) { return add_scalar(a, s); }
template <class T> Tensor<T> operator-(const Tensor<T>& a, Scalar<T> s) { return add_scalar(a, -s); }
template <class T> Tensor<T> operator-(Scalar<T> s, const Tensor<T>& a) { return add_scalar(neg(a), s); }
template <class T> Tensor<T> operator*(const Tensor<T>& a, Scalar<T> s) { return mul_scalar(a, s); }
template <class T> Tensor<T> operator*(Scalar<T> s, const Tensor<T>& a) { return mul_scalar(a, s); }
template <class T> Tensor<T> operator/(const Tensor<T>& a, Scalar<T> s) { return mul_scalar(a, T(1) / s); }

// ---- elementwise unary --------------------------------------------------------------------
template <class T> Tensor<T> exp(const Tensor<T>& x);      // y = e^x;        dx = dy * y
template <class T> Tensor<T> log(const Tensor<T>& x);      // y = ln x;       dx = dy / x
template <class T> Tensor<T> sqrt(const Tensor<T>& x);     // y = √x;         dx = dy / (2y)
template <class T> Tensor<T> rsqrt(const Tensor<T>& x);    // y = 1/√x;       dx = -dy * y^3 / 2
template <class T> Tensor<T> abs(const Tensor<T>& x);      // y = |x|;        dx = dy * sign(x) (0 at 0)
template <class T> Tensor<T> relu(const Tensor<T>& x);     // y = max(x,0);   dx = dy * [x > 0]
template <class T> Tensor<T> sigmoid(const Tensor<T>& x);  // y = 1/(1+e^-x); dx = dy * y(1-y)
template <class T> Tensor<T> tanh(const Tensor<T>& x);     // y = tanh x;     dx = dy * (1-y^2)
template <class T> Tensor<T> silu(const Tensor<T>& x);     // y = x σ(x);     dx = dy * σ(x)(1 + x(1-σ(x)))
// gelu: erf form y = x Φ(x), or tanh form y = x/2 (1 + tanh(√(2/π)(x + 0.044715 x^3)))
enum class GeluApprox { Erf, Tanh };
template <class T> Tensor<T> gelu(const Tensor<T>& x, GeluApprox approx = GeluApprox::Erf);
// pow with a constant exponent: y = x^p; dx = dy * p x^(p-1)
template <class T> Tensor<T> pow(const Tensor<T>& x, Scalar<T> p);
// clamp: y = min(max(x, lo), hi); dx = dy where lo <= x <= hi, else 0
template <class T> Tensor<T> clamp(const Tensor<T>& x, Scalar<T> lo, Scalar<T> hi);

// ---- linear algebra -------------------------------------------------------------------
// matmul: a (...,M,K) @ b (...,K,N) -> (...,M,N). b may be 2-D (shared by every batch
// element: the weight case) or have the same leading (batch) shape as a.
// da = dz @ b^T, db = a^T @ dz (summed over the batch when b is shared).
template <class T> Tensor<T> matmul(const Tensor<T>& a, const Tensor<T>& b);
// linear: x (...,in) @ w(out,in)^T + bias(out) -> (...,out). bias may be undefined.
// dx = dy @ w, dw = dy^T @ x, dbias = sum of dy over rows. No transpose is materialised.
template <class T> Tensor<T> linear(const Tensor<T>& x, const Tensor<T>& w, const Tensor<T>& bias = {});

// ---- reductions -----------------------------------------------------------------------
// sum over `axes` (all axes when empty). dx = dy broadcast back.
template <class T> Tensor<T> sum(const Tensor<T>& x, std::vector<int> axes = {}, bool keepdims = false);
// mean over `axes` (all when empty). dx = dy / count.
template <class T> Tensor<T> mean(const Tensor<T>& x, std::vector<int> axes = {}, bool keepdims = false);
// max over one axis; the gradient goes to the first maximal element.
template <class T> Tensor<T> max(const Tensor<T>& x, int axis, bool keepdims = false);

// ---- softmax family -------------------------------------------------------------------
// softmax along axis: y = e^(x - max) / Σ e^(x - max); dx = y * (dy - Σ dy*y).
// A row that is all -inf gives all zeros (and zero gradient).
template <class T> Tensor<T> softmax(const Tensor<T>& x, int axis = -1);
// log_softmax: y = x - logsumexp(x); dx = dy - softmax(x) * Σ dy.
template <class T> Tensor<T> log_softmax(const Tensor<T>& x, int axis = -1);
// cross_entropy fused with log-softmax. logits (...,V), targets of the leading shape.
// Rows whose target is ignore_index do not count. Mean: loss = Σ_i (lse_i - x_i[t_i]) / n_counted;
// dlogits_i = (softmax_i - onehot(t_i)) * dloss / n_counted.
enum class Reduction { Mean, Sum, None };
template <class T>
Tensor<T> cross_entropy(const Tensor<T>& logits, const Index& targets, std::int64_t ignore_index = -100,
                        Reduction reduction = Reduction::Mean);

// ---- layers as fused ops ----------------------------------------------------------------
// embedding: ids (...) of integers in [0,V), weight (V,C) -> (...,C). dweight scatter-adds.
template <class T> Tensor<T> embedding(const Index& ids, const Tensor<T>& weight);
// rmsnorm over the last axis: y = x * rstd * w, rstd = 1/√(mean(x²) + eps). w (C) may be undefined.
template <class T> Tensor<T> rmsnorm(const Tensor<T>& x, const Tensor<T>& w, Scalar<T> eps);
// layernorm over the last axis: y = (x - μ) * rstd * w + b. w, b may be undefined.
template <class T> Tensor<T> layernorm(const Tensor<T>& x, const Tensor<T>& w, const Tensor<T>& b, Scalar<T> eps);
// swiglu: y = silu(g) * u (same shapes).
template <class T> Tensor<T> swiglu(const Tensor<T>& g, const Tensor<T>& u);
// sigmoid_gate: y = x * sigmoid(s) (same shapes), fused: the output gate of gated
// attention. dx = dy * σ(s), ds = dy * x * σ(s)(1 - σ(s)).
template <class T> Tensor<T> sigmoid_gate(const Tensor<T>& x, const Tensor<T>& s);
// dropout: in training, y = x * mask / (1-p) with mask ~ Bernoulli(1-p) from gen;
// otherwise (or p == 0) y = x.
template <class T> Tensor<T> dropout(const Tensor<T>& x, Scalar<T> p, Generator& gen, bool training = true);

// ---- RoPE -------------------------------------------------------------------------------
// YaRN parameters as Hugging Face defines them (rope_type "yarn").
// inv_freq blends the original frequencies (extrapolation) with those divided by factor
// (interpolation) by a linear ramp between the correction dimensions of beta_fast and
// beta_slow (floor/ceil'd when truncate); cos and sin are multiplied by attention_factor,
// which defaults to mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both are
// non-zero, else to mscale(factor, 1), with mscale(s, m) = 0.1 m ln s + 1 (1 for s <= 1).
struct YarnScaling {
  double factor = 1.0;
  double original_max_position_embeddings = 2048;
  double beta_fast = 32;
  double beta_slow = 1;
  std::optional<double> attention_factor;  // absent: from mscale as above
  double mscale = 0, mscale_all_dim = 0;   // 0: not given
  bool truncate = true;
  bool operator==(const YarnScaling&) const = default;
};
// cos and sin tables, (P, D), for positions 0..P-1: the rotate_half convention,
// cos[p, i] = cos(p * inv_freq[i mod D/2]) * attention_scale.
template <class T>
struct RopeTable {
  xt::xarray<T> cos, sin;  // (P, D)
  std::size_t max_positions() const { return cos.shape()[0]; }
  std::size_t head_dim() const { return cos.shape()[1]; }
};
// inv_freq (D/2) and the attention scale (1 without YaRN).
std::vector<double> rope_inv_freq(std::size_t D, double theta, const std::optional<YarnScaling>& yarn,
                                  double* attention_scale);
template <class T>
RopeTable<T> rope_table(std::size_t P, std::size_t D, double theta,
                        const std::optional<YarnScaling>& yarn = std::nullopt);
// rope: x (B,T,n,D) — heads last but one, positions along axis 1 — rotated pairwise:
// y = x * cos(p) + rotate_half(x) * sin(p), p = t + offset. dx = R(p)^T dy.
template <class T> Tensor<T> rope(const Tensor<T>& x, const RopeTable<T>& table, std::size_t offset = 0);

// ---- attention --------------------------------------------------------------------------
// Causal scaled-dot-product attention, grouped-query aware.
// q (B,Tq,H,D), k and v (B,Tk,Hkv,D), H % Hkv == 0, Tq <= Tk; query i sits at absolute
// position Tk - Tq + i. out (B,Tq,H,D) = softmax(q k^T * scale + causal mask) v, scale
// 1/√D when not given. (Token-major layout: it is what the projections produce, so no
// transposes are needed.) If probs is given, it receives the probabilities (B,H,Tq,Tk).
template <class T>
Tensor<T> attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                    std::optional<double> scale = std::nullopt, xt::xarray<T>* probs = nullptr);
// The same product composed of simple ops (matmul, masked_fill, softmax, ...): what the
// fused kernel computes, with the (B,H,Tq,Tk) probabilities stored — quadratic memory. It
// is attention's differentiable backward (second order) and its reference in tests.
template <class T>
Tensor<T> attention_reference(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                              std::optional<double> scale = std::nullopt);
// The same product against the first Tk positions of a KV cache stored (B,capacity,Hkv,D)
// (nn's KVEntry): no copy of the cache, and no node — inference only; it throws if q
// requires grad while recording (use `attention` on copies for that).
template <class T>
Tensor<T> attention_cached(const Tensor<T>& q, const xt::xarray<T>& k, const xt::xarray<T>& v,
                           std::size_t Tk, xt::xarray<T>* probs = nullptr);

// ---- shape ops ------------------------------------------------------------------------
// reshape to `shape` (one entry may be -1). dx = reshape(dy, x's shape). To x's own
// shape it returns x itself (the same tensor, no new node).
template <class T> Tensor<T> reshape(const Tensor<T>& x, const std::vector<std::int64_t>& shape);
// permute axes: y = x.transpose(perm); dx = dy.transpose(inverse perm).
template <class T> Tensor<T> permute(const Tensor<T>& x, const std::vector<std::size_t>& perm);
// swap two axes.
template <class T> Tensor<T> transpose(const Tensor<T>& x, int axis0, int axis1);
// y = x[..., start:stop, ...] along `axis` (step 1). dx is dy placed back into zeros.
template <class T> Tensor<T> slice(const Tensor<T>& x, int axis, std::int64_t start, std::int64_t stop);
// concatenate along axis. Each input's gradient is its slice of dy.
template <class T> Tensor<T> concat(const std::vector<Tensor<T>>& xs, int axis);
// split along axis into pieces of the given sizes (they must add up to the axis length).
template <class T> std::vector<Tensor<T>> split(const Tensor<T>& x, const std::vector<std::size_t>& sizes, int axis);
// rows of x (N,...) picked by idx (M) -> (M,...). dx scatter-adds.
template <class T> Tensor<T> index_select(const Tensor<T>& x, const Index& idx);
// out (N,...) zeros with out[idx[i]] += src[i]; dsrc = dout[idx].
template <class T> Tensor<T> index_add(std::size_t N, const Index& idx, const Tensor<T>& src);

// ---- selection ------------------------------------------------------------------------
// masked_fill: y = x where !mask, value where mask (mask broadcastable to x). dx = dy * !mask.
template <class T> Tensor<T> masked_fill(const Tensor<T>& x, const xt::xarray<bool>& mask, Scalar<T> value);
// where: y = cond ? a : b (all broadcast). da = dy * cond, db = dy * !cond.
template <class T> Tensor<T> where(const xt::xarray<bool>& cond, const Tensor<T>& a, const Tensor<T>& b);
// top-k along the last axis: the k largest values (descending; ties: lower index first),
// and their indices in *indices (same shape). dx scatters dy to the chosen positions.
template <class T> Tensor<T> topk(const Tensor<T>& x, std::size_t k, Index* indices);

}  // namespace tg
