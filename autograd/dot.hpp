// autograd/dot.hpp — the graph behind a tensor, drawn: Graphviz DOT of the recorded ops.
//
// What it is for: seeing what backward will walk, as micrograd's draw_dot shows its users.
// to_dot(roots) follows each root's node back to the leaves and writes a DOT digraph: a box
// per tensor (its name or the id of the op that made it, its shape, and for a tensor of at
// most max_values elements its value and gradient, else the gradient's norm), an ellipse
// per op ("#3 mul", with its attributes), and arrows input -> op -> output, in the direction
// the forward ran. Render it with Graphviz (`dot -Tpng graph.dot -o graph.png`; Debian's
// `graphviz` package), as `tapegrad demo --dot` and examples/walkthrough_* do.
//
// What it is not: the whole tape (Tape::dump lists every recorded node as text), nor a
// picture of what was freed: a graph already walked by backward() without retain_graph
// shows the leaves only, marked "graph freed".
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "autograd/tensor.hpp"

namespace tg {

struct DotOptions {
  std::size_t max_values = 4;  // show values and gradients of tensors this small
  bool grads = true;           // show gradients (when the tensor has one)
  std::string title;           // a label on top of the graph
};

template <class T>
std::string to_dot(const std::vector<Tensor<T>>& roots, const DotOptions& options = {});

}  // namespace tg
