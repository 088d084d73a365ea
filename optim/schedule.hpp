// optim/schedule.hpp — learning-rate schedules: constant, and linear warm-up then cosine
// decay to a floor.
//
// What it is for: the learning rate of each training step, lr(t) for the 0-based step t,
// which the training loop hands to Optimizer::set_lr before Optimizer::step.
//
// What it is not: stateful. A schedule is a pure function of t (so resuming a run at step
// t needs nothing but t), and it does not touch an optimizer.
//
// Warm-up + cosine, with peak P, floor F, W warm-up steps and N total steps:
//   lr(t) = P * (t+1) / W                                          for t < W
//   lr(t) = F + (P-F) * 0.5 * (1 + cos(pi * min(1, (t-W)/(N-W))))  for t >= W
// So the first step already has lr P/W (not 0), step W-1 reaches P, step W is P again
// (the cosine starts at its top), the rate falls to F at t = N and stays at F after it.
// (With W == N the cosine part is empty: lr(t) = F for t >= N.)
#pragma once

#include <cstdint>
#include <string>

namespace tg::optim {

class LrSchedule {
 public:
  enum class Kind { Constant, WarmupCosine };

  // lr(t) = lr for every t. Throws std::invalid_argument unless lr is finite and >= 0.
  static LrSchedule constant(double lr);
  // See the file comment. Throws std::invalid_argument unless 0 <= floor_lr <= peak_lr
  // (finite), 0 <= warmup_steps <= total_steps and total_steps >= 1.
  static LrSchedule warmup_cosine(double peak_lr, std::int64_t warmup_steps, std::int64_t total_steps,
                                  double floor_lr);

  // The learning rate of the 0-based step t; throws std::invalid_argument for t < 0.
  double at(std::int64_t t) const;
  double operator()(std::int64_t t) const { return at(t); }

  // One line, e.g. "warmup_cosine(peak=0.001, warmup=100, total=2000, floor=0.0001)".
  std::string describe() const;

  Kind kind() const { return kind_; }
  double peak_lr() const { return peak_; }
  double floor_lr() const { return floor_; }
  std::int64_t warmup_steps() const { return warmup_; }
  std::int64_t total_steps() const { return total_; }

 private:
  LrSchedule() = default;
  Kind kind_ = Kind::Constant;
  double peak_ = 0.0, floor_ = 0.0;
  std::int64_t warmup_ = 0, total_ = 0;
};

}  // namespace tg::optim
