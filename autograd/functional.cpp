// autograd/functional.cpp — the differentiable walk behind grad(), hvp(), jvp() and
// backward(create_graph=true) (see functional.hpp and Note [Differentiable backward]).
#include "autograd/functional.hpp"

#include <algorithm>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "autograd/hooks_detail.hpp"
#include "autograd/ops.hpp"

namespace tg {

namespace {

template <class T>
std::string describe(const Tensor<T>& t) {
  return (t.name().empty() ? "" : "'" + t.name() + "' ") + "of shape " + t.shape_str();
}

// One gradient being accumulated: the tensor it belongs to, and the sum so far.
template <class T>
struct Acc {
  std::shared_ptr<TensorImpl<T>> tensor;
  Tensor<T> grad;
};
template <class T>
using GradMap = std::unordered_map<const TensorImpl<T>*, Acc<T>>;

// The reverse walk over the nodes with ids in [min_id, the newest output's node], each
// node's vjp turning the gradient of its output into gradients of its inputs. With
// create_graph the vjps run with recording on (their ops become nodes, so the results
// are differentiable), otherwise under NoGrad. With `targets`, only nodes on a path from
// a target to an output run, and only the targets' gradients are kept; without, every
// leaf's gradient is kept (backward).
// Note [Gradient hooks] (tensor.hpp) on a Tensor gradient: with create_graph grad mode is
// on, so what a hook computes is recorded and differentiated with the rest.
template <class T>
Tensor<T> run_hooks(const TensorImpl<T>& t, Tensor<T> g) {
  return detail::run_grad_hooks(t, std::move(g));
}

// `hooks`: run the tensors' gradient hooks (the user-facing walks; not vjp_of, whose walk is
// a step inside one op's backward).
template <class T>
GradMap<T> walk(const std::vector<Tensor<T>>& outputs, const std::vector<Tensor<T>>& seeds, bool create_graph,
                std::uint64_t min_id, const std::vector<Tensor<T>>* targets, const char* caller, bool hooks = true) {
  GradMap<T> g;
  std::unordered_set<const TensorImpl<T>*> hooked;  // whose hooks already ran
  std::unordered_set<const TensorImpl<T>*> target_set;
  if (targets)
    for (auto& t : *targets)
      if (t.defined()) target_set.insert(t.impl().get());
  auto add_to = [&](const std::shared_ptr<TensorImpl<T>>& impl, const Tensor<T>& v) {
    auto it = g.find(impl.get());
    if (it == g.end()) g.emplace(impl.get(), Acc<T>{impl, v});
    else it->second.grad = add(it->second.grad, v);  // reuse and diamonds: +=
  };
  std::optional<EnableGrad> on;
  std::optional<NoGrad> off;
  if (create_graph) on.emplace();
  else off.emplace();

  std::uint64_t max_id = 0;
  bool any_node = false;
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const Tensor<T>& y = outputs[i];
    if (!y.defined()) throw std::invalid_argument(std::string(caller) + ": output " + std::to_string(i) + " is undefined");
    if (seeds[i].shape() != y.shape())
      throw std::invalid_argument(std::string(caller) + ": grad_output " + std::to_string(i) + " has shape " +
                                  seeds[i].shape_str() + " but output " + std::to_string(i) + " is " + y.shape_str());
    if (!y.requires_grad()) continue;  // a constant output contributes nothing
    auto& impl = *y.impl();
    if (impl.had_grad_fn && (!impl.grad_fn || impl.grad_fn->released))
      throw std::logic_error(std::string(caller) + ": the graph of output " + std::to_string(i) +
                             " was already freed by an earlier backward() (pass retain_graph=true to it)");
    add_to(y.impl(), seeds[i]);
    if (impl.grad_fn) {
      max_id = std::max(max_id, impl.grad_fn->id);
      any_node = true;
    }
  }
  // The leaves' (and unreached targets') gradients are complete when the walk ends.
  auto finish = [&] {
    if (hooks)
      for (auto& [key, acc] : g)
        if (!acc.tensor->hooks.empty() && !hooked.count(key)) acc.grad = run_hooks(*acc.tensor, acc.grad);
    return std::move(g);
  };
  if (!any_node) return finish();
  std::vector<std::shared_ptr<Node<T>>> nodes = Tape<T>::current().nodes_between(min_id, max_id);
  // Which nodes lie on a path from a target: a node whose input is a target, or was
  // made by such a node (creation order is a topological order).
  std::unordered_set<const Node<T>*> needed;
  if (targets)
    for (auto& n : nodes)
      for (auto& in : n->inputs)
        if (target_set.count(in.get()) || (in->grad_fn && needed.count(in->grad_fn.get()))) {
          needed.insert(n.get());
          break;
        }
  for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
    Node<T>& node = **it;
    auto out = node.output.lock();
    if (!out) continue;
    auto found = g.find(out.get());
    if (found == g.end()) continue;
    if (node.released)
      throw std::logic_error(std::string(caller) + ": the graph through op '" + node.op +
                             "' was already freed by an earlier backward() (pass retain_graph=true to it)");
    if (targets && !needed.count(&node)) continue;
    if (!node.vjp)
      throw std::logic_error(std::string(caller) + ": op '" + node.op +
                             "' has no differentiable backward (vjp), so it supports first-order backward() only");
    // The output's gradient is complete (every consumer ran): its hooks run now; it is
    // dropped unless it is asked for.
    if (hooks && !out->hooks.empty()) {
      found->second.grad = run_hooks(*out, found->second.grad);
      hooked.insert(out.get());
    }
    Tensor<T> dout = found->second.grad;
    if (targets ? !target_set.count(out.get()) : out->had_grad_fn) g.erase(found);
    Grads<T> gs = node.vjp(Tensor<T>(out), dout);
    for (std::size_t k = 0; k < node.inputs.size(); ++k) {
      const std::size_t slot = node.vjp_slot[k];
      if (slot >= gs.size() || !gs[slot].defined()) continue;
      const auto& in = node.inputs[k];
      if (!in->requires_grad) continue;
      if (gs[slot].shape() != Shape(in->value.shape().begin(), in->value.shape().end()))
        throw std::logic_error(node.op + " vjp: gradient of shape " + gs[slot].shape_str() + " for input " +
                               std::to_string(k) + " of shape " + shape_to_string(in->value.shape()));
      if (anomaly_mode())
        check_finite(gs[slot].value(), node.op.c_str(),
                     ("differentiable backward's gradient for input " + std::to_string(slot)).c_str(),
                     anomaly_context({}, node.scope));
      add_to(in, gs[slot]);
    }
  }
  return finish();
}

