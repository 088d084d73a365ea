// autograd/dot.cpp — to_dot(): see autograd/dot.hpp.
#include "autograd/dot.hpp"

#include <cmath>
#include <cstdio>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "autograd/tape.hpp"

namespace tg {

namespace {

std::string quoted(const std::string& s) {
  std::string r = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') r += '\\';
    if (c == '\n') {
      r += "\\n";
      continue;
    }
    r += c;
  }
  return r + "\"";
}

template <class T>
std::string numbers(const xt::xarray<T>& a) {
  std::string s = a.size() == 1 ? "" : "[";
  char buf[32];
  for (std::size_t i = 0; i < a.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%.4g", static_cast<double>(a.data()[i]));
    s += (i ? ", " : "") + std::string(buf);
  }
  return s + (a.size() == 1 ? "" : "]");
}

template <class T>
double norm(const xt::xarray<T>& a) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += double(a.data()[i]) * double(a.data()[i]);
  return std::sqrt(s);
}

}  // namespace

template <class T>
std::string to_dot(const std::vector<Tensor<T>>& roots, const DotOptions& o) {
  std::ostringstream s;
  s << "digraph tape {\n  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=11];\n";
  if (!o.title.empty()) s << "  labelloc=t;\n  label=" << quoted(o.title) << ";\n";
  std::unordered_map<const TensorImpl<T>*, std::string> tensor_ids;
  std::unordered_set<const Node<T>*> done_nodes;
  std::vector<std::shared_ptr<TensorImpl<T>>> stack;
  auto tensor_id = [&](const std::shared_ptr<TensorImpl<T>>& t) {
    auto it = tensor_ids.find(t.get());
    if (it != tensor_ids.end()) return it->second;
    const std::string id = "t" + std::to_string(tensor_ids.size());
    tensor_ids.emplace(t.get(), id);
    // the box: name (or the op that made it), shape, value and gradient
    std::string label = !t->name.empty() ? t->name : (t->grad_fn ? "#" + std::to_string(t->grad_fn->id) : "");
    label += (label.empty() ? "" : " ") + shape_to_string(t->value.shape());
    if (t->value.size() <= o.max_values && t->value.size() > 0) label += "\nvalue " + numbers(t->value);
    if (o.grads && t->has_grad)
      label += t->grad.size() <= o.max_values ? "\ngrad " + numbers(t->grad)
                                              : "\n|grad| " + numbers(xt::xarray<double>{norm(t->grad)});
    if (t->had_grad_fn && (!t->grad_fn || t->grad_fn->released)) label += "\n(graph freed)";
    const bool leaf = !t->had_grad_fn;
    s << "  " << id << " [shape=box, label=" << quoted(label)
      << (leaf && t->requires_grad ? ", style=filled, fillcolor=\"#dbe9f6\"" : "") << "];\n";
    stack.push_back(t);
    return id;
  };
  for (const auto& r : roots)
    if (r.defined()) tensor_id(r.impl());
  while (!stack.empty()) {
    auto t = stack.back();
    stack.pop_back();
    const auto& node = t->grad_fn;
    if (!node || node->released || done_nodes.count(node.get())) continue;
    done_nodes.insert(node.get());
    const std::string nid = "n" + std::to_string(node->id);
    s << "  " << nid << " [shape=ellipse, label="
      << quoted("#" + std::to_string(node->id) + " " + node->op + (node->info.empty() ? "" : "[" + node->info + "]"))
      << "];\n";
    s << "  " << nid << " -> " << tensor_ids.at(t.get()) << ";\n";
    for (const auto& in : node->inputs) {
      const std::string tid = tensor_id(in);  // declares the input's box first, if new
      s << "  " << tid << " -> " << nid << ";\n";
    }
  }
  s << "}\n";
  return s.str();
}

template std::string to_dot<float>(const std::vector<Tensor<float>>&, const DotOptions&);
template std::string to_dot<double>(const std::vector<Tensor<double>>&, const DotOptions&);

}  // namespace tg
