// nn/diagnostics.hpp — attention-sink metrics from the model's Diagnostics.
//
// What it is for: the measurements of the attention-sink literature, computed from what one
// forward pass with Diagnostics records (nn/model.hpp, nn/attention.hpp AttentionRecord):
//   - Sink_1^eps (Gu et al., "When Attention Sink Emerges in Language Models", ICLR 2025):
//     the share of (layer, head) pairs whose mean attention on the first token, over the
//     queries that can see it (positions >= 1; query 0 sees only itself), exceeds eps
//     (0.3 by default); per layer and overall;
//   - F-Attn (the gated-attention paper's first-token attention) per layer and its uniform
//     reference: what attention spread evenly over the visible keys would give,
//     mean over queries i = 1..T-1 of 1/(i+1) (0.020 for T = 256, 0.012 for T = 512);
//   - attention on key 1 (with a BOS token: the first text token) against key 0;
//   - max |h| of the layer outputs at position 0 against the other positions (massive
//     activations sit on the sink token, Sun et al. 2024);
//   - the mean gate score at position 0 against the others.
// Used by `tapegrad train --diag-every N` (diagnostics.csv in the run folder), the study's
// sinks mode, and `tapegrad probe`.
//
// What it is not: the recording itself (the model does that without changing its result).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "nn/model.hpp"

namespace tg::nn {

// Mean attention on key `key` per head: probs (B,H,Tq,Tk), query i at absolute position
// Tk - Tq + i; averaged over batch and the queries at absolute positions >= max(key, 1)
// (a query sees keys up to its own position). (H) values, NaN for a head with no such query.
template <class T>
std::vector<double> head_key_attention(const xt::xarray<T>& probs, std::size_t key);
// The mean of the non-NaN values (NaN when there is none).
double mean_over_heads(const std::vector<double>& v);

// Sink_1^eps from per-(layer, head) first-token attention: head_attention[l][h].
struct SinkRate {
  std::vector<double> per_layer;  // share of layer l's heads above eps
  double overall = 0;             // share of all (layer, head) pairs above eps
};
SinkRate sink_rate(const std::vector<std::vector<double>>& head_attention, double eps = 0.3);

// Mean over queries i = 1..T-1 of 1/(i+1): F-Attn of uniform causal attention over T tokens.
double uniform_first_token_attention(std::size_t T);

// One line of the sink metrics (the columns of diagnostics.csv).
struct SinkSummary {
  double eps = 0.3;
  std::size_t seq_len = 0;            // T of the forward pass
  SinkRate sink;
  std::vector<double> f_attn;         // per layer
  double f_attn_mean = 0, f_attn_uniform = 0, f_attn_max_head = 0;
  double key1_attention = 0;          // attention on key 1, mean over layers
  double max_h_first = 0, max_h_rest = 0;  // the largest over layers
  std::vector<double> max_h_layer;    // max |h| per layer output (M-Act per layer)
  double gate_first = 0, gate_rest = 0;    // mean gate score, mean over gated layers (NaN: none)
};
SinkSummary summarize_sinks(const Diagnostics& d, std::size_t seq_len, double eps = 0.3);

// diagnostics.csv: a header for L layers and one row (prefixed by `step,tokens,`).
std::string sink_csv_header(std::size_t layers);
std::string sink_csv_row(std::int64_t step, std::uint64_t tokens, const SinkSummary& s);

}  // namespace tg::nn
