// nn/data.cpp — see data.hpp: byte tokenizer, corpus (read into memory), split, random batches.
#include "nn/data.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "nn/files.hpp"

namespace tg::data {

namespace {
// "PATH: why" -> "why" (io::read_file's messages start with the path).
std::string strip_prefix(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0 ? s.substr(prefix.size()) : s;
}
}  // namespace

// ---- tokenizer ---------------------------------------------------------------------------

Index ByteTokenizer::encode(std::string_view text) {
  Index ids = Index::from_shape({text.size()});
  for (std::size_t i = 0; i < text.size(); ++i) ids(i) = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(const std::int64_t* ids, std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= static_cast<std::int64_t>(vocab_size))
      throw std::invalid_argument("ByteTokenizer::decode: id " + std::to_string(ids[i]) + " at position " +
                                  std::to_string(i) + " is not a byte (valid: 0..255)");
    s[i] = static_cast<char>(static_cast<unsigned char>(ids[i]));
  }
  return s;
}

std::string ByteTokenizer::decode(const Index& ids) { return decode(ids.data(), ids.size()); }

std::string printable(std::string_view b) {
  static const char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD
  std::string out;
  out.reserve(b.size());
  std::size_t i = 0;
  while (i < b.size()) {
    const unsigned char c = static_cast<unsigned char>(b[i]);
    if (c < 0x80) {
      if (c == '\n' || c == '\t' || (c >= 0x20 && c != 0x7F)) out += static_cast<char>(c);
      else out += kReplacement;
      ++i;
      continue;
    }
    // The length of a UTF-8 sequence from its lead byte, and the smallest code point it may
    // encode (overlong forms are invalid).
    std::size_t len = 0;
    std::uint32_t cp = 0, min_cp = 0;
    if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F, min_cp = 0x80;
    else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F, min_cp = 0x800;
    else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07, min_cp = 0x10000;
    bool ok = len > 0 && i + len <= b.size();
    for (std::size_t k = 1; ok && k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(b[i + k]);
      if ((cc & 0xC0) != 0x80) ok = false;
      else cp = (cp << 6) | (cc & 0x3F);
    }
    ok = ok && cp >= min_cp && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    if (ok) {
      out.append(b.substr(i, len));
      i += len;
    } else {
      out += kReplacement;
      ++i;  // resynchronise on the next byte
    }
  }
  return out;
}

// ---- corpus ------------------------------------------------------------------------------

Corpus Corpus::open(const std::string& path) {
  // Note [The corpus is read, not mapped]: a mapping of a file that another process
  // truncates ends this one with SIGBUS at the next touch of a lost page. The bytes are
  // read once into memory instead (4.3 MB for KJV), so a change to the file under a
  // running job cannot reach it; a resume checks the fingerprint against train.json.
  std::string bytes;
  try {
    bytes = io::read_file(path);  // refuses FIFOs, folders and devices at once
  } catch (const std::exception& e) {
    throw std::runtime_error("data file '" + path + "': " + strip_prefix(e.what(), path + ": "));
  }
  if (bytes.empty()) throw std::runtime_error("data file '" + path + "': is empty (a corpus needs text to learn from)");
  Corpus c = from_string(std::move(bytes), path);
  return c;
}

Corpus Corpus::from_string(std::string text, std::string label) {
  if (text.empty()) throw std::runtime_error("data '" + label + "': is empty (a corpus needs text to learn from)");
  Corpus c;
  c.path_ = std::move(label);
  c.owned_ = std::move(text);
  c.data_ = reinterpret_cast<const unsigned char*>(c.owned_.data());
  c.size_ = c.owned_.size();
  return c;
}

Corpus::Corpus(Corpus&& o) noexcept { *this = std::move(o); }

Corpus& Corpus::operator=(Corpus&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    size_ = o.size_;
    owned_ = std::move(o.owned_);
    // A moved std::string may move its buffer or (short strings) copy it: point at ours.
    data_ = reinterpret_cast<const unsigned char*>(owned_.data());
    o.data_ = nullptr, o.size_ = 0;
  }
  return *this;
}

Corpus::~Corpus() { release(); }

void Corpus::release() {
  data_ = nullptr;
  size_ = 0;
}

std::uint64_t Corpus::fingerprint() const {
  std::uint64_t h = 14695981039346656037ull;  // FNV-1a offset basis
  for (std::size_t i = 0; i < size_; ++i) {
    h ^= data_[i];
    h *= 1099511628211ull;  // FNV prime
  }
  return h;
}

Split split(const Corpus& corpus, double val_fraction, std::size_t min_bytes) {
  return split(corpus.all(), corpus.path(), val_fraction, min_bytes);
}

Split split(Span all, const std::string& label, double val_fraction, std::size_t min_bytes) {
  if (!(val_fraction > 0.0 && val_fraction < 1.0))
    throw std::invalid_argument("validation fraction must be in (0, 1), got " + std::to_string(val_fraction));
  const char* unit = all.ids ? " tokens" : " bytes";
  const std::size_t n = all.size;
  const std::size_t n_val = static_cast<std::size_t>(std::llround(static_cast<double>(n) * val_fraction));
  const std::size_t n_train = n - std::min(n_val, n);
  auto too_small = [&](const char* part, std::size_t have) {
    std::ostringstream m;
    m << "data '" << label << "' (" << n << unit << "): the " << part << " split has " << have << unit
      << " but needs at least " << min_bytes << " (a sequence length T needs T+1" << unit << "; validation is the last "
      << val_fraction * 100 << "% of the file): use a shorter --seq-len, a larger corpus or another --val-fraction";
    return std::invalid_argument(m.str());
  };
  if (n_train < min_bytes || n_train == 0) throw too_small("training", n_train);
  if (n_val < min_bytes || n_val == 0) throw too_small("validation", n_val);
  return {all.sub(0, n_train), all.sub(n_train, n_val)};
}

