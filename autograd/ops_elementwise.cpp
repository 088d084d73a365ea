// autograd/ops_elementwise.cpp — broadcasting binary ops and unary functions,
// each forward with its backward right below it.
#include <cmath>

#include <xtensor/xbroadcast.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xoperation.hpp>
#include <xtensor/xreducer.hpp>
#include <xtensor/xview.hpp>

#include "autograd/kernels/dispatch.hpp"
#include "autograd/kernels/elementwise.hpp"
#include "autograd/ops_common.hpp"

namespace tg {

using namespace detail;  // the helpers of autograd/ops_common.hpp

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  std::size_t n = std::max(a.size(), b.size());
  Shape r(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::size_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    std::size_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      fail(std::string(op) + ": shapes " + shape_to_string(a) + " and " + shape_to_string(b) +
           " cannot be broadcast (axis " + std::to_string(i) + ": " + std::to_string(da) + " vs " +
           std::to_string(db) + ")");
    r[i] = std::max(da, db);
  }
  return r;
}

// Note [sum_to]
// Broadcasting in forward copies an input along the axes it lacks (leading axes) or
// has as size 1. The gradient of a copy is the sum of the gradients of the copies, so
// backward sums g over exactly those axes. Every broadcasting op ends its backward with
// sum_to(g, input shape) — except add/sub/mul/div, whose broadcasting backward kernel
// (kernels::binary_broadcast_backward) forms each term and sums it over those same axes
// in one pass, without the full-size product that sum_to would reduce.
template <class T>
xt::xarray<T> sum_to(const xt::xarray<T>& g, const Shape& shape) {
  Shape gs = to_shape(g.shape());
  if (gs == shape) return g;
  if (shape.size() > gs.size())
    throw std::logic_error("sum_to: cannot reduce " + shape_to_string(gs) + " to the larger rank " +
                           shape_to_string(shape));
  std::size_t lead = gs.size() - shape.size();
  std::vector<std::size_t> axes;
  for (std::size_t i = 0; i < gs.size(); ++i) {
    if (i < lead) axes.push_back(i);
    else if (shape[i - lead] == 1 && gs[i] != 1) axes.push_back(i);
    else if (shape[i - lead] != gs[i])
      throw std::logic_error("sum_to: gradient " + shape_to_string(gs) + " does not broadcast from " +
                             shape_to_string(shape));
  }
  xt::xarray<T> r = detail::reduce_sum_keepdims(g, axes);
  r.reshape(shape);
  return r;
}

