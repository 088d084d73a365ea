// examples/tapegrad/study_analysis.hpp — the arithmetic of `tapegrad study`, kept apart
// from the program so tests can check it on made-up numbers.
//
// What it is for:
//   - loss-spike and divergence counting on a training-loss sequence (the learning-rate
//     stability mode; Note [Spikes and divergence]);
//   - pooling the per-batch Diagnostics of nn/model.hpp over several evaluation batches
//     (F-Attn averaged, max |h| maximised, gate statistics merged exactly);
//   - a fixed-bin histogram of gate scores;
//   - the names of the study's run folders and the number formats of its report.
//
// What it is not: the training loop (`tapegrad train` does it), the model's diagnostics
// themselves (nn/model.hpp), or the report writer (study.cpp).
//
// Note [Spikes and divergence]
// losses[i] is the training loss of step i+1 (metrics.csv's train_loss). The running minimum
// m(t) is the smallest finite loss of steps 1..t-1, warm-up included. A step t after the
// warm-up (t > warmup) is a spike step when loss(t) > factor * m(t) (factor 1.3); consecutive
// spike steps are one spike, so `spikes` counts events and `spike_steps` counts steps.
// A run diverged when a loss is not finite (NaN or Inf, at any step: `tapegrad train` stops
// there) or when a loss after the warm-up is above the loss of step 1 (the initial loss, about
// ln 256 = 5.55 nats for bytes); diverged_step is the first such step.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "nn/model.hpp"

namespace tg::study {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- spikes and divergence ---------------------------------------------------------------

struct SpikeReport {
  std::int64_t spikes = 0;        // spike events (runs of consecutive spike steps)
  std::int64_t spike_steps = 0;   // steps above factor x running minimum
  bool diverged = false;
  std::int64_t diverged_step = 0; // first step (1-based) that showed divergence; 0: none
  std::string why;                // "NaN loss", "loss above its initial value", ""
  double initial = kNaN;          // loss of step 1
  double minimum = kNaN;          // smallest finite loss
};

// See Note [Spikes and divergence].
inline SpikeReport count_spikes(const std::vector<double>& losses, std::int64_t warmup, double factor = 1.3) {
  SpikeReport r;
  if (losses.empty()) return r;
  r.initial = losses[0];
  double run_min = std::numeric_limits<double>::infinity();
  bool in_spike = false;
  for (std::size_t i = 0; i < losses.size(); ++i) {
    const std::int64_t step = static_cast<std::int64_t>(i) + 1;
    const double x = losses[i];
    if (!std::isfinite(x)) {
      if (!r.diverged) r.diverged = true, r.diverged_step = step, r.why = "NaN loss";
      in_spike = false;
      continue;
    }
    if (step > warmup) {
      if (!r.diverged && std::isfinite(r.initial) && x > r.initial)
        r.diverged = true, r.diverged_step = step, r.why = "loss above its initial value";
      const bool spike = std::isfinite(run_min) && x > factor * run_min;
      if (spike) {
        ++r.spike_steps;
        if (!in_spike) ++r.spikes;
      }
      in_spike = spike;
    }
    run_min = std::min(run_min, x);
  }
  r.minimum = std::isfinite(run_min) ? run_min : kNaN;
  return r;
}

// ---- pooling diagnostics over batches ------------------------------------------------------

// Gate statistics merged over batches: the pooled mean, std, min, max and fractions are
// those of all the scores together (GateStats of nn/attention.hpp carries count, mean, std).
struct GatePool {
  double count = 0, sum = 0, sumsq = 0, below2 = 0, below3 = 0;
  double min = std::numeric_limits<double>::infinity(), max = -std::numeric_limits<double>::infinity();

  void add(const nn::GateStats& g) {
    const double n = double(g.count);
    if (n == 0) return;
    count += n;
    sum += g.mean * n;
    sumsq += (g.std * g.std + g.mean * g.mean) * n;
    below2 += g.frac_below_1e2 * n;
    below3 += g.frac_below_1e3 * n;
    min = std::min(min, g.min);
    max = std::max(max, g.max);
  }
  void add(const GatePool& o) {
    count += o.count, sum += o.sum, sumsq += o.sumsq, below2 += o.below2, below3 += o.below3;
    min = std::min(min, o.min);
    max = std::max(max, o.max);
  }
  bool empty() const { return count == 0; }
  double mean() const { return count ? sum / count : kNaN; }
  double std() const { return count ? std::sqrt(std::max(0.0, sumsq / count - mean() * mean())) : kNaN; }
  double frac_below_1e2() const { return count ? below2 / count : kNaN; }
  double frac_below_1e3() const { return count ? below3 / count : kNaN; }
};

// One layer over all evaluation batches.
struct LayerPool {
  double fattn_sum = 0;
  std::int64_t fattn_n = 0;
  double max_attn_output = 0, max_attn_residual = 0, max_ffn_output = 0, max_ffn_residual = 0;
  GatePool gate;
  double fattn() const { return fattn_n ? fattn_sum / double(fattn_n) : kNaN; }
};

// F-Attn: the mean over batches (every batch has the same number of query positions, so this
// is the mean over all of them); max |h|: the largest over all batches; gate: all scores.
struct DiagnosticsPool {
  std::vector<LayerPool> layers;
  std::int64_t batches = 0;

