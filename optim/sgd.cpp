// optim/sgd.cpp — SGD over parameter groups; the per-parameter update is the fused kernel
// tg::kernels::sgd_step. See sgd.hpp for the formulas and the state-dict names.
#include "optim/sgd.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

#include "autograd/kernels/adamw.hpp"
#include "autograd/kernels/dispatch.hpp"

namespace tg::optim {

namespace {

SGDOptions checked(const SGDOptions& o) {
  auto bad = [](const std::string& what, double v) {
    return std::invalid_argument("SGD: " + what + ", got " + std::to_string(v));
  };
  if (!(o.lr >= 0.0) || !std::isfinite(o.lr)) throw bad("lr must be finite and >= 0", o.lr);
  if (!(o.momentum >= 0.0) || !std::isfinite(o.momentum)) throw bad("momentum must be finite and >= 0", o.momentum);
  if (!std::isfinite(o.dampening)) throw bad("dampening must be finite", o.dampening);
  if (!(o.weight_decay >= 0.0) || !std::isfinite(o.weight_decay))
    throw bad("weight_decay must be finite and >= 0", o.weight_decay);
  if (o.nesterov && (o.momentum <= 0.0 || o.dampening != 0.0))
    throw std::invalid_argument("SGD: nesterov momentum requires momentum > 0 and dampening == 0 (got momentum " +
                                std::to_string(o.momentum) + ", dampening " + std::to_string(o.dampening) + ")");
  return o;
}

}  // namespace

template <class T>
SGD<T>::SGD(std::vector<ParamGroup<T>> groups, SGDOptions options)
    : Optimizer<T>("SGD", std::move(groups), checked(options).lr), options_(options) {
  this->for_each_param([&](const ParamGroup<T>&, const std::string&, const Tensor<T>& p, std::size_t) {
    State s;
    if (has_momentum()) s.momentum_buffer = xt::zeros<T>(p.shape());
    state_.push_back(std::move(s));
  });
}

template <class T>
SGD<T>::SGD(const NamedParameters<T>& params, SGDOptions options)
    : SGD(std::vector<ParamGroup<T>>{ParamGroup<T>{"all", params, std::nullopt, 1.0}}, options) {}

template <class T>
void SGD<T>::step() {
  // Check every shape first, so a mistake leaves all parameters untouched.
  this->for_each_param([&](const ParamGroup<T>&, const std::string& name, const Tensor<T>& p, std::size_t k) {
    const State& s = state_[k];
    if (!p.has_grad()) return;
    const bool bad_buf = has_momentum() && s.momentum_buffer.shape() != p.value().shape();
    if (p.grad().shape() != p.value().shape() || bad_buf)
      throw std::invalid_argument("SGD::step: parameter '" + name + "' is " + p.shape_str() + ", its gradient " +
                                  shape_to_string(p.grad().shape()) + ", its momentum buffer " +
                                  shape_to_string(s.momentum_buffer.shape()));
  });
  this->update_each(state_, options_.weight_decay, [&](Tensor<T>& p, State& s, double lr, double wd) {
    xt::xarray<T>& value = p.mutable_value();
    TG_KERNEL(sgd_step)(std::int64_t(value.size()), value.data(), p.grad().data(),
                         has_momentum() ? s.momentum_buffer.data() : nullptr, T(lr), T(options_.momentum),
                         T(options_.dampening), T(wd), options_.nesterov, s.step == 0);
    ++s.step;
  });
  ++this->step_count_;
}

template <class T>
StateDict<T> SGD<T>::state_dict() const {
  return this->per_param_state_dict(state_, [this](const std::string& name, const State& s, StateDict<T>& out) {
    if (has_momentum()) out.emplace_back("momentum_buffer." + name, s.momentum_buffer);
    out.emplace_back("step." + name, detail::step_array<T>(s.step));
  });
}

template <class T>
void SGD<T>::load_state_dict(const StateDict<T>& state, bool strict) {
  this->load_per_param_state(state, strict, state_,
                             [this](const std::string& name, const Tensor<T>& p, detail::StateReader<T>& in) {
                               State s;
                               if (has_momentum()) s.momentum_buffer = in.get("momentum_buffer." + name, p.shape());
                               s.step = in.get_step("step." + name);
                               return s;
                             });
}

template class SGD<float>;
template class SGD<double>;

}  // namespace tg::optim
