// optim/schedule.cpp — learning-rate schedules; the formulas are in schedule.hpp.
#include "optim/schedule.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace tg::optim {

namespace {
constexpr double kPi = 3.141592653589793238462643383279502884;
}

LrSchedule LrSchedule::constant(double lr) {
  if (!(lr >= 0.0) || !std::isfinite(lr))
    throw std::invalid_argument("LrSchedule::constant: lr must be finite and >= 0, got " + std::to_string(lr));
  LrSchedule s;
  s.kind_ = Kind::Constant;
  s.peak_ = s.floor_ = lr;
  return s;
}

LrSchedule LrSchedule::warmup_cosine(double peak_lr, std::int64_t warmup_steps, std::int64_t total_steps,
                                     double floor_lr) {
  const std::string K = "LrSchedule::warmup_cosine: ";
  if (!(peak_lr >= 0.0) || !std::isfinite(peak_lr))
    throw std::invalid_argument(K + "peak_lr must be finite and >= 0, got " + std::to_string(peak_lr));
  if (!(floor_lr >= 0.0 && floor_lr <= peak_lr))
    throw std::invalid_argument(K + "floor_lr must be in [0, peak_lr = " + std::to_string(peak_lr) + "], got " +
                                std::to_string(floor_lr));
  if (total_steps < 1) throw std::invalid_argument(K + "total_steps must be >= 1, got " + std::to_string(total_steps));
  if (warmup_steps < 0 || warmup_steps > total_steps)
    throw std::invalid_argument(K + "warmup_steps must be in [0, total_steps = " + std::to_string(total_steps) +
                                "], got " + std::to_string(warmup_steps));
  LrSchedule s;
  s.kind_ = Kind::WarmupCosine;
  s.peak_ = peak_lr;
  s.floor_ = floor_lr;
  s.warmup_ = warmup_steps;
  s.total_ = total_steps;
  return s;
}

double LrSchedule::at(std::int64_t t) const {
  if (t < 0) throw std::invalid_argument("LrSchedule::at: the step must be >= 0, got " + std::to_string(t));
  if (kind_ == Kind::Constant) return peak_;
  if (t < warmup_) return peak_ * double(t + 1) / double(warmup_);
  if (total_ == warmup_) return floor_;
  const double progress = std::min(1.0, double(t - warmup_) / double(total_ - warmup_));
  // Written in the order the formula reads, as a Python reference would evaluate it.
  return floor_ + (peak_ - floor_) * 0.5 * (1.0 + std::cos(kPi * progress));
}

std::string LrSchedule::describe() const {
  std::ostringstream os;
  os.precision(6);
  if (kind_ == Kind::Constant)
    os << "constant(lr=" << peak_ << ")";
  else
    os << "warmup_cosine(peak=" << peak_ << ", warmup=" << warmup_ << ", total=" << total_ << ", floor=" << floor_
       << ")";
  return os.str();
}

}  // namespace tg::optim
