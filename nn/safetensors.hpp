// nn/safetensors.hpp — reading and writing safetensors files (checkpoints, golden files,
// the oracle's output).
//
// What it is for: tapegrad's one file format for tensors, the one Hugging Face uses, so a
// model trained here loads in PyTorch and back. The format:
//
//   8 bytes   N, the header length, unsigned 64-bit little-endian
//   N bytes   a UTF-8 JSON object: {"name": {"dtype": "F32", "shape": [2, 3],
//             "data_offsets": [begin, end]}, ..., "__metadata__": {"key": "value"}}
//             (the optional "__metadata__" maps strings to strings; the header may be
//             padded with trailing spaces)
//   rest      the byte buffer: every tensor row-major, little-endian, at [begin, end)
//             relative to the buffer start; together the tensors cover the buffer exactly
//             (no gaps, no overlaps, no trailing bytes).
//
// Reading (SafeTensorsFile): load() memory-maps the file read-only (from_bytes() keeps the
// bytes it is given) and validates the header completely before returning; every malformed
// input throws std::runtime_error naming the file and the offending field or tensor, never
// crashes (a fuzz test checks this). Values are converted on get() or read_into(): F64,
// F32, F16 and BF16 to float or double (an integer dtype is refused for a float: a float
// parameter stored as I32 is a broken file, not a value to convert); get_int() reads the
// integer types. read_into() converts straight into a caller's buffer (a parameter) and
// then drops the file's pages it has read from memory (madvise), so loading a large
// checkpoint holds the parameters and not a second copy of the file.
//
// Writing (SafeTensorsWriter): F32 (from float), F64 (from double), I64 (from int64).
// Note [safetensors layout]: the JSON header lists tensors in sorted name order (and
// "__metadata__" first); in the buffer, tensors are laid out by decreasing element size,
// then by name, so every tensor is aligned to its element size (the header is padded
// with spaces to a multiple of 8 bytes). The output is a pure function of the tensors
// added and the metadata: the same inputs give the same bytes.
//
// What it is not: a writer of F16/BF16 (readers only), nor anything about torch.save /
// pickle files (a file that is not safetensors is told apart: JSON, zip, pickle, GGUF).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>

#include "autograd/tensor.hpp"  // tg::Shape

namespace tg::st {

// Element size in bytes of a safetensors dtype name ("F32" -> 4); 0 if the name is unknown.
std::size_t dtype_size(const std::string& dtype);

class SafeTensorsFile {
 public:
  // Reads and validates the whole file. Throws std::runtime_error naming `path` and the
  // problem: too short, bad header length, header not UTF-8 / JSON / an object, duplicate
  // names, missing, unknown or wrong-typed fields, unknown dtype, shape and offsets that
  // disagree, offsets out of range, overlapping tensors, gaps, trailing bytes.
  static SafeTensorsFile load(const std::string& path);
  // The same from bytes already in memory; `label` stands for the file name in messages.
  // This is the entry point of the safetensors fuzz harness.
  static SafeTensorsFile from_bytes(std::string bytes, const std::string& label = "<memory>");

  // Tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  // The tensor converted to T (float or double). Accepts F64, F32, F16, BF16. Throws
  // std::runtime_error for a missing name (listing a few names that exist) or another
  // dtype (an integer one: "stored as I32, an integer type, for a float tensor").
  template <class T>
  xt::xarray<T> get(const std::string& name) const;
  // The same into dst[0, numel) (numel must match), then releases the pages read.
  template <class T>
  void read_into(const std::string& name, T* dst, std::size_t numel) const;
  // Throws what get<T>() would for this tensor's dtype, without converting anything.
  void check_float(const std::string& name) const;
  bool mapped() const { return static_cast<bool>(map_); }
  // An integer tensor (I64, I32, I16, I8, U64 (values must fit), U32, U16, U8, BOOL).
  xt::xarray<std::int64_t> get_int(const std::string& name) const;
  // "F32", "BF16", ...
  std::string dtype(const std::string& name) const;
  Shape shape(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  struct Entry {
    std::string dtype;
    Shape shape;
    std::size_t numel = 0;
    std::size_t begin = 0, end = 0;  // byte offsets into the buffer
  };
  const Entry& entry(const std::string& name) const;

  static SafeTensorsFile parse(const std::string& label, const char* data, std::size_t size);
  void release(const char* p, std::size_t n) const;  // madvise(DONTNEED) the whole pages of [p, p+n)

  std::string path_;
  std::shared_ptr<const std::string> owned_;  // from_bytes: the bytes
  std::shared_ptr<void> map_;                 // load: the mapping (munmap on the last copy)
  const char* data_ = nullptr;                // the whole file
  std::size_t size_ = 0;
  std::size_t data_start_ = 0;  // 8 + N
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

class SafeTensorsWriter {
 public:
  // Stores a copy of `a`: F32 for float, F64 for double. A name may be added once;
  // "__metadata__" and empty names are rejected (std::invalid_argument).
  template <class T>
  void add(const std::string& name, const xt::xarray<T>& a);
  // Stored as I64.
  void add_int(const std::string& name, const xt::xarray<std::int64_t>& a);
  void set_metadata(const std::string& key, const std::string& value);
  std::size_t size() const { return tensors_.size(); }
  // The file's bytes (see Note [safetensors layout]).
  std::string to_bytes() const;
  // Atomic: writes `path.tmp.<pid>`, flushes and fsyncs it, then renames it over `path`.
  // On any failure (std::runtime_error naming the path) the temporary is removed and an
  // existing file at `path` is untouched.
  void write(const std::string& path) const;

 private:
  struct Blob {
    std::string dtype;
    Shape shape;
    std::string data;  // little-endian bytes
  };
  void add_blob(const std::string& name, Blob b);
  std::map<std::string, Blob> tensors_;
  std::map<std::string, std::string> metadata_;
};

extern template xt::xarray<float> SafeTensorsFile::get<float>(const std::string&) const;
extern template xt::xarray<double> SafeTensorsFile::get<double>(const std::string&) const;
extern template void SafeTensorsFile::read_into<float>(const std::string&, float*, std::size_t) const;
extern template void SafeTensorsFile::read_into<double>(const std::string&, double*, std::size_t) const;

// What the first bytes of a file that is not safetensors look like ("is JSON; did you mean
// --model DIR?", "is a zip archive (a PyTorch .bin / .pt file?)", ...); empty if nothing
// recognisable.
std::string describe_foreign_file(const char* data, std::size_t size);
extern template void SafeTensorsWriter::add<float>(const std::string&, const xt::xarray<float>&);
extern template void SafeTensorsWriter::add<double>(const std::string&, const xt::xarray<double>&);

// Float conversions used by the reader, public for their tests.
float f16_to_f32(std::uint16_t bits);   // IEEE binary16, subnormals, inf and NaN included
float bf16_to_f32(std::uint16_t bits);  // bfloat16: the top half of a binary32

}  // namespace tg::st
