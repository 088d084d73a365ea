// autograd/tensor.hpp — the Tensor handle: a value, its gradient, and the node that made it.
//
// What it is for: the one data type of tapegrad. A Tensor<T> (T = float or double) is a
// cheap, copyable handle to shared state (TensorImpl): the value as an xt::xarray<T>
// (row-major, contiguous), the accumulated gradient, the requires_grad flag, and a
// pointer to the tape node that computed it (none for leaves). Copying a Tensor copies
// the handle, not the data — exactly like a PyTorch tensor or a shared_ptr.
//
// What it is not: the graph machinery (autograd/tape.hpp) or the operations
// (autograd/ops.hpp). This file only creates, inspects and prints tensors.
//
// Reading order: tensor.hpp -> tape.hpp -> ops.hpp (+ ops_*.cpp) -> gradcheck.hpp.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>

namespace tg {

using Shape = std::vector<std::size_t>;

template <class T> struct Node;
template <class T> class Tensor;

// A gradient hook (Tensor::register_hook): called with a tensor's gradient once backward
// has all of it; returns a replacement of the same shape, or an undefined Tensor to keep it.
template <class T>
using GradHook = std::function<Tensor<T>(const Tensor<T>& grad)>;

// A seeded random generator. Everything random in tapegrad (randn, dropout masks,
// initialisation, batches) draws from an explicit Generator, so runs are reproducible.
class Generator {
 public:
  explicit Generator(std::uint64_t seed = 0) : engine_(seed) {}
  std::mt19937_64& engine() { return engine_; }
  double normal(double mean = 0.0, double std = 1.0);
  double uniform(double lo = 0.0, double hi = 1.0);
  std::uint64_t next_u64() { return engine_(); }

 private:
  std::mt19937_64 engine_;
};

// The shared state behind a Tensor handle.
template <class T>
struct TensorImpl {
  xt::xarray<T> value;
  xt::xarray<T> grad;            // meaningful only when has_grad
  bool has_grad = false;
  bool requires_grad = false;
  std::shared_ptr<Node<T>> grad_fn;  // the node that computed this tensor; null for leaves
  bool had_grad_fn = false;          // set when a node was attached (to detect a freed graph)
  std::string name;                  // optional, shown in tape dumps
  // After backward(..., create_graph=true): the gradient as a tensor with a graph of its
  // own (grad holds its value). Null otherwise. See grad_tensor().
  std::shared_ptr<TensorImpl<T>> grad_graph;
  // Tensor::register_hook, in registration order, with their ids (remove_hook).
  std::vector<std::pair<std::uint64_t, GradHook<T>>> hooks;
};

template <class T>
class Tensor {
 public:
  using value_type = T;
  using array = xt::xarray<T>;

  // An undefined tensor (no storage). Most functions reject it with a clear error.
  Tensor() = default;
  // Wrap an existing array (moved in, not copied when passed as an rvalue).
  explicit Tensor(array value, bool requires_grad = false);

  // ---- creation ----
  static Tensor zeros(const Shape& shape, bool requires_grad = false);
  static Tensor ones(const Shape& shape, bool requires_grad = false);
  static Tensor full(const Shape& shape, T fill, bool requires_grad = false);
  static Tensor scalar(T v, bool requires_grad = false);  // 0-d tensor
  // [start, stop) in steps of step, 1-d.
  static Tensor arange(T start, T stop, T step = T(1));
  // Standard normal * std + mean, drawn from gen.
  static Tensor randn(const Shape& shape, Generator& gen, T mean = T(0), T std = T(1),
                      bool requires_grad = false);
  // Uniform in [lo, hi), drawn from gen.
  static Tensor rand(const Shape& shape, Generator& gen, T lo = T(0), T hi = T(1),
                     bool requires_grad = false);
  // Copy of any xtensor expression (or container) evaluated to an xarray.
  template <class E>
  static Tensor from(const E& expr, bool requires_grad = false) {
    return Tensor(array(expr), requires_grad);
  }

