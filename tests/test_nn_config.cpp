// tests/test_nn_config.cpp — config.json parsing, validation, writing; named sizes; presets.
//
// What it is for: every rule of nn/MODEL.md "Gates" and of the Hugging Face fields that
// config.cpp enforces, each error message naming its field, round trips through JSON and
// files, and the presets changing exactly what MODEL.md's table says.
//
// What it is not: a test of the model those configs build (test_nn_model.cpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "nn/config.hpp"

using namespace tg;
using namespace tg::nn;
using nlohmann::json;

namespace {

json tiny_json() { return json::parse(named_size("tiny").to_json().dump()); }

// Parsing `j` must throw std::invalid_argument whose message contains every `needle`.
void expect_error(const json& j, std::initializer_list<std::string> needles) {
  try {
    (void)ModelConfig::from_json(j);
    FAIL("no error for " << j.dump());
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    for (auto& n : needles) CHECK_MESSAGE(msg.find(n) != std::string::npos, "'" << n << "' not in: " << msg);
  }
}

json with(json j, const std::string& k, json v) {
  j[k] = std::move(v);
  return j;
}

}  // namespace

TEST_CASE("config: named sizes") {
  const ModelConfig t = named_size("tiny");
  CHECK(t.vocab_size == 48);
  CHECK(t.hidden_size == 24);
  CHECK(t.intermediate_size == 40);
  CHECK(t.num_hidden_layers == 2);
  CHECK(t.num_attention_heads == 4);
  CHECK(t.num_key_value_heads == 2);
  CHECK(t.head_dim == 6);
  const ModelConfig b = named_size("baby");
  CHECK(b.vocab_size == 256);
  CHECK(b.hidden_size == 384);
  CHECK(b.num_hidden_layers == 6);
  CHECK(b.num_attention_heads == 6);
  CHECK(b.num_key_value_heads == 6);
  CHECK(b.head_dim == 64);
  CHECK(b.intermediate_size == 1024);
  CHECK(b.max_position_embeddings == 1024);
  const ModelConfig s = named_size("small");
  CHECK(s.hidden_size == 512);
  CHECK(s.num_hidden_layers == 8);
  CHECK(named_size("tiny_moe").is_moe());
  for (auto& n : size_names()) CHECK_NOTHROW(named_size(n).validate());
  try {
    named_size("huge");
    FAIL("no error");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("huge") != std::string::npos);
    CHECK(std::string(e.what()).find("baby") != std::string::npos);  // lists the valid ones
  }
}

TEST_CASE("config: JSON round trip for every size and preset") {
  for (auto& size : size_names())
    for (auto& p : list_presets()) {
      ModelConfig c = named_size(size);
      if (p == "more_experts" && !c.is_moe()) continue;
      apply_preset(c, p);
      INFO(size << " " << p);
      const ModelConfig back = ModelConfig::from_json(json::parse(c.to_json().dump()));
      CHECK(back == c);
    }
  // non-default everything
  ModelConfig c = with_preset(named_size("tiny_moe"), "g2_headwise");
  c.rope_scaling = YarnScaling{3.0, 16, 16, 2};
  c.tie_word_embeddings = true, c.attention_bias = true, c.use_qk_norm = false, c.sandwich_norm = true;
  c.rms_norm_eps = 1e-5, c.rope_theta = 5e5, c.initializer_range = 0.1, c.norm_topk_prob = false;
  c.router_aux_loss_coef = 0.02, c.router_z_loss_coef = 0.003;
  CHECK(ModelConfig::from_json(json::parse(c.to_json().dump())) == c);
  // through a file
  const std::string path = (std::filesystem::temp_directory_path() / "tapegrad_test_config.json").string();
  c.save(path);
  CHECK(ModelConfig::load(path) == c);
  std::remove(path.c_str());
}

TEST_CASE("config: the HF gate flags are derived on write") {
  auto j = json::parse(with_preset(named_size("tiny"), "g1_elementwise").to_json().dump());
  CHECK(j["elementwise_attn_output_gate"] == true);
  CHECK(j["headwise_attn_output_gate"] == false);
  j = json::parse(with_preset(named_size("tiny"), "g1_headwise").to_json().dump());
  CHECK(j["elementwise_attn_output_gate"] == false);
  CHECK(j["headwise_attn_output_gate"] == true);
  for (auto p : {"g1_rmsnorm", "g1_silu_only", "g1_input_independent", "g2_elementwise", "baseline"}) {
    j = json::parse(with_preset(named_size("tiny"), p).to_json().dump());
    CHECK(j["elementwise_attn_output_gate"] == false);
    CHECK(j["headwise_attn_output_gate"] == false);
  }
  // head-shared and other activations keep their rows in q_proj
  j = json::parse(with_preset(named_size("tiny"), "g1_head_shared").to_json().dump());
  CHECK(j["elementwise_attn_output_gate"] == true);
}

