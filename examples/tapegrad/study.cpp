// examples/tapegrad/study.cpp — `tapegrad study`: the gated-attention paper's measurements
// at small scale, on a CPU.
//
// What it is for: training a list of presets of the gating zoo on the same data, seed and
// token budget and writing a report folder (report.md and PNG plots) in the spirit of the
// paper's Tables 1 and 4: added parameters, validation loss and perplexity, first-token
// attention (F-Attn), massive activations (M-Act), gate scores and their sparsity, step
// time; plus two experiments:
//   --mode lr      learning-rate stability: the pair (baseline, g1_elementwise) at rising
//                  learning rates; loss spikes and divergence (study_analysis.hpp);
//   --mode length  length extrapolation: the pair trained at T, evaluated at T, 2T, 4T with
//                  plain RoPE and with YaRN (factor = length / T, original length T).
// `--mode all` (the default) does the three.
//
// How: every run is `tapegrad train` started as a child process (the same executable) into
// its own run folder <out>/runs/<preset>-lr<lr>, so training, checkpoints, metrics.csv and
// exact resume are train.cpp's. A run is identified by its preset and learning rate, so
// the main study's runs at the main learning rate double as the lr mode's and the length
// mode's runs. After training, this program loads each finished run and evaluates it
// (validation loss and the model's Diagnostics over fixed validation batches, the full
// gate scores for the histogram, study_probe.hpp), caching the numbers in
// <out>/results/<run>.json. Then it times one training step of every preset, interleaved,
// and writes <out>/report.md and the plots (gnuplot; skipped with a warning without it).
//
// Resuming: an interrupted study (Ctrl-C, SIGTERM, or --stop-at) is continued by the same
// command. Runs with a cached result are reused; a run folder holding a checkpoint is
// continued with `tapegrad train --resume`; a folder without a checkpoint starts over.
// The settings that define the runs are kept in <out>/study.json and a rerun with other
// settings into the same folder is refused (the runs would not be comparable).
//
// What it is not: a training loop (train.cpp), the model or its diagnostics (nn/), or a
// benchmark (bench/ measures speed on an idle machine; the step times here are only
// relative, measured side by side).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include "autograd/kernels/parallel.hpp"
#include "commands.hpp"
#include "flags.hpp"
#include "nn/data.hpp"
#include "nn/distributed.hpp"
#include <optional>
#include "nn/model.hpp"
#include "nn/plot.hpp"
#include "nn/signals.hpp"
#include "optim/optim.hpp"
#include "run_folder.hpp"
#include "study_analysis.hpp"
#include "study_probe.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using namespace tg;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
using study::fixed;
using study::sig3;

// ---- sizes -----------------------------------------------------------------------------------

// The study's own default size: small enough that the default study (12 runs) trains in well
// under an hour on 2 idle cores, big enough to have a few layers and heads to look at.
nn::ModelConfig study_size_config() {
  nn::ModelConfig c;
  c.vocab_size = 256, c.hidden_size = 128, c.intermediate_size = 384, c.num_hidden_layers = 4;
  c.num_attention_heads = 4, c.num_key_value_heads = 4, c.head_dim = 32, c.max_position_embeddings = 1024;
  c.validate();
  return c;
}

std::vector<std::string> study_size_names() {
  std::vector<std::string> v = {"study"};
  for (auto& n : nn::size_names()) v.push_back(n);
  return v;
}

// The base model of every run: the size with byte vocabulary and no gate.
nn::ModelConfig base_config(const std::string& size) {
  nn::ModelConfig c = size == "study" ? study_size_config() : nn::named_size(size);
  c.vocab_size = std::max<std::size_t>(c.vocab_size, data::ByteTokenizer::vocab_size);
  nn::apply_preset(c, "baseline");
  return c;
}

// ---- the settings ----------------------------------------------------------------------------

// What defines the runs (kept in <out>/study.json; a rerun must agree).
struct Settings {
  std::string size = "study";
  nn::ModelConfig base;
  std::string data;  // absolute path
  std::uint64_t data_bytes = 0;
  std::string fingerprint;
  double val_fraction = 0.05;
  std::int64_t steps = 1000, batch = 16, seq_len = 128, warmup = 50;
  double lr = 3e-3, weight_decay = 0.1, clip = 1.0;
  std::uint64_t seed = 1;
  std::int64_t eval_every = 50, train_eval_batches = 8, save_every = 200;
};

ojson to_json(const Settings& s) {
  ojson j;
  j["size"] = s.size;
  j["base_config"] = s.base.to_json();
  j["data"] = s.data;
  j["data_bytes"] = s.data_bytes;
  j["data_fingerprint"] = s.fingerprint;
  j["val_fraction"] = s.val_fraction;
  j["steps"] = s.steps;
  j["batch"] = s.batch;
  j["seq_len"] = s.seq_len;
  j["warmup"] = s.warmup;
  j["lr"] = s.lr;
  j["min_lr"] = "lr / 10";
  j["weight_decay"] = s.weight_decay;
  j["clip"] = s.clip;
  j["seed"] = s.seed;
  j["eval_every"] = s.eval_every;
  j["train_eval_batches"] = s.train_eval_batches;
  j["save_every"] = s.save_every;
  return j;
}

struct Options {
  Settings s;
  std::vector<std::string> presets = {"baseline",         "g1_elementwise", "g1_headwise",          "g2_elementwise",
                                      "g5_elementwise",   "g1_head_shared", "g1_input_independent", "g1_ns_sigmoid"};
  std::vector<std::string> pair = {"baseline", "g1_elementwise"};  // the lr and length modes compare these
  std::vector<double> lrs = {3e-3, 1e-2, 3e-2, 1e-1};
  std::vector<std::int64_t> length_factors = {1, 2, 4};
  std::string mode = "all";
  std::string out = "runs/study";
  int threads = 0;
  std::int64_t eval_batches = 16;  // validation batches of the final evaluation
  std::int64_t timing_rounds = 10;
  std::int64_t stop_at = 0;  // tests: stop every run at this step
  std::string command;       // this invocation, for the report

  bool main_mode() const { return mode == "main" || mode == "all"; }
  bool lr_mode() const { return mode == "lr" || mode == "all"; }
  bool length_mode() const { return mode == "length" || mode == "all"; }
};

std::uint64_t mix(std::uint64_t seed, std::uint64_t stream) {  // splitmix64 of seed and stream
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ull * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// The evaluation batches are the same for every run (a stream train.cpp does not use).
std::uint64_t eval_seed(const Settings& s) { return mix(s.seed, 101); }

std::string hex64(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string default_data_path() {
  std::vector<fs::path> tried = {fs::path("data") / "kjv.txt"};
  const std::string exe = cli::run::executable_path();
  if (!exe.empty()) tried.push_back(fs::path(exe).parent_path() / ".." / ".." / "data" / "kjv.txt");
  std::error_code ec;
  for (const auto& p : tried)
    if (fs::is_regular_file(p, ec)) return fs::weakly_canonical(p, ec).string();
  throw std::runtime_error(
      "no --data given and data/kjv.txt was not found: run `bash setup.sh` in the repository (it writes the King "
      "James Bible from Debian's bible-kjv package) or pass --data FILE");
}

// ---- the runs --------------------------------------------------------------------------------

struct RunSpec {
  std::string preset;
  double lr = 0;
  std::string name() const { return study::run_name(preset, lr); }
};

std::vector<RunSpec> plan_runs(const Options& o) {
  std::vector<RunSpec> runs;
  auto add = [&](const std::string& p, double lr) {
    for (auto& r : runs)
      if (r.preset == p && r.lr == lr) return;
    runs.push_back({p, lr});
  };
  if (o.main_mode())
    for (auto& p : o.presets) add(p, o.s.lr);
  if (o.length_mode())
    for (auto& p : o.pair) add(p, o.s.lr);
  if (o.lr_mode())
    for (double lr : o.lrs)
      for (auto& p : o.pair) add(p, lr);
  return runs;
}

std::string runs_dir(const Options& o) { return cli::run::join(o.out, "runs"); }
std::string run_dir(const Options& o, const RunSpec& r) { return cli::run::join(runs_dir(o), r.name()); }
std::string result_path(const Options& o, const RunSpec& r) {
  return cli::run::join(cli::run::join(o.out, "results"), r.name() + ".json");
}
std::string log_path(const Options& o, const RunSpec& r) {
  return cli::run::join(cli::run::join(o.out, "logs"), r.name() + ".log");
}

std::vector<cli::run::MetricsRow> read_metrics(const std::string& dir) {
  const std::string p = cli::run::join(dir, cli::run::kMetricsFile);
  std::error_code ec;
  if (!fs::exists(p, ec)) return {};
  return cli::run::parse_metrics_csv(cli::run::read_file(p), p);
}

// ---- signals and the child process -------------------------------------------------------------

// Ctrl-C (nn/signals.hpp): forwarded to the running `tapegrad train` (its own process
// group hears of it only from here): once, it finishes its step and saves; twice, it quits
// at once (train.cpp's rule). Between runs a second Ctrl-C quits the study at once.
constexpr const char* kStopMessage =
    "\ntapegrad study: interrupted: the current run saves a checkpoint; run the same command again to continue "
    "(press Ctrl-C again to quit at once)\n";

void install_signal_handlers() { signals::install_stop_handlers(kStopMessage); }

struct ChildExit {
  int code = -1;     // exit status, or -1 when killed by a signal
  int signal = 0;
  std::string tail;  // its last lines of output
};

// Runs `exe args...` with stdout and stderr into a pipe; every line (split at '\n' and '\r')
// is appended to log_file and handed to on_line.
ChildExit run_child(const std::string& exe, const std::vector<std::string>& args, const std::string& log_file,
                    const std::function<void(const std::string&)>& on_line) {
  std::vector<std::string> all = {exe};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);

  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error(std::string("cannot create a pipe: ") + std::strerror(errno));
  std::ofstream log(log_file, std::ios::app);
  log << "\n$ tapegrad";
  for (auto& a : args) log << ' ' << a;
  log << "\n" << std::flush;

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_addclose(&fa, fds[1]);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);  // its own process group (see kStopMessage)
  posix_spawnattr_setpgroup(&attr, 0);
  pid_t pid = 0;
  // Under mpirun a run is a one-process `train` of its own (Note [Study on many ranks]):
  // it must not see the launcher's variables, or it would take itself for a rank of the job.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    const std::string v = *e;
    if (v.rfind("OMPI_", 0) == 0 || v.rfind("PMIX_", 0) == 0 || v.rfind("PMI_", 0) == 0) continue;
    env_strings.push_back(v);
  }
  std::vector<char*> envp;
  for (auto& v : env_strings) envp.push_back(v.data());
  envp.push_back(nullptr);
  const int rc = posix_spawn(&pid, exe.c_str(), &fa, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    throw std::runtime_error("cannot start " + exe + ": " + std::strerror(rc));
  }
  signals::forward_to(pid);

  ChildExit ce;
  std::deque<std::string> tail;
  std::string line;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (ssize_t i = 0; i < n; ++i) {
      const char ch = buf[i];
      if (ch == '\n' || ch == '\r') {
        if (!line.empty()) {
          log << line << "\n";
          on_line(line);
          tail.push_back(line);
          if (tail.size() > 12) tail.pop_front();
          line.clear();
        }
      } else {
        line += ch;
      }
    }
    log << std::flush;
  }
  if (!line.empty()) log << line << "\n", on_line(line), tail.push_back(line);
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  signals::forward_to(0);
  if (WIFEXITED(status)) ce.code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) ce.signal = WTERMSIG(status);
  for (auto& t : tail) ce.tail += "  " + t + "\n";
  return ce;
}

