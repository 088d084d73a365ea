// nn/tokenizer.hpp — byte-level BPE tokenizers in Hugging Face's tokenizer.json format.
//
// What it is for: reading the tokenizer.json of GPT-2 and Qwen2/Qwen3 style models (and the
// files `tapegrad tokenizer train` writes) and encoding text to ids and ids back to bytes,
// exactly as Hugging Face's `tokenizers` library does:
//   1. added tokens (`added_tokens`, e.g. <|endoftext|>) are found first, leftmost-longest,
//      in the raw text; they become their own ids and the text between them goes on;
//   2. the normalizer (none, or NFC via utf8proc);
//   3. the pre-tokenizer: a Split on a regular expression with Unicode classes (PCRE2 with
//      UTF + UCP; behavior "Isolated": matches and the gaps between them are pieces), and the
//      ByteLevel step, which maps every byte of a piece to one printable character;
//   4. the BPE model: each piece starts as its bytes, and the adjacent pair whose merge has
//      the lowest rank is merged, again and again (Note [BPE merges]).
// Decoding maps each token back to its bytes (the ByteLevel decoder), so decode(encode(s))
// == s for every byte string s, also invalid UTF-8: bytes that are not valid UTF-8 are
// never matched by the regex (PCRE2_MATCH_INVALID_UTF) and form pieces of their own.
//
// What it is not: WordPiece, Unigram or SentencePiece models, post-processors that add
// tokens (TemplateProcessing), padding or truncation. A field this file does not support is
// refused by name (std::runtime_error naming the file and the field), never ignored.
//
// Note [BPE merges]
// `merges` lists pairs by rank (the order they were learnt), either as "a b" strings or as
// ["a", "b"] lists. A piece of n bytes starts as n symbols; while some adjacent pair (x, y)
// is in the table, the pair of lowest rank is merged everywhere in the piece, left to right
// (non-overlapping). That is GPT-2's algorithm and gives the same tokens as Hugging Face's
// priority queue. The result for a piece is cached (pieces repeat: words).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace tg::text {

// GPT-2's byte-to-unicode table: byte b -> a printable code point (bytes '!'..'~', '¡'..'¬'
// and '®'..'ÿ' map to themselves, the other 68 to U+0100..U+0143), as UTF-8.
const std::string& byte_to_unicode(unsigned char b);

// The pre-tokenisation regular expression of GPT-2 (ByteLevel with use_regex true).
extern const char* const kGpt2Pattern;

class Tokenizer {
 public:
  // Reads and checks a tokenizer.json. Throws std::runtime_error naming the path and the
  // field for anything unreadable, inconsistent or unsupported.
  static Tokenizer from_file(const std::string& path);
  // The same from the file's text; `label` names it in messages.
  static Tokenizer from_string(const std::string& json_text, const std::string& label = "<memory>");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Bytes to ids (any bytes: not only valid UTF-8).
  std::vector<std::int32_t> encode(std::string_view text) const;
  // Ids to bytes; throws std::invalid_argument for an id without a token, naming it and
  // its position.
  std::string decode(const std::int32_t* ids, std::size_t n) const;
  std::string decode(const std::vector<std::int32_t>& ids) const { return decode(ids.data(), ids.size()); }

  // 1 + the largest id of the vocabulary and the added tokens.
  std::size_t vocab_size() const;
  // The bytes token `id` decodes to (empty for an id without a token).
  const std::string& token_bytes(std::int32_t id) const;
  // The id of an added token by its content (e.g. "<|endoftext|>"), or -1.
  std::int32_t added_token_id(std::string_view content) const;
  // 64-bit FNV-1a of the tokenizer.json text (token files name their tokenizer with it).
  std::uint64_t hash() const;

 private:
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> p_;
};

// ---- training (Note [BPE training] in tokenizer_train.cpp) ------------------------------

struct TrainOptions {
  std::size_t vocab_size = 4096;  // 256 bytes + merges + added tokens
  std::vector<std::string> special_tokens = {"<|endoftext|>"};  // added after the merges
  std::size_t min_frequency = 2;  // a pair seen fewer times than this is never merged
};

// Learns a byte-level BPE on `text` (GPT-2 pre-tokenisation, pair counts over the pre-token
// word counts) and returns a tokenizer.json (model type BPE, ByteLevel pre-tokenizer and
// decoder, vocab, merges as ["a","b"] lists) that Hugging Face's tokenizers library loads.
// Throws std::invalid_argument if vocab_size < 256 + number of special tokens.
nlohmann::ordered_json train_bpe(std::string_view text, const TrainOptions& o);

}  // namespace tg::text