TEST_CASE("config: a Hugging Face style file with only the paper's flag") {
  // As the paper's released checkpoints: Qwen3 fields + one flag, none of our own fields.
  json j = json::parse(R"({
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0", "bos_token_id": 151643, "eos_token_id": 151645,
    "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "hidden_act": "silu",
    "max_position_embeddings": 128, "max_window_layers": 28, "rms_norm_eps": 1e-06,
    "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null, "use_sliding_window": false,
    "attention_dropout": 0.0, "attention_bias": false, "tie_word_embeddings": true, "use_cache": true,
    "initializer_range": 0.02, "headwise_attn_output_gate": true })");
  ModelConfig c = ModelConfig::from_json(j);
  CHECK(c.gate.position == GatePosition::Sdpa);
  CHECK(c.gate.granularity == GateGranularity::Headwise);
  CHECK(c.gate.activation == GateActivation::Sigmoid);
  CHECK(c.gate.combine == GateCombine::Multiplicative);
  CHECK(c.gate.input_dependent);
  CHECK_FALSE(c.gate.head_shared);
  CHECK(c.tie_word_embeddings);
  CHECK(c.rope_theta == 1e6);
  CHECK(c.q_proj_rows() == 4 * 8 + 4);
  j.erase("headwise_attn_output_gate");
  j["elementwise_attn_output_gate"] = true;
  c = ModelConfig::from_json(j);
  CHECK(c.gate.granularity == GateGranularity::Elementwise);
  CHECK(c.q_proj_rows() == 2 * 4 * 8);
  // defaults: num_key_value_heads = H, head_dim = C / H
  j.erase("num_key_value_heads");
  j.erase("head_dim");
  c = ModelConfig::from_json(j);
  CHECK(c.num_key_value_heads == 4);
  CHECK(c.head_dim == 8);
}

TEST_CASE("config: YaRN rope_scaling") {
  json j = with(tiny_json(), "rope_scaling",
                json::parse(R"({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})"));
  ModelConfig c = ModelConfig::from_json(j);
  REQUIRE(c.rope_scaling);
  CHECK(c.rope_scaling->factor == 4.0);
  CHECK(c.rope_scaling->original_max_position_embeddings == 32);
  CHECK(c.rope_scaling->beta_fast == 32);  // Hugging Face defaults
  CHECK(c.rope_scaling->beta_slow == 1);
  // "type" is the older spelling; original_max_position_embeddings defaults to max_position_embeddings
  j["rope_scaling"] = json::parse(R"({"type": "yarn", "factor": 2})");
  c = ModelConfig::from_json(j);
  CHECK(c.rope_scaling->original_max_position_embeddings == double(c.max_position_embeddings));
  j["rope_scaling"] = json::parse(R"({"rope_type": "default"})");
  CHECK_FALSE(ModelConfig::from_json(j).rope_scaling);
  expect_error(with(tiny_json(), "rope_scaling", json::parse(R"({"rope_type": "linear", "factor": 2})")),
               {"linear", "not supported"});
  expect_error(with(tiny_json(), "rope_scaling", json::parse(R"({"rope_type": "yarn", "factor": 2, "mscale": "1"})")),
               {"rope_scaling.mscale"});
  expect_error(with(tiny_json(), "rope_scaling", json::parse(R"({"rope_type": "yarn", "factor": 2, "low_freq": 1})")),
               {"rope_scaling.low_freq", "truncate"});
  expect_error(with(tiny_json(), "rope_scaling", json::parse(R"({"rope_type": "yarn"})")), {"factor"});
  expect_error(with(tiny_json(), "rope_scaling", json::parse(R"({"rope_type": "yarn", "factor": 0.5})")),
               {"factor"});
  expect_error(with(tiny_json(), "rope_scaling", 3), {"rope_scaling"});
}

