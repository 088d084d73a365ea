// nn/safetensors.cpp — the safetensors reader and writer (format in safetensors.hpp).
//
// What it is for: parsing and validating a safetensors header, converting stored values
// to float / double / int64, and producing deterministic files written atomically.
// What it is not: anything about models or parameter names (nn/ model code maps names).
#include "nn/safetensors.hpp"

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

namespace tg::st {

namespace {

using json = nlohmann::json;

constexpr std::uint64_t kMaxHeader = 100ull * 1024 * 1024;  // 100 MB: anything larger is garbage

struct DtypeInfo {
  const char* name;
  std::size_t size;
};
// Every dtype the safetensors specification names. The F8 types are known (so a file
// holding them validates) but not convertible.
constexpr DtypeInfo kDtypes[] = {
    {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2},
    {"U16", 2},  {"F16", 2}, {"BF16", 2}, {"I32", 4},    {"U32", 4},     {"F32", 4},
    {"F64", 8},  {"I64", 8}, {"U64", 8},
};

[[noreturn]] void fail(const std::string& label, const std::string& what) {
  throw std::runtime_error("safetensors: " + label + ": " + what);
}

std::string qname(const std::string& s) {
  // JSON-escaped, so a message never carries raw control bytes of a garbage name.
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

// Little-endian load of an unsigned integer of N bytes.
template <class U>
U load_le(const char* p) {
  U v;
  std::memcpy(&v, p, sizeof(U));
  if constexpr (std::endian::native == std::endian::big) {
    U r = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i) r |= U((v >> (8 * i)) & 0xff) << (8 * (sizeof(U) - 1 - i));
    v = r;
  }
  return v;
}

template <class U>
void store_le(std::string& out, U v) {
  for (std::size_t i = 0; i < sizeof(U); ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// A non-negative JSON integer, or fail.
std::uint64_t as_index(const json& v, const std::string& label, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer() && v.get<std::int64_t>() >= 0) return static_cast<std::uint64_t>(v.get<std::int64_t>());
  fail(label, what + " must be a non-negative integer, got " + v.dump());
}

// Parses the header, rejecting duplicate keys (nlohmann would keep the last silently)
// and nesting deeper than the format needs (top object > entry object > shape array).
json parse_header(const char* begin, const char* end, const std::string& label) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) -> bool {
    switch (ev) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth > 2) fail(label, "header nests deeper than the format allows");
        if (ev == json::parse_event_t::object_start) keys.emplace_back();
        else keys.emplace_back();  // arrays hold no keys; a placeholder keeps the stack aligned
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key: {
        const std::string& k = parsed.get_ref<const std::string&>();
        if (!keys.empty() && !keys.back().insert(k).second)
          fail(label, "duplicate key " + qname(k) + (depth == 1 ? " (a tensor name appears twice)" : " in the header"));
        break;
      }
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    // nlohmann reports invalid UTF-8 inside strings as a parse error too.
    fail(label, std::string("header is not valid UTF-8 JSON: ") + e.what());
  }
}

}  // namespace

std::size_t dtype_size(const std::string& dtype) {
  for (const auto& d : kDtypes)
    if (dtype == d.name) return d.size;
  return 0;
}

float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h >> 15) << 31;
  const std::uint32_t exp = (h >> 10) & 0x1f;
  const std::uint32_t mant = h & 0x3ff;
  std::uint32_t bits;
  if (exp == 0x1f) {
    // inf (mant == 0) or NaN (payload kept, shifted into the float mantissa)
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  } else {
    // zero or subnormal: mant * 2^-24, exact in float
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  return std::bit_cast<float>(bits);
}

float bf16_to_f32(std::uint16_t h) { return std::bit_cast<float>(std::uint32_t(h) << 16); }

// ---------------------------------------------------------------------------------
// Reading

std::string describe_foreign_file(const char* d, std::size_t size) {
  std::size_t i = 0;
  if (size >= 3 && static_cast<unsigned char>(d[0]) == 0xef && static_cast<unsigned char>(d[1]) == 0xbb &&
      static_cast<unsigned char>(d[2]) == 0xbf)
    i = 3;  // UTF-8 byte order mark
  while (i < size && (d[i] == ' ' || d[i] == '\n' || d[i] == '\r' || d[i] == '\t')) ++i;
  if (i < size && (d[i] == '{' || d[i] == '[')) {
    const std::string_view head(d, std::min<std::size_t>(size, 4096));
    if (head.find("\"weight_map\"") != std::string_view::npos)
      return "is JSON, a sharded checkpoint's index (model.safetensors.index.json); did you mean --model DIR "
             "(the folder holding it, its shards and config.json)?";
    return "is JSON, not safetensors; did you mean --model DIR?";
  }
  if (size >= 4 && d[0] == 'P' && d[1] == 'K' && d[2] == 3 && d[3] == 4)
    return "is a zip archive (a PyTorch .bin / .pt file saved by torch.save?): convert it to safetensors";
  if (size >= 2 && static_cast<unsigned char>(d[0]) == 0x80 && static_cast<unsigned char>(d[1]) <= 5)
    return "is a Python pickle (an old torch.save file?): convert it to safetensors";
  if (size >= 4 && std::memcmp(d, "GGUF", 4) == 0) return "is a GGUF file (llama.cpp), not safetensors";
  if (size >= 8 && std::memcmp(d, "version ", 8) == 0)
    return "is a Git LFS pointer, not the file itself (git lfs pull fetches it)";
  std::size_t printable = 0, n = std::min<std::size_t>(size, 64);
  for (std::size_t k = 0; k < n; ++k)
    if (std::isprint(static_cast<unsigned char>(d[k])) || d[k] == '\n' || d[k] == '\t') ++printable;
  if (n > 0 && printable == n) return "is text, not safetensors";
  return "";
}

SafeTensorsFile SafeTensorsFile::load(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat sb;
  if (::fstat(fd, &sb) != 0) fail(path, std::string("cannot stat: ") + std::strerror(errno));
  if (!S_ISREG(sb.st_mode)) fail(path, "not a regular file");
  const std::size_t size = static_cast<std::size_t>(sb.st_size);
  if (size == 0) return parse(path, "", 0);
  // Read-only and private: a change to the file under a running process cannot change
  // values already converted, and nothing is ever written through the mapping.
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (m == MAP_FAILED) fail(path, std::string("cannot memory-map: ") + std::strerror(errno));
  std::shared_ptr<void> map(m, [size](void* p) { ::munmap(p, size); });
  SafeTensorsFile f = parse(path, static_cast<const char*>(m), size);
  f.map_ = std::move(map);
  return f;
}

SafeTensorsFile SafeTensorsFile::from_bytes(std::string bytes, const std::string& label) {
  auto owned = std::make_shared<const std::string>(std::move(bytes));
  SafeTensorsFile f = parse(label, owned->data(), owned->size());
  f.owned_ = std::move(owned);
  return f;
}

SafeTensorsFile SafeTensorsFile::parse(const std::string& label, const char* data, std::size_t size) {
  SafeTensorsFile f;
  f.path_ = label;
  f.data_ = data;
  f.size_ = size;
  const std::string_view b(data, size);
  auto foreign = [&](const std::string& what) {
    const std::string d = describe_foreign_file(data, size);
    fail(label, d.empty() ? what : d + " (" + what + ")");
  };
  if (b.size() < 8) foreign("file is " + std::to_string(b.size()) + " bytes, shorter than the 8-byte header length");
  const std::uint64_t n = load_le<std::uint64_t>(b.data());
  if (n > kMaxHeader) foreign("header length " + std::to_string(n) + " is absurd (over 100 MB)");
  if (n > b.size() - 8)
    foreign("header length " + std::to_string(n) + " is larger than the file after its first 8 bytes (" +
            std::to_string(b.size() - 8) + ")");
  if (n < 2) fail(label, "header length " + std::to_string(n) + " is too small for a JSON object");
  f.data_start_ = 8 + static_cast<std::size_t>(n);
  const std::size_t buffer = b.size() - f.data_start_;

  // nlohmann's lexer takes a NUL byte for the end of input, so "{}\0garbage" would pass;
  // valid JSON never holds a raw NUL (in strings it must be escaped), so reject it first.
  if (const void* z = std::memchr(b.data() + 8, '\0', static_cast<std::size_t>(n)))
    fail(label, "header is not valid UTF-8 JSON: NUL byte at header offset " +
                    std::to_string(static_cast<const char*>(z) - (b.data() + 8)));
  const json header = parse_header(b.data() + 8, b.data() + 8 + n, label);
  if (!header.is_object()) fail(label, "header is not a JSON object but " + std::string(header.type_name()));

  struct Span {
    std::size_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(label, "\"__metadata__\" must be an object of strings, got " + std::string(v.type_name()));
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail(label, "\"__metadata__\" value of " + qname(m.key()) + " must be a string, got " + m.value().dump());
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string t = "tensor " + qname(name);
    if (!v.is_object()) fail(label, t + ": entry must be an object, got " + std::string(v.type_name()));
    for (auto k = v.begin(); k != v.end(); ++k)
      if (k.key() != "dtype" && k.key() != "shape" && k.key() != "data_offsets")
        fail(label, t + ": unknown field " + qname(k.key()));
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!v.contains(field)) fail(label, t + ": missing field \"" + field + "\"");

    Entry e;
    const json& dt = v["dtype"];
    if (!dt.is_string()) fail(label, t + ": \"dtype\" must be a string, got " + dt.dump());
    e.dtype = dt.get<std::string>();
    const std::size_t esize = dtype_size(e.dtype);
    if (esize == 0) fail(label, t + ": unknown dtype " + qname(e.dtype));

    const json& sh = v["shape"];
    if (!sh.is_array()) fail(label, t + ": \"shape\" must be an array, got " + sh.dump());
    std::size_t numel = 1;
    bool overflow = false;
    for (const json& d : sh) {
      const std::uint64_t dim = as_index(d, label, t + ": every \"shape\" entry");
      e.shape.push_back(static_cast<std::size_t>(dim));
      if (__builtin_mul_overflow(numel, static_cast<std::size_t>(dim), &numel)) overflow = true;
    }
    std::size_t nbytes = 0;
    if (overflow || __builtin_mul_overflow(numel, esize, &nbytes))
      fail(label, t + ": shape " + sh.dump() + " has more elements than memory can hold");
    e.numel = numel;

    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2)
      fail(label, t + ": \"data_offsets\" must be an array [begin, end], got " + off.dump());
    const std::uint64_t begin = as_index(off[0], label, t + ": \"data_offsets\" begin");
    const std::uint64_t end = as_index(off[1], label, t + ": \"data_offsets\" end");
    if (begin > end) fail(label, t + ": data_offsets " + off.dump() + " has begin > end");
    if (end > buffer)
      fail(label, t + ": data_offsets " + off.dump() + " out of range (the data buffer is " + std::to_string(buffer) +
                      " bytes; file truncated?)");
    if (end - begin != nbytes)
      fail(label, t + ": shape " + sh.dump() + " of " + e.dtype + " needs " + std::to_string(nbytes) +
                      " bytes but data_offsets " + off.dump() + " span " + std::to_string(end - begin));
    e.begin = static_cast<std::size_t>(begin);
    e.end = static_cast<std::size_t>(end);
    auto [pos, inserted] = f.entries_.emplace(name, std::move(e));
    if (!inserted) fail(label, t + " appears twice");
    spans.push_back({pos->second.begin, pos->second.end, &pos->first});
  }

  // The tensors must tile the buffer: sorted by offset, each starts where the last ended.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& c) {
    return a.begin != c.begin ? a.begin < c.begin : a.end < c.end;
  });
  std::size_t pos = 0;
  const std::string* prev = nullptr;
  for (const Span& s : spans) {
    if (s.begin < pos)
      fail(label, "tensor " + qname(*s.name) + " (bytes " + std::to_string(s.begin) + ".." + std::to_string(s.end) +
                      ") overlaps tensor " + qname(*prev) + " (ending at " + std::to_string(pos) + ")");
    if (s.begin > pos)
      fail(label, "gap of " + std::to_string(s.begin - pos) + " bytes before tensor " + qname(*s.name) +
                      " (starts at " + std::to_string(s.begin) + ", expected " + std::to_string(pos) + ")");
    pos = s.end;
    prev = s.name;
  }
  if (pos != buffer)
    fail(label, std::to_string(buffer - pos) + " trailing bytes after the last tensor (the data buffer is " +
                    std::to_string(buffer) + " bytes, tensors cover " + std::to_string(pos) + ")");
  return f;
}

std::vector<std::string> SafeTensorsFile::names() const {
  std::vector<std::string> r;
  r.reserve(entries_.size());
  for (const auto& [k, v] : entries_) r.push_back(k);
  return r;
}

bool SafeTensorsFile::contains(const std::string& name) const { return entries_.count(name) != 0; }

const SafeTensorsFile::Entry& SafeTensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it != entries_.end()) return it->second;
  std::string avail;
  std::size_t shown = 0;
  for (const auto& [k, v] : entries_) {
    if (shown == 5) {
      avail += ", ... (" + std::to_string(entries_.size()) + " in all)";
      break;
    }
    avail += (shown ? ", " : "") + qname(k);
    ++shown;
  }
  fail(path_, "no tensor named " + qname(name) + (entries_.empty() ? " (the file holds no tensors)" : "; it holds " + avail));
}

void SafeTensorsFile::release(const char* p, std::size_t n) const {
  if (!map_ || n == 0) return;
  static const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const auto lo = (reinterpret_cast<std::uintptr_t>(p) + page - 1) / page * page;
  const auto hi = (reinterpret_cast<std::uintptr_t>(p) + n) / page * page;
  if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);  // best effort
}

std::string SafeTensorsFile::dtype(const std::string& name) const { return entry(name).dtype; }
Shape SafeTensorsFile::shape(const std::string& name) const { return entry(name).shape; }

namespace {

// Converts `n` stored elements of `dtype` at `p` to Out through `cvt`; false if the dtype
// is not one of the given kinds.
template <class Out>
bool convert_float(const std::string& dtype, const char* p, std::size_t n, Out* out) {
  if (dtype == "F64") {
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(std::bit_cast<double>(load_le<std::uint64_t>(p + 8 * i)));
  } else if (dtype == "F32") {
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(std::bit_cast<float>(load_le<std::uint32_t>(p + 4 * i)));
  } else if (dtype == "F16") {
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(f16_to_f32(load_le<std::uint16_t>(p + 2 * i)));
  } else if (dtype == "BF16") {
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(bf16_to_f32(load_le<std::uint16_t>(p + 2 * i)));
  } else {
    return false;
  }
  return true;
}

// Integer dtypes to Out. U64 values above INT64_MAX are an error when Out is int64.
template <class Out>
bool convert_int(const std::string& dtype, const char* p, std::size_t n, Out* out, const std::string& label,
                 const std::string& name) {
  auto each = [&](auto tag, std::size_t size) {
    using U = decltype(tag);
    for (std::size_t i = 0; i < n; ++i) {
      using Raw = std::conditional_t<sizeof(U) == 1, std::uint8_t,
                  std::conditional_t<sizeof(U) == 2, std::uint16_t,
                  std::conditional_t<sizeof(U) == 4, std::uint32_t, std::uint64_t>>>;
      const U v = static_cast<U>(load_le<Raw>(p + size * i));
      if constexpr (std::is_same_v<U, std::uint64_t> && std::is_same_v<Out, std::int64_t>) {
        if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
          fail(label, "tensor " + qname(name) + ": U64 value " + std::to_string(v) + " does not fit in int64");
      }
      out[i] = static_cast<Out>(v);
    }
  };
  if (dtype == "I64") each(std::int64_t{}, 8);
  else if (dtype == "I32") each(std::int32_t{}, 4);
  else if (dtype == "I16") each(std::int16_t{}, 2);
  else if (dtype == "I8") each(std::int8_t{}, 1);
  else if (dtype == "U64") each(std::uint64_t{}, 8);
  else if (dtype == "U32") each(std::uint32_t{}, 4);
  else if (dtype == "U16") each(std::uint16_t{}, 2);
  else if (dtype == "U8") each(std::uint8_t{}, 1);
  else if (dtype == "BOOL") {
    for (std::size_t i = 0; i < n; ++i) {
      const auto v = static_cast<std::uint8_t>(p[i]);
      if (v > 1) fail(label, "tensor " + qname(name) + ": BOOL byte " + std::to_string(v) + " is neither 0 nor 1");
      out[i] = static_cast<Out>(v);
    }
  } else {
    return false;
  }
  return true;
}

}  // namespace

void SafeTensorsFile::check_float(const std::string& name) const {
  const Entry& e = entry(name);
  if (e.dtype == "F64" || e.dtype == "F32" || e.dtype == "F16" || e.dtype == "BF16") return;
  const bool integer = e.dtype[0] == 'I' || e.dtype[0] == 'U' || e.dtype == "BOOL";
  fail(path_, "tensor " + qname(name) + ": stored as " + e.dtype +
                  (integer ? ", an integer type, for a float tensor (F64, F32, F16 or BF16)"
                           : ", which cannot be converted to a float (F64, F32, F16 or BF16 can)"));
}

template <class T>
void SafeTensorsFile::read_into(const std::string& name, T* dst, std::size_t numel) const {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "read_into<T>: T is float or double");
  const Entry& e = entry(name);
  check_float(name);
  if (numel != e.numel)
    fail(path_, "tensor " + qname(name) + " has " + std::to_string(e.numel) + " elements, the destination " +
                    std::to_string(numel));
  const char* p = data_ + data_start_ + e.begin;
  convert_float<T>(e.dtype, p, e.numel, dst);
  release(p, e.end - e.begin);
}

template <class T>
xt::xarray<T> SafeTensorsFile::get(const std::string& name) const {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "get<T>: T is float or double");
  const Entry& e = entry(name);
  check_float(name);
  xt::xarray<T> a = xt::xarray<T>::from_shape(e.shape);
  convert_float<T>(e.dtype, data_ + data_start_ + e.begin, e.numel, a.data());
  return a;
}

xt::xarray<std::int64_t> SafeTensorsFile::get_int(const std::string& name) const {
  const Entry& e = entry(name);
  xt::xarray<std::int64_t> a = xt::xarray<std::int64_t>::from_shape(e.shape);
  const char* p = data_ + data_start_ + e.begin;
  if (!convert_int<std::int64_t>(e.dtype, p, e.numel, a.data(), path_, name))
    fail(path_, "tensor " + qname(name) + ": dtype " + e.dtype + " is not an integer type (get_int)");
  return a;
}

template xt::xarray<float> SafeTensorsFile::get<float>(const std::string&) const;
template xt::xarray<double> SafeTensorsFile::get<double>(const std::string&) const;
template void SafeTensorsFile::read_into<float>(const std::string&, float*, std::size_t) const;
template void SafeTensorsFile::read_into<double>(const std::string&, double*, std::size_t) const;

// ---------------------------------------------------------------------------------
// Writing

void SafeTensorsWriter::add_blob(const std::string& name, Blob b) {
  if (name.empty()) throw std::invalid_argument("SafeTensorsWriter::add: empty tensor name");
  if (name == "__metadata__") throw std::invalid_argument("SafeTensorsWriter::add: \"__metadata__\" is not a tensor name");
  if (!tensors_.emplace(name, std::move(b)).second)
    throw std::invalid_argument("SafeTensorsWriter::add: tensor " + qname(name) + " added twice");
}

template <class T>
void SafeTensorsWriter::add(const std::string& name, const xt::xarray<T>& a) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "add<T>: T is float or double");
  Blob b;
  b.dtype = std::is_same_v<T, float> ? "F32" : "F64";
  b.shape.assign(a.shape().begin(), a.shape().end());
  b.data.reserve(a.size() * sizeof(T));
  using U = std::conditional_t<std::is_same_v<T, float>, std::uint32_t, std::uint64_t>;
  // a is row-major: iterate in its logical order so any layout is stored C-contiguous.
  for (const T& v : a) store_le<U>(b.data, std::bit_cast<U>(v));
  add_blob(name, std::move(b));
}

template void SafeTensorsWriter::add<float>(const std::string&, const xt::xarray<float>&);
template void SafeTensorsWriter::add<double>(const std::string&, const xt::xarray<double>&);

void SafeTensorsWriter::add_int(const std::string& name, const xt::xarray<std::int64_t>& a) {
  Blob b;
  b.dtype = "I64";
  b.shape.assign(a.shape().begin(), a.shape().end());
  b.data.reserve(a.size() * 8);
  for (std::int64_t v : a) store_le<std::uint64_t>(b.data, static_cast<std::uint64_t>(v));
  add_blob(name, std::move(b));
}

void SafeTensorsWriter::set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

std::string SafeTensorsWriter::to_bytes() const {
  // Buffer order: decreasing element size, then name (Note [safetensors layout]).
  std::vector<const std::pair<const std::string, Blob>*> order;
  for (const auto& kv : tensors_) order.push_back(&kv);
  std::stable_sort(order.begin(), order.end(), [](auto* a, auto* b) {
    return dtype_size(a->second.dtype) > dtype_size(b->second.dtype);
  });
  json header = json::object();
  std::size_t offset = 0;
  for (auto* kv : order) {
    const std::size_t n = kv->second.data.size();
    header[kv->first] = {{"dtype", kv->second.dtype}, {"shape", kv->second.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string h;
  try {
    // "__metadata__" sorts before tensor names that start with a letter; std::map keeps
    // everything in byte order, so the header text is deterministic.
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    h = header.dump();
  } catch (const json::exception& e) {
    throw std::runtime_error(std::string("safetensors: a tensor name or metadata string is not valid UTF-8: ") + e.what());
  }
  h.append((8 - h.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + h.size() + offset);
  store_le<std::uint64_t>(out, h.size());
  out += h;
  for (auto* kv : order) out += kv->second.data;
  return out;
}

void SafeTensorsWriter::write(const std::string& path) const {
  const std::string bytes = to_bytes();
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  auto failed = [&](const std::string& what) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw std::runtime_error("safetensors: cannot write " + path + ": " + what + ": " + std::strerror(err));
  };
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    throw std::runtime_error("safetensors: cannot write " + path + ": cannot create " + tmp + ": " + std::strerror(err));
  }
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      failed("write to " + tmp);
    }
    done += static_cast<std::size_t>(w);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    failed("fsync of " + tmp);
  }
  if (::close(fd) != 0) failed("close of " + tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) failed("rename of " + tmp);
  // Make the rename itself durable (best effort: some file systems refuse fsync on a directory).
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace tg::st
