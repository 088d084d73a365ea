// nn/checkpoint.cpp — see checkpoint.hpp: checkpoints in safetensors files.
#include "nn/checkpoint.hpp"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include "nn/data.hpp"
#include "nn/files.hpp"
#include "nn/safetensors.hpp"

namespace tg::train {

namespace fs = std::filesystem;
using io::join;


namespace {

std::int64_t meta_int(const st::SafeTensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  if (it == f.metadata().end())
    throw std::runtime_error(f.path() + ": not a tapegrad checkpoint (no '" + key + "' in its metadata)");
  std::int64_t v = 0;
  auto r = std::from_chars(it->second.data(), it->second.data() + it->second.size(), v);
  if (r.ec != std::errc() || r.ptr != it->second.data() + it->second.size() || v < 0)
    throw std::runtime_error(f.path() + ": metadata '" + key + "' is not a count: '" + it->second + "'");
  return v;
}

std::string meta_str(const st::SafeTensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  if (it == f.metadata().end())
    throw std::runtime_error(f.path() + ": not a tapegrad optimizer checkpoint (no '" + key + "' in its metadata)");
  return it->second;
}

std::string shortest(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

template <class X>
bool all_finite(const X& a) {
  for (auto v : a)
    if (!std::isfinite(v)) return false;
  return true;
}

// The test-only hook of Note [Atomic checkpoints]: TAPEGRAD_TEST_FAIL_SAVE_AT=k ends the
// process (as a crash would, status 86) when the save reaches its stage k.
void test_fail_point(int stage) {
  static const int at = [] {
    const char* e = std::getenv("TAPEGRAD_TEST_FAIL_SAVE_AT");
    return e ? std::atoi(e) : 0;
  }();
  if (at == stage) ::_exit(86);
}

std::string step_name(std::int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%06lld", static_cast<long long>(step));
  return buf;
}

// "step-000123" -> 123; -1 for anything else (temporaries, strangers).
std::int64_t parse_step_name(const std::string& name) {
  if (name.size() < 6 || name.compare(0, 5, "step-") != 0) return -1;
  std::int64_t v = 0;
  auto r = std::from_chars(name.data() + 5, name.data() + name.size(), v);
  if (r.ec != std::errc() || r.ptr != name.data() + name.size() || v < 0) return -1;
  return v;
}

bool is_temporary(const std::string& name) { return name.find(".tmp.") != std::string::npos; }

}  // namespace

template <class T>
std::string first_non_finite(const nn::CausalLM<T>& model, const optim::Optimizer<T>& opt) {
  for (const auto& [name, value] : model.state_dict())
    if (!all_finite(value)) return "weight '" + name + "'";
  for (const auto& [name, value] : opt.state_dict())
    if (!all_finite(value)) return "optimizer state '" + name + "'";
  return "";
}

template <class T>
void save_checkpoint(const std::string& dir, const nn::CausalLM<T>& model, const optim::Optimizer<T>& opt,
                     const TrainState& state) {
  st::SafeTensorsWriter ow;
  for (const auto& [name, value] : opt.state_dict()) ow.add(name, value);
  ow.set_metadata("format", "tapegrad-optimizer");
  ow.set_metadata("step", std::to_string(state.step));
  ow.set_metadata("data_rng", state.data_rng);
  ow.set_metadata("elapsed_s", shortest(state.elapsed_s));
  ow.set_metadata("tokens_seen", std::to_string(state.tokens_seen));
  ow.write(join(dir, kOptimizerFile));
  test_fail_point(2);

  st::SafeTensorsWriter mw;
  for (const auto& [name, value] : model.state_dict()) mw.add(name, value);
  mw.set_metadata("format", "pt");  // what Hugging Face's loaders look for
  mw.set_metadata("step", std::to_string(state.step));
  mw.write(join(dir, kModelFile));
}

template <class T>
TrainState load_checkpoint(const std::string& dir, nn::CausalLM<T>& model, optim::Optimizer<T>& opt) {
  const std::string mpath = join(dir, kModelFile), opath = join(dir, kOptimizerFile);
  std::error_code ec;
  for (const auto& p : {mpath, opath})
    if (!fs::exists(p, ec)) throw std::runtime_error("no checkpoint: " + p + " does not exist");
  const st::SafeTensorsFile mf = st::SafeTensorsFile::load(mpath);
  const st::SafeTensorsFile of = st::SafeTensorsFile::load(opath);

  TrainState s;
  s.step = meta_int(of, "step");
  const std::int64_t mstep = meta_int(mf, "step");
  if (mstep != s.step)
    throw std::runtime_error("checkpoint in " + dir + " is inconsistent: " + kModelFile + " is at step " +
                             std::to_string(mstep) + ", " + kOptimizerFile + " at step " + std::to_string(s.step));
  s.data_rng = meta_str(of, "data_rng");
  {
    Generator probe;
    data::set_generator_state(probe, s.data_rng);  // throws for a damaged state
  }
  {
    const std::string e = meta_str(of, "elapsed_s");
    auto r = std::from_chars(e.data(), e.data() + e.size(), s.elapsed_s);
    if (r.ec != std::errc()) throw std::runtime_error(opath + ": metadata 'elapsed_s' is not a number");
  }
  s.tokens_seen = static_cast<std::uint64_t>(meta_int(of, "tokens_seen"));

  optim::StateDict<T> state;
  for (const auto& name : of.names()) state.emplace_back(name, of.template get<T>(name));
  for (const auto& [name, value] : state)
    if (!all_finite(value)) throw std::runtime_error(opath + ": '" + name + "' holds NaN or Inf (a diverged run)");
  for (const auto& name : mf.names())
    if (!all_finite(mf.template get<T>(name)))
      throw std::runtime_error(mpath + ": '" + name + "' holds NaN or Inf (a diverged run)");

  try {
    model.load_from(mf, mpath);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("the weights do not fit the model of config.json: ") + e.what());
  }
  try {
    opt.load_state_dict(state, /*strict=*/true);
  } catch (const std::exception& e) {
    throw std::runtime_error(opath + ": does not fit the model: " + e.what());
  }
  if (opt.step_count() != s.step)
    throw std::runtime_error(opath + ": its step tensor says " + std::to_string(opt.step_count()) +
                             ", its metadata " + std::to_string(s.step));
  return s;
}

template <class T>
void load_weights(const std::string& path, nn::CausalLM<T>& model) {
  const st::SafeTensorsFile f = st::SafeTensorsFile::load(path);
  try {
    model.load_from(f, path);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("the weights do not fit the model of the config: ") + e.what());
  }
}

