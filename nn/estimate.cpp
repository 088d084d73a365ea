// nn/estimate.cpp — see estimate.hpp: parameter count and step memory with checked arithmetic.
#include "nn/estimate.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace tg::nn {

namespace {

// An unsigned 64-bit count that remembers which field it came from, so an overflow names
// it: mul(a, b) throws "config: num_hidden_layers × ... overflows".
struct Count {
  std::uint64_t v = 0;
  std::string name;  // the field (or product of fields) it stands for
};

[[noreturn]] void overflow(const std::string& a, const std::string& b) {
  throw std::invalid_argument("config: the model's size overflows 64 bits at " + a + " x " + b +
                              " (a size field is far too large)");
}
Count field(std::uint64_t v, const std::string& name) { return {v, name + " " + std::to_string(v)}; }
Count mul(const Count& a, const Count& b) {
  Count r;
  if (__builtin_mul_overflow(a.v, b.v, &r.v)) overflow(a.name, b.name);
  r.name = a.name + " x " + b.name;
  return r;
}
Count add(const Count& a, const Count& b) {
  Count r;
  if (__builtin_add_overflow(a.v, b.v, &r.v)) overflow(a.name, b.name);
  r.name = a.v >= b.v ? a.name : b.name;  // the larger term names the sum
  return r;
}
Count num(std::uint64_t v) { return {v, std::to_string(v)}; }

}  // namespace

MemoryEstimate estimate_memory(const ModelConfig& c, std::uint64_t batch, std::uint64_t seq_len,
                               std::uint64_t dtype_bytes, bool training) {
  c.validate();
  const Count V = field(c.vocab_size, "vocab_size"), C = field(c.hidden_size, "hidden_size"),
              H = field(c.num_attention_heads, "num_attention_heads"),
              K = field(c.num_key_value_heads, "num_key_value_heads"), D = field(c.head_dim, "head_dim"),
              L = field(c.num_hidden_layers, "num_hidden_layers"),
              P = field(c.max_position_embeddings, "max_position_embeddings");
  const Count KD = mul(K, D), HD = mul(H, D);
  // q_proj's rows (HD, or 2HD / HD + H with a gate in it), as ModelConfig::q_proj_rows.
  Count q = HD;
  if (c.gate.in_q_proj()) q = add(HD, c.gate.granularity == GateGranularity::Elementwise ? HD : H);

  // ---- parameters of one layer (a bound: the gate's extra weights counted at their largest) ----
  Count layer = add(mul(q, C), add(mul(num(2), mul(KD, C)), mul(C, HD)));  // q, k, v, o
  layer = add(layer, mul(num(c.sandwich_norm ? 4 : 2), C));                     // norms
  if (c.use_qk_norm) layer = add(layer, mul(num(2), D));                        // q_norm, k_norm
  if (c.attention_bias) layer = add(layer, add(add(q, mul(num(2), KD)), C));    // q, k, v, o biases
  if (c.gate.enabled()) layer = add(layer, mul(C, add(C, HD)));                 // any gate's weights <= C (C + HD)
  Count mlp_width;  // F of the activations (dense), or the chosen experts' F (MoE)
  if (c.is_moe()) {
    const Count E = field(c.num_experts, "num_experts"), F = field(c.moe_intermediate_size, "moe_intermediate_size");
    layer = add(layer, add(mul(E, C), mul(num(3), mul(E, mul(C, F)))));
    mlp_width = add(mul(field(std::max<std::size_t>(c.num_experts_per_tok, 1), "num_experts_per_tok"), F), E);
  } else {
    const Count F = field(c.intermediate_size, "intermediate_size");
    layer = add(layer, mul(num(3), mul(C, F)));
    mlp_width = F;
  }
  Count layers = mul(L, layer);
  Count embed = mul(V, C);
  Count params = add(add(embed, layers), C);
  if (!c.tie_word_embeddings) params = add(params, embed);

  MemoryEstimate e;
  e.parameters = params.v;
  const Count bytes = num(dtype_bytes);
  const Count weights = mul(params, bytes);
  e.weight_bytes = weights.v;
  Count total = weights;
  if (training) {
    const Count state = mul(num(3), weights);  // gradients, AdamW m and v
    e.state_bytes = state.v;
    total = add(total, state);
  }
  // RoPE tables (P, D) cos and sin, built once for every position.
  const Count rope = mul(num(2), mul(mul(P, D), bytes));
  total = add(total, rope);
  // ---- activations: per token and layer, what the tape keeps (or a forward holds) ----
  const Count tokens = mul(field(batch, "batch"), field(seq_len, "seq_len"));
  Count per_token_layer = add(add(mul(num(8), C), add(q, mul(num(2), KD))), add(mul(num(2), HD), mul(num(4), mlp_width)));
  per_token_layer = add(per_token_layer, mul(H, field(seq_len, "seq_len")));  // attention rows (B, H, T, T)
  Count act = mul(mul(tokens, per_token_layer), bytes);
  if (training) act = mul(L, act);                               // every layer's kept for backward
  else act = add(act, mul(L, mul(mul(tokens, mul(num(2), KD)), bytes)));  // one layer live + the KV cache
  act = add(act, mul(mul(tokens, mul(num(3), V)), bytes));       // logits, softmax, their gradient
  e.activation_bytes = act.v;
  total = add(total, act);
  e.total_bytes = total.v;

  // The largest term names the cause.
  struct Term { std::uint64_t bytes; std::string what; };
  const std::uint64_t state_factor = training ? 4 : 1;
  std::vector<Term> terms = {
      {layers.v * dtype_bytes * state_factor, "num_hidden_layers " + std::to_string(c.num_hidden_layers) + " x " +
                                                  format_bytes(double(layer.v) * double(dtype_bytes * state_factor)) +
                                                  " of weights" + (training ? ", gradients and moments" : "") + " per layer"},
      {embed.v * dtype_bytes * state_factor * (c.tie_word_embeddings ? 1 : 2),
       "the embeddings (vocab_size " + std::to_string(c.vocab_size) + " x hidden_size " + std::to_string(c.hidden_size) + ")"},
      {rope.v, "the RoPE tables (max_position_embeddings " + std::to_string(c.max_position_embeddings) + " x head_dim " +
                   std::to_string(c.head_dim) + ")"},
      {act.v, "the activations of " + std::to_string(batch) + " x " + std::to_string(seq_len) + " tokens" +
                  (training ? " in num_hidden_layers " + std::to_string(c.num_hidden_layers) + " layers" : "") + ", " +
                  std::to_string(per_token_layer.v) + " values per token and layer (hidden_size " +
                  std::to_string(c.hidden_size) + ")"}};
  const Term* big = &terms[0];
  for (const auto& t : terms)
    if (t.bytes > big->bytes) big = &t;
  e.largest = big->what + ": " + format_bytes(double(big->bytes));
  return e;
}

