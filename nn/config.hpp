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

// Note [One field table]
// Every config.json field of ModelConfig is one row of TG_MODEL_CONFIG_FIELDS (and of
// TG_GATE_CONFIG_FIELDS for the gate axes): C++ type, member name, default, and what it
// means. The rows declare the members with their defaults, and drive from_json, to_json,
// operator== and `tapegrad config --fields`; a new field is one new row (plus its rule in
// validate() if it has one). The JSON key is the member name (gate axes: "gate_" + name).
// Some defaults differ for a file that comes from Hugging Face (see hf_default below and
// MODEL.md "MoE losses"): such a file carries none of this project's own fields.
//
//   X(type, member, default, hf_default, doc)
#define TG_GATE_CONFIG_FIELDS(X)                                                                            \
  X(GatePosition, position, GatePosition::None, GatePosition::None,                                         \
    "where the gate sits: none, sdpa (G1), value (G2), key (G3), query (G4), dense (G5)")                   \
  X(GateGranularity, granularity, GateGranularity::Elementwise, GateGranularity::Elementwise,               \
    "elementwise (one score per element) or headwise (one per head)")                                       \
  X(bool, head_shared, false, false, "scores averaged over heads: one gate for all heads")                  \
  X(GateCombine, combine, GateCombine::Multiplicative, GateCombine::Multiplicative,                         \
    "multiplicative Y*act(XW) or additive Y+act(XW)")                                                       \
  X(GateActivation, activation, GateActivation::Sigmoid, GateActivation::Sigmoid,                           \
    "sigmoid, silu, identity or ns_sigmoid (0.5+0.5*sigmoid)")                                              \
  X(bool, input_dependent, true, true, "false: Y*act(theta), theta (H,D) learned (sdpa only)")             \
  X(GateProbe, probe, GateProbe::None, GateProbe::None, "instead of a gate: rmsnorm or silu of the SDPA output")

// The seven gate axes of MODEL.md "Gates". See Note [One gate configuration].
struct GateConfig {
#define TG_DECLARE_FIELD(type, name, def, hf_def, doc) type name = def;
  TG_GATE_CONFIG_FIELDS(TG_DECLARE_FIELD)

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

// How the MoE load-balancing loss is computed (MODEL.md "MoE losses").
enum class MoeAuxLoss {
  PerLayer,  // "per_layer": E * sum_e f_e P_e in each layer, then the mean over layers (this project)
  Pooled,    // "pooled": Hugging Face's load_balancing_loss_func: router outputs of all layers pooled first
};
std::string to_string(MoeAuxLoss v);
MoeAuxLoss parse_moe_aux_loss(const std::string& s);

// The rows of Note [One field table] (gate axes apart, in TG_GATE_CONFIG_FIELDS).
#define TG_MODEL_CONFIG_FIELDS(X)                                                                           \
  /* ---- Hugging Face Qwen3 fields ---- */                                                                 \
  X(std::size_t, vocab_size, 0, 0, "V, the vocabulary (required)")                                          \
  X(std::size_t, hidden_size, 0, 0, "C, the model width (required)")                                        \
  X(std::size_t, intermediate_size, 0, 0, "F, the dense SwiGLU width")                                      \
  X(std::size_t, num_hidden_layers, 0, 0, "L, decoder layers (required)")                                   \
  X(std::size_t, num_attention_heads, 0, 0, "H, query heads (required)")                                    \
  X(std::size_t, num_key_value_heads, 0, 0, "K, key/value heads (absent: = H)")                             \
  X(std::size_t, head_dim, 0, 0, "D, the head dimension (absent: = C / H)")                                 \
  X(std::size_t, max_position_embeddings, 32768, 32768, "the longest sequence trained / sampled")           \
  X(double, rms_norm_eps, 1e-6, 1e-6, "epsilon of every RMSNorm")                                           \
  X(double, rope_theta, 10000.0, 10000.0, "RoPE base")                                                      \
  X(std::optional<YarnScaling>, rope_scaling, std::nullopt, std::nullopt,                                   \
    "null, or {rope_type: yarn, factor, original_max_position_embeddings, attention_factor, beta_fast, "    \
    "beta_slow, mscale, mscale_all_dim, truncate}")                                                         \
  X(bool, tie_word_embeddings, false, false, "lm_head shares embed_tokens.weight")                          \
  X(bool, attention_bias, false, false, "biases on q/k/v/o_proj (the paper's files: qkv_bias)")             \
  X(bool, use_qk_norm, true, true, "per-head RMSNorm of q and k")                                           \
  X(double, initializer_range, 0.02, 0.02, "std of the initial weights")                                    \
  /* ---- this project's fields ---- */                                                                     \
  X(bool, sandwich_norm, false, false, "an RMSNorm on each sublayer output before the residual add")        \
  /* ---- MoE (num_experts == 0: dense SwiGLU) ---- */                                                      \
  X(std::size_t, num_experts, 0, 0, "E, experts per layer (0: dense)")                                      \
  X(std::size_t, num_experts_per_tok, 0, 0, "k, experts chosen per token")                                  \
  X(std::size_t, moe_intermediate_size, 0, 0, "width of each expert's SwiGLU")                              \
  X(bool, norm_topk_prob, true, true, "renormalise the top-k routing probabilities")                        \
  X(double, router_aux_loss_coef, 0.001, 0.001, "weight of the load-balancing loss")                        \
  X(double, router_z_loss_coef, 0.001, 0.0, "weight of the router z-loss (Hugging Face has none)")          \
  X(bool, output_router_logits, true, false, "add the aux loss to the training loss (Hugging Face's switch)") \
  X(MoeAuxLoss, moe_aux_loss, MoeAuxLoss::PerLayer, MoeAuxLoss::Pooled, "per_layer (this project) or pooled (Hugging Face)")

struct ModelConfig {
  TG_MODEL_CONFIG_FIELDS(TG_DECLARE_FIELD)
  GateConfig gate;
#undef TG_DECLARE_FIELD

