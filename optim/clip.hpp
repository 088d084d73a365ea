// optim/clip.hpp — the global gradient norm, and clipping gradients by it.
//
// What it is for: torch.nn.utils.clip_grad_norm_ (norm_type 2) between backward() and the
// optimizer step. The norm is the L2 norm of all gradients taken together, as if
// concatenated into one vector:
//   norm  = sqrt(sum over parameters, sum over elements of g^2)   (accumulated in double)
//   scale = max_norm / (norm + 1e-6)
//   if scale < 1: every g *= scale
// and the norm before clipping is returned (to log it). Parameters without a gradient are
// left out, as PyTorch does; with none at all the norm is 0.
//
// A non-finite norm (a NaN or Inf somewhere in the gradients) is returned as it is and the
// gradients are left untouched, so the caller can see it and skip the step; with
// error_if_nonfinite it throws std::runtime_error instead. (PyTorch, without the error
// flag, would multiply the gradients by NaN or 0 — clipping cannot repair them either way.)
//
// Reproducible: the sum of squares is cut into fixed blocks whose partial sums are added
// in order, so the norm does not depend on the thread count.
//
// What it is not: a per-parameter or value clipper, or other norm types (only L2).
#pragma once

#include <vector>

#include "autograd/tensor.hpp"
#include "optim/param_groups.hpp"

namespace tg::optim {

// The global L2 norm of the gradients of params (those that have one), in double.
template <class T>
double grad_norm(const std::vector<Tensor<T>>& params);

// Clips as described above; returns the norm before clipping. Throws std::invalid_argument
// unless max_norm > 0 and finite.
template <class T>
double clip_grad_norm(const std::vector<Tensor<T>>& params, double max_norm, bool error_if_nonfinite = false);

template <class T>
double clip_grad_norm(const NamedParameters<T>& params, double max_norm, bool error_if_nonfinite = false) {
  std::vector<Tensor<T>> ps;
  ps.reserve(params.size());
  for (const auto& np : params) ps.push_back(np.second);
  return clip_grad_norm(ps, max_norm, error_if_nonfinite);
}

}  // namespace tg::optim
