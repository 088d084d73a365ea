// nn/train_step.hpp — one optimizer step of language-model training, by name.
//
// What it is for: the four lines every training loop repeats, in one short function a
// reader finds: clear the gradients, forward + loss, backward, measure (and clip) the global
// gradient norm, and — only if the loss and the norm are finite — set the learning rate and
// take the optimizer step. A non-finite step changes no weight and no moment.
//
// What it is not: the loop around it (data, evaluation, checkpoints: examples/tapegrad/train.cpp).
#pragma once

#include "nn/distributed.hpp"
#include "nn/model.hpp"
#include "optim/param_groups.hpp"

namespace tg::train {

struct StepResult {
  double loss = 0;       // the mean cross-entropy of the batch (without MoE's extra losses)
  double grad_norm = 0;  // the global L2 norm of the gradients before clipping
  bool finite = true;    // loss and grad_norm finite; false: the optimizer did not step
};

// Data parallelism (nn/distributed.hpp): this rank's part of a step over a group of ranks.
template <class T>
struct DataParallel {
  dist::GradReducer<T>* reducer = nullptr;  // sums the gradients across the group's ranks
  dist::Group group = dist::Group::world();
  double weight = 1;  // this rank's rows / the global batch (Note [Batch shares])
};

// batch: (B, T+1) token ids (Note [Batches of T+1 tokens]); clip <= 0: no clipping.
// With `parallel`, batch is this rank's share, the gradients are summed across the ranks
// before clipping (so every rank steps alike) and the loss is that of the global batch.
template <class T>
StepResult train_step(nn::CausalLM<T>& model, optim::Optimizer<T>& opt, const Index& batch, double lr, double clip,
                      const DataParallel<T>* parallel = nullptr);

// Rows [share_begin(B, N, r), share_begin(B, N, r + 1)) of a global batch (B, T+1): rank r's share.
Index batch_share(const Index& batch, const dist::Group& group);

}  // namespace tg::train
