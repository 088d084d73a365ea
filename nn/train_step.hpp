// nn/train_step.hpp — one optimizer step of language-model training, by name.
//
// What it is for: the four lines every training loop repeats, in one short function a
// reader finds: clear the gradients, forward + loss, backward, measure (and clip) the global
// gradient norm, and — only if the loss and the norm are finite — set the learning rate and
// take the optimizer step. A non-finite step changes no weight and no moment.
//
// What it is not: the loop around it (data, evaluation, checkpoints: examples/tapegrad/train.cpp).
#pragma once

#include "nn/model.hpp"
#include "optim/param_groups.hpp"

namespace tg::train {

struct StepResult {
  double loss = 0;       // the mean cross-entropy of the batch (without MoE's extra losses)
  double grad_norm = 0;  // the global L2 norm of the gradients before clipping
  bool finite = true;    // loss and grad_norm finite; false: the optimizer did not step
};

// batch: (B, T+1) token ids (Note [Batches of T+1 tokens]); clip <= 0: no clipping.
template <class T>
StepResult train_step(nn::CausalLM<T>& model, optim::Optimizer<T>& opt, const Index& batch, double lr, double clip);

}  // namespace tg::train
