// nn/config.cpp — see config.hpp. Parsing, validation and writing of config.json, the
// named sizes and the presets.
#include "nn/config.hpp"

#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

namespace tg::nn {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string r;
  for (std::size_t i = 0; i < v.size(); ++i) r += (i ? sep : "") + v[i];
  return r;
}

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

// Hugging Face fields that do not change this model (whatever their value).
const std::set<std::string> kIgnored = {
    "model_type",   "architectures",        "torch_dtype",    "dtype",           "transformers_version",
    "bos_token_id", "eos_token_id",         "pad_token_id",   "max_window_layers", "use_cache",
    "output_router_logits", "_name_or_path", "sliding_window",
    "preset",  // written by `tapegrad train` into a run folder's config.json (informational)
};

std::optional<YarnScaling> parse_rope_scaling(const nlohmann::json& v, bool* has_original) {
  *has_original = false;
  if (v.is_null()) return std::nullopt;
  if (!v.is_object()) fail("config: field 'rope_scaling' must be null or an object, got " + type_name(v));
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
    if (k == "rope_type" || k == "type") continue;
    if (k == "factor") y.factor = get_double(x, "rope_scaling.factor"), has_factor = true;
    else if (k == "original_max_position_embeddings")
      y.original_max_position_embeddings = double(get_size(x, "rope_scaling.original_max_position_embeddings")),
      *has_original = true;
    else if (k == "beta_fast") y.beta_fast = get_double(x, "rope_scaling.beta_fast");
    else if (k == "beta_slow") y.beta_slow = get_double(x, "rope_scaling.beta_slow");
    else
      fail("config: unknown field 'rope_scaling." + k +
           "' (supported: rope_type, factor, original_max_position_embeddings, beta_fast, beta_slow)");
  }
  if (!has_factor) fail("config: rope_scaling (yarn) needs a 'factor'");
  return y;
}

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
  if (rope_scaling) {
    if (!(rope_scaling->factor >= 1)) fail("config: rope_scaling.factor must be >= 1");
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

ModelConfig ModelConfig::from_json(const nlohmann::json& j) {
  if (!j.is_object()) fail("config: expected a JSON object, got " + type_name(j));
  ModelConfig c;
  std::set<std::string> seen;
  std::optional<bool> ew_flag, hw_flag;
  bool has_original = false;
  bool sliding = false;
  // Each known field, with its reader. A field missing from config.json keeps the default.
  using Setter = std::function<void(const nlohmann::json&, const std::string&)>;
  auto size_of = [](std::size_t& dst) -> Setter {
    return [&dst](const nlohmann::json& v, const std::string& k) { dst = get_size(v, k); };
  };
  auto dbl = [](double& dst) -> Setter {
    return [&dst](const nlohmann::json& v, const std::string& k) { dst = get_double(v, k); };
  };
  auto boolean = [](bool& dst) -> Setter {
    return [&dst](const nlohmann::json& v, const std::string& k) { dst = get_bool(v, k); };
  };
  auto enum_of = [](auto& dst, auto parse) -> Setter {
    return [&dst, parse](const nlohmann::json& v, const std::string& k) {
      try {
        dst = parse(get_string(v, k));
      } catch (const std::invalid_argument& e) {
        std::string m = e.what();
        fail(m.rfind("config:", 0) == 0 ? m : "config: field " + m);
      }
    };
  };
  const std::map<std::string, Setter> fields = {
      {"vocab_size", size_of(c.vocab_size)},
      {"hidden_size", size_of(c.hidden_size)},
      {"intermediate_size", size_of(c.intermediate_size)},
      {"num_hidden_layers", size_of(c.num_hidden_layers)},
      {"num_attention_heads", size_of(c.num_attention_heads)},
      {"num_key_value_heads", size_of(c.num_key_value_heads)},
      {"head_dim", size_of(c.head_dim)},
      {"max_position_embeddings", size_of(c.max_position_embeddings)},
      {"rms_norm_eps", dbl(c.rms_norm_eps)},
      {"rope_theta", dbl(c.rope_theta)},
      {"rope_scaling", [&](const nlohmann::json& v, const std::string&) { c.rope_scaling = parse_rope_scaling(v, &has_original); }},
      {"tie_word_embeddings", boolean(c.tie_word_embeddings)},
      {"attention_bias", boolean(c.attention_bias)},
      {"use_qk_norm", boolean(c.use_qk_norm)},
      {"initializer_range", dbl(c.initializer_range)},
      {"elementwise_attn_output_gate", [&](const nlohmann::json& v, const std::string& k) { ew_flag = get_bool(v, k); }},
      {"headwise_attn_output_gate", [&](const nlohmann::json& v, const std::string& k) { hw_flag = get_bool(v, k); }},
      {"gate_position", enum_of(c.gate.position, parse_gate_position)},
      {"gate_granularity", enum_of(c.gate.granularity, parse_gate_granularity)},
      {"gate_head_shared", boolean(c.gate.head_shared)},
      {"gate_combine", enum_of(c.gate.combine, parse_gate_combine)},
      {"gate_activation", enum_of(c.gate.activation, parse_gate_activation)},
      {"gate_input_dependent", boolean(c.gate.input_dependent)},
      {"gate_probe", enum_of(c.gate.probe, parse_gate_probe)},
      {"sandwich_norm", boolean(c.sandwich_norm)},
      {"num_experts", size_of(c.num_experts)},
      {"num_experts_per_tok", size_of(c.num_experts_per_tok)},
      {"moe_intermediate_size", size_of(c.moe_intermediate_size)},
      {"norm_topk_prob", boolean(c.norm_topk_prob)},
      {"router_aux_loss_coef", dbl(c.router_aux_loss_coef)},
      {"router_z_loss_coef", dbl(c.router_z_loss_coef)},
      // Hugging Face fields accepted only with the value this model implements.
      {"hidden_act", [](const nlohmann::json& v, const std::string& k) {
         if (get_string(v, k) != "silu")
           fail("config: hidden_act '" + v.get<std::string>() + "' is not supported (only 'silu')");
       }},
      {"use_sliding_window", [&](const nlohmann::json& v, const std::string& k) { sliding = get_bool(v, k); }},
      {"attention_dropout", [](const nlohmann::json& v, const std::string& k) {
         if (get_double(v, k) != 0.0) fail("config: attention_dropout " + v.dump() + " is not supported (only 0)");
       }},
      {"decoder_sparse_step", [](const nlohmann::json& v, const std::string& k) {
         if (get_size(v, k) != 1)
           fail("config: decoder_sparse_step " + v.dump() + " is not supported (every layer is MoE or none is: 1)");
       }},
      {"mlp_only_layers", [](const nlohmann::json& v, const std::string& k) {
         if (!v.is_array() || !v.empty()) fail("config: mlp_only_layers " + v.dump() + " is not supported (only [])");
       }},
      {"layer_types", [](const nlohmann::json& v, const std::string& k) {
         if (!v.is_array()) fail("config: field 'layer_types' must be an array");
         for (auto& t : v)
           if (!t.is_string() || t.get<std::string>() != "full_attention")
             fail("config: layer_types entry " + t.dump() + " is not supported (only \"full_attention\")");
       }},
  };
  for (auto& [key, value] : j.items()) {
    if (kIgnored.count(key)) continue;
    auto it = fields.find(key);
    if (it == fields.end()) fail("config: unknown field '" + key + "'");
    it->second(value, key);
    seen.insert(key);
  }
  for (const char* required :
       {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"})
    if (!seen.count(required)) fail(std::string("config: missing required field '") + required + "'");
  if (sliding) fail("config: use_sliding_window true is not supported (full causal attention only)");
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
  return c;
}

nlohmann::ordered_json ModelConfig::to_json() const {
  nlohmann::ordered_json j;
  j["model_type"] = is_moe() ? "qwen3_moe" : "qwen3";
  j["architectures"] = {is_moe() ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM"};
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (rope_scaling) {
    nlohmann::ordered_json r;
    r["rope_type"] = "yarn";
    r["factor"] = rope_scaling->factor;
    r["original_max_position_embeddings"] = static_cast<std::size_t>(rope_scaling->original_max_position_embeddings);
    r["beta_fast"] = rope_scaling->beta_fast;
    r["beta_slow"] = rope_scaling->beta_slow;
    j["rope_scaling"] = r;
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["attention_bias"] = attention_bias;
  j["use_qk_norm"] = use_qk_norm;
  j["initializer_range"] = initializer_range;
  j["elementwise_attn_output_gate"] = gate.hf_elementwise_flag();
  j["headwise_attn_output_gate"] = gate.hf_headwise_flag();
  j["gate_position"] = to_string(gate.position);
  j["gate_granularity"] = to_string(gate.granularity);
  j["gate_head_shared"] = gate.head_shared;
  j["gate_combine"] = to_string(gate.combine);
  j["gate_activation"] = to_string(gate.activation);
  j["gate_input_dependent"] = gate.input_dependent;
  j["gate_probe"] = to_string(gate.probe);
  j["sandwich_norm"] = sandwich_norm;
  j["num_experts"] = num_experts;
  j["num_experts_per_tok"] = num_experts_per_tok;
  j["moe_intermediate_size"] = moe_intermediate_size;
  j["norm_topk_prob"] = norm_topk_prob;
  j["router_aux_loss_coef"] = router_aux_loss_coef;
  j["router_z_loss_coef"] = router_z_loss_coef;
  return j;
}

ModelConfig ModelConfig::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open config file");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw std::invalid_argument(path + ": invalid JSON: " + e.what());
  }
  try {
    return from_json(j);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(path + ": " + e.what());
  }
}

void ModelConfig::save(const std::string& path) const {
  validate();
  std::ofstream out(path);
  if (!out) throw std::runtime_error(path + ": cannot write config file");
  out << to_json().dump(2) << "\n";
  if (!out) throw std::runtime_error(path + ": write failed");
}

bool ModelConfig::operator==(const ModelConfig& o) const {
  auto same_rope = [](const std::optional<YarnScaling>& a, const std::optional<YarnScaling>& b) {
    if (a.has_value() != b.has_value()) return false;
    if (!a) return true;
    return a->factor == b->factor && a->original_max_position_embeddings == b->original_max_position_embeddings &&
           a->beta_fast == b->beta_fast && a->beta_slow == b->beta_slow;
  };
  return vocab_size == o.vocab_size && hidden_size == o.hidden_size && intermediate_size == o.intermediate_size &&
         num_hidden_layers == o.num_hidden_layers && num_attention_heads == o.num_attention_heads &&
         num_key_value_heads == o.num_key_value_heads && head_dim == o.head_dim &&
         max_position_embeddings == o.max_position_embeddings && rms_norm_eps == o.rms_norm_eps &&
         rope_theta == o.rope_theta && same_rope(rope_scaling, o.rope_scaling) &&
         tie_word_embeddings == o.tie_word_embeddings && attention_bias == o.attention_bias &&
         use_qk_norm == o.use_qk_norm && initializer_range == o.initializer_range && gate == o.gate &&
         sandwich_norm == o.sandwich_norm && num_experts == o.num_experts &&
         num_experts_per_tok == o.num_experts_per_tok && moe_intermediate_size == o.moe_intermediate_size &&
         norm_topk_prob == o.norm_topk_prob && router_aux_loss_coef == o.router_aux_loss_coef &&
         router_z_loss_coef == o.router_z_loss_coef;
}

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
  const std::size_t V = c.vocab_size, C = c.hidden_size, H = c.num_attention_heads, K = c.num_key_value_heads,
                    D = c.head_dim;
  std::size_t layer = 2 * C;                               // input_layernorm, post_attention_layernorm
  if (c.sandwich_norm) layer += 2 * C;                     // post_attn / post_mlp sandwich norms
  const std::size_t q = c.q_proj_rows();
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
    layer += c.num_experts * C + c.num_experts * 3 * C * c.moe_intermediate_size;
  else
    layer += 3 * C * c.intermediate_size;
  std::size_t n = V * C + c.num_hidden_layers * layer + C;  // embed_tokens, layers, final norm
  if (!c.tie_word_embeddings) n += V * C;                   // lm_head
  return n;
}

std::int64_t preset_extra_parameters(const ModelConfig& base, const std::string& preset) {
  return static_cast<std::int64_t>(count_parameters(with_preset(base, preset))) -
         static_cast<std::int64_t>(count_parameters(with_preset(base, "baseline")));
}

}  // namespace tg::nn
