// nn/config_detail.hpp — what nn/config.cpp and nn/presets.cpp share, and no one else uses:
// the error every bad config or preset raises, and a list joined for its message.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace tg::nn::detail {

// A bad config, size or preset: std::invalid_argument with a message naming the field.
[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

// "a, b, c": the valid names of a field, for such a message.
inline std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string r;
  for (std::size_t i = 0; i < v.size(); ++i) r += (i ? sep : "") + v[i];
  return r;
}

}  // namespace tg::nn::detail
