// autograd/tape.hpp — the tape: nodes in creation order, walked in reverse by backward().
//
// What it is for: recording, for every op whose inputs require gradients, a Node that
// knows how to turn the gradient of its output into gradients of its inputs (a
// vector-Jacobian product), and running those nodes in reverse creation order.
//
// What it is not: the ops themselves (autograd/ops.hpp) — each op builds its Node
// with attach() right beside its forward computation.
//
// Note [Tape and ownership]
// The tape is a thread-local list of the recorded nodes in creation order (one list
// per scalar type). It holds them weakly: a node is owned by the tensor it produced
// (TensorImpl::grad_fn), and a node owns its inputs. So a graph lives exactly as long
// as someone holds its result — drop the loss without calling backward and the whole
// graph is freed, as in PyTorch. backward() walks the tape backwards from the root's
// node: any node whose output has received a gradient runs its backward closure, which
// accumulates (+=) into its inputs' gradients, so reuse (x*x) and diamonds are right.
// Creation order is a valid topological order, because an op's inputs exist before it.
// Without retain_graph, every node that ran is released as soon as it ran (its closure
// and saved tensors are freed), which keeps the peak memory of backward low, and a
// second backward through it is an error.
//
// Note [Which gradients are kept]
// Every tensor of the graph that you still hold after backward() has its gradient
// (leaves and intermediates alike — handy for teaching). Intermediates you do not
// hold are freed as the walk passes them. Leaves accumulate across backward() calls
// until zero_grad(); an intermediate's gradient is that of the latest backward() only
// (each pass starts the intermediates from zero, so retain_graph passes don't double-count).
//
// Note [Differentiable backward]
// Every node carries its vector-Jacobian product twice. `backward` is the fast one: it
// takes and adds plain arrays through the fused kernels, records nothing, and is what
// Tensor::backward() runs by default (training). `vjp` is the same product written with
// ops, right beside it at the op (for mul: da = sum_to(dz * b), db = sum_to(dz * a)):
// it takes the output and its gradient as Tensors and returns one gradient Tensor per
// input given to attach() (undefined where an input needs none). Run with grad mode on,
// the ops inside a vjp record nodes of their own, so the gradient it returns is itself
// differentiable: that is create_graph (autograd/functional.hpp: grad, hvp, jvp, and
// Tensor::backward(..., create_graph=true)). A fused op whose backward is a kernel gives
// as vjp a composition of simpler ops (softmax: y * (dy - Σ dy*y)), or the backward of
// its reference form (attention, the norms: detail::vjp_of in autograd/functional.hpp).
// An op without a vjp makes create_graph fail with an error naming it.
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/tensor.hpp"

namespace tg {

// One gradient per input of an op (undefined: that input needs none).
template <class T>
using Grads = std::vector<Tensor<T>>;
// The differentiable vector-Jacobian product of a node (Note [Differentiable backward]):
// (output, d(loss)/d(output)) -> gradients of the inputs, in the order given to attach().
template <class T>
using VjpFn = std::function<Grads<T>(const Tensor<T>& out, const Tensor<T>& dout)>;

template <class T>
struct Node {
  std::string op;    // "matmul", "add", ...
  std::string info;  // extra attributes for the dump ("axis=1", "p=0.1", ...)
  std::vector<std::shared_ptr<TensorImpl<T>>> inputs;  // strong: keeps the graph alive
  std::weak_ptr<TensorImpl<T>> output;                 // weak: the output owns us
  Shape output_shape;
  // The vector-Jacobian product: given d(loss)/d(output), accumulate into the inputs.
  std::function<void(const xt::xarray<T>& dout)> backward;
  // The same product with ops, for create_graph; node input i is element vjp_slot[i]
  // of its result (attach() skips undefined inputs, the vjp does not).
  VjpFn<T> vjp;
  std::vector<std::size_t> vjp_slot;
  // The module the op ran in ("model.layers.2.self_attn.q_proj"), recorded only in anomaly
  // mode (Note [Anomaly mode]); empty otherwise, so training pays nothing for it.
  std::string scope;
  bool released = false;
  std::uint64_t id = 0;
};

template <class T>
class Tape {
 public:
  // The tape of the calling thread.
  static Tape& current();
  void push(const std::shared_ptr<Node<T>>& node);
  // Alive nodes in creation order.
  std::vector<std::shared_ptr<Node<T>>> nodes() const;
  std::size_t size() const;  // number of alive nodes
  // Alive nodes (released ones too) with lo <= id <= hi, in creation order (scans back
  // from the newest).
  std::vector<std::shared_ptr<Node<T>>> nodes_between(std::uint64_t lo, std::uint64_t hi) const;
  std::uint64_t next_id() const { return next_id_; }  // the id the next node will get
  // Forget every recorded node (tensors keep their values and gradients).
  void clear();
  // A readable listing: one line per node, "#id op (inputs) -> output", each tensor as
  // name:shape ("ab:()"), #id:shape for an unnamed result of node #id, or its bare shape
  // (an unnamed leaf); with the gradient (or its norm) when with_grads. autograd/dot.hpp
  // draws the same graph.
  std::string dump(bool with_grads = false) const;

