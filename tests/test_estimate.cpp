// tests/test_estimate.cpp — nn/estimate.hpp: the parameter count agrees with the model's,
// sizes that overflow name their field, byte sizes parse.
#include <doctest/doctest.h>

#include <string>

#include "nn/estimate.hpp"
#include "nn/model.hpp"
#include "test_util.hpp"

using namespace tg;

TEST_CASE("estimate_memory counts the parameters as the model does, for every size and a gated MoE") {
  for (const std::string& size : nn::size_names()) {
    for (const char* preset : {"baseline", "g1_elementwise", "g1_headwise"}) {
      nn::ModelConfig c = nn::with_preset(nn::named_size(size), preset);
      c.vocab_size = 256;
      const auto e = nn::estimate_memory(c, 8, 64, 4, true);
      INFO(size << " " << preset);
      // The gate's weights are counted at their largest (C x (C + HD)): an upper bound.
      CHECK(e.parameters >= nn::count_parameters(c));
      CHECK(e.parameters <= nn::count_parameters(c) + c.num_hidden_layers * c.hidden_size *
                                                         (c.hidden_size + c.num_attention_heads * c.head_dim));
      CHECK(e.weight_bytes == e.parameters * 4);
      CHECK(e.state_bytes == 3 * e.weight_bytes);
      CHECK(e.total_bytes > e.weight_bytes + e.state_bytes);
      const auto inference = nn::estimate_memory(c, 1, 64, 4, false);
      CHECK(inference.state_bytes == 0);
      CHECK(inference.total_bytes < e.total_bytes);
    }
  }
  nn::ModelConfig tiny = nn::named_size("tiny");
  tiny.vocab_size = 256;
  // Exact for the baseline: the same formula as count_parameters.
  CHECK(nn::estimate_memory(tiny, 1, 8, 8, false).parameters == nn::count_parameters(tiny));
  nn::CausalLM<float> model(tiny, 1);
  CHECK(nn::estimate_memory(tiny, 1, 8, 4, false).parameters == model.num_parameters());
}

TEST_CASE("sizes that overflow 64 bits are an error naming the field, not a wrapped number") {
  nn::ModelConfig c = nn::named_size("tiny");
  c.vocab_size = 256;
  c.hidden_size = std::size_t(1) << 62;
  std::string msg = THROW_MSG(nn::estimate_memory(c, 1, 8, 4, true));
  CHECK(msg.find("overflows 64 bits") != std::string::npos);
  CHECK(msg.find("hidden_size 4611686018427387904") != std::string::npos);
  c = nn::named_size("tiny");
  c.vocab_size = 256;
  c.num_hidden_layers = std::size_t(1) << 40;
  const auto e = nn::estimate_memory(c, 1, 8, 4, true);  // fits 64 bits, not a machine
  msg = THROW_MSG(nn::check_memory(e, 0, "cfg.json"));
  CHECK(msg.find("cfg.json") != std::string::npos);
  CHECK(msg.find("num_hidden_layers 1099511627776") != std::string::npos);
  CHECK(msg.find("machine's memory") != std::string::npos);
  msg = THROW_MSG(nn::check_memory(nn::estimate_memory(nn::with_preset(nn::named_size("tiny"), "baseline"), 1, 8, 4, true), 1000, "x"));
  CHECK(msg.find("--max-memory 1000 B") != std::string::npos);
}

TEST_CASE("parse_bytes and format_bytes") {
  CHECK(nn::parse_bytes("8G", "--m") == 8ull << 30);
  CHECK(nn::parse_bytes("512M", "--m") == 512ull << 20);
  CHECK(nn::parse_bytes("1.5KiB", "--m") == 1536);
  CHECK(nn::parse_bytes("123", "--m") == 123);
  for (const char* bad : {"", "x", "-1G", "0", "nan", "inf", "8Q", "1e30T"})
    CHECK(THROW_MSG(nn::parse_bytes(bad, "--m")).find("--m: '") == 0);
  CHECK(nn::format_bytes(1536) == "1.5 KB");
  CHECK(nn::format_bytes(100) == "100 B");
  CHECK(nn::machine_memory_bytes() > (std::uint64_t(1) << 28));
}