namespace {

std::vector<int64_t> to_dims(const Shape& s) { return std::vector<int64_t>(s.begin(), s.end()); }

// Shared skeleton of the four broadcasting binary ops: forward z = a op b, backward the
// terms of kernels::binary_backward (spelled out at each op below), each summed back to
// its input's shape (Note [sum_to]). Equal shapes (the common case) run on
// kernels::binary_forward / binary_backward; broadcasting shapes on
// kernels::binary_broadcast_forward / binary_broadcast_backward, which read a and b in
// place through strides that are 0 on their broadcast axes.
// `vjp` is the op's differentiable backward (Note [Differentiable backward]), given to
// the node as it is recorded.
template <class T, class Vjp>
Tensor<T> binary(const char* op, kernels::Binary kind, const Tensor<T>& a, const Tensor<T>& b, Vjp&& vjp) {
  detail::require_defined(a, op, "a");
  detail::require_defined(b, op, "b");
  const Shape sa = a.shape(), sb = b.shape();
  const Shape sz = broadcast_shapes(sa, sb, op);  // throws with a clear message
  if (sa == sb) {
    xt::xarray<T> z = xt::xarray<T>::from_shape(sa);
    TG_KERNEL(binary_forward)(kind, z.size(), a.value().data(), b.value().data(), z.data());
    Tensor<T> out(std::move(z));
    detail::check_forward(out, op, {&a, &b});
    if (needs_grad<T>({&a, &b}))
      attach<T>(out, op, {a, b}, [a, b, kind, op](const xt::xarray<T>& dz) {
        xt::xarray<T> da, db;
        if (a.requires_grad()) da = xt::zeros<T>(dz.shape());
        if (b.requires_grad()) db = xt::zeros<T>(dz.shape());
        TG_KERNEL(binary_backward)(kind, dz.size(), a.value().data(), b.value().data(), dz.data(),
                                   a.requires_grad() ? da.data() : nullptr, b.requires_grad() ? db.data() : nullptr);
        if (a.requires_grad()) a.accumulate_grad(std::move(da), op);
        if (b.requires_grad()) b.accumulate_grad(std::move(db), op);
      }).vjp = std::forward<Vjp>(vjp);
    return out;
  }
  // Broadcasting: z is sz; a and b are read through their strides over z's axes.
  const int rank = static_cast<int>(sz.size());
  const std::vector<int64_t> dz_dims = to_dims(sz), a_dims = to_dims(sa), b_dims = to_dims(sb);
  std::vector<int64_t> a_strides(sz.size()), b_strides(sz.size());
  kernels::broadcast_strides(rank, dz_dims.data(), static_cast<int>(sa.size()), a_dims.data(), a_strides.data());
  kernels::broadcast_strides(rank, dz_dims.data(), static_cast<int>(sb.size()), b_dims.data(), b_strides.data());
  xt::xarray<T> z = xt::xarray<T>::from_shape(sz);
  TG_KERNEL(binary_broadcast_forward)(kind, rank, dz_dims.data(), a_strides.data(), b_strides.data(),
                                      a.value().data(), b.value().data(), z.data());
  Tensor<T> out(std::move(z));
  detail::check_forward(out, op, {&a, &b});
  if (needs_grad<T>({&a, &b}))
    attach<T>(out, op, {a, b}, [a, b, kind, op, sa, sb, dz_dims, a_strides, b_strides](const xt::xarray<T>& dz) {
      // da is sa and db is sb, both written whole by the kernel (summed over the axes
      // their input was broadcast along).
      xt::xarray<T> da, db;
      if (a.requires_grad()) da = xt::xarray<T>::from_shape(sa);
      if (b.requires_grad()) db = xt::xarray<T>::from_shape(sb);
      TG_KERNEL(binary_broadcast_backward)(kind, static_cast<int>(dz_dims.size()), dz_dims.data(),
                                           a_strides.data(), b_strides.data(), a.value().data(),
                                           b.value().data(), dz.data(), a.requires_grad() ? da.data() : nullptr,
                                           b.requires_grad() ? db.data() : nullptr);
      if (a.requires_grad()) a.accumulate_grad(std::move(da), op);
      if (b.requires_grad()) b.accumulate_grad(std::move(db), op);
    }).vjp = std::forward<Vjp>(vjp);
  return out;
}

}  // namespace

// The four binary ops: forward and backward formula side by side. The backward is
// written twice: as ops (the lambda each passes, the differentiable backward of
// create_graph), and as the fast loops of the kernels named in binary() above.

template <class T>
Tensor<T> add(const Tensor<T>& a, const Tensor<T>& b) {
  // z = a + b
  // da = sum_to(dz, shape of a),  db = sum_to(dz, shape of b)
  return binary<T>("add", kernels::Binary::Add, a, b, [a, b](const Tensor<T>&, const Tensor<T>& dz) -> Grads<T> {
    return {grad_if(a, [&] { return sum_to(dz, a.shape()); }), grad_if(b, [&] { return sum_to(dz, b.shape()); })};
  });
}

template <class T>
Tensor<T> sub(const Tensor<T>& a, const Tensor<T>& b) {
  // z = a - b
  // da = sum_to(dz, shape of a),  db = sum_to(-dz, shape of b)
  return binary<T>("sub", kernels::Binary::Sub, a, b, [a, b](const Tensor<T>&, const Tensor<T>& dz) -> Grads<T> {
    return {grad_if(a, [&] { return sum_to(dz, a.shape()); }), grad_if(b, [&] { return sum_to(-dz, b.shape()); })};
  });
}

template <class T>
Tensor<T> mul(const Tensor<T>& a, const Tensor<T>& b) {
  // z = a * b
  // da = sum_to(dz * b, shape of a),  db = sum_to(dz * a, shape of b)
  return binary<T>("mul", kernels::Binary::Mul, a, b, [a, b](const Tensor<T>&, const Tensor<T>& dz) -> Grads<T> {
    return {grad_if(a, [&] { return sum_to(dz * b, a.shape()); }), grad_if(b, [&] { return sum_to(dz * a, b.shape()); })};
  });
}

