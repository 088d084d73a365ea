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
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nn/data.hpp"
#include "nn/distributed.hpp"
#include "nn/model.hpp"
#include "nn/plot.hpp"
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
  ojson sinks;  // the sinks mode's own settings (null in the other modes; Note [Sinks mode])
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
  // The sinks mode (study_sinks.cpp, Note [Sinks mode]).
  std::vector<std::string> sink_presets = {"baseline", "g1_elementwise", "g1_headwise"};
  std::int64_t pilot_steps = 500, full_steps = 4000, diag_batches = 2;
  std::vector<double> pilot_lrs = {3e-3, 1e-2}, pilot_wds = {0.1, 0.5};
  std::vector<int> pilot_bos = {1, 0};
  std::string full_size;  // "": the pilot's size
  std::int64_t full_seq_len = 0;  // 0: the pilot's
  std::vector<std::int64_t> sweep_seq_lens;  // the T sweep of the baseline (empty: none)
  std::int64_t stop_at = 0;  // tests: stop every run at this step
  std::string command;       // this invocation, for the report

  bool main_mode() const { return mode == "main" || mode == "all"; }
  bool lr_mode() const { return mode == "lr" || mode == "all"; }
  bool length_mode() const { return mode == "length" || mode == "all"; }
  bool sinks_mode() const { return mode == "sinks"; }
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
  // The sinks mode's runs (phase "pilot" or "full") carry their own settings; the other
  // modes' (phase "") take the study's.
  std::string phase;
  double weight_decay = 0;
  bool bos = false;
  std::int64_t steps = 0, seq_len = 0, warmup = 0, diag_every = 0;
  std::int64_t batch = 0;  // 0: the study's (the sinks mode's T sweep keeps B x T fixed)
  std::string config;  // the base config.json of the run (a file in the study folder)
  // "g1_elementwise-lr0.003", or "full-g1_elementwise-bos-lr0.01-wd0.5" in the sinks mode,
  // "sweep-baseline-bos-lr0.01-wd0.5-T1024" in its T sweep.
  std::string name() const;
  bool sinks() const { return !phase.empty(); }
};
// The run's steps, T, B, warm-up and weight decay: its own in the sinks mode, else the study's.
std::int64_t steps_of(const Settings& s, const RunSpec& r);
std::int64_t batch_of(const Settings& s, const RunSpec& r);
std::int64_t seq_len_of(const Settings& s, const RunSpec& r);
std::int64_t warmup_of(const Settings& s, const RunSpec& r);
double weight_decay_of(const Settings& s, const RunSpec& r);

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
// The windows a run was trained on (its train.json's BOS and document separator).
data::WindowOptions run_windows(const std::string& dir);


// Median seconds of one training step per preset, by the wall clock and by the process's
// CPU clock (all its threads). On a busy machine the wall clock also counts the time the
// threads wait for a core; the CPU clock counts only the work (with OMP_WAIT_POLICY=passive;
// spinning threads count as working).
struct StepTimes {
  std::map<std::string, double> wall, cpu;
};
double median(std::vector<double> v);
StepTimes time_steps(const Options& o, const data::Corpus& corpus);

// ---- the sinks mode (study_sinks.cpp, Note [Sinks mode]) ----
std::vector<RunSpec> plan_pilot_runs(const Options& o);
// The trend of a pilot run's largest per-head F-Attn (Note [Sinks mode]): the least-squares
// line through its diagnostics rows in the second half of the run's tokens, and that line's
// value at `at_tokens` (the full runs' length).
struct SinkTrend {
  double last = 0;        // f_attn_max_head in the last row
  double per_million = 0;  // the line's slope per million tokens
  double projected = 0;    // the line at at_tokens
  std::size_t rows = 0;    // rows the line went through
};
SinkTrend sink_trend(const std::vector<double>& tokens, const std::vector<double>& f_attn_max_head, double at_tokens);
// The pilot's most sink-prone setting (the largest projected trend) and the full runs in it;
// throws if a pilot run has no diagnostics.
struct SinkChoice {
  RunSpec pilot;  // the chosen pilot run
  SinkTrend trend;
  double full_tokens = 0;  // the tokens of a full run (where the trends are projected to)
  std::string why;  // every pilot's value, for the report
};
SinkChoice choose_sink_setting(const Options& o);
std::int64_t full_seq_len_of(const Options& o);
std::vector<RunSpec> plan_full_runs(const Options& o, const SinkChoice& c);
// The T sweep: the baseline in the chosen setting at every --sweep-seq-lens T other than
// the full runs' (that one is the full baseline run), B scaled so that B x T is the full
// runs' (the same tokens per step and per run).
std::vector<RunSpec> plan_sweep_runs(const Options& o, const SinkChoice& c);
// The configs of the full runs (a named --full-size) and of the T sweep (positions for
// its longest T), in the study folder.
void write_full_config(const Options& o);
json evaluate_sink_run(const Options& o, const RunSpec& r, const data::Corpus& corpus);
struct RunResult;
void write_sinks_report(const Options& o, std::vector<RunResult>& results, const SinkChoice& choice,
                        const data::Corpus& corpus, double wall_s, double all_wall_s, std::size_t invocations);

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

// What the report writers share: the markdown and the plots (gnuplot; a missing gnuplot
// is one warning and a line in the report).
using plot::datablock;
using plot::gnuplot_png;
inline std::string gp_quote(const std::string& s) { return plot::quote(s); }
inline std::string color(std::size_t i) {
  static const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                  "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};
  return std::string("rgb '") + kColors[i % 10] + "'";
}
inline std::string md_escape(const std::string& s) {
  std::string r;
  for (char c : s) r += c == '_' ? std::string("\\_") : std::string(1, c);
  return r;
}
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
  // A histogram of fractions in [0, 1] (gate scores): the caller's datablocks and plot
  // command on these axes.
  void histogram(const std::string& blocks, const std::string& plot_command, const std::string& title,
                 const std::string& png) {
    plot(blocks + "set title " + gp_quote(title) +
             "\nset xlabel 'gate score'\nset ylabel 'fraction of scores'\nset grid\nset key top right "
             "noenhanced\nset xrange [0:1]\nset yrange [0:*]\n" + plot_command + "\n",
         png, 800, 450);
  }
  // The report: the list of plots not drawn, then the file (atomically).
  void write(const std::string& path) {
    if (!plots_failed.empty()) {
      md << "_Plots not drawn (gnuplot missing or failed):";
      for (auto& p : plots_failed) md << " " << p;
      md << "._\n";
    }
    cli::run::write_file_atomic(path, md.str());
  }
};
// Histogram counts as rows (bin centre, fraction of all counts) for a datablock.
inline std::vector<std::vector<double>> histogram_rows(const std::vector<double>& counts) {
  double total = 0;
  for (double c : counts) total += c;
  std::vector<std::vector<double>> rows;
  for (std::size_t b = 0; b < counts.size(); ++b)
    rows.push_back({(double(b) + 0.5) / double(counts.size()), total ? counts[b] / total : 0.0});
  return rows;
}
// The attention maps of two runs, the same layer and head (study_report.cpp).
void write_heatmap(const Options& o, const RunSpec& base_spec, const RunSpec& gate_spec, const data::Corpus& corpus,
                   Report& rep);
void write_report(const Options& o, std::vector<RunResult>& results, const data::Corpus& corpus,
                  const StepTimes& step_time, double wall_s, double all_wall_s, std::size_t invocations);

}  // namespace tg::studycmd