// ---- the progress line -------------------------------------------------------------------------

class Progress {
 public:
  Progress() : tty_(::isatty(STDOUT_FILENO) == 1) {}
  // A progress update: overwritten on a terminal, every `every`-th update otherwise.
  void update(const std::string& text, bool print_anyway) {
    if (tty_) {
      const std::size_t pad = last_ > text.size() ? last_ - text.size() : 0;
      std::cout << '\r' << text << std::string(pad, ' ') << std::flush;
      last_ = text.size();
    } else if (print_anyway) {
      std::cout << text << "\n" << std::flush;
    }
  }
  void line(const std::string& text) {
    clear();
    std::cout << text << "\n" << std::flush;
  }
  void clear() {
    if (tty_ && last_) std::cout << '\r' << std::string(last_, ' ') << '\r' << std::flush;
    last_ = 0;
  }

 private:
  bool tty_;
  std::size_t last_ = 0;
};

enum class Outcome { Finished, Diverged, Stopped, Interrupted };

// Trains one run (or continues it, or finds it finished).
// "rank 1: " under mpirun with more than one rank (Note [Study on many ranks]), else "".
std::string rank_prefix() {
  const dist::Group w = dist::Group::world();
  return w.size() > 1 ? "rank " + std::to_string(w.rank()) + ": " : std::string();
}

Outcome train_run(const Options& o, const RunSpec& r, std::size_t index, std::size_t total, Progress& progress) {
  const Settings& s = o.s;
  const std::string dir = run_dir(o, r);
  const std::string label = rank_prefix() + "study " + std::to_string(index) + "/" + std::to_string(total) + " " + r.name();
  std::error_code ec;
  bool resume = fs::exists(cli::run::join(dir, cli::run::kTrainFile), ec);
  if (resume) {
    // The folder must hold this run, with a checkpoint to continue from.
    const std::string tj = cli::run::join(dir, cli::run::kTrainFile);
    const cli::run::TrainArgs a = cli::run::train_args_from_json(cli::run::read_json(tj), tj);
    std::string diff;
    auto check = [&](const char* what, bool same) {
      if (!same) diff += std::string(diff.empty() ? "" : ", ") + what;
    };
    check("preset", a.preset == r.preset);
    check("lr", a.lr == r.lr);
    check("steps", a.steps == s.steps);
    check("batch", a.batch == s.batch);
    check("seq-len", a.seq_len == s.seq_len);
    check("warmup", a.warmup == s.warmup);
    check("seed", a.seed == s.seed);
    check("data", a.data_fingerprint == s.fingerprint);
    if (!diff.empty())
      throw std::runtime_error("the run folder " + dir + " holds a run with other settings (" + diff +
                               "); use another --out");
    if (tg::train::latest_checkpoint(dir).empty()) {
      progress.line(label + ": the run folder has no checkpoint yet; starting the run over");
      fs::remove_all(dir, ec);
      resume = false;
    }
  }

  std::vector<std::string> args = {"train"};
  auto add = [&](const std::string& flag, const std::string& v) {
    args.push_back(flag);
    args.push_back(v);
  };
  auto num = [](double v) {
    std::ostringstream os;
    os << std::setprecision(17) << v;
    return os.str();
  };
  if (resume) {
    add("--resume", dir);
  } else {
    fs::create_directories(runs_dir(o), ec);
    add("--config", cli::run::join(o.out, "base_config.json"));
    add("--preset", r.preset);
    add("--data", s.data);
    add("--val-fraction", num(s.val_fraction));
    add("--steps", std::to_string(s.steps));
    add("--batch", std::to_string(s.batch));
    add("--seq-len", std::to_string(s.seq_len));
    add("--lr", num(r.lr));
    add("--min-lr", num(r.lr / 10));
    add("--warmup", std::to_string(s.warmup));
    add("--weight-decay", num(s.weight_decay));
    add("--clip", num(s.clip));
    add("--seed", std::to_string(s.seed));
    add("--eval-every", std::to_string(s.eval_every));
    add("--eval-batches", std::to_string(s.train_eval_batches));
    add("--save-every", std::to_string(s.save_every));
    add("--out", dir);
  }
  add("--threads", std::to_string(o.threads));
  add("--sample-len", "0");
  add("--log-every", "1");
  if (o.stop_at > 0) add("--stop-at", std::to_string(o.stop_at));

  progress.line(label + ": " + (resume ? "continuing the run in " : "training into ") + dir);
  const std::int64_t every = std::max<std::int64_t>(1, s.steps / 10);
  auto on_line = [&](const std::string& l) {
    long long step = 0, steps = 0;
    if (l.rfind("step ", 0) == 0 && std::sscanf(l.c_str(), "step %lld/%lld", &step, &steps) == 2) {
      const auto bar_end = l.find("] ");
      if (bar_end != std::string::npos) {  // "step N/M [###...] loss ..."
        const std::string text = label + ": step " + std::to_string(step) + "/" + std::to_string(steps) + " " +
                                 l.substr(bar_end + 2);
        progress.update(text, step % every == 0 || step == steps);
      } else if (l.find("val loss") != std::string::npos && (step % every == 0 || step == steps)) {
        progress.line(label + ": " + l);
      }
    } else if (l.find("error") != std::string::npos || l.find("warning") != std::string::npos ||
               l.find("diverged") != std::string::npos || l.find("already finished") != std::string::npos) {
      progress.line(label + ": " + l);
    }
  };
  fs::create_directories(cli::run::join(o.out, "logs"), ec);
  const ChildExit ce = run_child(cli::run::executable_path(), args, log_path(o, r), on_line);
  progress.clear();
  if (ce.code == 3) return Outcome::Diverged;
  if (ce.code == 130 || (ce.code < 0 && (ce.signal == SIGINT || ce.signal == SIGTERM)) || signals::stop_signal())
    return Outcome::Interrupted;
  if (ce.code != 0)
    throw std::runtime_error("`tapegrad train` failed for " + r.name() + " (" +
                             (ce.code >= 0 ? "exit status " + std::to_string(ce.code)
                                           : "killed by signal " + std::to_string(ce.signal)) +
                             "); its last lines:\n" + ce.tail + "full log: " + log_path(o, r));
  const auto rows = read_metrics(dir);
  if (rows.empty() || rows.back().step < s.steps) return Outcome::Stopped;
  return Outcome::Finished;
}

// ---- evaluation --------------------------------------------------------------------------------

constexpr std::size_t kHistBins = 100;
constexpr std::int64_t kHistBatches = 2;  // batches whose gate scores go into the histogram

json gate_json(const study::GatePool& g) {
  if (g.empty()) return nullptr;
  return {{"count", g.count},        {"mean", g.mean()}, {"std", g.std()}, {"min", g.min}, {"max", g.max},
          {"frac_below_1e2", g.frac_below_1e2()}, {"frac_below_1e3", g.frac_below_1e3()}};
}

