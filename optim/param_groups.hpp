// optim/param_groups.hpp — named parameters, parameter groups, and what every optimizer
// shares (the Optimizer base class and the state-dict helpers).
//
// What it is for: deciding which parameters get weight decay (make_param_groups), the
// ParamGroup type both AdamW and SGD take, the Optimizer base (learning rate, step count,
// zero_grad, the checks every optimizer makes on its parameters: defined leaves, unique
// names, no tensor twice), and the reading side of load_state_dict (an entry that is
// missing, mis-shaped or unknown is an error naming it).
//
// What it is not: an optimizer (optim/adamw.hpp, optim/sgd.hpp) or a file format — a state
// dict is a list of named arrays; writing it to disk (safetensors) is nn/'s business.
//
// Note [Which parameters are decayed]
// make_param_groups splits the parameters into a "decay" group (weight_decay) and a
// "no_decay" group (weight decay 0). With the default rule, default_no_decay, a parameter
// is NOT decayed when
//   - its name contains "norm" (RMSNorm / LayerNorm weights: input_layernorm, q_norm, ...),
//   - its name ends in ".bias" (or is "bias"), or
//   - it has fewer than 2 dimensions (any other gain, scale or bias vector).
// So matrices (linear weights, the embedding, lm_head) are decayed and vectors are not,
// the usual rule for transformers (nanoGPT, Hugging Face's Trainer). Pass another
// predicate to change it; it returns true for "no decay".
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <xtensor/xarray.hpp>

#include "autograd/tensor.hpp"

namespace tg::optim {

// (name, parameter) pairs, as a model's named_parameters() gives them. Names are the
// model's dotted names ("model.layers.0.self_attn.q_proj.weight").
template <class T>
using NamedParameters = std::vector<std::pair<std::string, Tensor<T>>>;

// An optimizer's state: (name, array) pairs, e.g. "exp_avg.<param name>". The arrays are
// copies, independent of the optimizer.
template <class T>
using StateDict = std::vector<std::pair<std::string, xt::xarray<T>>>;

// A set of parameters sharing hyper-parameters.
//   weight_decay: unset means "the optimizer's default" (AdamWOptions::weight_decay, ...).
//   lr_scale:     this group's learning rate is lr * lr_scale (lr set per step).
template <class T>
struct ParamGroup {
  std::string name;  // for messages and reports ("decay", "no_decay", ...)
  NamedParameters<T> params;
  std::optional<double> weight_decay;
  double lr_scale = 1.0;
};

// True when a parameter should NOT get weight decay — see Note [Which parameters are decayed].
bool default_no_decay(const std::string& name, const Shape& shape);

using NoDecayPredicate = std::function<bool(const std::string& name, const Shape& shape)>;

// Two groups, in this order: {"decay", weight_decay} with every parameter for which
// no_decay(name, shape) is false, and {"no_decay", 0} with the others. Parameter order
// within a group is the order of `params`. Either group may be empty.
// Throws std::invalid_argument if weight_decay is negative or not finite.
template <class T>
std::vector<ParamGroup<T>> make_param_groups(const NamedParameters<T>& params, double weight_decay,
                                             const NoDecayPredicate& no_decay = default_no_decay);

// The common part of AdamW and SGD. A training loop sets the learning rate of the step,
// then steps:
//   opt.zero_grad(); loss.backward(); clip_grad_norm(opt.parameters(), 1.0);
//   opt.set_lr(schedule(t)); opt.step();
// A parameter without a gradient (has_grad() false) is skipped by step(), as PyTorch skips
// a parameter whose .grad is None: neither it nor its state (nor its own step count)
// changes. zero_grad() forgets the gradients (PyTorch's set_to_none=True).
template <class T>
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter that has a gradient; then step_count() is one more.
  virtual void step() = 0;
  // The state as named arrays (copies); see each optimizer for the names.
  virtual StateDict<T> state_dict() const = 0;
  // Restores a state_dict(). Every entry this optimizer needs must be present with the
  // right shape; with strict, an entry it does not know is an error too. On error nothing
  // is changed.
  virtual void load_state_dict(const StateDict<T>& state, bool strict = true) = 0;

  // The base learning rate; group g uses lr() * g.lr_scale. Must be finite and >= 0.
  void set_lr(double lr);
  double lr() const { return lr_; }
  // Number of step() calls so far (restored by load_state_dict).
  std::int64_t step_count() const { return step_count_; }
  // Forget every parameter's gradient.
  void zero_grad();
  const std::vector<ParamGroup<T>>& param_groups() const { return groups_; }
  // Every parameter, in group order.
  std::vector<Tensor<T>> parameters() const;
  NamedParameters<T> named_parameters() const;

