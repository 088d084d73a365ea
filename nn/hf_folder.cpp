// nn/hf_folder.cpp — see nn/hf_folder.hpp.
#include "nn/hf_folder.hpp"

#include <algorithm>
#include <filesystem>
#include <set>
#include <stdexcept>

#include "nn/files.hpp"

namespace tg::nn {
namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) { throw std::runtime_error(where + ": " + what); }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Hugging Face buffers that are not parameters (Note [Hugging Face names]).
bool is_rotary_buffer(const std::string& name) { return ends_with(name, "rotary_emb.inv_freq"); }

bool exists_file(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

// "a, b, c and 4 more".
std::string some(const std::vector<std::string>& v, std::size_t n = 3) {
  std::string s;
  for (std::size_t i = 0; i < v.size() && i < n; ++i) s += (i ? ", " : "") + v[i];
  if (v.size() > n) s += " and " + std::to_string(v.size() - n) + " more";
  return s;
}

}  // namespace

bool is_hf_folder(const std::string& dir) {
  std::error_code ec;
  const fs::path d(dir);
  if (!fs::is_directory(d, ec)) return false;
  if (exists_file(d / "train.json")) return false;
  return exists_file(d / kHfConfigFile) && (exists_file(d / kHfWeightsFile) || exists_file(d / kHfIndexFile));
}

HfFolder HfFolder::open(const std::string& dir) {
  HfFolder f;
  f.dir_ = dir;
  const fs::path d(dir);
  std::error_code ec;
  if (!fs::exists(d, ec)) fail("--model " + dir, "does not exist");
  if (!fs::is_directory(d, ec))
    fail("--model " + dir, "is not a folder (a Hugging Face model folder holds config.json and model.safetensors)");

  // ---- config.json ----
  const std::string cfg = (d / kHfConfigFile).string();
  if (!exists_file(cfg)) fail(dir, "no config.json (a Hugging Face model folder holds config.json and its weights)");
  {
    ConfigReport r;
    try {
      r = read_config(cfg);
    } catch (const std::exception& e) {
      throw std::runtime_error(e.what());  // read_config names the path
    }
    f.config_ = r.config;
    f.accepted_ = r.accepted;
  }
  if (exists_file(d / kHfTokenizerFile)) f.tokenizer_ = (d / kHfTokenizerFile).string();

  // ---- the weight files ----
  const fs::path single = d / kHfWeightsFile, index = d / kHfIndexFile;
  const bool have_single = exists_file(single), have_index = exists_file(index);
  if (have_single && have_index)
    fail(dir, std::string("holds both ") + kHfWeightsFile + " and " + kHfIndexFile +
                  "; which are the weights? (remove one)");
  if (!have_single && !have_index) {
    std::string hint;
    for (const char* bin : {"pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin"})
      if (exists_file(d / bin))
        hint = std::string("; it holds ") + bin +
               ", a PyTorch pickle checkpoint, which tapegrad does not read (convert it to safetensors)";
    fail(dir, std::string("no weights: neither ") + kHfWeightsFile + " nor " + kHfIndexFile + hint);
  }

  std::map<std::string, std::string> listed;  // tensor -> shard name (index), or the file
  if (have_single) {
    f.files_.push_back(st::SafeTensorsFile::load(single.string()));
    for (const auto& n : f.files_[0].names()) listed[n] = kHfWeightsFile;
  } else {
    const std::string ipath = index.string();
    nlohmann::json j;
    try {
      j = parse_json_strict(io::read_file(ipath), ipath);  // duplicate names refused (named)
    } catch (const std::exception& e) {
      throw std::runtime_error(e.what());
    }
    if (!j.is_object()) fail(ipath, "must be a JSON object with \"weight_map\"");
    if (!j.contains("weight_map")) fail(ipath, "has no \"weight_map\" (the tensor -> shard table)");
    const auto& wm = j["weight_map"];
    if (!wm.is_object()) fail(ipath, "\"weight_map\" must be an object of tensor name -> shard file name");
    if (wm.empty()) fail(ipath, "\"weight_map\" lists no tensor");
    if (j.contains("metadata") && !j["metadata"].is_object()) fail(ipath, "\"metadata\" must be an object");
    std::set<std::string> shards;
    for (auto it = wm.begin(); it != wm.end(); ++it) {
      if (!it.value().is_string())
        fail(ipath, "weight_map[\"" + it.key() + "\"] must be a shard file name (a string), got " + it.value().dump());
      const std::string shard = it.value().get<std::string>();
      if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
          shard.find('\\') != std::string::npos)
        fail(ipath, "weight_map[\"" + it.key() + "\"] names '" + shard +
                        "', which is not a file name inside the folder");
      listed[it.key()] = shard;
      shards.insert(shard);
    }
    // Every shard exists (named with the tensors that need it), then is read and checked.
    for (const auto& shard : shards) {
      if (!exists_file(d / shard)) {
        std::vector<std::string> need;
        for (const auto& [n, s] : listed)
          if (s == shard) need.push_back(n);
        fail(ipath, "names shard " + shard + " (for " + some(need) + "), which is not in " + dir);
      }
    }
    for (const auto& shard : shards) f.files_.push_back(st::SafeTensorsFile::load((d / shard).string()));
  }

  // ---- every tensor where the index says, none elsewhere ----
  const std::string index_label = have_index ? index.string() : single.string();
  for (std::size_t i = 0; i < f.files_.size(); ++i) {
    const std::string shard = fs::path(f.files_[i].path()).filename().string();
    for (const auto& n : f.files_[i].names()) {
      const auto it = listed.find(n);
      if (it == listed.end()) fail(f.files_[i].path(), "holds tensor '" + n + "', which " + index_label + " does not list");
      if (it->second != shard)
        fail(f.files_[i].path(), "holds tensor '" + n + "', which " + index_label + " puts in " + it->second +
                                     " (a tensor stored twice)");
      f.where_[n] = i;
    }
  }
  for (const auto& [n, shard] : listed)
    if (!f.where_.count(n)) fail(index_label, "puts tensor '" + n + "' in " + shard + ", which does not hold it");
  for (const auto& sf : f.files_) f.file_bytes_ += fs::file_size(sf.path());

  // ---- tensors that are not parameters (Note [Hugging Face names]) ----
  for (auto it = f.where_.begin(); it != f.where_.end();) {
    if (is_rotary_buffer(it->first)) {
      f.skipped_.push_back(it->first + " (a RoPE buffer; the tables are computed from the config)");
      it = f.where_.erase(it);
    } else {
      ++it;
    }
  }
  if (f.config_.tie_word_embeddings) {
    const auto it = f.where_.find("lm_head.weight");
    if (it != f.where_.end()) {
      f.tied_head_file_ = f.files_[it->second].path();
      f.where_.erase(it);
    }
  }
  return f;
}

