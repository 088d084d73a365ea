// examples/tapegrad/study_runs.cpp — `tapegrad study`'s settings and runs: the sizes, what
// defines a run and where it lives, the `tapegrad train` child process of each (signals
// forwarded, output logged) and the progress line (study.hpp).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

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
#include <optional>
#include <sstream>

#include "autograd/kernels/parallel.hpp"
#include "nn/data.hpp"
#include "nn/distributed.hpp"
#include "nn/model.hpp"
#include "nn/plot.hpp"
#include "nn/signals.hpp"
#include "optim/optim.hpp"
#include "run_folder.hpp"
#include "study.hpp"
#include "study_analysis.hpp"

extern char** environ;

namespace tg::studycmd {

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
  if (!s.sinks.is_null()) j["sinks"] = s.sinks;
  return j;
}


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

std::string RunSpec::name() const {
  if (!sinks()) return study::run_name(preset, lr);
  return phase + "-" + preset + (bos ? "-bos" : "-nobos") + "-lr" + study::format_lr(lr) + "-wd" +
         study::format_lr(weight_decay) + (phase == "sweep" ? "-T" + std::to_string(seq_len) : "");
}
std::int64_t batch_of(const Settings& s, const RunSpec& r) { return r.batch > 0 ? r.batch : s.batch; }
std::int64_t steps_of(const Settings& s, const RunSpec& r) { return r.sinks() ? r.steps : s.steps; }
std::int64_t seq_len_of(const Settings& s, const RunSpec& r) { return r.sinks() ? r.seq_len : s.seq_len; }
std::int64_t warmup_of(const Settings& s, const RunSpec& r) { return r.sinks() ? r.warmup : s.warmup; }
double weight_decay_of(const Settings& s, const RunSpec& r) { return r.sinks() ? r.weight_decay : s.weight_decay; }


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
    check("steps", a.steps == steps_of(s, r));
    check("batch", a.batch == batch_of(s, r));
    check("seq-len", a.seq_len == seq_len_of(s, r));
    check("warmup", a.warmup == warmup_of(s, r));
    check("weight-decay", a.weight_decay == weight_decay_of(s, r));
    check("bos", (a.bos_id >= 0) == r.bos);
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
    const std::int64_t steps = steps_of(s, r);
    add("--config", r.config.empty() ? cli::run::join(o.out, "base_config.json") : r.config);
    add("--preset", r.preset);
    add("--data", s.data);
    add("--val-fraction", num(s.val_fraction));
    add("--steps", std::to_string(steps));
    add("--batch", std::to_string(batch_of(s, r)));
    add("--seq-len", std::to_string(seq_len_of(s, r)));
    add("--lr", num(r.lr));
    add("--min-lr", num(r.lr / 10));
    add("--warmup", std::to_string(warmup_of(s, r)));
    add("--weight-decay", num(weight_decay_of(s, r)));
    add("--clip", num(s.clip));
    add("--seed", std::to_string(s.seed));
    // The sinks mode's runs: evaluations and checkpoints as often per run as the others'.
    add("--eval-every", std::to_string(r.sinks() ? std::max<std::int64_t>(1, steps / 20) : s.eval_every));
    add("--eval-batches", std::to_string(s.train_eval_batches));
    add("--save-every", std::to_string(r.sinks() ? std::max<std::int64_t>(1, steps / 5) : s.save_every));
    if (r.sinks()) {
      if (r.bos) args.push_back("--bos");
      add("--diag-every", std::to_string(r.diag_every));
      add("--diag-batches", std::to_string(o.diag_batches));
    }
    add("--out", dir);
  }
  add("--threads", std::to_string(o.threads));
  add("--sample-len", "0");
  add("--log-every", "1");
  if (o.stop_at > 0) add("--stop-at", std::to_string(o.stop_at));

  progress.line(label + ": " + (resume ? "continuing the run in " : "training into ") + dir);
  const std::int64_t every = std::max<std::int64_t>(1, steps_of(s, r) / 10);
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
  if (rows.empty() || rows.back().step < steps_of(s, r)) return Outcome::Stopped;
  return Outcome::Finished;
}


}  // namespace tg::studycmd
