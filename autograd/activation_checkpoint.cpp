// autograd/activation_checkpoint.cpp — checkpoint(): see Note [Activation checkpointing] in activation_checkpoint.hpp.
#include "autograd/activation_checkpoint.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <unordered_set>

#include "autograd/functional.hpp"
#include "autograd/ops.hpp"
#include "autograd/tape.hpp"

namespace tg {

namespace {

// The outputs of a segment as one tensor: the value itself for one output, else every
// output flattened, side by side (1-d).
template <class T>
xt::xarray<T> join_values(const std::vector<Tensor<T>>& ys) {
  if (ys.size() == 1) return ys[0].value();
  std::size_t n = 0;
  for (const auto& y : ys) n += y.numel();
  xt::xarray<T> flat = xt::xarray<T>::from_shape({n});
  std::size_t at = 0;
  for (const auto& y : ys) {
    std::copy(y.value().data(), y.value().data() + y.numel(), flat.data() + at);
    at += y.numel();
  }
  return flat;
}

// The same with ops (recorded, for the differentiable backward).
template <class T>
Tensor<T> join_tensors(const std::vector<Tensor<T>>& ys) {
  if (ys.size() == 1) return ys[0];
  std::vector<Tensor<T>> parts;
  for (const auto& y : ys) parts.push_back(reshape(y, {-1}));
  return concat(parts, 0);
}

template <class T>
void check_outputs(const std::vector<Tensor<T>>& ys, const std::vector<Shape>& shapes, const std::string& what) {
  if (ys.size() != shapes.size())
    throw std::logic_error(what + ": the segment returned " + std::to_string(ys.size()) + " outputs when run again, " +
                           std::to_string(shapes.size()) + " the first time");
  for (std::size_t i = 0; i < ys.size(); ++i)
    if (!ys[i].defined() || ys[i].shape() != shapes[i])
      throw std::logic_error(what + ": output " + std::to_string(i) + " has shape " +
                             (ys[i].defined() ? ys[i].shape_str() : std::string("(undefined)")) +
                             " when run again, " + shape_to_string(shapes[i]) + " the first time");
}

// The recomputation must give what the forward gave (Note [Activation checkpointing]):
// equal up to the rounding of a kernel that may sum in another order.
template <class T>
void check_same(const xt::xarray<T>& first, const xt::xarray<T>& again, const std::string& what) {
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  double scale = 0, diff = 0;
  for (std::size_t i = 0; i < first.size(); ++i) {
    scale = std::max(scale, std::abs(double(first.data()[i])));
    diff = std::max(diff, std::abs(double(first.data()[i]) - double(again.data()[i])));
  }
  if (!(diff <= tol * std::max(scale, 1.0)))
    throw std::logic_error(what + ": the segment computed other values when run again in backward (largest "
                           "difference " + std::to_string(diff) + "); it must not draw fresh random numbers "
                           "or depend on state that changed since the forward");
}

}  // namespace

template <class T>
std::vector<Tensor<T>> checkpoint(const SegmentFn<T>& fn, const std::vector<Tensor<T>>& inputs,
                                  const std::string& name) {
  if (!fn) throw std::invalid_argument("checkpoint: the segment function is empty");
  if (!grad_enabled()) return fn(inputs);
  const std::string what = "checkpoint" + (name.empty() ? std::string() : "[" + name + "]");
  Tape<T>& tape = Tape<T>::current();
  const std::uint64_t start = tape.next_id();
  std::vector<Tensor<T>> ys = fn(inputs);  // recorded, to find the leaves it reads
  if (ys.empty()) throw std::invalid_argument(what + ": the segment returned no outputs");
  const std::uint64_t end = tape.next_id();
  if (end == start) return ys;  // nothing it read needs a gradient

  std::unordered_set<const TensorImpl<T>*> given;
  for (const auto& x : inputs)
    if (x.defined()) given.insert(x.impl().get());
  std::vector<Tensor<T>> leaves;
  std::unordered_set<const TensorImpl<T>*> seen;
  for (const auto& node : tape.nodes_between(start, end - 1))
    for (const auto& in : node->inputs) {
      if (given.count(in.get()) || !in->requires_grad || seen.count(in.get())) continue;
      if (in->had_grad_fn) {
        if (in->grad_fn && in->grad_fn->id >= start) continue;  // made inside the segment
        throw std::invalid_argument(what + ": the segment reads a tensor of shape " +
                                    shape_to_string(in->value.shape()) + " made by op '" +
                                    (in->grad_fn ? in->grad_fn->op : std::string("?")) +
                                    "' outside it, which needs a gradient: pass it in the inputs");
      }
      seen.insert(in.get());
      leaves.push_back(Tensor<T>(in));
    }
  std::vector<Shape> shapes;
  for (std::size_t i = 0; i < ys.size(); ++i) {
    if (!ys[i].defined()) throw std::invalid_argument(what + ": output " + std::to_string(i) + " is undefined");
    shapes.push_back(ys[i].shape());
  }
  std::vector<bool> out_needs(ys.size());
  for (std::size_t i = 0; i < ys.size(); ++i) out_needs[i] = ys[i].requires_grad();
  // The segment's graph goes now; one node stands for it.
  Tensor<T> joined(join_values(ys));
  ys.clear();

  std::vector<Tensor<T>> node_inputs = inputs;
  node_inputs.insert(node_inputs.end(), leaves.begin(), leaves.end());
  std::weak_ptr<TensorImpl<T>> joined_weak = joined.impl();
  Node<T>& node = attach<T>(
      joined, "checkpoint",
      node_inputs,
      [fn, inputs, shapes, out_needs, what, joined_weak](const xt::xarray<T>& dout) {
        Tape<T>& tp = Tape<T>::current();
        // Copies of the inputs, leaves of their own: the recomputed graph ends at them.
        std::vector<Tensor<T>> xs;
        for (const auto& x : inputs)
          xs.push_back(x.defined() ? Tensor<T>(xt::xarray<T>(x.value()), x.requires_grad()) : Tensor<T>());
        const std::uint64_t from = tp.next_id();
        std::vector<Tensor<T>> ys2;
        {
          EnableGrad on;
          ys2 = fn(xs);
        }
        check_outputs(ys2, shapes, what);
        if (auto j = joined_weak.lock()) check_same(j->value, join_values(ys2), what);
        // The walk back from the outputs: one root, or the sum of <seed_i, y_i>.
        Tensor<T> root;
        xt::xarray<T> seed;
        if (ys2.size() == 1) {
          root = ys2[0];
          seed = dout;
        } else {
          EnableGrad on;
          std::size_t at = 0;
          for (std::size_t i = 0; i < ys2.size(); ++i) {
            const std::size_t n = ys2[i].numel();
            if (out_needs[i] && ys2[i].requires_grad()) {
              xt::xarray<T> s = xt::xarray<T>::from_shape(shapes[i]);
              std::copy(dout.data() + at, dout.data() + at + n, s.data());
              Tensor<T> term = sum(ys2[i] * Tensor<T>(std::move(s)));
              root = root.defined() ? root + term : term;
            }
            at += n;
          }
          seed = xt::xarray<T>::from_shape(std::vector<std::size_t>{});
          seed.fill(T(1));
        }
        if (root.defined() && root.requires_grad())
          tp.run_backward(root, seed, /*retain_graph=*/false, from, /*leaf_hooks=*/false);
        for (std::size_t i = 0; i < inputs.size(); ++i)
          if (xs[i].defined() && xs[i].has_grad()) inputs[i].accumulate_grad(xs[i].grad(), "checkpoint");
      },
      name);
  // The differentiable form (create_graph): fn again, on the real inputs and leaves.
  const std::size_t n_in = inputs.size();
  node.vjp = [fn, node_inputs, n_in, shapes, what](const Tensor<T>&, const Tensor<T>& dout) {
    std::vector<Tensor<T>> ys2;
    auto ref = [&] {
      ys2 = fn(std::vector<Tensor<T>>(node_inputs.begin(), node_inputs.begin() + std::ptrdiff_t(n_in)));
      check_outputs(ys2, shapes, what);
      return join_tensors(ys2);
    };
    return detail::vjp_of<T>(ref, node_inputs, dout);
  };

  if (shapes.size() == 1) return {joined};
  std::vector<std::size_t> sizes;
  for (const auto& s : shapes) {
    std::size_t n = 1;
    for (auto d : s) n *= d;
    sizes.push_back(n);
  }
  std::vector<Tensor<T>> parts = split(joined, sizes, 0), outs;
  for (std::size_t i = 0; i < parts.size(); ++i)
    outs.push_back(reshape(parts[i], std::vector<std::int64_t>(shapes[i].begin(), shapes[i].end())));
  return outs;
}

template std::vector<Tensor<float>> checkpoint<float>(const SegmentFn<float>&, const std::vector<Tensor<float>>&,
                                                      const std::string&);
template std::vector<Tensor<double>> checkpoint<double>(const SegmentFn<double>&, const std::vector<Tensor<double>>&,
                                                        const std::string&);

}  // namespace tg
