// autograd/ops_common.hpp — small helpers shared by the ops_*.cpp files (not public API).
#pragma once

#include <algorithm>
#include <sstream>
#include <stdexcept>
#include <string>

#include <xtensor/xarray.hpp>
#include <xtensor/xmath.hpp>

#include "autograd/ops.hpp"

namespace tg::detail {

// Normalise a possibly negative axis against rank n; error names the op and shape.
inline std::size_t norm_axis(int axis, std::size_t n, const char* op, const Shape& shape) {
  int a = axis < 0 ? axis + static_cast<int>(n) : axis;
  if (a < 0 || a >= static_cast<int>(n))
    throw std::invalid_argument(std::string(op) + ": axis " + std::to_string(axis) +
                                " is out of range for shape " + shape_to_string(shape));
  return static_cast<std::size_t>(a);
}

template <class S>
Shape to_shape(const S& s) { return Shape(s.begin(), s.end()); }

inline std::size_t prod(const Shape& s, std::size_t from = 0, std::size_t to = std::size_t(-1)) {
  std::size_t p = 1;
  for (std::size_t i = from; i < s.size() && i < to; ++i) p *= s[i];
  return p;
}

// Sum of x over the given axes, keeping them as size 1 (plain loops, one axis at a time,
// the last axis first, summing in T; xtensor's immediate reducers are avoided on purpose:
// they crash on 0-d results in 0.24). The first axis is reduced straight from x, so x is
// never copied whole.
template <class T>
xt::xarray<T> reduce_sum_keepdims(const xt::xarray<T>& x, std::vector<std::size_t> axes) {
  if (axes.empty()) return x;
  std::sort(axes.begin(), axes.end());
  Shape s = to_shape(x.shape());
  xt::xarray<T> cur;  // the sum over the axes done so far (none yet: x itself)
  for (auto it = axes.rbegin(); it != axes.rend(); ++it) {
    const std::size_t a = *it, outer = prod(s, 0, a), n = s[a], inner = prod(s, a + 1);
    Shape so = s;
    so[a] = 1;
    xt::xarray<T> r = xt::zeros<T>(so);
    const T* src = it == axes.rbegin() ? x.data() : cur.data();
    T* dst = r.data();
    for (std::size_t o = 0; o < outer; ++o)
      for (std::size_t k = 0; k < n; ++k)
        for (std::size_t i = 0; i < inner; ++i) dst[o * inner + i] += src[(o * n + k) * inner + i];
    cur = std::move(r);
    s = std::move(so);
  }
  return cur;
}

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

template <class T>
void require_defined(const Tensor<T>& t, const char* op, const char* arg) {
  if (!t.defined()) fail(std::string(op) + ": argument '" + arg + "' is an undefined tensor");
}

// ---- for the differentiable backwards (Note [Differentiable backward] in tape.hpp) ----

// A tensor that needs no gradient (a mask, a one-hot, a table) inside a vjp.
template <class T>
Tensor<T> constant(xt::xarray<T> v) { return Tensor<T>(std::move(v)); }
template <class T, class E>
Tensor<T> constant_of(const E& expr) { return Tensor<T>(xt::xarray<T>(expr)); }

// f() when x is defined and needs a gradient; an undefined tensor (no gradient) otherwise.
template <class T, class F>
Tensor<T> grad_if(const Tensor<T>& x, F&& f) {
  return x.defined() && x.requires_grad() ? Tensor<T>(f()) : Tensor<T>();
}

// A Shape as the signed sizes reshape() takes.
inline std::vector<std::int64_t> dims_of(const Shape& s) { return std::vector<std::int64_t>(s.begin(), s.end()); }

// In anomaly mode, check a forward result; the message names the inputs' shapes and the
// module the op ran in (Note [Anomaly mode] in autograd/tape.hpp).
template <class T>
void check_forward(const Tensor<T>& out, const char* op, std::initializer_list<const Tensor<T>*> inputs = {}) {
  if (!anomaly_mode()) return;
  std::vector<Shape> shapes;
  for (const Tensor<T>* t : inputs)
    if (t && t->defined()) shapes.push_back(t->shape());
  check_finite(out.value(), op, "output", anomaly_context(shapes, current_scope()));
}

}  // namespace tg::detail