  // Seeds root's gradient and runs the reverse walk (used by Tensor::backward) over the
  // nodes with id >= min_id (a walk inside a walk: checkpoint(), which also leaves the
  // leaves' hooks to the outer walk: leaf_hooks false).
  void run_backward(const Tensor<T>& root, const xt::xarray<T>& seed, bool retain_graph, std::uint64_t min_id = 0,
                    bool leaf_hooks = true);

  // Called in the walk after each node's backward ran (before it is released), with the
  // node's id; empty: nothing. Data-parallel training starts sending the gradients that
  // are final from it (nn/distributed.hpp).
  void set_node_done_hook(std::function<void(std::uint64_t id)> hook) { node_done_ = std::move(hook); }

 private:
  void compact();
  std::vector<std::weak_ptr<Node<T>>> nodes_;
  std::uint64_t next_id_ = 0;
  std::size_t compact_at_ = 1024;
  std::function<void(std::uint64_t)> node_done_;
  int walking_ = 0;  // run_backward calls in progress (nested: checkpoint())
};

// ---- gradient mode ----
bool grad_enabled();
void set_grad_enabled(bool on);

// Inside a NoGrad scope no op records a node (inference, optimizer updates).
class NoGrad {
 public:
  NoGrad() : prev_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGrad() { set_grad_enabled(prev_); }
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool prev_;
};
// The opposite: record even inside a NoGrad scope (a differentiable backward, a check
// that needs a graph while its caller evaluates without one).
class EnableGrad {
 public:
  EnableGrad() : prev_(grad_enabled()) { set_grad_enabled(true); }
  ~EnableGrad() { set_grad_enabled(prev_); }
  EnableGrad(const EnableGrad&) = delete;
  EnableGrad& operator=(const EnableGrad&) = delete;

 private:
  bool prev_;
};

// ---- anomaly mode ----
// Note [Anomaly mode]
// When on, every op checks its forward output and every node the gradients it produced
// for NaN or Inf, and throws std::runtime_error naming the first op at fault, the shapes
// of its inputs and the module it ran in. Modules say where they are with a Scope (the
// decoder layer pushes "model.layers.2", its attention "self_attn", ... so the path is the
// one named_parameters() uses); a node remembers its scope only in anomaly mode, so an
// error in backward names the module whose forward recorded the op. `tapegrad train
// --detect-anomaly` (or TAPEGRAD_DETECT_ANOMALY=1) turns it on for a whole run.
bool anomaly_mode();
void set_anomaly_mode(bool on);
// What anomaly mode throws: "anomaly: op 'linear' (inputs ...; in ...) produced NaN in ...".
class AnomalyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class DetectAnomaly {
 public:
  DetectAnomaly() : prev_(anomaly_mode()) { set_anomaly_mode(true); }
  ~DetectAnomaly() { set_anomaly_mode(prev_); }
  DetectAnomaly(const DetectAnomaly&) = delete;
  DetectAnomaly& operator=(const DetectAnomaly&) = delete;

 private:
  bool prev_;
};

// Where the calling thread is in the module tree: Scope s("self_attn") appends a part to
// the path for its lifetime; current_scope() joins the parts with '.' ("" at the top).
class Scope {
 public:
  explicit Scope(std::string part);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
};
std::string current_scope();

// ---- recording helpers used by every op ----

// True when an op on these inputs must record a node: grad mode is on and at
// least one input requires a gradient.
template <class T>
bool needs_grad(std::initializer_list<const Tensor<T>*> inputs) {
  if (!grad_enabled()) return false;
  for (auto* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

// Make `out` a non-leaf that requires grad, produced by a new node `op` over
// `inputs` with the given backward closure, and record that node on the tape. Returns the
// node, so the op can give it its differentiable form: attach(...).vjp = ... .
template <class T>
Node<T>& attach(Tensor<T>& out, const char* op, std::vector<Tensor<T>> inputs,
            std::function<void(const xt::xarray<T>& dout)> backward, std::string info = {});

// In anomaly mode: throw AnomalyError if `value` has a NaN/Inf, naming `op` and `what`, and `where`
// (the op's input shapes and its module, as anomaly_context() writes them) when given.
template <class T>
void check_finite(const xt::xarray<T>& value, const char* op, const char* what, const std::string& where = {});
// " (inputs (2,3), (3,4); in model.layers.0.mlp)": the context of an anomaly message.
std::string anomaly_context(const std::vector<Shape>& inputs, const std::string& scope);

}  // namespace tg
