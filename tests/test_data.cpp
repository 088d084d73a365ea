// tests/test_data.cpp — nn/data.hpp: the byte tokenizer, printable(), the memory-mapped
// corpus and its errors, the train/validation split, seeded random batches, and saving and
// restoring the batch generator's state.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "nn/data.hpp"

using namespace tg;
using namespace tg::data;
namespace fs = std::filesystem;

namespace {

// A fresh temporary folder, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "tg_test_data_XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string write(const std::string& name, const std::string& bytes) const {
    const fs::path p = path / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  }
};

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("byte tokenizer: every byte round-trips, ids outside 0..255 are refused") {
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  const Index ids = ByteTokenizer::encode(all);
  REQUIRE(ids.size() == 256);
  for (int b = 0; b < 256; ++b) CHECK(ids(b) == b);
  CHECK(ByteTokenizer::decode(ids) == all);
  CHECK(ByteTokenizer::encode("").size() == 0);
  CHECK(ByteTokenizer::decode(ByteTokenizer::encode("In the beginning")) == "In the beginning");
  Index bad = ByteTokenizer::encode("ab");
  bad(1) = 256;
  CHECK(contains(error_of([&] { ByteTokenizer::decode(bad); }), "id 256 at position 1"));
  bad(1) = -1;
  CHECK_THROWS_AS(ByteTokenizer::decode(bad), std::invalid_argument);
  CHECK(ByteTokenizer::vocab_size == 256);
}

TEST_CASE("printable: valid UTF-8 passes, invalid bytes and control characters become U+FFFD") {
  const std::string R = "\xEF\xBF\xBD";
  CHECK(printable("plain text\n\tline") == "plain text\n\tline");
  const std::string utf8 = "h\xC3\xA9llo \xE2\x9C\x93 \xF0\x9D\x84\x9E";  // é, ✓, 𝄞
  CHECK(printable(utf8) == utf8);
  CHECK(printable("a\xFF" "b") == "a" + R + "b");            // not a lead byte
  CHECK(printable("a\xE2\x9C") == "a" + R + R);               // cut short at the end
  CHECK(printable("\xE2\x9C" "b") == R + R + "b");            // cut short by an ASCII byte
  CHECK(printable("\xC0\xAF") == R + R);                      // overlong '/'
  CHECK(printable("\xED\xA0\x80") == R + R + R);              // a UTF-16 surrogate
  CHECK(printable("\xF4\x90\x80\x80") == R + R + R + R);      // above U+10FFFF
  CHECK(printable(std::string("a\0b\x1B[2J\x7F", 8)) == "a" + R + "b" + R + "[2J" + R);
}

TEST_CASE("corpus: a file is mapped once, missing, directory and empty files are clear errors") {
  TempDir d;
  const std::string text = "And God said, Let there be light: and there was light.\n";
  const std::string path = d.write("t.txt", text);
  Corpus c = Corpus::open(path);
  CHECK(c.size() == text.size());
  CHECK(std::string(reinterpret_cast<const char*>(c.data()), c.size()) == text);
  CHECK(c.path() == path);

  // Moving keeps the bytes (the mapping moves; a short in-memory string is re-pointed).
  Corpus moved = std::move(c);
  CHECK(std::string(reinterpret_cast<const char*>(moved.data()), moved.size()) == text);
  Corpus small = Corpus::from_string("abc");
  Corpus small2 = std::move(small);
  CHECK(std::string(reinterpret_cast<const char*>(small2.data()), small2.size()) == "abc");

  const std::string missing = error_of([&] { Corpus::open((d.path / "nope.txt").string()); });
  CHECK(contains(missing, "nope.txt"));
  CHECK(contains(missing, "no such file"));
  CHECK(contains(error_of([&] { Corpus::open(d.path.string()); }), "is a directory"));
  const std::string empty = d.write("empty.txt", "");
  CHECK(contains(error_of([&] { Corpus::open(empty); }), "is empty"));
  CHECK(contains(error_of([&] { Corpus::from_string(""); }), "is empty"));
}

TEST_CASE("corpus fingerprint: 64-bit FNV-1a") {
  // The published FNV-1a 64 test vectors: "" -> cbf29ce484222325 (not reachable: a corpus is
  // never empty), "a" -> af63dc4c8601ec8c, "foobar" -> 85944171f73967e8.
  CHECK(Corpus::from_string("a").fingerprint() == 0xaf63dc4c8601ec8cull);
  CHECK(Corpus::from_string("foobar").fingerprint() == 0x85944171f73967e8ull);
  TempDir d;
  CHECK(Corpus::open(d.write("f", "foobar")).fingerprint() == 0x85944171f73967e8ull);
}