template <class T>
std::vector<Tensor<T>> seeds_for(const std::vector<Tensor<T>>& outputs, const std::vector<Tensor<T>>& grad_outputs,
                                 const char* caller) {
  if (!grad_outputs.empty()) {
    if (grad_outputs.size() != outputs.size())
      throw std::invalid_argument(std::string(caller) + ": " + std::to_string(outputs.size()) + " outputs but " +
                                  std::to_string(grad_outputs.size()) + " grad_outputs");
    for (std::size_t i = 0; i < grad_outputs.size(); ++i)
      if (!grad_outputs[i].defined())
        throw std::invalid_argument(std::string(caller) + ": grad_output " + std::to_string(i) + " is undefined");
    return grad_outputs;
  }
  std::vector<Tensor<T>> s;
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i].defined())
      throw std::invalid_argument(std::string(caller) + ": output " + std::to_string(i) + " is undefined");
    if (outputs[i].numel() != 1)
      throw std::invalid_argument(std::string(caller) + ": output " + std::to_string(i) + " has shape " +
                                  outputs[i].shape_str() + "; without grad_outputs every output must have one element");
    s.push_back(Tensor<T>::ones(outputs[i].shape()));
  }
  return s;
}

}  // namespace

template <class T>
std::vector<Tensor<T>> grad(const std::vector<Tensor<T>>& outputs, const std::vector<Tensor<T>>& inputs,
                            const std::vector<Tensor<T>>& grad_outputs, bool create_graph, bool allow_unused) {
  if (outputs.empty()) throw std::invalid_argument("grad: no outputs given");
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined()) throw std::invalid_argument("grad: input " + std::to_string(i) + " is undefined");
    if (!inputs[i].requires_grad())
      throw std::invalid_argument("grad: input " + std::to_string(i) + " " + describe(inputs[i]) +
                                  " does not require grad");
  }
  std::vector<Tensor<T>> seeds = seeds_for(outputs, grad_outputs, "grad");
  GradMap<T> g = walk(outputs, seeds, create_graph, 0, &inputs, "grad");
  std::vector<Tensor<T>> r;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    auto it = g.find(inputs[i].impl().get());
    if (it != g.end()) {
      r.push_back(it->second.grad);
    } else if (allow_unused) {
      r.push_back(Tensor<T>());
    } else {
      throw std::invalid_argument("grad: the outputs do not depend on input " + std::to_string(i) + " " +
                                  describe(inputs[i]) + " (pass allow_unused=true to get an undefined gradient)");
    }
  }
  return r;
}

