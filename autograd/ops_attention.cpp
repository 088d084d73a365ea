// autograd/ops_attention.cpp — the ops of attention: RoPE (with YaRN) and causal grouped-
// query attention, fused (flash-style kernels) and in its reference form, plus the cached
// form used in decoding. Each forward saves the minimum its backward needs, and the
// backward sits right below it.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "autograd/kernels/attention.hpp"
#include "autograd/kernels/dispatch.hpp"
#include "autograd/kernels/rope.hpp"
#include "autograd/functional.hpp"
#include "autograd/ops_common.hpp"

namespace tg {

using namespace detail;  // the helpers of autograd/ops_common.hpp

// ---- RoPE --------------------------------------------------------------------------------

std::vector<double> rope_inv_freq(std::size_t D, double theta, const std::optional<YarnScaling>& yarn,
                                  double* attention_scale) {
  if (D == 0 || D % 2 != 0) fail("rope: head_dim " + std::to_string(D) + " must be even and positive");
  if (!(theta > 1.0)) fail("rope: rope_theta " + std::to_string(theta) + " must be > 1");
  const std::size_t half = D / 2;
  std::vector<double> inv(half);
  for (std::size_t i = 0; i < half; ++i) inv[i] = 1.0 / std::pow(theta, double(2 * i) / double(D));
  if (attention_scale) *attention_scale = 1.0;
  if (!yarn) return inv;
  // YaRN (Hugging Face's _compute_yarn_parameters): blend interpolated and
  // extrapolated frequencies with a linear ramp between two correction dimensions.
  const double s = yarn->factor, L = yarn->original_max_position_embeddings;
  if (!(s >= 1.0)) fail("rope: YaRN factor " + std::to_string(s) + " must be >= 1");
  if (!(L > 0)) fail("rope: YaRN original_max_position_embeddings must be > 0");
  const double pi = 3.14159265358979323846;
  auto corr_dim = [&](double rot) { return double(D) * std::log(L / (rot * 2 * pi)) / (2 * std::log(theta)); };
  double low = corr_dim(yarn->beta_fast), high = corr_dim(yarn->beta_slow);
  if (yarn->truncate) low = std::floor(low), high = std::ceil(high);
  low = std::max(low, 0.0), high = std::min(high, double(D - 1));
  if (high == low) high += 0.001;
  for (std::size_t i = 0; i < half; ++i) {
    double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    double extra = 1.0 - ramp;  // 1: keep the original frequency (extrapolate)
    double inv_extra = inv[i], inv_inter = inv[i] / s;
    inv[i] = inv_inter * (1 - extra) + inv_extra * extra;
  }
  auto mscale = [s](double m) { return s > 1.0 ? 0.1 * m * std::log(s) + 1.0 : 1.0; };
  double af = mscale(1.0);
  if (yarn->attention_factor) af = *yarn->attention_factor;
  else if (yarn->mscale != 0 && yarn->mscale_all_dim != 0) af = mscale(yarn->mscale) / mscale(yarn->mscale_all_dim);
  if (attention_scale) *attention_scale = af;
  return inv;
}

template <class T>
RopeTable<T> rope_table(std::size_t P, std::size_t D, double theta, const std::optional<YarnScaling>& yarn) {
  double scale = 1.0;
  std::vector<double> inv = rope_inv_freq(D, theta, yarn, &scale);
  RopeTable<T> t{xt::xarray<T>::from_shape({P, D}), xt::xarray<T>::from_shape({P, D})};
  // angles and cos/sin in double, even for float tables, rounded once
  TG_KERNEL(rope_tables)(int64_t(P), int64_t(D), theta, inv.data(), scale, t.cos.data(), t.sin.data());
  return t;
}

template <class T>
Tensor<T> rope(const Tensor<T>& x, const RopeTable<T>& table, std::size_t offset) {
  detail::require_defined(x, "rope", "x");
  const Shape sx = x.shape();
  if (sx.size() != 4) fail("rope: x must be (B,T,n,D), got " + shape_to_string(sx));
  const std::size_t B = sx[0], Tn = sx[1], n = sx[2], D = sx[3];
  if (D != table.head_dim())
    fail("rope: x " + shape_to_string(sx) + " has head_dim " + std::to_string(D) + " but the table has " +
         std::to_string(table.head_dim()));
  if (offset + Tn > table.max_positions())
    fail("rope: positions up to " + std::to_string(offset + Tn - 1) + " but the table covers " +
         std::to_string(table.max_positions()));
  // y_i = x_i cos_i - x_{i+h} sin_i,  y_{i+h} = x_{i+h} cos_{i+h} + x_i sin_{i+h}   (h = D/2)
  // x is viewed as B*T*n rows of D; row (b, t, h) sits at position t + offset. The rows
  // offset..offset+T-1 of the tables are copied (small: T×D) so the backward needs
  // nothing from the caller's table.
  const std::size_t rows = B * Tn * n;
  auto pos = std::make_shared<std::vector<std::int64_t>>(rows);
  for (std::size_t r = 0; r < rows; ++r) (*pos)[r] = static_cast<std::int64_t>((r / n) % Tn);
  auto cs = std::make_shared<std::vector<T>>(table.cos.data() + offset * D, table.cos.data() + (offset + Tn) * D);
  auto sn = std::make_shared<std::vector<T>>(table.sin.data() + offset * D, table.sin.data() + (offset + Tn) * D);
  xt::xarray<T> y = xt::xarray<T>::from_shape(sx);
  TG_KERNEL(rope_forward)(rows, D, x.value().data(), D, pos->data(), cs->data(), sn->data(), y.data(), D);
  Tensor<T> out(std::move(y));
  if (needs_grad<T>({&x}))
    attach<T>(out, "rope", {x}, [x, pos, cs, sn, rows, D](const xt::xarray<T>& dy) {
      // dx = R(p)^T dy:  dx_i = dy_i cos_i + dy_{i+h} sin_{i+h};  dx_{i+h} = dy_{i+h} cos_{i+h} - dy_i sin_i
      xt::xarray<T> dx = xt::zeros<T>(dy.shape());
      TG_KERNEL(rope_backward)(rows, D, dy.data(), D, pos->data(), cs->data(), sn->data(), dx.data(), D);
      x.accumulate_grad(std::move(dx), "rope");
    }, "offset=" + std::to_string(offset)).vjp = [cs, sn, Tn, D](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      // dx = R(p)ᵀ dy is itself a rotation by a table: cos the same, sin with its halves
      // swapped and negated (sin'_i = -sin_{i+h}, sin'_{i+h} = -sin_i), positions from 0.
      // Its own transpose is the forward table again, so this closes under differentiation.
      const std::size_t h = D / 2;
      RopeTable<T> t{xt::xarray<T>::from_shape({Tn, D}), xt::xarray<T>::from_shape({Tn, D})};
      for (std::size_t p = 0; p < Tn; ++p)
        for (std::size_t i = 0; i < D; ++i) {
          t.cos(p, i) = (*cs)[p * D + i];
          t.sin(p, i) = -(*sn)[p * D + (i < h ? i + h : i - h)];
        }
      return {rope(dy, t, 0)};
    };
  return out;
}

// ---- attention ---------------------------------------------------------------------------

namespace {
// Token-major layout: element (b, t, h, d) of a (B,Tstore,heads,D) array is at
// ((b*Tstore + t)*heads + h)*D + d.
kernels::AttnStrides token_major(std::size_t Tstore, std::size_t heads, std::size_t D) {
  return {std::int64_t(Tstore * heads * D), std::int64_t(D), std::int64_t(heads * D)};
}

// The forward product of attention and attention_cached: q (B,Tq,H,D) against the first
// dims.Tk positions of k and v, stored (B,Tstore,Hkv,D) (Tstore = Tk, or a cache's
// capacity). Returns out (B,Tq,H,D); fills lse (B,H,Tq) and, if asked, the probabilities
// (B,H,Tq,Tk), recomputed from lse (diagnostics).
template <class T>
xt::xarray<T> attention_out(const Tensor<T>& q, const T* k, const T* v, std::size_t Tstore,
                            const kernels::AttnDims& dims, T scale, T* lse, xt::xarray<T>* probs_out) {
  const std::size_t B = dims.B, H = dims.H, Tq = dims.Tq, Tk = dims.Tk;
  const kernels::AttnStrides qs = token_major(Tq, H, dims.D), ks = token_major(Tstore, dims.Hkv, dims.D);
  xt::xarray<T> o = xt::xarray<T>::from_shape(q.value().shape());
  TG_KERNEL(attention_forward)(dims, scale, q.value().data(), qs, k, ks, v, ks, o.data(), qs, lse);
  if (probs_out) {
    *probs_out = xt::xarray<T>::from_shape({B, H, Tq, Tk});
    TG_KERNEL(attention_probs)(dims, scale, q.value().data(), qs, k, ks, lse, probs_out->data());
  }
  return o;
}
}  // namespace

template <class T>
Tensor<T> attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, std::optional<double> scale_opt,
                    xt::xarray<T>* probs_out) {
  detail::require_defined(q, "attention", "q");
  detail::require_defined(k, "attention", "k");
  detail::require_defined(v, "attention", "v");
  const Shape sq = q.shape(), sk = k.shape(), sv = v.shape();
  auto bad = [&](const std::string& why) {
    fail("attention: q " + shape_to_string(sq) + ", k " + shape_to_string(sk) + ", v " + shape_to_string(sv) + ": " +
         why);
  };
  if (sq.size() != 4 || sk.size() != 4 || sv.size() != 4) bad("expected q (B,Tq,H,D), k and v (B,Tk,Hkv,D)");
  if (sk != sv) bad("k and v shapes differ");
  const std::size_t B = sq[0], Tq = sq[1], H = sq[2], D = sq[3], Tk = sk[1], Hkv = sk[2];
  if (sk[0] != B || sk[3] != D) bad("batch or head_dim differ");
  if (Hkv == 0 || H % Hkv != 0) bad("query heads " + std::to_string(H) + " not a multiple of kv heads " + std::to_string(Hkv));
  if (Tq > Tk) bad("more queries than keys");
  const T scale = scale_opt ? T(*scale_opt) : T(1) / std::sqrt(T(D));
  // Flash-style kernel (autograd/kernels/attention.hpp): tiles of queries × keys with an
  // online softmax; only out and the log-sum-exp of each row (B,H,Tq) are saved, and the
  // backward recomputes the probabilities tile by tile, so memory is linear in T.
  const kernels::AttnDims dims{std::int64_t(B), std::int64_t(H), std::int64_t(Hkv), std::int64_t(Tq),
                               std::int64_t(Tk), std::int64_t(D)};
  const kernels::AttnStrides qs = token_major(Tq, H, D), ks = token_major(Tk, Hkv, D);
  auto lse = std::make_shared<std::vector<T>>(B * H * Tq);
  Tensor<T> out(attention_out(q, k.value().data(), v.value().data(), Tk, dims, scale, lse->data(), probs_out));
  detail::check_forward(out, "attention", {&q, &k, &v});
  if (needs_grad<T>({&q, &k, &v})) {
    std::weak_ptr<TensorImpl<T>> ow = out.impl();
    attach<T>(out, "attention", {q, k, v}, [q, k, v, ow, lse, dims, qs, ks, scale](const xt::xarray<T>& dO) {
      // With P = softmax(S), S = scale·QKᵀ (causal):  dV = Pᵀ dO;  dP = dO Vᵀ;
      // dS = P ⊙ (dP - rowsum(dO ⊙ O));  dQ = scale·dS K;  dK = scale·dSᵀ Q
      // (grouped-query: a kv head sums the contributions of its query heads).
      xt::xarray<T> dq = xt::xarray<T>::from_shape(q.value().shape()), dk = xt::xarray<T>::from_shape(k.value().shape()),
                    dv = xt::xarray<T>::from_shape(v.value().shape());
      TG_KERNEL(attention_backward)(dims, scale, q.value().data(), qs, k.value().data(), ks, v.value().data(), ks,
                                    ow.lock()->value.data(), qs, dO.data(), qs, lse->data(), dq.data(), qs, dk.data(),
                                    ks, dv.data(), ks);
      if (q.requires_grad()) q.accumulate_grad(std::move(dq), "attention");
      if (k.requires_grad()) k.accumulate_grad(std::move(dk), "attention");
      if (v.requires_grad()) v.accumulate_grad(std::move(dv), "attention");
    }, "causal,H=" + std::to_string(H) + ",Hkv=" + std::to_string(Hkv))
        .vjp = [q, k, v, scale](const Tensor<T>&, const Tensor<T>& dO) -> Grads<T> {
      // the backward of the reference form (attention_reference: quadratic memory)
      return detail::vjp_of<T>([&] { return attention_reference(q, k, v, double(scale)); }, {q, k, v}, dO);
    };
  }
  return out;
}

