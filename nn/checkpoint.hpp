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

#include "nn/model.hpp"
#include "optim/param_groups.hpp"

namespace tg::train {

inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";

// What a resumed run needs besides the weights and the optimizer's moments.
struct TrainState {
  std::int64_t step = 0;        // optimizer steps done
  std::string data_rng;         // data::generator_state of the batch generator
  double elapsed_s = 0;         // wall time of the run so far
  std::uint64_t tokens_seen = 0;
};

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

}  // namespace tg::train