// ---- batches -----------------------------------------------------------------------------

std::uint64_t uniform_index(Generator& gen, std::uint64_t n) {
  if (n == 0) throw std::invalid_argument("uniform_index: n must be >= 1");
  // Accept words below the largest multiple of n that fits in 2^64; the rest would bias.
  const std::uint64_t limit = -n % n;  // (2^64 - n) mod n == 2^64 mod n
  for (;;) {
    const std::uint64_t r = gen.next_u64();
    if (r >= limit) return r % n;
  }
}

std::string document_separators() { return "blankline, kjv-chapter, line:REGEX"; }

std::vector<std::size_t> document_starts(Span span, const std::string& doc_sep) {
  std::vector<std::size_t> starts;
  const unsigned char* d = span.data;
  const std::size_t n = span.size;
  if (doc_sep == "blankline") {
    // The first byte that is not '\n' after two or more consecutive '\n'.
    for (std::size_t i = 2; i < n; ++i)
      if (d[i] != '\n' && d[i - 1] == '\n' && d[i - 2] == '\n') starts.push_back(i);
    return starts;
  }
  std::regex re;
  const bool kjv = doc_sep == "kjv-chapter";
  if (!kjv) {
    if (doc_sep.rfind("line:", 0) != 0 || doc_sep.size() == 5)
      throw std::invalid_argument("document separator '" + doc_sep + "' is not one of " + document_separators());
    try {
      re = std::regex(doc_sep.substr(5), std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw std::invalid_argument("document separator '" + doc_sep + "': the regex does not compile: " + e.what());
    }
  }
  // Line by line: [b, e) is a line without its '\n' (the span's first line counts as one).
  for (std::size_t b = 0; b < n;) {
    std::size_t e = b;
    while (e < n && d[e] != '\n') ++e;
    if (e > b) {
      bool match;
      if (kjv) {
        std::size_t k = e;
        while (k > b && d[k - 1] >= '0' && d[k - 1] <= '9') --k;
        match = d[b] != ' ' && d[b] != '\t' && k < e && k > b + 1 && d[k - 1] == ' ';
      } else {
        match = std::regex_search(reinterpret_cast<const char*>(d + b), reinterpret_cast<const char*>(d + e), re);
      }
      if (match) starts.push_back(b);
    }
    b = e + 1;
  }
  return starts;
}

BatchSampler::BatchSampler(Span span, std::size_t B, std::size_t T, std::string what, WindowOptions opts)
    : span_(span), B_(B), T_(T), opts_(std::move(opts)) {
  if (B == 0 || T == 0)
    throw std::invalid_argument("BatchSampler: batch size and sequence length must be >= 1, got B=" +
                                std::to_string(B) + " T=" + std::to_string(T));
  if (opts_.has_bos() && T < 2)
    throw std::invalid_argument("BatchSampler: a window with a BOS token needs T >= 2, got T=" + std::to_string(T));
  const std::size_t len = text_len();
  const char* unit = span.ids ? " tokens" : " bytes";
  if (span.size < len)
    throw std::invalid_argument(what + " has " + std::to_string(span.size) + unit + ", fewer than the " +
                                std::to_string(len) + " of one window" + (opts_.has_bos() ? " (T after the BOS)" : " (T+1)") +
                                ": use a shorter --seq-len or more text");
  if (!opts_.doc_sep.empty()) {
    if (span.ids)
      throw std::invalid_argument(what + ": --doc-windows finds documents in bytes; it does not work on token ids yet");
    for (std::size_t s : document_starts(span, opts_.doc_sep))
      if (s + len <= span.size) starts_.push_back(s);
    if (starts_.empty())
      throw std::invalid_argument(what + ": no document start (--doc-windows " + opts_.doc_sep + ") leaves room for " +
                                  std::to_string(len) + unit + " of text: check the separator or use a shorter --seq-len");
  }
}

Index BatchSampler::next(Generator& gen) const {
  Index x = Index::from_shape({B_, T_ + 1});  // (B, T+1)
  const std::uint64_t windows = num_windows();
  const std::size_t off = opts_.has_bos() ? 1 : 0, len = text_len();
  for (std::size_t b = 0; b < B_; ++b) {
    const std::size_t start = window_start(static_cast<std::size_t>(uniform_index(gen, windows)));
    std::int64_t* dst = x.data() + b * (T_ + 1);
    if (off) dst[0] = opts_.bos_id;
    if (span_.ids) std::copy(span_.ids + start, span_.ids + start + len, dst + off);
    else std::copy(span_.data + start, span_.data + start + len, dst + off);
  }
  return x;
}

std::string generator_state(Generator& gen) {
  std::ostringstream os;
  os << gen.engine();  // the standard textual form of a mersenne_twister_engine
  return os.str();
}

void set_generator_state(Generator& gen, const std::string& state) {
  std::istringstream is(state);
  std::mt19937_64 e;
  is >> e;
  std::string rest;
  if (is.fail() || (is >> rest, !rest.empty()))
    throw std::invalid_argument("generator state: not a saved mt19937_64 state (" + std::to_string(state.size()) +
                                " characters)");
  gen.engine() = e;
}

}  // namespace tg::data
