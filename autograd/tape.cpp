// autograd/tape.cpp — recording nodes and the reverse walk (see Note [Tape and ownership]).
#include "autograd/tape.hpp"

#include "autograd/functional.hpp"
#include "autograd/hooks_detail.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include <xtensor/xmath.hpp>

namespace tg {

namespace {
thread_local bool t_grad_enabled = true;
bool g_anomaly = false;
}  // namespace

bool grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool on) { t_grad_enabled = on; }
bool anomaly_mode() { return g_anomaly; }
void set_anomaly_mode(bool on) { g_anomaly = on; }

namespace {
thread_local std::vector<std::string> t_scope;
}  // namespace
Scope::Scope(std::string part) { t_scope.push_back(std::move(part)); }
Scope::~Scope() { t_scope.pop_back(); }
std::string current_scope() {
  std::string s;
  for (const auto& p : t_scope) {
    if (p.empty()) continue;
    if (!s.empty()) s += '.';
    s += p;
  }
  return s;
}

std::string anomaly_context(const std::vector<Shape>& inputs, const std::string& scope) {
  std::string s;
  if (!inputs.empty()) {
    s += "inputs ";
    for (std::size_t i = 0; i < inputs.size(); ++i) s += (i ? ", " : "") + shape_to_string(inputs[i]);
  }
  if (!scope.empty()) s += (s.empty() ? "in " : "; in ") + scope;
  return s.empty() ? s : " (" + s + ")";
}

template <class T>
Tape<T>& Tape<T>::current() {
  thread_local Tape<T> tape;
  return tape;
}

template <class T>
void Tape<T>::push(const std::shared_ptr<Node<T>>& node) {
  node->id = next_id_++;
  nodes_.push_back(node);
  if (nodes_.size() >= compact_at_ && walking_ == 0) {
    compact();
    compact_at_ = std::max<std::size_t>(1024, 2 * nodes_.size());
  }
}

template <class T>
void Tape<T>::compact() {
  std::vector<std::weak_ptr<Node<T>>> alive;
  alive.reserve(nodes_.size());
  for (auto& w : nodes_) {
    auto n = w.lock();
    if (n && !n->released) alive.push_back(w);
  }
  nodes_.swap(alive);
}

template <class T>
std::vector<std::shared_ptr<Node<T>>> Tape<T>::nodes() const {
  std::vector<std::shared_ptr<Node<T>>> r;
  for (auto& w : nodes_)
    if (auto n = w.lock(); n && !n->released) r.push_back(n);
  return r;
}

template <class T>
std::size_t Tape<T>::size() const { return nodes().size(); }

template <class T>
std::vector<std::shared_ptr<Node<T>>> Tape<T>::nodes_between(std::uint64_t lo, std::uint64_t hi) const {
  std::vector<std::shared_ptr<Node<T>>> r;
  for (auto it = nodes_.rbegin(); it != nodes_.rend(); ++it) {
    auto n = it->lock();
    if (!n) continue;
    if (n->id < lo) break;
    if (n->id <= hi) r.push_back(std::move(n));
  }
  std::reverse(r.begin(), r.end());
  return r;
}

template <class T>
void Tape<T>::clear() {
  nodes_.clear();
  compact_at_ = 1024;
}

template <class T>
std::string Tape<T>::dump(bool with_grads) const {
  std::ostringstream s;
  auto label = [](const std::shared_ptr<TensorImpl<T>>& t) {
    // name:shape for a named tensor, #id:shape for an unnamed result (the node that made
    // it), the shape alone for an unnamed leaf: "mul (a:(), #3:(2,4), (4))"
    std::string r = shape_to_string(t->value.shape());
    if (!t->name.empty()) r = t->name + ":" + r;
    else if (t->grad_fn) r = "#" + std::to_string(t->grad_fn->id) + ":" + r;
    return r;
  };
  for (auto& n : nodes()) {
    s << "#" << n->id << " " << n->op;
    if (!n->info.empty()) s << "[" << n->info << "]";
    s << " (";
    for (std::size_t i = 0; i < n->inputs.size(); ++i) s << (i ? ", " : "") << label(n->inputs[i]);
    s << ") -> ";
    if (auto out = n->output.lock(); out && !out->name.empty()) s << out->name << ":";
    s << shape_to_string(n->output_shape);
    if (with_grads) {
      if (auto out = n->output.lock(); out && out->has_grad) {
        s << "  grad=";
        if (out->grad.size() == 1) s << *out->grad.data();
        else s << "|" << std::sqrt(static_cast<double>(xt::sum(out->grad * out->grad)())) << "|";
      }
    }
    s << "\n";
  }
  return s.str();
}