// ---- the checkpoints of a run folder -------------------------------------------------------

std::vector<CheckpointInfo> list_checkpoints(const std::string& run_dir) {
  std::vector<CheckpointInfo> out;
  const fs::path root = fs::path(run_dir) / kCheckpointsDir;
  std::error_code ec;
  if (fs::is_directory(root, ec)) {
    for (const auto& e : fs::directory_iterator(root, ec)) {
      const std::string name = e.path().filename().string();
      const std::int64_t step = parse_step_name(name);
      if (step < 0 || !e.is_directory(ec)) continue;
      if (!fs::exists(e.path() / kManifestFile, ec)) continue;  // incomplete: no manifest yet
      out.push_back({step, e.path().string()});
    }
  }
  std::sort(out.begin(), out.end(), [](const CheckpointInfo& a, const CheckpointInfo& b) { return a.step > b.step; });
  // A run folder of the older layout: the two files beside config.json.
  if (out.empty() && fs::exists(fs::path(run_dir) / kModelFile, ec) && fs::exists(fs::path(run_dir) / kOptimizerFile, ec))
    out.push_back({-1, run_dir});
  return out;
}

std::string latest_checkpoint(const std::string& run_dir) {
  const auto all = list_checkpoints(run_dir);
  return all.empty() ? std::string() : all.front().path;
}

