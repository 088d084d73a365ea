// autograd/gradcheck.hpp — check the tape's gradients against finite differences.
//
// What it is for: proving an op, a module or a whole model differentiates correctly.
// In float64, gradcheck compares the vector-Jacobian products that backward() computes
// with central differences (f(x + εe) - f(x - εe)) / 2ε:
//   * small problems (inputs × outputs <= full_limit): the full Jacobian, entry by entry;
//   * large problems: random projections vᵀJu (v over the output, u over one input at a
//     time), plus a sample of single coordinates ∂(vᵀf)/∂x_i so a mismatch has an index.
// It reports the worst mismatch: which input, which element, analytic vs numeric.
//
// gradgradcheck checks second order the same way: it gradchecks the function
// (inputs, v) -> vᵀ J(inputs), the vector-Jacobian product computed by grad() with
// create_graph (the ops' differentiable backwards), for a fixed random v that is an input
// too (PyTorch's gradgradcheck). So the derivatives of every vjp — the Hessian-vector
// products of f — are compared with central differences of vjps.
//
// What it is not: a float32 check (round-off swamps central differences there), or a
// check of the forward value (compare against a reference for that).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "autograd/tensor.hpp"

namespace tg {

struct GradcheckOptions {
  double eps = 1e-6;             // finite-difference step
  double atol = 1e-7;            // |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-5;
  std::size_t full_limit = 4096; // inputs × outputs up to which the full Jacobian is built
  int projections = 6;           // random vᵀJu per input (large problems)
  int coordinates = 24;          // sampled coordinates per input (large problems)
  std::uint64_t seed = 1234;
};

struct GradcheckResult {
  bool ok = true;
  std::string mode;              // "full jacobian" or "projections"
  double max_abs_err = 0, max_rel_err = 0;
  std::size_t checks = 0;        // number of compared quantities
  std::string worst;             // where the worst mismatch is, analytic vs numeric
  std::string summary() const;
  explicit operator bool() const { return ok; }
};

using GradcheckFn = std::function<Tensor<double>(const std::vector<Tensor<double>>&)>;

// Checks d f(inputs) / d input for every input that requires grad. f must be
// deterministic (draw any randomness from a generator seeded inside f).
GradcheckResult gradcheck(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs,
                          const GradcheckOptions& options = {});

// Checks the derivatives of the vector-Jacobian product of f (second order; see above).
// The result's `worst` names inputs by position, the direction v being the last one.
GradcheckResult gradgradcheck(const GradcheckFn& f, const std::vector<Tensor<double>>& inputs,
                              const GradcheckOptions& options = {});

}  // namespace tg
