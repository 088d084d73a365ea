// autograd/functional.hpp — gradients as functions: grad(), and on top of it
// Hessian-vector products (hvp) and Jacobian-vector products (jvp).
//
// What it is for: derivatives that are themselves differentiable. grad() walks the tape
// like Tensor::backward(), but runs each node's differentiable backward (`vjp`, see
// Note [Differentiable backward] in tape.hpp) and returns the gradients as Tensors
// instead of adding arrays into `.grad`. With create_graph the ops of those backwards
// are recorded, so a gradient can be differentiated again: a gradient penalty, a Newton
// step, hvp, jvp. Nothing here touches any tensor's `.grad`.
//
// What it is not: the training path. Tensor::backward() without create_graph runs the
// fast fused backward closures and records nothing; this file is the slower, general one.
//
// Forward mode: jvp() uses the double-vjp trick, not dual numbers: with u a dummy
// cotangent, g(u) = uᵀJ is linear in u, so d(gᵀv)/du = J v. It costs two reverse passes
// and needs every op of f to have a differentiable backward — which every op of
// autograd/ops.hpp has.
#pragma once

#include <functional>
#include <vector>

#include "autograd/tape.hpp"
#include "autograd/tensor.hpp"

namespace tg {

// The gradients of Σ_i <grad_outputs[i], outputs[i]> with respect to each of `inputs`
// (torch.autograd.grad). grad_outputs may be empty when every output has one element
// (seeds of 1). create_graph records the backward so the results can be differentiated
// again (they then require grad when they depend on anything that does). An input the
// outputs do not depend on is an error, or an undefined Tensor with allow_unused.
// Inputs may be leaves or intermediates; they must require grad.
template <class T>
std::vector<Tensor<T>> grad(const std::vector<Tensor<T>>& outputs, const std::vector<Tensor<T>>& inputs,
                            const std::vector<Tensor<T>>& grad_outputs = {}, bool create_graph = false,
                            bool allow_unused = false);

template <class T>
using TensorFn = std::function<Tensor<T>(const std::vector<Tensor<T>>&)>;

// Vector-Jacobian product vᵀ J of f at x: one gradient per input (zeros where f does not
// depend on it).
template <class T>
std::vector<Tensor<T>> vjp(const TensorFn<T>& f, const std::vector<Tensor<T>>& x, const Tensor<T>& v,
                           bool create_graph = false);

// Hessian-vector product H v of a one-element f at x: d/dx <∇f(x), v>, by two reverse
// passes (the first with create_graph). v has one tensor per input, of its shape.
template <class T>
std::vector<Tensor<T>> hvp(const TensorFn<T>& f, const std::vector<Tensor<T>>& x, const std::vector<Tensor<T>>& v,
                           bool create_graph = false);

// Jacobian-vector product J v of f at x (forward mode by the double-vjp trick, see the
// header comment): the directional derivative of f along v, of f's output shape.
template <class T>
Tensor<T> jvp(const TensorFn<T>& f, const std::vector<Tensor<T>>& x, const std::vector<Tensor<T>>& v,
              bool create_graph = false);

namespace detail {
// Tensor::backward(seed, create_graph=true): the differentiable walk, its results added
// to the leaves' gradients (grad and grad_tensor()).
template <class T>
void backward_create_graph(const Tensor<T>& root, const Tensor<T>& seed);

// The vjp of a fused op by its reference form: records ref() (a composition of simpler
// ops over `inputs`), then walks just those new nodes back from its output with dout.
// The gradients are differentiable when grad mode is on (inside create_graph), plain
// values otherwise. One result per input (undefined where not needed).
template <class T>
Grads<T> vjp_of(const std::function<Tensor<T>()>& ref, const std::vector<Tensor<T>>& inputs, const Tensor<T>& dout);
}  // namespace detail

}  // namespace tg
