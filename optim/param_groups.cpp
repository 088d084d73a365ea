// optim/param_groups.cpp — parameter groups and the shared state-dict checks; see
// param_groups.hpp (Note [Which parameters are decayed]).
#include "optim/param_groups.hpp"

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>

namespace tg::optim {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool default_no_decay(const std::string& name, const Shape& shape) {
  return name.find("norm") != std::string::npos || name == "bias" || ends_with(name, ".bias") ||
         shape.size() < 2;
}

template <class T>
std::vector<ParamGroup<T>> make_param_groups(const NamedParameters<T>& params, double weight_decay,
                                             const NoDecayPredicate& no_decay) {
  if (!(weight_decay >= 0.0) || !std::isfinite(weight_decay))
    throw std::invalid_argument("make_param_groups: weight_decay must be finite and >= 0, got " +
                                std::to_string(weight_decay));
  if (!no_decay) throw std::invalid_argument("make_param_groups: the no-decay predicate is empty");
  ParamGroup<T> decay{"decay", {}, weight_decay, 1.0};
  ParamGroup<T> plain{"no_decay", {}, 0.0, 1.0};
  for (const auto& [name, p] : params) {
    if (!p.defined())
      throw std::invalid_argument("make_param_groups: parameter '" + name + "' is undefined");
    (no_decay(name, p.shape()) ? plain : decay).params.emplace_back(name, p);
  }
  return {std::move(decay), std::move(plain)};
}

namespace detail {

template <class T>
void check_groups(const char* who, const std::vector<ParamGroup<T>>& groups) {
  const std::string W(who);
  std::set<std::string> names;
  std::set<const void*> impls;
  for (const auto& g : groups) {
    if (!(g.lr_scale >= 0.0) || !std::isfinite(g.lr_scale))
      throw std::invalid_argument(W + ": group '" + g.name + "': lr_scale must be finite and >= 0, got " +
                                  std::to_string(g.lr_scale));
    if (g.weight_decay && (!(*g.weight_decay >= 0.0) || !std::isfinite(*g.weight_decay)))
      throw std::invalid_argument(W + ": group '" + g.name + "': weight_decay must be finite and >= 0, got " +
                                  std::to_string(*g.weight_decay));
    for (const auto& [name, p] : g.params) {
      if (name.empty()) throw std::invalid_argument(W + ": a parameter of group '" + g.name + "' has no name");
      if (!p.defined()) throw std::invalid_argument(W + ": parameter '" + name + "' is undefined");
      if (!p.is_leaf())
        throw std::invalid_argument(W + ": parameter '" + name + "' is not a leaf (it was computed by '" +
                                    p.op_name() + "'); optimizers update leaves only");
      if (!names.insert(name).second)
        throw std::invalid_argument(W + ": parameter name '" + name + "' appears twice");
      if (!impls.insert(p.impl().get()).second)
        throw std::invalid_argument(W + ": parameter '" + name +
                                    "' is a tensor already listed under another name (list a tied weight once)");
    }
  }
}

template <class T>
StateReader<T>::StateReader(const char* who, const StateDict<T>& state)
    : who_(who), state_(state), used_(state.size(), false) {
  for (std::size_t i = 0; i < state_.size(); ++i)
    if (!index_.emplace(state_[i].first, i).second)
      throw std::invalid_argument(std::string(who_) + "::load_state_dict: entry '" + state_[i].first +
                                  "' appears twice");
}

template <class T>
const xt::xarray<T>& StateReader<T>::find(const std::string& key) {
  const auto it = index_.find(key);
  if (it == index_.end())
    throw std::invalid_argument(std::string(who_) + "::load_state_dict: missing entry '" + key + "'");
  used_[it->second] = true;
  return state_[it->second].second;
}

template <class T>
const xt::xarray<T>& StateReader<T>::get(const std::string& key, const Shape& shape) {
  const xt::xarray<T>& a = find(key);
  if (!std::equal(a.shape().begin(), a.shape().end(), shape.begin(), shape.end()))
    throw std::invalid_argument(std::string(who_) + "::load_state_dict: entry '" + key + "' has shape " +
                                shape_to_string(a.shape()) + ", expected " + shape_to_string(shape));
  return a;
}

template <class T>
std::int64_t StateReader<T>::get_step(const std::string& key) {
  const xt::xarray<T>& a = find(key);
  if (a.size() != 1)
    throw std::invalid_argument(std::string(who_) + "::load_state_dict: entry '" + key + "' has shape " +
                                shape_to_string(a.shape()) + ", expected one element (a step count)");
  const double s = double(*a.data());
  if (!(s >= 0.0) || s != std::floor(s) || s > 9.0e15)
    throw std::invalid_argument(std::string(who_) + "::load_state_dict: entry '" + key +
                                "' is not a step count (a whole number >= 0): " + std::to_string(s));
  return std::int64_t(s);
}

template <class T>
void StateReader<T>::finish(bool strict) const {
  if (!strict) return;
  for (std::size_t i = 0; i < state_.size(); ++i)
    if (!used_[i])
      throw std::invalid_argument(std::string(who_) + "::load_state_dict: unexpected entry '" + state_[i].first +
                                  "' (no such parameter or state in this optimizer)");
}

template <class T>
xt::xarray<T> step_array(std::int64_t step) {
  xt::xarray<T> a = xt::xarray<T>::from_shape({1});
  a(0) = T(step);
  return a;
}

}  // namespace detail

// ---- Optimizer -----------------------------------------------------------------------

template <class T>
Optimizer<T>::Optimizer(const char* who, std::vector<ParamGroup<T>> groups, double lr)
    : who_(who), groups_(std::move(groups)) {
  detail::check_groups(who, groups_);
  set_lr(lr);
}

template <class T>
void Optimizer<T>::set_lr(double lr) {
  if (!(lr >= 0.0) || !std::isfinite(lr))
    throw std::invalid_argument(who_ + ": lr must be finite and >= 0, got " + std::to_string(lr));
  lr_ = lr;
}

template <class T>
void Optimizer<T>::zero_grad() {
  for (auto& g : groups_)
    for (auto& [name, p] : g.params) p.zero_grad();
}

template <class T>
std::vector<Tensor<T>> Optimizer<T>::parameters() const {
  std::vector<Tensor<T>> r;
  for (const auto& g : groups_)
    for (const auto& [name, p] : g.params) r.push_back(p);
  return r;
}

template <class T>
NamedParameters<T> Optimizer<T>::named_parameters() const {
  NamedParameters<T> r;
  for (const auto& g : groups_)
    for (const auto& np : g.params) r.push_back(np);
  return r;
}

#define TG_INSTANTIATE_GROUPS(T)                                                                      \
  template std::vector<ParamGroup<T>> make_param_groups<T>(const NamedParameters<T>&, double,         \
                                                           const NoDecayPredicate&);                   \
  template void detail::check_groups<T>(const char*, const std::vector<ParamGroup<T>>&);               \
  template class detail::StateReader<T>;                                                              \
  template class Optimizer<T>;                                                                        \
  template xt::xarray<T> detail::step_array<T>(std::int64_t);

TG_INSTANTIATE_GROUPS(float)
TG_INSTANTIATE_GROUPS(double)
#undef TG_INSTANTIATE_GROUPS

}  // namespace tg::optim
