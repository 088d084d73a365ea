// nn/tokens.cpp — see tokens.hpp: the binary token file (write atomically, read, check).
#include "nn/tokens.hpp"

#include "nn/files.hpp"
#include "nn/tokenizer.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace tg::data {

namespace {

constexpr char kMagic[8] = {'T', 'G', 'T', 'O', 'K', 'v', '0', '1'};
constexpr std::size_t kHeaderBytes = 64;

template <class U>
U get(const unsigned char* p) {
  U v = 0;
  for (std::size_t i = 0; i < sizeof(U); ++i) v |= static_cast<U>(p[i]) << (8 * i);
  return v;
}
template <class U>
void put(unsigned char* p, U v) {
  for (std::size_t i = 0; i < sizeof(U); ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}

// The header from its 64 bytes, or an error message (empty when it is fine).
std::string parse_header(const unsigned char* h, std::size_t file_size, TokenFileHeader& out) {
  if (file_size < kHeaderBytes) return "is " + std::to_string(file_size) + " bytes, shorter than the 64-byte header";
  if (std::memcmp(h, kMagic, 8) != 0) return "is not a token file (magic is not TGTOKv01)";
  const std::uint32_t hb = get<std::uint32_t>(h + 8);
  if (hb != kHeaderBytes) return "header size is " + std::to_string(hb) + ", expected 64";
  out.vocab_size = get<std::uint32_t>(h + 12);
  out.count = get<std::uint64_t>(h + 16);
  out.tokenizer_hash = get<std::uint64_t>(h + 24);
  out.source_fingerprint = get<std::uint64_t>(h + 32);
  out.source_bytes = get<std::uint64_t>(h + 40);
  if (out.vocab_size == 0) return "vocab_size is 0";
  if (out.count > (file_size - kHeaderBytes) / 4 || kHeaderBytes + 4 * out.count != file_size)
    return "count says " + std::to_string(out.count) + " ids but the file holds " +
           std::to_string(file_size - kHeaderBytes) + " bytes after the header (truncated or padded)";
  return "";
}

}  // namespace

std::uint64_t fnv1a64(const void* data, std::size_t n) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  std::uint64_t h = 14695981039346656037ull;
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

TokenFile TokenFile::open(const std::string& path) {
  // Read, not mapped: see Note [The corpus is read, not mapped] in nn/data.cpp.
  std::string bytes;
  try {
    bytes = io::read_file(path);
  } catch (const std::exception& e) {
    const std::string m = e.what(), prefix = path + ": ";
    throw std::runtime_error("token file '" + path + "': " + (m.rfind(prefix, 0) == 0 ? m.substr(prefix.size()) : m));
  }
  return from_bytes(bytes, path);
}

TokenFile TokenFile::from_bytes(const std::string& bytes, const std::string& label) {
  auto fail = [&](const std::string& why) { return std::runtime_error("token file '" + label + "': " + why); };
  const std::size_t n = bytes.size();
  const unsigned char* p = reinterpret_cast<const unsigned char*>(bytes.data());
  TokenFile f;
  f.path_ = label;
  const std::string why = parse_header(p, n, f.header_);
  if (!why.empty()) throw fail(why);
  const std::int64_t V = f.header_.vocab_size;
  f.ids_.resize(f.header_.count);
  for (std::uint64_t i = 0; i < f.header_.count; ++i) {
    const auto id = static_cast<std::int32_t>(get<std::uint32_t>(p + kHeaderBytes + 4 * i));
    if (id < 0 || id >= V)
      throw fail("id " + std::to_string(id) + " at position " + std::to_string(i) + " is outside the vocabulary [0, " +
                 std::to_string(V) + ")");
    f.ids_[i] = id;
  }
  if (f.header_.count == 0) throw fail("holds no tokens");
  return f;
}

bool read_token_header(const std::string& path, TokenFileHeader& out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  unsigned char h[kHeaderBytes];
  const bool ok = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && ::pread(fd, h, kHeaderBytes, 0) == ssize_t(kHeaderBytes);
  ::close(fd);
  return ok && parse_header(h, static_cast<std::size_t>(st.st_size), out).empty();
}

void write_token_file(const std::string& path, TokenFileHeader header, const std::vector<std::int32_t>& ids) {
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || static_cast<std::uint64_t>(ids[i]) >= header.vocab_size)
      throw std::invalid_argument("write_token_file: id " + std::to_string(ids[i]) + " at position " +
                                  std::to_string(i) + " is outside the vocabulary [0, " +
                                  std::to_string(header.vocab_size) + ")");
  header.count = ids.size();
  unsigned char h[kHeaderBytes] = {};
  std::memcpy(h, kMagic, 8);
  put<std::uint32_t>(h + 8, kHeaderBytes);
  put<std::uint32_t>(h + 12, header.vocab_size);
  put<std::uint64_t>(h + 16, header.count);
  put<std::uint64_t>(h + 24, header.tokenizer_hash);
  put<std::uint64_t>(h + 32, header.source_fingerprint);
  put<std::uint64_t>(h + 40, header.source_bytes);
  std::vector<unsigned char> body(4 * ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) put<std::uint32_t>(body.data() + 4 * i, static_cast<std::uint32_t>(ids[i]));

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  auto failed = [&](const char* what, int err) {
    ::unlink(tmp.c_str());
    return std::runtime_error("token file '" + path + "': cannot " + what + ": " + std::strerror(err) +
                              " (the previous file, if any, is kept)");
  };
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw failed("create a temporary file", errno);
  auto write_all = [&](const unsigned char* p, std::size_t n) {
    while (n > 0) {
      const ssize_t w = ::write(fd, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      p += w, n -= static_cast<std::size_t>(w);
    }
    return true;
  };
  if (!write_all(h, kHeaderBytes) || !write_all(body.data(), body.size())) {
    const int e = errno;
    ::close(fd);
    throw failed("write", e);
  }
  if (::fsync(fd) != 0) {
    const int e = errno;
    ::close(fd);
    throw failed("fsync", e);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) throw failed("rename", errno);
}

TokenFile prepare_token_file(const text::Tokenizer& tok, const Corpus& corpus, const std::string& path,
                             bool* rebuilt) {
  TokenFileHeader want;
  want.vocab_size = static_cast<std::uint32_t>(tok.vocab_size());
  want.tokenizer_hash = tok.hash();
  want.source_fingerprint = corpus.fingerprint();
  want.source_bytes = corpus.size();
  TokenFileHeader have;
  if (read_token_header(path, have) && have.vocab_size == want.vocab_size && have.tokenizer_hash == want.tokenizer_hash &&
      have.source_fingerprint == want.source_fingerprint && have.source_bytes == want.source_bytes) {
    if (rebuilt) *rebuilt = false;
    return TokenFile::open(path);
  }
  const std::vector<std::int32_t> ids =
      tok.encode(std::string_view(reinterpret_cast<const char*>(corpus.data()), corpus.size()));
  write_token_file(path, want, ids);
  if (rebuilt) *rebuilt = true;
  return TokenFile::open(path);
}

std::uint64_t decoded_bytes(const text::Tokenizer& tok, Span span) {
  if (!span.ids) return span.size;
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < span.size; ++i) n += tok.token_bytes(span.ids[i]).size();
  return n;
}

}  // namespace tg::data
