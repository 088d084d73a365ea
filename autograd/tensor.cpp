// autograd/tensor.cpp — creation, inspection and printing of tensors (see tensor.hpp).
#include "autograd/tensor.hpp"

#include <atomic>

#include <cmath>
#include <iomanip>
#include <ostream>
#include <sstream>
#include <stdexcept>

#include <xtensor/xbuilder.hpp>
#include <xtensor/xio.hpp>

#include "autograd/kernels/dispatch.hpp"
#include "autograd/kernels/elementwise.hpp"
#include "autograd/tape.hpp"

namespace tg {

double Generator::normal(double mean, double std) {
  // Box–Muller on our own uniform draws, so the stream of numbers does not depend on
  // the standard library's distribution implementation.
  double u1 = uniform(), u2 = uniform();
  if (u1 < 1e-300) u1 = 1e-300;
  return mean + std * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

double Generator::uniform(double lo, double hi) {
  // 53 random bits -> [0, 1)
  double u = static_cast<double>(engine_() >> 11) * (1.0 / 9007199254740992.0);
  return lo + (hi - lo) * u;
}

template <class T>
Tensor<T>::Tensor(array value, bool requires_grad) : impl_(std::make_shared<TensorImpl<T>>()) {
  impl_->value = std::move(value);
  impl_->requires_grad = requires_grad;
}

template <class T>
TensorImpl<T>& Tensor<T>::checked(const char* what) const {
  if (!impl_) throw std::logic_error(std::string(what) + ": the tensor is undefined (default-constructed)");
  return *impl_;
}

template <class T>
Tensor<T> Tensor<T>::zeros(const Shape& shape, bool rg) {
  return Tensor(array(xt::zeros<T>(shape)), rg);
}
template <class T>
Tensor<T> Tensor<T>::ones(const Shape& shape, bool rg) {
  return Tensor(array(xt::ones<T>(shape)), rg);
}
template <class T>
Tensor<T> Tensor<T>::full(const Shape& shape, T fill, bool rg) {
  array a = array::from_shape(shape);
  a.fill(fill);
  return Tensor(std::move(a), rg);
}
template <class T>
Tensor<T> Tensor<T>::scalar(T v, bool rg) {
  array a = array::from_shape(Shape{});
  a() = v;
  return Tensor(std::move(a), rg);
}
template <class T>
Tensor<T> Tensor<T>::arange(T start, T stop, T step) {
  if (step == T(0)) throw std::invalid_argument("arange: step must not be 0");
  double n = std::ceil((double(stop) - double(start)) / double(step));
  std::size_t count = n > 0 ? static_cast<std::size_t>(n) : 0;
  array a = array::from_shape(Shape{count});
  for (std::size_t i = 0; i < count; ++i) a(i) = start + T(i) * step;
  return Tensor(std::move(a));
}
template <class T>
Tensor<T> Tensor<T>::randn(const Shape& shape, Generator& gen, T mean, T std, bool rg) {
  array a = array::from_shape(shape);
  for (auto& v : a) v = static_cast<T>(gen.normal(mean, std));
  return Tensor(std::move(a), rg);
}
template <class T>
Tensor<T> Tensor<T>::rand(const Shape& shape, Generator& gen, T lo, T hi, bool rg) {
  array a = array::from_shape(shape);
  for (auto& v : a) v = static_cast<T>(gen.uniform(lo, hi));
  return Tensor(std::move(a), rg);
}

template <class T>
Shape Tensor<T>::shape() const {
  const auto& s = checked("shape").value.shape();
  return Shape(s.begin(), s.end());
}
template <class T>
std::size_t Tensor<T>::dim() const { return checked("dim").value.dimension(); }
template <class T>
std::size_t Tensor<T>::numel() const { return checked("numel").value.size(); }
template <class T>
std::size_t Tensor<T>::size(int axis) const {
  const auto& v = checked("size").value;
  int n = static_cast<int>(v.dimension());
  int a = axis < 0 ? axis + n : axis;
  if (a < 0 || a >= n)
    throw std::out_of_range("size: axis " + std::to_string(axis) + " out of range for shape " +
                            shape_to_string(v.shape()));
  return v.shape()[a];
}
template <class T>
std::string Tensor<T>::shape_str() const { return shape_to_string(checked("shape").value.shape()); }

template <class T>
T Tensor<T>::item() const {
  const auto& v = checked("item").value;
  if (v.size() != 1)
    throw std::invalid_argument("item: tensor of shape " + shape_to_string(v.shape()) +
                                " has " + std::to_string(v.size()) + " elements, not 1");
  return *v.data();
}
template <class T>
const typename Tensor<T>::array& Tensor<T>::value() const { return checked("value").value; }
template <class T>
typename Tensor<T>::array& Tensor<T>::mutable_value() { return checked("mutable_value").value; }
template <class T>
const typename Tensor<T>::array& Tensor<T>::grad() const {
  const auto& i = checked("grad");
  if (!i.has_grad)
    throw std::logic_error("grad: tensor " + (i.name.empty() ? "" : "'" + i.name + "' ") + "of shape " +
                           shape_to_string(i.value.shape()) + " has no gradient (did backward() reach it?)");
  return i.grad;
}
template <class T>
typename Tensor<T>::array& Tensor<T>::mutable_grad() {
  auto& i = checked("mutable_grad");
  if (!i.has_grad) {
    i.grad = xt::zeros<T>(i.value.shape());
    i.has_grad = true;
  }
  return i.grad;
}
template <class T>
bool Tensor<T>::has_grad() const { return checked("has_grad").has_grad; }
template <class T>
bool Tensor<T>::requires_grad() const { return checked("requires_grad").requires_grad; }
template <class T>
Tensor<T>& Tensor<T>::requires_grad_(bool on) {
  auto& i = checked("requires_grad_");
  if (i.grad_fn)
    throw std::logic_error("requires_grad_: only leaves can change requires_grad; this tensor was made by '" +
                           i.grad_fn->op + "' (use detach() first)");
  i.requires_grad = on;
  return *this;
}
template <class T>
bool Tensor<T>::is_leaf() const { return !checked("is_leaf").had_grad_fn; }
template <class T>
std::string Tensor<T>::op_name() const {
  const auto& i = checked("op_name");
  return i.grad_fn ? i.grad_fn->op : (i.had_grad_fn ? "freed" : "leaf");
}
template <class T>
const std::string& Tensor<T>::name() const { return checked("name").name; }
template <class T>
Tensor<T>& Tensor<T>::set_name(std::string name) {
  checked("set_name").name = std::move(name);
  return *this;
}
template <class T>
Tensor<T> Tensor<T>::detach() const { return Tensor(array(checked("detach").value), false); }
template <class T>
Tensor<T> Tensor<T>::clone_leaf() const {
  const auto& i = checked("clone_leaf");
  Tensor t(array(i.value), i.requires_grad);
  t.impl_->name = i.name;
  return t;
}
namespace detail {
std::atomic<std::uint64_t> g_next_hook_id{1};
}  // namespace detail

template <class T>
std::uint64_t Tensor<T>::register_hook(GradHook<T> fn) const {
  auto& i = checked("register_hook");
  if (!fn) throw std::invalid_argument("register_hook: the hook is empty");
  if (!i.requires_grad)
    throw std::logic_error("register_hook: tensor " + (i.name.empty() ? std::string() : "'" + i.name + "' ") +
                           "of shape " + shape_str() + " does not require grad, so no gradient will reach a hook");
  const std::uint64_t id = detail::g_next_hook_id++;
  i.hooks.emplace_back(id, std::move(fn));
  return id;
}
template <class T>
void Tensor<T>::remove_hook(std::uint64_t id) const {
  auto& i = checked("remove_hook");
  for (auto it = i.hooks.begin(); it != i.hooks.end(); ++it)
    if (it->first == id) {
      i.hooks.erase(it);
      return;
    }
  throw std::invalid_argument("remove_hook: no hook with id " + std::to_string(id) + " on this tensor of shape " +
                              shape_str());
}

template <class T>
void Tensor<T>::zero_grad() {
  auto& i = checked("zero_grad");
  i.grad = array();
  i.has_grad = false;
  i.grad_graph.reset();
}
template <class T>
Tensor<T> Tensor<T>::grad_tensor() const {
  const auto& i = checked("grad_tensor");
  if (i.grad_graph) return Tensor(i.grad_graph);
  return Tensor(array(grad()), false);
}

namespace {
// grad += g on the elementwise kernel (same shapes, checked by the caller):
// gradients of a reused tensor meet here, once per extra use.
template <class T>
void add_into(xt::xarray<T>& grad, const xt::xarray<T>& g) {
  TG_KERNEL(binary_forward)(kernels::Binary::Add, static_cast<std::int64_t>(g.size()), grad.data(), g.data(), grad.data());
}
}  // namespace

template <class T>
void Tensor<T>::accumulate_grad(const array& g, const char* op) const {
  auto& i = checked("accumulate_grad");
  if (!std::equal(g.shape().begin(), g.shape().end(), i.value.shape().begin(), i.value.shape().end()))
    throw std::logic_error(std::string(op) + " backward: gradient of shape " + shape_to_string(g.shape()) +
                           " does not match its tensor's shape " + shape_to_string(i.value.shape()));
  i.grad_graph.reset();  // a fast backward's sum has no graph
  if (!i.has_grad) {
    i.grad = g;
    i.has_grad = true;
  } else {
    add_into(i.grad, g);
  }
}
template <class T>
void Tensor<T>::accumulate_grad(array&& g, const char* op) const {
  auto& i = checked("accumulate_grad");
  if (!std::equal(g.shape().begin(), g.shape().end(), i.value.shape().begin(), i.value.shape().end()))
    throw std::logic_error(std::string(op) + " backward: gradient of shape " + shape_to_string(g.shape()) +
                           " does not match its tensor's shape " + shape_to_string(i.value.shape()));
  i.grad_graph.reset();
  if (!i.has_grad) {
    i.grad = std::move(g);
    i.has_grad = true;
  } else {
    add_into(i.grad, g);
  }
}

// Note [Gradient buffers]
// The fast `backward` of every op fills its inputs' gradients one way: each gradient is
// built in a buffer of its own (xarray::from_shape when the kernel writes every element,
// xt::zeros when the kernel adds into it) and handed over with
// input.accumulate_grad(std::move(buffer), "op"), which moves the buffer in when the input
// has no gradient yet (the usual case: no copy) and adds it when it has one (an input used
// twice). One op alone writes into the input's gradient itself: slice, through
// Tensor::grad_for_accumulation(), because the pieces of a split fill disjoint rows of one
// buffer and buffers of their own would be one full-size array of zeros per piece.
template <class T>
typename Tensor<T>::array& Tensor<T>::grad_for_accumulation() const {
  auto& i = checked("grad_for_accumulation");
  if (!i.has_grad) {
    i.grad = xt::zeros<T>(i.value.shape());
    i.has_grad = true;
  }
  return i.grad;
}

template <class T>
std::ostream& operator<<(std::ostream& os, const Tensor<T>& t) {
  if (!t.defined()) return os << "Tensor(undefined)";
  std::ostringstream s;
  s << "Tensor" << t.shape_str() << " " << dtype_name<T>();
  if (!t.name().empty()) s << " '" << t.name() << "'";
  if (t.requires_grad()) s << " requires_grad op=" << t.op_name();
  s << "\n" << t.value();
  if (t.has_grad()) s << "\ngrad:\n" << t.grad();
  return os << s.str();
}

template class Tensor<float>;
template class Tensor<double>;
template std::ostream& operator<<(std::ostream&, const Tensor<float>&);
template std::ostream& operator<<(std::ostream&, const Tensor<double>&);

}  // namespace tg