namespace {
// Note [Gradient hooks] (tensor.hpp), on the fast walk's plain array: each hook in turn,
// outside grad mode, may replace the gradient by one of the same shape.
template <class T>
void run_hooks(const TensorImpl<T>& t, xt::xarray<T>& g) {
  NoGrad off;
  g = detail::run_grad_hooks(t, Tensor<T>(xt::xarray<T>(g))).value();
}
}  // namespace

template <class T>
void Tape<T>::run_backward(const Tensor<T>& root, const xt::xarray<T>& seed, bool retain_graph, std::uint64_t min_id,
                           bool leaf_hooks) {
  auto& r = *root.impl();
  if (!r.grad_fn) {  // a leaf: backward just accumulates the seed
    xt::xarray<T> g = seed;
    if (leaf_hooks && !r.hooks.empty()) run_hooks(r, g);
    root.accumulate_grad(std::move(g), "backward (grad_output)");
    return;
  }
  const std::uint64_t root_id = r.grad_fn->id;
  // A walk can start another one inside a node's backward (checkpoint() recomputes and
  // walks its segment, whose nodes come after root_id): the outer walk indexes nodes_,
  // which must not be compacted under it, and the inner one only sees ids >= min_id.
  ++walking_;
  struct Done {
    Tape& t;
    ~Done() { --t.walking_; }
  } done{*this};
  // Intermediate gradients describe one backward pass: clear those left by an earlier
  // pass (leaves keep accumulating). See Note [Which gradients are kept]. Leaves with
  // hooks keep their earlier gradient aside, so the hooks see this pass's alone.
  std::vector<std::pair<std::shared_ptr<TensorImpl<T>>, xt::xarray<T>>> hooked_leaves;  // (leaf, earlier grad)
  std::vector<bool> had_grad;
  for (auto& w : nodes_)
    if (auto node = w.lock(); node && node->id <= root_id && node->id >= min_id) {
      if (auto out = node->output.lock()) {
        out->grad = xt::xarray<T>();
        out->has_grad = false;
      }
      for (const auto& in : node->inputs)
        if (leaf_hooks && !in->had_grad_fn && !in->hooks.empty() &&
            std::none_of(hooked_leaves.begin(), hooked_leaves.end(), [&](const auto& p) { return p.first == in; })) {
          had_grad.push_back(in->has_grad);
          hooked_leaves.emplace_back(in, std::move(in->grad));
          in->grad = xt::xarray<T>();
          in->has_grad = false;
        }
    }
  root.accumulate_grad(seed, "backward (grad_output)");
  // Outputs of nodes still to run, kept alive while their consumers release their inputs.
  std::vector<std::shared_ptr<TensorImpl<T>>> pending;
  // Walk the tape backwards from the root's node. Nodes recorded after the root cannot
  // contribute to it; nodes whose output got no gradient are not on a path to the root.
  for (std::size_t k = nodes_.size(); k-- > 0;) {
    auto node = nodes_[k].lock();
    if (!node || node->released || node->id > root_id) continue;
    if (node->id < min_id) break;
    auto out = node->output.lock();
    if (!out || !out->has_grad || !node->backward) continue;
    if (!out->hooks.empty()) run_hooks(*out, out->grad);  // its gradient is complete here
    node->backward(out->grad);
    if (anomaly_mode())
      for (std::size_t i = 0; i < node->inputs.size(); ++i)
        if (const auto& in = node->inputs[i]; in->has_grad) {
          std::vector<Shape> shapes;
          for (const auto& x : node->inputs) shapes.push_back(Shape(x->value.shape().begin(), x->value.shape().end()));
          check_finite(in->grad, node->op.c_str(),
                       ("backward's gradient for input " + std::to_string(node->vjp_slot[i])).c_str(),
                       anomaly_context(shapes, node->scope));
        }
    if (node_done_) node_done_(node->id);
    if (!retain_graph) {
      // Free the saved tensors right away (see Note [Tape and ownership]); inputs made
      // by nodes that have yet to run stay alive in `pending` until they run.
      for (auto& in : node->inputs)
        if (in->grad_fn && !in->grad_fn->released) pending.push_back(in);
      // Both closures go: the differentiable one (vjp) captures the same inputs and saved
      // tensors as the fast one, so keeping it would hold the whole graph's activations
      // until the root is dropped (Note [Differentiable backward]).
      node->backward = nullptr;
      node->vjp = nullptr;
      node->inputs.clear();
      node->released = true;
      // This node's output is no longer needed by the walk.
      for (auto& p : pending)
        if (p == out) p.reset();
    }
    if (pending.size() > 64)
      pending.erase(std::remove(pending.begin(), pending.end(), nullptr), pending.end());
  }
  // The hooked leaves: this pass's gradient through the hooks, then added to the earlier one.
  for (std::size_t i = 0; i < hooked_leaves.size(); ++i) {
    auto& [leaf, earlier] = hooked_leaves[i];
    if (leaf->has_grad) {
      run_hooks(*leaf, leaf->grad);
      if (had_grad[i]) {
        earlier += leaf->grad;
        leaf->grad = std::move(earlier);
      }
    } else if (had_grad[i]) {
      leaf->grad = std::move(earlier);
      leaf->has_grad = true;
    }
  }
  if (!retain_graph && walking_ == 1) compact();
}