TEST_CASE("config: unknown fields and wrong types name the field") {
  expect_error(with(tiny_json(), "num_layers", 3), {"unknown field", "num_layers"});
  expect_error(with(tiny_json(), "hidden_size", "24"), {"hidden_size", "integer"});
  expect_error(with(tiny_json(), "num_hidden_layers", 2.5), {"num_hidden_layers"});
  expect_error(with(tiny_json(), "vocab_size", -3), {"vocab_size"});
  expect_error(with(tiny_json(), "tie_word_embeddings", 1), {"tie_word_embeddings", "true or false"});
  expect_error(with(tiny_json(), "rms_norm_eps", "small"), {"rms_norm_eps", "number"});
  expect_error(with(tiny_json(), "gate_position", "output"), {"gate_position", "output", "sdpa"});
  expect_error(with(tiny_json(), "gate_activation", "relu"), {"gate_activation", "relu", "ns_sigmoid"});
  expect_error(with(tiny_json(), "gate_combine", 1), {"gate_combine", "string"});
  json j = tiny_json();
  j.erase("vocab_size");
  expect_error(j, {"missing", "vocab_size"});
  expect_error(json::array({1, 2}), {"object"});
}

TEST_CASE("config: Hugging Face fields that would change the model are refused") {
  expect_error(with(tiny_json(), "hidden_act", "gelu"), {"hidden_act", "gelu"});
  expect_error(with(tiny_json(), "use_sliding_window", true), {"use_sliding_window"});
  expect_error(with(tiny_json(), "attention_dropout", 0.1), {"attention_dropout"});
  expect_error(with(tiny_json(), "decoder_sparse_step", 2), {"decoder_sparse_step"});
  expect_error(with(tiny_json(), "mlp_only_layers", json::array({0})), {"mlp_only_layers"});
  expect_error(with(tiny_json(), "layer_types", json::array({"sliding_attention", "full_attention"})),
               {"layer_types"});
  // and the harmless ones are accepted
  json ok = tiny_json();
  ok["use_sliding_window"] = false, ok["sliding_window"] = 4096, ok["attention_dropout"] = 0;
  ok["max_window_layers"] = 28, ok["use_cache"] = true, ok["torch_dtype"] = "float32";
  ok["layer_types"] = json::array({"full_attention", "full_attention"});
  ok["pad_token_id"] = nullptr;
  CHECK(ModelConfig::from_json(ok) == named_size("tiny"));
}

TEST_CASE("config: contradictions are errors") {
  const json t = tiny_json();
  expect_error(with(with(t, "elementwise_attn_output_gate", true), "headwise_attn_output_gate", true),
               {"both true"});
  expect_error(with(with(t, "num_attention_heads", 4), "num_key_value_heads", 3), {"not a multiple", "3"});
  expect_error(with(t, "head_dim", 5), {"head_dim", "even"});
  expect_error(with(with(t, "gate_position", "value"), "gate_probe", "rmsnorm"), {"gate_probe", "sdpa", "value"});
  expect_error(with(with(t, "gate_position", "dense"), "gate_granularity", "headwise"), {"dense", "headwise"});
  expect_error(with(with(t, "gate_position", "dense"), "gate_head_shared", true), {"dense"});
  expect_error(with(with(t, "gate_position", "key"), "gate_input_dependent", false),
               {"gate_input_dependent", "key"});
  json ii = with(with(t, "gate_position", "sdpa"), "gate_input_dependent", false);
  ii["elementwise_attn_output_gate"] = false;
  CHECK_NOTHROW(ModelConfig::from_json(ii));
  expect_error(with(ii, "gate_combine", "additive"), {"input-independent"});
  expect_error(with(ii, "gate_granularity", "headwise"), {"input-independent"});
  expect_error(with(ii, "elementwise_attn_output_gate", true), {"elementwise_attn_output_gate"});
  expect_error(with(t, "gate_activation", "silu"), {"gate_activation", "none"});
  expect_error(with(t, "gate_probe", "silu"), {"gate_probe", "none"});
  json probe = with(with(t, "gate_position", "sdpa"), "gate_probe", "rmsnorm");
  probe["elementwise_attn_output_gate"] = false;
  CHECK_NOTHROW(ModelConfig::from_json(probe));
  expect_error(with(probe, "gate_activation", "silu"), {"gate_probe", "gate_activation"});
  // the HF flags must agree with the gate axes
  json g1 = json::parse(with_preset(named_size("tiny"), "g1_elementwise").to_json().dump());
  CHECK_NOTHROW(ModelConfig::from_json(g1));
  expect_error(with(g1, "elementwise_attn_output_gate", false), {"elementwise_attn_output_gate", "false"});
  expect_error(with(g1, "headwise_attn_output_gate", true), {"headwise_attn_output_gate"});
  json g2 = json::parse(with_preset(named_size("tiny"), "g2_elementwise").to_json().dump());
  expect_error(with(g2, "elementwise_attn_output_gate", true), {"elementwise_attn_output_gate", "value"});
  json flag_only = with(t, "headwise_attn_output_gate", true);
  flag_only.erase("gate_position");
  flag_only.erase("gate_granularity");
  CHECK(ModelConfig::from_json(flag_only).gate.granularity == GateGranularity::Headwise);
  expect_error(with(flag_only, "gate_granularity", "elementwise"), {"headwise_attn_output_gate", "gate_granularity"});
  // MoE
  json moe = json::parse(named_size("tiny_moe").to_json().dump());
  expect_error(with(moe, "num_experts_per_tok", 5), {"num_experts_per_tok", "5"});
  expect_error(with(moe, "num_experts_per_tok", 0), {"num_experts_per_tok"});
  expect_error(with(moe, "moe_intermediate_size", 0), {"moe_intermediate_size"});
}