template <class T>
Tensor<T> attention_reference(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                              std::optional<double> scale_opt) {
  detail::require_defined(q, "attention_reference", "q");
  detail::require_defined(k, "attention_reference", "k");
  detail::require_defined(v, "attention_reference", "v");
  const Shape sq = q.shape(), sk = k.shape();
  if (sq.size() != 4 || sk.size() != 4 || sk != v.shape() || sk[0] != sq[0] || sk[3] != sq[3] || sk[2] == 0 ||
      sq[2] % sk[2] != 0 || sq[1] > sk[1])
    fail("attention_reference: q " + shape_to_string(sq) + ", k " + shape_to_string(sk) + ", v " + v.shape_str() +
         ": expected q (B,Tq,H,D), k and v (B,Tk,Hkv,D), H a multiple of Hkv, Tq <= Tk");
  const std::int64_t B = sq[0], Tq = sq[1], H = sq[2], D = sq[3], Tk = sk[1], Hkv = sk[2], G = H / Hkv;
  const double scale = scale_opt ? *scale_opt : 1.0 / std::sqrt(double(D));
  // Query head h reads kv head h / G: group the G query heads of each kv head together.
  // q (B,Tq,H,D) -> (B,H,Tq,D) -> (B,Hkv,G*Tq,D);  k, v (B,Tk,Hkv,D) -> (B,Hkv,Tk,D)
  Tensor<T> qh = reshape(permute(q, {0, 2, 1, 3}), {B, Hkv, G * Tq, D});
  Tensor<T> kh = permute(k, {0, 2, 1, 3}), vh = permute(v, {0, 2, 1, 3});
  // S (B,Hkv,G*Tq,Tk) = scale · Q Kᵀ; query i (absolute position Tk - Tq + i) sees keys j <= Tk - Tq + i
  Tensor<T> S = matmul(qh, transpose(kh, 2, 3)) * scale;
  xt::xarray<bool> future = xt::xarray<bool>::from_shape({std::size_t(G * Tq), std::size_t(Tk)});
  for (std::int64_t r = 0; r < G * Tq; ++r)
    for (std::int64_t j = 0; j < Tk; ++j) future(r, j) = j > Tk - Tq + r % Tq;
  Tensor<T> P = softmax(masked_fill(S, future, -std::numeric_limits<T>::infinity()), -1);
  // O (B,Hkv,G*Tq,D) = P V -> (B,H,Tq,D) -> (B,Tq,H,D)
  return permute(reshape(matmul(P, vh), {B, H, Tq, D}), {0, 2, 1, 3});
}