TEST_CASE("split: the validation part is the tail, too small parts name the sizes") {
  std::string text(1000, 'x');
  for (std::size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>('a' + i % 26);
  const Corpus c = Corpus::from_string(text, "letters");
  const Split s = split(c, 0.05, 1);
  CHECK(s.train.size == 950);
  CHECK(s.val.size == 50);
  CHECK(s.train.data == c.data());
  CHECK(s.val.data == c.data() + 950);

  const Split s2 = split(c, 0.1, 100);
  CHECK(s2.val.size == 100);
  const std::string msg = error_of([&] { split(c, 0.05, 65); });
  CHECK(contains(msg, "validation split has 50 bytes"));
  CHECK(contains(msg, "at least 65"));
  CHECK(contains(msg, "--seq-len"));
  CHECK(contains(error_of([&] { split(c, 0.5, 600); }), "training split has 500 bytes"));
  CHECK_THROWS_AS(split(c, 0.0), std::invalid_argument);
  CHECK_THROWS_AS(split(c, 1.0), std::invalid_argument);
  CHECK_THROWS_AS(split(c, std::nan("")), std::invalid_argument);
  // A one-byte corpus cannot be split into two non-empty parts.
  CHECK_THROWS_AS(split(Corpus::from_string("a"), 0.5), std::invalid_argument);
}

TEST_CASE("batches: (B, T+1) windows of the span, reproducible from the seed") {
  std::string text;
  for (int i = 0; i < 500; ++i) text += static_cast<char>(i % 251);  // each 251-byte cycle is unique
  const Corpus c = Corpus::from_string(text);
  const Span span = c.all();
  const BatchSampler bs(span, 4, 8);
  CHECK(bs.num_windows() == 492);
  Generator g1(7), g2(7), g3(8);
  const Index a = bs.next(g1), b = bs.next(g2), other = bs.next(g3);
  REQUIRE(a.shape() == std::vector<std::size_t>{4, 9});
  CHECK(a == b);
  CHECK(a != other);
  for (std::size_t r = 0; r < 4; ++r) {
    // Each row is 9 consecutive bytes of the text.
    const std::string row = ByteTokenizer::decode(a.data() + r * 9, 9);
    CHECK(text.find(row) != std::string::npos);
  }
  // The next batches differ from the first (the generator moved on).
  CHECK(bs.next(g1) != a);

  CHECK_THROWS_AS(BatchSampler(span, 0, 8), std::invalid_argument);
  CHECK_THROWS_AS(BatchSampler(span, 2, 0), std::invalid_argument);
  const std::string msg = error_of([&] { BatchSampler({span.data, 8}, 1, 8, "the validation split"); });
  CHECK(contains(msg, "the validation split has 8 bytes"));
  CHECK_NOTHROW(BatchSampler({span.data, 9}, 1, 8));  // exactly one window
}

TEST_CASE("batches: every window start is drawn, about equally often") {
  // 10 bytes, T = 4: starts 0..5. Row b starts at byte value x(b,0) since text[i] = i.
  std::string text;
  for (int i = 0; i < 10; ++i) text += static_cast<char>(i);
  const Corpus c = Corpus::from_string(text);
  const BatchSampler bs(c.all(), 6, 4);
  Generator gen(1);
  std::map<std::int64_t, int> counts;
  const int draws = 6000;
  for (int i = 0; i < draws / 6; ++i) {
    const Index x = bs.next(gen);
    for (std::size_t r = 0; r < 6; ++r) {
      ++counts[x(r, 0)];
      for (std::size_t t = 0; t < 5; ++t) CHECK(x(r, t) == x(r, 0) + static_cast<std::int64_t>(t));
    }
  }
  REQUIRE(counts.size() == 6);
  for (auto& [start, n] : counts) {
    // 1000 expected per start; 5 standard deviations (sqrt(1000 * 5/6) ~ 29) either way.
    CHECK(n > 1000 - 145);
    CHECK(n < 1000 + 145);
  }
}

TEST_CASE("uniform_index: in range, all values reached, n = 1 and n = 0") {
  Generator g(3);
  for (int i = 0; i < 100; ++i) CHECK(uniform_index(g, 1) == 0);
  std::set<std::uint64_t> seen;
  for (int i = 0; i < 1000; ++i) {
    const auto v = uniform_index(g, 7);
    CHECK(v < 7);
    seen.insert(v);
  }
  CHECK(seen.size() == 7);
  // A range that is not a power of two and close to 2^64 still terminates and stays in range.
  const std::uint64_t big = (std::uint64_t(1) << 63) + 12345;
  for (int i = 0; i < 100; ++i) CHECK(uniform_index(g, big) < big);
  CHECK_THROWS_AS(uniform_index(g, 0), std::invalid_argument);
}

TEST_CASE("generator state: restoring it replays the same numbers, garbage is refused") {
  Generator g(42);
  for (int i = 0; i < 5; ++i) g.next_u64();
  const std::string saved = generator_state(g);
  std::vector<std::uint64_t> first;
  for (int i = 0; i < 10; ++i) first.push_back(g.next_u64());

  Generator h(999);
  set_generator_state(h, saved);
  for (int i = 0; i < 10; ++i) CHECK(h.next_u64() == first[i]);

  // The batches drawn after a restore are the batches drawn after the save.
  std::string text(300, 'a');
  for (std::size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>(i % 97);
  const Corpus c = Corpus::from_string(text);
  const BatchSampler bs(c.all(), 3, 10);
  Generator a(5);
  bs.next(a);
  const std::string mid = generator_state(a);
  const Index next_a = bs.next(a);
  Generator b(6);
  set_generator_state(b, mid);
  CHECK(bs.next(b) == next_a);

  Generator k(1);
  CHECK_THROWS_AS(set_generator_state(k, "not a state"), std::invalid_argument);
  CHECK_THROWS_AS(set_generator_state(k, ""), std::invalid_argument);
  CHECK_THROWS_AS(set_generator_state(k, saved.substr(0, saved.size() / 2)), std::invalid_argument);
  CHECK_THROWS_AS(set_generator_state(k, saved + " 17"), std::invalid_argument);
  // A failed restore leaves the generator as it was.
  Generator k2(1);
  CHECK(k.next_u64() == k2.next_u64());
}

TEST_CASE("BatchSampler --bos: the BOS id at position 0 of every window, then consecutive text") {
  const Corpus c = Corpus::from_string(std::string(500, 'a') + "0123456789abcdefghijklmnopqrstuvwxyz");
  const WindowOptions opts{256, ""};
  const BatchSampler bs(c.all(), 5, 8, "the data", opts);
  CHECK(bs.text_len() == 8);
  CHECK(bs.num_windows() == c.size() - 8 + 1);
  Generator gen(7);
  for (int k = 0; k < 20; ++k) {
    const Index x = bs.next(gen);
    REQUIRE(x.shape() == std::vector<std::size_t>{5, 9});
    for (std::size_t b = 0; b < 5; ++b) {
      CHECK(x(b, 0) == 256);
      // The rest is a slice of the text: find it.
      std::string row;
      for (std::size_t t = 1; t < 9; ++t) {
        REQUIRE(x(b, t) >= 0);
        REQUIRE(x(b, t) < 256);
        row += char(x(b, t));
      }
      CHECK(std::string_view(reinterpret_cast<const char*>(c.data()), c.size()).find(row) != std::string_view::npos);
    }
  }
  // Without the option the first column is text.
  const BatchSampler plain(c.all(), 64, 8);
  Generator g2(7);
  const Index y = plain.next(g2);
  for (std::size_t b = 0; b < 64; ++b) CHECK(y(b, 0) < 256);
}

TEST_CASE("document windows start at document starts") {
  const std::string text = "Genesis 1\n\n  1 In the beginning\n  2 And the earth\n\nGenesis 2\n\n  1 Thus the heavens\n"
                           "  2 And on the seventh day\n\n1 Kings 3\n\n  1 And Solomon made affinity with Pharaoh\n";
  const Corpus c = Corpus::from_string(text);
  const auto chapters = document_starts(c.all(), "kjv-chapter");
  REQUIRE(chapters.size() == 3);
  CHECK(text.substr(chapters[0], 9) == "Genesis 1");
  CHECK(text.substr(chapters[1], 9) == "Genesis 2");
  CHECK(text.substr(chapters[2], 9) == "1 Kings 3");
  const auto blank = document_starts(c.all(), "blankline");
  // After each "\n\n": the verses after each heading and the headings after the first.
  CHECK(blank.size() == 5);
  for (auto s : blank) CHECK(text.substr(s - 2, 2) == "\n\n");
  const auto re = document_starts(c.all(), "line:^  1 ");
  REQUIRE(re.size() == 3);
  for (auto s : re) CHECK(text.substr(s, 4) == "  1 ");
  CHECK_THROWS_WITH_AS(document_starts(c.all(), "verses"), doctest::Contains("document separator 'verses'"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(document_starts(c.all(), "line:(["), doctest::Contains("does not compile"), std::invalid_argument);

  // Every window of the sampler starts at one of the starts that leave room for it.
  const BatchSampler bs(c.all(), 16, 12, "the data", WindowOptions{256, "kjv-chapter"});
  CHECK(bs.num_windows() == 3);
  Generator gen(3);
  std::set<std::string> seen;
  for (int k = 0; k < 10; ++k) {
    const Index x = bs.next(gen);
    for (std::size_t b = 0; b < 16; ++b) {
      CHECK(x(b, 0) == 256);
      std::string head;
      for (std::size_t t = 1; t < 10; ++t) head += char(x(b, t));
      CHECK((head == "Genesis 1" || head == "Genesis 2" || head == "1 Kings 3"));
      seen.insert(head);
    }
  }
  CHECK(seen.size() == 3);
  // No start with room for a window: a clear error.
  // (the only start of "line:Solomon" is in the last line)
  CHECK_THROWS_WITH_AS(BatchSampler(c.all(), 1, 100, "the validation split", WindowOptions{-1, "line:Solomon"}),
                       doctest::Contains("the validation split: no document start"), std::invalid_argument);
}
