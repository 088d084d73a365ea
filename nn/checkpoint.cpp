// nn/checkpoint.cpp — see checkpoint.hpp: checkpoints in safetensors files.
#include "nn/checkpoint.hpp"

#include <charconv>
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

}  // namespace

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

template void save_checkpoint<float>(const std::string&, const nn::CausalLM<float>&, const optim::Optimizer<float>&,
                                     const TrainState&);
template void save_checkpoint<double>(const std::string&, const nn::CausalLM<double>&,
                                      const optim::Optimizer<double>&, const TrainState&);
template TrainState load_checkpoint<float>(const std::string&, nn::CausalLM<float>&, optim::Optimizer<float>&);
template TrainState load_checkpoint<double>(const std::string&, nn::CausalLM<double>&, optim::Optimizer<double>&);
template void load_weights<float>(const std::string&, nn::CausalLM<float>&);
template void load_weights<double>(const std::string&, nn::CausalLM<double>&);

}  // namespace tg::train