template <class T>
Node<T>& attach(Tensor<T>& out, const char* op, std::vector<Tensor<T>> inputs,
                std::function<void(const xt::xarray<T>& dout)> backward, std::string info) {
  auto node = std::make_shared<Node<T>>();
  node->op = op;
  node->info = std::move(info);
  for (std::size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i].defined()) {
      node->inputs.push_back(inputs[i].impl());
      node->vjp_slot.push_back(i);
    }
  node->output = out.impl();
  node->output_shape = out.shape();
  node->backward = std::move(backward);
  if (anomaly_mode()) node->scope = current_scope();
  auto& impl = *out.impl();
  impl.grad_fn = node;
  impl.had_grad_fn = true;
  impl.requires_grad = true;
  Tape<T>::current().push(node);
  return *node;
}

template <class T>
void check_finite(const xt::xarray<T>& value, const char* op, const char* what, const std::string& where) {
  const T* p = value.data();
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (!std::isfinite(p[i])) {
      std::ostringstream s;
      s << "anomaly: op '" << op << "'" << where << " produced " << (std::isnan(p[i]) ? "NaN" : "Inf") << " in its "
        << what << " of shape " << shape_to_string(value.shape()) << " at flat index " << i;
      throw AnomalyError(s.str());
    }
  }
}

// ---- Tensor::backward lives here, next to the walk it starts ----

template <class T>
void Tensor<T>::backward(bool retain_graph, bool create_graph) const {
  if (!defined()) throw std::logic_error("backward: the tensor is undefined");
  if (!requires_grad())
    throw std::logic_error("backward: tensor of shape " + shape_str() +
                           " does not require grad (no input of its graph has requires_grad, or it was "
                           "computed under NoGrad)");
  if (numel() != 1)
    throw std::invalid_argument("backward: called without a gradient on a tensor of shape " + shape_str() +
                                "; only one-element tensors can start backward() implicitly — pass a "
                                "grad_output of that shape");
  array one = array::from_shape(value().shape());
  one.fill(T(1));
  backward(one, retain_graph, create_graph);
}

template <class T>
void Tensor<T>::backward(const array& grad_output, bool retain_graph, bool create_graph) const {
  if (!defined()) throw std::logic_error("backward: the tensor is undefined");
  auto& i = *impl();
  if (!i.requires_grad)
    throw std::logic_error("backward: tensor of shape " + shape_str() +
                           " does not require grad (no input of its graph has requires_grad, or it was "
                           "computed under NoGrad)");
  if (i.had_grad_fn && (!i.grad_fn || i.grad_fn->released))
    throw std::logic_error("backward: the graph of this tensor (made by '" +
                           (i.grad_fn ? i.grad_fn->op : std::string("?")) +
                           "') was already freed by an earlier backward(); pass retain_graph=true to the "
                           "earlier call to run backward twice");
  if (create_graph) {  // the differentiable walk (autograd/functional.cpp)
    detail::backward_create_graph(*this, Tensor<T>(array(grad_output)));
    return;
  }
  Tape<T>::current().run_backward(*this, grad_output, retain_graph);
}

template class Tape<float>;
template class Tape<double>;
template Node<float>& attach<float>(Tensor<float>&, const char*, std::vector<Tensor<float>>,
                            std::function<void(const xt::xarray<float>&)>, std::string);
template Node<double>& attach<double>(Tensor<double>&, const char*, std::vector<Tensor<double>>,
                             std::function<void(const xt::xarray<double>&)>, std::string);
template void check_finite<float>(const xt::xarray<float>&, const char*, const char*, const std::string&);
template void check_finite<double>(const xt::xarray<double>&, const char*, const char*, const std::string&);
template void Tensor<float>::backward(bool, bool) const;
template void Tensor<double>::backward(bool, bool) const;
template void Tensor<float>::backward(const xt::xarray<float>&, bool, bool) const;
template void Tensor<double>::backward(const xt::xarray<double>&, bool, bool) const;

}  // namespace tg
