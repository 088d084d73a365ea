// nn/module.hpp — Module<T>: named parameters, child modules, train/eval, state dicts.
//
// What it is for: the base class of every layer and model in nn/. A module owns its
// parameters (leaf tensors that require grad) under short names ("weight", "bias") and
// its children under names ("q_proj", "layers.0"), so that named_parameters() yields the
// Hugging Face dotted names ("model.layers.0.self_attn.q_proj.weight") in a stable order:
// registration order, depth first. It also gives train/eval mode, zero_grad, parameter
// counts, state dicts (save, load with errors that name the missing, unexpected or
// mis-shaped entry) and copying the state between a float and a double module.
//
// What it is not: a forward interface. Modules have forward functions with the
// signatures they need (Linear::forward(x), Embedding::forward(ids), ...); there is no
// virtual forward. Nor is it file I/O: nn/safetensors.hpp reads and writes files, and
// load_from() accepts such a file (or anything with names(), shape(name), get<T>(name)).
//
// Note [Forward hooks]
// register_forward_hook(fn) on a module calls fn for what that module and every module
// under it compute in a forward: fn({module, what, value}) with the module's dotted path
// relative to the one the hook was registered on ("model.layers.0.self_attn"; "" for that
// module itself), what it is, and the tensor (on the graph, as the forward made it). Every
// module reports "output"; Attention also "probs" (B,H,Tq,Tk: the attention probabilities,
// materialised only while a hook is registered) and "gate" (the activated gate scores,
// when the config has a gate); MoE "router_probs" (N,E); CausalLM "logits". A hook
// observes: to change a gradient, register a gradient hook on the value (Tensor::
// register_hook); to change a value, write a module. Modules registered after the hook
// (there are none once a model is built) do not see it. A module without hooks pays one
// empty-vector test per forward.
//
// Note [Parameter slots]
// A module keeps each parameter's Tensor handle in one place, its registry, and its code
// reads it through param(slot). So bind_parameters() can swap every parameter for other
// tensors (of the same shapes) — this is how gradcheck differentiates a whole model with
// respect to its parameters, since gradcheck hands f fresh leaf copies of its inputs.
// Loading a state writes into the existing tensors' values (handles stay valid).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <xtensor/xarray.hpp>
#include <xtensor/xmath.hpp>

#include "autograd/tensor.hpp"

namespace tg::nn {

// Where load_state_dict() reads a state from: the names it holds, each one's shape, and
// its value converted to T. `what` names the source in error messages (e.g. a path).
template <class T>
struct StateSource {
  std::vector<std::string> names;
  std::function<Shape(const std::string&)> shape;
  std::function<xt::xarray<T>(const std::string&)> get;
  std::string what = "state dict";
  // Optional: called for every name before anything is loaded (throws for a value that
  // cannot be read, so nothing is changed then); and a reader straight into the
  // parameter's buffer (dst, numel), used instead of get when given.
  std::function<void(const std::string&)> check;
  std::function<void(const std::string&, T*, std::size_t)> read_into;
};

namespace detail {
template <class File, class T>
concept ReadsInto = requires(const File& f, const std::string& n, T* p, std::size_t k) {
  f.check_float(n);
  f.template read_into<T>(n, p, k);
};
}  // namespace detail

template <class T>
class Module {
 public:
  using value_type = T;
  using NamedTensors = std::vector<std::pair<std::string, Tensor<T>>>;

  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  Module(Module&&) noexcept = default;
  Module& operator=(Module&&) noexcept = default;

  // ---- parameters ----
  // Every parameter with its full dotted name: own parameters first (registration
  // order), then each child's (registration order), depth first.
  NamedTensors named_parameters() const;
  std::vector<Tensor<T>> parameters() const;
  std::size_t num_parameters() const;  // total number of elements
  // The parameter with this full dotted name; throws std::out_of_range naming it.
  Tensor<T> parameter(const std::string& name) const;
  bool has_parameter(const std::string& name) const;
  // See Note [Parameter slots]. ps in named_parameters() order, same shapes.
  void bind_parameters(const std::vector<Tensor<T>>& ps);

  // ---- modes and gradients ----
  void train(bool on = true);
  void eval() { train(false); }
  bool training() const { return training_; }
  void zero_grad();
  void requires_grad_(bool on = true);

