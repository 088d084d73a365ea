// nn/checkpoint.hpp — a training checkpoint: the weights, the optimizer's state and what a
// resumed run needs to continue exactly (step, data generator state, elapsed time, tokens).
//
// What it is for: save_checkpoint / load_checkpoint for any CausalLM and Optimizer, in
// safetensors files a Hugging Face loader reads too (model.safetensors holds the weights
// under their Hugging Face names, F32 or F64), and load_weights for programs that only
// need the weights (sampling).
//
// What it is not: the run folder's other files (examples/tapegrad/run_folder.hpp), or the
// safetensors format itself (nn/safetensors.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nn/model.hpp"
#include "optim/param_groups.hpp"

namespace tg::train {

inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";
inline constexpr const char* kCheckpointsDir = "checkpoints";
inline constexpr const char* kManifestFile = "manifest.json";

// What a resumed run needs besides the weights and the optimizer's moments.
struct TrainState {
  std::int64_t step = 0;        // optimizer steps done
  std::string data_rng;         // data::generator_state of the batch generator
  double elapsed_s = 0;         // wall time of the run so far
  std::uint64_t tokens_seen = 0;
};

// ---- one checkpoint folder --------------------------------------------------------------

// Writes optimizer.safetensors, then model.safetensors (each atomically) into dir.
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

// "" when every weight and every optimizer moment is finite, else which one is not.
template <class T>
std::string first_non_finite(const nn::CausalLM<T>& model, const optim::Optimizer<T>& opt);

// ---- the checkpoints of a run folder (Note [Atomic checkpoints] in checkpoint.cpp) --------

struct CheckpointInfo {
  std::int64_t step = 0;  // -1: the older layout (files beside config.json)
  std::string path;       // the folder holding model.safetensors and optimizer.safetensors
};
// The complete checkpoints of run_dir, newest first (a run folder of the older layout: its
// root, step -1).
std::vector<CheckpointInfo> list_checkpoints(const std::string& run_dir);
// The newest complete checkpoint's folder, or "" if none.
std::string latest_checkpoint(const std::string& run_dir);
// Removes what an interrupted save left (temporaries, step folders without a manifest);
// returns what it removed.
std::vector<std::string> clean_interrupted_saves(const std::string& run_dir);
// Saves checkpoints/step-NNNNNN/ atomically and keeps the newest `keep` (>= 1). Refuses
// (std::runtime_error naming the tensor) when a weight or moment is NaN or Inf, so a
// diverged state never replaces a finite one. Returns the new folder.
template <class T>
std::string save_run_checkpoint(const std::string& run_dir, const nn::CausalLM<T>& model,
                                const optim::Optimizer<T>& opt, const TrainState& state, int keep = 2);
// Loads the newest complete checkpoint that passes every check (manifest sizes, shapes,
// finite values); older ones are tried when a newer fails, each failure appended to
// `skipped`. `used` gets the folder loaded. Throws when none loads, listing why.
template <class T>
TrainState load_latest_checkpoint(const std::string& run_dir, nn::CausalLM<T>& model, optim::Optimizer<T>& opt,
                                  std::string* used = nullptr, std::vector<std::string>* skipped = nullptr);

}  // namespace tg::train