std::vector<std::string> clean_interrupted_saves(const std::string& run_dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  auto remove = [&](const fs::path& p) {
    std::error_code e2;
    if (fs::remove_all(p, e2) > 0 && !e2) removed.push_back(p.string());
  };
  if (fs::is_directory(run_dir, ec))
    for (const auto& e : fs::directory_iterator(run_dir, ec))
      if (is_temporary(e.path().filename().string())) remove(e.path());
  const fs::path root = fs::path(run_dir) / kCheckpointsDir;
  if (fs::is_directory(root, ec))
    for (const auto& e : fs::directory_iterator(root, ec)) {
      const std::string name = e.path().filename().string();
      if (is_temporary(name) || (parse_step_name(name) >= 0 && !fs::exists(e.path() / kManifestFile, ec)))
        remove(e.path());
    }
  return removed;
}

// Note [Atomic checkpoints]
// A checkpoint is one folder, checkpoints/step-NNNNNN/, complete or absent:
//   1. make checkpoints/step-NNNNNN.tmp.<pid>/            (a crash here leaves a temporary)
//   2. write optimizer.safetensors into it (fsync)
//   3. write model.safetensors (fsync)
//   4. write manifest.json last (the step and both sizes; fsync), fsync the folder
//   5. rename the folder to step-NNNNNN (one atomic rename), fsync checkpoints/
//   6. remove all but the newest `keep` complete folders
// A folder counts only when its name has no ".tmp." and it holds manifest.json, so a crash
// at any point leaves the previous checkpoint as the newest complete one; what a crash left
// (temporaries, a step folder without manifest) is removed at the next start
// (clean_interrupted_saves). TAPEGRAD_TEST_FAIL_SAVE_AT=k ends the process at stage k.
template <class T>
std::string save_run_checkpoint(const std::string& run_dir, const nn::CausalLM<T>& model,
                                const optim::Optimizer<T>& opt, const TrainState& state, int keep) {
  const std::string bad = first_non_finite(model, opt);
  if (!bad.empty())
    throw std::runtime_error("refusing to save a checkpoint at step " + std::to_string(state.step) + ": the " + bad +
                             " holds NaN or Inf");
  const fs::path root = fs::path(run_dir) / kCheckpointsDir;
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) throw std::runtime_error("cannot create " + root.string() + ": " + ec.message());
  const fs::path final_dir = root / step_name(state.step);
  const fs::path tmp = root / (step_name(state.step) + ".tmp." + std::to_string(::getpid()));
  fs::remove_all(tmp, ec);
  fs::create_directory(tmp, ec);
  if (ec) throw std::runtime_error("cannot create " + tmp.string() + ": " + ec.message());
  test_fail_point(1);
  save_checkpoint(tmp.string(), model, opt, state);  // stages 2 (optimizer) and 3 (model)
  test_fail_point(3);
  nlohmann::ordered_json m;
  m["format"] = "tapegrad-checkpoint";
  m["step"] = state.step;
  m["files"] = {{kModelFile, fs::file_size(tmp / kModelFile)}, {kOptimizerFile, fs::file_size(tmp / kOptimizerFile)}};
  io::write_file_atomic((tmp / kManifestFile).string(), m.dump(2) + "\n");
  io::fsync_dir(tmp.string());
  test_fail_point(4);
  if (fs::exists(final_dir, ec)) {  // a step saved again (a resume from an older one): set the old aside
    const fs::path old = root / (step_name(state.step) + ".old.tmp." + std::to_string(::getpid()));
    fs::remove_all(old, ec);
    fs::rename(final_dir, old, ec);
    if (ec) throw std::runtime_error("cannot move " + final_dir.string() + " aside: " + ec.message());
  }
  fs::rename(tmp, final_dir, ec);
  if (ec) throw std::runtime_error("cannot rename " + tmp.string() + " to " + final_dir.string() + ": " + ec.message());
  io::fsync_dir(root.string());
  test_fail_point(5);
  clean_interrupted_saves(run_dir);  // the folder set aside above, and nothing else when all went well
  const auto all = list_checkpoints(run_dir);
  for (std::size_t i = static_cast<std::size_t>(std::max(keep, 1)); i < all.size(); ++i)
    if (all[i].step >= 0) fs::remove_all(all[i].path, ec);
  test_fail_point(6);
  return final_dir.string();
}