double jnum(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_number()) return study::kNaN;
  return j[key].get<double>();
}

nn::CausalLM<float> load_run_model(const std::string& dir, const nn::ModelConfig* override_config = nullptr) {
  const auto spec = cli::run::load_model_spec(cli::run::join(dir, cli::run::kConfigFile));
  nn::CausalLM<float> model(override_config ? *override_config : spec.config);
  const std::string ck = tg::train::latest_checkpoint(dir);
  if (ck.empty()) throw std::runtime_error(dir + " holds no complete checkpoint");
  cli::run::load_weights(cli::run::join(ck, cli::run::kModelFile), model);
  model.eval();
  return model;
}

// Validation loss, the pooled Diagnostics and the gate-score histogram of a finished run.
json evaluate_run(const Options& o, const RunSpec& r, const data::Corpus& corpus) {
  const Settings& s = o.s;
  const json key = {{"eval_batches", o.eval_batches}, {"eval_seed", eval_seed(s)}, {"hist_batches", kHistBatches},
                    {"hist_bins", kHistBins}, {"steps", s.steps}};
  const std::string dir = run_dir(o, r);
  nn::CausalLM<float> model = load_run_model(dir);
  const data::Split parts = data::split(corpus, s.val_fraction, static_cast<std::size_t>(s.seq_len) + 1);
  const data::BatchSampler val(parts.val, static_cast<std::size_t>(s.batch), static_cast<std::size_t>(s.seq_len),
                               "the validation split");
  NoGrad no_grad;
  Generator gen(eval_seed(s));
  study::DiagnosticsPool pool;
  std::vector<double> hist(kHistBins, 0.0);
  double loss_sum = 0;
  for (std::int64_t b = 0; b < o.eval_batches; ++b) {
    const Index batch = val.next(gen);
    nn::Diagnostics d;
    loss_sum += static_cast<double>(model.loss(batch, &d).ce.item());
    pool.add(d);
    if (b < kHistBatches && model.config().gate.enabled() && !model.config().gate.is_probe())
      for (std::size_t l = 0; l < model.config().num_hidden_layers; ++l) {
        const auto p = study::probe_layer(model, batch, l);
        if (p.has_gate_scores) study::add_to_histogram(hist, p.gate_scores.data(), p.gate_scores.size(), 0.0, 1.0);
      }
  }
  json layers = json::array();
  for (const auto& l : pool.layers)
    layers.push_back({{"fattn", l.fattn()},
                      {"max_attn_output", l.max_attn_output},
                      {"max_attn_residual", l.max_attn_residual},
                      {"max_ffn_output", l.max_ffn_output},
                      {"max_ffn_residual", l.max_ffn_residual},
                      {"gate", gate_json(l.gate)}});
  json j;
  j["key"] = key;
  j["status"] = "finished";
  j["preset"] = r.preset;
  j["lr"] = r.lr;
  j["parameters"] = model.num_parameters();
  j["val_loss"] = loss_sum / double(o.eval_batches);
  j["fattn"] = pool.mean_fattn();
  j["mact"] = pool.mean_max_activation();
  j["mean_gate"] = pool.mean_gate_score();
  j["gate"] = gate_json(pool.gate());
  j["layers"] = layers;
  if (!pool.gate().empty()) j["gate_hist"] = hist;
  return j;
}

// Validation loss at T * factor for each factor, with plain RoPE and with YaRN.
json evaluate_length(const Options& o, const RunSpec& r, const data::Corpus& corpus) {
  const Settings& s = o.s;
  const std::string dir = run_dir(o, r);
  const auto spec = cli::run::load_model_spec(cli::run::join(dir, cli::run::kConfigFile));
  const data::Split parts = data::split(corpus, s.val_fraction, static_cast<std::size_t>(s.seq_len) + 1);
  NoGrad no_grad;
  json rope = json::array(), yarn = json::array(), lens = json::array();
  for (std::int64_t f : o.length_factors) {
    const std::size_t Ln = static_cast<std::size_t>(s.seq_len * f);
    // The same number of tokens at every length.
    const std::size_t B = std::max<std::size_t>(1, static_cast<std::size_t>(s.batch * s.seq_len) / Ln);
    const data::BatchSampler val(parts.val, B, Ln, "the validation split (length " + std::to_string(Ln) + ")");
    for (int use_yarn = 0; use_yarn < 2; ++use_yarn) {
      nn::ModelConfig c = spec.config;
      c.max_position_embeddings = std::max<std::size_t>(c.max_position_embeddings, Ln + 1);
      if (use_yarn) {
        YarnScaling y;
        y.factor = double(f);
        y.original_max_position_embeddings = double(s.seq_len);
        c.rope_scaling = y;
      }
      nn::CausalLM<float> model = load_run_model(dir, &c);
      Generator gen(eval_seed(s));  // at length T: the main evaluation's batches
      double sum = 0;
      for (std::int64_t b = 0; b < o.eval_batches; ++b) sum += double(model.loss(val.next(gen)).ce.item());
      (use_yarn ? yarn : rope).push_back(sum / double(o.eval_batches));
    }
    lens.push_back(Ln);
  }
  return {{"key", {{"factors", o.length_factors}, {"eval_batches", o.eval_batches}, {"length_seed", eval_seed(s)}}},
          {"lengths", lens},
          {"rope", rope},
          {"yarn", yarn}};
}

json read_json_or_null(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return nullptr;
  try {
    return cli::run::read_json(path);
  } catch (...) {
    return nullptr;  // a damaged cache is recomputed
  }
}

// ---- step time ---------------------------------------------------------------------------------

// Median seconds of one training step per preset, by the wall clock and by the process's
// CPU clock (all its threads). On a busy machine the wall clock also counts the time the
// threads wait for a core; the CPU clock counts only the work (with OMP_WAIT_POLICY=passive;
// spinning threads count as working).
struct StepTimes {
  std::map<std::string, double> wall, cpu;
};

double cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

double median(std::vector<double> v) {
  if (v.empty()) return study::kNaN;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// One training step (forward, backward, clipping, AdamW) of each preset, timed interleaved:
// every round times every preset once more, so a change in the machine's load touches all
// presets alike.
StepTimes time_steps(const Options& o, const data::Corpus& corpus) {
  const Settings& s = o.s;
  const data::Split parts = data::split(corpus, s.val_fraction, static_cast<std::size_t>(s.seq_len) + 1);
  const data::BatchSampler train(parts.train, static_cast<std::size_t>(s.batch), static_cast<std::size_t>(s.seq_len));
  Generator gen(mix(s.seed, 202));
  const Index batch = train.next(gen);
  std::map<std::string, std::vector<double>> wall, cpu;
  using clock = std::chrono::steady_clock;
  for (std::int64_t round = 0; round < o.timing_rounds; ++round)
    for (const auto& p : o.presets) {
      nn::CausalLM<float> model(nn::with_preset(s.base, p), s.seed);
      optim::AdamWOptions ao;
      ao.lr = s.lr, ao.beta1 = 0.9, ao.beta2 = 0.95, ao.weight_decay = s.weight_decay;
      optim::AdamW<float> opt(optim::make_param_groups(model.named_parameters(), s.weight_decay), ao);
      for (int i = 0; i < 3; ++i) {  // the first step warms the allocator and caches
        const auto t0 = clock::now();
        const double c0 = cpu_seconds();
        opt.zero_grad();
        model.loss(batch).loss.backward();
        optim::clip_grad_norm(opt.parameters(), s.clip);
        opt.step();
        if (i > 0) {
          wall[p].push_back(std::chrono::duration<double>(clock::now() - t0).count());
          cpu[p].push_back(cpu_seconds() - c0);
        }
      }
      if (signals::stop_signal()) throw std::runtime_error("interrupted");
    }
  StepTimes t;
  for (auto& [p, v] : wall) t.wall[p] = median(v);
  for (auto& [p, v] : cpu) t.cpu[p] = median(v);
  return t;
}

// ---- plots -------------------------------------------------------------------------------------

using plot::datablock;
using plot::gnuplot_png;
std::string gp_quote(const std::string& s) { return plot::quote(s); }

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                         "#7f7f7f", "#bcbd22"};
std::string color(std::size_t i) { return std::string("rgb '") + kColors[i % 10] + "'"; }

// ---- the report --------------------------------------------------------------------------------

// The paper's values (15B MoE, nn/MODEL.md "Diagnostics").
struct PaperRow {
  const char* preset;
  double fattn, mact, gate;
};
const PaperRow kPaper[] = {{"baseline", 0.467, 1053, study::kNaN},
                           {"g1_elementwise", 0.048, 94, 0.116},
                           {"g1_headwise", 0.073, 98, 0.172}};

struct RunResult {
  RunSpec spec;
  Outcome outcome = Outcome::Finished;
  json eval;    // evaluate_run's numbers (null when diverged)
  json length;  // evaluate_length's (null unless the length mode ran)
  std::vector<cli::run::MetricsRow> metrics;
  study::SpikeReport spikes;
  std::int64_t nan_step = 0;  // the step whose loss was NaN (train stopped there), or 0
  bool ok() const { return outcome == Outcome::Finished && eval.is_object(); }
};

