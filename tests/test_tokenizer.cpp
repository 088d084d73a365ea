// tests/test_tokenizer.cpp — nn/tokenizer.hpp and nn/tokens.hpp: Qwen3's real tokenizer.json
// against ids made by an independent implementation (tests/reference/tokenizer_check.mjs
// wrote tests/golden/tokenizer_qwen3_hard_cases.ids), the BPE trainer and its round trip on
// any bytes, merges in both JSON forms, NFC, refusals naming the field, and token files.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "nn/data.hpp"
#include "nn/tokenizer.hpp"
#include "nn/tokens.hpp"
#include "test_util.hpp"

using namespace tg;
using namespace tg::text;
using json = nlohmann::json;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    out.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}
const std::string kSource = TAPEGRAD_SOURCE_DIR;

// A small corpus: the first 300 kB of KJV when data/kjv.txt exists, else a built-in text.
std::string training_text() {
  std::string kjv = slurp(kSource + "/data/kjv.txt");
  if (kjv.size() > 300000) return kjv.substr(0, 300000);
  std::string t;
  for (int i = 0; i < 200; ++i)
    t += "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
         "and darkness was upon the face of the deep. 1:" + std::to_string(i) + " Let there be light.\n";
  return t;
}

// A hand-made byte-level BPE: 256 byte tokens, then "h e" -> "he", "he l" -> "hel", ...
json tiny_tokenizer(bool string_merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_to_unicode(static_cast<unsigned char>(b))] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"},
                                                                   {"Ġ", "w"}};
  json ms = json::array();
  int id = 256;
  for (auto& [a, b] : merges) {
    vocab[a + b] = id++;
    ms.push_back(string_merges ? json(a + " " + b) : json::array({a, b}));
  }
  return {{"version", "1.0"},
          {"added_tokens", json::array({{{"id", id}, {"content", "<|end|>"}, {"special", true}}})},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", ms}}}};
}

}  // namespace

TEST_CASE("tokenizer: Qwen3's tokenizer.json gives the reference's ids on the hard cases, and decodes them back") {
  const std::string file = kSource + "/tests/golden/qwen3/tokenizer.json";
  REQUIRE(std::filesystem::exists(file));
  const Tokenizer tok = Tokenizer::from_file(file);
  CHECK(tok.vocab_size() == 151669);
  CHECK(tok.added_token_id("<|endoftext|>") == 151643);
  const auto text = lines_of(slurp(kSource + "/tests/golden/tokenizer_hard_cases.txt"));
  const auto ids = lines_of(slurp(kSource + "/tests/golden/tokenizer_qwen3_hard_cases.ids"));
  REQUIRE(text.size() >= 40);
  REQUIRE(ids.size() == text.size());
  std::size_t tokens = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    INFO("line " << i + 1 << ": " << text[i]);
    std::vector<std::int32_t> want;
    std::istringstream s(ids[i]);
    for (std::int32_t v; s >> v;) want.push_back(v);
    CHECK(tok.encode(text[i]) == want);
    // Lines 20 and 21 hold decomposed characters: they decode to their NFC form (shorter).
    if (i + 1 == 20 || i + 1 == 21) CHECK(tok.decode(want).size() < text[i].size());
    else CHECK(tok.decode(want) == text[i]);
    tokens += want.size();
  }
  CHECK(tokens > 500);
  // NFC (Qwen's normalizer): a decomposed é is the composed one.
  CHECK(tok.encode("cafe\xCC\x81") == tok.encode("caf\xC3\xA9"));
  // Bytes that are not UTF-8 still round-trip (the reference cannot see them: JS strings).
  for (const std::string s : {std::string("\xFF\xFE abc \xC3"), std::string("ok\xED\xA0\x80 x"), std::string("\xC0\xAF<|endoftext|>\x80")})
    CHECK(tok.decode(tok.encode(s)) == s);
}

