// fuzz/fuzz_safetensors.cpp — libFuzzer harness: any bytes as a safetensors file. Every
// input must end in a parsed file or a std::exception; never a crash, a hang or UB.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

#include "nn/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto f = tg::st::SafeTensorsFile::from_bytes(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    for (const auto& name : f.names()) {
      std::size_t n = 1;
      for (auto d : f.shape(name)) n *= d;
      if (n <= (std::size_t(1) << 20)) (void)f.get<double>(name);  // convert every small tensor
    }
  } catch (const std::exception&) {
  }
  return 0;
}
