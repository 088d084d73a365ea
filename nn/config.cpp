// nn/config.cpp — see config.hpp. Parsing, validation and writing of config.json (the
// named sizes, the presets and parameter counts: nn/presets.cpp).
#include "nn/config.hpp"
#include "nn/config_detail.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

namespace tg::nn {

namespace {

using detail::fail;
using detail::join;

// A tiny two-way table between an enum and its config.json spellings.
template <class E>
struct Names {
  const char* what;
  std::vector<std::pair<E, const char*>> items;
  std::string name(E v) const {
    for (auto& [e, s] : items)
      if (e == v) return s;
    fail(std::string(what) + ": value out of range");
  }
  E parse(const std::string& s) const {
    std::vector<std::string> valid;
    for (auto& [e, n] : items) {
      if (s == n) return e;
      valid.push_back(std::string("'") + n + "'");
    }
    fail(std::string(what) + ": unknown value '" + s + "' (valid: " + join(valid) + ")");
  }
};

const Names<GatePosition> kPositions{"gate_position",
                                     {{GatePosition::None, "none"},
                                      {GatePosition::Sdpa, "sdpa"},
                                      {GatePosition::Value, "value"},
                                      {GatePosition::Key, "key"},
                                      {GatePosition::Query, "query"},
                                      {GatePosition::Dense, "dense"}}};
const Names<GateGranularity> kGranularities{
    "gate_granularity", {{GateGranularity::Elementwise, "elementwise"}, {GateGranularity::Headwise, "headwise"}}};
const Names<GateCombine> kCombines{
    "gate_combine", {{GateCombine::Multiplicative, "multiplicative"}, {GateCombine::Additive, "additive"}}};
const Names<GateActivation> kActivations{"gate_activation",
                                         {{GateActivation::Sigmoid, "sigmoid"},
                                          {GateActivation::Silu, "silu"},
                                          {GateActivation::Identity, "identity"},
                                          {GateActivation::NsSigmoid, "ns_sigmoid"}}};
const Names<GateProbe> kProbes{
    "gate_probe", {{GateProbe::None, "none"}, {GateProbe::RmsNorm, "rmsnorm"}, {GateProbe::Silu, "silu"}}};

// ---- typed field readers: each names the field in its error ----

std::string type_name(const nlohmann::json& v) { return v.type_name(); }

std::size_t get_size(const nlohmann::json& v, const std::string& key) {
  if (v.is_number_unsigned()) return v.get<std::size_t>();
  if (v.is_number_integer()) {
    auto x = v.get<std::int64_t>();
    if (x < 0) fail("config: field '" + key + "' must be >= 0, got " + std::to_string(x));
    return static_cast<std::size_t>(x);
  }
  fail("config: field '" + key + "' must be a non-negative integer, got " + type_name(v) + " " + v.dump());
}

double get_double(const nlohmann::json& v, const std::string& key) {
  if (v.is_number()) return v.get<double>();
  fail("config: field '" + key + "' must be a number, got " + type_name(v) + " " + v.dump());
}

bool get_bool(const nlohmann::json& v, const std::string& key) {
  if (v.is_boolean()) return v.get<bool>();
  fail("config: field '" + key + "' must be true or false, got " + type_name(v) + " " + v.dump());
}

std::string get_string(const nlohmann::json& v, const std::string& key) {
  if (v.is_string()) return v.get<std::string>();
  fail("config: field '" + key + "' must be a string, got " + type_name(v) + " " + v.dump());
}

const Names<MoeAuxLoss> kAuxLosses{"moe_aux_loss", {{MoeAuxLoss::PerLayer, "per_layer"}, {MoeAuxLoss::Pooled, "pooled"}}};

// Hugging Face keys that do not change this model, whatever their value.
const std::set<std::string> kAccepted = {
    "model_type",   "architectures", "torch_dtype", "dtype",           "transformers_version", "auto_map",
    "bos_token_id", "eos_token_id",  "pad_token_id", "max_window_layers", "use_cache",           "_name_or_path",
    "tokenizer_class", "output_attentions", "output_hidden_states", "return_dict",
    "preset",  // written by `tapegrad train` into a run folder's config.json (informational)
};
// Hugging Face keys accepted only with the value this model implements (checked in from_json).
const std::vector<std::string> kRefusedUnless = {
    "hidden_act (only \"silu\")",
    "use_sliding_window (only false)",
    "sliding_window (any value while use_sliding_window is false)",
    "attention_dropout (only 0)",
    "decoder_sparse_step (only 1)",
    "mlp_only_layers (only [])",
    "layer_types (only \"full_attention\")",
    "partial_rotary_factor (only 1)",
    "qkv_bias (the paper's code: biases on q/k/v/o_proj, read as attention_bias)",
};
// This project's own keys: a file carrying none of them comes from Hugging Face, and
// its absent keys take the hf_default column of Note [One field table].
bool is_project_key(const std::string& k) {
  return k.rfind("gate_", 0) == 0 || k == "sandwich_norm" || k == "router_z_loss_coef" || k == "moe_aux_loss";
}

std::string yarn_keys() {
  return "rope_type, factor, original_max_position_embeddings, attention_factor, beta_fast, beta_slow, mscale, "
         "mscale_all_dim, truncate";
}

std::optional<YarnScaling> parse_rope_scaling(const nlohmann::json& v, bool* has_original) {
  *has_original = false;
  if (v.is_null()) return std::nullopt;
  if (!v.is_object()) fail("config: field 'rope_scaling' must be null or an object, got " + type_name(v));
  for (auto& [k, x] : v.items())
    if (x.is_null())
      fail("config: rope_scaling." + k + " is null; leave the key out to take its default");
  std::string type;
  if (v.contains("rope_type")) type = get_string(v["rope_type"], "rope_scaling.rope_type");
  if (v.contains("type")) {
    std::string t2 = get_string(v["type"], "rope_scaling.type");
    if (!type.empty() && t2 != type)
      fail("config: rope_scaling.rope_type '" + type + "' and rope_scaling.type '" + t2 + "' disagree");
    type = t2;
  }
  if (type.empty()) fail("config: rope_scaling needs a 'rope_type'");
  if (type == "default") {
    for (auto& [k, x] : v.items())
      if (k != "rope_type" && k != "type")
        fail("config: rope_scaling field '" + k + "' has no meaning with rope_type 'default'");
    return std::nullopt;
  }
  if (type != "yarn")
    fail("config: rope_scaling.rope_type '" + type + "' is not supported (supported: 'yarn', 'default')");
  YarnScaling y;
  bool has_factor = false;
  for (auto& [k, x] : v.items()) {
    const std::string key = "rope_scaling." + k;
    if (k == "rope_type" || k == "type") continue;
    if (k == "factor") y.factor = get_double(x, key), has_factor = true;
    else if (k == "original_max_position_embeddings")
      y.original_max_position_embeddings = double(get_size(x, key)), *has_original = true;
    else if (k == "attention_factor") y.attention_factor = get_double(x, key);
    else if (k == "beta_fast") y.beta_fast = get_double(x, key);
    else if (k == "beta_slow") y.beta_slow = get_double(x, key);
    else if (k == "mscale") y.mscale = get_double(x, key);
    else if (k == "mscale_all_dim") y.mscale_all_dim = get_double(x, key);
    else if (k == "truncate") y.truncate = get_bool(x, key);
    else fail("config: unknown field 'rope_scaling." + k + "' (supported: " + yarn_keys() + ")");
  }
  if (!has_factor) fail("config: rope_scaling (yarn) needs a 'factor'");
  return y;
}

nlohmann::ordered_json rope_scaling_json(const std::optional<YarnScaling>& y) {
  if (!y) return nullptr;
  nlohmann::ordered_json r;
  r["rope_type"] = "yarn";
  r["factor"] = y->factor;
  r["original_max_position_embeddings"] = static_cast<std::size_t>(y->original_max_position_embeddings);
  if (y->attention_factor) r["attention_factor"] = *y->attention_factor;
  r["beta_fast"] = y->beta_fast;
  r["beta_slow"] = y->beta_slow;
  if (y->mscale != 0) r["mscale"] = y->mscale;
  if (y->mscale_all_dim != 0) r["mscale_all_dim"] = y->mscale_all_dim;
  r["truncate"] = y->truncate;
  return r;
}

// ---- one reader, writer and type name per C++ type of the field table ----
void read_field(const nlohmann::json& v, const std::string& k, std::size_t& dst) { dst = get_size(v, k); }
void read_field(const nlohmann::json& v, const std::string& k, double& dst) { dst = get_double(v, k); }
void read_field(const nlohmann::json& v, const std::string& k, bool& dst) { dst = get_bool(v, k); }
void read_field(const nlohmann::json& v, const std::string& k, std::optional<YarnScaling>& dst) {
  bool has_original = false;  // (from_json reads rope_scaling itself, to default this)
  dst = parse_rope_scaling(v, &has_original);
}
template <class E>
void read_enum(const nlohmann::json& v, const std::string& k, E& dst, const Names<E>& names) {
  const std::string s = get_string(v, k);
  try {
    dst = names.parse(s);
  } catch (const std::invalid_argument& e) {
    fail(std::string("config: field ") + e.what());
  }
}
void read_field(const nlohmann::json& v, const std::string& k, GatePosition& d) { read_enum(v, k, d, kPositions); }
void read_field(const nlohmann::json& v, const std::string& k, GateGranularity& d) { read_enum(v, k, d, kGranularities); }
void read_field(const nlohmann::json& v, const std::string& k, GateCombine& d) { read_enum(v, k, d, kCombines); }
void read_field(const nlohmann::json& v, const std::string& k, GateActivation& d) { read_enum(v, k, d, kActivations); }
void read_field(const nlohmann::json& v, const std::string& k, GateProbe& d) { read_enum(v, k, d, kProbes); }
void read_field(const nlohmann::json& v, const std::string& k, MoeAuxLoss& d) { read_enum(v, k, d, kAuxLosses); }

nlohmann::ordered_json write_field(std::size_t v) { return v; }
nlohmann::ordered_json write_field(double v) { return v; }
nlohmann::ordered_json write_field(bool v) { return v; }
nlohmann::ordered_json write_field(const std::optional<YarnScaling>& v) { return rope_scaling_json(v); }
template <class E, class = std::enable_if_t<std::is_enum_v<E>>>
nlohmann::ordered_json write_field(E v) { return to_string(v); }

const char* field_type(std::size_t*) { return "integer >= 0"; }
const char* field_type(double*) { return "number"; }
const char* field_type(bool*) { return "true/false"; }
const char* field_type(std::optional<YarnScaling>*) { return "null or object"; }
template <class E, class = std::enable_if_t<std::is_enum_v<E>>>
const char* field_type(E*) { return "string"; }

}  // namespace

std::string to_string(GatePosition v) { return kPositions.name(v); }
std::string to_string(GateGranularity v) { return kGranularities.name(v); }
std::string to_string(GateCombine v) { return kCombines.name(v); }
std::string to_string(GateActivation v) { return kActivations.name(v); }
std::string to_string(GateProbe v) { return kProbes.name(v); }
GatePosition parse_gate_position(const std::string& s) { return kPositions.parse(s); }
GateGranularity parse_gate_granularity(const std::string& s) { return kGranularities.parse(s); }
GateCombine parse_gate_combine(const std::string& s) { return kCombines.parse(s); }
GateActivation parse_gate_activation(const std::string& s) { return kActivations.parse(s); }
GateProbe parse_gate_probe(const std::string& s) { return kProbes.parse(s); }

std::string GateConfig::describe() const {
  if (!enabled()) return "no gate";
  std::string r = to_string(position);
  if (is_probe()) return r + " probe " + to_string(probe);
  if (!input_dependent) return r + " input-independent " + to_string(activation);
  r += " " + to_string(granularity);
  if (head_shared) r += " head-shared";
  return r + " " + to_string(combine) + " " + to_string(activation);
}

std::size_t ModelConfig::q_proj_rows() const {
  const std::size_t HD = num_attention_heads * head_dim;
  if (!gate.in_q_proj()) return HD;
  return HD + (gate.granularity == GateGranularity::Elementwise ? HD : num_attention_heads);
}

void ModelConfig::validate() const {
  auto positive = [](std::size_t v, const char* name) {
    if (v == 0) fail(std::string("config: '") + name + "' must be > 0");
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(max_position_embeddings, "max_position_embeddings");
  if (!is_moe()) positive(intermediate_size, "intermediate_size");
  if (num_attention_heads % num_key_value_heads != 0)
    fail("config: num_attention_heads " + std::to_string(num_attention_heads) +
         " is not a multiple of num_key_value_heads " + std::to_string(num_key_value_heads));
  if (head_dim % 2 != 0)
    fail("config: head_dim " + std::to_string(head_dim) + " must be even (rotate_half RoPE)");
  if (!(rms_norm_eps > 0)) fail("config: 'rms_norm_eps' must be > 0");
  if (!(rope_theta > 1)) fail("config: 'rope_theta' must be > 1");
  if (!(initializer_range >= 0)) fail("config: 'initializer_range' must be >= 0");
  if (!std::isfinite(rope_theta)) fail("config: 'rope_theta' must be finite");
  if (!std::isfinite(rms_norm_eps)) fail("config: 'rms_norm_eps' must be finite");
  if (rope_scaling) {
    if (!(rope_scaling->factor >= 1 && std::isfinite(rope_scaling->factor)))
      fail("config: rope_scaling.factor must be >= 1");
    if (rope_scaling->attention_factor && !(*rope_scaling->attention_factor > 0 &&
                                            std::isfinite(*rope_scaling->attention_factor)))
      fail("config: rope_scaling.attention_factor must be > 0");
    if (!std::isfinite(rope_scaling->mscale) || !std::isfinite(rope_scaling->mscale_all_dim))
      fail("config: rope_scaling.mscale and mscale_all_dim must be finite");
    if (!(rope_scaling->original_max_position_embeddings > 0))
      fail("config: rope_scaling.original_max_position_embeddings must be > 0");
    if (!(rope_scaling->beta_fast > 0 && rope_scaling->beta_slow > 0))
      fail("config: rope_scaling.beta_fast and beta_slow must be > 0");
  }
  // ---- the gate (MODEL.md "Gates") ----
  const GateConfig def;
  auto non_default_axes = [&]() {
    std::vector<std::string> r;
    if (gate.granularity != def.granularity) r.push_back("gate_granularity");
    if (gate.head_shared != def.head_shared) r.push_back("gate_head_shared");
    if (gate.combine != def.combine) r.push_back("gate_combine");
    if (gate.activation != def.activation) r.push_back("gate_activation");
    if (gate.input_dependent != def.input_dependent) r.push_back("gate_input_dependent");
    return r;
  };
  if (!gate.enabled()) {
    auto set = non_default_axes();
    if (gate.probe != GateProbe::None) set.push_back("gate_probe");
    if (!set.empty()) fail("config: " + join(set) + " set but gate_position is 'none'");
  } else if (gate.is_probe()) {
    if (gate.position != GatePosition::Sdpa)
      fail("config: gate_probe '" + to_string(gate.probe) + "' needs gate_position 'sdpa', not '" +
           to_string(gate.position) + "'");
    auto set = non_default_axes();
    if (!set.empty())
      fail("config: gate_probe '" + to_string(gate.probe) + "' replaces the gate, so " + join(set) +
           " must keep its default");
  } else {
    if (!gate.input_dependent) {
      if (gate.position != GatePosition::Sdpa)
        fail("config: gate_input_dependent false needs gate_position 'sdpa', not '" + to_string(gate.position) + "'");
      if (gate.granularity != GateGranularity::Elementwise || gate.head_shared ||
          gate.combine != GateCombine::Multiplicative)
        fail("config: an input-independent gate is Y * act(theta) with theta (H,D): it is elementwise, "
             "head-specific and multiplicative");
    }
    if (gate.position == GatePosition::Dense &&
        (gate.granularity != GateGranularity::Elementwise || gate.head_shared))
      fail("config: gate_position 'dense' has no heads: only elementwise, head-specific gates are allowed "
           "(gate_granularity '" + to_string(gate.granularity) + "', gate_head_shared " +
           (gate.head_shared ? "true" : "false") + ")");
  }
  // ---- MoE ----
  if (is_moe()) {
    if (num_experts_per_tok == 0 || num_experts_per_tok > num_experts)
      fail("config: num_experts_per_tok " + std::to_string(num_experts_per_tok) + " must be in [1, num_experts = " +
           std::to_string(num_experts) + "]");
    positive(moe_intermediate_size, "moe_intermediate_size");
    if (!(router_aux_loss_coef >= 0)) fail("config: 'router_aux_loss_coef' must be >= 0");
    if (!(router_z_loss_coef >= 0)) fail("config: 'router_z_loss_coef' must be >= 0");
  }
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j, std::vector<std::string>* accepted) {
  if (!j.is_object()) fail("config: expected a JSON object, got " + type_name(j));
  bool from_hf = true;  // carries none of this project's keys (is_project_key)
  for (auto& [key, value] : j.items())
    if (is_project_key(key)) from_hf = false;
  ModelConfig c;
  if (from_hf) {
#define TG_HF_DEFAULT(type, name, def, hf_def, doc) c.name = hf_def;
    TG_MODEL_CONFIG_FIELDS(TG_HF_DEFAULT)
#undef TG_HF_DEFAULT
  }
  // null where a value belongs: one error naming every such key (rope_scaling may be null;
  // keys accepted without effect may be anything).
  {
    std::vector<std::string> nulls;
    for (auto& [key, value] : j.items())
      if (value.is_null() && key != "rope_scaling" && !kAccepted.count(key) && key != "sliding_window")
        nulls.push_back("'" + key + "'");
    if (!nulls.empty())
      fail("config: " + join(nulls) + (nulls.size() == 1 ? " is" : " are") +
           " null where a value belongs; leave the key out to take its default");
  }
  std::set<std::string> seen;
  std::vector<std::string> without_effect;
  std::optional<bool> ew_flag, hw_flag, qkv_bias;
  bool has_original = false, sliding = false;
  for (auto& [key, value] : j.items()) {
    bool known = false;
#define TG_READ_FIELD(type, name, def, hf_def, doc) \
  if (!known && key == #name) {                      \
    known = true;                                    \
    read_field(value, key, c.name);                  \
  }
#define TG_READ_GATE_FIELD(type, name, def, hf_def, doc) \
  if (!known && key == "gate_" #name) {                  \
    known = true;                                        \
    read_field(value, key, c.gate.name);                 \
  }
    if (key == "rope_scaling") {
      c.rope_scaling = parse_rope_scaling(value, &has_original);
      known = true;
    }
    TG_MODEL_CONFIG_FIELDS(TG_READ_FIELD)
    TG_GATE_CONFIG_FIELDS(TG_READ_GATE_FIELD)
#undef TG_READ_FIELD
#undef TG_READ_GATE_FIELD
    if (known) {
      seen.insert(key);
      continue;
    }
    without_effect.push_back(key);
    if (kAccepted.count(key)) continue;
    // Hugging Face fields accepted only with the value this model implements.
    if (key == "elementwise_attn_output_gate") ew_flag = get_bool(value, key);
    else if (key == "headwise_attn_output_gate") hw_flag = get_bool(value, key);
    else if (key == "qkv_bias") qkv_bias = get_bool(value, key), without_effect.pop_back();
    else if (key == "hidden_act") {
      if (get_string(value, key) != "silu")
        fail("config: hidden_act '" + value.get<std::string>() + "' is not supported (only 'silu')");
    } else if (key == "use_sliding_window") sliding = get_bool(value, key);
    else if (key == "sliding_window") {
      if (!value.is_null()) (void)get_size(value, key);
    } else if (key == "attention_dropout") {
      if (get_double(value, key) != 0.0) fail("config: attention_dropout " + value.dump() + " is not supported (only 0)");
    } else if (key == "partial_rotary_factor") {
      if (get_double(value, key) != 1.0)
        fail("config: partial_rotary_factor " + value.dump() + " is not supported (RoPE on the whole head: only 1)");
    } else if (key == "decoder_sparse_step") {
      if (get_size(value, key) != 1)
        fail("config: decoder_sparse_step " + value.dump() +
             " is not supported (every layer is MoE or none is: only 1)");
    } else if (key == "mlp_only_layers") {
      if (!value.is_array() || !value.empty())
        fail("config: mlp_only_layers " + value.dump() + " is not supported (only [])");
    } else if (key == "layer_types") {
      if (!value.is_array()) fail("config: field 'layer_types' must be an array");
      for (auto& t : value)
        if (!t.is_string() || t.get<std::string>() != "full_attention")
          fail("config: layer_types entry " + t.dump() + " is not supported (only \"full_attention\")");
    } else {
      fail("config: unknown field '" + key + "' (`tapegrad config --fields` lists the known ones)");
    }
  }
  for (const char* required : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"})
    if (!seen.count(required)) fail(std::string("config: missing required field '") + required + "'");
  if (sliding)
    fail("config: use_sliding_window true is not supported (full causal attention only; sliding_window " +
         (j.contains("sliding_window") ? j["sliding_window"].dump() : std::string("absent")) + ")");
  if (qkv_bias) {
    // The paper's modeling_qwen3.py builds q/k/v/o_proj with bias=config.qkv_bias and never
    // reads attention_bias; follow it.
    c.attention_bias = *qkv_bias;
    if (seen.count("attention_bias")) {
      seen.erase("attention_bias");
      without_effect.push_back("attention_bias (qkv_bias decides, as in the paper's code)");
    }
  }
  if (!seen.count("num_key_value_heads")) c.num_key_value_heads = c.num_attention_heads;
  if (!seen.count("head_dim")) {
    if (c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0)
      fail("config: no 'head_dim' and hidden_size " + std::to_string(c.hidden_size) +
           " is not a multiple of num_attention_heads " + std::to_string(c.num_attention_heads));
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.rope_scaling && !has_original)
    c.rope_scaling->original_max_position_embeddings = double(c.max_position_embeddings);
  // The Hugging Face G1 flags (Note [One gate configuration]).
  const bool ew = ew_flag.value_or(false), hw = hw_flag.value_or(false);
  if (ew && hw) fail("config: elementwise_attn_output_gate and headwise_attn_output_gate are both true");
  if (!seen.count("gate_position") && (ew || hw)) {
    // A file with only the HF flag (the paper's released checkpoints): a G1 gate.
    c.gate.position = GatePosition::Sdpa;
    const GateGranularity flag = ew ? GateGranularity::Elementwise : GateGranularity::Headwise;
    if (seen.count("gate_granularity") && c.gate.granularity != flag)
      fail(std::string("config: ") + (ew ? "elementwise_attn_output_gate" : "headwise_attn_output_gate") +
           " is true but gate_granularity is '" + to_string(c.gate.granularity) + "'");
    c.gate.granularity = flag;
  }
  c.validate();
  auto check_flag = [&](const std::optional<bool>& given, bool derived, const char* name) {
    if (given && *given != derived)
      fail(std::string("config: ") + name + " is " + (*given ? "true" : "false") + " but the gate is '" +
           c.gate.describe() + "' (true exactly for an input-dependent " +
           (std::string(name).rfind("elementwise", 0) == 0 ? "elementwise" : "headwise") + " sdpa gate)");
  };
  check_flag(ew_flag, c.gate.hf_elementwise_flag(), "elementwise_attn_output_gate");
  check_flag(hw_flag, c.gate.hf_headwise_flag(), "headwise_attn_output_gate");
  if (accepted) {
    // The gate flags are read (they define the gate): not "without effect".
    std::erase_if(without_effect, [](const std::string& k) {
      return k == "elementwise_attn_output_gate" || k == "headwise_attn_output_gate";
    });
    std::sort(without_effect.begin(), without_effect.end());
    *accepted = std::move(without_effect);
  }
  return c;
}

nlohmann::ordered_json ModelConfig::to_json() const {
  nlohmann::ordered_json j;
  j["model_type"] = is_moe() ? "qwen3_moe" : "qwen3";
  j["architectures"] = {is_moe() ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM"};
  j["hidden_act"] = "silu";
#define TG_WRITE_FIELD(type, name, def, hf_def, doc) j[#name] = write_field(name);
#define TG_WRITE_GATE_FIELD(type, name, def, hf_def, doc) j["gate_" #name] = write_field(gate.name);
  TG_MODEL_CONFIG_FIELDS(TG_WRITE_FIELD)
  j["elementwise_attn_output_gate"] = gate.hf_elementwise_flag();
  j["headwise_attn_output_gate"] = gate.hf_headwise_flag();
  TG_GATE_CONFIG_FIELDS(TG_WRITE_GATE_FIELD)
#undef TG_WRITE_FIELD
#undef TG_WRITE_GATE_FIELD
  return j;
}

ModelConfig ModelConfig::load(const std::string& path) { return read_config(path).config; }

void ModelConfig::save(const std::string& path) const {
  validate();
  std::ofstream out(path);
  if (!out) throw std::runtime_error(path + ": cannot write config file");
  out << to_json().dump(2) << "\n";
  if (!out) throw std::runtime_error(path + ": write failed");
}

bool ModelConfig::operator==(const ModelConfig& o) const {
  bool same = gate == o.gate;
#define TG_SAME_FIELD(type, name, def, hf_def, doc) same = same && name == o.name;
  TG_MODEL_CONFIG_FIELDS(TG_SAME_FIELD)
#undef TG_SAME_FIELD
  return same;
}

nlohmann::json parse_json_strict(const std::string& text, const std::string& label) {
  using json = nlohmann::json;
  std::vector<std::set<std::string>> keys;  // one set per open object or array
  std::vector<std::string> path;            // the key of each open object, for messages
  std::string last_key;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) -> bool {
    switch (ev) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth > 64) throw std::invalid_argument(label + ": JSON nests deeper than 64 levels");
        keys.emplace_back();
        path.push_back(last_key);
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!keys.empty()) keys.pop_back(), path.pop_back();
        break;
      case json::parse_event_t::key: {
        const std::string& k = parsed.get_ref<const std::string&>();
        last_key = k;
        if (!keys.empty() && !keys.back().insert(k).second) {
          std::string where;
          for (std::size_t i = 1; i < path.size(); ++i) where += path[i] + ".";
          throw std::invalid_argument(label + ": duplicate key '" + where + k +
                                      "' (JSON keeps only one; say it once)");
        }
        break;
      }
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return json::parse(text, cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    throw std::invalid_argument(label + ": invalid JSON: " + e.what());
  }
}

ConfigReport parse_config(const std::string& text, const std::string& label) {
  const nlohmann::json j = parse_json_strict(text, label);
  ConfigReport r;
  try {
    r.config = ModelConfig::from_json(j, &r.accepted);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(label + ": " + e.what());
  }
  return r;
}

ConfigReport read_config(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(st)) throw std::runtime_error(path + ": cannot open config file (no such file)");
  if (!std::filesystem::is_regular_file(st)) throw std::runtime_error(path + ": not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open config file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path);
}

std::string ConfigReport::notice(const std::string& label) const {
  if (accepted.empty()) return "";
  return label + ": accepted without effect on the computation: " + join(accepted);
}

std::vector<FieldInfo> config_fields() {
  std::vector<FieldInfo> r;
  const ModelConfig d;
#define TG_FIELD_INFO(type, name, def, hf_def, doc)                                                \
  {                                                                                                 \
    std::string dflt = write_field(d.name).dump();                                                  \
    const type hf = hf_def;                                                                         \
    if (!(hf == d.name)) dflt += " (Hugging Face file: " + write_field(hf).dump() + ")";            \
    r.push_back({#name, field_type(static_cast<type*>(nullptr)), dflt, doc});                       \
  }
#define TG_GATE_FIELD_INFO(type, name, def, hf_def, doc) \
  r.push_back({"gate_" #name, field_type(static_cast<type*>(nullptr)), write_field(d.gate.name).dump(), doc});
  TG_MODEL_CONFIG_FIELDS(TG_FIELD_INFO)
  r.push_back({"elementwise_attn_output_gate", "true/false", "derived",
               "the paper's flag: an elementwise sdpa gate in the widened q_proj"});
  r.push_back({"headwise_attn_output_gate", "true/false", "derived",
               "the paper's flag: a headwise sdpa gate in the widened q_proj"});
  TG_GATE_CONFIG_FIELDS(TG_GATE_FIELD_INFO)
#undef TG_FIELD_INFO
#undef TG_GATE_FIELD_INFO
  return r;
}

std::vector<std::string> accepted_keys() { return {kAccepted.begin(), kAccepted.end()}; }
std::vector<std::string> refused_keys() { return kRefusedUnless; }

std::string to_string(MoeAuxLoss v) { return kAuxLosses.name(v); }
MoeAuxLoss parse_moe_aux_loss(const std::string& s) { return kAuxLosses.parse(s); }

}  // namespace tg::nn
