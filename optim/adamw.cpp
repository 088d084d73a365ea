// optim/adamw.cpp — AdamW over parameter groups; the per-parameter update is the fused
// kernel tg::kernels::adamw_step. See adamw.hpp for the formulas and the state-dict names.
#include "optim/adamw.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

#include "autograd/kernels/adamw.hpp"
#include "autograd/kernels/dispatch.hpp"

namespace tg::optim {

namespace {

AdamWOptions checked(const AdamWOptions& o) {
  auto bad = [](const std::string& what, double v) {
    return std::invalid_argument("AdamW: " + what + ", got " + std::to_string(v));
  };
  if (!(o.lr >= 0.0) || !std::isfinite(o.lr)) throw bad("lr must be finite and >= 0", o.lr);
  if (!(o.beta1 >= 0.0 && o.beta1 < 1.0)) throw bad("beta1 must be in [0, 1)", o.beta1);
  if (!(o.beta2 >= 0.0 && o.beta2 < 1.0)) throw bad("beta2 must be in [0, 1)", o.beta2);
  if (!(o.eps >= 0.0) || !std::isfinite(o.eps)) throw bad("eps must be finite and >= 0", o.eps);
  if (!(o.weight_decay >= 0.0) || !std::isfinite(o.weight_decay))
    throw bad("weight_decay must be finite and >= 0", o.weight_decay);
  return o;
}

template <class T>
std::vector<ParamGroup<T>> one_group(const NamedParameters<T>& params) {
  return {ParamGroup<T>{"all", params, std::nullopt, 1.0}};
}

}  // namespace

template <class T>
AdamW<T>::AdamW(std::vector<ParamGroup<T>> groups, AdamWOptions options)
    : Optimizer<T>("AdamW", std::move(groups), checked(options).lr), options_(options) {
  this->for_each_param([&](const ParamGroup<T>&, const std::string&, const Tensor<T>& p, std::size_t) {
    State s;
    s.exp_avg = xt::zeros<T>(p.shape());
    s.exp_avg_sq = xt::zeros<T>(p.shape());
    state_.push_back(std::move(s));
  });
}

template <class T>
AdamW<T>::AdamW(const NamedParameters<T>& params, AdamWOptions options)
    : AdamW(one_group(params), options) {}

template <class T>
void AdamW<T>::step() {
  // Check every shape first, so a mistake leaves all parameters untouched.
  this->for_each_param([&](const ParamGroup<T>&, const std::string& name, const Tensor<T>& p, std::size_t k) {
    const State& s = state_[k];
    if (!p.has_grad()) return;
    if (p.grad().shape() != p.value().shape() || p.value().shape() != s.exp_avg.shape())
      throw std::invalid_argument("AdamW::step: parameter '" + name + "' is " + p.shape_str() + ", its gradient " +
                                  shape_to_string(p.grad().shape()) + ", its state " +
                                  shape_to_string(s.exp_avg.shape()));
  });
  this->update_each(state_, options_.weight_decay, [&](Tensor<T>& p, State& s, double lr, double wd) {
    ++s.step;  // only a parameter with a gradient steps (as PyTorch)
    xt::xarray<T>& value = p.mutable_value();
    TG_KERNEL(adamw_step)(std::int64_t(value.size()), value.data(), p.grad().data(), s.exp_avg.data(),
                           s.exp_avg_sq.data(), T(lr), T(options_.beta1), T(options_.beta2), T(options_.eps), T(wd),
                           s.step);
  });
  ++this->step_count_;
}

template <class T>
StateDict<T> AdamW<T>::state_dict() const {
  return this->per_param_state_dict(state_, [](const std::string& name, const State& s, StateDict<T>& out) {
    out.emplace_back("exp_avg." + name, s.exp_avg);
    out.emplace_back("exp_avg_sq." + name, s.exp_avg_sq);
    out.emplace_back("step." + name, detail::step_array<T>(s.step));
  });
}

template <class T>
void AdamW<T>::load_state_dict(const StateDict<T>& state, bool strict) {
  this->load_per_param_state(state, strict, state_,
                             [](const std::string& name, const Tensor<T>& p, detail::StateReader<T>& in) {
                               State s;
                               s.exp_avg = in.get("exp_avg." + name, p.shape());
                               s.exp_avg_sq = in.get("exp_avg_sq." + name, p.shape());
                               s.step = in.get_step("step." + name);
                               return s;
                             });
}

template class AdamW<float>;
template class AdamW<double>;

}  // namespace tg::optim
