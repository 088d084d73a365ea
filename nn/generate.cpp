// nn/generate.cpp — see generate.hpp: pick_token (temperature, top-k, top-p) and generate.
#include "nn/generate.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace tg::nn {

std::int64_t pick_token(const double* logits, std::size_t V, const SampleOptions& o, Generator& gen) {
  if (V == 0) throw std::invalid_argument("pick_token: no logits");
  for (std::size_t i = 0; i < V; ++i)
    if (std::isnan(logits[i])) throw std::runtime_error("sampling: the model produced NaN logits");
  if (o.temperature <= 0.0) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < V; ++i)
      if (logits[i] > logits[best]) best = i;
    return static_cast<std::int64_t>(best);
  }
  const double m = *std::max_element(logits, logits + V);
  std::vector<double> p(V);
  for (std::size_t i = 0; i < V; ++i) p[i] = std::exp((logits[i] - m) / o.temperature);
  // Candidates by decreasing probability (lower id first on ties).
  std::vector<std::size_t> order(V);
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return p[a] > p[b]; });
  std::size_t keep = V;
  if (o.top_k > 0) keep = std::min(keep, o.top_k);
  if (o.top_p < 1.0) {
    double total = 0;
    for (std::size_t i = 0; i < keep; ++i) total += p[order[i]];
    double cum = 0;
    std::size_t n = 0;
    while (n < keep) {
      cum += p[order[n]];
      ++n;
      if (cum >= o.top_p * total) break;
    }
    keep = std::max<std::size_t>(n, 1);
  }
  double total = 0;
  for (std::size_t i = 0; i < keep; ++i) total += p[order[i]];
  double u = gen.uniform() * total;
  for (std::size_t i = 0; i < keep; ++i) {
    u -= p[order[i]];
    if (u < 0) return static_cast<std::int64_t>(order[i]);
  }
  return static_cast<std::int64_t>(order[keep - 1]);  // round-off at the very end
}

template <class T>
std::vector<std::int64_t> generate(const CausalLM<T>& model, const std::vector<std::int64_t>& prompt,
                                   const SampleOptions& o, const std::function<void(std::int64_t)>& on_token) {
  if (prompt.empty()) throw std::invalid_argument("generate: the prompt must hold at least one token");
  const std::size_t V = model.config().vocab_size;
  for (auto t : prompt)
    if (t < 0 || static_cast<std::size_t>(t) >= V)
      throw std::invalid_argument("generate: prompt token " + std::to_string(t) + " is outside the vocabulary");
  NoGrad no_grad;
  const std::size_t W = std::max<std::size_t>(o.context, 2);  // the window
  std::vector<std::int64_t> tokens = prompt;
  std::size_t start = tokens.size() > W ? tokens.size() - W : 0;  // the window is tokens[start:]
  KVCache<T> cache = model.make_cache();
  bool cache_valid = false;  // the cache holds tokens[start : len-1]
  Generator gen(o.seed);
  std::vector<double> last(V);
  auto forward_last = [&](std::size_t from, std::size_t to, KVCache<T>* c) {
    Index x = Index::from_shape({std::size_t(1), to - from});  // (1,n)
    std::copy(tokens.begin() + from, tokens.begin() + to, x.data());
    const Tensor<T> logits = model.forward(x, c);  // (1,n,V)
    const T* row = logits.value().data() + (to - from - 1) * V;
    for (std::size_t v = 0; v < V; ++v) last[v] = static_cast<double>(row[v]);
  };
  std::vector<std::int64_t> out;
  out.reserve(o.length);
  for (std::size_t i = 0; i < o.length; ++i) {
    const std::size_t len = tokens.size();
    if (len - start > W) {  // the window is full: restart it from its last half
      start = len - std::max<std::size_t>(W / 2, 1);
      cache_valid = false;
    }
    if (!o.use_cache) {
      forward_last(start, len, nullptr);
    } else if (!cache_valid) {
      cache.clear();
      forward_last(start, len, &cache);
      cache_valid = true;
    } else {
      forward_last(len - 1, len, &cache);
    }
    const std::int64_t next = pick_token(last.data(), V, o, gen);
    tokens.push_back(next);
    out.push_back(next);
    if (on_token) on_token(next);
  }
  return out;
}

template std::vector<std::int64_t> generate<float>(const CausalLM<float>&, const std::vector<std::int64_t>&,
                                                   const SampleOptions&, const std::function<void(std::int64_t)>&);
template std::vector<std::int64_t> generate<double>(const CausalLM<double>&, const std::vector<std::int64_t>&,
                                                    const SampleOptions&, const std::function<void(std::int64_t)>&);

}  // namespace tg::nn
