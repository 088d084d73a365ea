// optim/sgd.hpp — stochastic gradient descent with momentum, dampening, Nesterov momentum
// and (coupled, L2) weight decay, as torch.optim.SGD.
//
// What it is for: the simple optimizer (teaching examples, baselines, tests), over the
// same parameter groups and with the same state export as AdamW.
//
// What it is not: the arithmetic — each parameter's update is one call of the fused kernel
// tg::kernels::sgd_step (autograd/kernels/adamw.hpp), which follows PyTorch 1.13's
// `_single_tensor_sgd` operation by operation (tests/test_optim.cpp checks 20-step
// trajectories against torch.optim.SGD golden files in float64).
//
// The update of a parameter p with gradient g, with lr = lr() * group.lr_scale and
// wd = the group's weight decay:
//   d = g + wd*p                                     (weight decay is added to the gradient)
//   if momentum != 0:
//     buf = d                                        at the parameter's first update
//     buf = momentum*buf + (1-dampening)*d           afterwards
//     d = nesterov ? d + momentum*buf : buf
//   p = p - lr*d
//
// State dict (StateDict<T>), for every parameter <name>:
//   "momentum_buffer.<name>"  buf, the parameter's shape (only when momentum != 0)
//   "step.<name>"             (1): updates this parameter has had (0 means the next update
//                             is its first, which initialises buf to d)
// and "step" (1): step_count().
#pragma once

#include <cstdint>
#include <vector>

#include "optim/param_groups.hpp"

namespace tg::optim {

struct SGDOptions {
  double lr = 1e-2;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;  // for groups whose weight_decay is unset
  bool nesterov = false;
};

template <class T>
class SGD final : public Optimizer<T> {
 public:
  // Throws std::invalid_argument for lr, momentum or weight_decay < 0 (or non-finite),
  // a non-finite dampening, nesterov without momentum > 0 and dampening == 0 (as PyTorch),
  // and for bad groups (see Optimizer).
  SGD(std::vector<ParamGroup<T>> groups, SGDOptions options = {});
  // One group with options.weight_decay for every parameter.
  SGD(const NamedParameters<T>& params, SGDOptions options = {});

  void step() override;
  StateDict<T> state_dict() const override;
  void load_state_dict(const StateDict<T>& state, bool strict = true) override;

  const SGDOptions& options() const { return options_; }

 private:
  struct State {
    xt::xarray<T> momentum_buffer;  // shaped like the parameter; empty when momentum == 0
    std::int64_t step = 0;          // updates this parameter has had
  };
  bool has_momentum() const { return options_.momentum != 0.0; }
  SGDOptions options_;
  std::vector<State> state_;  // one per parameter, in group order
};

extern template class SGD<float>;
extern template class SGD<double>;

}  // namespace tg::optim
