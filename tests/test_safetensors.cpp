// tests/test_safetensors.cpp — the safetensors reader and writer: round trips, byte layout,
// F16/BF16 decoding, every malformed-file error, atomic writes, a fuzz test of the reader,
// and cross-checks with the independent Python reader/writer (tests/reference/safetensors_io.py).
#include <doctest/doctest.h>

#include <unistd.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "nn/safetensors.hpp"
#include "test_util.hpp"

using namespace tg;
using namespace tg::st;
namespace fs = std::filesystem;
using namespace std::string_literals;

// The message of the std::runtime_error that `expr` throws ("" if it throws nothing;
// "WRONG EXCEPTION TYPE" for anything that is not a runtime_error).
#define RT_MSG(expr)                       \
  [&]() -> std::string {                   \
    try {                                  \
      (void)(expr);                        \
    } catch (const std::runtime_error& e) { \
      return e.what();                     \
    } catch (...) {                        \
      return "WRONG EXCEPTION TYPE";       \
    }                                      \
    return "";                             \
  }()

namespace {

bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

fs::path scratch() { return tg::testing::scratch_dir("safetensors"); }
using tg::testing::read_all;

std::string le64(std::uint64_t n) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return s;
}

// A file from a header text and a data buffer, written by hand (not by the writer under test).
std::string make_file(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }

template <class U>
std::string raw(std::initializer_list<U> v) {
  std::string s;
  for (U x : v)
    for (std::size_t i = 0; i < sizeof(U); ++i) s.push_back(static_cast<char>((static_cast<std::uint64_t>(x) >> (8 * i)) & 0xff));
  return s;
}

xt::xarray<double> ramp(const std::vector<std::size_t>& shape, double scale) {
  xt::xarray<double> a = xt::xarray<double>::from_shape(shape);
  for (std::size_t i = 0; i < a.size(); ++i) a.data()[i] = scale * (static_cast<double>(i) - 3.3) / 7.0;
  return a;
}

bool python_with_torch() {
  static int ok = std::system("/usr/bin/python3 -c 'import torch, numpy' >/dev/null 2>&1");
  return ok == 0;
}

const std::string kPyIo = std::string(TAPEGRAD_SOURCE_DIR) + "/tests/reference/safetensors_io.py";

}  // namespace

TEST_CASE("round trip: float, double, int64, scalars, empty tensors, metadata") {
  SafeTensorsWriter w;
  xt::xarray<double> a = ramp({3, 4}, 1.0);
  a(1, 2) = std::numeric_limits<double>::denorm_min();
  a(2, 3) = -std::numeric_limits<double>::infinity();
  xt::xarray<float> b = xt::cast<float>(ramp({2, 3, 2}, 1e30));
  b(0, 0, 1) = std::numeric_limits<float>::quiet_NaN();
  xt::xarray<double> s = xt::xarray<double>::from_shape({});
  s() = 2.5;
  xt::xarray<double> e = xt::xarray<double>::from_shape({0, 3});
  xt::xarray<std::int64_t> ids = {{1, -2, 3}, {std::numeric_limits<std::int64_t>::min(), 0, std::numeric_limits<std::int64_t>::max()}};
  w.add("model.a.weight", a);
  w.add("b", b);
  w.add("scalar", s);
  w.add("empty", e);
  w.add_int("ids", ids);
  w.set_metadata("format", "pt");
  w.set_metadata("note", "ünïcödé ✓");
  const fs::path p = scratch() / "rt.safetensors";
  w.write(p.string());

  auto f = SafeTensorsFile::load(p.string());
  CHECK(f.names() == std::vector<std::string>{"b", "empty", "ids", "model.a.weight", "scalar"});
  CHECK(f.contains("b"));
  CHECK_FALSE(f.contains("c"));
  CHECK(f.dtype("model.a.weight") == "F64");
  CHECK(f.dtype("b") == "F32");
  CHECK(f.dtype("ids") == "I64");
  CHECK(f.shape("b") == Shape{2, 3, 2});
  CHECK(f.shape("scalar") == Shape{});
  CHECK(f.shape("empty") == Shape{0, 3});
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.metadata().at("note") == "ünïcödé ✓");

  auto a2 = f.get<double>("model.a.weight");
  REQUIRE(a2.shape() == a.shape());
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(std::bit_cast<std::uint64_t>(a2.data()[i]) == std::bit_cast<std::uint64_t>(a.data()[i]));
  auto b2 = f.get<float>("b");
  for (std::size_t i = 0; i < b.size(); ++i) CHECK(std::bit_cast<std::uint32_t>(b2.data()[i]) == std::bit_cast<std::uint32_t>(b.data()[i]));
  auto b3 = f.get<double>("b");  // widening is exact
  for (std::size_t i = 0; i < b.size(); ++i)
    if (!std::isnan(b.data()[i])) CHECK(b3.data()[i] == static_cast<double>(b.data()[i]));
  CHECK(f.get<double>("scalar").dimension() == 0);
  CHECK(f.get<double>("scalar")() == 2.5);
  CHECK(f.get<float>("empty").shape() == std::vector<std::size_t>{0, 3});
  CHECK(f.get_int("ids") == ids);
  CHECK(has(RT_MSG(f.get<double>("ids")), "stored as I64, an integer type"));
  // A double stored as F64 and read as float rounds like a cast.
  CHECK(f.get<float>("model.a.weight")(0, 1) == static_cast<float>(a(0, 1)));
  // get_int refuses float tensors.
  CHECK(has(RT_MSG(f.get_int("b")), "not an integer type"));
}

