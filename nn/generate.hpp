// nn/generate.hpp — text generation with a CausalLM: token picking and the decode loop.
//
// What it is for: continuing a prompt of token ids with a trained model, one token per
// step, under the usual sampling controls — temperature (0: greedy), top-k, top-p
// (nucleus) — from a seeded Generator, so a sample is reproducible. With use_cache the
// model runs one token per step over its KV cache (nn/model.hpp KVCache); without, it
// recomputes the whole window each step; both give the same tokens (tests/test_generate.cpp).
//
// What it is not: a tokenizer (ids in, ids out: nn/data.hpp ByteTokenizer,
// nn/tokenizer.hpp), batched or beam-search decoding, or a printer for the text.
//
// Note [Generation window]
// The model sees at most `context` tokens. When the window is full it restarts from its
// last half (with the cache: the cache is rebuilt from those tokens), so a long sample costs
// one prefill per context/2 tokens instead of a full forward per token.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "autograd/ops.hpp"  // tg::Generator
#include "nn/model.hpp"

namespace tg::nn {

struct SampleOptions {
  std::size_t length = 200;  // tokens to generate
  double temperature = 0.8;  // 0: greedy (argmax, lowest id on ties)
  std::size_t top_k = 0;     // 0: off
  double top_p = 1.0;        // 1: off; else keep the smallest set of tokens whose probability reaches p
  std::uint64_t seed = 0;
  bool use_cache = true;     // incremental forward over a KV cache, or the full window each step
  std::size_t context = 256;  // see Note [Generation window]
};

// The next token from logits (V) under the options: temperature, then top-k, then top-p,
// then one draw from gen (none when greedy). Throws std::runtime_error on NaN logits.
// p_i ∝ exp((l_i - max l) / temperature) over the kept candidates (decreasing probability,
// lower id first on ties).
std::int64_t pick_token(const double* logits, std::size_t V, const SampleOptions& o, Generator& gen);

// Continues `prompt` (at least one token, each in [0, vocab_size)) by o.length tokens;
// returns only the new ones. on_token, if set, is called with each new token as it is made.
template <class T>
std::vector<std::int64_t> generate(const CausalLM<T>& model, const std::vector<std::int64_t>& prompt,
                                   const SampleOptions& o,
                                   const std::function<void(std::int64_t)>& on_token = nullptr);

}  // namespace tg::nn
