// examples/tapegrad/study.hpp — what the parts of `tapegrad study` share (study.cpp: the
// command line and the orchestration, Note [Study on many ranks]; study_runs.cpp: the
// settings, the runs and their child processes; study_eval.cpp: evaluating a finished run
// and timing a step; study_report.cpp: report.md and its plots). See study.cpp's header
// for what the study is.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nn/data.hpp"
#include "nn/distributed.hpp"
#include "nn/model.hpp"
#include "run_folder.hpp"
#include "study_analysis.hpp"

namespace tg::studycmd {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
using study::fixed;
using study::sig3;

// ---- sizes (study_runs.cpp) ----
nn::ModelConfig study_size_config();
std::vector<std::string> study_size_names();
nn::ModelConfig base_config(const std::string& size);

// ---- the settings ----

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

ojson to_json(const Settings& s);

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

std::uint64_t mix(std::uint64_t seed, std::uint64_t stream);  // splitmix64 of seed and stream
// The evaluation batches are the same for every run (a stream train.cpp does not use).
std::uint64_t eval_seed(const Settings& s);
std::string hex64(std::uint64_t v);
std::string default_data_path();

// ---- the runs ----
struct RunSpec {
  std::string preset;
  double lr = 0;
  std::string name() const { return study::run_name(preset, lr); }
};

std::vector<RunSpec> plan_runs(const Options& o);
std::string runs_dir(const Options& o);
std::string run_dir(const Options& o, const RunSpec& r);
std::string result_path(const Options& o, const RunSpec& r);
std::string log_path(const Options& o, const RunSpec& r);
std::vector<cli::run::MetricsRow> read_metrics(const std::string& dir);
void install_signal_handlers();

class Progress {
 public:
  // Under mpirun (OpenMPI gives each rank a pseudo-terminal) several ranks write one stream:
  // lines only, no overwriting.
  Progress() : tty_(::isatty(STDOUT_FILENO) == 1 && dist::Group::world().size() == 1) {}
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

// "rank 1: " under mpirun with more than one rank (Note [Study on many ranks]), else "".
std::string rank_prefix();
// Trains one run (or continues it, or finds it finished).
Outcome train_run(const Options& o, const RunSpec& r, std::size_t index, std::size_t total, Progress& progress);

// ---- evaluation (study_eval.cpp) ----
constexpr std::size_t kHistBins = 100;
constexpr std::int64_t kHistBatches = 2;  // batches whose gate scores go into the histogram
double jnum(const json& j, const char* key);
json read_json_or_null(const std::string& path);
nn::CausalLM<float> load_run_model(const std::string& dir, const nn::ModelConfig* override_config = nullptr);
// Validation loss, the pooled Diagnostics and the gate-score histogram of a finished run.
json evaluate_run(const Options& o, const RunSpec& r, const data::Corpus& corpus);
json evaluate_length(const Options& o, const RunSpec& r, const data::Corpus& corpus);


// Median seconds of one training step per preset, by the wall clock and by the process's
// CPU clock (all its threads). On a busy machine the wall clock also counts the time the
// threads wait for a core; the CPU clock counts only the work (with OMP_WAIT_POLICY=passive;
// spinning threads count as working).
struct StepTimes {
  std::map<std::string, double> wall, cpu;
};
double median(std::vector<double> v);
StepTimes time_steps(const Options& o, const data::Corpus& corpus);

// ---- the report (study_report.cpp) ----
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

std::string now_utc();
void write_report(const Options& o, std::vector<RunResult>& results, const data::Corpus& corpus,
                  const StepTimes& step_time, double wall_s, double all_wall_s, std::size_t invocations);

}  // namespace tg::studycmd
