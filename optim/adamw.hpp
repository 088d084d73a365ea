// optim/adamw.hpp — AdamW (Adam with decoupled weight decay), as torch.optim.AdamW.
//
// What it is for: the optimizer of the training loop. It keeps, per parameter, the first
// and second moments (exp_avg m, exp_avg_sq v) and the parameter's own step count, and
// updates every parameter that has a gradient, group by group (each group with its own
// weight decay and learning-rate multiplier).
//
// What it is not: the arithmetic — each parameter's update is one call of the fused kernel
// tg::kernels::adamw_step (autograd/kernels/adamw.hpp), which follows PyTorch 1.13's
// `_single_tensor_adamw` operation by operation, so in float64 a trajectory matches
// torch.optim.AdamW(foreach=False) to round-off (tests/test_optim.cpp checks 20 steps
// against golden files). Nor the schedule (optim/schedule.hpp) or clipping (optim/clip.hpp).
//
// The update of a parameter p with gradient g, at its k-th step (k = 1, 2, ...), with
// lr = lr() * group.lr_scale and wd = the group's weight decay:
//   p = p * (1 - lr*wd)                             decoupled weight decay
//   m = beta1*m + (1-beta1)*g
//   v = beta2*v + (1-beta2)*g*g
//   p = p - lr/(1-beta1^k) * m / (sqrt(v)/sqrt(1-beta2^k) + eps)
//
// State dict (StateDict<T>), for every parameter <name>:
//   "exp_avg.<name>"     m, the parameter's shape
//   "exp_avg_sq.<name>"  v, the parameter's shape
//   "step.<name>"        (1): how many updates this parameter has had (k above; it lags
//                        step_count() if the parameter went without a gradient sometimes)
// and "step" (1): step_count(). Hyper-parameters and the learning rate are not state: the
// caller rebuilds the optimizer with its options and sets the lr of each step.
#pragma once

#include <cstdint>
#include <vector>

#include "optim/param_groups.hpp"

namespace tg::optim {

// PyTorch's defaults (torch.optim.AdamW).
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  // for groups whose weight_decay is unset
};

template <class T>
class AdamW final : public Optimizer<T> {
 public:
  // Throws std::invalid_argument for lr < 0, betas outside [0, 1), eps < 0, weight_decay < 0
  // (or non-finite values), and for bad groups (see Optimizer).
  AdamW(std::vector<ParamGroup<T>> groups, AdamWOptions options = {});
  // One group with options.weight_decay for every parameter.
  AdamW(const NamedParameters<T>& params, AdamWOptions options = {});

  void step() override;
  StateDict<T> state_dict() const override;
  void load_state_dict(const StateDict<T>& state, bool strict = true) override;

  const AdamWOptions& options() const { return options_; }

 private:
  struct State {
    xt::xarray<T> exp_avg, exp_avg_sq;  // shaped like the parameter
    std::int64_t step = 0;              // updates this parameter has had
  };
  AdamWOptions options_;
  std::vector<State> state_;  // one per parameter, in group order
};

extern template class AdamW<float>;
extern template class AdamW<double>;

}  // namespace tg::optim
