// autograd/ops_nn.cpp — the fused ops of neural networks: softmax, log_softmax,
// cross-entropy, embedding, RMSNorm, LayerNorm, SwiGLU, dropout, RoPE, attention, top-k.
// Each forward saves the minimum its backward needs (an output, or small caches such as
// rstd and log-sum-exp), and the backward sits right below it.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "autograd/kernels/attention.hpp"
#include "autograd/kernels/dispatch.hpp"
#include "autograd/kernels/embedding.hpp"
#include "autograd/kernels/norm.hpp"
#include "autograd/kernels/rope.hpp"
#include "autograd/kernels/softmax.hpp"
#include "autograd/kernels/swiglu.hpp"
#include "autograd/functional.hpp"
#include "autograd/ops_common.hpp"

namespace tg {

using detail::constant;
using detail::dims_of;
using detail::fail;
using detail::grad_if;
using detail::prod;

// ---- softmax family ----------------------------------------------------------------------
namespace {

// View x as (outer, n, inner) around `axis`.
struct AxisView {
  std::size_t outer, n, inner;
};
AxisView axis_view(const Shape& s, std::size_t axis) { return {prod(s, 0, axis), s[axis], prod(s, axis + 1)}; }

// A non-last axis goes through the same row kernels as the last: copy x into rows with the axis
// moved last, (outer, n, inner) -> (outer, inner, n), run the kernel on outer*inner rows of n,
// then move the result back. One softmax, whatever the axis.
template <class T>
xt::xarray<T> axis_last(const AxisView& v, const T* x) {
  xt::xarray<T> rows = xt::xarray<T>::from_shape({v.outer * v.inner, v.n});
  T* r = rows.data();
  for (std::size_t o = 0; o < v.outer; ++o)
    for (std::size_t k = 0; k < v.n; ++k)
      for (std::size_t i = 0; i < v.inner; ++i) r[(o * v.inner + i) * v.n + k] = x[(o * v.n + k) * v.inner + i];
  return rows;
}
template <class T>
void axis_back(const AxisView& v, const T* rows, T* x) {
  for (std::size_t o = 0; o < v.outer; ++o)
    for (std::size_t k = 0; k < v.n; ++k)
      for (std::size_t i = 0; i < v.inner; ++i) x[(o * v.n + k) * v.inner + i] = rows[(o * v.inner + i) * v.n + k];
}

}  // namespace

template <class T>
Tensor<T> softmax(const Tensor<T>& x, int axis_in) {
  detail::require_defined(x, "softmax", "x");
  const Shape sx = x.shape();
  const std::size_t axis = detail::norm_axis(axis_in, sx.size(), "softmax", sx);
  const AxisView v = axis_view(sx, axis);
  // y = exp(x - lse(x)) along the axis
  xt::xarray<T> y = xt::xarray<T>::from_shape(sx);
  if (v.inner == 1) {  // the last axis: the kernel on x itself
    TG_KERNEL(softmax_forward)(v.outer, v.n, x.value().data(), y.data());
  } else {
    const xt::xarray<T> xr = axis_last(v, x.value().data());
    xt::xarray<T> yr = xt::xarray<T>::from_shape(xr.shape());
    TG_KERNEL(softmax_forward)(v.outer * v.inner, v.n, xr.data(), yr.data());
    axis_back(v, yr.data(), y.data());
  }
  Tensor<T> out(std::move(y));
  detail::check_forward(out, "softmax", {&x});
  if (needs_grad<T>({&x})) {
    std::weak_ptr<TensorImpl<T>> yw = out.impl();
    attach<T>(out, "softmax", {x}, [x, yw, v](const xt::xarray<T>& dy) {
      // dx = y * (dy - Σ_k dy*y)
      const T* y = yw.lock()->value.data();
      xt::xarray<T> dx = xt::xarray<T>::from_shape(dy.shape());
      if (v.inner == 1) {
        dx.fill(T(0));
        TG_KERNEL(softmax_backward)(v.outer, v.n, y, dy.data(), dx.data());
      } else {
        const xt::xarray<T> yr = axis_last(v, y), dyr = axis_last(v, dy.data());
        xt::xarray<T> dxr = xt::zeros<T>(yr.shape());
        TG_KERNEL(softmax_backward)(v.outer * v.inner, v.n, yr.data(), dyr.data(), dxr.data());
        axis_back(v, dxr.data(), dx.data());
      }
      x.accumulate_grad(std::move(dx), "softmax");
    }, "axis=" + std::to_string(axis)).vjp = [axis](const Tensor<T>& y, const Tensor<T>& dy) -> Grads<T> {
      return {y * (dy - sum(dy * y, {int(axis)}, true))};
    };
  }
  return out;
}

template <class T>
Tensor<T> log_softmax(const Tensor<T>& x, int axis_in) {
  detail::require_defined(x, "log_softmax", "x");
  const Shape sx = x.shape();
  const std::size_t axis = detail::norm_axis(axis_in, sx.size(), "log_softmax", sx);
  const AxisView v = axis_view(sx, axis);
  // y = x - lse(x) along the axis
  xt::xarray<T> y = xt::xarray<T>::from_shape(sx);
  if (v.inner == 1) {
    TG_KERNEL(log_softmax_forward)(v.outer, v.n, x.value().data(), y.data());
  } else {
    const xt::xarray<T> xr = axis_last(v, x.value().data());
    xt::xarray<T> yr = xt::xarray<T>::from_shape(xr.shape());
    TG_KERNEL(log_softmax_forward)(v.outer * v.inner, v.n, xr.data(), yr.data());
    axis_back(v, yr.data(), y.data());
  }
  Tensor<T> out(std::move(y));
  detail::check_forward(out, "log_softmax", {&x});
  if (needs_grad<T>({&x})) {
    std::weak_ptr<TensorImpl<T>> yw = out.impl();
    attach<T>(out, "log_softmax", {x}, [x, yw, v](const xt::xarray<T>& dy) {
      // dx = dy - exp(y) * Σ_k dy   (zero on fully masked rows, where y = -inf)
      const T* y = yw.lock()->value.data();
      xt::xarray<T> dx = xt::xarray<T>::from_shape(dy.shape());
      if (v.inner == 1) {
        dx.fill(T(0));
        TG_KERNEL(log_softmax_backward)(v.outer, v.n, y, dy.data(), dx.data());
      } else {
        const xt::xarray<T> yr = axis_last(v, y), dyr = axis_last(v, dy.data());
        xt::xarray<T> dxr = xt::zeros<T>(yr.shape());
        TG_KERNEL(log_softmax_backward)(v.outer * v.inner, v.n, yr.data(), dyr.data(), dxr.data());
        axis_back(v, dxr.data(), dx.data());
      }
      x.accumulate_grad(std::move(dx), "log_softmax");
    }, "axis=" + std::to_string(axis)).vjp = [axis, v](const Tensor<T>& y, const Tensor<T>& dy) -> Grads<T> {
      Tensor<T> dx = dy - exp(y) * sum(dy, {int(axis)}, true);
      // fully masked rows (all -inf) get no gradient, as in the fast backward
      Shape kept = y.shape();
      kept[axis] = 1;
      xt::xarray<bool> dead = xt::xarray<bool>::from_shape(kept);
      bool any = false;
      for (std::size_t o = 0; o < v.outer; ++o)
        for (std::size_t i = 0; i < v.inner; ++i) {
          bool all_inf = true;
          for (std::size_t k = 0; k < v.n; ++k) all_inf = all_inf && std::isinf(y.value().data()[(o * v.n + k) * v.inner + i]);
          dead.data()[o * v.inner + i] = all_inf;
          any = any || all_inf;
        }
      if (any) dx = masked_fill(dx, dead, T(0));
      return {dx};
    };
  }
  return out;
}

template <class T>
Tensor<T> cross_entropy(const Tensor<T>& logits, const Index& targets, std::int64_t ignore_index, Reduction red) {
  detail::require_defined(logits, "cross_entropy", "logits");
  const Shape sl = logits.shape();
  if (sl.empty()) fail("cross_entropy: logits must have a class axis, got shape ()");
  Shape lead(sl.begin(), sl.end() - 1);
  if (detail::to_shape(targets.shape()) != lead)
    fail("cross_entropy: logits " + shape_to_string(sl) + " need targets of shape " + shape_to_string(lead) +
         ", got " + shape_to_string(targets.shape()));
  const std::size_t N = prod(lead), V = sl.back();
  for (std::size_t i = 0; i < N; ++i) {
    const std::int64_t t = targets.data()[i];
    if (t != ignore_index && (t < 0 || t >= static_cast<std::int64_t>(V)))
      fail("cross_entropy: target " + std::to_string(t) + " at row " + std::to_string(i) + " is outside [0, " +
           std::to_string(V) + ") (ignore_index is " + std::to_string(ignore_index) + ")");
  }
  // loss_i = lse_i - x_i[t_i] for counted rows (the fused kernel); lse saved for backward.
  auto lse = std::make_shared<std::vector<T>>(N, T(0));
  xt::xarray<T> per_row = xt::zeros<T>(lead);
  const std::size_t count = static_cast<std::size_t>(TG_KERNEL(cross_entropy_forward)(
      N, V, logits.value().data(), targets.data(), ignore_index, per_row.data(), lse->data()));
  xt::xarray<T> y;
  if (red == Reduction::None) {
    y = per_row;
  } else {
    T total = 0;
    for (std::size_t i = 0; i < N; ++i) total += per_row.data()[i];
    // Note: a mean over zero counted rows is 0 (PyTorch gives NaN); its gradient is 0.
    if (red == Reduction::Mean) total = count ? total / T(count) : T(0);
    y = xt::xarray<T>::from_shape(Shape{});
    y() = total;
  }
  Tensor<T> out(std::move(y));
  detail::check_forward(out, "cross_entropy", {&logits});
  if (needs_grad<T>({&logits}))
    attach<T>(out, "cross_entropy", {logits},
              [logits, targets, ignore_index, red, lse, N, V, count](const xt::xarray<T>& dy) {
      // dlogits_i = (softmax(x_i) - onehot(t_i)) * dloss_i,
      // dloss_i = dy (sum), dy / count (mean), dy_i (none)
      std::vector<T> dloss(N);
      for (std::size_t i = 0; i < N; ++i)
        dloss[i] = red == Reduction::None ? dy.data()[i] : (red == Reduction::Sum ? dy() : dy() / T(count));
      xt::xarray<T> dx = xt::zeros<T>(logits.value().shape());
      TG_KERNEL(cross_entropy_backward)(N, V, logits.value().data(), targets.data(), ignore_index, lse->data(),
                                        dloss.data(), dx.data());
      logits.accumulate_grad(std::move(dx), "cross_entropy");
    }, "ignore_index=" + std::to_string(ignore_index))
        .vjp = [logits, targets, ignore_index, red, N, V, count](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      // As ops: dlogits = (softmax(logits) - onehot(t)) * w, w_i = [t_i counted] * (dy / count | dy | dy_i)
      Shape lead1 = logits.shape();
      lead1.back() = 1;
      xt::xarray<T> onehot = xt::zeros<T>(logits.shape()), weight = xt::zeros<T>(lead1);
      for (std::size_t i = 0; i < N; ++i) {
        const std::int64_t t = targets.data()[i];
        if (t == ignore_index) continue;
        onehot.data()[i * V + std::size_t(t)] = T(1);
        weight.data()[i] = red == Reduction::Mean ? T(1) / T(count) : T(1);
      }
      Tensor<T> w = red == Reduction::None ? reshape(dy, dims_of(lead1)) * constant(std::move(weight))
                                           : constant(std::move(weight)) * dy;
      return {(softmax(logits, -1) - constant(std::move(onehot))) * w};
    };
  return out;
}

// ---- layers ------------------------------------------------------------------------------

template <class T>
Tensor<T> embedding(const Index& ids, const Tensor<T>& weight) {
  detail::require_defined(weight, "embedding", "weight");
  const Shape sw = weight.shape();
  if (sw.size() != 2) fail("embedding: weight must be (V, C), got " + shape_to_string(sw));
  const std::size_t V = sw[0], C = sw[1], N = ids.size();
  for (std::size_t i = 0; i < N; ++i)
    if (ids.data()[i] < 0 || ids.data()[i] >= static_cast<std::int64_t>(V))
      fail("embedding: id " + std::to_string(ids.data()[i]) + " at position " + std::to_string(i) +
           " is outside [0, " + std::to_string(V) + ")");
  Shape so = detail::to_shape(ids.shape());
  so.push_back(C);
  // y[i] = weight[ids[i]]
  xt::xarray<T> y = xt::xarray<T>::from_shape(so);
  TG_KERNEL(embedding_forward)(N, V, C, ids.data(), weight.value().data(), y.data());
  Tensor<T> out(std::move(y));
  detail::check_forward(out, "embedding", {&weight});
  if (needs_grad<T>({&weight}))
    attach<T>(out, "embedding", {weight}, [weight, ids, N, V, C](const xt::xarray<T>& dy) {
      // dweight[ids[i]] += dy[i]   (scatter-add; repeated ids accumulate)
      xt::xarray<T> dw = xt::zeros<T>(weight.value().shape());
      TG_KERNEL(embedding_backward)(N, V, C, ids.data(), dy.data(), dw.data());
      weight.accumulate_grad(std::move(dw), "embedding");
    }).vjp = [ids, N, V, C](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      // dweight = index_add of the rows of dy at ids
      Index flat = ids;
      flat.reshape({N});
      return {index_add(V, flat, reshape(dy, {std::int64_t(N), std::int64_t(C)}))};
    };
  return out;
}

template <class T>
Tensor<T> rmsnorm(const Tensor<T>& x, const Tensor<T>& w, Scalar<T> eps) {
  detail::require_defined(x, "rmsnorm", "x");
  const Shape sx = x.shape();
  if (sx.empty()) fail("rmsnorm: x must have at least one dimension");
  const std::size_t C = sx.back(), rows = prod(sx, 0, sx.size() - 1);
  if (w.defined() && (w.dim() != 1 || w.shape()[0] != C))
    fail("rmsnorm: weight " + w.shape_str() + " does not match x " + shape_to_string(sx) + " (expected (" +
         std::to_string(C) + "))");
  // y = x * rstd * w,  rstd = 1/√(mean(x²) + eps), saved per row
  std::vector<T> rstd(rows);
  xt::xarray<T> y = xt::xarray<T>::from_shape(sx);
  const T* wp = w.defined() ? w.value().data() : nullptr;
  TG_KERNEL(rmsnorm_forward)(rows, C, x.value().data(), wp, T(eps), y.data(), rstd.data());
  Tensor<T> out(std::move(y));
  detail::check_forward(out, "rmsnorm", {&x, &w});
  if (needs_grad<T>({&x, &w}))
    attach<T>(out, "rmsnorm", {x, w}, [x, w, rstd = std::move(rstd), rows, C](const xt::xarray<T>& dy) {
      // with x̂ = x*rstd and g = dy*w:  dx = rstd * (g - x̂ * mean(g*x̂)),  dw = Σ_rows dy * x̂
      const bool want_w = w.defined() && w.requires_grad();
      xt::xarray<T> dx, dw;
      if (x.requires_grad()) dx = xt::zeros<T>(x.value().shape());
      if (want_w) dw = xt::zeros<T>({C});
      TG_KERNEL(rmsnorm_backward)(rows, C, x.value().data(), w.defined() ? w.value().data() : nullptr, rstd.data(),
                                  dy.data(), x.requires_grad() ? dx.data() : nullptr, want_w ? dw.data() : nullptr);
      if (x.requires_grad()) x.accumulate_grad(std::move(dx), "rmsnorm");
      if (want_w) w.accumulate_grad(std::move(dw), "rmsnorm");
    }, "eps=" + std::to_string(eps)).vjp = [x, w, eps](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      // the backward of the reference form y = x * rsqrt(mean(x², last axis) + eps) * w
      return detail::vjp_of<T>([&] {
        Tensor<T> y = x * rsqrt(mean(x * x, {-1}, true) + T(eps));
        return w.defined() ? y * w : y;
      }, {x, w}, dy);
    };
  return out;
}

template <class T>
Tensor<T> layernorm(const Tensor<T>& x, const Tensor<T>& w, const Tensor<T>& b, Scalar<T> eps) {
  detail::require_defined(x, "layernorm", "x");
  const Shape sx = x.shape();
  if (sx.empty()) fail("layernorm: x must have at least one dimension");
  const std::size_t C = sx.back(), rows = prod(sx, 0, sx.size() - 1);
  for (auto* p : {&w, &b})
    if (p->defined() && (p->dim() != 1 || p->shape()[0] != C))
      fail("layernorm: " + std::string(p == &w ? "weight " : "bias ") + p->shape_str() + " does not match x " +
           shape_to_string(sx) + " (expected (" + std::to_string(C) + "))");
  // y = (x - μ) * rstd * w + b, μ and rstd saved per row
  std::vector<T> mu(rows), rstd(rows);
  xt::xarray<T> y = xt::xarray<T>::from_shape(sx);
  TG_KERNEL(layernorm_forward)(rows, C, x.value().data(), w.defined() ? w.value().data() : nullptr,
                               b.defined() ? b.value().data() : nullptr, T(eps), y.data(), mu.data(), rstd.data());
  Tensor<T> out(std::move(y));
  detail::check_forward(out, "layernorm", {&x, &w, &b});
  if (needs_grad<T>({&x, &w, &b}))
    attach<T>(out, "layernorm", {x, w, b},
              [x, w, b, mu = std::move(mu), rstd = std::move(rstd), rows, C](const xt::xarray<T>& dy) {
      // x̂ = (x-μ)*rstd, g = dy*w:  dx = rstd * (g - mean(g) - x̂ * mean(g*x̂));  dw = Σ dy*x̂;  db = Σ dy
      const bool want_x = x.requires_grad(), want_w = w.defined() && w.requires_grad(),
                 want_b = b.defined() && b.requires_grad();
      xt::xarray<T> dx, dw, db;
      if (want_x) dx = xt::zeros<T>(x.value().shape());
      if (want_w) dw = xt::zeros<T>({C});
      if (want_b) db = xt::zeros<T>({C});
      TG_KERNEL(layernorm_backward)(rows, C, x.value().data(), w.defined() ? w.value().data() : nullptr, mu.data(),
                                    rstd.data(), dy.data(), want_x ? dx.data() : nullptr, want_w ? dw.data() : nullptr,
                                    want_b ? db.data() : nullptr);
      if (want_x) x.accumulate_grad(std::move(dx), "layernorm");
      if (want_w) w.accumulate_grad(std::move(dw), "layernorm");
      if (want_b) b.accumulate_grad(std::move(db), "layernorm");
    }, "eps=" + std::to_string(eps)).vjp = [x, w, b, eps](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      // the backward of the reference form: xc = x - mean(x); y = xc * rsqrt(mean(xc²) + eps) * w + b
      return detail::vjp_of<T>([&] {
        Tensor<T> xc = x - mean(x, {-1}, true);
        Tensor<T> y = xc * rsqrt(mean(xc * xc, {-1}, true) + T(eps));
        if (w.defined()) y = y * w;
        return b.defined() ? y + b : y;
      }, {x, w, b}, dy);
    };
  return out;
}

template <class T>
Tensor<T> swiglu(const Tensor<T>& g, const Tensor<T>& u) {
  detail::require_defined(g, "swiglu", "g");
  detail::require_defined(u, "swiglu", "u");
  if (g.shape() != u.shape()) fail("swiglu: gate " + g.shape_str() + " and up " + u.shape_str() + " differ");
  // y = silu(g) * u
  const std::size_t n = g.numel();
  xt::xarray<T> y = xt::xarray<T>::from_shape(g.value().shape());
  TG_KERNEL(swiglu_forward)(n, g.value().data(), u.value().data(), y.data());
  Tensor<T> out(std::move(y));
  detail::check_forward(out, "swiglu", {&g, &u});
  if (needs_grad<T>({&g, &u}))
    attach<T>(out, "swiglu", {g, u}, [g, u, n](const xt::xarray<T>& dy) {
      // dg = dy * u * σ(g)(1 + g(1-σ(g))),  du = dy * silu(g)
      xt::xarray<T> dg = xt::zeros<T>(dy.shape()), du = xt::zeros<T>(dy.shape());
      TG_KERNEL(swiglu_backward)(n, g.value().data(), u.value().data(), dy.data(), dg.data(), du.data());
      if (g.requires_grad()) g.accumulate_grad(std::move(dg), "swiglu");
      if (u.requires_grad()) u.accumulate_grad(std::move(du), "swiglu");
    }).vjp = [g, u](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      Tensor<T> s = sigmoid(g);
      return {grad_if(g, [&] { return dy * u * (s * (1.0 + g * (1.0 - s))); }), grad_if(u, [&] { return dy * (g * s); })};
    };
  return out;
}

template <class T>
Tensor<T> sigmoid_gate(const Tensor<T>& x, const Tensor<T>& s) {
  detail::require_defined(x, "sigmoid_gate", "x");
  detail::require_defined(s, "sigmoid_gate", "s");
  if (x.shape() != s.shape())
    fail("sigmoid_gate: x " + x.shape_str() + " and gate scores s " + s.shape_str() + " differ");
  // y = x * σ(s)
  const std::size_t n = x.numel();
  xt::xarray<T> y = xt::xarray<T>::from_shape(x.value().shape());
  TG_KERNEL(sigmoid_gate_forward)(n, x.value().data(), s.value().data(), y.data());
  Tensor<T> out(std::move(y));
  detail::check_forward(out, "sigmoid_gate", {&x, &s});
  if (needs_grad<T>({&x, &s}))
    attach<T>(out, "sigmoid_gate", {x, s}, [x, s, n](const xt::xarray<T>& dy) {
      // dx = dy * σ(s),  ds = dy * x * σ(s)(1 - σ(s)); added straight into the grad buffers
      T* dx = x.requires_grad() ? x.grad_for_accumulation().data() : nullptr;
      T* ds = s.requires_grad() ? s.grad_for_accumulation().data() : nullptr;
      TG_KERNEL(sigmoid_gate_backward)(n, x.value().data(), s.value().data(), dy.data(), dx, ds);
    }).vjp = [x, s](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      Tensor<T> sg = sigmoid(s);
      return {grad_if(x, [&] { return dy * sg; }), grad_if(s, [&] { return dy * x * (sg * (1.0 - sg)); })};
    };
  return out;
}

template <class T>
Tensor<T> dropout(const Tensor<T>& x, Scalar<T> p, Generator& gen, bool training) {
  detail::require_defined(x, "dropout", "x");
  if (!(p >= T(0) && p <= T(1))) fail("dropout: p = " + std::to_string(p) + " is outside [0, 1]");
  if (!training || p == T(0)) return x;
  // y = x * mask / (1-p), mask ~ Bernoulli(1-p); p == 1 drops everything
  const T keep_scale = p < T(1) ? T(1) / (T(1) - p) : T(0);
  auto mask = std::make_shared<xt::xarray<T>>(xt::xarray<T>::from_shape(x.value().shape()));
  for (auto& m : *mask) m = gen.uniform() >= double(p) ? keep_scale : T(0);
  Tensor<T> out(xt::xarray<T>(x.value() * *mask));
  if (needs_grad<T>({&x}))
    attach<T>(out, "dropout", {x}, [x, mask](const xt::xarray<T>& dy) {
      // dx = dy * mask / (1-p)
      x.accumulate_grad(xt::xarray<T>(dy * *mask), "dropout");
    }, "p=" + std::to_string(p)).vjp = [mask](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      return {dy * constant(xt::xarray<T>(*mask))};
    };
  return out;
}

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

// ---- top-k -------------------------------------------------------------------------------

template <class T>
Tensor<T> topk(const Tensor<T>& x, std::size_t kk, Index* indices) {
  detail::require_defined(x, "topk", "x");
  const Shape sx = x.shape();
  if (sx.empty()) fail("topk: x must have at least one dimension");
  const std::size_t n = sx.back(), rows = prod(sx, 0, sx.size() - 1);
  if (kk == 0 || kk > n) fail("topk: k = " + std::to_string(kk) + " for a last axis of " + std::to_string(n) + " in " + shape_to_string(sx));
  Shape so = sx;
  so.back() = kk;
  xt::xarray<T> y = xt::xarray<T>::from_shape(so);
  Index idx = Index::from_shape(so);
  std::vector<std::size_t> order(n);
  for (std::size_t r = 0; r < rows; ++r) {
    const T* row = x.value().data() + r * n;
    std::iota(order.begin(), order.end(), 0);
    // descending; ties keep the lower index first
    std::stable_sort(order.begin(), order.end(), [row](std::size_t a, std::size_t b) { return row[a] > row[b]; });
    for (std::size_t j = 0; j < kk; ++j) {
      y.data()[r * kk + j] = row[order[j]];
      idx.data()[r * kk + j] = static_cast<std::int64_t>(order[j]);
    }
  }
  if (indices) *indices = idx;
  Tensor<T> out(std::move(y));
  if (needs_grad<T>({&x}))
    attach<T>(out, "topk", {x}, [x, idx, rows, n, kk](const xt::xarray<T>& dy) {
      // dx[r, idx[r,j]] += dy[r, j]
      xt::xarray<T> dx = xt::zeros<T>(x.value().shape());
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t j = 0; j < kk; ++j) dx.data()[r * n + idx.data()[r * kk + j]] += dy.data()[r * kk + j];
      x.accumulate_grad(std::move(dx), "topk");
    }, "k=" + std::to_string(kk)).vjp = [idx, sx, rows, n, kk](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      // dx = dy scattered to the chosen positions: index_add over the flattened x
      Index flat = Index::from_shape({rows * kk});
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t j = 0; j < kk; ++j) flat(r * kk + j) = std::int64_t(r * n) + idx.data()[r * kk + j];
      return {reshape(index_add(rows * n, flat, reshape(dy, {-1})), dims_of(sx))};
    };
  return out;
}

