// nn/presets.cpp — the named sizes (tiny ... small), the presets of the gating zoo (nn/MODEL.md
// "Presets": what each changes in a config, as the paper's rows), and parameter counts
// (declared in nn/config.hpp; config.json itself is read and written in nn/config.cpp).
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "nn/config.hpp"
#include "nn/config_detail.hpp"

namespace tg::nn {

namespace {

using detail::fail;
using detail::join;

}  // namespace

// ---- named sizes -------------------------------------------------------------------------

std::vector<std::string> size_names() { return {"tiny", "tiny_moe", "baby", "baby_moe", "small"}; }

ModelConfig named_size(const std::string& name) {
  ModelConfig c;
  if (name == "tiny" || name == "tiny_moe") {
    c.vocab_size = 48, c.hidden_size = 24, c.intermediate_size = 40, c.num_hidden_layers = 2;
    c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 6, c.max_position_embeddings = 64;
    if (name == "tiny_moe") c.num_experts = 4, c.num_experts_per_tok = 2, c.moe_intermediate_size = 16;
  } else if (name == "baby" || name == "baby_moe") {
    c.vocab_size = 256, c.hidden_size = 384, c.intermediate_size = 1024, c.num_hidden_layers = 6;
    c.num_attention_heads = 6, c.num_key_value_heads = 6, c.head_dim = 64, c.max_position_embeddings = 1024;
    if (name == "baby_moe") c.num_experts = 8, c.num_experts_per_tok = 2, c.moe_intermediate_size = 256;
  } else if (name == "small") {
    c.vocab_size = 256, c.hidden_size = 512, c.intermediate_size = 1536, c.num_hidden_layers = 8;
    c.num_attention_heads = 8, c.num_key_value_heads = 4, c.head_dim = 64, c.max_position_embeddings = 1024;
  } else {
    fail("unknown model size '" + name + "' (valid: " + join(size_names()) + ")");
  }
  c.validate();
  return c;
}

// ---- presets -----------------------------------------------------------------------------

namespace {

struct PresetInfo {
  const char* name;
  const char* description;
};

const std::vector<PresetInfo>& presets() {
  static const std::vector<PresetInfo> p = {
      {"baseline", "no gate"},
      {"more_kv_heads", "K doubled (capped at H); parameter-matched baseline"},
      {"more_q_heads", "H x 1.5 (rounded to a multiple of K); parameter-matched baseline"},
      {"more_experts", "E x 1.5 (needs an MoE size); parameter-matched baseline"},
      {"g1_elementwise", "G1 (SDPA output), elementwise, sigmoid, multiplicative"},
      {"g2_elementwise", "G2 (value), elementwise, sigmoid, multiplicative"},
      {"g3_elementwise", "G3 (key), elementwise, sigmoid, multiplicative"},
      {"g4_elementwise", "G4 (query), elementwise, sigmoid, multiplicative"},
      {"g5_elementwise", "G5 (o_proj output), elementwise, sigmoid, multiplicative"},
      {"g1_headwise", "G1, one sigmoid score per head"},
      {"g2_headwise", "G2, one sigmoid score per kv head"},
      {"g1_head_shared", "G1, elementwise, one sigmoid gate shared by all heads"},
      {"g2_head_shared", "G2, elementwise, one sigmoid gate shared by all kv heads"},
      {"g1_additive_silu", "G1, Y + SiLU(X W)"},
      {"g1_elementwise_silu", "G1, Y * SiLU(X W)"},
      {"g1_rmsnorm", "G1 probe: per-head RMSNorm of the SDPA output (no gate)"},
      {"g1_silu_only", "G1 probe: SiLU of the SDPA output (no gate, no parameters)"},
      {"g1_additive_identity", "G1, Y + X W"},
      {"g1_input_independent", "G1, Y * sigmoid(theta), theta (H,D) learned, zero-initialised"},
      {"g1_ns_sigmoid", "G1, Y * (0.5 + 0.5 sigmoid(X W))"},
  };
  return p;
}

std::size_t round_half_up(double x) { return static_cast<std::size_t>(std::floor(x + 0.5)); }

}  // namespace

std::vector<std::string> list_presets() {
  std::vector<std::string> r;
  for (auto& p : presets()) r.push_back(p.name);
  return r;
}

std::string preset_description(const std::string& name) {
  for (auto& p : presets())
    if (name == p.name) return p.description;
  fail("unknown preset '" + name + "' (valid: " + join(list_presets()) + ")");
}

void apply_preset(ModelConfig& c, const std::string& name) {
  (void)preset_description(name);  // unknown names fail here, listing the valid ones
  c.gate = GateConfig{};
  GateConfig& g = c.gate;
  const std::size_t H = c.num_attention_heads, K = c.num_key_value_heads;
  if (name == "baseline") {
  } else if (name == "more_kv_heads") {
    const std::size_t K2 = std::min(2 * K, H);
    if (K2 == 0 || H % K2 != 0)
      fail("preset more_kv_heads: doubled K = " + std::to_string(K2) + " does not divide H = " + std::to_string(H));
    c.num_key_value_heads = K2;
  } else if (name == "more_q_heads") {
    if (K == 0) fail("preset more_q_heads: num_key_value_heads is 0");
    c.num_attention_heads = std::max<std::size_t>(1, round_half_up(1.5 * double(H) / double(K))) * K;
  } else if (name == "more_experts") {
    if (!c.is_moe()) fail("preset more_experts needs an MoE size (num_experts > 0), e.g. tiny_moe or baby_moe");
    c.num_experts = round_half_up(1.5 * double(c.num_experts));
  } else {
    const std::string pos = name.substr(0, 2), rest = name.substr(3);
    g.position = pos == "g1" ? GatePosition::Sdpa
               : pos == "g2" ? GatePosition::Value
               : pos == "g3" ? GatePosition::Key
               : pos == "g4" ? GatePosition::Query
                             : GatePosition::Dense;
    if (rest == "elementwise") {
    } else if (rest == "headwise") {
      g.granularity = GateGranularity::Headwise;
    } else if (rest == "head_shared") {
      g.head_shared = true;
    } else if (rest == "additive_silu") {
      g.combine = GateCombine::Additive, g.activation = GateActivation::Silu;
    } else if (rest == "elementwise_silu") {
      g.activation = GateActivation::Silu;
    } else if (rest == "rmsnorm") {
      g.probe = GateProbe::RmsNorm;
    } else if (rest == "silu_only") {
      g.probe = GateProbe::Silu;
    } else if (rest == "additive_identity") {
      g.combine = GateCombine::Additive, g.activation = GateActivation::Identity;
    } else if (rest == "input_independent") {
      g.input_dependent = false;
    } else if (rest == "ns_sigmoid") {
      g.activation = GateActivation::NsSigmoid;
    } else {
      fail("apply_preset: preset '" + name + "' has no rule");  // unreachable: the table above lists it
    }
  }
  c.validate();
}

ModelConfig with_preset(ModelConfig config, const std::string& name) {
  apply_preset(config, name);
  return config;
}

std::size_t count_parameters(const ModelConfig& c) {
  c.validate();
  // In long double: a 64-bit mantissa holds every count below 2^64 exactly, and its range
  // cannot overflow for any sizes; every term is positive, so a total below 2^63 is exact.
  using W = long double;
  const W V = c.vocab_size, C = c.hidden_size, H = c.num_attention_heads, K = c.num_key_value_heads,
                    D = c.head_dim;
  W layer = 2 * C;                               // input_layernorm, post_attention_layernorm
  if (c.sandwich_norm) layer += 2 * C;                     // post_attn / post_mlp sandwich norms
  const W q = c.q_proj_rows();
  layer += q * C + 2 * K * D * C + C * H * D;              // q, k, v, o projections
  if (c.attention_bias) layer += q + 2 * K * D + C;        // their biases
  if (c.use_qk_norm) layer += 2 * D;                       // q_norm, k_norm
  const GateConfig& g = c.gate;
  const bool ew = g.granularity == GateGranularity::Elementwise;
  if (g.has_score_weights()) {
    switch (g.position) {
      case GatePosition::Value:
      case GatePosition::Key: layer += (ew ? K * D : K) * C; break;
      case GatePosition::Query: layer += (ew ? H * D : H) * C; break;
      case GatePosition::Dense: layer += C * C; break;
      default: break;  // sdpa: counted in q_proj
    }
  }
  if (g.position == GatePosition::Sdpa && !g.is_probe() && !g.input_dependent) layer += H * D;  // gate_theta
  if (g.probe == GateProbe::RmsNorm) layer += D;                                                // sdpa_norm
  if (c.is_moe())
    layer += W(c.num_experts) * C + W(c.num_experts) * 3 * C * c.moe_intermediate_size;
  else
    layer += 3 * C * c.intermediate_size;
  W n = V * C + W(c.num_hidden_layers) * layer + C;  // embed_tokens, layers, final norm
  if (!c.tie_word_embeddings) n += V * C;                   // lm_head
  if (n > W(std::numeric_limits<std::int64_t>::max()))
    fail("config: the model would have more than 2^63 parameters (num_hidden_layers " +
         std::to_string(c.num_hidden_layers) + ", hidden_size " + std::to_string(c.hidden_size) + ")");
  return static_cast<std::size_t>(n);
}

std::int64_t preset_extra_parameters(const ModelConfig& base, const std::string& preset) {
  return static_cast<std::int64_t>(count_parameters(with_preset(base, preset))) -
         static_cast<std::int64_t>(count_parameters(with_preset(base, "baseline")));
}

}  // namespace tg::nn