TEST_CASE("writer: layout, alignment, padding and determinism") {
  xt::xarray<float> x = xt::cast<float>(ramp({3}, 1.0));   // 12 bytes
  xt::xarray<double> y = ramp({2, 2}, 2.0);                // 32 bytes
  xt::xarray<std::int64_t> z = {5, 6};                     // 16 bytes
  SafeTensorsWriter w1, w2;
  w1.add("a_float", x);
  w1.add("b_double", y);
  w1.add_int("c_int", z);
  w1.set_metadata("k", "v");
  w2.set_metadata("k", "v");  // other insertion order, same content
  w2.add_int("c_int", z);
  w2.add("b_double", y);
  w2.add("a_float", x);
  const std::string bytes = w1.to_bytes();
  CHECK(bytes == w2.to_bytes());

  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= std::uint64_t(static_cast<unsigned char>(bytes[i])) << (8 * i);
  CHECK(n % 8 == 0);
  const std::string header = bytes.substr(8, n);
  CHECK(header.front() == '{');
  const auto last = header.find_last_not_of(' ');
  CHECK(header.size() - last - 1 < 8);  // padding is spaces only, fewer than 8
  auto j = nlohmann::json::parse(header);
  CHECK(j["__metadata__"]["k"] == "v");
  // 8-byte tensors first (by name), then the 4-byte one: everything stays aligned.
  CHECK(j["b_double"]["data_offsets"] == nlohmann::json({0, 32}));
  CHECK(j["c_int"]["data_offsets"] == nlohmann::json({32, 48}));
  CHECK(j["a_float"]["data_offsets"] == nlohmann::json({48, 60}));
  CHECK(j["a_float"]["dtype"] == "F32");
  CHECK(j["a_float"]["shape"] == nlohmann::json({3}));
  CHECK(bytes.size() == 8 + n + 60);
  // The data bytes are plain little-endian values.
  double y01;
  std::memcpy(&y01, bytes.data() + 8 + n + 8, 8);
  CHECK(y01 == y(0, 1));
  // Names: once, not empty, not __metadata__.
  CHECK_THROWS_AS(w1.add("a_float", x), std::invalid_argument);
  CHECK_THROWS_AS(w1.add("", x), std::invalid_argument);
  CHECK_THROWS_AS(w1.add("__metadata__", x), std::invalid_argument);
  // A non-contiguous view is stored in logical row-major order.
  xt::xarray<double> t = xt::transpose(ramp({2, 3}, 1.0));
  SafeTensorsWriter w3;
  w3.add("t", t);
  auto f = SafeTensorsFile::from_bytes(w3.to_bytes());
  CHECK(f.get<double>("t") == t);
  // An empty file is valid: header "{}" padded.
  auto f0 = SafeTensorsFile::from_bytes(SafeTensorsWriter().to_bytes());
  CHECK(f0.names().empty());
}

TEST_CASE("F16 decoding: every bit pattern against the compiler's _Float16, and known values") {
  CHECK(f16_to_f32(0x3c00) == 1.0f);
  CHECK(f16_to_f32(0xc000) == -2.0f);
  CHECK(f16_to_f32(0x7bff) == 65504.0f);
  CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(f16_to_f32(0x03ff) == std::ldexp(1023.0f, -24));  // largest subnormal
  CHECK(f16_to_f32(0x0400) == std::ldexp(1.0f, -14));  // smallest normal
  CHECK(f16_to_f32(0x8000) == 0.0f);
  CHECK(std::signbit(f16_to_f32(0x8000)));
  CHECK(f16_to_f32(0x7c00) == std::numeric_limits<float>::infinity());
  CHECK(f16_to_f32(0xfc00) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(f16_to_f32(0x7e00)));
  CHECK(std::isnan(f16_to_f32(0x7c01)));  // signalling-NaN pattern stays NaN, not inf
  CHECK(std::isnan(f16_to_f32(0xfe00)));
#if defined(__aarch64__) || defined(__FLT16_MAX__)
  // The compiler's own half type as the reference: __fp16 on ARM (GCC 12 has _Float16 in
  // C++ only on x86), _Float16 elsewhere.
#if defined(__aarch64__)
  using Half = __fp16;
#else
  using Half = _Float16;
#endif
  int bad = 0;
  for (std::uint32_t u = 0; u < 65536; ++u) {
    const float ref = static_cast<float>(std::bit_cast<Half>(static_cast<std::uint16_t>(u)));
    const float got = f16_to_f32(static_cast<std::uint16_t>(u));
    const bool same = std::isnan(ref) ? std::isnan(got) : std::bit_cast<std::uint32_t>(ref) == std::bit_cast<std::uint32_t>(got);
    if (!same) ++bad;
  }
  CHECK(bad == 0);
#else
  MESSAGE("_Float16 unavailable: exhaustive F16 check skipped");
#endif
}

TEST_CASE("BF16 decoding") {
  CHECK(bf16_to_f32(0x3f80) == 1.0f);
  CHECK(bf16_to_f32(0xc049) == -3.140625f);
  CHECK(bf16_to_f32(0x0001) == std::ldexp(1.0f, -133));  // subnormal
  CHECK(bf16_to_f32(0x7f80) == std::numeric_limits<float>::infinity());
  CHECK(bf16_to_f32(0xff80) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(bf16_to_f32(0x7fc0)));
  CHECK(bf16_to_f32(0x7f7f) == std::ldexp(255.0f, 127 - 7));  // largest finite
}

TEST_CASE("reading dtypes from a hand-made file") {
  // F16 [1, -2, 65504], BF16 [1.0, -3.140625], I32 [-7, 9], BOOL [1, 0], U8 [255], I8 [-128],
  // F8_E4M3 [0] (known dtype, not convertible).
  const std::string header =
      R"({"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},)"
      R"("bf":{"dtype":"BF16","shape":[2],"data_offsets":[6,10]},)"
      R"("i":{"dtype":"I32","shape":[2,1],"data_offsets":[10,18]},)"
      R"("flag":{"dtype":"BOOL","shape":[2],"data_offsets":[18,20]},)"
      R"("u":{"dtype":"U8","shape":[1],"data_offsets":[20,21]},)"
      R"("s":{"dtype":"I8","shape":[1],"data_offsets":[21,22]},)"
      R"("f8":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[22,23]}} )";
  const std::string data = raw<std::uint16_t>({0x3c00, 0xc000, 0x7bff}) + raw<std::uint16_t>({0x3f80, 0xc049}) +
                           raw<std::uint32_t>({static_cast<std::uint32_t>(-7), 9}) + raw<std::uint8_t>({1, 0}) +
                           raw<std::uint8_t>({255}) + raw<std::uint8_t>({0x80}) + raw<std::uint8_t>({0});
  auto f = SafeTensorsFile::from_bytes(make_file(header, data), "hand.safetensors");
  CHECK(f.get<float>("h") == xt::xarray<float>{1.f, -2.f, 65504.f});
  CHECK(f.get<double>("bf") == xt::xarray<double>{1.0, -3.140625});
  CHECK(f.shape("i") == Shape{2, 1});
  CHECK(f.get_int("i").shape() == std::vector<std::size_t>{2, 1});
  CHECK(f.get_int("i")(0, 0) == -7);
  CHECK(f.get_int("i")(1, 0) == 9);
  // an integer dtype for a float tensor is refused, naming the tensor (issue 14 item 8)
  const std::string im = RT_MSG(f.get<double>("i"));
  CHECK(has(im, "hand.safetensors"));
  CHECK(has(im, "tensor \"i\": stored as I32, an integer type, for a float tensor"));
  CHECK(has(RT_MSG(f.get<float>("flag")), "stored as BOOL, an integer type"));
  double buf[2];
  CHECK(has(RT_MSG(f.read_into<double>("u", buf, 1)), "stored as U8"));
  CHECK(has(RT_MSG(f.check_float("s")), "stored as I8"));
  CHECK_NOTHROW(f.check_float("bf"));
  CHECK(has(RT_MSG(f.read_into<double>("bf", buf, 3)), "has 2 elements, the destination 3"));
  f.read_into<double>("bf", buf, 2);
  CHECK(buf[0] == 1.0);
  CHECK(buf[1] == -3.140625);
  CHECK(f.get_int("flag") == xt::xarray<std::int64_t>{1, 0});
  CHECK(f.get_int("u")(0) == 255);
  CHECK(f.get_int("s")(0) == -128);
  CHECK(f.dtype("f8") == "F8_E4M3");
  const std::string m = RT_MSG(f.get<float>("f8"));
  CHECK(has(m, "hand.safetensors"));
  CHECK(has(m, "\"f8\""));
  CHECK(has(m, "stored as F8_E4M3, which cannot be converted"));
  CHECK(has(RT_MSG(f.get_int("h")), "not an integer type"));
  const std::string miss = RT_MSG(f.get<double>("nope"));
  CHECK(has(miss, "no tensor named \"nope\""));
  CHECK(has(miss, "\"bf\""));  // lists names that exist
}

TEST_CASE("malformed files: each error is clear and names the problem") {
  const std::string L = "bad.safetensors";
  auto err = [&](const std::string& bytes) { return RT_MSG(SafeTensorsFile::from_bytes(bytes, L)); };
  auto err_h = [&](const std::string& header, const std::string& data) { return err(make_file(header, data)); };
  const std::string d8 = raw<std::uint64_t>({0});

  struct Case {
    std::string what;
    std::string message;
    const char* expect;
  };
  const std::string good_entry = R"("x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]})";
  const std::string ok = make_file("{" + good_entry + "}", d8);
  std::vector<Case> cases = {
      {"empty file", err(""), "shorter than the 8-byte header length"},
      {"7 bytes", err("1234567"), "shorter than the 8-byte header length"},
      {"header longer than file", err(le64(100) + "{}"), "larger than the file"},
      {"absurd header length", err(le64(1ull << 40) + "{}"), "absurd"},
      {"huge header length", err(le64(~0ull) + "{}"), "absurd"},
      {"header length 0", err(le64(0)), "too small"},
      {"not JSON", err_h("{]", ""), "not valid UTF-8 JSON"},
      {"truncated JSON", err_h(R"({"x":{"dtype":"F64")", ""), "not valid UTF-8 JSON"},
      {"not UTF-8", err_h("{\"x\xff\":{}}", ""), "not valid UTF-8 JSON"},
      {"NUL padding", err_h("{}\0\0"s, ""), "NUL byte at header offset 2"},
      {"NUL then garbage", err_h("{}\0garbage"s, ""), "NUL byte"},
      {"not an object", err_h("[1,2]   ", ""), "not a JSON object"},
      {"string header", err_h("\"abc\"", ""), "not a JSON object"},
      {"entry not an object", err_h(R"({"x":[1]})", ""), "tensor \"x\": entry must be an object"},
      {"missing dtype", err_h(R"({"x":{"shape":[1],"data_offsets":[0,8]}})", d8), "tensor \"x\": missing field \"dtype\""},
      {"missing shape", err_h(R"({"x":{"dtype":"F64","data_offsets":[0,8]}})", d8), "missing field \"shape\""},
      {"missing offsets", err_h(R"({"x":{"dtype":"F64","shape":[1]}})", d8), "missing field \"data_offsets\""},
      {"unknown field", err_h(R"({"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8],"z":1}})", d8), "unknown field \"z\""},
      {"dtype not string", err_h(R"({"x":{"dtype":64,"shape":[1],"data_offsets":[0,8]}})", d8), "\"dtype\" must be a string"},
      {"unknown dtype", err_h(R"({"x":{"dtype":"F128","shape":[1],"data_offsets":[0,8]}})", d8), "unknown dtype \"F128\""},
      {"shape not array", err_h(R"({"x":{"dtype":"F64","shape":1,"data_offsets":[0,8]}})", d8), "\"shape\" must be an array"},
      {"negative dim", err_h(R"({"x":{"dtype":"F64","shape":[-1],"data_offsets":[0,8]}})", d8), "non-negative integer"},
      {"float dim", err_h(R"({"x":{"dtype":"F64","shape":[1.0],"data_offsets":[0,8]}})", d8), "non-negative integer"},
      {"overflowing shape", err_h(R"({"x":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", d8),
       "more elements than memory"},
      {"offsets not a pair", err_h(R"({"x":{"dtype":"F64","shape":[1],"data_offsets":[0]}})", d8), "[begin, end]"},
      {"offsets wrong type", err_h(R"({"x":{"dtype":"F64","shape":[1],"data_offsets":"0,8"}})", d8), "[begin, end]"},
      {"begin > end", err_h(R"({"x":{"dtype":"F64","shape":[0],"data_offsets":[8,0]}})", d8), "begin > end"},
      {"shape/offset mismatch", err_h(R"({"x":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", d8), "needs 16 bytes"},
      {"dtype/offset mismatch", err_h(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", d8), "needs 4 bytes"},
      {"offsets out of range", err_h(R"({"x":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", d8), "out of range"},
      {"truncated data", err(ok.substr(0, ok.size() - 1)), "out of range"},
      {"trailing bytes", err(ok + "z"), "1 trailing bytes"},
      {"gap", err_h(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8), "gap of 4 bytes before tensor \"x\""},
      {"overlap",
       err_h(R"({"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8),
       "overlaps tensor"},
      {"duplicate tensor name",
       err_h(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8),
       "duplicate key \"x\" (a tensor name appears twice)"},
      {"duplicate field", err_h(R"({"x":{"dtype":"F64","dtype":"F64","shape":[1],"data_offsets":[0,8]}})", d8), "duplicate key \"dtype\""},
      {"metadata not object", err_h(R"({"__metadata__":[1]})", ""), "\"__metadata__\" must be an object"},
      {"metadata value not string", err_h(R"({"__metadata__":{"a":1}})", ""), "value of \"a\" must be a string"},
      {"deep nesting", err_h(std::string(5000, '[') + std::string(5000, ']'), ""), "nests deeper"},
      {"nested shape", err_h(R"({"x":{"dtype":"F64","shape":[[1]],"data_offsets":[0,8]}})", d8), "nests deeper"},
      {"bad BOOL", "", ""},
  };
  // A BOOL byte that is neither 0 nor 1 loads (the header is fine) but fails on get.
  auto fb = SafeTensorsFile::from_bytes(make_file(R"({"b":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}})", "\x02"), L);
  cases.back().message = RT_MSG(fb.get_int("b"));
  cases.back().expect = "neither 0 nor 1";
  for (const auto& c : cases) {
    INFO(c.what, ": ", c.message);
    CHECK(has(c.message, c.expect));
    CHECK(has(c.message, L));  // the file is named
  }
  // load() names the path and reports a missing file.
  const std::string missing = (scratch() / "no_such.safetensors").string();
  const std::string m = RT_MSG(SafeTensorsFile::load(missing));
  CHECK(has(m, missing));
  CHECK(has(m, "cannot open"));
  CHECK(has(RT_MSG(SafeTensorsFile::load(scratch().string())), "not a regular file"));
  // A header padded with spaces (allowed) and a zero-sized tensor sharing an offset.
  auto f = SafeTensorsFile::from_bytes(
      make_file(R"({"e":{"dtype":"F32","shape":[0,5],"data_offsets":[0,0]},"x":{"dtype":"F64","shape":[],"data_offsets":[0,8]}}     )", d8), L);
  CHECK(f.names().size() == 2);
  CHECK(f.get<double>("x")() == 0.0);
}

TEST_CASE("write is atomic: the old file survives a failure, the temporary is removed") {
  const fs::path dir = scratch() / "atomic";
  fs::create_directories(dir);
  const fs::path p = dir / "w.safetensors";
  SafeTensorsWriter w1;
  w1.add("a", ramp({2}, 1.0));
  w1.write(p.string());
  const std::string first = read_all(p);
  SafeTensorsWriter w2;
  w2.add("b", ramp({3}, 1.0));
  w2.write(p.string());  // replaces
  CHECK(read_all(p) == w2.to_bytes());
  CHECK(read_all(p) != first);

  // Rename fails (target is a non-empty directory): error, directory untouched, no temporary left.
  const fs::path d = dir / "is_a_dir";
  fs::create_directories(d / "inside");
  const std::string m = RT_MSG(w1.write(d.string()));
  CHECK(has(m, d.string()));
  CHECK(fs::is_directory(d / "inside"));
  // Directory does not exist: error naming the path.
  CHECK(has(RT_MSG(w1.write((dir / "nope" / "x.safetensors").string())), "cannot write"));
  int leftovers = 0;
  for (auto& e : fs::directory_iterator(dir))
    if (has(e.path().filename().string(), ".tmp.")) ++leftovers;
  CHECK(leftovers == 0);
  CHECK(read_all(p) == w2.to_bytes());
}

