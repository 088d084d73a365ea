// nn/tokenizer.cpp — see tokenizer.hpp: reading tokenizer.json, encoding, decoding.
#include "nn/tokenizer.hpp"
#include "nn/tokenizer_detail.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include "nn/tokens.hpp"  // fnv1a64

namespace tg::text {

using json = nlohmann::json;

const char* const kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

namespace {

void append_utf8(std::string& s, std::uint32_t cp) {
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

struct ByteTable {
  std::array<std::string, 256> to_unicode;           // byte -> UTF-8 of its code point
  std::unordered_map<std::uint32_t, unsigned char> from_cp;  // code point -> byte
  ByteTable() {
    std::uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const std::uint32_t cp = printable ? static_cast<std::uint32_t>(b) : next++;
      append_utf8(to_unicode[b], cp);
      from_cp[cp] = static_cast<unsigned char>(b);
    }
  }
};
const ByteTable& bytes_table() {
  static const ByteTable t;
  return t;
}

// Decodes one UTF-8 code point of a *valid* string at s[i], advancing i.
std::uint32_t next_cp(const std::string& s, std::size_t& i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
  std::uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < len && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

// Token text (ByteLevel alphabet) -> its bytes; false if a character is outside the alphabet.
bool unicode_to_bytes(const std::string& token, std::string& out) {
  out.clear();
  const auto& t = bytes_table().from_cp;
  std::size_t i = 0;
  while (i < token.size()) {
    auto it = t.find(next_cp(token, i));
    if (it == t.end()) return false;
    out += static_cast<char>(it->second);
  }
  return true;
}


struct Regex {
  pcre2_code* code = nullptr;
  explicit Regex(const std::string& pattern, const std::string& where) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                         PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw std::runtime_error(where + ": the regular expression does not compile at offset " + std::to_string(off) +
                               ": " + reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
  }
  ~Regex() { pcre2_code_free(code); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
};

}  // namespace

const std::string& byte_to_unicode(unsigned char b) { return bytes_table().to_unicode[b]; }

struct Tokenizer::Impl {
  std::string label;
  std::uint64_t hash = 0;
  bool nfc = false;
  std::unique_ptr<Regex> split;  // null: no regex split (the whole segment is one piece)
  bool ignore_merges = false;
  std::unordered_map<std::string, std::int32_t> vocab;  // ByteLevel text -> id
  std::vector<std::string> id_bytes;                    // id -> bytes ("" if no token)
  std::vector<bool> has_token;
  std::array<std::int32_t, 256> byte_id{};               // byte -> id of its one-character token
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges;  // (a,b) -> (rank, merged)
  struct Added {
    std::string content;
    std::int32_t id;
  };
  std::vector<Added> added;  // longest first
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<std::int32_t>> cache;

  [[noreturn]] void fail(const std::string& field, const std::string& why) const {
    throw std::runtime_error("tokenizer '" + label + "': " + field + ": " + why);
  }

  void set_token(std::int32_t id, std::string bytes, const std::string& field) {
    if (id < 0) fail(field, "id " + std::to_string(id) + " is negative");
    if (static_cast<std::size_t>(id) >= id_bytes.size()) {
      id_bytes.resize(static_cast<std::size_t>(id) + 1);
      has_token.resize(static_cast<std::size_t>(id) + 1, false);
    }
    id_bytes[id] = std::move(bytes);
    has_token[id] = true;
  }

  void bpe(const std::string& piece, std::vector<std::int32_t>& out) const {
    if (ignore_merges) {
      std::string text;
      for (unsigned char c : piece) text += byte_to_unicode(c);
      if (auto it = vocab.find(text); it != vocab.end()) return out.push_back(it->second);
    }
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      if (auto it = cache.find(piece); it != cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<std::int32_t> sym(piece.size());
    for (std::size_t i = 0; i < piece.size(); ++i) sym[i] = byte_id[static_cast<unsigned char>(piece[i])];
    for (;;) {
      std::int32_t best_rank = INT32_MAX, a = -1, b = -1, merged = -1;
      for (std::size_t i = 0; i + 1 < sym.size(); ++i) {
        auto it = merges.find((std::uint64_t(std::uint32_t(sym[i])) << 32) | std::uint32_t(sym[i + 1]));
        if (it != merges.end() && it->second.first < best_rank)
          best_rank = it->second.first, a = sym[i], b = sym[i + 1], merged = it->second.second;
      }
      if (merged < 0) break;
      std::size_t w = 0;
      for (std::size_t i = 0; i < sym.size();) {
        if (i + 1 < sym.size() && sym[i] == a && sym[i + 1] == b) sym[w++] = merged, i += 2;
        else sym[w++] = sym[i++];
      }
      sym.resize(w);
    }
    out.insert(out.end(), sym.begin(), sym.end());
    if (piece.size() <= 256) {
      std::lock_guard<std::mutex> lock(cache_mutex);
      if (cache.size() > 1'000'000) cache.clear();
      cache.emplace(piece, std::move(sym));
    }
  }

  // A segment between added tokens: normalise, split into pieces, BPE each.
  void encode_segment(std::string_view seg, std::vector<std::int32_t>& out) const {
    if (seg.empty()) return;
    std::string text(seg);
    if (nfc) text = nfc_normalize(text);
    if (!split) return bpe(text, out);
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(split->code, nullptr);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    std::size_t pos = 0, gap = 0;  // the next search offset; the start of the unmatched text
    while (pos < text.size()) {
      const int rc = pcre2_match(split->code, subject, text.size(), pos, 0, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        pcre2_match_data_free(md);
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw std::runtime_error("tokenizer '" + label + "': matching the pre-tokenizer's regex failed: " +
                                 reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const std::size_t s = ov[0], e = ov[1];
      if (e == s) {  // an empty match: step over one character (or one invalid byte)
        const std::size_t len = detail::valid_utf8_at(text, s);
        pos = s + std::max<std::size_t>(len, 1);
        continue;
      }
      if (s > gap) bpe(text.substr(gap, s - gap), out);  // "Isolated": the gap is a piece too
      bpe(text.substr(s, e - s), out);
      gap = pos = e;
    }
    if (gap < text.size()) bpe(text.substr(gap), out);
    pcre2_match_data_free(md);
  }

  // NFC of the valid UTF-8 runs; invalid bytes pass through unchanged.
  static std::string nfc_normalize(const std::string& s) {
    std::string out;
    std::size_t i = 0;
    while (i < s.size()) {
      std::size_t j = i;
      while (j < s.size()) {
        const std::size_t len = detail::valid_utf8_at(s, j);
        if (len == 0) break;
        j += len;
      }
      if (j > i) {
        bool ascii = true;
        for (std::size_t k = i; k < j && ascii; ++k) ascii = static_cast<unsigned char>(s[k]) < 0x80;
        if (ascii) {
          out.append(s, i, j - i);
        } else {
          utf8proc_uint8_t* dst = nullptr;
          const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                                  static_cast<utf8proc_ssize_t>(j - i), &dst,
                                                  utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
          if (n < 0) throw std::runtime_error(std::string("NFC normalisation failed: ") + utf8proc_errmsg(n));
          out.append(reinterpret_cast<const char*>(dst), static_cast<std::size_t>(n));
          std::free(dst);
        }
        i = j;
      }
      while (i < s.size() && detail::valid_utf8_at(s, i) == 0) out += s[i++];
    }
    return out;
  }

  void parse(const json& j);
};

namespace {

// A field that must be absent, null, or equal to an allowed value.
template <class V>
void expect(const json& obj, const char* key, const V& allowed, const std::string& where,
            const std::function<void(const std::string&, const std::string&)>& fail) {
  if (!obj.contains(key) || obj[key].is_null()) return;
  if (obj[key] != json(allowed))
    fail(where + "." + key, obj[key].dump() + " is not supported (only " + json(allowed).dump() + ")");
}

}  // namespace

void Tokenizer::Impl::parse(const json& j) {
  auto failf = [this](const std::string& f, const std::string& w) { fail(f, w); };
  if (!j.is_object()) fail("(top level)", "is not a JSON object");
  // ---- model ----
  if (!j.contains("model") || !j["model"].is_object()) fail("model", "missing (or not an object)");
  const json& m = j["model"];
  const std::string type = m.value("type", std::string("BPE"));  // old files omit the type
  if (type != "BPE") fail("model.type", "'" + type + "' is not supported (only byte-level 'BPE')");
  expect(m, "dropout", nullptr, "model", failf);
  expect(m, "continuing_subword_prefix", std::string(""), "model", failf);
  expect(m, "end_of_word_suffix", std::string(""), "model", failf);
  expect(m, "byte_fallback", false, "model", failf);
  expect(m, "fuse_unk", false, "model", failf);
  if (m.contains("ignore_merges") && !m["ignore_merges"].is_null()) {
    if (!m["ignore_merges"].is_boolean()) fail("model.ignore_merges", "must be true or false");
    ignore_merges = m["ignore_merges"].get<bool>();
  }
  if (!m.contains("vocab") || !m["vocab"].is_object()) fail("model.vocab", "missing (or not an object of token: id)");
  std::string bytes;
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    if (!it.value().is_number_integer()) fail("model.vocab[\"" + it.key() + "\"]", "the id must be an integer");
    const std::int64_t id = it.value().get<std::int64_t>();
    if (id < 0 || id > INT32_MAX) fail("model.vocab[\"" + it.key() + "\"]", "id " + std::to_string(id) + " is out of range");
    if (!unicode_to_bytes(it.key(), bytes))
      fail("model.vocab[\"" + it.key() + "\"]", "holds a character outside the ByteLevel alphabet");
    if (static_cast<std::size_t>(id) < has_token.size() && has_token[id])
      fail("model.vocab[\"" + it.key() + "\"]", "id " + std::to_string(id) + " is given to two tokens");
    vocab[it.key()] = static_cast<std::int32_t>(id);
    set_token(static_cast<std::int32_t>(id), bytes, "model.vocab");
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab.find(byte_to_unicode(static_cast<unsigned char>(b)));
    if (it == vocab.end()) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02X", b);
      fail("model.vocab", std::string("has no token for byte ") + hex + " ('" + byte_to_unicode(b) +
                              "'): a byte-level BPE needs all 256");
    }
    byte_id[b] = it->second;
  }
  if (!m.contains("merges") || !m["merges"].is_array()) fail("model.merges", "missing (or not a list)");
  const json& ms = m["merges"];
  for (std::size_t r = 0; r < ms.size(); ++r) {
    const std::string where = "model.merges[" + std::to_string(r) + "]";
    std::string a, b;
    if (ms[r].is_string()) {
      const std::string s = ms[r].get<std::string>();
      const auto sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        fail(where, "\"" + s + "\" is not two tokens separated by one space");
      a = s.substr(0, sp), b = s.substr(sp + 1);
    } else if (ms[r].is_array() && ms[r].size() == 2 && ms[r][0].is_string() && ms[r][1].is_string()) {
      a = ms[r][0].get<std::string>(), b = ms[r][1].get<std::string>();
    } else {
      fail(where, "must be \"a b\" or [\"a\", \"b\"], got " + ms[r].dump());
    }
    auto ia = vocab.find(a), ib = vocab.find(b), im = vocab.find(a + b);
    if (ia == vocab.end()) fail(where, "'" + a + "' is not in model.vocab");
    if (ib == vocab.end()) fail(where, "'" + b + "' is not in model.vocab");
    if (im == vocab.end()) fail(where, "the merged token '" + a + b + "' is not in model.vocab");
    const std::uint64_t key = (std::uint64_t(std::uint32_t(ia->second)) << 32) | std::uint32_t(ib->second);
    merges.emplace(key, std::make_pair(static_cast<std::int32_t>(r), im->second));  // first (lowest) rank wins
  }
  // ---- added tokens ----
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    if (!j["added_tokens"].is_array()) fail("added_tokens", "must be a list");
    for (std::size_t i = 0; i < j["added_tokens"].size(); ++i) {
      const json& t = j["added_tokens"][i];
      const std::string where = "added_tokens[" + std::to_string(i) + "]";
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || !t.contains("content") ||
          !t["content"].is_string())
        fail(where, "needs an integer \"id\" and a string \"content\"");
      for (const char* flag : {"single_word", "lstrip", "rstrip"})
        if (t.contains(flag) && t[flag] == json(true)) fail(where + "." + flag, "true is not supported");
      const std::string content = t["content"].get<std::string>();
      if (content.empty()) fail(where + ".content", "is empty");
      const std::int64_t id = t["id"].get<std::int64_t>();
      if (id < 0 || id > INT32_MAX) fail(where + ".id", std::to_string(id) + " is out of range");
      // An added token that is also in the vocabulary must decode to the same bytes.
      set_token(static_cast<std::int32_t>(id), content, where);
      added.push_back({content, static_cast<std::int32_t>(id)});
    }
    std::stable_sort(added.begin(), added.end(),
                     [](const Added& x, const Added& y) { return x.content.size() > y.content.size(); });
  }
  // ---- normalizer ----
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const json& n = j["normalizer"];
    std::vector<json> steps;
    if (n.value("type", "") == "Sequence") {
      if (!n.contains("normalizers") || !n["normalizers"].is_array()) fail("normalizer.normalizers", "missing");
      for (auto& s : n["normalizers"]) steps.push_back(s);
    } else {
      steps.push_back(n);
    }
    for (auto& s : steps) {
      const std::string t = s.is_object() ? s.value("type", "") : "";
      if (t == "NFC") nfc = true;
      else fail("normalizer.type", "'" + t + "' is not supported (only NFC)");
    }
  }
  // ---- pre-tokenizer ----
  bool byte_level = false;
  if (!j.contains("pre_tokenizer") || j["pre_tokenizer"].is_null())
    fail("pre_tokenizer", "missing: a byte-level BPE needs the ByteLevel pre-tokenizer");
  {
    const json& pt = j["pre_tokenizer"];
    std::vector<json> steps;
    if (pt.value("type", "") == "Sequence") {
      if (!pt.contains("pretokenizers") || !pt["pretokenizers"].is_array()) fail("pre_tokenizer.pretokenizers", "missing");
      for (auto& s : pt["pretokenizers"]) steps.push_back(s);
    } else {
      steps.push_back(pt);
    }
    for (std::size_t i = 0; i < steps.size(); ++i) {
      const json& s = steps[i];
      const std::string where = steps.size() > 1 ? "pre_tokenizer.pretokenizers[" + std::to_string(i) + "]" : "pre_tokenizer";
      const std::string t = s.is_object() ? s.value("type", "") : "";
      if (t == "Split") {
        if (split || byte_level) fail(where, "only one regex split, before ByteLevel, is supported");
        if (!s.contains("pattern") || !s["pattern"].is_object() || !s["pattern"].contains("Regex") ||
            !s["pattern"]["Regex"].is_string())
          fail(where + ".pattern", "must be {\"Regex\": \"...\"} (String patterns are not supported)");
        expect(s, "behavior", std::string("Isolated"), where, failf);
        expect(s, "invert", false, where, failf);
        split = std::make_unique<Regex>(s["pattern"]["Regex"].get<std::string>(), "tokenizer '" + label + "': " + where + ".pattern");
      } else if (t == "ByteLevel") {
        if (byte_level) fail(where, "ByteLevel given twice");
        expect(s, "add_prefix_space", false, where, failf);
        const bool use_regex = s.value("use_regex", true);
        if (use_regex) {
          if (split) fail(where + ".use_regex", "true after a Split would split twice (not supported)");
          split = std::make_unique<Regex>(kGpt2Pattern, "GPT-2 pattern");
        }
        byte_level = true;
      } else {
        fail(where + ".type", "'" + t + "' is not supported (Split with a Regex, ByteLevel)");
      }
    }
    if (!byte_level) fail("pre_tokenizer", "has no ByteLevel step (only byte-level BPE is supported)");
  }
  // ---- decoder, post-processor ----
  if (j.contains("decoder") && !j["decoder"].is_null() && j["decoder"].value("type", "") != "ByteLevel")
    fail("decoder.type", "'" + j["decoder"].value("type", "") + "' is not supported (only ByteLevel)");
  if (j.contains("post_processor") && !j["post_processor"].is_null() && j["post_processor"].value("type", "") != "ByteLevel")
    fail("post_processor.type", "'" + j["post_processor"].value("type", "") +
                                    "' is not supported (only ByteLevel; tokens added around the text are not)");
  for (const char* k : {"truncation", "padding"})
    if (j.contains(k) && !j[k].is_null()) fail(k, "must be null (not supported)");
}

Tokenizer::Tokenizer() : p_(std::make_unique<Impl>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_string(const std::string& text, const std::string& label) {
  Tokenizer t;
  t.p_->label = label;
  t.p_->hash = data::fnv1a64(text.data(), text.size());
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw std::runtime_error("tokenizer '" + label + "': not valid JSON: " + e.what());
  }
  t.p_->parse(j);
  return t;
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("tokenizer '" + path + "': cannot open the file");
  std::ostringstream ss;
  ss << f.rdbuf();
  return from_string(ss.str(), path);
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<std::int32_t> out;
  out.reserve(text.size() / 3 + 1);
  const auto& added = p_->added;
  std::size_t seg = 0, i = 0;
  while (i < text.size()) {
    const Impl::Added* hit = nullptr;
    for (const auto& a : added)  // longest first: the first that matches is the longest
      if (text.compare(i, a.content.size(), a.content) == 0) {
        hit = &a;
        break;
      }
    if (!hit) {
      ++i;
      continue;
    }
    p_->encode_segment(text.substr(seg, i - seg), out);
    out.push_back(hit->id);
    i += hit->content.size();
    seg = i;
  }
  p_->encode_segment(text.substr(seg), out);
  return out;
}

std::string Tokenizer::decode(const std::int32_t* ids, std::size_t n) const {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || static_cast<std::size_t>(ids[i]) >= p_->has_token.size() || !p_->has_token[ids[i]])
      throw std::invalid_argument("tokenizer '" + p_->label + "': decode: id " + std::to_string(ids[i]) +
                                  " at position " + std::to_string(i) + " has no token (vocab_size " +
                                  std::to_string(vocab_size()) + ")");
    s += p_->id_bytes[ids[i]];
  }
  return s;
}

std::size_t Tokenizer::vocab_size() const { return p_->id_bytes.size(); }
const std::string& Tokenizer::token_bytes(std::int32_t id) const {
  static const std::string none;
  return id >= 0 && static_cast<std::size_t>(id) < p_->id_bytes.size() ? p_->id_bytes[id] : none;
}
std::int32_t Tokenizer::added_token_id(std::string_view content) const {
  for (const auto& a : p_->added)
    if (a.content == content) return a.id;
  return -1;
}
std::uint64_t Tokenizer::hash() const { return p_->hash; }

}  // namespace tg::text