template <class T>
Tensor<T> attention_cached(const Tensor<T>& q, const xt::xarray<T>& k, const xt::xarray<T>& v, std::size_t Tk,
                           xt::xarray<T>* probs_out) {
  detail::require_defined(q, "attention_cached", "q");
  if (grad_enabled() && q.requires_grad())
    fail("attention_cached: q requires grad; the cached product records no node (use attention)");
  const Shape sq = q.shape();
  if (sq.size() != 4 || k.dimension() != 4 || k.shape() != v.shape())
    fail("attention_cached: expected q (B,Tq,H,D) and a cache k, v (B,capacity,Hkv,D); got q " +
         shape_to_string(sq) + ", k " + shape_to_string(k.shape()) + ", v " + shape_to_string(v.shape()));
  const std::size_t B = sq[0], Tq = sq[1], H = sq[2], D = sq[3], cap = k.shape()[1], Hkv = k.shape()[2];
  if (k.shape()[0] != B || k.shape()[3] != D || Hkv == 0 || H % Hkv != 0 || Tq > Tk || Tk > cap)
    fail("attention_cached: q " + shape_to_string(sq) + " against " + std::to_string(Tk) + " positions of a cache " +
         shape_to_string(k.shape()));
  const kernels::AttnDims dims{std::int64_t(B), std::int64_t(H), std::int64_t(Hkv), std::int64_t(Tq),
                               std::int64_t(Tk), std::int64_t(D)};
  std::vector<T> lse(B * H * Tq);
  Tensor<T> out(attention_out(q, k.data(), v.data(), cap, dims, T(1) / std::sqrt(T(D)), lse.data(), probs_out));
  detail::check_forward(out, "attention_cached", {&q});
  return out;
}

#define TG_INSTANTIATE(T)                                                                                   \
  template RopeTable<T> rope_table<T>(std::size_t, std::size_t, double, const std::optional<YarnScaling>&); \
  template Tensor<T> rope<T>(const Tensor<T>&, const RopeTable<T>&, std::size_t);                           \
  template Tensor<T> attention<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, std::optional<double>,   \
                                  xt::xarray<T>*);                                                          \
  template Tensor<T> attention_reference<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,           \
                                            std::optional<double>);                                         \
  template Tensor<T> attention_cached<T>(const Tensor<T>&, const xt::xarray<T>&, const xt::xarray<T>&, std::size_t, xt::xarray<T>*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
