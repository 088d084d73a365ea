// nn/tokenizer_detail.hpp — what the tokenizer (nn/tokenizer.cpp) and its trainer
// (nn/tokenizer_train.cpp) share, and no one else uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace tg::text::detail {

// The length (1-4) of the valid UTF-8 sequence at s[i], or 0 if the bytes there are not
// one: a bad lead or continuation byte, a sequence cut by the end of s, an overlong form,
// a surrogate, or a code point past U+10FFFF.
inline std::size_t valid_utf8_at(std::string_view s, std::size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return 1;
  std::size_t len = 0;
  std::uint32_t cp = 0, min_cp = 0;
  if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F, min_cp = 0x80;
  else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F, min_cp = 0x800;
  else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07, min_cp = 0x10000;
  else return 0;
  if (i + len > s.size()) return 0;
  for (std::size_t k = 1; k < len; ++k) {
    const unsigned char cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3F);
  }
  if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

}  // namespace tg::text::detail