  bool is_moe() const { return num_experts > 0; }
  std::size_t kv_groups() const { return num_attention_heads / num_key_value_heads; }  // H / K
  // Rows of q_proj.weight: H*D, plus the G1 gate rows (H*D elementwise, H headwise).
  std::size_t q_proj_rows() const;
  // The weights of the aux and z terms in the training loss (0 when not added).
  double aux_loss_weight() const { return is_moe() && output_router_logits ? router_aux_loss_coef : 0.0; }
  double z_loss_weight() const { return is_moe() && output_router_logits ? router_z_loss_coef : 0.0; }

  // Throws std::invalid_argument naming the field for anything inconsistent
  // (sizes zero or absurd, H % K != 0, odd head_dim, contradicting gate axes, k > E, ...).
  void validate() const;

  // config.json. from_json validates; unknown fields, wrong types, null where a value
  // belongs and unsupported values of known Hugging Face fields are errors naming the
  // field. Keys that do not change the computation (auto_map, token ids, torch_dtype, ...)
  // are accepted and listed in `accepted` when given (see ConfigReport).
  static ModelConfig from_json(const nlohmann::json& j, std::vector<std::string>* accepted = nullptr);
  nlohmann::ordered_json to_json() const;  // every field, HF gate flags derived
  static ModelConfig load(const std::string& path);  // errors are prefixed with the path
  void save(const std::string& path) const;
  bool operator==(const ModelConfig&) const;
};

// What parsing a config.json text found: the config, and the keys accepted without effect.
struct ConfigReport {
  ModelConfig config;
  std::vector<std::string> accepted;  // sorted
  // One line for the user ("config.json: accepted without effect on the computation: a, b"),
  // empty when nothing was accepted that way.
  std::string notice(const std::string& label) const;
};
// Parses config.json text: duplicate keys (at any depth) are an error naming the key, then
// ModelConfig::from_json. Errors are std::invalid_argument prefixed with `label`. This is
// the entry point of the config fuzz harness.
ConfigReport parse_config(const std::string& text, const std::string& label = "config.json");
// Reads a file (a regular file; errors name the path) and parses it with parse_config.
ConfigReport read_config(const std::string& path);
// JSON text with duplicate keys refused (std::invalid_argument naming the key and `label`).
nlohmann::json parse_json_strict(const std::string& text, const std::string& label);

// `tapegrad config --fields`: one row per config.json field the model reads, with type,
// default and meaning; then the keys accepted without effect and those refused.
struct FieldInfo {
  std::string key, type, default_value, doc;
};
std::vector<FieldInfo> config_fields();
std::vector<std::string> accepted_keys();  // accepted whatever their value
std::vector<std::string> refused_keys();   // accepted only with the value this model implements

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