struct Report {
  std::ostringstream md;
  std::vector<std::string> plots_failed;
  bool warned = false;
  void plot(const std::string& body, const std::string& png, int w, int h) {
    std::string why;
    if (gnuplot_png(body, png, w, h, &why)) return;
    if (!warned) std::cerr << "tapegrad study: warning: no plots: " << why << "\n";
    warned = true;
    plots_failed.push_back(fs::path(png).filename().string());
  }
};

std::string md_escape(const std::string& s) {
  std::string r;
  for (char c : s) r += c == '_' ? std::string("\\_") : std::string(1, c);
  return r;
}

void write_main_section(const Options& o, const std::map<std::string, RunResult*>& by_preset, Report& rep,
                        const StepTimes& step_time) {
  const Settings& s = o.s;
  auto& md = rep.md;
  auto get = [](const std::map<std::string, double>& m, const std::string& p) {
    return m.count(p) ? m.at(p) : study::kNaN;
  };
  const double base_wall = get(step_time.wall, "baseline"), base_cpu = get(step_time.cpu, "baseline");
  auto ratio = [](double t, double base) {
    return std::isfinite(base) && std::isfinite(t) ? fixed(t / base, 2) + "x" : fixed(t * 1e3, 1) + " ms";
  };
  md << "## Main table (paper Tables 1 and 4)\n\n"
     << "All presets trained on the same data, seed and token budget (" << s.steps << " steps of " << s.batch << " x "
     << s.seq_len << " tokens, lr " << study::format_lr(s.lr) << "). Validation numbers are over " << o.eval_batches
     << " fixed validation batches (" << o.eval_batches * s.batch * s.seq_len
     << " tokens), the same for every preset. PPL is per byte (exp of the loss).\n\n"
     << "| preset | added params | val loss | PPL | F-Attn | M-Act | mean gate | gate < 1e-2 | gate < 1e-3 | step time "
        "(wall) | step time (CPU) |\n"
     << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& p : o.presets) {
    const RunResult* r = by_preset.count(p) ? by_preset.at(p) : nullptr;
    md << "| " << md_escape(p) << " | " << study::signed_count(nn::preset_extra_parameters(s.base, p)) << " | ";
    if (!r || !r->ok()) {
      md << (r && r->outcome == Outcome::Diverged ? "diverged" : "not run") << " | | | | | | | | |\n";
      continue;
    }
    const json& e = r->eval;
    const json& g = e["gate"];
    md << fixed(jnum(e, "val_loss"), 4) << " | " << fixed(std::exp(jnum(e, "val_loss")), 3) << " | "
       << fixed(jnum(e, "fattn"), 3) << " | " << sig3(jnum(e, "mact")) << " | " << fixed(jnum(e, "mean_gate"), 3)
       << " | " << study::percent(jnum(g, "frac_below_1e2")) << " | " << study::percent(jnum(g, "frac_below_1e3"))
       << " | " << ratio(get(step_time.wall, p), base_wall) << " | " << ratio(get(step_time.cpu, p), base_cpu)
       << " |\n";
  }
  md << "\nF-Attn: attention probability on the first token, averaged over batch, heads, query positions 1..T-1 "
        "and layers. M-Act: max |h| of each layer's output (its ffn residual), the largest over the validation "
        "batches, averaged over layers. Gate columns: the activated gate scores of every layer and token (G1 "
        "input-independent: the H x D values of sigmoid(theta)). Step time: the median time of one training step "
        "(forward, backward, clipping, AdamW) by the wall clock and by the process's CPU clock (all threads), "
        "measured interleaved over "
     << o.timing_rounds << " rounds at the end of the study, relative to baseline";
  if (std::isfinite(base_wall))
    md << " (" << fixed(base_wall * 1e3, 1) << " ms wall, " << fixed(base_cpu * 1e3, 1) << " ms CPU)";
  md << "; on a busy machine the CPU clock is the steadier of the two (bench/ measures speed properly).\n\n";

  // Per-layer tables.
  std::size_t L = s.base.num_hidden_layers;
  md << "### Per layer\n\nF-Attn per layer:\n\n| preset |";
  for (std::size_t l = 0; l < L; ++l) md << " L" << l << " |";
  md << "\n|---|";
  for (std::size_t l = 0; l < L; ++l) md << "---:|";
  md << "\n";
  for (const auto& p : o.presets) {
    const RunResult* r = by_preset.count(p) ? by_preset.at(p) : nullptr;
    if (!r || !r->ok()) continue;
    md << "| " << md_escape(p) << " |";
    for (const auto& l : r->eval["layers"]) md << " " << fixed(jnum(l, "fattn"), 3) << " |";
    md << "\n";
  }
  md << "\nmax |h| per layer of the layer output (attn\\_output / attn\\_residual / ffn\\_output / ffn\\_residual "
        "as maxima over layers in the last columns):\n\n| preset |";
  for (std::size_t l = 0; l < L; ++l) md << " L" << l << " |";
  md << " attn_output | attn_residual | ffn_output | ffn_residual |\n|---|";
  for (std::size_t l = 0; l < L + 4; ++l) md << "---:|";
  md << "\n";
  for (const auto& p : o.presets) {
    const RunResult* r = by_preset.count(p) ? by_preset.at(p) : nullptr;
    if (!r || !r->ok()) continue;
    md << "| " << md_escape(p) << " |";
    double mx[4] = {0, 0, 0, 0};
    const char* keys[4] = {"max_attn_output", "max_attn_residual", "max_ffn_output", "max_ffn_residual"};
    for (const auto& l : r->eval["layers"]) {
      md << " " << sig3(jnum(l, "max_ffn_residual")) << " |";
      for (int k = 0; k < 4; ++k) mx[k] = std::max(mx[k], jnum(l, keys[k]));
    }
    for (double v : mx) md << " " << sig3(v) << " |";
    md << "\n";
  }
  md << "\n";

  // ---- plots ----
  {  // validation loss curves
    std::ostringstream gp;
    std::ostringstream plot;
    std::size_t i = 0;
    double ytop = 0;  // the y range starts at the fifth of the run: the early drop would flatten the rest
    for (const auto& p : o.presets) {
      const RunResult* r = by_preset.count(p) ? by_preset.at(p) : nullptr;
      if (!r) continue;
      std::vector<std::vector<double>> rows;
      bool first_late = true;
      for (auto& m : r->metrics)
        if (std::isfinite(m.val_loss)) {
          rows.push_back({double(m.step), m.val_loss});
          if (m.step >= s.steps / 5 && first_late) ytop = std::max(ytop, m.val_loss), first_late = false;
        }
      if (rows.empty()) continue;
      gp << datablock("d" + std::to_string(i), rows);
      plot << (plot.tellp() ? ", " : "plot ") << "$d" << i << " using 1:2 with lines lw 2 lc " << color(i)
           << " title " << gp_quote(p);
      ++i;
    }
    if (i) {
      gp << "set title 'validation loss (" << s.steps << " steps of " << s.batch << "x" << s.seq_len
         << ")' noenhanced\nset xlabel 'step'\nset ylabel 'loss (nats per byte)'\nset grid\nset key top right "
            "noenhanced\n";
      if (ytop > 0) gp << "set yrange [*:" << ytop << "]\n";
      gp << plot.str() << "\n";
      rep.plot(gp.str(), cli::run::join(o.out, "val_loss.png"), 800, 450);
    }
  }
  {  // F-Attn and M-Act per layer
    std::ostringstream gp, p1, p2;
    std::size_t i = 0;
    for (const auto& p : o.presets) {
      const RunResult* r = by_preset.count(p) ? by_preset.at(p) : nullptr;
      if (!r || !r->ok()) continue;
      std::vector<std::vector<double>> rows;
      std::size_t l = 0;
      for (const auto& ly : r->eval["layers"]) rows.push_back({double(l++), jnum(ly, "fattn"), jnum(ly, "max_ffn_residual")});
      gp << datablock("d" + std::to_string(i), rows);
      p1 << (p1.tellp() ? ", " : "plot ") << "$d" << i << " using 1:2 with linespoints lw 2 pt 7 lc " << color(i)
         << " title " << gp_quote(p);
      p2 << (p2.tellp() ? ", " : "plot ") << "$d" << i << " using 1:3 with linespoints lw 2 pt 7 lc " << color(i)
         << " notitle";
      ++i;
    }
    if (i) {
      gp << "set multiplot layout 1,2\nset grid\nset xlabel 'layer'\nset xtics 1\nset key bottom left noenhanced\n"
         << "set title 'F-Attn: attention on the first token'\nset ylabel 'probability'\nset yrange [0:*]\n"
         << p1.str() << "\nset title 'M-Act: max |layer output|'\nset ylabel 'max |h|'\nset yrange [0:*]\n"
         << p2.str() << "\nunset multiplot\n";
      rep.plot(gp.str(), cli::run::join(o.out, "layers.png"), 1000, 420);
    }
  }
  {  // gate-score histogram
    std::ostringstream gp, plot;
    std::size_t i = 0;
    for (const auto& p : o.presets) {
      const RunResult* r = by_preset.count(p) ? by_preset.at(p) : nullptr;
      if (!r || !r->ok() || !r->eval.contains("gate_hist")) continue;
      const auto counts = r->eval["gate_hist"].get<std::vector<double>>();
      double total = 0;
      for (double c : counts) total += c;
      std::vector<std::vector<double>> rows;
      for (std::size_t b = 0; b < counts.size(); ++b)
        rows.push_back({(double(b) + 0.5) / double(counts.size()), total ? counts[b] / total : 0.0});
      gp << datablock("d" + std::to_string(i), rows);
      plot << (plot.tellp() ? ", " : "plot ") << "$d" << i << " using 1:2 with histeps lw 2 lc " << color(i)
           << " title " << gp_quote(p);
      ++i;
    }
    if (i) {
      gp << "set title 'gate scores (all layers, " << kHistBatches
         << " validation batches; bins of 0.01)'\nset xlabel 'gate score'\nset ylabel 'fraction of scores'\nset "
            "grid\nset key top right noenhanced\nset xrange [0:1]\nset yrange [0:*]\n"
         << plot.str() << "\n";
      rep.plot(gp.str(), cli::run::join(o.out, "gate_hist.png"), 800, 450);
    }
  }
}

