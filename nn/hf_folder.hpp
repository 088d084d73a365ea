// nn/hf_folder.hpp — a Hugging Face model folder: config.json plus the weights, in one
// model.safetensors or in shards with their index.
//
// What it is for: `--model DIR` (sample, oracle, probe) and `train --init-from DIR` read
// the folders Hugging Face writes (save_pretrained, the Hub):
//
//   config.json                         the model config (nn/config.hpp reads HF keys)
//   model.safetensors                   every tensor, or, above a few GB:
//   model.safetensors.index.json        {"metadata": {...}, "weight_map": {name: shard}}
//   model-00001-of-0000N.safetensors    the shards the index names
//   tokenizer.json                      optional (nn/tokenizer.hpp)
//
// Note [Checking a sharded folder]
// Every tensor the index lists must be in the shard the index names; every tensor of every
// shard the index names must be listed, and listed for that shard (a tensor stored in two
// shards is a duplicate); a shard name must be a plain file name inside the folder; the
// index is JSON with no duplicate keys. Each violation is an error naming the tensor, the
// shard and the index file. Shards are memory-mapped (nn/safetensors.hpp), and load_into()
// converts each tensor (BF16, F16, F32, F64) straight into the model's parameter and then
// drops the pages it read, so a BF16 checkpoint loads holding the float parameters and not
// a second copy of the weights.
//
// Note [Hugging Face names]
// tapegrad's parameters already carry Hugging Face's names (nn/MODEL.md "Parameters";
// model.layers.N.self_attn.q_proj.weight, ..., lm_head.weight), so the map is the identity
// except for two things Hugging Face files may hold that are not parameters here:
//   - rotary_emb.inv_freq buffers (older transformers saved them): skipped, RoPE's tables
//     are computed from the config;
//   - lm_head.weight when tie_word_embeddings is true: skipped when it equals
//     model.embed_tokens.weight value for value (the tie holds), refused otherwise (the
//     file and the config disagree about the output layer).
// Every skipped tensor is listed in notice().
//
// What it is not: a writer of model folders (a run folder's model.safetensors is one
// file), nor a reader of PyTorch .bin checkpoints (told apart and refused by name).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>

#include "nn/config.hpp"
#include "nn/model.hpp"
#include "nn/safetensors.hpp"

namespace tg::nn {

inline constexpr const char* kHfConfigFile = "config.json";
inline constexpr const char* kHfWeightsFile = "model.safetensors";
inline constexpr const char* kHfIndexFile = "model.safetensors.index.json";
inline constexpr const char* kHfTokenizerFile = "tokenizer.json";

class HfFolder {
 public:
  // Reads config.json and checks the weight files completely (Note [Checking a sharded
  // folder]) without converting any tensor. Throws std::runtime_error naming the folder,
  // the file and the key or tensor.
  static HfFolder open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  // Lines for the user: config keys accepted without effect, tensors skipped (see Note
  // [Hugging Face names]); empty when there is nothing to say.
  std::string notice() const;
  // dir/tokenizer.json if the folder has one, else "".
  const std::string& tokenizer_path() const { return tokenizer_; }
  // The weight files (model.safetensors, or the shards in name order) and their total size.
  std::vector<std::string> files() const;
  std::uint64_t file_bytes() const { return file_bytes_; }

  // The tensors that map to parameters (skipped ones excluded), sorted; the interface
  // Module::load_from reads (names, shape, get, check_float, read_into).
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return where_.count(name) > 0; }
  Shape shape(const std::string& name) const;
  template <class T>
  xt::xarray<T> get(const std::string& name) const;
  void check_float(const std::string& name) const;
  template <class T>
  void read_into(const std::string& name, T* dst, std::size_t numel) const;
  // The file that holds a tensor (a path).
  std::string file_of(const std::string& name) const;

  // Loads every parameter of model (built from config(), or one of the same shapes).
  // Missing, unexpected and mis-shaped tensors are one error listing them all, naming the
  // folder; the tied lm_head check of Note [Hugging Face names] runs first.
  template <class T>
  void load_into(CausalLM<T>& model) const;

 private:
  const st::SafeTensorsFile& file(const std::string& name) const;

  std::string dir_;
  ModelConfig config_;
  std::vector<std::string> accepted_;  // config keys accepted without effect
  std::vector<std::string> skipped_;   // tensors skipped, with why
  std::string tokenizer_;
  std::vector<st::SafeTensorsFile> files_;
  std::map<std::string, std::size_t> where_;  // tensor -> index into files_
  std::string tied_head_file_;  // tied config with an lm_head.weight: the file holding it
  std::uint64_t file_bytes_ = 0;
};

// True when dir is a folder holding config.json and model.safetensors or the index (a
// run folder of `tapegrad train` holds train.json and is not one).
bool is_hf_folder(const std::string& dir);

extern template xt::xarray<float> HfFolder::get<float>(const std::string&) const;
extern template xt::xarray<double> HfFolder::get<double>(const std::string&) const;
extern template void HfFolder::read_into<float>(const std::string&, float*, std::size_t) const;
extern template void HfFolder::read_into<double>(const std::string&, double*, std::size_t) const;
extern template void HfFolder::load_into<float>(CausalLM<float>&) const;
extern template void HfFolder::load_into<double>(CausalLM<double>&) const;

}  // namespace tg::nn