namespace {
void check_manifest(const std::string& dir) {
  const std::string mp = join(dir, kManifestFile);
  const nlohmann::json m = io::read_json(mp);
  if (!m.is_object() || m.value("format", "") != "tapegrad-checkpoint" || !m.contains("files") ||
      !m["files"].is_object())
    throw std::runtime_error(mp + ": not a tapegrad checkpoint manifest");
  for (const auto& [file, size] : m["files"].items()) {
    std::error_code ec;
    const auto actual = fs::file_size(fs::path(dir) / file, ec);
    if (ec) throw std::runtime_error(mp + ": lists " + file + ", which is missing");
    if (!size.is_number_unsigned() || size.get<std::uint64_t>() != actual)
      throw std::runtime_error(mp + ": " + file + " should hold " + size.dump() + " bytes, it holds " +
                               std::to_string(actual));
  }
}
}  // namespace

template <class T>
TrainState load_latest_checkpoint(const std::string& run_dir, nn::CausalLM<T>& model, optim::Optimizer<T>& opt,
                                  std::string* used, std::vector<std::string>* skipped) {
  const auto all = list_checkpoints(run_dir);
  if (all.empty()) throw std::runtime_error("no checkpoint in " + run_dir);
  std::string why;
  for (const auto& c : all) {
    try {
      if (c.step >= 0) check_manifest(c.path);
      TrainState s = load_checkpoint(c.path, model, opt);
      if (c.step >= 0 && s.step != c.step)
        throw std::runtime_error(c.path + " holds step " + std::to_string(s.step));
      if (used) *used = c.path;
      return s;
    } catch (const std::exception& e) {
      if (skipped) skipped->push_back(e.what());
      why += std::string("\n  ") + e.what();
    }
  }
  throw std::runtime_error("no loadable checkpoint in " + run_dir + ":" + why);
}

template std::string first_non_finite<float>(const nn::CausalLM<float>&, const optim::Optimizer<float>&);
template std::string first_non_finite<double>(const nn::CausalLM<double>&, const optim::Optimizer<double>&);
template std::string save_run_checkpoint<float>(const std::string&, const nn::CausalLM<float>&,
                                                const optim::Optimizer<float>&, const TrainState&, int);
template std::string save_run_checkpoint<double>(const std::string&, const nn::CausalLM<double>&,
                                                 const optim::Optimizer<double>&, const TrainState&, int);
template TrainState load_latest_checkpoint<float>(const std::string&, nn::CausalLM<float>&, optim::Optimizer<float>&,
                                                  std::string*, std::vector<std::string>*);
template TrainState load_latest_checkpoint<double>(const std::string&, nn::CausalLM<double>&,
                                                   optim::Optimizer<double>&, std::string*, std::vector<std::string>*);

template void save_checkpoint<float>(const std::string&, const nn::CausalLM<float>&, const optim::Optimizer<float>&,
                                     const TrainState&);
template void save_checkpoint<double>(const std::string&, const nn::CausalLM<double>&,
                                      const optim::Optimizer<double>&, const TrainState&);
template TrainState load_checkpoint<float>(const std::string&, nn::CausalLM<float>&, optim::Optimizer<float>&);
template TrainState load_checkpoint<double>(const std::string&, nn::CausalLM<double>&, optim::Optimizer<double>&);
template void load_weights<float>(const std::string&, nn::CausalLM<float>&);
template void load_weights<double>(const std::string&, nn::CausalLM<double>&);

}  // namespace tg::train