#define TG_INSTANTIATE(T)                                                                                   \
  template Tensor<T> softmax<T>(const Tensor<T>&, int);                                                     \
  template Tensor<T> log_softmax<T>(const Tensor<T>&, int);                                                 \
  template Tensor<T> cross_entropy<T>(const Tensor<T>&, const Index&, std::int64_t, Reduction);             \
  template Tensor<T> embedding<T>(const Index&, const Tensor<T>&);                                          \
  template Tensor<T> rmsnorm<T>(const Tensor<T>&, const Tensor<T>&, T);                                     \
  template Tensor<T> layernorm<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, T);                 \
  template Tensor<T> swiglu<T>(const Tensor<T>&, const Tensor<T>&);                                         \
  template Tensor<T> sigmoid_gate<T>(const Tensor<T>&, const Tensor<T>&);                                   \
  template Tensor<T> attention_cached<T>(const Tensor<T>&, const xt::xarray<T>&, const xt::xarray<T>&, std::size_t, xt::xarray<T>*); \
  template Tensor<T> dropout<T>(const Tensor<T>&, T, Generator&, bool);                                     \
  template RopeTable<T> rope_table<T>(std::size_t, std::size_t, double, const std::optional<YarnScaling>&); \
  template Tensor<T> rope<T>(const Tensor<T>&, const RopeTable<T>&, std::size_t);                           \
  template Tensor<T> attention<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, std::optional<double>,   \
                                  xt::xarray<T>*);                                                          \
  template Tensor<T> attention_reference<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,           \
                                            std::optional<double>);                                         \
  template Tensor<T> topk<T>(const Tensor<T>&, std::size_t, Index*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