template <class T>
Tensor<T> div(const Tensor<T>& a, const Tensor<T>& b) {
  // z = a / b
  // da = sum_to(dz / b, shape of a),  db = sum_to(-(dz / b) * a / b, shape of b)
  return binary<T>("div", kernels::Binary::Div, a, b, [a, b](const Tensor<T>&, const Tensor<T>& dz) -> Grads<T> {
    return {grad_if(a, [&] { return sum_to(dz / b, a.shape()); }),
            grad_if(b, [&] { return sum_to(-(dz / b) * a / b, b.shape()); })};
  });
}

template <class T>
Tensor<T> neg(const Tensor<T>& a) {
  // z = -a;  da = -dz
  detail::require_defined(a, "neg", "a");
  Tensor<T> out(xt::xarray<T>(-a.value()));
  if (needs_grad<T>({&a}))
    attach<T>(out, "neg", {a}, [a](const xt::xarray<T>& dz) { a.accumulate_grad(xt::xarray<T>(-dz), "neg"); })
        .vjp = [](const Tensor<T>&, const Tensor<T>& dz) -> Grads<T> { return {-dz}; };
  return out;
}

template <class T>
Tensor<T> add_scalar(const Tensor<T>& a, Scalar<T> s) {
  // z = a + s;  da = dz
  detail::require_defined(a, "add_scalar", "a");
  Tensor<T> out(xt::xarray<T>(a.value() + s));
  if (needs_grad<T>({&a}))
    attach<T>(out, "add_scalar", {a}, [a](const xt::xarray<T>& dz) { a.accumulate_grad(dz, "add_scalar"); },
              "s=" + std::to_string(s))
        .vjp = [](const Tensor<T>&, const Tensor<T>& dz) -> Grads<T> { return {dz}; };
  return out;
}

template <class T>
Tensor<T> mul_scalar(const Tensor<T>& a, Scalar<T> s) {
  // z = a * s;  da = dz * s
  detail::require_defined(a, "mul_scalar", "a");
  Tensor<T> out(xt::xarray<T>(a.value() * s));
  if (needs_grad<T>({&a}))
    attach<T>(out, "mul_scalar", {a},
              [a, s](const xt::xarray<T>& dz) { a.accumulate_grad(xt::xarray<T>(dz * s), "mul_scalar"); },
              "s=" + std::to_string(s))
        .vjp = [s](const Tensor<T>&, const Tensor<T>& dz) -> Grads<T> { return {dz * s}; };
  return out;
}