template <class T>
std::vector<Tensor<T>> vjp(const TensorFn<T>& f, const std::vector<Tensor<T>>& x, const Tensor<T>& v,
                           bool create_graph) {
  Tensor<T> y;
  {
    EnableGrad on;
    y = f(x);
  }
  std::vector<Tensor<T>> g = grad<T>({y}, x, {v}, create_graph, true);
  for (std::size_t i = 0; i < g.size(); ++i)
    if (!g[i].defined()) g[i] = Tensor<T>::zeros(x[i].shape());
  return g;
}

template <class T>
std::vector<Tensor<T>> hvp(const TensorFn<T>& f, const std::vector<Tensor<T>>& x, const std::vector<Tensor<T>>& v,
                           bool create_graph) {
  if (v.size() != x.size())
    throw std::invalid_argument("hvp: " + std::to_string(x.size()) + " inputs but " + std::to_string(v.size()) +
                                " direction tensors");
  for (std::size_t i = 0; i < x.size(); ++i)
    if (!v[i].defined() || v[i].shape() != x[i].shape())
      throw std::invalid_argument("hvp: direction " + std::to_string(i) + " has shape " +
                                  (v[i].defined() ? v[i].shape_str() : std::string("(undefined)")) + " but input " +
                                  std::to_string(i) + " is " + x[i].shape_str());
  EnableGrad on;
  Tensor<T> y = f(x);
  if (y.numel() != 1) throw std::invalid_argument("hvp: f must return one element, got shape " + y.shape_str());
  // g = ∇f(x), recorded; then H v = d<g, v>/dx.
  std::vector<Tensor<T>> g = grad<T>({y}, x, {}, /*create_graph=*/true, /*allow_unused=*/true);
  std::vector<Tensor<T>> outs, seeds;
  for (std::size_t i = 0; i < g.size(); ++i)
    if (g[i].defined() && g[i].requires_grad()) {
      outs.push_back(g[i]);
      seeds.push_back(v[i]);
    }
  std::vector<Tensor<T>> hv(x.size());
  if (!outs.empty()) hv = grad<T>(outs, x, seeds, create_graph, true);
  for (std::size_t i = 0; i < hv.size(); ++i)
    if (!hv[i].defined()) hv[i] = Tensor<T>::zeros(x[i].shape());
  return hv;
}