  void add(const nn::Diagnostics& d) {
    if (layers.empty()) layers.resize(d.layers.size());
    if (layers.size() != d.layers.size()) throw std::invalid_argument("DiagnosticsPool: the layer count changed");
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const auto& s = d.layers[l];
      auto& p = layers[l];
      if (std::isfinite(s.first_token_attention)) p.fattn_sum += s.first_token_attention, ++p.fattn_n;
      p.max_attn_output = std::max(p.max_attn_output, s.max_attn_output);
      p.max_attn_residual = std::max(p.max_attn_residual, s.max_attn_residual);
      p.max_ffn_output = std::max(p.max_ffn_output, s.max_ffn_output);
      p.max_ffn_residual = std::max(p.max_ffn_residual, s.max_ffn_residual);
      if (s.has_gate_scores) p.gate.add(s.gate);
    }
    ++batches;
  }
  // F-Attn averaged over layers (the paper's Table 4 number).
  double mean_fattn() const {
    double s = 0;
    int n = 0;
    for (const auto& l : layers)
      if (std::isfinite(l.fattn())) s += l.fattn(), ++n;
    return n ? s / n : kNaN;
  }
  // M-Act: max |layer output| averaged over layers.
  double mean_max_activation() const {
    if (layers.empty()) return kNaN;
    double s = 0;
    for (const auto& l : layers) s += l.max_ffn_residual;
    return s / double(layers.size());
  }
  // Every layer's gate scores together (empty without a gate).
  GatePool gate() const {
    GatePool g;
    for (const auto& l : layers) g.add(l.gate);
    return g;
  }
  // The mean gate score averaged over layers (Diagnostics::mean_gate_score's rule).
  double mean_gate_score() const {
    double s = 0;
    int n = 0;
    for (const auto& l : layers)
      if (!l.gate.empty()) s += l.gate.mean(), ++n;
    return n ? s / n : kNaN;
  }
};

// ---- histogram -------------------------------------------------------------------------------

// counts[i] += the number of values in [lo + i*w, lo + (i+1)*w), w = (hi-lo)/bins; values
// below lo go to bin 0, values at or above hi to the last bin; non-finite values are skipped.
template <class T>
void add_to_histogram(std::vector<double>& counts, const T* v, std::size_t n, double lo, double hi) {
  const std::size_t bins = counts.size();
  if (bins == 0 || !(hi > lo)) throw std::invalid_argument("add_to_histogram: needs bins > 0 and hi > lo");
  const double scale = double(bins) / (hi - lo);
  for (std::size_t i = 0; i < n; ++i) {
    const double x = double(v[i]);
    if (!std::isfinite(x)) continue;
    double f = std::floor((x - lo) * scale);
    f = std::clamp(f, 0.0, double(bins - 1));
    counts[static_cast<std::size_t>(f)] += 1;
  }
}

// ---- names and numbers ---------------------------------------------------------------------

// "0.003", "0.01", "3e-05": the shortest %g spelling.
inline std::string format_lr(double lr) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", lr);
  return buf;
}
// The run folder's name under <out>/runs: "g1_elementwise-lr0.003". Runs of different modes
// with the same preset and learning rate are the same run (trained once).
inline std::string run_name(const std::string& preset, double lr) { return preset + "-lr" + format_lr(lr); }

// A number for a markdown table: `digits` after the point, or "—" for NaN.
inline std::string fixed(double v, int digits) {
  if (!std::isfinite(v)) return std::isnan(v) ? "—" : (v > 0 ? "inf" : "-inf");
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}
// Three significant digits in plain notation for moderate numbers: 0.0467, 1.23, 94.1, 1053.
inline std::string sig3(double v) {
  if (!std::isfinite(v)) return fixed(v, 0);
  const double a = std::fabs(v);
  if (a == 0) return "0";
  if (a >= 100) return fixed(v, 0);
  if (a >= 10) return fixed(v, 1);
  if (a >= 1) return fixed(v, 2);
  if (a >= 0.001) {
    const int digits = 2 - static_cast<int>(std::floor(std::log10(a)));
    return fixed(v, digits);
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2e", v);
  return buf;
}
// A percentage with one decimal: "12.3%".
inline std::string percent(double frac) { return std::isfinite(frac) ? fixed(100 * frac, 1) + "%" : "—"; }
// "+65,536" / "0" / "-12".
inline std::string signed_count(std::int64_t v) {
  std::string s = std::to_string(v < 0 ? -v : v), r;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) r += ',';
    r += s[i];
  }
  return (v > 0 ? "+" : v < 0 ? "-" : "") + r;
}

}  // namespace tg::study
