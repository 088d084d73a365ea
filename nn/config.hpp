// nn/config.hpp — the model configuration: what config.json says, checked.
//
// What it is for: ModelConfig holds every field that shapes the model of nn/MODEL.md —
// the Hugging Face Qwen3 fields (vocab_size, hidden_size, ..., rope_scaling,
// elementwise_attn_output_gate, headwise_attn_output_gate), the MoE fields of Qwen3-MoE
// (num_experts, num_experts_per_tok, moe_intermediate_size, norm_topk_prob,
// router_aux_loss_coef) and this project's own fields (the seven gate axes, sandwich_norm,
// router_z_loss_coef). It parses and writes config.json with nlohmann::json, validates
// (unknown fields, wrong types and contradictions are errors that name the field), and
// knows the named sizes (`tiny`, `baby`, `small`, ...) and the presets of MODEL.md's table.
//
// What it is not: the model (nn/model.hpp) or checkpoint I/O (nn/safetensors.hpp).
//
// Note [One gate configuration]
// Every gating variant of the paper is a value of GateConfig; no class per variant exists.
// The Hugging Face flags elementwise_attn_output_gate / headwise_attn_output_gate are not
// stored: they are a function of GateConfig (true exactly when the gate is an
// input-dependent G1 gate whose weights live in the widened q_proj), checked on read and
// derived on write, so a config can never hold two opinions about the gate.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "autograd/ops.hpp"

namespace tg::nn {

enum class GatePosition { None, Sdpa, Value, Key, Query, Dense };  // none, G1 .. G5
enum class GateGranularity { Elementwise, Headwise };
enum class GateCombine { Multiplicative, Additive };
enum class GateActivation { Sigmoid, Silu, Identity, NsSigmoid };
enum class GateProbe { None, RmsNorm, Silu };

// config.json spellings ("sdpa", "headwise", "ns_sigmoid", ...), and back (throws
// std::invalid_argument listing the valid values).
std::string to_string(GatePosition v);
std::string to_string(GateGranularity v);
std::string to_string(GateCombine v);
std::string to_string(GateActivation v);
std::string to_string(GateProbe v);
GatePosition parse_gate_position(const std::string& s);
GateGranularity parse_gate_granularity(const std::string& s);
GateCombine parse_gate_combine(const std::string& s);
GateActivation parse_gate_activation(const std::string& s);
GateProbe parse_gate_probe(const std::string& s);

// The seven gate axes of MODEL.md "Gates". See Note [One gate configuration].
struct GateConfig {
  GatePosition position = GatePosition::None;
  GateGranularity granularity = GateGranularity::Elementwise;
  bool head_shared = false;
  GateCombine combine = GateCombine::Multiplicative;
  GateActivation activation = GateActivation::Sigmoid;
  bool input_dependent = true;
  GateProbe probe = GateProbe::None;

  bool enabled() const { return position != GatePosition::None; }
  bool is_probe() const { return probe != GateProbe::None; }
  // A gate computed from the input with a weight W_θ (every gate but probes and θ gates).
  bool has_score_weights() const { return enabled() && !is_probe() && input_dependent; }
  // G1 with W_θ: its rows live in the widened q_proj (the HF flags are true).
  bool in_q_proj() const { return position == GatePosition::Sdpa && has_score_weights(); }
  bool hf_elementwise_flag() const { return in_q_proj() && granularity == GateGranularity::Elementwise; }
  bool hf_headwise_flag() const { return in_q_proj() && granularity == GateGranularity::Headwise; }
  // One line for logs: "sdpa elementwise multiplicative sigmoid".
  std::string describe() const;
  bool operator==(const GateConfig&) const = default;
};

struct ModelConfig {
  // ---- Hugging Face Qwen3 fields ----
  std::size_t vocab_size = 0;               // V
  std::size_t hidden_size = 0;              // C
  std::size_t intermediate_size = 0;        // F (dense SwiGLU)
  std::size_t num_hidden_layers = 0;        // L
  std::size_t num_attention_heads = 0;      // H
  std::size_t num_key_value_heads = 0;      // K (absent in config.json: = H)
  std::size_t head_dim = 0;                 // D (absent in config.json: = C / H)
  std::size_t max_position_embeddings = 32768;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<YarnScaling> rope_scaling;  // only rope_type "yarn" is supported
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool use_qk_norm = true;
  double initializer_range = 0.02;
  // ---- this project's fields ----
  GateConfig gate;
  bool sandwich_norm = false;
  // ---- MoE (num_experts == 0: dense SwiGLU) ----
  std::size_t num_experts = 0;              // E
  std::size_t num_experts_per_tok = 0;      // k
  std::size_t moe_intermediate_size = 0;
  bool norm_topk_prob = true;
  double router_aux_loss_coef = 0.001;
  double router_z_loss_coef = 0.001;

  bool is_moe() const { return num_experts > 0; }
  std::size_t kv_groups() const { return num_attention_heads / num_key_value_heads; }  // H / K
  // Rows of q_proj.weight: H*D, plus the G1 gate rows (H*D elementwise, H headwise).
  std::size_t q_proj_rows() const;

  // Throws std::invalid_argument naming the field for anything inconsistent
  // (sizes zero, H % K != 0, odd head_dim, contradicting gate axes, k > E, ...).
  void validate() const;

  // config.json. from_json validates; unknown fields, wrong types and unsupported
  // values of known Hugging Face fields are errors naming the field.
  static ModelConfig from_json(const nlohmann::json& j);
  nlohmann::ordered_json to_json() const;  // every field, HF gate flags derived
  static ModelConfig load(const std::string& path);  // errors are prefixed with the path
  void save(const std::string& path) const;
  bool operator==(const ModelConfig&) const;
};

// ---- named sizes ----
// tiny (tests), tiny_moe, baby, baby_moe, small. Unknown names throw, listing the valid ones.
ModelConfig named_size(const std::string& name);
std::vector<std::string> size_names();

// ---- presets (MODEL.md "Presets") ----
std::vector<std::string> list_presets();
std::string preset_description(const std::string& name);
// Applies a preset to a base size: resets the gate, then makes the preset's change
// (more_kv_heads: K doubled, capped at H; more_q_heads: H x 1.5 rounded half-up to a
// multiple of K; more_experts: E x 1.5 rounded half-up). Throws for an unknown name
// (listing the valid ones) and when the change is impossible (no MoE for more_experts,
// a doubled K that does not divide H).
void apply_preset(ModelConfig& config, const std::string& name);
ModelConfig with_preset(ModelConfig config, const std::string& name);

// The number of parameters of the model a config describes (computed from the shapes,
// without building the model; tests check it against CausalLM::num_parameters()).
std::size_t count_parameters(const ModelConfig& config);
// Parameters the preset adds to `base` with its gate reset (negative if it removes some).
std::int64_t preset_extra_parameters(const ModelConfig& base, const std::string& preset);

}  // namespace tg::nn
