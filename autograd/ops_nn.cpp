// autograd/ops_nn.cpp — the fused ops of neural networks: softmax, log_softmax,
// cross-entropy, embedding, RMSNorm, LayerNorm, SwiGLU, the sigmoid gate, dropout, top-k
// (RoPE and attention: ops_attention.cpp).
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

using namespace detail;  // the helpers of autograd/ops_common.hpp

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
      // dx = dy * σ(s),  ds = dy * x * σ(s)(1 - σ(s)); the kernel adds into zeroed buffers
      // (Note [Gradient buffers] in tensor.cpp)
      xt::xarray<T> dx, ds;
      if (x.requires_grad()) dx = xt::zeros<T>(x.value().shape());
      if (s.requires_grad()) ds = xt::zeros<T>(s.value().shape());
      TG_KERNEL(sigmoid_gate_backward)(n, x.value().data(), s.value().data(), dy.data(),
                                       x.requires_grad() ? dx.data() : nullptr, s.requires_grad() ? ds.data() : nullptr);
      if (x.requires_grad()) x.accumulate_grad(std::move(dx), "sigmoid_gate");
      if (s.requires_grad()) s.accumulate_grad(std::move(ds), "sigmoid_gate");
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
  template Tensor<T> dropout<T>(const Tensor<T>&, T, Generator&, bool);                                     \
  template Tensor<T> topk<T>(const Tensor<T>&, std::size_t, Index*);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
