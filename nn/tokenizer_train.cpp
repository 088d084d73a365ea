// nn/tokenizer_train.cpp — see tokenizer.hpp train_bpe(): learning a byte-level BPE.
//
// Note [BPE training]
// The text is cut into pre-tokens by GPT-2's regex (bytes that are not valid UTF-8 form
// pre-tokens of their own), and equal pre-tokens are counted once with their frequency
// ("words"). Every word starts as its bytes (ids 0..255 = byte values). Then, until the
// vocabulary is full: the adjacent pair with the highest count summed over words × frequency
// (ties: the smaller pair of ids) becomes a new token, and every word holding it is
// rewritten. Counts live in a hash map; a max-heap holds (count, pair) entries that may be
// stale (checked against the map when popped), and an index from each pair to the words
// that hold it limits a merge's work to those words. Only the touched words' pairs are
// recounted, so a merge costs about the size of the words it changes.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <queue>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "nn/tokenizer.hpp"
#include "nn/tokenizer_detail.hpp"

namespace tg::text {

namespace {


// Pre-tokens of `text` under GPT-2's regex, counted.
std::unordered_map<std::string, std::int64_t> count_words(std::string_view text) {
  int err = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2Pattern), PCRE2_ZERO_TERMINATED,
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
  if (!re) throw std::logic_error("train_bpe: GPT-2 pattern does not compile");
  pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(re, nullptr);
  std::unordered_map<std::string, std::int64_t> words;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  std::size_t pos = 0, gap = 0;
  while (pos < text.size()) {
    const int rc = pcre2_match(re, subject, text.size(), pos, 0, md, nullptr);
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    if (ov[1] == ov[0]) {
      pos = ov[0] + std::max<std::size_t>(detail::valid_utf8_at(text, ov[0]), 1);
      continue;
    }
    if (ov[0] > gap) ++words[std::string(text.substr(gap, ov[0] - gap))];
    ++words[std::string(text.substr(ov[0], ov[1] - ov[0]))];
    gap = pos = ov[1];
  }
  if (gap < text.size()) ++words[std::string(text.substr(gap))];
  pcre2_match_data_free(md);
  pcre2_code_free(re);
  return words;
}

std::uint64_t key(std::int32_t a, std::int32_t b) { return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b); }

}  // namespace

nlohmann::ordered_json train_bpe(std::string_view text, const TrainOptions& o) {
  const std::size_t specials = o.special_tokens.size();
  if (o.vocab_size < 256 + specials)
    throw std::invalid_argument("tokenizer train: --vocab " + std::to_string(o.vocab_size) +
                                " is too small: a byte-level BPE needs 256 byte tokens + " + std::to_string(specials) +
                                " special token(s)");
  for (const auto& s : o.special_tokens)
    if (s.empty()) throw std::invalid_argument("tokenizer train: a special token is empty");
  const auto counted = count_words(text);
  std::vector<std::vector<std::int32_t>> words;
  std::vector<std::int64_t> freq;
  words.reserve(counted.size());
  for (const auto& [w, n] : counted) {
    std::vector<std::int32_t> sym(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) sym[i] = static_cast<unsigned char>(w[i]);
    words.push_back(std::move(sym));
    freq.push_back(n);
  }
  // The token strings (ByteLevel alphabet), ids 0..255 the bytes.
  std::vector<std::string> tokens(256);
  for (int b = 0; b < 256; ++b) tokens[b] = byte_to_unicode(static_cast<unsigned char>(b));
  std::unordered_map<std::string, std::int32_t> token_id;
  for (int b = 0; b < 256; ++b) token_id[tokens[b]] = b;

  std::unordered_map<std::uint64_t, std::int64_t> count;
  std::unordered_map<std::uint64_t, std::unordered_set<std::uint32_t>> where;
  for (std::uint32_t w = 0; w < words.size(); ++w)
    for (std::size_t i = 0; i + 1 < words[w].size(); ++i) {
      const auto k = key(words[w][i], words[w][i + 1]);
      count[k] += freq[w];
      where[k].insert(w);
    }
  using Entry = std::pair<std::int64_t, std::uint64_t>;  // (count, pair); ties: smaller pair first
  auto cmp = [](const Entry& x, const Entry& y) { return x.first != y.first ? x.first < y.first : x.second > y.second; };
  std::priority_queue<Entry, std::vector<Entry>, decltype(cmp)> heap(cmp);
  for (const auto& [k, c] : count) heap.push({c, k});

  nlohmann::ordered_json merges = nlohmann::ordered_json::array();
  const std::size_t target = o.vocab_size - specials;
  std::vector<std::uint64_t> touched;
  while (tokens.size() < target && !heap.empty()) {
    const auto [c, k] = heap.top();
    heap.pop();
    auto it = count.find(k);
    if (it == count.end() || it->second != c) {  // stale: push the current count back
      if (it != count.end() && it->second > 0) heap.push({it->second, k});
      continue;
    }
    if (c < static_cast<std::int64_t>(std::max<std::size_t>(o.min_frequency, 1))) break;
    const std::int32_t a = static_cast<std::int32_t>(k >> 32), b = static_cast<std::int32_t>(k & 0xFFFFFFFFu);
    const std::string merged_text = tokens[a] + tokens[b];
    std::int32_t merged;
    if (auto t = token_id.find(merged_text); t != token_id.end()) {
      merged = t->second;  // the same string from another pair: one token, two merges
    } else {
      merged = static_cast<std::int32_t>(tokens.size());
      tokens.push_back(merged_text);
      token_id[merged_text] = merged;
    }
    merges.push_back({tokens[a], tokens[b]});
    const std::vector<std::uint32_t> ws(where[k].begin(), where[k].end());
    touched.clear();
    for (std::uint32_t w : ws) {
      auto& s = words[w];
      bool has = false;
      for (std::size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;
      for (std::size_t i = 0; i + 1 < s.size(); ++i) count[key(s[i], s[i + 1])] -= freq[w];
      std::size_t n = 0;
      for (std::size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) s[n++] = merged, i += 2;
        else s[n++] = s[i++];
      }
      s.resize(n);
      for (std::size_t i = 0; i + 1 < s.size(); ++i) {
        const auto kk = key(s[i], s[i + 1]);
        count[kk] += freq[w];
        where[kk].insert(w);
        touched.push_back(kk);
      }
    }
    count.erase(k);
    where.erase(k);
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (auto kk : touched)
      if (count[kk] > 0) heap.push({count[kk], kk});
  }

  using oj = nlohmann::ordered_json;
  oj vocab = oj::object();
  for (std::size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  oj added = oj::array();
  for (std::size_t i = 0; i < specials; ++i)
    added.push_back({{"id", tokens.size() + i},
                     {"content", o.special_tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  const oj byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  oj j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = byte_level;
  j["post_processor"] = byte_level;
  j["decoder"] = byte_level;
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", vocab},
                {"merges", merges}};
  return j;
}

}  // namespace tg::text
