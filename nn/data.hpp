// nn/data.hpp — the data side of language-model training: bytes in, batches of token ids out.
//
// What it is for:
//   - ByteTokenizer: the byte-level tokenizer (vocab 256, id = byte value), so any file is
//     a valid corpus and decoding is exact;
//   - Corpus: a text file read once into memory (a change to the file under a running job
//     cannot reach it), split into a training part and a validation part (the last `val_fraction` of the bytes);
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
//
// Note [BOS and document windows]
// Two options change what a window holds (WindowOptions; train.json records them, so
// train, sample, oracle and study read a run's windows the same way):
//   - bos_id >= 0: position 0 of every window is that id (for byte models 256, with
//     vocab_size 257: an id no byte of the text has), followed by T text bytes (the row is
//     still T+1 ids). A fixed first token is what concentrates an attention sink there
//     (Gu et al., ICLR 2025).
//   - doc_sep: windows start only at a document start. Documents are found once per span
//     by document_starts(): "blankline" (the byte after a run of "\n\n"), "kjv-chapter"
//     (a line that does not start with a space and ends in a number: "Genesis 1",
//     "1 Kings 3" -- the chapter headings of data/kjv.txt), or "line:REGEX" (the start of
//     every line that ECMAScript REGEX matches, std::regex_search). A window that reaches
//     the end of its document runs on into the next one (no padding); the start is drawn
//     uniformly among the document starts that leave room for the window.
// Without the options the windows are exactly as before.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

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
  // Reads the whole file into memory (Note [The corpus is read, not mapped] in data.cpp).
  // Throws std::runtime_error naming the path when it is missing, unreadable, not a
  // regular file (a FIFO is refused at once, not waited on), or empty.
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
  std::string owned_;       // the bytes
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

// What a window holds (Note [BOS and document windows]).
struct WindowOptions {
  std::int64_t bos_id = -1;  // >= 0: position 0 of every window is this id
  std::string doc_sep;       // "": any start; "blankline", "kjv-chapter", "line:REGEX"
  bool has_bos() const { return bos_id >= 0; }
  bool operator==(const WindowOptions&) const = default;
};

// The offsets in `span` where a document starts under `doc_sep` (sorted; offset 0 is a
// start when the span begins with one). Throws std::invalid_argument naming the value for
// an unknown separator or a regex that does not compile.
std::vector<std::size_t> document_starts(Span span, const std::string& doc_sep);
// The separators document_starts knows, for help texts: "blankline, kjv-chapter, line:REGEX".
std::string document_separators();

// Random windows of T+1 ids (see Note [Batches of T+1 tokens], Note [BOS and document windows]).
class BatchSampler {
 public:
  // Throws std::invalid_argument if B == 0, T == 0, the span is shorter than the text of
  // one window (T+1 bytes, T with a BOS), or no document start leaves room for one
  // (`what` names the span in the message, e.g. "the validation split").
  BatchSampler(Span span, std::size_t B, std::size_t T, std::string what = "the data", WindowOptions opts = {});
  // The next batch (B, T+1) of token ids (bytes: [0, 256); bos_id at column 0 with a BOS),
  // advancing gen by at least B draws.
  Index next(Generator& gen) const;
  std::size_t batch() const { return B_; }
  std::size_t seq_len() const { return T_; }
  const WindowOptions& options() const { return opts_; }
  // Bytes of text in a window: T+1, or T with a BOS.
  std::size_t text_len() const { return T_ + 1 - (opts_.has_bos() ? 1 : 0); }
  // Number of distinct window starts: span.size - text_len() + 1, or the usable document starts.
  std::size_t num_windows() const { return starts_.empty() ? span_.size - text_len() + 1 : starts_.size(); }
  // The offset in the span of window start k (0 <= k < num_windows()).
  std::size_t window_start(std::size_t k) const { return starts_.empty() ? k : starts_[k]; }

 private:
  Span span_;
  std::size_t B_, T_;
  WindowOptions opts_;
  std::vector<std::size_t> starts_;  // usable document starts (empty: every offset)
};

// An unbiased integer in [0, n) (n >= 1) from gen's 64-bit words (rejection sampling).
std::uint64_t uniform_index(Generator& gen, std::uint64_t n);

// The generator's complete state as text, and back: restoring it makes the generator
// produce exactly what it would have produced after the save. set_generator_state throws
// std::invalid_argument for text that is not such a state.
std::string generator_state(Generator& gen);
void set_generator_state(Generator& gen, const std::string& state);

}  // namespace tg::data