template <class T>
Tensor<T> jvp(const TensorFn<T>& f, const std::vector<Tensor<T>>& x, const std::vector<Tensor<T>>& v,
              bool create_graph) {
  if (v.size() != x.size())
    throw std::invalid_argument("jvp: " + std::to_string(x.size()) + " inputs but " + std::to_string(v.size()) +
                                " tangent tensors");
  for (std::size_t i = 0; i < x.size(); ++i)
    if (!v[i].defined() || v[i].shape() != x[i].shape())
      throw std::invalid_argument("jvp: tangent " + std::to_string(i) + " has shape " +
                                  (v[i].defined() ? v[i].shape_str() : std::string("(undefined)")) + " but input " +
                                  std::to_string(i) + " is " + x[i].shape_str());
  EnableGrad on;
  Tensor<T> y = f(x);
  // The double-vjp trick: g(u) = uᵀJ for a dummy cotangent u (its value does not matter:
  // g is linear in u), recorded; then J v = d<g(u), v>/du.
  Tensor<T> u = Tensor<T>::zeros(y.shape(), true);
  std::vector<Tensor<T>> g = grad<T>({y}, x, {u}, /*create_graph=*/true, /*allow_unused=*/true);
  std::vector<Tensor<T>> outs, seeds;
  for (std::size_t i = 0; i < g.size(); ++i)
    if (g[i].defined() && g[i].requires_grad()) {
      outs.push_back(g[i]);
      seeds.push_back(v[i]);
    }
  if (outs.empty()) return Tensor<T>::zeros(y.shape());
  std::vector<Tensor<T>> jv = grad<T>(outs, {u}, seeds, create_graph, true);
  return jv[0].defined() ? jv[0] : Tensor<T>::zeros(y.shape());
}

namespace detail {

template <class T>
void backward_create_graph(const Tensor<T>& root, const Tensor<T>& seed) {
  GradMap<T> g = walk<T>({root}, {seed}, /*create_graph=*/true, 0, nullptr, "backward(create_graph)");
  EnableGrad on;
  for (auto& [key, acc] : g) {
    TensorImpl<T>& t = *acc.tensor;
    if (t.had_grad_fn || !t.requires_grad) continue;  // leaves only (Note [Which gradients are kept])
    Tensor<T> sum = acc.grad;
    if (t.has_grad) sum = add(t.grad_graph ? Tensor<T>(t.grad_graph) : Tensor<T>(xt::xarray<T>(t.grad)), acc.grad);
    t.grad = sum.value();
    t.has_grad = true;
    t.grad_graph = sum.impl();
  }
}

template <class T>
Grads<T> vjp_of(const std::function<Tensor<T>()>& ref, const std::vector<Tensor<T>>& inputs, const Tensor<T>& dout) {
  const bool create_graph = grad_enabled();
  const std::uint64_t start = Tape<T>::current().next_id();
  Tensor<T> y;
  {
    EnableGrad on;  // the reference form must be recorded to be walked back
    y = ref();
  }
  Grads<T> r(inputs.size());
  if (!y.requires_grad()) return r;
  GradMap<T> g = walk<T>({y}, {dout}, create_graph, start, &inputs, "vjp_of", /*hooks=*/false);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined()) continue;
    auto it = g.find(inputs[i].impl().get());
    if (it != g.end()) r[i] = it->second.grad;
  }
  return r;
}

}  // namespace detail

#define TG_INSTANTIATE(T)                                                                                            \
  template std::vector<Tensor<T>> grad<T>(const std::vector<Tensor<T>>&, const std::vector<Tensor<T>>&,              \
                                          const std::vector<Tensor<T>>&, bool, bool);                                \
  template std::vector<Tensor<T>> vjp<T>(const TensorFn<T>&, const std::vector<Tensor<T>>&, const Tensor<T>&, bool); \
  template std::vector<Tensor<T>> hvp<T>(const TensorFn<T>&, const std::vector<Tensor<T>>&,                          \
                                         const std::vector<Tensor<T>>&, bool);                                       \
  template Tensor<T> jvp<T>(const TensorFn<T>&, const std::vector<Tensor<T>>&, const std::vector<Tensor<T>>&, bool); \
  template void detail::backward_create_graph<T>(const Tensor<T>&, const Tensor<T>&);                                \
  template Grads<T> detail::vjp_of<T>(const std::function<Tensor<T>()>&, const std::vector<Tensor<T>>&,              \
                                      const Tensor<T>&);
TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg
