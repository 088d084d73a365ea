// fuzz/fuzz_config.cpp — libFuzzer harness: any bytes as a config.json. Parsed, validated,
// written back and read again; errors must be std::exceptions.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

#include <nlohmann/json.hpp>

#include "nn/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto j = nlohmann::json::parse(std::string(reinterpret_cast<const char*>(data), size));
    const auto c = tg::nn::ModelConfig::from_json(j);
    const auto again = tg::nn::ModelConfig::from_json(nlohmann::json::parse(c.to_json().dump()));
    if (!(again == c)) __builtin_trap();  // what is written must read back
  } catch (const std::exception&) {
  }
  return 0;
}