TEST_CASE("fuzz: random mutations and truncations only ever throw std::runtime_error") {
  SafeTensorsWriter w;
  w.add("model.embed_tokens.weight", xt::xarray<float>(xt::cast<float>(ramp({4, 3}, 1.0))));
  w.add("model.norm.weight", ramp({3}, 1.0));
  w.add("s", ramp({}, 1.0));
  w.add_int("ids", xt::xarray<std::int64_t>{{1, 2}, {3, 4}});
  w.set_metadata("format", "pt");
  std::string base = w.to_bytes();
  // Also F16/BF16/BOOL entries, so conversions of mutated data are exercised.
  const std::string extra_header =
      R"({"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]},)"
      R"("q":{"dtype":"BOOL","shape":[2],"data_offsets":[8,10]},"u":{"dtype":"U64","shape":[1],"data_offsets":[10,18]}})";
  const std::string base2 = make_file(extra_header, raw<std::uint16_t>({0x3c00, 0x7c00, 0x3f80, 0x7fc0}) +
                                                         raw<std::uint8_t>({1, 0}) + raw<std::uint64_t>({7}));
  REQUIRE_NOTHROW(SafeTensorsFile::from_bytes(base));
  REQUIRE_NOTHROW(SafeTensorsFile::from_bytes(base2));

  std::mt19937_64 rng(12345);
  auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % std::max<std::size_t>(n, 1)); };
  const char interesting[] = "0123456789[]{},:\" -.eE\xff\x00";
  int loaded = 0, rejected = 0, wrong = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int it = 0; it < 10000; ++it) {
    std::string b = (it % 2) ? base : base2;
    const int kind = static_cast<int>(rng() % 6);
    if (kind == 0) {
      b.resize(pick(b.size()));  // truncation
    } else if (kind == 1) {
      for (int k = 0, n = 1 + static_cast<int>(pick(4)); k < n; ++k) b[pick(b.size())] = static_cast<char>(rng());
    } else if (kind == 2) {
      // a structural character in the header
      for (int k = 0, n = 1 + static_cast<int>(pick(3)); k < n; ++k)
        b[8 + pick(b.size() - 8)] = interesting[pick(sizeof(interesting) - 1)];
    } else if (kind == 3) {
      // a digit inside the header (offsets and shapes)
      std::vector<std::size_t> digits;
      for (std::size_t i = 8; i < b.size(); ++i)
        if (b[i] >= '0' && b[i] <= '9') digits.push_back(i);
      if (!digits.empty()) b[digits[pick(digits.size())]] = static_cast<char>('0' + pick(10));
    } else if (kind == 4) {
      b.insert(pick(b.size() + 1), std::string(1 + pick(8), static_cast<char>(rng())));  // insertion
    } else {
      // header length field
      const std::uint64_t n = (rng() % 3 == 0) ? rng() : (rng() % (b.size() + 16));
      b.replace(0, 8, le64(n));
    }
    try {
      auto f = SafeTensorsFile::from_bytes(b, "fuzz");
      for (const auto& name : f.names()) {
        try {
          (void)f.get<double>(name);
          (void)f.get<float>(name);
        } catch (const std::runtime_error&) {
        }
        try {
          (void)f.get_int(name);
        } catch (const std::runtime_error&) {
        }
      }
      ++loaded;
    } catch (const std::runtime_error&) {
      ++rejected;
    } catch (...) {
      ++wrong;
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("fuzz: ", loaded, " loaded, ", rejected, " rejected, ", wrong, " other exceptions, ", secs, " s");
  CHECK(wrong == 0);
  CHECK(rejected > 3000);  // the mutations really do break files
  CHECK(loaded > 10);      // ... and some survive (data-only mutations), so get() is exercised
  CHECK(secs < 10.0);
}

TEST_CASE("cross-check with the independent Python reader and writer") {
  if (!fs::exists(kPyIo)) {
    MESSAGE("skipped: ", kPyIo, " does not exist");
    return;
  }
  if (!python_with_torch()) {
    MESSAGE("skipped: /usr/bin/python3 with torch and numpy is unavailable");
    return;
  }
  const fs::path dir = scratch() / "py";
  fs::create_directories(dir);
  SafeTensorsWriter w;
  xt::xarray<double> a = ramp({3, 5}, 1.7);
  xt::xarray<float> b = xt::cast<float>(ramp({2, 2, 2}, -0.3));
  xt::xarray<double> wide = ramp({4, 7}, 1e-6);
  wide(0, 0) = 1e-6;          // F16 subnormal
  wide(0, 1) = 70000.0;       // F16 overflow -> inf
  wide(0, 2) = -1.0 / 3.0;    // rounding
  wide(0, 3) = 1e-9;          // F16 underflow -> 0
  w.add("model.layers.0.self_attn.q_proj.weight", a);
  w.add("lm_head.weight", b);
  w.add("wide", wide);
  w.add_int("tokens", xt::xarray<std::int64_t>{{3, 1, 4}, {1, 5, 9}});
  w.set_metadata("who", "tapegrad");
  const fs::path cpp_file = dir / "from_cpp.safetensors";
  w.write(cpp_file.string());

  // Python loads our file, checks names, shapes, dtypes, metadata and exact values, then
  // writes (a) everything back as F64 and (b) `wide` in F16 and BF16 plus torch's own
  // widening of those roundings as F64 references.
  const fs::path script = dir / "check.py";
  {
    std::ofstream py(script);
    py << "import sys, warnings, torch\n"
          "warnings.simplefilter('ignore', RuntimeWarning)  # 70000 -> F16 inf is intended\n"
          "sys.path.insert(0, sys.argv[1])\n"
          "import safetensors_io as st\n"
          "t, meta = st.load(sys.argv[2])\n"
          "assert meta == {'who': 'tapegrad'}, meta\n"
          "assert sorted(t) == ['lm_head.weight', 'model.layers.0.self_attn.q_proj.weight', 'tokens', 'wide'], sorted(t)\n"
          "q = t['model.layers.0.self_attn.q_proj.weight']\n"
          "assert q.dtype == torch.float64 and tuple(q.shape) == (3, 5)\n"
          "ref = 1.7 * (torch.arange(15, dtype=torch.float64) - 3.3) / 7.0\n"
          "assert torch.equal(q.reshape(-1), ref), (q, ref)\n"
          "lm = t['lm_head.weight']\n"
          "assert lm.dtype == torch.float32 and tuple(lm.shape) == (2, 2, 2)\n"
          "assert torch.equal(lm.reshape(-1), (-0.3 * (torch.arange(8, dtype=torch.float64) - 3.3) / 7.0).float())\n"
          "assert t['tokens'].tolist() == [[3, 1, 4], [1, 5, 9]]\n"
          "st.save(sys.argv[3], {k: v.double() for k, v in t.items()}, metadata={'from': 'python'})\n"
          "w = t['wide']\n"
          "st.save(sys.argv[4], {'f16': w, 'bf16': w}, dtype={'f16': 'F16', 'bf16': 'BF16'})\n"
          "st.save(sys.argv[5], {'f16': w.half().double(), 'bf16': w.bfloat16().double()})\n"
          "print('python ok')\n";
  }
  const fs::path back = dir / "back.safetensors", half = dir / "half.safetensors", half_ref = dir / "half_ref.safetensors";
  const std::string cmd = "/usr/bin/python3 " + script.string() + " " + fs::path(kPyIo).parent_path().string() + " " +
                          cpp_file.string() + " " + back.string() + " " + half.string() + " " + half_ref.string();
  REQUIRE(std::system(cmd.c_str()) == 0);

  auto fb = SafeTensorsFile::load(back.string());
  CHECK(fb.metadata().at("from") == "python");
  CHECK(fb.get<double>("model.layers.0.self_attn.q_proj.weight") == a);
  CHECK(fb.get<float>("lm_head.weight") == b);
  CHECK(fb.get<double>("wide") == wide);
  CHECK(fb.dtype("tokens") == "F64");  // the Python writer stores floats only
  CHECK(fb.get<double>("tokens") == xt::xarray<double>{{3, 1, 4}, {1, 5, 9}});
  auto fh = SafeTensorsFile::load(half.string());
  auto fr = SafeTensorsFile::load(half_ref.string());
  CHECK(fh.dtype("f16") == "F16");
  CHECK(fh.dtype("bf16") == "BF16");
  for (const char* name : {"f16", "bf16"}) {
    INFO(name);
    auto got = fh.get<double>(name);
    auto ref = fr.get<double>(name);
    REQUIRE(got.shape() == ref.shape());
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(std::bit_cast<std::uint64_t>(got.data()[i]) == std::bit_cast<std::uint64_t>(ref.data()[i]));
  }
  auto h = fh.get<double>("f16");
  CHECK(std::isinf(h(0, 1)));
  CHECK(h(0, 0) != 0.0);  // subnormal kept
  CHECK(h(0, 3) == 0.0);
}

TEST_CASE("every committed golden safetensors file loads") {
  const fs::path root = fs::path(TAPEGRAD_SOURCE_DIR) / "tests" / "golden";
  int files = 0;
  if (fs::exists(root)) {
    for (auto& e : fs::recursive_directory_iterator(root)) {
      if (e.path().extension() != ".safetensors") continue;
      INFO(e.path().string());
      auto f = SafeTensorsFile::load(e.path().string());
      for (const auto& name : f.names()) {
        const std::string dt = f.dtype(name);
        const bool is_float = dt == "F64" || dt == "F32" || dt == "F16" || dt == "BF16";
        std::size_t numel = 1;
        for (auto d : f.shape(name)) numel *= d;
        if (is_float) CHECK(f.get<double>(name).size() == numel);
        else CHECK(f.get_int(name).size() == numel);
      }
      ++files;
    }
  }
  if (files == 0) MESSAGE("skipped: no tests/golden/**/*.safetensors yet");
  else MESSAGE(files, " golden safetensors files loaded");
}

TEST_CASE("a file that is not safetensors is told apart") {
  auto msg = [](const std::string& bytes) { return RT_MSG(SafeTensorsFile::from_bytes(bytes, "w.safetensors")); };
  const std::string index = R"({"metadata": {"total_size": 1234}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}})";
  const std::string m = msg(index);
  CHECK(has(m, "w.safetensors"));
  CHECK(has(m, "is JSON, a sharded checkpoint's index"));
  CHECK(has(m, "did you mean --model DIR"));
  CHECK(has(m, "header length"));  // the raw reason stays, in parentheses
  CHECK(has(msg("\n  {\"a\": 1}"), "is JSON, not safetensors; did you mean --model DIR?"));
  CHECK(has(msg(std::string("PK\x03\x04", 4) + std::string(60, 'x')), "zip archive"));
  CHECK(has(msg(std::string("\x80\x02", 2) + std::string(30, '\x7f')), "pickle"));
  CHECK(has(msg("GGUF" + std::string(30, '\0')), "GGUF"));
  CHECK(has(msg("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n"), "Git LFS pointer"));
  CHECK(has(msg("hello"), "is text"));
  CHECK(describe_foreign_file("\x01\x02\x03", 3).empty());
}

TEST_CASE("load() memory-maps the file: same values, nothing written through it") {
  SafeTensorsWriter w;
  xt::xarray<float> a = {{1.5f, -2.f, 3.25f}, {0.f, 7.f, -0.5f}};
  xt::xarray<double> b = {1e-300, 2.0};
  w.add("a", a);
  w.add("b", b);
  const auto dir = std::filesystem::temp_directory_path() / "tapegrad_st_mmap";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "m.safetensors").string();
  w.write(path);
  {
    const SafeTensorsFile f = SafeTensorsFile::load(path);
    CHECK(f.mapped());
    CHECK_FALSE(SafeTensorsFile::from_bytes(w.to_bytes()).mapped());
    const SafeTensorsFile copy = f;  // copies share the mapping
    CHECK(copy.get<float>("a") == a);
    float into[6];
    f.read_into<float>("a", into, 6);
    CHECK(into[4] == 7.f);
    CHECK(f.get<float>("a") == a);  // after its pages were released, read again from the file
    CHECK(f.get<double>("b") == b);
  }
  std::ifstream in(path, std::ios::binary);
  const std::string back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(back == w.to_bytes());
  // an empty file and a directory
  std::ofstream(dir / "empty.safetensors").close();
  CHECK(has(RT_MSG(SafeTensorsFile::load((dir / "empty.safetensors").string())), "0 bytes"));
  CHECK(has(RT_MSG(SafeTensorsFile::load(dir.string())), "not a regular file"));
  std::filesystem::remove_all(dir);
}
