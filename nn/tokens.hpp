// nn/tokens.hpp — binary token files: a corpus pre-tokenised once, reused across runs.
//
// What it is for: `train --tokenizer FILE` encodes its text file with a BPE tokenizer once
// and keeps the ids in a token file beside it; later runs read that file instead of encoding
// again. The header names what the ids came from (the tokenizer's hash and vocabulary size,
// the source text's fingerprint and length), so a file made by another tokenizer or from
// another text is detected as stale and rebuilt. A TokenFile gives a data::Span of int32
// ids, which data::split and data::BatchSampler use as they use bytes.
//
// What it is not: a tokenizer (nn/tokenizer.hpp) or a streaming format; the whole file is
// read into memory (4 bytes per token).
//
// Note [Token file format]
// Little-endian, a 64-byte header then the ids:
//   0  char[8]  magic "TGTOKv01"
//   8  u32      header size (64)
//  12  u32      vocab_size V (every id is in [0, V))
//  16  u64      count n of ids
//  24  u64      tokenizer hash (64-bit FNV-1a of the tokenizer.json bytes)
//  32  u64      source fingerprint (data::Corpus::fingerprint of the text)
//  40  u64      source size in bytes
//  48  16 bytes zero
//  64  i32[n]   the ids
// Written atomically (a temporary file beside it, fsync, rename): a crash leaves the old
// file or the new one, never a torn one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nn/data.hpp"

namespace tg::text {
class Tokenizer;
}

namespace tg::data {

struct TokenFileHeader {
  std::uint32_t vocab_size = 0;
  std::uint64_t count = 0;
  std::uint64_t tokenizer_hash = 0;
  std::uint64_t source_fingerprint = 0;
  std::uint64_t source_bytes = 0;
};

// 64-bit FNV-1a of bytes (the same function as Corpus::fingerprint).
std::uint64_t fnv1a64(const void* data, std::size_t n);

class TokenFile {
 public:
  // Reads the file into memory and checks it: magic, header size, file length = 64 + 4n,
  // and every id below vocab_size. Throws std::runtime_error naming the file and the field.
  static TokenFile open(const std::string& path);
  // The same checks on bytes already in memory; `label` names them in messages (tests, fuzz/).
  static TokenFile from_bytes(const std::string& bytes, const std::string& label = "<memory>");

  const TokenFileHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  Span all() const { return Span{nullptr, ids_.size(), ids_.data()}; }

 private:
  TokenFile() = default;
  std::string path_;
  TokenFileHeader header_;
  std::vector<std::int32_t> ids_;
};

// Writes header + ids atomically (Note [Token file format]); header.count is set from ids.
// Throws std::runtime_error naming the path if the write fails (the old file is kept) and
// std::invalid_argument if an id is outside [0, vocab_size).
void write_token_file(const std::string& path, TokenFileHeader header, const std::vector<std::int32_t>& ids);

// Reads only the header, or returns false when the file is absent or is not a token file
// (a stale check before deciding to rebuild).
bool read_token_header(const std::string& path, TokenFileHeader& out);

// The token file of `corpus` under `tok` at `path`: reused when its header names this
// tokenizer (hash, vocab size) and this text (fingerprint, size), else the text is encoded
// and the file (re)written atomically. *rebuilt (if given) says which happened.
TokenFile prepare_token_file(const text::Tokenizer& tok, const Corpus& corpus, const std::string& path,
                             bool* rebuilt = nullptr);

// The number of bytes the tokens of `span` decode to (for loss per byte: nats/token ×
// tokens / bytes). Bytes spans: their size.
std::uint64_t decoded_bytes(const text::Tokenizer& tok, Span span);

}  // namespace tg::data
