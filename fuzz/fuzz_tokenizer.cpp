// fuzz/fuzz_tokenizer.cpp — libFuzzer harness: any bytes as a tokenizer.json; when one
// loads, its own bytes are encoded and decoded (a byte-level BPE round-trips any bytes).
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

#include "nn/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto tok = tg::text::Tokenizer::from_string(text, "fuzz");
    const std::string sample = text.substr(0, 256);
    (void)tok.decode(tok.encode(sample));
  } catch (const std::exception&) {
  }
  return 0;
}
