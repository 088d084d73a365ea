// examples/tapegrad/run_folder.hpp — what `tapegrad train` writes and `tapegrad sample`
// reads: the run folder, its checkpoint, its metrics and plot.
//
// What it is for: one place that knows the layout of a run folder
//
//   config.json            the model config (nn/config.hpp) plus "preset": the preset's name
//   train.json             the training arguments (TrainArgs), so --resume needs nothing else
//   metrics.csv            one row per step: step,lr,train_loss,val_loss,val_bpb,
//                          tokens_per_s,elapsed_s,grad_norm (val_* empty between evaluations)
//   model.safetensors      the weights, Hugging Face names, F32 or F64 (metadata: step)
//   optimizer.safetensors  AdamW's state dict, and in its metadata the step, the data
//                          generator's state, elapsed time and tokens seen: all a resumed run
//                          needs to continue exactly as an uninterrupted one
//   loss.png               the loss curves (gnuplot; skipped with a warning without it)
//
// Every file is written atomically (a temporary file in the same folder, fsync, rename),
// so a crash leaves either the old or the new version, never a torn one. The two
// safetensors files carry the step in their metadata and a checkpoint whose files disagree
// is refused on load (a crash between the two renames).
//
// The sampler both programs use is in the library: nn/generate.hpp.
//
// What it is not: the training loop (train.cpp) or the command lines (train.cpp,
// sample.cpp); the file formats themselves (nn/safetensors.hpp, nn/config.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nn/data.hpp"
#include "nn/model.hpp"
#include "optim/optim.hpp"

namespace tg::cli::run {

inline constexpr const char* kConfigFile = "config.json";
inline constexpr const char* kTrainFile = "train.json";
inline constexpr const char* kMetricsFile = "metrics.csv";
inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";
inline constexpr const char* kPlotFile = "loss.png";

// `dir/name`.
std::string join(const std::string& dir, const std::string& name);

// ---- files -----------------------------------------------------------------------------

// Atomic: writes `path.tmp.<pid>`, fsyncs it, renames it over `path`. On failure the
// temporary is removed, `path` is untouched, and std::runtime_error names the path.
void write_file_atomic(const std::string& path, const std::string& bytes);
// The whole file; std::runtime_error naming the path if it cannot be read.
std::string read_file(const std::string& path);
// A JSON file, parsed; errors name the path.
nlohmann::json read_json(const std::string& path);

// ---- config.json -----------------------------------------------------------------------

struct ModelSpec {
  nn::ModelConfig config;
  std::string preset;  // "baseline", ..., or "custom" for a config.json without one
};
// config.json = ModelConfig::to_json() with "preset" added.
void save_model_spec(const std::string& path, const ModelSpec& spec);
// Reads a config.json (from a run folder or the user); "preset" is optional. Errors name
// the path and the field.
ModelSpec load_model_spec(const std::string& path);

// ---- train.json ------------------------------------------------------------------------

// The arguments of `tapegrad train` that define a run (see train.cpp for their meaning).
struct TrainArgs {
  std::string preset = "baseline";
  std::string size = "baby";
  std::string config;  // a config.json the model came from (empty: `size`)
  std::string data;    // the corpus, as an absolute path
  double val_fraction = 0.05;
  std::int64_t steps = 0;
  std::int64_t batch = 0;
  std::int64_t seq_len = 0;
  double lr = 0, min_lr = 0, weight_decay = 0, clip = 0;
  std::int64_t warmup = 0;
  double beta1 = 0.9, beta2 = 0.95;
  std::uint64_t seed = 0;
  int threads = 0;  // the thread count the run used (bitwise reproducibility needs the same)
  std::int64_t eval_every = 0, eval_batches = 0, save_every = 0;
  std::string dtype = "f32";
  // Recorded when the run starts, checked when it resumes.
  std::uint64_t data_bytes = 0;
  std::string data_fingerprint;  // 16 hex digits (data::Corpus::fingerprint)
};
nlohmann::ordered_json to_json(const TrainArgs& a);
// Errors (std::runtime_error) name `label` and the field.
TrainArgs train_args_from_json(const nlohmann::json& j, const std::string& label);

// ---- metrics.csv -----------------------------------------------------------------------

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

// ---- the loss plot ---------------------------------------------------------------------

// Is `gnuplot` on the PATH?
bool have_gnuplot();
// Draws train and validation loss against the step into `png_path` (atomically, through
// a temporary file). Returns false with `why` set when gnuplot is missing or fails; the
// caller warns and goes on.
bool plot_loss(const std::vector<MetricsRow>& rows, const std::string& png_path, const std::string& title,
               std::string* why);

// ---- checkpoints -----------------------------------------------------------------------

// What a resumed run needs besides the weights and the optimizer's moments.
struct TrainState {
  std::int64_t step = 0;        // optimizer steps done
  std::string data_rng;         // data::generator_state of the batch generator
  double elapsed_s = 0;         // wall time of the run so far
  std::uint64_t tokens_seen = 0;
};

// Writes optimizer.safetensors, then model.safetensors (each atomically).
template <class T>
void save_checkpoint(const std::string& dir, const nn::CausalLM<T>& model, const optim::Optimizer<T>& opt,
                     const TrainState& state);
// Reads and checks both files (they must exist, parse, match the model's parameters and
// shapes, and agree on the step) before changing anything; then loads the weights into
// model and the state into opt and returns the TrainState. Errors (std::runtime_error)
// name the file and the problem.
template <class T>
TrainState load_checkpoint(const std::string& dir, nn::CausalLM<T>& model, optim::Optimizer<T>& opt);
// Weights only (sample): a safetensors file whose names and shapes must match the model.
template <class T>
void load_weights(const std::string& path, nn::CausalLM<T>& model);

// ---- small helpers shared by the commands ----------------------------------------------

// "3m05s", "1h02m", "12.3s".
std::string format_duration(double seconds);
// The running executable's path (/proc/self/exe), or "" if unknown.
std::string executable_path();

}  // namespace tg::cli::run