// ---- unary functions ----------------------------------------------------------------
// One skeleton for all: forward y = f(x); backward dx += dy * f'(x, y). The fast loops are
// kernels::unary_forward / unary_backward (xsimd + OpenMP), whose naive twins spell out
// each f and f' as plain scalar code (autograd/kernels/unary.cpp); the derivative
// f' as ops, the differentiable backward, is the lambda each op below passes (it gets the
// output y and dy).
namespace {

using U = kernels::Unary;

template <class T, class Vjp>
Tensor<T> unary(const char* op, U kind, const Tensor<T>& x, Vjp&& vjp) {
  detail::require_defined(x, op, "x");
  const xt::xarray<T>& xv = x.value();
  xt::xarray<T> y = xt::xarray<T>::from_shape(xv.shape());
  TG_KERNEL(unary_forward)(kind, xv.size(), xv.data(), y.data());
  Tensor<T> out(std::move(y));
  detail::check_forward(out, op, {&x});
  if (needs_grad<T>({&x})) {
    std::weak_ptr<TensorImpl<T>> out_w = out.impl();  // the output owns the node: hold it weakly
    attach<T>(out, op, {x}, [x, kind, out_w, op](const xt::xarray<T>& dy) {
      auto o = out_w.lock();
      xt::xarray<T> dx = xt::zeros<T>(dy.shape());
      TG_KERNEL(unary_backward)(kind, dy.size(), x.value().data(), o->value.data(), dy.data(), dx.data());
      x.accumulate_grad(std::move(dx), op);
    }).vjp = std::forward<Vjp>(vjp);
  }
  return out;
}

// Φ(x), the standard normal CDF, as an op of its own: the derivative of gelu's erf form
// needs it differentiable.  y = (1 + erf(x/√2)) / 2;  dx = dy * φ(x), φ(x) = e^(-x²/2)/√(2π)
template <class T>
Tensor<T> normal_cdf(const Tensor<T>& x) {
  auto phi = [](const Tensor<T>& x) { return exp(x * x * -0.5) * 0.3989422804014327; };
  Tensor<T> out(xt::xarray<T>(T(0.5) * (T(1) + xt::erf(x.value() * T(0.7071067811865476)))));
  if (needs_grad<T>({&x}))
    attach<T>(out, "normal_cdf", {x}, [x, phi](const xt::xarray<T>& dy) {
      x.accumulate_grad(xt::xarray<T>(dy * (phi(x.detach()).value())), "normal_cdf");
    }).vjp = [x, phi](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> { return {dy * phi(x)}; };
  return out;
}

}  // namespace

// y = e^x;  dx = dy * y
template <class T> Tensor<T> exp(const Tensor<T>& x) {
  return unary("exp", U::Exp, x, [](const Tensor<T>& y, const Tensor<T>& dy) -> Grads<T> { return {dy * y}; });
}
// y = ln x;  dx = dy / x
template <class T> Tensor<T> log(const Tensor<T>& x) {
  return unary("log", U::Log, x, [x](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> { return {dy / x}; });
}
// y = √x;  dx = dy / (2y)
template <class T> Tensor<T> sqrt(const Tensor<T>& x) {
  return unary("sqrt", U::Sqrt, x, [](const Tensor<T>& y, const Tensor<T>& dy) -> Grads<T> { return {dy / (y * 2.0)}; });
}
// y = 1/√x;  dx = -dy * y³ / 2
template <class T> Tensor<T> rsqrt(const Tensor<T>& x) {
  return unary("rsqrt", U::Rsqrt, x,
               [](const Tensor<T>& y, const Tensor<T>& dy) -> Grads<T> { return {dy * (y * y * y) * -0.5}; });
}
// y = |x|;  dx = dy * sign(x)  (a constant: the second derivative is 0 away from 0)
template <class T> Tensor<T> abs(const Tensor<T>& x) {
  return unary("abs", U::Abs, x, [x](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
    const auto& v = x.value();
    return {dy * constant_of<T>(xt::where(v > T(0), T(1), xt::where(v < T(0), T(-1), T(0))))};
  });
}
// y = max(x, 0);  dx = dy * [x > 0]
template <class T> Tensor<T> relu(const Tensor<T>& x) {
  return unary("relu", U::Relu, x, [x](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
    return {dy * constant_of<T>(xt::where(x.value() > T(0), T(1), T(0)))};
  });
}
// y = σ(x);  dx = dy * y(1 - y)
template <class T> Tensor<T> sigmoid(const Tensor<T>& x) {
  return unary("sigmoid", U::Sigmoid, x,
               [](const Tensor<T>& y, const Tensor<T>& dy) -> Grads<T> { return {dy * (y * (1.0 - y))}; });
}
// y = tanh x;  dx = dy * (1 - y²)
template <class T> Tensor<T> tanh(const Tensor<T>& x) {
  return unary("tanh", U::Tanh, x, [](const Tensor<T>& y, const Tensor<T>& dy) -> Grads<T> { return {dy * (1.0 - y * y)}; });
}
// y = x σ(x);  dx = dy * σ(x)(1 + x(1 - σ(x)))
template <class T> Tensor<T> silu(const Tensor<T>& x) {
  return unary("silu", U::Silu, x, [x](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
    Tensor<T> s = sigmoid(x);
    return {dy * (s * (1.0 + x * (1.0 - s)))};
  });
}
template <class T>
Tensor<T> gelu(const Tensor<T>& x, GeluApprox approx) {
  if (approx == GeluApprox::Erf)
    // y = x Φ(x);  dx = dy * (Φ(x) + x φ(x))
    return unary("gelu", U::GeluErf, x, [x](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      return {dy * (normal_cdf(x) + x * exp(x * x * -0.5) * 0.3989422804014327)};
    });
  // y = x/2 (1 + t), t = tanh(c(x + a x³)), c = √(2/π), a = 0.044715;
  // dx = dy * (0.5(1 + t) + 0.5 x (1 - t²) c (1 + 3a x²))
  return unary("gelu_tanh", U::GeluTanh, x, [x](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
    const double c = 0.7978845608028654, a = 0.044715;
    Tensor<T> t = tanh((x + x * x * x * a) * c);
    return {dy * ((1.0 + t) * 0.5 + x * (1.0 - t * t) * (1.0 + x * x * (3 * a)) * (0.5 * c))};
  });
}

template <class T>
Tensor<T> pow(const Tensor<T>& x, Scalar<T> p) {
  // y = x^p
  detail::require_defined(x, "pow", "x");
  Tensor<T> out(xt::xarray<T>(xt::pow(x.value(), p)));
  detail::check_forward(out, "pow", {&x});
  if (needs_grad<T>({&x}))
    // dx = dy * p * x^(p-1)
    attach<T>(out, "pow", {x}, [x, p](const xt::xarray<T>& dy) {
      x.accumulate_grad(xt::xarray<T>(dy * p * xt::pow(x.value(), p - T(1))), "pow");
    }, "p=" + std::to_string(p)).vjp = [x, p](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      return {dy * pow(x, T(p - T(1))) * p};
    };
  return out;
}

template <class T>
Tensor<T> clamp(const Tensor<T>& x, Scalar<T> lo, Scalar<T> hi) {
  // y = min(max(x, lo), hi)
  detail::require_defined(x, "clamp", "x");
  if (lo > hi) fail("clamp: lo " + std::to_string(lo) + " > hi " + std::to_string(hi));
  Tensor<T> out(xt::xarray<T>(xt::clip(x.value(), lo, hi)));
  if (needs_grad<T>({&x}))
    // dx = dy where lo <= x <= hi
    attach<T>(out, "clamp", {x}, [x, lo, hi](const xt::xarray<T>& dy) {
      x.accumulate_grad(xt::xarray<T>(xt::where((x.value() >= lo) && (x.value() <= hi), dy, T(0))), "clamp");
    }).vjp = [x, lo, hi](const Tensor<T>&, const Tensor<T>& dy) -> Grads<T> {
      return {dy * constant_of<T>(xt::where((x.value() >= lo) && (x.value() <= hi), T(1), T(0)))};
    };
  return out;
}

#define TG_INSTANTIATE(T)                                                          \
  template xt::xarray<T> sum_to<T>(const xt::xarray<T>&, const Shape&);            \
  template Tensor<T> add<T>(const Tensor<T>&, const Tensor<T>&);                   \
  template Tensor<T> sub<T>(const Tensor<T>&, const Tensor<T>&);                   \
  template Tensor<T> mul<T>(const Tensor<T>&, const Tensor<T>&);                   \
  template Tensor<T> div<T>(const Tensor<T>&, const Tensor<T>&);                   \
  template Tensor<T> neg<T>(const Tensor<T>&);                                     \
  template Tensor<T> add_scalar<T>(const Tensor<T>&, T);                           \
  template Tensor<T> mul_scalar<T>(const Tensor<T>&, T);                           \
  template Tensor<T> exp<T>(const Tensor<T>&);                                     \
  template Tensor<T> log<T>(const Tensor<T>&);                                     \
  template Tensor<T> sqrt<T>(const Tensor<T>&);                                    \
  template Tensor<T> rsqrt<T>(const Tensor<T>&);                                   \
  template Tensor<T> abs<T>(const Tensor<T>&);                                     \
  template Tensor<T> relu<T>(const Tensor<T>&);                                    \
  template Tensor<T> sigmoid<T>(const Tensor<T>&);                                 \
  template Tensor<T> tanh<T>(const Tensor<T>&);                                    \
  template Tensor<T> silu<T>(const Tensor<T>&);                                    \
  template Tensor<T> gelu<T>(const Tensor<T>&, GeluApprox);                        \
  template Tensor<T> pow<T>(const Tensor<T>&, T);                                  \
  template Tensor<T> clamp<T>(const Tensor<T>&, T, T);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
