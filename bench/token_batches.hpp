// bench/token_batches.hpp — the random token batches the training benchmarks
// (bench_train_step, bench_distributed) train on.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "autograd/ops.hpp"

namespace tg::bench {

// n (B, T) batches of tokens uniform in [0, vocab), from the seed (made before any clock
// starts; the same on every rank).
inline std::vector<tg::Index> random_token_batches(std::uint64_t seed, std::size_t vocab, std::int64_t n,
                                                    std::size_t B, std::size_t T) {
  std::mt19937_64 gen(seed + 12345);
  std::uniform_int_distribution<std::int64_t> tok(0, std::int64_t(vocab) - 1);
  std::vector<tg::Index> out;
  for (std::int64_t s = 0; s < n; ++s) {
    tg::Index b = tg::Index::from_shape({B, T});
    for (auto& v : b) v = tok(gen);
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace tg::bench
