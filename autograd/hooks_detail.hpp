// autograd/hooks_detail.hpp — running a tensor's gradient hooks (Note [Gradient hooks] in
// tensor.hpp), shared by the two walks that run them: Tape::run_backward's (tape.cpp, on
// plain arrays) and grad()'s (functional.cpp, on Tensors, which may be differentiable).
// Internal: included by those two files only.
#pragma once

#include <algorithm>
#include <stdexcept>
#include <string>

#include "autograd/tensor.hpp"

namespace tg::detail {

// Each hook of t in turn (a copy of the list: a hook may remove itself) may replace g by a
// gradient of t's shape; a hook that returns an undefined Tensor leaves g as it is.
template <class T>
Tensor<T> run_grad_hooks(const TensorImpl<T>& t, Tensor<T> g) {
  const auto hooks = t.hooks;
  for (const auto& [id, fn] : hooks) {
    Tensor<T> r = fn(g);
    if (!r.defined()) continue;
    if (!std::equal(r.value().shape().begin(), r.value().shape().end(), t.value.shape().begin(), t.value.shape().end()))
      throw std::logic_error("gradient hook " + std::to_string(id) + " on tensor " +
                             (t.name.empty() ? std::string() : "'" + t.name + "' ") + "of shape " +
                             shape_to_string(t.value.shape()) + " returned a gradient of shape " + r.shape_str());
    g = r;
  }
  return g;
}

}  // namespace tg::detail
