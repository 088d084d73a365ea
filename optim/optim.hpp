// optim/optim.hpp — include this to get all of tapegrad's optimizers.
//
// What it is for: one include for the training loop: AdamW and SGD (with parameter groups
// and state export), the learning-rate schedules, and global-norm gradient clipping.
// What it is not: the training loop itself (examples/tapegrad/train).
//
// A training step, with gradient accumulation over k micro-batches:
//
//   opt.zero_grad();
//   for (int i = 0; i < k; ++i)
//     (loss_of(micro_batch(i)) / T(k)).backward();  // gradients add up on the tape's leaves
//   double norm = tg::optim::clip_grad_norm(opt.parameters(), max_norm);
//   opt.set_lr(schedule(step));
//   opt.step();
//
// Note [Gradient accumulation]
// backward() always adds into .grad (it never overwrites), so k backward() calls of
// loss_i / k leave in every parameter the gradient of the mean of the k losses — the
// gradient of the full batch when the micro-batches split it evenly and each loss is a
// mean over its micro-batch. Nothing else is needed: no helper, no special mode; the
// optimizer must only not zero the gradients between the micro-batches.
// (tests/test_optim.cpp "gradient accumulation" checks it on a linear model.)
#pragma once

#include "optim/adamw.hpp"
#include "optim/clip.hpp"
#include "optim/param_groups.hpp"
#include "optim/schedule.hpp"
#include "optim/sgd.hpp"