std::uint64_t machine_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemTotal:") return kb * 1024;
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? std::uint64_t(pages) * std::uint64_t(page) : 0;
}

void check_memory(const MemoryEstimate& e, std::uint64_t limit, const std::string& what) {
  const bool machine = limit == 0;
  if (machine) limit = machine_memory_bytes();
  if (limit == 0 || e.total_bytes <= limit) return;
  throw std::invalid_argument(what + ": the model needs an estimated " + format_bytes(double(e.total_bytes)) + " (" +
                              std::to_string(e.parameters) + " parameters; the largest part is " + e.largest +
                              "), more than " + (machine ? "this machine's memory, " : "--max-memory ") +
                              format_bytes(double(limit)) + (machine ? " (raise the limit with --max-memory)" : ""));
}

std::uint64_t parse_bytes(const std::string& text, const std::string& flag) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  std::string suffix = end ? std::string(end) : std::string();
  if (!suffix.empty() && (suffix.back() == 'B' || suffix.back() == 'b')) suffix.pop_back();
  if (!suffix.empty() && (suffix.back() == 'i')) suffix.pop_back();
  double mult = 1;
  if (suffix == "K" || suffix == "k") mult = 1024.0;
  else if (suffix == "M" || suffix == "m") mult = 1024.0 * 1024;
  else if (suffix == "G" || suffix == "g") mult = 1024.0 * 1024 * 1024;
  else if (suffix == "T" || suffix == "t") mult = 1024.0 * 1024 * 1024 * 1024;
  else if (!suffix.empty()) end = nullptr;
  if (end == text.c_str() || end == nullptr || !std::isfinite(v) || !(v > 0) || v * mult >= 1.8e19)
    throw std::invalid_argument(flag + ": '" + text + "' is not a size in bytes (e.g. 8G, 512M, 1000000)");
  return static_cast<std::uint64_t>(v * mult);
}

std::string format_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB", "PB", "EB"};
  int u = 0;
  while (b >= 1024 && u < 6) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

}  // namespace tg::nn
