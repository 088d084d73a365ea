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
// Reading (SafeTensorsFile): the file is read into memory once and validated completely
// before load() returns; every malformed input throws std::runtime_error naming the file
// and the offending field or tensor, never crashes (a fuzz test checks this). Values are
// converted on get(): F64, F32, F16, BF16 and the integer types to float or double.
//
// Writing (SafeTensorsWriter): F32 (from float), F64 (from double), I64 (from int64).
// Note [safetensors layout]: the JSON header lists tensors in sorted name order (and
// "__metadata__" first); in the buffer, tensors are laid out by decreasing element size,
// then by name, so every tensor is aligned to its element size (the header is padded
// with spaces to a multiple of 8 bytes). The output is a pure function of the tensors
// added and the metadata: the same inputs give the same bytes.
//
// What it is not: a lazy or memory-mapped loader for models larger than memory, nor a
// writer of F16/BF16 (readers only), nor anything about torch.save / pickle files.
#pragma once

#include <cstdint>
#include <map>
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
  static SafeTensorsFile from_bytes(std::string bytes, const std::string& label = "<memory>");

  // Tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  // The tensor converted to T (float or double). Accepts F64, F32, F16, BF16 and the
  // integer dtypes (I64, I32, I16, I8, U64, U32, U16, U8, BOOL). Throws std::runtime_error
  // for a missing name (listing a few names that exist) or an unsupported dtype.
  template <class T>
  xt::xarray<T> get(const std::string& name) const;
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

  std::string path_;
  std::string bytes_;         // the whole file
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
extern template void SafeTensorsWriter::add<float>(const std::string&, const xt::xarray<float>&);
extern template void SafeTensorsWriter::add<double>(const std::string&, const xt::xarray<double>&);

// Float conversions used by the reader, public for their tests.
float f16_to_f32(std::uint16_t bits);   // IEEE binary16, subnormals, inf and NaN included
float bf16_to_f32(std::uint16_t bits);  // bfloat16: the top half of a binary32

}  // namespace tg::st
