// examples/tapegrad/run_folder.cpp — see run_folder.hpp: run folder files, checkpoints,
// metrics, the gnuplot loss plot, and the sampler.
#include "run_folder.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "nn/safetensors.hpp"

extern char** environ;

namespace tg::cli::run {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

// ---- files -------------------------------------------------------------------------------

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  auto failed = [&](const std::string& what, int err) {
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot write " + path + ": " + what + ": " + std::strerror(err));
  };
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot write " + path + ": cannot create " + tmp + ": " + std::strerror(errno));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      failed("write", err);
    }
    done += static_cast<std::size_t>(w);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    failed("fsync", err);
  }
  if (::close(fd) != 0) failed("close", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) failed("rename", errno);
}

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw std::runtime_error(path + ": no such file");
  if (fs::is_directory(path, ec)) throw std::runtime_error(path + ": is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw std::runtime_error(path + ": read error");
  return ss.str();
}

json read_json(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw std::runtime_error(path + ": not valid JSON: " + e.what());
  }
}

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
  j["eval_every"] = a.eval_every;
  j["eval_batches"] = a.eval_batches;
  j["save_every"] = a.save_every;
  j["dtype"] = a.dtype;
  j["data_bytes"] = a.data_bytes;
  j["data_fingerprint"] = a.data_fingerprint;
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
  if (a.dtype != "f32" && a.dtype != "f64") throw std::runtime_error(label + ": field 'dtype' must be \"f32\" or \"f64\"");
  if (a.steps < 1 || a.batch < 1 || a.seq_len < 1 || a.eval_batches < 1)
    throw std::runtime_error(label + ": steps, batch, seq_len and eval_batches must be >= 1");
  return a;
}

// ---- metrics.csv -------------------------------------------------------------------------

namespace {

void put_number(std::string& out, double v) {
  if (std::isnan(v)) return;  // an empty field
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);  // shortest round-trip form
  out.append(buf, r.ptr);
}

std::vector<std::string> split_fields(const std::string& line) {
  std::vector<std::string> f;
  std::size_t b = 0;
  for (;;) {
    const std::size_t e = line.find(',', b);
    f.push_back(line.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  return f;
}

}  // namespace

std::string metrics_csv(const std::vector<MetricsRow>& rows) {
  std::string out = std::string(kMetricsHeader) + "\n";
  for (const auto& r : rows) {
    out += std::to_string(r.step);
    for (double v : {r.lr, r.train_loss, r.val_loss, r.val_bpb, r.tokens_per_s, r.elapsed_s, r.grad_norm}) {
      out += ',';
      put_number(out, v);
    }
    out += '\n';
  }
  return out;
}

std::vector<MetricsRow> parse_metrics_csv(const std::string& text, const std::string& label) {
  std::vector<MetricsRow> rows;
  std::istringstream in(text);
  std::string line;
  std::size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (lineno == 1) {
      if (line != kMetricsHeader)
        throw std::runtime_error(label + ": line 1 is not the metrics header '" + std::string(kMetricsHeader) + "'");
      continue;
    }
    if (line.empty()) continue;
    const auto f = split_fields(line);
    auto bad = [&](const std::string& why) {
      return std::runtime_error(label + ": line " + std::to_string(lineno) + ": " + why);
    };
    if (f.size() != 8) throw bad("expected 8 fields, found " + std::to_string(f.size()));
    MetricsRow r;
    {
      auto res = std::from_chars(f[0].data(), f[0].data() + f[0].size(), r.step);
      if (res.ec != std::errc() || res.ptr != f[0].data() + f[0].size()) throw bad("bad step '" + f[0] + "'");
    }
    double* dst[7] = {&r.lr, &r.train_loss, &r.val_loss, &r.val_bpb, &r.tokens_per_s, &r.elapsed_s, &r.grad_norm};
    for (int k = 0; k < 7; ++k) {
      const std::string& s = f[k + 1];
      if (s.empty()) {
        *dst[k] = kNone;
        continue;
      }
      auto res = std::from_chars(s.data(), s.data() + s.size(), *dst[k]);
      if (res.ec != std::errc() || res.ptr != s.data() + s.size()) throw bad("bad number '" + s + "'");
    }
    rows.push_back(r);
  }
  if (lineno == 0) throw std::runtime_error(label + ": empty (no header)");
  return rows;
}