TEST_CASE("config: load errors name the file") {
  const std::string path = (std::filesystem::temp_directory_path() / "tapegrad_bad_config.json").string();
  {
    std::ofstream(path) << "{ \"vocab_size\": 3, ";
  }
  try {
    ModelConfig::load(path);
    FAIL("no error");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find(path) != std::string::npos);
    CHECK(std::string(e.what()).find("JSON") != std::string::npos);
  }
  {
    std::ofstream(path) << with(tiny_json(), "bogus", 1).dump();
  }
  try {
    ModelConfig::load(path);
    FAIL("no error");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find(path) != std::string::npos);
    CHECK(std::string(e.what()).find("bogus") != std::string::npos);
  }
  std::remove(path.c_str());
  CHECK_THROWS_AS(ModelConfig::load(path), std::runtime_error);
}

TEST_CASE("presets: the table of MODEL.md") {
  const std::vector<std::string> expected = {
      "baseline", "more_kv_heads", "more_q_heads", "more_experts", "g1_elementwise", "g2_elementwise",
      "g3_elementwise", "g4_elementwise", "g5_elementwise", "g1_headwise", "g2_headwise", "g1_head_shared",
      "g2_head_shared", "g1_additive_silu", "g1_elementwise_silu", "g1_rmsnorm", "g1_silu_only",
      "g1_additive_identity", "g1_input_independent", "g1_ns_sigmoid"};
  CHECK(list_presets() == expected);
  for (auto& p : expected) CHECK_FALSE(preset_description(p).empty());
  try {
    ModelConfig c = named_size("tiny");
    apply_preset(c, "g6_elementwise");
    FAIL("no error");
  } catch (const std::invalid_argument& e) {
    const std::string m = e.what();
    CHECK(m.find("g6_elementwise") != std::string::npos);
    CHECK(m.find("g1_ns_sigmoid") != std::string::npos);  // lists the valid ones
  }
  const ModelConfig t = named_size("tiny");
  auto g = [&](const char* p) { return with_preset(t, p).gate; };
  CHECK(g("baseline") == GateConfig{});
  CHECK(g("g1_elementwise").position == GatePosition::Sdpa);
  CHECK(g("g2_elementwise").position == GatePosition::Value);
  CHECK(g("g3_elementwise").position == GatePosition::Key);
  CHECK(g("g4_elementwise").position == GatePosition::Query);
  CHECK(g("g5_elementwise").position == GatePosition::Dense);
  CHECK(g("g1_headwise").granularity == GateGranularity::Headwise);
  CHECK(g("g2_headwise").granularity == GateGranularity::Headwise);
  CHECK(g("g2_headwise").position == GatePosition::Value);
  CHECK(g("g1_head_shared").head_shared);
  CHECK(g("g2_head_shared").head_shared);
  CHECK(g("g1_additive_silu").combine == GateCombine::Additive);
  CHECK(g("g1_additive_silu").activation == GateActivation::Silu);
  CHECK(g("g1_elementwise_silu").combine == GateCombine::Multiplicative);
  CHECK(g("g1_elementwise_silu").activation == GateActivation::Silu);
  CHECK(g("g1_rmsnorm").probe == GateProbe::RmsNorm);
  CHECK(g("g1_silu_only").probe == GateProbe::Silu);
  CHECK(g("g1_additive_identity").activation == GateActivation::Identity);
  CHECK(g("g1_additive_identity").combine == GateCombine::Additive);
  CHECK_FALSE(g("g1_input_independent").input_dependent);
  CHECK(g("g1_ns_sigmoid").activation == GateActivation::NsSigmoid);
  // the parameter-matched baselines
  CHECK(with_preset(t, "more_kv_heads").num_key_value_heads == 4);
  CHECK(with_preset(t, "more_q_heads").num_attention_heads == 6);
  CHECK(with_preset(named_size("baby"), "more_kv_heads").num_key_value_heads == 6);  // capped at H
  CHECK(with_preset(named_size("small"), "more_q_heads").num_attention_heads == 12);
  CHECK_THROWS_WITH_AS(with_preset(t, "more_experts"), doctest::Contains("MoE"), std::invalid_argument);
  CHECK(with_preset(named_size("tiny_moe"), "more_experts").num_experts == 6);
  // a preset replaces an earlier gate
  CHECK(with_preset(with_preset(t, "g2_headwise"), "g1_elementwise").gate == g("g1_elementwise"));
  ModelConfig odd = t;
  odd.num_attention_heads = 6, odd.num_key_value_heads = 2;
  CHECK_THROWS_WITH_AS(with_preset(odd, "more_kv_heads"), doctest::Contains("more_kv_heads"), std::invalid_argument);
}

