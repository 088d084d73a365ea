// nn/estimate.hpp — what a model will cost, computed from its config before anything is
// allocated.
//
// What it is for: a config with `num_hidden_layers: 1e9` or `hidden_size: 1e12` used to
// grow memory until the machine gave up, or end in a bare std::bad_alloc, or (when a
// product of sizes overflowed 64 bits) fail deep inside a kernel after the run folder was
// written. `estimate_memory` counts the parameters and the bytes of a training or
// inference step with overflow-checked arithmetic, and `check_memory` refuses a model
// that does not fit, naming the field that makes it large and the estimated bytes.
//
// What it is not: an exact peak. The activation term is an estimate of what the tape keeps
// per token and layer (a few multiples of C and F, the attention's B·H·T rows, the logits);
// the point is to catch configs that are off by orders of magnitude, not by 20%.
#pragma once

#include <cstdint>
#include <string>

#include "nn/config.hpp"

namespace tg::nn {

struct MemoryEstimate {
  std::uint64_t parameters = 0;      // values, as count_parameters would say
  std::uint64_t weight_bytes = 0;    // parameters × dtype bytes
  std::uint64_t state_bytes = 0;     // training: gradients + AdamW's two moments
  std::uint64_t activation_bytes = 0;
  std::uint64_t total_bytes = 0;
  std::string largest;               // the term that dominates, e.g. "num_hidden_layers 1000000000 × 1.2 MB"
};

// Throws std::invalid_argument naming the field whose product overflows 64 bits.
// `batch` × `seq_len` tokens per step; `training` adds gradients, optimizer state and the
// activations kept for backward.
MemoryEstimate estimate_memory(const ModelConfig& c, std::uint64_t batch, std::uint64_t seq_len,
                               std::uint64_t dtype_bytes, bool training);

// The machine's physical memory in bytes (/proc/meminfo MemTotal; sysconf as a fallback).
std::uint64_t machine_memory_bytes();

// Throws std::invalid_argument when e.total_bytes exceeds `limit` (0: the machine's
// memory), naming e.largest, the estimate and the limit; `what` says where the config
// came from and `limit_name` what the limit is ("--max-memory 8G" or "the machine's memory").
void check_memory(const MemoryEstimate& e, std::uint64_t limit, const std::string& what);

// "8G", "512M", "1.5T", "123456" -> bytes; throws std::invalid_argument naming `flag`.
std::uint64_t parse_bytes(const std::string& text, const std::string& flag);

// 1234567 -> "1.2 MB" (powers of 1024, as free(1) and ls -h count).
std::string format_bytes(double bytes);

}  // namespace tg::nn
