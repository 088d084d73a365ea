// nn/data.hpp — the data side of language-model training: bytes in, batches of token ids out.
//
// What it is for:
//   - ByteTokenizer: the byte-level tokenizer (vocab 256, id = byte value), so any file is
//     a valid corpus and decoding is exact;
//   - Corpus: a text file read once (memory-mapped, read-only), split into a training part
//     and a validation part (the last `val_fraction` of the bytes);
//   - BatchSampler: random windows (B, T+1) from one part, drawn from a seeded Generator,
//     so a run is reproducible and, with the generator's state saved beside a checkpoint,
//     resumable exactly (generator_state / set_generator_state);
//   - printable(): raw bytes made safe for a terminal (sampled text may hold any byte).
//
// What it is not: a general tokenizer library (no BPE, no special tokens), a streaming
// loader for corpora larger than the address space, or the training loop
// (examples/tapegrad/train.cpp).
//
// Note [Batches of T+1 tokens]
// A batch is (B, T+1): each row is a window of T+1 consecutive bytes, so the model, fed the
// whole row, predicts T next tokens (CausalLM::loss scores logits[:, :-1] against
// tokens[:, 1:]). The window start is uniform over [0, n - (T+1)] of its part; the draw is
// unbiased (rejection sampling on 64-bit words of the generator), so it does not depend on
// the standard library's distributions and is the same on every platform.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "autograd/ops.hpp"  // tg::Index, tg::Generator

namespace tg::data {

// ---- the tokenizer ---------------------------------------------------------------------

struct ByteTokenizer {
  static constexpr std::size_t vocab_size = 256;
  // One id per byte: "Hi" -> {72, 105}. The result is (n).
  static Index encode(std::string_view text);
  // Ids back to bytes; throws std::invalid_argument for an id outside [0, 256).
  static std::string decode(const Index& ids);
  static std::string decode(const std::int64_t* ids, std::size_t n);
};

// Text for a terminal: valid UTF-8 passes through, as do '\n' and '\t'; an invalid UTF-8
// sequence or another control character becomes U+FFFD. (Byte-level samples can hold any
// byte; printing them raw could garble the terminal.)
std::string printable(std::string_view bytes);

// ---- the corpus ------------------------------------------------------------------------

// A contiguous run of tokens, a view into a Corpus or a TokenFile (nn/tokens.hpp), which
// must outlive it. Bytes (`data`; token = byte value, vocab 256) or, when `ids` is set,
// int32 token ids of a wider vocabulary (then `data` is null). `size` counts tokens.
struct Span {
  const unsigned char* data = nullptr;
  std::size_t size = 0;
  const std::int32_t* ids = nullptr;
  std::int64_t at(std::size_t i) const { return ids ? ids[i] : data[i]; }
  // tokens [from, from + n): the caller keeps from + n <= size
  Span sub(std::size_t from, std::size_t n) const {
    return ids ? Span{nullptr, n, ids + from} : Span{data + from, n, nullptr};
  }
};

class Corpus {
 public:
  // Maps the file read-only. Throws std::runtime_error naming the path when it is missing,
  // unreadable, not a regular file, or empty.
  static Corpus open(const std::string& path);
  // A corpus held in memory (tests, small programs); `label` names it in messages.
  static Corpus from_string(std::string text, std::string label = "<memory>");

  Corpus(Corpus&& other) noexcept;
  Corpus& operator=(Corpus&& other) noexcept;
  Corpus(const Corpus&) = delete;
  Corpus& operator=(const Corpus&) = delete;
  ~Corpus();

  const std::string& path() const { return path_; }
  std::size_t size() const { return size_; }
  const unsigned char* data() const { return data_; }
  Span all() const { return {data_, size_}; }
  // 64-bit FNV-1a of the bytes: a resumed run checks it is reading the same text.
  std::uint64_t fingerprint() const;

 private:
  Corpus() = default;
  void release();
  std::string path_;
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
  void* map_ = nullptr;     // the mapping (munmap on destruction), or null
  std::string owned_;       // the bytes of from_string
};

// The training part (the first bytes) and the validation part (the last
// round(size * val_fraction) bytes). Throws std::invalid_argument unless
// 0 < val_fraction < 1 and both parts hold at least `min_bytes` bytes; the message says
// how many bytes each part has and what is needed (e.g. for sequence length T, T+1).
struct Split {
  Span train, val;
};
Split split(const Corpus& corpus, double val_fraction, std::size_t min_bytes = 1);
// The same on any span of tokens (a TokenFile's ids); `label` names it in messages.
Split split(Span all, const std::string& label, double val_fraction, std::size_t min_tokens = 1);

// ---- batches ---------------------------------------------------------------------------

// Random windows of T+1 bytes (see Note [Batches of T+1 tokens]).
class BatchSampler {
 public:
  // Throws std::invalid_argument if B == 0, T == 0 or the span is shorter than T+1
  // (`what` names the span in the message, e.g. "the validation split").
  BatchSampler(Span span, std::size_t B, std::size_t T, std::string what = "the data");
  // The next batch (B, T+1) of token ids (bytes: [0, 256)), advancing gen by at least B draws.
  Index next(Generator& gen) const;
  std::size_t batch() const { return B_; }
  std::size_t seq_len() const { return T_; }
  // Number of distinct window starts: span.size - T.
  std::size_t num_windows() const { return span_.size - T_; }

 private:
  Span span_;
  std::size_t B_, T_;
};

// An unbiased integer in [0, n) (n >= 1) from gen's 64-bit words (rejection sampling).
std::uint64_t uniform_index(Generator& gen, std::uint64_t n);

// The generator's complete state as text, and back: restoring it makes the generator
// produce exactly what it would have produced after the save. set_generator_state throws
// std::invalid_argument for text that is not such a state.
std::string generator_state(Generator& gen);
void set_generator_state(Generator& gen, const std::string& state);

}  // namespace tg::data