TEST_CASE("tokenizer: merges as \"a b\" strings and as [\"a\",\"b\"] lists give the same tokens; ranks decide") {
  const Tokenizer a = Tokenizer::from_string(tiny_tokenizer(true).dump());
  const Tokenizer b = Tokenizer::from_string(tiny_tokenizer(false).dump());
  const std::string s = "hello hello world<|end|>hell";
  CHECK(a.encode(s) == b.encode(s));
  // "hello" -> he, ll -> hell -> hello (id 259); " world" -> "Ġw" (260) o r l d
  const std::vector<std::int32_t> want = {259, 260, 'o', 'r', 'l', 'd', 261, 258};
  CHECK(a.encode("hello world<|end|>hell") == want);
  CHECK(a.decode(want) == "hello world<|end|>hell");
  CHECK(a.vocab_size() == 262);
  CHECK_THROWS_WITH_AS(a.decode({262}), doctest::Contains("id 262 at position 0"), std::invalid_argument);
}

TEST_CASE("tokenizer: unsupported or broken fields are refused by name") {
  auto err = [](json j) { return THROW_MSG(Tokenizer::from_string(j.dump(), "t.json")); };
  json j = tiny_tokenizer(true);
  auto with = [&](auto f) {
    json k = j;
    f(k);
    return err(k);
  };
  CHECK(doctest::String(with([](json& k) { k["model"]["type"] = "WordPiece"; }).c_str()) == doctest::Contains("model.type"));
  CHECK(with([](json& k) { k["normalizer"] = {{"type", "NFKC"}}; }).find("normalizer.type: 'NFKC'") != std::string::npos);
  CHECK(with([](json& k) { k["pre_tokenizer"] = {{"type", "Metaspace"}}; }).find("pre_tokenizer.type") != std::string::npos);
  CHECK(with([](json& k) { k["model"]["merges"].push_back("x y z"); }).find("model.merges[5]") != std::string::npos);
  CHECK(with([](json& k) { k["model"]["merges"].push_back("h q"); }).find("merged token 'hq'") != std::string::npos);
  CHECK(with([](json& k) { k["model"]["vocab"].erase("A"); }).find("no token for byte 0x41") != std::string::npos);
  CHECK(with([](json& k) { k["model"]["byte_fallback"] = true; }).find("model.byte_fallback") != std::string::npos);
  CHECK(with([](json& k) { k["added_tokens"][0]["lstrip"] = true; }).find("added_tokens[0].lstrip") != std::string::npos);
  CHECK(with([](json& k) { k["post_processor"] = {{"type", "TemplateProcessing"}}; }).find("post_processor.type") !=
        std::string::npos);
  CHECK(with([](json& k) {
          k["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
        }).find("does not compile") != std::string::npos);
  CHECK(THROW_MSG(Tokenizer::from_string("{not json", "t.json")).find("t.json': not valid JSON") != std::string::npos);
  CHECK(THROW_MSG(Tokenizer::from_file("/nonexistent/tokenizer.json")).find("cannot open") != std::string::npos);
}

TEST_CASE("tokenizer train: the learnt tokenizer reads back, compresses its text, and round-trips any bytes") {
  const std::string text = training_text();
  TrainOptions o;
  o.vocab_size = 700;
  const json j = train_bpe(text, o);
  CHECK(j["model"]["type"] == "BPE");
  CHECK(j["pre_tokenizer"]["type"] == "ByteLevel");
  CHECK(j["decoder"]["type"] == "ByteLevel");
  CHECK(j["model"]["merges"][0].is_array());
  const Tokenizer tok = Tokenizer::from_string(j.dump());
  CHECK(tok.vocab_size() == 700);
  CHECK(tok.added_token_id("<|endoftext|>") == 699);
  const auto ids = tok.encode(text);
  CHECK(tok.decode(ids) == text);
  CHECK(double(text.size()) / ids.size() > 2.5);  // bytes per token
  // Every single byte, every pair of a few bytes, random byte strings (invalid UTF-8 mostly).
  for (int b = 0; b < 256; ++b) {
    const std::string s(1, static_cast<char>(b));
    CHECK(tok.decode(tok.encode(s)) == s);
  }
  Generator gen(5);
  for (int trial = 0; trial < 300; ++trial) {
    std::string s(gen.next_u64() % 120, '\0');
    for (auto& c : s) {
      const auto r = gen.next_u64();
      // a mix: random bytes, ASCII text, UTF-8 lead/continuation bytes, a special token
      c = static_cast<char>(r % 4 == 0 ? r >> 8 : r % 4 == 1 ? "ab c\n\t'9"[(r >> 8) % 8] : r % 4 == 2 ? 0x80 | (r >> 8) % 64 : 0xC0 | (r >> 8) % 64);
    }
    if (trial % 7 == 0) s.insert(s.size() / 2, "<|endoftext|>");
    INFO("trial " << trial);
    CHECK(tok.decode(tok.encode(s)) == s);
  }
  CHECK_THROWS_WITH_AS(train_bpe(text, TrainOptions{200}), doctest::Contains("too small"), std::invalid_argument);
}

TEST_CASE("token files: written atomically, read back, checked - a stale or broken file is detected") {
  const auto dir = tg::testing::scratch_dir("tokens");
  const std::string path = (dir / "a.tokens").string();
  std::vector<std::int32_t> ids;
  for (int i = 0; i < 1000; ++i) ids.push_back((i * 37) % 600);
  data::TokenFileHeader h;
  h.vocab_size = 600, h.tokenizer_hash = 0x1234, h.source_fingerprint = 0xABCD, h.source_bytes = 4321;
  data::write_token_file(path, h, ids);
  data::TokenFileHeader r;
  REQUIRE(data::read_token_header(path, r));
  CHECK(r.count == 1000);
  CHECK(r.tokenizer_hash == 0x1234);
  CHECK(r.source_bytes == 4321);
  {
    const data::TokenFile f = data::TokenFile::open(path);
    const data::Span s = f.all();
    REQUIRE(s.size == 1000);
    CHECK(s.ids != nullptr);
    CHECK(s.at(10) == 370);
    const data::Split parts = data::split(s, path, 0.1, 17);
    CHECK(parts.train.size == 900);
    CHECK(parts.val.at(0) == ids[900]);
    const data::BatchSampler bs(parts.val, 3, 16);
    Generator g(1);
    const Index x = bs.next(g);
    for (std::size_t b = 0; b < 3; ++b) {  // each row is 17 consecutive ids of the validation part
      std::size_t start = 0;
      while (parts.val.at(start) != x(b, 0) || parts.val.at(start + 1) != x(b, 1)) ++start;
      for (std::size_t t = 0; t < 17; ++t) CHECK(x(b, t) == parts.val.at(start + t));
    }
    CHECK(THROW_MSG(data::split(s, path, 0.1, 200)).find("validation split has 100 tokens") != std::string::npos);
  }
  // A failed write keeps the old file.
  CHECK_THROWS_AS(data::write_token_file(path, h, {1, 2, 600}), std::invalid_argument);
  CHECK(data::TokenFile::open(path).header().count == 1000);
  CHECK_THROWS_AS(data::write_token_file((dir / "no" / "such" / "dir.tokens").string(), h, ids), std::runtime_error);
  // Truncated, not a token file, an id outside the vocabulary.
  std::string bytes = slurp(path);
  auto write = [&](const std::string& b) {
    std::ofstream(dir / "bad.tokens", std::ios::binary) << b;
    return THROW_MSG(data::TokenFile::open((dir / "bad.tokens").string()));
  };
  CHECK(write(bytes.substr(0, bytes.size() - 2)).find("truncated") != std::string::npos);
  CHECK(write("hello world, this is not a token file at all; it is long enough to hold a header...").find("magic") !=
        std::string::npos);
  std::string big = bytes;
  big[64] = '\x7F', big[65] = big[66] = big[67] = '\0';  // id 127 ok; make it 0x0000FF7F = 65407
  big[65] = '\xFF';
  CHECK(write(big).find("id 65407 at position 0 is outside the vocabulary [0, 600)") != std::string::npos);
  CHECK_FALSE(data::read_token_header((dir / "absent").string(), r));
}
