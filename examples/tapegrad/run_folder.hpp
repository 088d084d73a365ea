// examples/tapegrad/run_folder.hpp — what `tapegrad train` writes and `tapegrad sample`
// reads: the run folder and its settings (train.json).
//
// What it is for: one place that knows the layout of a run folder
//
//   config.json            the model config (nn/config.hpp) plus "preset": the preset's name
//   train.json             the training arguments (TrainArgs), so --resume needs nothing else
//   metrics.csv            one row per step (nn/metrics.hpp)
//   model.safetensors      the weights, Hugging Face names, F32 or F64 (nn/checkpoint.hpp)
//   optimizer.safetensors  AdamW's state and what an exact resume needs (nn/checkpoint.hpp)
//   loss.png               the loss curves (nn/plot.hpp; skipped with a warning without gnuplot)
//
// Every file is written atomically (nn/files.hpp). The library parts a user of tapegrad
// reuses live in nn/: files.hpp, checkpoint.hpp, metrics.hpp, plot.hpp, signals.hpp,
// train_step.hpp, generate.hpp; the names below re-export some of them for the programs.
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

#include "nn/checkpoint.hpp"
#include "nn/data.hpp"
#include "nn/files.hpp"
#include "nn/metrics.hpp"
#include "nn/plot.hpp"
#include "nn/model.hpp"
#include "optim/optim.hpp"

namespace tg::cli::run {

inline constexpr const char* kConfigFile = "config.json";
inline constexpr const char* kTrainFile = "train.json";
inline constexpr const char* kMetricsFile = "metrics.csv";
inline constexpr const char* kPlotFile = "loss.png";
inline constexpr const char* kTokenizerFile = "tokenizer.json";  // a run with --tokenizer: its copy

// The library's file, metrics, plot and checkpoint names, as the programs use them.
using io::join;
using io::read_file;
using io::read_json;
using io::write_file_atomic;
using plot::have_gnuplot;
using plot::plot_loss;
using train::kMetricsHeader;
using train::kModelFile;
using train::kNone;
using train::kOptimizerFile;
using train::load_checkpoint;
using train::load_weights;
using train::MetricsRow;
using train::metrics_csv;
using train::parse_metrics_csv;
using train::save_checkpoint;
using train::TrainState;

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
  std::string init_from;  // --init-from: a Hugging Face model folder the weights started from (absolute; "" none)
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
  int ranks = 1;    // MPI ranks it used (nn/distributed.hpp; the same, too); absent in older train.json: 1
  std::int64_t eval_every = 0, eval_batches = 0, save_every = 0;
  std::string dtype = "f32";
  // Note [BOS and document windows] (nn/data.hpp); absent in older train.json: off.
  std::int64_t bos_id = -1;  // >= 0: the BOS token id at position 0 of every window
  std::string doc_sep;       // "": windows start anywhere
  // Sink diagnostics (nn/diagnostics.hpp) every diag_every steps into diagnostics.csv (0: off).
  std::int64_t diag_every = 0, diag_batches = 1;
  // Recorded when the run starts, checked when it resumes.
  std::uint64_t data_bytes = 0;
  std::string data_fingerprint;  // 16 hex digits (data::Corpus::fingerprint)
  // --tokenizer: the tokenizer.json the run trains with (absolute path as given; "" bytes) and
  // its hash (16 hex digits, text::Tokenizer::hash); the run folder holds a copy, kTokenizerFile.
  std::string tokenizer;
  std::string tokenizer_hash;
};
nlohmann::ordered_json to_json(const TrainArgs& a);
// Errors (std::runtime_error) name `label` and the field.
TrainArgs train_args_from_json(const nlohmann::json& j, const std::string& label);

// ---- small helpers shared by the commands ----------------------------------------------

// "3m05s", "1h02m", "12.3s".
std::string format_duration(double seconds);
// The running executable's path (/proc/self/exe), or "" if unknown.
std::string executable_path();

}  // namespace tg::cli::run