std::string HfFolder::notice() const {
  std::string s;
  if (!accepted_.empty()) {
    ConfigReport r;
    r.accepted = accepted_;
    s += r.notice(io::join(dir_, kHfConfigFile));
  }
  if (!skipped_.empty()) s += (s.empty() ? "" : "\n") + dir_ + ": skipped tensors that are not parameters: " + some(skipped_, 2);
  if (!tied_head_file_.empty())
    s += (s.empty() ? "" : "\n") + dir_ +
         ": lm_head.weight skipped: tie_word_embeddings is true and it equals model.embed_tokens.weight";
  return s;
}

std::vector<std::string> HfFolder::files() const {
  std::vector<std::string> out;
  for (const auto& f : files_) out.push_back(f.path());
  return out;
}

std::vector<std::string> HfFolder::names() const {
  std::vector<std::string> out;
  for (const auto& [n, i] : where_) out.push_back(n);
  return out;
}

const st::SafeTensorsFile& HfFolder::file(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) fail(dir_, "no tensor '" + name + "'");
  return files_[it->second];
}

Shape HfFolder::shape(const std::string& name) const { return file(name).shape(name); }
void HfFolder::check_float(const std::string& name) const { file(name).check_float(name); }
std::string HfFolder::file_of(const std::string& name) const { return file(name).path(); }

template <class T>
xt::xarray<T> HfFolder::get(const std::string& name) const {
  return file(name).template get<T>(name);
}

template <class T>
void HfFolder::read_into(const std::string& name, T* dst, std::size_t numel) const {
  file(name).template read_into<T>(name, dst, numel);
}

template <class T>
void HfFolder::load_into(CausalLM<T>& model) const {
  if (!tied_head_file_.empty()) {
    // Note [Hugging Face names]: a tied model's lm_head.weight must be the embedding.
    const st::SafeTensorsFile* head = nullptr;
    for (const auto& f : files_)
      if (f.path() == tied_head_file_) head = &f;
    const std::string emb = "model.embed_tokens.weight";
    if (!where_.count(emb)) fail(dir_, "has lm_head.weight but no " + emb);
    if (head->shape("lm_head.weight") != shape(emb) ||
        head->template get<T>("lm_head.weight") != get<T>(emb))
      fail(tied_head_file_, "lm_head.weight differs from " + emb + " but " + io::join(dir_, kHfConfigFile) +
                                " says tie_word_embeddings true (set it false to use a separate output layer)");
  }
  try {
    model.load_from(*this, dir_);
  } catch (const std::exception& e) {
    std::string hint;
    if (!config_.tie_word_embeddings && !contains("lm_head.weight"))
      hint = " (no lm_head.weight: should config.json say tie_word_embeddings true?)";
    throw std::runtime_error(std::string("the weights of ") + dir_ + " do not fit its config.json: " + e.what() + hint);
  }
}

template xt::xarray<float> HfFolder::get<float>(const std::string&) const;
template xt::xarray<double> HfFolder::get<double>(const std::string&) const;
template void HfFolder::read_into<float>(const std::string&, float*, std::size_t) const;
template void HfFolder::read_into<double>(const std::string&, double*, std::size_t) const;
template void HfFolder::load_into<float>(CausalLM<float>&) const;
template void HfFolder::load_into<double>(CausalLM<double>&) const;

}  // namespace tg::nn
