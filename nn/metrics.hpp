// nn/metrics.hpp — metrics.csv: one row per training step, written and read back exactly.
//
// What it is for: the training log a run folder keeps (and a study reads): the step, the
// learning rate, the training loss, the validation loss and bits per byte when evaluated,
// tokens per second, elapsed seconds and the gradient norm. Numbers are written in the
// shortest form that reads back to the same double, so a resumed run's log is bit for bit
// the uninterrupted run's.
//
// What it is not: a general CSV library (one fixed header), or the plot (nn/plot.hpp).
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace tg::train {

inline constexpr double kNone = std::numeric_limits<double>::quiet_NaN();

struct MetricsRow {
  std::int64_t step = 0;
  double lr = 0, train_loss = 0;
  double val_loss = kNone, val_bpb = kNone;  // NaN: not evaluated at this step
  double tokens_per_s = 0, elapsed_s = 0, grad_norm = 0;
};
inline constexpr const char* kMetricsHeader = "step,lr,train_loss,val_loss,val_bpb,tokens_per_s,elapsed_s,grad_norm";
// The CSV text: the header, then one line per row; numbers in the shortest form that reads
// back to the same double, NaN as an empty field.
std::string metrics_csv(const std::vector<MetricsRow>& rows);
// Parses metrics_csv's output; std::runtime_error naming `label` and the line otherwise.
std::vector<MetricsRow> parse_metrics_csv(const std::string& text, const std::string& label);

}  // namespace tg::train