// ---- the loss plot -----------------------------------------------------------------------

bool have_gnuplot() {
  const char* path = std::getenv("PATH");
  if (!path) return false;
  std::string p(path);
  std::size_t b = 0;
  for (;;) {
    const std::size_t e = p.find(':', b);
    std::string dir = p.substr(b, e == std::string::npos ? std::string::npos : e - b);
    if (dir.empty()) dir = ".";
    if (::access((dir + "/gnuplot").c_str(), X_OK) == 0) return true;
    if (e == std::string::npos) return false;
    b = e + 1;
  }
}

namespace {

// A gnuplot string literal (single quotes; a quote is doubled).
std::string gp_quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) {
    if (c == '\'') r += "''";
    else if (c == '\n') r += ' ';
    else r += c;
  }
  return r + "'";
}

}  // namespace

bool plot_loss(const std::vector<MetricsRow>& rows, const std::string& png_path, const std::string& title,
               std::string* why) {
  auto fail = [&](const std::string& w) {
    if (why) *why = w;
    return false;
  };
  if (rows.empty()) return fail("no metrics to plot");
  if (!have_gnuplot()) return fail("gnuplot is not installed (Debian: apt-get install gnuplot-nox)");
  const std::string tmp_png = png_path + ".tmp." + std::to_string(::getpid());
  const std::string script_path = png_path + ".gp.tmp." + std::to_string(::getpid());
  const std::string err_path = png_path + ".err.tmp." + std::to_string(::getpid());

  std::ostringstream s;
  s << "set terminal png size 960,540\n"
    << "set output " << gp_quote(tmp_png) << "\n"
    << "set title " << gp_quote(title) << " noenhanced\n"
    << "set xlabel 'step'\nset ylabel 'loss (nats per byte)'\n"
    << "set y2label 'bits per byte'\nset ytics nomirror\nset y2tics 0.5 format '%.1f'\n"
    << "set link y2 via y/log(2) inverse y*log(2)\n"
    << "set grid\nset key top right opaque box\n";
  s << "$train << EOD\n";
  bool any_val = false;
  for (const auto& r : rows) {
    if (std::isfinite(r.train_loss)) s << r.step << ' ' << r.train_loss << '\n';
    any_val = any_val || std::isfinite(r.val_loss);
  }
  s << "EOD\n";
  if (any_val) {
    s << "$val << EOD\n";
    for (const auto& r : rows)
      if (std::isfinite(r.val_loss)) s << r.step << ' ' << r.val_loss << '\n';
    s << "EOD\n";
  }
  s << "plot $train using 1:2 with lines lw 1 lc rgb '#6baed6' title 'train'";
  if (any_val) s << ", $val using 1:2 with linespoints lw 2 pt 7 ps 0.8 lc rgb '#d62728' title 'validation'";
  s << "\n";
  try {
    write_file_atomic(script_path, s.str());
  } catch (const std::exception& e) {
    return fail(e.what());
  }

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::string prog = "gnuplot";
  std::vector<char*> argv = {prog.data(), const_cast<char*>(script_path.c_str()), nullptr};
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, "gnuplot", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  int status = 0;
  if (rc == 0)
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  std::string err;
  try {
    err = read_file(err_path);
  } catch (...) {
  }
  ::unlink(script_path.c_str());
  ::unlink(err_path.c_str());
  if (rc != 0) {
    ::unlink(tmp_png.c_str());
    return fail(std::string("cannot run gnuplot: ") + std::strerror(rc));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    ::unlink(tmp_png.c_str());
    while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
    return fail("gnuplot failed" + (err.empty() ? std::string() : ": " + err));
  }
  if (::rename(tmp_png.c_str(), png_path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp_png.c_str());
    return fail("cannot rename the plot to " + png_path + ": " + std::strerror(e));
  }
  return true;
}

// ---- checkpoints -------------------------------------------------------------------------

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
  return ec ? std::string() : p.string();
}

}  // namespace tg::cli::run