// The heat map: baseline vs g1_elementwise, the same layer and head (the baseline's most
// first-token-heavy head), on the first validation sequence.
void write_heatmap(const Options& o, const std::map<std::string, RunResult*>& by_preset, const data::Corpus& corpus,
                   Report& rep) {
  const Settings& s = o.s;
  auto& md = rep.md;
  if (!by_preset.count("baseline") || !by_preset.count("g1_elementwise") || !by_preset.at("baseline")->ok() ||
      !by_preset.at("g1_elementwise")->ok())
    return;
  const data::Split parts = data::split(corpus, s.val_fraction, static_cast<std::size_t>(s.seq_len) + 1);
  const data::BatchSampler one(parts.val, 1, static_cast<std::size_t>(s.seq_len), "the validation split");
  Generator gen(eval_seed(s));
  const Index seq = one.next(gen);  // (1, T+1)
  const RunSpec base_spec{"baseline", s.lr}, gate_spec{"g1_elementwise", s.lr};
  nn::CausalLM<float> base = load_run_model(run_dir(o, base_spec));
  nn::CausalLM<float> gated = load_run_model(run_dir(o, gate_spec));
  std::size_t best_layer = 0;
  std::int64_t best_head = 0;
  double best = -1;
  std::vector<study::LayerProbe<float>> base_probes;
  for (std::size_t l = 0; l < base.config().num_hidden_layers; ++l) {
    base_probes.push_back(study::probe_layer(base, seq, l));
    for (std::size_t h = 0; h < base.config().num_attention_heads; ++h) {
      const double f = study::first_token_attention(base_probes.back().probs, std::int64_t(h));
      if (f > best) best = f, best_layer = l, best_head = std::int64_t(h);
    }
  }
  const auto gp_probe = study::probe_layer(gated, seq, best_layer);
  const double gated_f = study::first_token_attention(gp_probe.probs, best_head);
  const std::size_t n = std::min<std::size_t>(64, seq.shape()[1]);
  auto matrix = [&](const xt::xarray<float>& probs) {
    const std::size_t Tn = probs.shape()[3];
    std::vector<std::vector<double>> rows;
    for (std::size_t i = 0; i < n; ++i) {
      std::vector<double> r;
      for (std::size_t j = 0; j < n; ++j) r.push_back(double(probs.data()[(std::size_t(best_head) * Tn + i) * Tn + j]));
      rows.push_back(r);
    }
    return rows;
  };
  std::ostringstream gp;
  gp << datablock("a", matrix(base_probes[best_layer].probs)) << datablock("b", matrix(gp_probe.probs))
     << "set multiplot layout 1,2\nset xlabel 'key position'\nset ylabel 'query position'\nset yrange [" << n
     << "-0.5:-0.5]\nset xrange [-0.5:" << n << "-0.5]\nset cbrange [0:1]\nset palette defined (0 'white', 0.15 "
     << "'#9ecae1', 0.5 '#3182bd', 1 '#08306b')\nset size ratio -1\n"
     << "set title 'baseline, layer " << best_layer << " head " << best_head << " (F-Attn " << fixed(best, 2)
     << ")'\nplot $a matrix with image notitle\n"
     << "set title 'g1\\_elementwise, layer " << best_layer << " head " << best_head << " (F-Attn "
     << fixed(gated_f, 2) << ")'\nplot $b matrix with image notitle\nunset multiplot\n";
  rep.plot(gp.str(), cli::run::join(o.out, "attention_heatmap.png"), 1000, 460);
  md << "### Attention maps\n\nLayer " << best_layer << ", head " << best_head
     << " (the baseline head with the most attention on the first token), first " << n
     << " positions of one validation sequence; F-Attn of this head on the whole sequence: baseline " << fixed(best, 3)
     << ", g1\\_elementwise " << fixed(gated_f, 3) << ".\n\n![attention maps](attention_heatmap.png)\n\n";
}

void write_lr_section(const Options& o, const std::vector<RunResult>& results, Report& rep) {
  const Settings& s = o.s;
  auto& md = rep.md;
  md << "## Learning-rate stability\n\n"
     << md_escape(o.pair[0]) << " vs " << md_escape(o.pair[1]) << " at rising peak learning rates (warm-up " << s.warmup
     << " steps, cosine decay to lr/10, clipping at " << s.clip
     << "). A spike is a training loss above 1.3x its running minimum after the warm-up (consecutive spike steps "
        "count once); a run diverged when its loss became NaN or, after the warm-up, rose above its initial value. Val "
        "loss, F-Attn and M-Act as in the main table (the same validation batches).\n\n"
     << "| preset | lr | spikes | spike steps | diverged | min train loss | final train loss | val loss | F-Attn | "
        "M-Act |\n"
     << "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|\n";
  std::ostringstream gp, p1, p2;
  std::size_t i = 0;
  double ymax = 0;
  for (double lr : o.lrs)
    for (std::size_t pi = 0; pi < o.pair.size(); ++pi) {
      const std::string& p = o.pair[pi];
      const RunResult* r = nullptr;
      for (auto& x : results)
        if (x.spec.preset == p && x.spec.lr == lr) r = &x;
      if (!r) continue;
      const auto& sp = r->spikes;
      std::string div = "no";
      if (r->nan_step) div = "NaN at step " + std::to_string(r->nan_step);
      else if (sp.diverged) div = "step " + std::to_string(sp.diverged_step) + " (" + sp.why + ")";
      double last_val = study::kNaN;
      for (auto& m : r->metrics)
        if (std::isfinite(m.val_loss)) last_val = m.val_loss;
      md << "| " << md_escape(p) << " | " << study::format_lr(lr) << " | " << sp.spikes << " | " << sp.spike_steps
         << " | " << div << " | " << fixed(sp.minimum, 3) << " | "
         << (r->metrics.empty() ? "—" : fixed(r->metrics.back().train_loss, 3)) << " | "
         << (r->ok() ? fixed(jnum(r->eval, "val_loss"), 4) : r->outcome == Outcome::Finished ? fixed(last_val, 4) : "—")
         << " | " << (r->ok() ? fixed(jnum(r->eval, "fattn"), 3) : "—") << " | "
         << (r->ok() ? sig3(jnum(r->eval, "mact")) : "—") << " |\n";
      std::vector<std::vector<double>> rows;
      for (auto& m : r->metrics) rows.push_back({double(m.step), m.train_loss});
      if (!rows.empty()) ymax = std::max(ymax, rows.front()[1]);
      gp << datablock("d" + std::to_string(i), rows);
      std::ostringstream& pl = pi == 0 ? p1 : p2;
      std::size_t li = 0;
      while (li < o.lrs.size() && o.lrs[li] != lr) ++li;
      pl << (pl.tellp() ? ", " : "plot ") << "$d" << i << " using 1:2 with lines lw 1 lc " << color(li)
         << " title 'lr " << study::format_lr(lr) << "'";
      ++i;
    }
  md << "\n![training loss at rising learning rates](lr_stability.png)\n\n";
  if (i && p1.tellp() && p2.tellp()) {
    gp << "set multiplot layout 1,2\nset grid\nset xlabel 'step'\nset ylabel 'training loss'\n"
       << "set yrange [*:" << (ymax > 0 ? ymax * 1.05 : 6.0) << "]\nset key top right\n"
       << "set title " << gp_quote(o.pair[0]) << " noenhanced\n"
       << p1.str() << "\nset title " << gp_quote(o.pair[1]) << " noenhanced\n"
       << p2.str() << "\nunset multiplot\n";
    rep.plot(gp.str(), cli::run::join(o.out, "lr_stability.png"), 1000, 420);
  }
}