 protected:
  // Checks the groups (see detail::check_groups) and lr; `who` names the optimizer in errors.
  Optimizer(const char* who, std::vector<ParamGroup<T>> groups, double lr);

  // f(group, name, param, k) for every parameter, in group order; k counts them (the index
  // of the parameter's own state, for the optimizers that keep one State per parameter).
  template <class F>
  void for_each_param(F&& f) const {
    std::size_t k = 0;
    for (const auto& g : groups_)
      for (const auto& [name, p] : g.params) f(g, name, p, k++);
  }
  // The update loop of step(): f(p, states[k], lr, weight_decay) for every parameter k that
  // has a gradient (as PyTorch: no .grad, no update), with its group's lr and weight decay
  // (default_wd where the group sets none).
  template <class State, class F>
  void update_each(std::vector<State>& states, double default_wd, F&& f) {
    std::size_t k = 0;
    for (auto& g : groups_) {
      const double lr = lr_ * g.lr_scale;
      const double wd = g.weight_decay.value_or(default_wd);
      for (auto& [name, p] : g.params) {
        State& s = states[k++];
        if (p.has_grad()) f(p, s, lr, wd);
      }
    }
  }
  // state_dict() of such an optimizer: put(name, state, out) adds one parameter's entries,
  // then "step" is the step count.
  template <class State, class Put>
  StateDict<T> per_param_state_dict(const std::vector<State>& states, Put put) const;
  // load_state_dict() of such an optimizer: get(name, param, reader) reads one parameter's
  // State; nothing changes unless every entry is right.
  template <class State, class Get>
  void load_per_param_state(const StateDict<T>& state, bool strict, std::vector<State>& states, Get get);

  std::string who_;
  std::vector<ParamGroup<T>> groups_;
  double lr_ = 0.0;
  std::int64_t step_count_ = 0;
};

namespace detail {

// The checks every optimizer makes when it is built: each parameter is defined and a leaf,
// names are non-empty and unique, and no tensor appears twice (a tied weight must be
// listed once). `who` starts the message ("AdamW").
template <class T>
void check_groups(const char* who, const std::vector<ParamGroup<T>>& groups);

// Looks entries up by name for load_state_dict and reports, naming the entry, one that is
// missing, has the wrong shape, or (when strict) was never asked for.
template <class T>
class StateReader {
 public:
  StateReader(const char* who, const StateDict<T>& state);
  // The entry `key`, which must have shape `shape`.
  const xt::xarray<T>& get(const std::string& key, const Shape& shape);
  // A step counter stored under `key`: one element (shape () or (1)), a whole number >= 0.
  std::int64_t get_step(const std::string& key);
  // With strict: throws if some entry was never asked for (it belongs to something else,
  // e.g. a parameter this optimizer does not have). (Duplicate names are rejected when the
  // reader is built.)
  void finish(bool strict) const;

 private:
  const xt::xarray<T>& find(const std::string& key);
  const char* who_;
  const StateDict<T>& state_;
  std::unordered_map<std::string, std::size_t> index_;
  std::vector<bool> used_;
};

// A step counter as a (1) array, the form state_dict() exports it in.
template <class T>
xt::xarray<T> step_array(std::int64_t step);

}  // namespace detail

template <class T>
template <class State, class Put>
StateDict<T> Optimizer<T>::per_param_state_dict(const std::vector<State>& states, Put put) const {
  StateDict<T> out;
  for_each_param([&](const ParamGroup<T>&, const std::string& name, const Tensor<T>&, std::size_t k) {
    put(name, states[k], out);
  });
  out.emplace_back("step", detail::step_array<T>(step_count_));
  return out;
}

template <class T>
template <class State, class Get>
void Optimizer<T>::load_per_param_state(const StateDict<T>& state, bool strict, std::vector<State>& states, Get get) {
  detail::StateReader<T> in(who_.c_str(), state);
  std::vector<State> loaded;
  for_each_param([&](const ParamGroup<T>&, const std::string& name, const Tensor<T>& p, std::size_t) {
    loaded.push_back(get(name, p, in));
  });
  const std::int64_t steps = in.get_step("step");
  in.finish(strict);
  states = std::move(loaded);
  step_count_ = steps;
}

}  // namespace tg::optim