  // ---- inspection ----
  bool defined() const { return impl_ != nullptr; }
  Shape shape() const;
  std::size_t dim() const;
  std::size_t numel() const;
  // Size of one axis; negative axes count from the end.
  std::size_t size(int axis) const;
  std::string shape_str() const;  // "(2,3)"
  // The single element of a one-element tensor; throws otherwise.
  T item() const;
  const array& value() const;
  // Mutable value: for optimizers and initialisers acting on leaves. Changing the
  // value of a tensor that a recorded node saved makes that node's backward wrong.
  array& mutable_value();
  // The accumulated gradient; throws if there is none yet (see has_grad()).
  const array& grad() const;
  array& mutable_grad();
  bool has_grad() const;
  bool requires_grad() const;
  // Leaves only: turn gradient tracking on or off. Returns *this for chaining.
  Tensor& requires_grad_(bool on = true);
  bool is_leaf() const;  // made by the user, not by a recorded op
  // Name of the op that made this tensor, or "leaf".
  std::string op_name() const;
  const std::string& name() const;
  Tensor& set_name(std::string name);

  // A new leaf sharing nothing with this tensor's graph (the value is copied).
  Tensor detach() const;
  // A deep copy of value (and requires_grad); the copy is a leaf.
  Tensor clone_leaf() const;

  // ---- gradients (implemented in tape.cpp) ----
  // Backward from a one-element tensor (d self / d self = 1).
  // create_graph: run each node's differentiable backward (Note [Differentiable backward]
  // in tape.hpp) with recording on, so every gradient is itself a tensor with a graph
  // (grad_tensor()), which can be differentiated again; the graph is always retained then.
  // Without it (the default) the fast fused backward runs and records nothing.
  void backward(bool retain_graph = false, bool create_graph = false) const;
  // Backward with an explicit gradient of some scalar with respect to this tensor.
  void backward(const array& grad_output, bool retain_graph = false, bool create_graph = false) const;
  // The gradient as a Tensor: after backward(create_graph=true) the differentiable one
  // (its graph leads back to the inputs, so a gradient penalty or a Newton step can be
  // differentiated); otherwise a new leaf holding a copy of grad().
  // Note: with create_graph a leaf's gradient holds a graph that holds the leaf (a
  // reference cycle, as in PyTorch); zero_grad() breaks it.
  Tensor grad_tensor() const;
  // Note [Gradient hooks]
  // register_hook(fn): fn sees this tensor's gradient when a backward pass has all of it
  // (every consumer has contributed) and may replace it by returning a tensor of the same
  // shape (an undefined Tensor keeps it). An intermediate's hook runs before the gradient
  // flows on to the op that made it, so a replacement reaches everything upstream; a
  // leaf's runs at the end of the pass, on that pass's gradient, before it is added to
  // .grad (what earlier passes accumulated is not shown to it). Hooks run in registration
  // order, each on the previous one's result, in backward(), in grad()/hvp()/jvp() and in
  // backward(create_graph=true) (there the gradient has a graph, and what the hook does to
  // it is differentiated too). Returns an id for remove_hook().
  std::uint64_t register_hook(GradHook<T> fn) const;
  // Removes a hook; an id that is not registered here is an error naming it.
  void remove_hook(std::uint64_t id) const;
  // Forget the gradient.
  void zero_grad();
  // grad += g, checking shapes; `op` names the op for the error message.
  void accumulate_grad(const array& g, const char* op) const;
  void accumulate_grad(array&& g, const char* op) const;
  // The gradient buffer itself, made zeros of the value's shape if there is none
  // yet: for backward functions that add into a part of it (slice writes only its
  // own rows instead of a full-size zero array that is then added).
  array& grad_for_accumulation() const;

  // Identity: two handles of the same tensor.
  bool same(const Tensor& other) const { return impl_ == other.impl_; }
  const std::shared_ptr<TensorImpl<T>>& impl() const { return impl_; }
  explicit Tensor(std::shared_ptr<TensorImpl<T>> impl) : impl_(std::move(impl)) {}

 private:
  TensorImpl<T>& checked(const char* what) const;
  std::shared_ptr<TensorImpl<T>> impl_;
};

// Prints shape, dtype, value (and grad when present).
template <class T>
std::ostream& operator<<(std::ostream& os, const Tensor<T>& t);

// "(2,3,4)" for any shape-like container.
template <class S>
std::string shape_to_string(const S& s) {
  std::string r = "(";
  bool first = true;
  for (auto v : s) {
    if (!first) r += ",";
    r += std::to_string(v);
    first = false;
  }
  return r + ")";
}

template <class T> constexpr const char* dtype_name();
template <> constexpr const char* dtype_name<float>() { return "float32"; }
template <> constexpr const char* dtype_name<double>() { return "float64"; }

using TensorF = Tensor<float>;
using TensorD = Tensor<double>;

extern template class Tensor<float>;
extern template class Tensor<double>;

}  // namespace tg
