// nn/module.cpp — see module.hpp.
#include "nn/module.hpp"

#include <set>
#include <stdexcept>

namespace tg::nn {

template <class T>
std::size_t Module<T>::register_parameter(const std::string& name, Tensor<T> value) {
  if (name.empty() || name.find('.') != std::string::npos)
    throw std::invalid_argument("register_parameter: bad name '" + name + "' (non-empty, no dots)");
  for (auto& [n, p] : params_)
    if (n == name) throw std::invalid_argument("register_parameter: '" + name + "' is registered twice");
  if (!value.defined()) throw std::invalid_argument("register_parameter: '" + name + "' is an undefined tensor");
  value.requires_grad_(true);
  value.set_name(name);
  params_.emplace_back(name, std::move(value));
  return params_.size() - 1;
}

template <class T>
void Module<T>::add_child(const std::string& name, std::unique_ptr<Module<T>> m) {
  if (name.empty()) throw std::invalid_argument("register_module: empty name");
  for (auto& [n, c] : children_)
    if (n == name) throw std::invalid_argument("register_module: '" + name + "' is registered twice");
  m->train(training_);
  children_.emplace_back(name, std::move(m));
}

namespace {
std::uint64_t g_next_forward_hook = 1;
}  // namespace

template <class T>
std::uint64_t Module<T>::register_forward_hook(ForwardHook fn) const {
  if (!fn) throw std::invalid_argument("register_forward_hook: the hook is empty");
  const std::uint64_t id = g_next_forward_hook++;
  add_forward_hook(HookEntry{id, "", std::make_shared<ForwardHook>(std::move(fn))});
  return id;
}

template <class T>
void Module<T>::add_forward_hook(const HookEntry& h) const {
  forward_hooks_.push_back(h);
  for (auto& [n, c] : children_) c->add_forward_hook(HookEntry{h.id, h.path.empty() ? n : h.path + "." + n, h.fn});
}

template <class T>
bool Module<T>::drop_forward_hook(std::uint64_t id) const {
  bool found = false;
  for (auto it = forward_hooks_.begin(); it != forward_hooks_.end();)
    if (it->id == id) it = forward_hooks_.erase(it), found = true;
    else ++it;
  for (auto& [n, c] : children_) found = c->drop_forward_hook(id) || found;
  return found;
}

template <class T>
void Module<T>::remove_forward_hook(std::uint64_t id) const {
  if (!drop_forward_hook(id))
    throw std::invalid_argument("remove_forward_hook: no forward hook with id " + std::to_string(id) +
                                " on this module or below it");
}

template <class T>
void Module<T>::collect(const std::string& prefix, NamedTensors& out) const {
  for (auto& [n, p] : params_) out.emplace_back(prefix + n, p);
  for (auto& [n, c] : children_) c->collect(prefix + n + ".", out);
}

template <class T>
typename Module<T>::NamedTensors Module<T>::named_parameters() const {
  NamedTensors out;
  collect("", out);
  return out;
}

template <class T>
std::vector<Tensor<T>> Module<T>::parameters() const {
  std::vector<Tensor<T>> r;
  for (auto& [n, p] : named_parameters()) r.push_back(p);
  return r;
}

template <class T>
std::size_t Module<T>::num_parameters() const {
  std::size_t n = 0;
  for (auto& [name, p] : named_parameters()) n += p.numel();
  return n;
}

template <class T>
Tensor<T> Module<T>::parameter(const std::string& name) const {
  for (auto& [n, p] : named_parameters())
    if (n == name) return p;
  throw std::out_of_range("parameter: no parameter named '" + name + "'");
}

template <class T>
bool Module<T>::has_parameter(const std::string& name) const {
  for (auto& [n, p] : named_parameters())
    if (n == name) return true;
  return false;
}

template <class T>
void Module<T>::bind(const std::vector<Tensor<T>>& ps, std::size_t& next) {
  for (auto& [n, p] : params_) {
    if (next >= ps.size())
      throw std::invalid_argument("bind_parameters: " + std::to_string(ps.size()) + " tensors for more parameters");
    const Tensor<T>& q = ps[next++];
    if (!q.defined() || q.shape() != p.shape())
      throw std::invalid_argument("bind_parameters: parameter '" + n + "' is " + p.shape_str() + " but tensor #" +
                                  std::to_string(next - 1) + " is " + (q.defined() ? q.shape_str() : "undefined"));
    p = q;
  }
  for (auto& [n, c] : children_) c->bind(ps, next);
}

template <class T>
void Module<T>::bind_parameters(const std::vector<Tensor<T>>& ps) {
  std::size_t next = 0;
  bind(ps, next);
  if (next != ps.size())
    throw std::invalid_argument("bind_parameters: " + std::to_string(ps.size()) + " tensors for " +
                                std::to_string(next) + " parameters");
}

template <class T>
void Module<T>::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}

template <class T>
void Module<T>::zero_grad() {
  for (auto& [n, p] : params_) p.zero_grad();
  for (auto& [n, c] : children_) c->zero_grad();
}

template <class T>
void Module<T>::requires_grad_(bool on) {
  for (auto& [n, p] : params_) p.requires_grad_(on);
  for (auto& [n, c] : children_) c->requires_grad_(on);
}

template <class T>
std::vector<std::pair<std::string, xt::xarray<T>>> Module<T>::state_dict() const {
  std::vector<std::pair<std::string, xt::xarray<T>>> r;
  for (auto& [n, p] : named_parameters()) r.emplace_back(n, p.value());
  return r;
}

template <class T>
void Module<T>::load_state_dict(const StateSource<T>& src) {
  const NamedTensors mine = named_parameters();
  std::set<std::string> have(src.names.begin(), src.names.end());
  std::set<std::string> want;
  std::vector<std::string> problems;
  for (auto& [n, p] : mine) {
    want.insert(n);
    if (!have.count(n)) {
      problems.push_back("missing parameter '" + n + "' " + p.shape_str());
      continue;
    }
    const Shape s = src.shape(n);
    if (s != p.shape())
      problems.push_back("parameter '" + n + "' has shape " + shape_to_string(s) + " in the " + src.what +
                         " but " + p.shape_str() + " in the model");
  }
  for (auto& n : src.names)
    if (!want.count(n)) problems.push_back("unexpected entry '" + n + "' (the model has no such parameter)");
  if (!problems.empty()) {
    std::string msg = "load_state_dict (" + src.what + "): ";
    for (std::size_t i = 0; i < problems.size(); ++i) msg += (i ? "; " : "") + problems[i];
    throw std::invalid_argument(msg);
  }
  if (src.check)
    for (auto& [n, p] : mine) src.check(n);
  for (auto& [n, p] : mine) {
    if (src.read_into) {
      Tensor<T> handle = p;
      xt::xarray<T>& v = handle.mutable_value();
      src.read_into(n, v.data(), v.size());
      continue;
    }
    xt::xarray<T> v = src.get(n);
    const Shape s(v.shape().begin(), v.shape().end());
    if (s != p.shape())
      throw std::invalid_argument("load_state_dict (" + src.what + "): '" + n + "' read as " + shape_to_string(s) +
                                  ", expected " + p.shape_str());
    Tensor<T> handle = p;
    handle.mutable_value() = std::move(v);
  }
}

template class Module<float>;
template class Module<double>;

}  // namespace tg::nn
