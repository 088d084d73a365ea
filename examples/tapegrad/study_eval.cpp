// examples/tapegrad/study_eval.cpp — `tapegrad study`'s evaluation of a finished run
// (validation loss, Diagnostics, gate-score histogram, length extrapolation) and the
// interleaved timing of one training step per preset (study.hpp).
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
#include "study_probe.hpp"

namespace tg::studycmd {

// ---- evaluation --------------------------------------------------------------------------------


json gate_json(const study::GatePool& g) {
  if (g.empty()) return nullptr;
  return {{"count", g.count},        {"mean", g.mean()}, {"std", g.std()}, {"min", g.min}, {"max", g.max},
          {"frac_below_1e2", g.frac_below_1e2()}, {"frac_below_1e3", g.frac_below_1e3()}};
}

double jnum(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_number()) return study::kNaN;
  return j[key].get<double>();
}

nn::CausalLM<float> load_run_model(const std::string& dir, const nn::ModelConfig* override_config) {
  const auto spec = cli::run::load_model_spec(cli::run::join(dir, cli::run::kConfigFile));
  nn::CausalLM<float> model(override_config ? *override_config : spec.config);
  const std::string ck = tg::train::latest_checkpoint(dir);
  if (ck.empty()) throw std::runtime_error(dir + " holds no complete checkpoint");
  cli::run::load_weights(cli::run::join(ck, cli::run::kModelFile), model);
  model.eval();
  return model;
}

data::WindowOptions run_windows(const std::string& dir) {
  const std::string tj = cli::run::join(dir, cli::run::kTrainFile);
  const cli::run::TrainArgs a = cli::run::train_args_from_json(cli::run::read_json(tj), tj);
  data::WindowOptions w;
  w.bos_id = a.bos_id;
  w.doc_sep = a.doc_sep;
  return w;
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


}  // namespace tg::studycmd