TEST_CASE("presets: parameters added over the baseline") {
  // Worked out by hand from MODEL.md for tiny (L 2, C 24, H 4, K 2, D 6), per layer x 2.
  const ModelConfig t = named_size("tiny");
  const std::int64_t L = 2, C = 24, H = 4, K = 2, D = 6;
  CHECK(preset_extra_parameters(t, "baseline") == 0);
  CHECK(preset_extra_parameters(t, "g1_elementwise") == L * C * H * D);
  CHECK(preset_extra_parameters(t, "g1_headwise") == L * C * H);
  CHECK(preset_extra_parameters(t, "g1_head_shared") == L * C * H * D);
  CHECK(preset_extra_parameters(t, "g2_elementwise") == L * C * K * D);
  CHECK(preset_extra_parameters(t, "g3_elementwise") == L * C * K * D);
  CHECK(preset_extra_parameters(t, "g4_elementwise") == L * C * H * D);
  CHECK(preset_extra_parameters(t, "g5_elementwise") == L * C * C);
  CHECK(preset_extra_parameters(t, "g2_headwise") == L * C * K);
  CHECK(preset_extra_parameters(t, "g1_rmsnorm") == L * D);
  CHECK(preset_extra_parameters(t, "g1_silu_only") == 0);
  CHECK(preset_extra_parameters(t, "g1_input_independent") == L * H * D);
  CHECK(preset_extra_parameters(t, "more_kv_heads") == L * 2 * C * (4 - K) * D);  // k and v grow
  CHECK(preset_extra_parameters(t, "more_q_heads") == L * 2 * C * (6 - H) * D);   // q and o grow
  const ModelConfig m = named_size("tiny_moe");                                  // E 4 -> 6, Fm 16
  CHECK(preset_extra_parameters(m, "more_experts") == L * (2 * C + 2 * 3 * C * 16));
  // with attention_bias the G1 gate rows have biases too
  ModelConfig tb = t;
  tb.attention_bias = true;
  CHECK(preset_extra_parameters(tb, "g1_elementwise") == L * (C * H * D + H * D));
  CHECK(preset_extra_parameters(tb, "g2_elementwise") == L * C * K * D);  // gate_proj: no bias
  // the baseline itself, by hand: embed + lm_head + final norm + 2 layers
  const std::int64_t V = 48, F = 40;
  const std::int64_t layer = 2 * C + C * H * D + 2 * C * K * D + H * D * C + 2 * D + 3 * C * F;
  CHECK(static_cast<std::int64_t>(count_parameters(t)) == 2 * V * C + C + L * layer);
}

// ---- real files (issue 11) -----------------------------------------------------------

namespace {

// Qwen3-8B's config.json as published (only the sizes shrunk).
const char* kQwen3 = R"({
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 8, "hidden_act": "silu",
  "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 48,
  "max_position_embeddings": 40960, "max_window_layers": 36, "model_type": "qwen3",
  "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
  "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 64 })";

// Qwen3-30B-A3B's, shrunk.
const char* kQwen3Moe = R"({
  "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 8,
  "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 48,
  "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [],
  "model_type": "qwen3_moe", "moe_intermediate_size": 16, "norm_topk_prob": true,
  "num_attention_heads": 4, "num_experts": 8, "num_experts_per_tok": 2, "num_hidden_layers": 2,
  "num_key_value_heads": 2, "output_router_logits": false, "rms_norm_eps": 1e-06, "rope_scaling": null,
  "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": null,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 64 })";