  // ---- forward hooks (Note [Forward hooks]) ----
  struct ForwardEvent {
    const std::string& module;  // dotted path below the module the hook was registered on
    const char* what;           // "output", "probs", "gate", "router_probs", "logits"
    const Tensor<T>& value;
  };
  using ForwardHook = std::function<void(const ForwardEvent&)>;
  // Returns an id for remove_forward_hook(). (const: a hook observes and changes nothing a
  // module computes, so a const model takes one too.)
  std::uint64_t register_forward_hook(ForwardHook fn) const;
  // Removes it from every module it was registered on; an unknown id is an error naming it.
  void remove_forward_hook(std::uint64_t id) const;

  // ---- state ----
  // (name, value copy) in named_parameters() order.
  std::vector<std::pair<std::string, xt::xarray<T>>> state_dict() const;
  // Loads every parameter from `src`. Any missing parameter, any name the module does
  // not have, or any shape mismatch is an error (std::invalid_argument) that lists them
  // all; nothing is changed then.
  void load_state_dict(const StateSource<T>& src);
  template <class U>
  void load_state_dict(const std::map<std::string, xt::xarray<U>>& m, const std::string& what = "state dict");
  // From a file-like object: f.names(), f.shape(name), f.template get<T>(name)
  // (tg::st::SafeTensorsFile fits).
  template <class File>
  void load_from(const File& f, const std::string& what = "file");
  // Copies another module's state (same structure), converting the scalar type.
  template <class U>
  void copy_state_from(const Module<U>& other);

 protected:
  // Registers a parameter under a short name (no dots); it becomes a leaf that requires
  // grad. Returns its slot for param().
  std::size_t register_parameter(const std::string& name, Tensor<T> value);
  const Tensor<T>& param(std::size_t slot) const { return params_[slot].second; }
  // Note [Forward hooks]: whether any hook listens here, and tell them about `value`.
  bool has_forward_hooks() const { return !forward_hooks_.empty(); }
  void emit(const char* what, const Tensor<T>& value) const {
    for (const auto& h : forward_hooks_) (*h.fn)(ForwardEvent{h.path, what, value});
  }
  // Registers a child under a name ("q_proj", or "layers.3" for lists); returns it.
  template <class M>
  M& register_module(const std::string& name, std::unique_ptr<M> m) {
    M& ref = *m;
    add_child(name, std::unique_ptr<Module<T>>(std::move(m)));
    return ref;
  }

 private:
  void add_child(const std::string& name, std::unique_ptr<Module<T>> m);
  void collect(const std::string& prefix, NamedTensors& out) const;
  void bind(const std::vector<Tensor<T>>& ps, std::size_t& next);
  struct HookEntry {
    std::uint64_t id;
    std::string path;
    std::shared_ptr<ForwardHook> fn;
  };
  void add_forward_hook(const HookEntry& h) const;
  bool drop_forward_hook(std::uint64_t id) const;
  mutable std::vector<HookEntry> forward_hooks_;

  std::vector<std::pair<std::string, Tensor<T>>> params_;
  std::vector<std::pair<std::string, std::unique_ptr<Module<T>>>> children_;
  bool training_ = true;
};

template <class T>
template <class U>
void Module<T>::load_state_dict(const std::map<std::string, xt::xarray<U>>& m, const std::string& what) {
  StateSource<T> s;
  for (auto& [k, v] : m) s.names.push_back(k);
  s.shape = [&m](const std::string& n) {
    const auto& sh = m.at(n).shape();
    return Shape(sh.begin(), sh.end());
  };
  s.get = [&m](const std::string& n) { return xt::xarray<T>(xt::cast<T>(m.at(n))); };
  s.what = what;
  load_state_dict(s);
}

template <class T>
template <class File>
void Module<T>::load_from(const File& f, const std::string& what) {
  StateSource<T> s;
  s.names = f.names();
  s.shape = [&f](const std::string& n) {
    const auto sh = f.shape(n);
    return Shape(sh.begin(), sh.end());
  };
  s.get = [&f](const std::string& n) { return xt::xarray<T>(f.template get<T>(n)); };
  if constexpr (detail::ReadsInto<File, T>) {
    s.check = [&f](const std::string& n) { f.check_float(n); };
    s.read_into = [&f](const std::string& n, T* dst, std::size_t k) { f.template read_into<T>(n, dst, k); };
  }
  s.what = what;
  load_state_dict(s);
}

template <class T>
template <class U>
void Module<T>::copy_state_from(const Module<U>& other) {
  std::map<std::string, xt::xarray<U>> m;
  for (auto& [k, v] : other.state_dict()) m.emplace(k, std::move(v));
  load_state_dict(m, "copy_state_from");
}

extern template class Module<float>;
extern template class Module<double>;

}  // namespace tg::nn
