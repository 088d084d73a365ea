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
// gate scores for the histogram through a forward hook, study_probe.hpp), caching the numbers in
// <out>/results/<run>.json. Then it times one training step of every preset, interleaved,
// and writes <out>/report.md and the plots (gnuplot; skipped with a warning without it).
//
// Resuming: an interrupted study (Ctrl-C, SIGTERM, or --stop-at) is continued by the same
// command. Runs with a cached result are reused; a run folder holding a checkpoint is
// continued with `tapegrad train --resume`; a folder without a checkpoint starts over.
// The settings that define the runs are kept in <out>/study.json and a rerun with other
// settings into the same folder is refused (the runs would not be comparable).
//
// The parts (study.hpp): this file holds the command line and the orchestration (Note
// [Study on many ranks]); study_runs.cpp the settings, the runs and their child processes;
// study_eval.cpp the evaluation of a finished run and the step timing; study_report.cpp
// report.md and the plots.
//
// What it is not: a training loop (train.cpp), the model or its diagnostics (nn/), or a
// benchmark (bench/ measures speed on an idle machine; the step times here are only
// relative, measured side by side).
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
#include "commands.hpp"
#include "flags.hpp"

namespace {

using namespace tg;
using namespace tg::studycmd;

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
    std::int64_t T = std::max(s.seq_len, o.full_seq_len);
    for (std::int64_t t : o.sweep_seq_lens) T = std::max(T, t);
    const std::size_t longest = static_cast<std::size_t>(T) *
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
  // The runs come in phases: one for the main, lr and length modes; the sinks mode's pilot,
  // then its full runs, which depend on the pilot's results (Note [Sinks mode]).
  std::vector<RunSpec> runs = o.sinks_mode() ? plan_pilot_runs(o) : plan_runs(o);
  std::optional<SinkChoice> choice;
  if (world.root()) {
    const std::int64_t steps = o.sinks_mode() ? o.pilot_steps : s.steps;
    std::cout << "tapegrad study: " << runs.size() << " run" << (runs.size() == 1 ? "" : "s")
              << (o.sinks_mode() ? " of the sinks pilot" : " (mode " + o.mode + ")") << " of " << steps << " steps, "
              << s.batch << " x " << s.seq_len << " tokens each, into " << o.out
              << (ranks > 1 ? ", on " + std::to_string(ranks) + " ranks (run i on rank i mod " + std::to_string(ranks) + ")"
                            : std::string())
              << "\n"
              << std::flush;
  }
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
                           {"hist_bins", kHistBins}, {"steps", steps_of(s, r)}};
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
      } else if (r.sinks()) {
        progress.line(label + ": evaluating");
        cached = evaluate_sink_run(o, r, corpus);
        progress.line(label + ": val loss " + fixed(jnum(cached, "val_loss"), 4) + ", Sink_1^0.3 " +
                      fixed(jnum(cached, "sink_rate"), 3) + ", F-Attn " + fixed(jnum(cached, "f_attn"), 4) +
                      ", largest head " + fixed(jnum(cached, "f_attn_max_head"), 4) + ", max |h| " +
                      sig3(jnum(cached, "max_h_rest")));
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
    rr.spikes = study::count_spikes(losses, warmup_of(s, r));
    results.push_back(std::move(rr));
    return std::nullopt;
  };
  // One phase: with several ranks each its share, then every rank waits (asleep) for the
  // others; rank 0 later reads every result from disk (the others' runs are cached).
  const std::size_t first_full = runs.size();
  auto run_phase = [&](std::size_t begin) -> std::optional<int> {
    if (ranks == 1) {
      for (std::size_t i = begin; i < runs.size(); ++i)
        if (auto code = process(i)) return code;
      return std::nullopt;
    }
    for (std::size_t i = begin + std::size_t(me); i < runs.size(); i += std::size_t(ranks))
      if (auto code = process(i)) return code;
    progress.line("rank " + std::to_string(me) + ": its runs are done; waiting for the other ranks");
    if (!world.wait_all([] { return signals::stop_signal() != 0; })) return 130;
    return std::nullopt;
  };
  if (auto code = run_phase(0)) return *code;
  if (o.sinks_mode()) {
    if (world.root()) write_full_config(o);  // written before the others read it: the choice needs every rank
    choice = choose_sink_setting(o);        // the same on every rank: the same files
    world.wait_all([] { return false; });
    const auto full = plan_full_runs(o, *choice);
    const auto sweep = plan_sweep_runs(o, *choice);
    if (world.root())
      progress.line("tapegrad study: the pilot's most sink-prone setting: " + choice->pilot.name() +
                    " (largest head F-Attn " + fixed(choice->trend.last, 4) + ", projected " +
                    fixed(choice->trend.projected, 4) + "); " + std::to_string(full.size()) + " full runs" +
                    (sweep.empty() ? "" : " and " + std::to_string(sweep.size()) + " of the T sweep") + ", " +
                    std::to_string(o.full_steps) + " steps each");
    runs.insert(runs.end(), full.begin(), full.end());
    runs.insert(runs.end(), sweep.begin(), sweep.end());
    if (auto code = run_phase(first_full)) return *code;
  }
  if (ranks > 1) {
    if (!world.root()) return 0;
    results.clear();
    for (std::size_t i = 0; i < runs.size(); ++i)
      if (auto code = process(i)) return *code;
  }
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
  if (o.sinks_mode()) {
    write_sinks_report(o, results, *choice, corpus, wall, invocation->all_seconds(), invocation->invocations());
    std::cout << "tapegrad study: done in " << cli::run::format_duration(invocation->seconds()) << "; report: "
              << cli::run::join(o.out, "report.md") << "\n";
    return 0;
  }
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
  app.add_option("--mode", o.mode,
                 "main, lr (learning-rate stability), length (extrapolation), all (the three), or sinks (attention "
                 "sinks: a pilot grid, then the presets in its most sink-prone setting; Note [Sinks mode])")
      ->capture_default_str()
      ->check(CLI::IsMember({"main", "lr", "length", "all", "sinks"}));
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
  // The sinks mode (study_sinks.cpp, Note [Sinks mode]).
  std::string sink_presets = "baseline,g1_elementwise,g1_headwise", pilot_lrs = "3e-3,1e-2", pilot_wds = "0.1,0.5",
              pilot_bos = "on,off";
  auto* sinks = app.add_option_group("sinks mode", "--mode sinks (defaults there: --seq-len 512 --batch 8 --out runs/sinks)");
  sinks->add_option("--sink-presets", sink_presets, "the presets of the full runs")->capture_default_str();
  sinks->add_option("--pilot-steps", o.pilot_steps, "steps of each pilot run (the baseline)")
      ->capture_default_str()->check(CLI::Range(std::int64_t(1), std::int64_t(1) << 40));
  sinks->add_option("--pilot-lrs", pilot_lrs, "the pilot's learning rates")->capture_default_str();
  sinks->add_option("--pilot-wds", pilot_wds, "the pilot's weight decays")->capture_default_str();
  sinks->add_option("--pilot-bos", pilot_bos, "the pilot's BOS settings (on, off)")->capture_default_str();
  sinks->add_option("--full-steps", o.full_steps, "steps of each full run")
      ->capture_default_str()->check(CLI::Range(std::int64_t(1), std::int64_t(1) << 40));
  sinks->add_option("--full-size", o.full_size, "a named size for the full runs (default: the pilot's model)")
      ->check(CLI::IsMember(nn::size_names()));
  sinks->add_option("--full-seq-len", o.full_seq_len, "T of the full runs (default: --seq-len)")
      ->check(CLI::Range(std::int64_t(2), std::int64_t(1) << 20));
  std::string sweep_seq_lens;
  sinks->add_option("--sweep-seq-lens", sweep_seq_lens,
                    "a T sweep of the baseline in the chosen setting, e.g. 256,512,1024 (B x T kept; default: none)");
  sinks->add_option("--diag-batches", o.diag_batches, "validation batches of each sink diagnostic")
      ->capture_default_str()->check(CLI::Range(std::int64_t(1), std::int64_t(1) << 20));
  tg::cli::refuse_non_finite(app);  // Note [Finite number flags] (flags.hpp)
  CLI11_PARSE(app, argc, argv);
  if (o.sinks_mode()) {
    for (const char* f : {"--steps", "--lr", "--warmup", "--presets", "--pair", "--lrs", "--length-factors"})
      if (app.count(f))
        throw std::runtime_error(std::string(f) + " does not apply to --mode sinks (it has --pilot-steps, --full-steps, "
                                 "--pilot-lrs, --pilot-wds, --pilot-bos and --sink-presets)");
    if (!app.count("--seq-len")) s.seq_len = 512;
    if (!app.count("--batch")) s.batch = 8;
    if (!app.count("--out")) o.out = "runs/sinks";
  } else {
    for (auto* opt : sinks->get_options())
      if (opt->count())
        throw std::runtime_error(opt->get_name() + " applies to --mode sinks only");
  }

  // The report's "Made by" line; under mpirun, with the launcher (Note [Study on many ranks]).
  const int world_ranks = dist::Group::world().size();
  o.command = (world_ranks > 1 ? "mpirun -np " + std::to_string(world_ranks) + " " : std::string()) + "tapegrad study";
  for (int i = 1; i < argc; ++i) o.command += " " + shell_quote(argv[i]);
  o.presets = split_list(presets);
  o.pair = split_list(pair);
  o.sink_presets = split_list(sink_presets);
  if (o.sink_presets.empty()) throw std::runtime_error("--sink-presets is empty");
  o.pilot_bos.clear();
  for (auto& x : split_list(pilot_bos)) {
    if (x != "on" && x != "off") throw std::runtime_error("--pilot-bos: '" + x + "' is neither on nor off");
    o.pilot_bos.push_back(x == "on");
  }
  if (o.presets.empty()) throw std::runtime_error("--presets is empty");
  if (o.pair.size() != 2) throw std::runtime_error("--pair needs exactly two presets, got '" + pair + "'");
  const auto known = nn::list_presets();
  for (const auto* list : {&o.presets, &o.pair, &o.sink_presets})
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
  o.pilot_lrs.clear();
  for (auto& x : split_list(pilot_lrs)) o.pilot_lrs.push_back(number("--pilot-lrs", x, false));
  o.pilot_wds.clear();
  for (auto& x : split_list(pilot_wds)) {  // weight decay 0 is a setting too
    if (x == "0") o.pilot_wds.push_back(0.0);
    else o.pilot_wds.push_back(number("--pilot-wds", x, false));
  }
  if (o.pilot_lrs.empty() || o.pilot_wds.empty() || o.pilot_bos.empty())
    throw std::runtime_error("--pilot-lrs, --pilot-wds and --pilot-bos need values");
  o.sweep_seq_lens.clear();
  for (auto& x : split_list(sweep_seq_lens)) {
    const auto T = static_cast<std::int64_t>(number("--sweep-seq-lens", x, true));
    const std::int64_t T0 = o.full_seq_len > 0 ? o.full_seq_len : s.seq_len, per_step = s.batch * T0;
    if (T < 2 || per_step % T != 0)
      throw std::runtime_error("--sweep-seq-lens: T " + x + " does not divide B x T = " + std::to_string(s.batch) + " x " +
                               std::to_string(T0) + " = " + std::to_string(per_step) +
                               " (the sweep keeps the tokens per step; choose T that divides it)");
    if (std::find(o.sweep_seq_lens.begin(), o.sweep_seq_lens.end(), T) != o.sweep_seq_lens.end())
      throw std::runtime_error("--sweep-seq-lens: T " + x + " is given twice");
    o.sweep_seq_lens.push_back(T);
  }
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
  if (o.sinks_mode()) {
    s.base.max_position_embeddings = std::max<std::size_t>(s.base.max_position_embeddings, static_cast<std::size_t>(std::max(s.seq_len, o.full_seq_len)) + 1);
    s.steps = o.full_steps;
    s.sinks = {{"sink_presets", o.sink_presets}, {"pilot_steps", o.pilot_steps}, {"pilot_lrs", o.pilot_lrs},
               {"pilot_wds", o.pilot_wds},       {"pilot_bos", o.pilot_bos},     {"full_steps", o.full_steps},
               {"full_size", o.full_size},       {"full_seq_len", o.full_seq_len}, {"diag_batches", o.diag_batches},
               {"warmup", "min(100, steps / 10)"}, {"weight_decay", "the run's"},
               {"choice", "the largest f_attn_max_head projected to a full run's tokens by the line through the "
                          "pilot's second half"},
               {"sweep_seq_lens", o.sweep_seq_lens}};
  }
  o.out = fs::absolute(o.out).lexically_normal().string();
  return run_study_impl(o);
}

const bool registered = tg::cli::register_command(
    {"study", "the gated-attention paper at small scale: presets, lr stability, length extrapolation", run_study});

}  // namespace