void write_length_section(const Options& o, const std::vector<RunResult>& results, Report& rep) {
  const Settings& s = o.s;
  auto& md = rep.md;
  md << "## Length extrapolation\n\nTrained at T = " << s.seq_len
     << "; validation loss (mean over all positions, " << o.eval_batches
     << " batches of the same number of tokens at every length; at T the main table's batches) with plain RoPE and with YaRN (factor = length / T, "
        "original_max_position_embeddings = T; at length T it equals plain RoPE).\n\n| preset | RoPE |";
  for (auto f : o.length_factors) md << " " << f * s.seq_len << " |";
  md << " YaRN |";
  for (auto f : o.length_factors) md << " " << f * s.seq_len << " |";
  md << "\n|---|---|";
  for (std::size_t k = 0; k < o.length_factors.size(); ++k) md << "---:|";
  md << "---|";
  for (std::size_t k = 0; k < o.length_factors.size(); ++k) md << "---:|";
  md << "\n";
  std::ostringstream gp, plot;
  std::size_t i = 0;
  for (const auto& p : o.pair) {
    const RunResult* r = nullptr;
    for (auto& x : results)
      if (x.spec.preset == p && x.spec.lr == s.lr) r = &x;
    if (!r || !r->length.is_object()) {
      md << "| " << md_escape(p) << " | not run | | | |\n";
      continue;
    }
    const auto lens = r->length["lengths"].get<std::vector<double>>();
    const auto rope = r->length["rope"].get<std::vector<double>>();
    const auto yarn = r->length["yarn"].get<std::vector<double>>();
    md << "| " << md_escape(p) << " | |";
    for (double v : rope) md << " " << fixed(v, 4) << " |";
    md << " |";
    for (double v : yarn) md << " " << fixed(v, 4) << " |";
    md << "\n";
    std::vector<std::vector<double>> rows;
    for (std::size_t k = 0; k < lens.size(); ++k) rows.push_back({lens[k], rope[k], yarn[k]});
    gp << datablock("d" + std::to_string(i), rows);
    plot << (plot.tellp() ? ", " : "plot ") << "$d" << i << " using 1:2 with linespoints lw 2 pt 7 lc " << color(i)
         << " title " << gp_quote(p + " RoPE") << ", $d" << i << " using 1:3 with linespoints lw 2 dt 2 pt 5 lc "
         << color(i) << " title " << gp_quote(p + " YaRN");
    ++i;
  }
  md << "\n![validation loss against evaluation length](length.png)\n\n";
  if (i) {
    gp << "set title 'trained at T = " << s.seq_len
       << "'\nset xlabel 'evaluation length'\nset ylabel 'validation loss'\nset logscale x 2\nset grid\nset key "
          "top left noenhanced\n"
       << plot.str() << "\n";
    rep.plot(gp.str(), cli::run::join(o.out, "length.png"), 800, 450);
  }
}

// Mechanical comparisons with the paper (the prose verdict is the reader's).
void write_paper_section(const Options& o, const std::map<std::string, RunResult*>& by_preset,
                         const std::vector<RunResult>& results, Report& rep) {
  auto& md = rep.md;
  md << "## Against the paper\n\nThe paper's numbers are for its 15B MoE models after 3.5T tokens (Table 4); this "
        "run's are from the table above.\n\n| preset | F-Attn paper | F-Attn here | M-Act paper | M-Act here | mean "
        "gate paper | mean gate here |\n|---|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& pr : kPaper) {
    const RunResult* r = by_preset.count(pr.preset) ? by_preset.at(pr.preset) : nullptr;
    const bool ok = r && r->ok();
    md << "| " << md_escape(pr.preset) << " | " << fixed(pr.fattn, 3) << " | "
       << (ok ? fixed(jnum(r->eval, "fattn"), 3) : "—") << " | " << sig3(pr.mact) << " | "
       << (ok ? sig3(jnum(r->eval, "mact")) : "—") << " | " << fixed(pr.gate, 3) << " | "
       << (ok ? fixed(jnum(r->eval, "mean_gate"), 3) : "—") << " |\n";
  }
  md << "\n";
  auto get = [&](const char* p, const char* k) {
    const RunResult* r = by_preset.count(p) ? by_preset.at(p) : nullptr;
    return r && r->ok() ? jnum(r->eval, k) : study::kNaN;
  };
  const double bf = get("baseline", "fattn"), gf = get("g1_elementwise", "fattn");
  const double bm = get("baseline", "mact"), gm = get("g1_elementwise", "mact");
  const double bl = get("baseline", "val_loss"), gl = get("g1_elementwise", "val_loss");
  if (std::isfinite(bf) && std::isfinite(gf))
    md << "- F-Attn, baseline / g1\\_elementwise: " << fixed(bf / gf, 1) << "x here, " << fixed(0.467 / 0.048, 1)
       << "x in the paper.\n";
  if (std::isfinite(bm) && std::isfinite(gm))
    md << "- M-Act, baseline / g1\\_elementwise: " << fixed(bm / gm, 2) << "x here, " << fixed(1053.0 / 94.0, 1)
       << "x in the paper.\n";
  if (std::isfinite(bl) && std::isfinite(gl))
    md << "- Validation loss, g1\\_elementwise - baseline: " << (gl >= bl ? "+" : "") << fixed(gl - bl, 4)
       << " nats per byte (the paper: gating lowers perplexity).\n";
  const double gmean = get("g1_elementwise", "mean_gate");
  if (std::isfinite(gmean))
    md << "- Mean G1 elementwise gate score " << fixed(gmean, 3) << " (paper 0.116): the gate is "
       << (gmean < 0.3 ? "sparse" : "not sparse") << " at this scale.\n";
  // lr mode: spikes and divergence of the pair at the largest learning rate.
  if (o.lr_mode() && o.pair.size() == 2) {
    for (double lr : o.lrs) {
      const RunResult* a = nullptr;
      const RunResult* b = nullptr;
      for (auto& x : results) {
        if (x.spec.preset == o.pair[0] && x.spec.lr == lr) a = &x;
        if (x.spec.preset == o.pair[1] && x.spec.lr == lr) b = &x;
      }
      if (!a || !b) continue;
      auto desc = [](const RunResult* r) {
        std::string d = std::to_string(r->spikes.spikes) + " spike" + (r->spikes.spikes == 1 ? "" : "s");
        if (r->nan_step || r->spikes.diverged) d += ", diverged";
        if (r->ok()) d += ", M-Act " + sig3(jnum(r->eval, "mact")) + ", val loss " + fixed(jnum(r->eval, "val_loss"), 4);
        return d;
      };
      md << "- lr " << study::format_lr(lr) << ": " << md_escape(o.pair[0]) << " " << desc(a) << "; "
         << md_escape(o.pair[1]) << " " << desc(b) << ".\n";
    }
  }
  md << "\n";
}

std::string now_utc() {
  std::time_t t = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
  return buf;
}

void write_report(const Options& o, std::vector<RunResult>& results, const data::Corpus& corpus,
                  const StepTimes& step_time, double wall_s, double all_wall_s, std::size_t invocations) {
  const Settings& s = o.s;
  Report rep;
  auto& md = rep.md;
  std::map<std::string, RunResult*> by_preset;  // the main learning rate's runs
  double train_s = 0;
  for (auto& r : results) {
    if (r.spec.lr == s.lr) by_preset[r.spec.preset] = &r;
    if (!r.metrics.empty()) train_s += r.metrics.back().elapsed_s;
  }
  const std::size_t nparams = nn::count_parameters(s.base);
  md << "# The gating zoo at small scale\n\nMade by:\n\n```\n" << o.command << "\n```\n\n"
     << "Written " << now_utc() << "; this invocation took " << cli::run::format_duration(wall_s);
  if (invocations > 1)
    md << ", the " << invocations << " invocations that wrote into this folder " << cli::run::format_duration(all_wall_s);
  md << ", and the " << results.size() << " runs' training took " << cli::run::format_duration(train_s)
     << " in all (their own clocks, resumed parts included; " << tg::num_threads() << " thread"
     << (tg::num_threads() == 1 ? "" : "s") << ").\n\n"
     << "Model: " << s.size << " (d " << s.base.hidden_size << ", " << s.base.num_hidden_layers << " layers, "
     << s.base.num_attention_heads << " query heads, " << s.base.num_key_value_heads << " kv heads, head dim "
     << s.base.head_dim << ", SwiGLU " << s.base.intermediate_size << ", vocab " << s.base.vocab_size << " bytes), "
     << nparams << " parameters without a gate. Data: " << fs::path(s.data).filename().string() << " ("
     << s.data_bytes << " bytes, the last " << fixed(100 * s.val_fraction, 0) << "% held out). Training: "
     << s.steps << " steps of " << s.batch << " x " << s.seq_len << " tokens (" << s.steps * s.batch * s.seq_len
     << " tokens), AdamW (betas 0.9, 0.95, weight decay " << s.weight_decay << "), warm-up " << s.warmup
     << " steps, cosine decay to lr/10, clipping " << s.clip << ", seed " << s.seed
     << ". Every run is a `tapegrad train` run folder in `runs/`.\n\n";
  if (o.main_mode()) {
    write_main_section(o, by_preset, rep, step_time);
    md << "![validation loss](val_loss.png)\n\n![F-Attn and M-Act per layer](layers.png)\n\n"
       << "![gate-score histogram](gate_hist.png)\n\n";
    write_heatmap(o, by_preset, corpus, rep);
  }
  if (o.lr_mode()) write_lr_section(o, results, rep);
  if (o.length_mode()) write_length_section(o, results, rep);
  if (o.main_mode()) write_paper_section(o, by_preset, results, rep);
  if (!rep.plots_failed.empty()) {
    md << "_Plots not drawn (gnuplot missing or failed):";
    for (auto& p : rep.plots_failed) md << " " << p;
    md << "._\n";
  }
  cli::run::write_file_atomic(cli::run::join(o.out, "report.md"), md.str());
}

