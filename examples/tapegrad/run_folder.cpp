// examples/tapegrad/run_folder.cpp — see run_folder.hpp: config.json and train.json.
#include "run_folder.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <stdexcept>

namespace tg::cli::run {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---- config.json -------------------------------------------------------------------------

void save_model_spec(const std::string& path, const ModelSpec& spec) {
  nlohmann::ordered_json j = spec.config.to_json();
  j["preset"] = spec.preset;
  write_file_atomic(path, j.dump(2) + "\n");
}

ModelSpec load_model_spec(const std::string& path) {
  json j = read_json(path);
  if (!j.is_object()) throw std::runtime_error(path + ": a config must be a JSON object");
  ModelSpec spec;
  spec.preset = "custom";
  if (j.contains("preset")) {
    if (!j["preset"].is_string()) throw std::runtime_error(path + ": field 'preset' must be a string");
    spec.preset = j["preset"].get<std::string>();
    j.erase("preset");
  }
  try {
    spec.config = nn::ModelConfig::from_json(j);
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  return spec;
}

// ---- train.json --------------------------------------------------------------------------

nlohmann::ordered_json to_json(const TrainArgs& a) {
  nlohmann::ordered_json j;
  j["preset"] = a.preset;
  j["size"] = a.size;
  j["config"] = a.config;
  j["data"] = a.data;
  j["val_fraction"] = a.val_fraction;
  j["steps"] = a.steps;
  j["batch"] = a.batch;
  j["seq_len"] = a.seq_len;
  j["lr"] = a.lr;
  j["warmup"] = a.warmup;
  j["min_lr"] = a.min_lr;
  j["weight_decay"] = a.weight_decay;
  j["clip"] = a.clip;
  j["beta1"] = a.beta1;
  j["beta2"] = a.beta2;
  j["seed"] = a.seed;
  j["threads"] = a.threads;
  j["ranks"] = a.ranks;
  j["eval_every"] = a.eval_every;
  j["eval_batches"] = a.eval_batches;
  j["save_every"] = a.save_every;
  j["dtype"] = a.dtype;
  j["data_bytes"] = a.data_bytes;
  j["data_fingerprint"] = a.data_fingerprint;
  j["bos_id"] = a.bos_id;
  j["doc_sep"] = a.doc_sep;
  j["diag_every"] = a.diag_every;
  j["diag_batches"] = a.diag_batches;
  j["init_from"] = a.init_from;
  j["tokenizer"] = a.tokenizer;
  j["tokenizer_hash"] = a.tokenizer_hash;
  return j;
}

TrainArgs train_args_from_json(const json& j, const std::string& label) {
  if (!j.is_object()) throw std::runtime_error(label + ": must be a JSON object");
  TrainArgs a;
  auto field = [&](const char* key) -> const json& {
    if (!j.contains(key)) throw std::runtime_error(label + ": missing field '" + key + "'");
    return j.at(key);
  };
  auto str = [&](const char* key, std::string& out) {
    const json& v = field(key);
    if (!v.is_string()) throw std::runtime_error(label + ": field '" + key + "' must be a string");
    out = v.get<std::string>();
  };
  auto num = [&](const char* key, double& out) {
    const json& v = field(key);
    if (!v.is_number()) throw std::runtime_error(label + ": field '" + key + "' must be a number");
    out = v.get<double>();
  };
  auto integer = [&](const char* key, auto& out) {
    const json& v = field(key);
    if (!v.is_number_integer()) throw std::runtime_error(label + ": field '" + key + "' must be an integer");
    using U = std::remove_reference_t<decltype(out)>;
    if (std::is_unsigned_v<U> && !v.is_number_unsigned())
      throw std::runtime_error(label + ": field '" + key + "' must be >= 0");
    out = v.get<U>();
  };
  str("preset", a.preset);
  str("size", a.size);
  str("config", a.config);
  str("data", a.data);
  num("val_fraction", a.val_fraction);
  integer("steps", a.steps);
  integer("batch", a.batch);
  integer("seq_len", a.seq_len);
  num("lr", a.lr);
  integer("warmup", a.warmup);
  num("min_lr", a.min_lr);
  num("weight_decay", a.weight_decay);
  num("clip", a.clip);
  num("beta1", a.beta1);
  num("beta2", a.beta2);
  integer("seed", a.seed);
  integer("threads", a.threads);
  integer("eval_every", a.eval_every);
  integer("eval_batches", a.eval_batches);
  integer("save_every", a.save_every);
  str("dtype", a.dtype);
  integer("data_bytes", a.data_bytes);
  str("data_fingerprint", a.data_fingerprint);
  // Added later (Note [BOS and document windows]): an older train.json has none of them.
  if (j.contains("bos_id")) integer("bos_id", a.bos_id);
  if (j.contains("doc_sep")) str("doc_sep", a.doc_sep);
  if (j.contains("diag_every")) integer("diag_every", a.diag_every);
  if (j.contains("diag_batches")) integer("diag_batches", a.diag_batches);
  if (j.contains("ranks")) integer("ranks", a.ranks);
  if (j.contains("init_from")) str("init_from", a.init_from);  // absent in older train.json: none
  if (j.contains("tokenizer")) str("tokenizer", a.tokenizer);  // absent in older train.json: bytes
  if (j.contains("tokenizer_hash")) str("tokenizer_hash", a.tokenizer_hash);
  if (a.tokenizer.empty() != a.tokenizer_hash.empty())
    throw std::runtime_error(label + ": fields 'tokenizer' and 'tokenizer_hash' go together");
  if (a.ranks < 1) throw std::runtime_error(label + ": field 'ranks' must be >= 1");
  if (a.bos_id < -1) throw std::runtime_error(label + ": field 'bos_id' must be -1 (none) or a token id");
  if (a.diag_every < 0 || a.diag_batches < 1)
    throw std::runtime_error(label + ": diag_every must be >= 0 and diag_batches >= 1");
  if (a.dtype != "f32" && a.dtype != "f64" && a.dtype != "bf16")
    throw std::runtime_error(label + ": field 'dtype' must be \"f32\", \"f64\" or \"bf16\"");
  if (a.steps < 1 || a.batch < 1 || a.seq_len < 1 || a.eval_batches < 1)
    throw std::runtime_error(label + ": steps, batch, seq_len and eval_batches must be >= 1");
  return a;
}

// ---- helpers -----------------------------------------------------------------------------

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.1fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
  return buf;
}

std::string executable_path() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  // Rebuilt while running (a study's parent outlives its build): the kernel names the old
  // file "<path> (deleted)"; the new file at the same path is the program to start.
  std::string s = p.string();
  const std::string deleted = " (deleted)";
  if (s.size() > deleted.size() && s.compare(s.size() - deleted.size(), deleted.size(), deleted) == 0) {
    const std::string fresh = s.substr(0, s.size() - deleted.size());
    if (fs::is_regular_file(fresh, ec)) return fresh;
  }
  return s;
}

}  // namespace tg::cli::run