// The paper's released files: its own auto_map, qkv_bias, use_qk_norm and the gate flag.
const char* kPaper = R"({
  "architectures": ["Qwen3ForCausalLM"],
  "auto_map": {"AutoConfig": "configuration_qwen3.Qwen3Config",
               "AutoModelForCausalLM": "modeling_qwen3.Qwen3ForCausalLM"},
  "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643,
  "head_dim": 8, "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02,
  "intermediate_size": 48, "max_position_embeddings": 4096, "max_window_layers": 28, "model_type": "qwen3",
  "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "qkv_bias": true,
  "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": 4096,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.46.0",
  "use_cache": true, "use_qk_norm": true, "use_sliding_window": false, "vocab_size": 64,
  "elementwise_attn_output_gate": true, "headwise_attn_output_gate": false })";

std::string parse_error(const std::string& text) {
  try {
    (void)parse_config(text, "cfg.json");
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("config: Qwen3, Qwen3-MoE and the paper's files load - the harmless keys are listed once") {
  ConfigReport q = parse_config(kQwen3, "qwen3/config.json");
  CHECK(q.config.hidden_size == 32);
  CHECK(q.config.rope_theta == 1e6);
  CHECK(q.config.max_position_embeddings == 40960);
  const std::vector<std::string> harmless = {"architectures", "attention_dropout", "bos_token_id", "eos_token_id",
                                             "hidden_act", "max_window_layers", "model_type", "sliding_window",
                                             "torch_dtype", "transformers_version", "use_cache",
                                             "use_sliding_window"};
  CHECK(q.accepted == harmless);
  const std::string n = q.notice("qwen3/config.json");
  CHECK(n.find("qwen3/config.json: accepted without effect on the computation: architectures, ") == 0);
  CHECK(n.find("use_sliding_window") != std::string::npos);

  ConfigReport m = parse_config(kQwen3Moe);
  CHECK(m.config.num_experts == 8);
  // A file from Hugging Face: its MoE loss semantics (MODEL.md "MoE losses").
  CHECK(m.config.moe_aux_loss == MoeAuxLoss::Pooled);
  CHECK(m.config.router_z_loss_coef == 0.0);
  CHECK_FALSE(m.config.output_router_logits);
  CHECK(m.config.aux_loss_weight() == 0.0);
  CHECK(m.config.z_loss_weight() == 0.0);
  auto mj = json::parse(kQwen3Moe);
  mj["output_router_logits"] = true;
  CHECK(ModelConfig::from_json(mj).aux_loss_weight() == 0.001);
  CHECK(std::find(m.accepted.begin(), m.accepted.end(), "decoder_sparse_step") != m.accepted.end());
  CHECK(std::find(m.accepted.begin(), m.accepted.end(), "mlp_only_layers") != m.accepted.end());
  // This project's files keep this project's variant; its named sizes too.
  CHECK(named_size("tiny_moe").moe_aux_loss == MoeAuxLoss::PerLayer);
  CHECK(named_size("tiny_moe").z_loss_weight() == 0.001);
  const ModelConfig back = ModelConfig::from_json(json::parse(named_size("tiny_moe").to_json().dump()));
  CHECK(back == named_size("tiny_moe"));
  ModelConfig pooled = named_size("tiny_moe");
  pooled.moe_aux_loss = MoeAuxLoss::Pooled, pooled.output_router_logits = false;
  CHECK(ModelConfig::from_json(json::parse(pooled.to_json().dump())) == pooled);
  expect_error(with(json::parse(named_size("tiny_moe").to_json().dump()), "moe_aux_loss", "global"),
               {"moe_aux_loss", "global", "pooled"});

  ConfigReport p = parse_config(kPaper);
  CHECK(p.config.attention_bias);  // qkv_bias, as the paper's modeling_qwen3.py reads it
  CHECK(p.config.gate.in_q_proj());
  CHECK(p.config.gate.granularity == GateGranularity::Elementwise);
  CHECK(std::find(p.accepted.begin(), p.accepted.end(), "auto_map") != p.accepted.end());
  CHECK(std::find(p.accepted.begin(), p.accepted.end(), "attention_bias (qkv_bias decides, as in the paper's code)") !=
        p.accepted.end());
  auto pj = json::parse(kPaper);
  pj["qkv_bias"] = false, pj["attention_bias"] = true;
  CHECK_FALSE(ModelConfig::from_json(pj).attention_bias);
  pj.erase("qkv_bias");
  CHECK(ModelConfig::from_json(pj).attention_bias);
  expect_error(with(pj, "qkv_bias", 1), {"qkv_bias", "true or false"});
}

TEST_CASE("config: keys that would change the computation are refused by name") {
  const json q = json::parse(kQwen3Moe);
  expect_error(with(q, "decoder_sparse_step", 2), {"decoder_sparse_step", "2"});
  expect_error(with(q, "mlp_only_layers", json::array({1})), {"mlp_only_layers", "[1]"});
  expect_error(with(with(q, "use_sliding_window", true), "sliding_window", 4096),
               {"use_sliding_window", "sliding_window 4096"});
  expect_error(with(q, "partial_rotary_factor", 0.5), {"partial_rotary_factor"});
  expect_error(with(q, "attention_dropout", 0.1), {"attention_dropout"});
  expect_error(with(q, "quantization_config", json::object()), {"unknown field 'quantization_config'"});
  CHECK_FALSE(refused_keys().empty());
  CHECK(std::find(accepted_keys().begin(), accepted_keys().end(), "auto_map") != accepted_keys().end());
}

TEST_CASE("config: null where a value belongs is said once, naming the keys") {
  json j = json::parse(kQwen3);
  j["head_dim"] = nullptr;
  expect_error(j, {"'head_dim' is null where a value belongs"});
  j["rope_theta"] = nullptr;
  try {
    (void)ModelConfig::from_json(j);
    FAIL("no error");
  } catch (const std::invalid_argument& e) {
    const std::string m = e.what();
    CHECK(m.find("'head_dim', 'rope_theta' are null") != std::string::npos);
    CHECK(m.find("null null") == std::string::npos);
  }
  j = json::parse(kQwen3);
  j["rope_scaling"] = json::parse(R"({"rope_type": "yarn", "factor": null})");
  expect_error(j, {"rope_scaling.factor is null"});
  // null is fine where Hugging Face writes it
  j = json::parse(kQwen3);
  j["pad_token_id"] = nullptr, j["sliding_window"] = nullptr, j["rope_scaling"] = nullptr;
  CHECK_NOTHROW(ModelConfig::from_json(j));
}

TEST_CASE("config: duplicate keys are refused, naming the key") {
  std::string text = kQwen3;
  text.insert(text.find("\"vocab_size\""), "\"hidden_size\": 64, ");
  const std::string m = parse_error(text);
  CHECK(m.find("cfg.json") != std::string::npos);
  CHECK(m.find("duplicate key 'hidden_size'") != std::string::npos);
  std::string nested = kQwen3;
  nested.replace(nested.find("\"rope_scaling\": null"), 20,
                 R"("rope_scaling": {"rope_type": "yarn", "factor": 2, "factor": 4})");
  CHECK(parse_error(nested).find("duplicate key 'rope_scaling.factor'") != std::string::npos);
  CHECK(parse_error("{\"vocab_size\": 3,").find("invalid JSON") != std::string::npos);
  CHECK(parse_error(kQwen3).empty());
  // the file reader names the path and refuses what is not a regular file
  const auto dir = std::filesystem::temp_directory_path() / "tapegrad_cfg_dup";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << text;
  CHECK_THROWS_WITH_AS(read_config((dir / "config.json").string()), doctest::Contains("tapegrad_cfg_dup/config.json"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(read_config(dir.string()), doctest::Contains("not a regular file"), std::runtime_error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("config: sizes are integers and the parameter count never wraps") {
  const json q = json::parse(kQwen3);
  // (sizes against memory: nn/estimate.hpp; here: types, and count_parameters never wraps)
  expect_error(with(q, "num_hidden_layers", 1e9), {"num_hidden_layers", "integer"});
  // within the per-field limits but too many parameters in all: refused by count_parameters
  ModelConfig c = ModelConfig::from_json(q);
  c.num_hidden_layers = 65536, c.hidden_size = 1 << 24, c.intermediate_size = 1 << 24, c.num_attention_heads = 1,
  c.num_key_value_heads = 1, c.head_dim = 2;
  CHECK_THROWS_WITH_AS(count_parameters(c), doctest::Contains("2^63"), std::invalid_argument);
}

TEST_CASE("config: YaRN as Hugging Face's _compute_yarn_parameters") {
  json j = json::parse(kQwen3);
  j["rope_scaling"] = json::parse(R"({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
                                      "attention_factor": 0.8, "beta_fast": 16, "beta_slow": 2, "truncate": false})");
  const ModelConfig c = ModelConfig::from_json(j);
  REQUIRE(c.rope_scaling);
  CHECK(*c.rope_scaling->attention_factor == 0.8);
  CHECK_FALSE(c.rope_scaling->truncate);
  CHECK(ModelConfig::from_json(json::parse(c.to_json().dump())) == c);
  // By hand for D 8, theta 1e6, L 32768: corr(r) = 8 ln(L / (2 pi r)) / (2 ln 1e6);
  // no truncation: low = corr(16), high = corr(2), ramp(i) = clamp((i - low) / (high - low)).
  const double pi = 3.14159265358979323846;
  auto corr = [&](double r) { return 8 * std::log(32768 / (2 * pi * r)) / (2 * std::log(1e6)); };
  double scale = 0;
  std::vector<double> inv = rope_inv_freq(8, 1e6, c.rope_scaling, &scale);
  CHECK(scale == 0.8);
  const double low = std::max(corr(16), 0.0), high = std::min(corr(2), 7.0);
  for (int i = 0; i < 4; ++i) {
    const double base = 1.0 / std::pow(1e6, 2.0 * i / 8);
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    CHECK(inv[i] == doctest::Approx(base / 4 * ramp + base * (1 - ramp)).epsilon(1e-14));
  }
  // truncate (the default): floor / ceil of the correction dimensions
  YarnScaling t = *c.rope_scaling;
  t.truncate = true, t.attention_factor.reset();
  inv = rope_inv_freq(8, 1e6, t, &scale);
  CHECK(scale == doctest::Approx(0.1 * std::log(4.0) + 1));
  const double lo_t = std::max(std::floor(corr(16)), 0.0), hi_t = std::min(std::ceil(corr(2)), 7.0);
  for (int i = 0; i < 4; ++i) {
    const double base = 1.0 / std::pow(1e6, 2.0 * i / 8);
    const double ramp = std::clamp((i - lo_t) / (hi_t - lo_t), 0.0, 1.0);
    CHECK(inv[i] == doctest::Approx(base / 4 * ramp + base * (1 - ramp)).epsilon(1e-14));
  }
  // mscale / mscale_all_dim (DeepSeek's spelling): attention_factor = mscale(s, m) / mscale(s, m_all)
  t.mscale = 1.0, t.mscale_all_dim = 0.5;
  (void)rope_inv_freq(8, 1e6, t, &scale);
  CHECK(scale == doctest::Approx((0.1 * std::log(4.0) + 1) / (0.05 * std::log(4.0) + 1)));
  expect_error(with(j, "rope_scaling", json::parse(R"({"rope_type": "yarn", "factor": 2, "attention_factor": -1})")),
               {"attention_factor"});
}

TEST_CASE("config: the field table drives --fields, JSON and equality") {
  const auto fields = config_fields();
  const ModelConfig d;
  const auto j = d.to_json();
  for (const auto& f : fields) {
    INFO(f.key);
    CHECK(j.contains(f.key));  // every row is written
    CHECK_FALSE(f.doc.empty());
  }
  auto find = [&](const std::string& k) {
    for (auto& f : fields)
      if (f.key == k) return f;
    return FieldInfo{};
  };
  CHECK(find("router_z_loss_coef").default_value == "0.001 (Hugging Face file: 0.0)");
  CHECK(find("gate_position").default_value == "\"none\"");
  CHECK(find("vocab_size").type == "integer >= 0");
  // equality sees every field: flip each one through JSON and compare
  const ModelConfig base = named_size("tiny_moe");
  const json bj = json::parse(base.to_json().dump());
  for (const char* k : {"rms_norm_eps", "rope_theta", "initializer_range", "router_aux_loss_coef",
                        "router_z_loss_coef"}) {
    INFO(k);
    CHECK_FALSE(ModelConfig::from_json(with(bj, k, bj[k].get<double>() * 2)) == base);
  }
  for (const char* k : {"tie_word_embeddings", "attention_bias", "use_qk_norm", "sandwich_norm", "norm_topk_prob",
                        "output_router_logits"}) {
    INFO(k);
    CHECK_FALSE(ModelConfig::from_json(with(bj, k, !bj[k].get<bool>())) == base);
  }
}