// ---- the study ---------------------------------------------------------------------------------

// <out>/time.json: the wall time of every invocation that worked on the folder (an
// interrupted study's parts add up), recorded when an invocation ends.
class InvocationClock {
 public:
  explicit InvocationClock(std::string path) : path_(std::move(path)), t0_(std::chrono::steady_clock::now()) {
    const json j = read_json_or_null(path_);
    if (j.is_object() && j.contains("invocations") && j["invocations"].is_array()) previous_ = j["invocations"];
  }
  ~InvocationClock() {
    try {
      json all = previous_;
      all.push_back({{"ended", now_utc()}, {"wall_s", seconds()}});
      cli::run::write_file_atomic(path_, json({{"invocations", all}}).dump(1) + "\n");
    } catch (...) {
    }
  }
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }
  double all_seconds() const {
    double t = seconds();
    for (const auto& e : previous_) t += e.value("wall_s", 0.0);
    return t;
  }
  std::size_t invocations() const { return previous_.size() + 1; }

 private:
  std::string path_;
  std::chrono::steady_clock::time_point t0_;
  json previous_ = json::array();
};

// The study folder: created, its study.json written (or checked against these settings:
// a folder of another study is refused), base_config.json and results/.
void setup_folder(const Options& o, const Settings& s) {
  std::error_code ec;
  fs::create_directories(o.out, ec);
  if (ec) throw std::runtime_error("cannot create " + o.out + ": " + ec.message());
  const std::string sj = cli::run::join(o.out, "study.json");
  const ojson want = to_json(s);
  if (fs::exists(sj, ec)) {
    const json have = cli::run::read_json(sj);
    std::string diff;
    for (auto it = want.begin(); it != want.end(); ++it)
      if (!have.contains(it.key()) || json(it.value()) != have[it.key()]) diff += (diff.empty() ? "" : ", ") + it.key();
    if (!diff.empty())
      throw std::runtime_error(o.out + " holds a study with other settings (" + diff +
                               " differ; see its study.json): rerun with its settings to continue it, or choose "
                               "another --out");
  } else {
    cli::run::write_file_atomic(sj, want.dump(2) + "\n");
  }
  s.base.save(cli::run::join(o.out, "base_config.json"));
  fs::create_directories(cli::run::join(o.out, "results"), ec);
}

// Note [Study on many ranks]
// `mpirun -np N tapegrad study ...` runs the study's independent runs side by side: run i
// (in plan_runs order) on rank i mod N, each as the one-process `tapegrad train` child it is
// without MPI (its environment stripped of the launcher's OMPI_/PMIX_/PMI_ variables, so it
// does not take itself for a rank), with --threads threads. Rank 0 alone writes the folder's
// settings before any run starts (an error there ends every rank with its message); a rank
// done with its share waits for the others asleep (Group::wait_all, not a spinning
// MPI_Barrier, since the others' runs need the cores); then rank 0 reads every result from
// disk and writes the length evaluation, the timing and the report, exactly as one process
// does. Each run is the same deterministic child at the same thread count either way, so
// the report's numbers are the same bits as a one-process study's (tests/test_distributed).
// A rank interrupted (Ctrl-C: mpirun passes it on) has its child checkpoint and exits 130,
// which ends the job; rerunning the same command continues every run.
int run_study_impl(Options& o) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  Settings& s = o.s;
  tg::set_num_threads(o.threads);
  const data::Corpus corpus = data::Corpus::open(s.data);
  s.data_bytes = corpus.size();
  s.fingerprint = hex64(corpus.fingerprint());
  {
    const std::size_t longest = static_cast<std::size_t>(s.seq_len) *
                                    static_cast<std::size_t>(o.length_mode() ? *std::max_element(o.length_factors.begin(), o.length_factors.end()) : 1) +
                                1;
    data::split(corpus, s.val_fraction, longest);  // throws with the sizes if the text is too short
  }

  // ---- the folder and its settings (rank 0 alone; Note [Study on many ranks]) ----
  const dist::Group world = dist::Group::world();
  const int ranks = world.size(), me = world.rank();
  std::string setup_error;
  std::optional<InvocationClock> invocation;
  if (world.root()) {
    try {
      setup_folder(o, s);
      invocation.emplace(cli::run::join(o.out, "time.json"));
    } catch (const std::exception& e) {
      setup_error = e.what();
    }
  }
  setup_error = world.broadcast(setup_error);
  if (!setup_error.empty()) throw std::runtime_error(setup_error);

  install_signal_handlers();
  Progress progress;
  const auto runs = plan_runs(o);
  if (world.root())
    std::cout << "tapegrad study: " << runs.size() << " run" << (runs.size() == 1 ? "" : "s") << " (mode " << o.mode
              << ") of " << s.steps << " steps, " << s.batch << " x " << s.seq_len << " tokens each, into " << o.out
              << (ranks > 1 ? ", on " + std::to_string(ranks) + " ranks (run i on rank i mod " + std::to_string(ranks) + ")"
                            : std::string())
              << "\n"
              << std::flush;
  // ---- train (or continue, or reuse) and evaluate every run ----
  std::vector<RunResult> results;
  // Run i: trained (or continued) if unfinished, evaluated, its result read; returns an exit
  // code when the study must stop here.
  auto process = [&](std::size_t i) -> std::optional<int> {
    const RunSpec& r = runs[i];
    RunResult rr;
    rr.spec = r;
    const std::string label = rank_prefix() + "study " + std::to_string(i + 1) + "/" + std::to_string(runs.size()) + " " + r.name();
    json cached = read_json_or_null(result_path(o, r));
    const json want_key = {{"eval_batches", o.eval_batches}, {"eval_seed", eval_seed(s)}, {"hist_batches", kHistBatches},
                           {"hist_bins", kHistBins}, {"steps", s.steps}};
    const bool done = cached.is_object() && (cached.value("status", "") == "diverged" ||
                                             (cached.value("status", "") == "finished" && cached["key"] == want_key));
    if (done) {
      rr.outcome = cached["status"] == "diverged" ? Outcome::Diverged : Outcome::Finished;
      progress.line(label + ": finished earlier, reused");
    } else {
      rr.outcome = train_run(o, r, i + 1, runs.size(), progress);
      if (rr.outcome == Outcome::Interrupted) {
        std::cerr << "tapegrad study: interrupted during " << r.name()
                  << "; its checkpoint is saved. Run the same command again to continue.\n";
        return 130;
      }
      if (rr.outcome == Outcome::Stopped) {
        std::cout << "tapegrad study: stopped at step " << o.stop_at << " of " << r.name()
                  << " (--stop-at); run the same command without it to continue.\n";
        return 0;
      }
      if (rr.outcome == Outcome::Diverged) {
        cached = {{"status", "diverged"}, {"preset", r.preset}, {"lr", r.lr}};
        progress.line(label + ": diverged (NaN loss); recorded");
      } else {
        progress.line(label + ": evaluating");
        cached = evaluate_run(o, r, corpus);
        progress.line(label + ": val loss " + fixed(jnum(cached, "val_loss"), 4) + ", F-Attn " +
                      fixed(jnum(cached, "fattn"), 3) + ", M-Act " + sig3(jnum(cached, "mact")) +
                      (std::isfinite(jnum(cached, "mean_gate")) ? ", mean gate " + fixed(jnum(cached, "mean_gate"), 3)
                                                                : std::string()));
      }
      cli::run::write_file_atomic(result_path(o, r), cached.dump(1) + "\n");
    }
    if (signals::stop_signal()) return 130;
    rr.eval = rr.outcome == Outcome::Finished ? cached : json();
    rr.metrics = read_metrics(run_dir(o, r));
    std::vector<double> losses;
    for (auto& m : rr.metrics) losses.push_back(m.train_loss);
    if (rr.outcome == Outcome::Diverged) {
      rr.nan_step = (rr.metrics.empty() ? 0 : rr.metrics.back().step) + 1;
      losses.push_back(study::kNaN);
    }
    rr.spikes = study::count_spikes(losses, s.warmup);
    results.push_back(std::move(rr));
    return std::nullopt;
  };
  if (ranks > 1) {
    // Each rank its share, then every rank waits (asleep) for the others; rank 0 goes on
    // with every result on disk, the others are done.
    for (std::size_t i = std::size_t(me); i < runs.size(); i += std::size_t(ranks))
      if (auto code = process(i)) return *code;
    progress.line("rank " + std::to_string(me) + ": its runs are done; waiting for the other ranks");
    if (!world.wait_all([] { return signals::stop_signal() != 0; })) return 130;
    if (!world.root()) return 0;
    results.clear();
  }
  for (std::size_t i = 0; i < runs.size(); ++i)
    if (auto code = process(i)) return *code;
  // ---- length extrapolation ----
  if (o.length_mode()) {
    const json want_key = {{"factors", o.length_factors}, {"eval_batches", o.eval_batches}, {"length_seed", eval_seed(s)}};
    for (auto& rr : results) {
      if (rr.spec.lr != s.lr || std::find(o.pair.begin(), o.pair.end(), rr.spec.preset) == o.pair.end()) continue;
      if (rr.outcome != Outcome::Finished) continue;
      const std::string path = cli::run::join(cli::run::join(o.out, "results"), rr.spec.name() + ".length.json");
      json cached = read_json_or_null(path);
      if (!cached.is_object() || cached["key"] != want_key) {
        progress.line("study: length extrapolation of " + rr.spec.name());
        cached = evaluate_length(o, rr.spec, corpus);
        cli::run::write_file_atomic(path, cached.dump(1) + "\n");
      }
      rr.length = cached;
      if (signals::stop_signal()) return 130;
    }
  }

  // ---- step time, interleaved (cached per preset list and thread count) ----
  StepTimes step_time;
  if (o.main_mode() && o.timing_rounds > 0) {
    const std::string path = cli::run::join(o.out, "timing.json");
    const json key = {{"presets", o.presets}, {"threads", tg::num_threads()}, {"rounds", o.timing_rounds},
                      {"clocks", "wall, cpu"}};
    json cached = read_json_or_null(path);
    if (cached.is_object() && cached["key"] == key) {
      step_time.wall = cached["median_wall_s"].get<std::map<std::string, double>>();
      step_time.cpu = cached["median_cpu_s"].get<std::map<std::string, double>>();
    } else {
      progress.line("study: timing one training step of each preset (" + std::to_string(o.timing_rounds) +
                    " interleaved rounds)");
      step_time = time_steps(o, corpus);
      cli::run::write_file_atomic(
          path, json({{"key", key}, {"median_wall_s", step_time.wall}, {"median_cpu_s", step_time.cpu}}).dump(1) + "\n");
    }
  }

  const double wall = std::chrono::duration<double>(clock::now() - t0).count();
  write_report(o, results, corpus, step_time, wall, invocation->all_seconds(), invocation->invocations());
  std::cout << "tapegrad study: done in " << cli::run::format_duration(invocation->seconds()) << "; report: "
            << cli::run::join(o.out, "report.md") << "\n";
  return 0;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> v;
  std::string cur;
  for (char c : s + ",") {
    if (c == ',') {
      if (!cur.empty()) v.push_back(cur);
      cur.clear();
    } else if (c != ' ') {
      cur += c;
    }
  }
  return v;
}

