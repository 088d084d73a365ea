// examples/tapegrad/train.hpp — what the two halves of `tapegrad train` share: train.cpp
// (the command line: flags, resume checks, the model and data settings, written down
// before anything is allocated) and train_loop.cpp (the training loop: data, model,
// optimizer, evaluation, checkpoints, the sample). See train.cpp's header for the program.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "nn/config.hpp"
#include "nn/hf_folder.hpp"
#include "nn/tokenizer.hpp"
#include "run_folder.hpp"

namespace tg::traincmd {

using tg::cli::run::MetricsRow;
using tg::cli::run::TrainArgs;
using tg::cli::run::TrainState;

// Ctrl-C (nn/signals.hpp): the first finishes the step and saves, a second quits at once
// (but never in the middle of writing a checkpoint).
inline constexpr const char* kStopMessage =
    "\ntapegrad train: interrupted: finishing this step, then saving a checkpoint (press Ctrl-C again to quit "
    "without saving)\n";

// The settings of one invocation.
struct Invocation {
  TrainArgs args;         // what defines the run (train.json)
  std::string out;        // the run folder
  bool resume = false;
  bool default_data = false;
  std::int64_t sample_len = 0;
  std::string sample_prompt;
  double sample_temperature = 0.8;
  std::int64_t log_every = 0;  // lines between progress lines when stdout is not a terminal
  std::int64_t stop_at = 0;    // stop (with a checkpoint) at this step; 0: never
  int keep = 2;                // complete checkpoints kept (checkpoints/step-NNNNNN/)
  bool detect_anomaly = false; // autograd's anomaly mode: name the first op making NaN/Inf
  bool checkpoint_activations = false;  // recompute each layer in backward (memory only; may change on resume)
  nn::ModelConfig config;
  std::string preset;
  std::shared_ptr<const nn::HfFolder> init;  // --init-from: opened and checked before anything is written
  // --tokenizer (or, resuming, the run folder's copy): the tokenizer and the exact bytes of its
  // tokenizer.json (copied into the run folder, so its hash is the same); null: bytes.
  std::shared_ptr<const text::Tokenizer> tokenizer;
  std::string tokenizer_text;
  std::vector<MetricsRow> metrics;  // rows already in metrics.csv (resume)
  std::vector<std::pair<std::int64_t, std::string>> diag_rows;  // diagnostics.csv rows (step, line)
};

// Helpers (train_loop.cpp).
std::string default_data_path(bool* found_note);
std::string hex64(std::uint64_t v);
std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t stream);
bool folder_holds_a_run(const std::string& dir);
std::string with_commas(std::uint64_t v);

// The run: everything after the command line (train_loop.cpp; T = float or double).
template <class T>
int train(Invocation& inv);

}  // namespace tg::traincmd