std::string shell_quote(const std::string& a) {
  if (!a.empty() && a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./,:+@") ==
                        std::string::npos)
    return a;
  std::string r = "'";
  for (char c : a) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return r + "'";
}

int run_study(int argc, char** argv) {
  CLI::App app{
      "The gated-attention paper at small scale: train a list of presets on the same data, seed and token budget "
      "(each a `tapegrad train` run folder) and write a report (report.md + PNG plots) of validation loss, "
      "first-token attention, massive activations, gate scores and step time; plus learning-rate stability and "
      "length extrapolation. An interrupted study continues when the same command is run again."};
  app.name("tapegrad study");
  app.get_formatter()->column_width(36);
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  Options o;
  Settings& s = o.s;
  std::string presets, pair, lrs, lengths;
  std::string config_path;
  for (std::size_t i = 0; i < o.presets.size(); ++i) presets += (i ? "," : "") + o.presets[i];
  pair = "baseline,g1_elementwise";
  lrs = "3e-3,1e-2,3e-2,1e-1";
  lengths = "1,2,4";
  app.add_option("--mode", o.mode, "main, lr (learning-rate stability), length (extrapolation) or all")
      ->capture_default_str()
      ->check(CLI::IsMember({"main", "lr", "length", "all"}));
  app.add_option("--presets", presets, "comma list of presets for the main table")->capture_default_str();
  app.add_option("--pair", pair, "the two presets the lr and length modes compare")->capture_default_str();
  app.add_option("--lrs", lrs, "learning rates of the lr mode")->capture_default_str();
  app.add_option("--length-factors", lengths, "evaluation lengths of the length mode, as multiples of --seq-len")
      ->capture_default_str();
  app.add_option("--size", s.size, "model size: study (d 128, 4 layers, 4 heads; the default) or a named size")
      ->capture_default_str()
      ->check(CLI::IsMember(study_size_names()));
  auto* config_opt = app.add_option("--config", config_path, "a config.json for the base model instead of --size");
  app.add_option("--steps", s.steps, "optimizer steps per run")->capture_default_str()->check(CLI::Range(std::int64_t(1), std::int64_t(1) << 40));
  app.add_option("--batch", s.batch, "sequences per step (B)")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  app.add_option("--seq-len", s.seq_len, "tokens per sequence (T)")->capture_default_str()->check(CLI::Range(2, 1 << 20));
  app.add_option("--lr", s.lr, "peak learning rate of the main runs")->capture_default_str()->check(CLI::Range(1e-9, 10.0));
  auto* warmup_opt = app.add_option("--warmup", s.warmup, "warm-up steps (default: steps / 20)")->check(CLI::Range(std::int64_t(0), std::int64_t(1) << 40));
  app.add_option("--seed", s.seed, "seed of every run's initialisation and batches")->capture_default_str();
  app.add_option("--threads", o.threads, "threads per run (0: OMP_NUM_THREADS or all cores)")->capture_default_str()->check(CLI::Range(0, 4096));
  app.add_option("--data", s.data, "the text (default: data/kjv.txt, written by setup.sh)");
  app.add_option("--out", o.out, "the report folder")->capture_default_str();
  app.add_option("--eval-batches", o.eval_batches, "validation batches of the final evaluation")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  app.add_option("--timing-rounds", o.timing_rounds, "interleaved rounds of the step-time measurement (0: skip)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  app.add_option("--stop-at", o.stop_at, "stop the first unfinished run after this step, as if interrupted (tests)")
      ->check(CLI::Range(std::int64_t(0), std::int64_t(1) << 40));
  tg::cli::refuse_non_finite(app);  // Note [Finite number flags] (flags.hpp)
  CLI11_PARSE(app, argc, argv);

  o.command = "tapegrad study";
  for (int i = 1; i < argc; ++i) o.command += " " + shell_quote(argv[i]);
  o.presets = split_list(presets);
  o.pair = split_list(pair);
  if (o.presets.empty()) throw std::runtime_error("--presets is empty");
  if (o.pair.size() != 2) throw std::runtime_error("--pair needs exactly two presets, got '" + pair + "'");
  const auto known = nn::list_presets();
  for (const auto* list : {&o.presets, &o.pair})
    for (auto& p : *list)
      if (std::find(known.begin(), known.end(), p) == known.end())
        throw std::runtime_error("unknown preset '" + p + "' (see nn/MODEL.md \"Presets\")");
  o.lrs.clear();
  auto number = [](const std::string& flag, const std::string& x, bool integer) {
    // std::stod alone takes "nan", "inf" and "3abc" (Note [Finite number flags], flags.hpp).
    std::size_t used = 0;
    double v = 0;
    try {
      v = integer ? double(std::stoll(x, &used)) : std::stod(x, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != x.size() || !std::isfinite(v) || !(v > 0))
      throw std::runtime_error(flag + ": '" + x + "' is not a " + (integer ? "positive integer" : "positive finite number"));
    return v;
  };
  for (auto& x : split_list(lrs)) o.lrs.push_back(number("--lrs", x, false));
  o.length_factors.clear();
  for (auto& x : split_list(lengths)) o.length_factors.push_back(static_cast<std::int64_t>(number("--length-factors", x, true)));
  if (o.lrs.empty() || o.length_factors.empty()) throw std::runtime_error("--lrs and --length-factors need values");
  for (auto f : o.length_factors)
    if (f < 1) throw std::runtime_error("--length-factors must be >= 1");

  if (config_opt->count()) {
    if (app.count("--size")) throw std::runtime_error("give --size or --config, not both");
    s.base = cli::run::load_model_spec(config_path).config;
    s.base.vocab_size = std::max<std::size_t>(s.base.vocab_size, data::ByteTokenizer::vocab_size);
    nn::apply_preset(s.base, "baseline");
    s.size = "custom (" + fs::path(config_path).filename().string() + ")";
  } else {
    s.base = base_config(s.size);
  }
  // Training needs T+1 positions (the length mode's models get their own, longer, setting).
  s.base.max_position_embeddings = std::max<std::size_t>(s.base.max_position_embeddings, static_cast<std::size_t>(s.seq_len) + 1);
  if (!warmup_opt->count()) s.warmup = std::max<std::int64_t>(1, s.steps / 20);
  if (s.warmup > s.steps) throw std::runtime_error("--warmup exceeds --steps");
  s.eval_every = std::max<std::int64_t>(1, s.steps / 20);
  s.save_every = std::max<std::int64_t>(1, s.steps / 5);
  s.data = s.data.empty() ? default_data_path() : fs::absolute(s.data).lexically_normal().string();
  o.out = fs::absolute(o.out).lexically_normal().string();
  return run_study_impl(o);
}

const bool registered = tg::cli::register_command(
    {"study", "the gated-attention paper at small scale: presets, lr stability, length extrapolation", run_study});

}  // namespace
