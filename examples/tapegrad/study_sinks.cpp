// examples/tapegrad/study_sinks.cpp — `tapegrad study --mode sinks`: does the model form an
// attention sink, and does the gate remove it? The pilot grid, the choice of its most
// sink-prone setting, the full runs in it, their evaluation and the report (study.hpp).
//
// Note [Sinks mode]
// The question (issue 17, docs/sinks/report.md) is the paper's title: a baseline model puts a
// large share of its attention on the first token (a "sink", Gu et al. 2025: the share of
// heads whose mean attention on the first token exceeds eps = 0.3, Sink_1^eps) and the G1
// gate removes it. Which settings make a sink appear at small scale is not known in advance,
// so the mode has two phases:
//   1. the pilot: the baseline alone, pilot_steps steps at every point of the grid BOS on/off x
//      pilot learning rates x pilot weight decays, the sink diagnostics (nn/diagnostics.hpp)
//      every pilot_steps/20 steps into each run's diagnostics.csv;
//   2. the full runs: the sink presets (baseline, g1_elementwise, g1_headwise) in the pilot's
//      most sink-prone setting, at full_steps steps (optionally a larger size and T), with
//      diagnostics every full_steps/40 steps, so the emergence of a sink is a curve.
//   3. optionally (--sweep-seq-lens) the T sweep: the baseline in the same setting at other
//      T, B scaled so that B x T, the tokens per step and per run, and the schedule stay the
//      full runs'; the one variable is T (the number of BOS tokens per token seen moves with it).
// The choice is a rule fixed before any run: a sink grows over millions of tokens, so the
// pilot is judged by its trend, not by its last row (the first runs of the mode picked a
// setting whose largest head peaked early and then stayed flat, while the one that kept
// rising looked weaker at 1 M tokens; docs/sinks/report.md). For each pilot run, the
// least-squares line of f_attn_max_head against tokens through its diagnostics rows in the
// second half of its tokens, evaluated at the full runs' tokens: the largest projection wins;
// ties go to the earlier run of the grid. The projection ranks settings; it is not a
// forecast (a line through 1-2 M tokens says little about 16 M), and the report prints the
// slope and the projection beside the last value.
// Every run is a `tapegrad train` child, resumable and cached exactly like the other modes'
// (study.cpp). Under mpirun the pilot's runs are shared out, every rank waits for all of
// them, computes the same choice from the files, and the full runs are shared out in turn
// (Note [Study on many ranks]). The report's numbers at the end of a run are the last row of
// its diagnostics.csv (the model at its last step on diag_batches fixed validation batches);
// the validation loss and the gate-score histograms (at the BOS and elsewhere) come from the
// evaluation of the finished run here.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>

#include "nn/data.hpp"
#include "nn/diagnostics.hpp"
#include "nn/model.hpp"
#include "run_folder.hpp"
#include "study.hpp"
#include "study_analysis.hpp"
#include "study_probe.hpp"

namespace tg::studycmd {

namespace {

RunSpec sink_run(const std::string& phase, const std::string& preset, bool bos, double lr, double wd,
                 std::int64_t steps, std::int64_t seq_len, std::int64_t warmup, std::int64_t diag_div,
                 std::string config) {
  RunSpec r;
  r.phase = phase, r.preset = preset, r.bos = bos, r.lr = lr, r.weight_decay = wd;
  r.steps = steps, r.seq_len = seq_len;
  r.warmup = warmup >= 0 ? warmup : std::min<std::int64_t>(100, std::max<std::int64_t>(1, steps / 10));
  r.diag_every = std::max<std::int64_t>(1, steps / diag_div);
  r.config = std::move(config);
  return r;
}

// A run's diagnostics.csv: one column per header field (an empty field is NaN).
struct DiagTable {
  std::vector<std::string> names;
  std::vector<std::vector<double>> rows;
  int col(const std::string& n) const {
    for (std::size_t i = 0; i < names.size(); ++i)
      if (names[i] == n) return int(i);
    return -1;
  }
  double last(const std::string& n) const {
    const int c = col(n);
    return c < 0 || rows.empty() ? study::kNaN : rows.back()[std::size_t(c)];
  }
};

DiagTable read_diag(const std::string& dir) {
  const std::string path = cli::run::join(dir, "diagnostics.csv");
  std::error_code ec;
  if (!fs::exists(path, ec)) throw std::runtime_error(path + " is missing: the run kept no sink diagnostics");
  std::istringstream in(cli::run::read_file(path));
  DiagTable t;
  std::string line;
  auto fields = [](const std::string& l) {
    std::vector<std::string> v;
    std::string cur;
    for (char c : l + ",") {
      if (c == ',') v.push_back(cur), cur.clear();
      else cur += c;
    }
    return v;
  };
  if (!std::getline(in, line)) throw std::runtime_error(path + " is empty");
  t.names = fields(line);
  for (std::size_t n = 2; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const auto f = fields(line);
    if (f.size() != t.names.size())
      throw std::runtime_error(path + " line " + std::to_string(n) + ": " + std::to_string(f.size()) + " fields, the header has " +
                               std::to_string(t.names.size()));
    std::vector<double> row;
    for (const auto& x : f) {
      if (x.empty()) {
        row.push_back(study::kNaN);
        continue;
      }
      std::size_t used = 0;
      double v = study::kNaN;
      try {
        v = std::stod(x, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != x.size()) throw std::runtime_error(path + " line " + std::to_string(n) + ": '" + x + "' is not a number");
      row.push_back(v);
    }
    t.rows.push_back(std::move(row));
  }
  if (t.col("f_attn_max_head") < 0 || t.col("tokens") < 0)
    throw std::runtime_error(path + ": no f_attn_max_head or tokens column (not a diagnostics.csv of tapegrad train)");
  return t;
}

std::string on_off(bool b) { return b ? "on" : "off"; }

}  // namespace

std::vector<RunSpec> plan_pilot_runs(const Options& o) {
  std::vector<RunSpec> v;
  for (int bos : o.pilot_bos)
    for (double lr : o.pilot_lrs)
      for (double wd : o.pilot_wds)
        v.push_back(sink_run("pilot", "baseline", bos != 0, lr, wd, o.pilot_steps, o.s.seq_len, -1, 20, ""));
  return v;
}

SinkTrend sink_trend(const std::vector<double>& tokens, const std::vector<double>& f, double at_tokens) {
  SinkTrend t;
  if (tokens.size() != f.size()) throw std::invalid_argument("sink_trend: tokens and values differ in length");
  if (f.empty()) {
    t.last = t.per_million = t.projected = study::kNaN;
    return t;
  }
  t.last = f.back();
  const double half = tokens.back() / 2;
  double n = 0, mx = 0, my = 0;
  for (std::size_t i = 0; i < f.size(); ++i)
    if (tokens[i] >= half && std::isfinite(f[i])) n += 1, mx += tokens[i], my += f[i];
  t.rows = static_cast<std::size_t>(n);
  if (n < 2) {  // no line through fewer than two points: the level alone
    t.per_million = 0;
    t.projected = t.last;
    return t;
  }
  mx /= n, my /= n;
  double sxy = 0, sxx = 0;
  for (std::size_t i = 0; i < f.size(); ++i)
    if (tokens[i] >= half && std::isfinite(f[i])) sxy += (tokens[i] - mx) * (f[i] - my), sxx += (tokens[i] - mx) * (tokens[i] - mx);
  const double slope = sxx > 0 ? sxy / sxx : 0;  // per token
  t.per_million = slope * 1e6;
  t.projected = my + slope * (at_tokens - mx);
  return t;
}

namespace {
SinkTrend pilot_trend(const Options& o, const RunSpec& r, double at_tokens) {
  const DiagTable d = read_diag(run_dir(o, r));
  const int c = d.col("f_attn_max_head"), t = d.col("tokens");
  std::vector<double> x, y;
  for (const auto& row : d.rows) x.push_back(row[std::size_t(t)]), y.push_back(row[std::size_t(c)]);
  return sink_trend(x, y, at_tokens);
}
}  // namespace

std::int64_t full_seq_len_of(const Options& o) { return o.full_seq_len > 0 ? o.full_seq_len : o.s.seq_len; }

SinkChoice choose_sink_setting(const Options& o) {
  SinkChoice c;
  c.full_tokens = double(o.full_steps) * double(o.s.batch) * double(full_seq_len_of(o));
  double best = -std::numeric_limits<double>::infinity();
  for (const RunSpec& r : plan_pilot_runs(o)) {
    const SinkTrend t = pilot_trend(o, r, c.full_tokens);
    c.why += (c.why.empty() ? "" : ", ") + r.name() + " " + fixed(t.projected, 4);
    if (std::isfinite(t.projected) && t.projected > best) best = t.projected, c.trend = t, c.pilot = r;
  }
  if (c.pilot.preset.empty()) throw std::runtime_error("the sinks pilot has no finite f_attn_max_head: " + c.why);
  return c;
}

void write_full_config(const Options& o) {
  const std::int64_t T = full_seq_len_of(o);
  nn::ModelConfig c = o.full_size.empty() ? o.s.base : base_config(o.full_size);
  c.max_position_embeddings = std::max<std::size_t>(c.max_position_embeddings, static_cast<std::size_t>(T) + 1);
  if (!o.full_size.empty()) c.save(cli::run::join(o.out, "full_config.json"));
  if (o.sweep_seq_lens.empty()) return;
  const std::int64_t longest = *std::max_element(o.sweep_seq_lens.begin(), o.sweep_seq_lens.end());
  c.max_position_embeddings = std::max<std::size_t>(c.max_position_embeddings, static_cast<std::size_t>(longest) + 1);
  c.save(cli::run::join(o.out, "sweep_config.json"));
}

std::vector<RunSpec> plan_full_runs(const Options& o, const SinkChoice& c) {
  std::vector<RunSpec> v;
  const std::string config = o.full_size.empty() ? "" : cli::run::join(o.out, "full_config.json");
  for (const auto& p : o.sink_presets)
    v.push_back(sink_run("full", p, c.pilot.bos, c.pilot.lr, c.pilot.weight_decay, o.full_steps, full_seq_len_of(o), -1,
                         40, config));
  return v;
}

std::vector<RunSpec> plan_sweep_runs(const Options& o, const SinkChoice& c) {
  std::vector<RunSpec> v;
  const std::int64_t T0 = full_seq_len_of(o), per_step = o.s.batch * T0;
  const bool full_has_baseline =
      std::find(o.sink_presets.begin(), o.sink_presets.end(), "baseline") != o.sink_presets.end();
  for (std::int64_t T : o.sweep_seq_lens) {
    if (T == T0 && full_has_baseline) continue;  // the full baseline run is this point of the sweep
    RunSpec r = sink_run("sweep", "baseline", c.pilot.bos, c.pilot.lr, c.pilot.weight_decay, o.full_steps, T, -1, 40,
                         cli::run::join(o.out, "sweep_config.json"));
    r.batch = per_step / T;  // the flags were checked: T divides B x T of the full runs
    v.push_back(r);
  }
  return v;
}

namespace {
// The run of the sweep at T (the full baseline run at the full runs' T).
RunSpec sweep_run_at(const Options& o, const SinkChoice& c, std::int64_t T) {
  for (const RunSpec& r : plan_sweep_runs(o, c))
    if (r.seq_len == T) return r;
  for (const RunSpec& r : plan_full_runs(o, c))
    if (r.preset == "baseline") return r;
  throw std::logic_error("no sweep run at T " + std::to_string(T));
}
}  // namespace

// Validation loss (o.eval_batches fixed batches, with the run's BOS) and the gate-score
// histograms at position 0 and elsewhere (kHistBatches batches, every layer).
json evaluate_sink_run(const Options& o, const RunSpec& r, const data::Corpus& corpus) {
  const Settings& s = o.s;
  const std::string dir = run_dir(o, r);
  nn::CausalLM<float> model = load_run_model(dir);
  const std::size_t Tn = static_cast<std::size_t>(r.seq_len), Bn = static_cast<std::size_t>(batch_of(s, r));
  const data::Split parts = data::split(corpus, s.val_fraction, Tn + 1);
  const data::BatchSampler val(parts.val, Bn, Tn, "the validation split", run_windows(dir));
  NoGrad no_grad;
  Generator gen(eval_seed(s));
  std::vector<double> hist_first(kHistBins, 0.0), hist_rest(kHistBins, 0.0);
  double loss_sum = 0;
  const bool gated = model.config().gate.enabled() && !model.config().gate.is_probe();
  for (std::int64_t b = 0; b < o.eval_batches; ++b) {
    const Index batch = val.next(gen);  // (B, T+1)
    loss_sum += static_cast<double>(model.loss(batch).ce.item());
    if (b >= kHistBatches || !gated) continue;
    Index x = Index::from_shape({Bn, Tn});  // (B, T): the inputs
    for (std::size_t i = 0; i < Bn; ++i) std::copy_n(batch.data() + i * (Tn + 1), Tn, x.data() + i * Tn);
    for (std::size_t l = 0; l < model.config().num_hidden_layers; ++l) {
      const auto p = study::probe_layer(model, x, l);
      // Scores with a position axis are (B, T, ...): position 0 is the first T-th of each row.
      if (!p.has_gate_scores || p.gate_scores.dimension() < 3 || p.gate_scores.shape()[1] != Tn) continue;
      const std::size_t per_pos = p.gate_scores.size() / (Bn * Tn);
      for (std::size_t i = 0; i < Bn; ++i) {
        const float* row = p.gate_scores.data() + i * Tn * per_pos;
        study::add_to_histogram(hist_first, row, per_pos, 0.0, 1.0);
        study::add_to_histogram(hist_rest, row + per_pos, (Tn - 1) * per_pos, 0.0, 1.0);
      }
    }
  }
  json j;
  j["key"] = {{"eval_batches", o.eval_batches}, {"eval_seed", eval_seed(s)}, {"hist_batches", kHistBatches},
              {"hist_bins", kHistBins}, {"steps", r.steps}};
  j["status"] = "finished";
  j["preset"] = r.preset;
  j["lr"] = r.lr;
  j["parameters"] = model.num_parameters();
  j["val_loss"] = loss_sum / double(o.eval_batches);
  const DiagTable d = read_diag(dir);
  for (const char* k : {"sink_rate", "f_attn", "f_attn_uniform", "f_attn_max_head", "key1_attn", "max_h_first",
                        "max_h_rest", "gate_first", "gate_rest"}) {
    const double v = d.last(k);
    j[k] = std::isfinite(v) ? json(v) : json(nullptr);
  }
  if (gated) j["gate_hist_first"] = hist_first, j["gate_hist_rest"] = hist_rest;
  return j;
}

// ---- the report ----------------------------------------------------------------------------------

namespace {

const RunResult* find_run(const std::vector<RunResult>& results, const RunSpec& want) {
  for (const auto& r : results)
    if (r.spec.name() == want.name()) return &r;
  return nullptr;
}

double jn(const json& j, const char* k) { return jnum(j, k); }

// One curve per run of a diagnostics column against tokens seen (millions).
void curve_plot(Report& rep, const Options& o, const std::vector<const RunResult*>& runs,
                const std::vector<std::string>& titles, const std::string& column, const std::string& title,
                const std::string& ylabel, const std::string& png, double uniform = study::kNaN) {
  std::ostringstream gp, plot;
  std::size_t i = 0;
  for (std::size_t k = 0; k < runs.size(); ++k) {
    DiagTable d;
    try {
      d = read_diag(run_dir(o, runs[k]->spec));
    } catch (const std::exception&) {
      continue;
    }
    const int c = d.col(column), t = d.col("tokens");
    if (c < 0) continue;
    std::vector<std::vector<double>> rows;
    for (const auto& r : d.rows)
      if (std::isfinite(r[std::size_t(c)])) rows.push_back({r[std::size_t(t)] / 1e6, r[std::size_t(c)]});
    if (rows.empty()) continue;
    gp << datablock("d" + std::to_string(i), rows);
    plot << (plot.tellp() ? ", " : "plot ") << "$d" << i << " using 1:2 with lines lw 2 lc " << color(k) << " title "
         << gp_quote(titles[k]);
    ++i;
  }
  if (!i) return;
  if (std::isfinite(uniform))
    plot << ", " << uniform << " with lines dt 2 lc rgb '#555555' title 'uniform attention'";
  gp << "set title " << gp_quote(title) << " noenhanced\nset xlabel 'tokens seen (millions)'\nset ylabel "
     << gp_quote(ylabel) << "\nset grid\nset key top left noenhanced\nset yrange [0:*]\n"
     << plot.str() << "\n";
  rep.plot(gp.str(), cli::run::join(o.out, png), 800, 450);
}

}  // namespace

void write_sinks_report(const Options& o, std::vector<RunResult>& results, const SinkChoice& choice,
                        const data::Corpus& corpus, double wall_s, double all_wall_s, std::size_t invocations) {
  const Settings& s = o.s;
  Report rep;
  auto& md = rep.md;
  double train_s = 0;
  for (auto& r : results)
    if (!r.metrics.empty()) train_s += r.metrics.back().elapsed_s;
  const auto pilots = plan_pilot_runs(o);
  const auto fulls = plan_full_runs(o, choice);
  const RunSpec& f0 = fulls.front();
  const nn::ModelConfig full_cfg =
      o.full_size.empty() ? s.base : cli::run::load_model_spec(cli::run::join(o.out, "full_config.json")).config;
  auto model_text = [](const nn::ModelConfig& c) {
    std::ostringstream t;
    t << "d " << c.hidden_size << ", " << c.num_hidden_layers << " layers, " << c.num_attention_heads << " heads, head dim "
      << c.head_dim << ", SwiGLU " << c.intermediate_size << ", QK-norm " << (c.use_qk_norm ? "on" : "off") << ", "
      << nn::count_parameters(c) << " parameters without a gate";
    return t.str();
  };
  md << "# Attention sinks at small scale (`tapegrad study --mode sinks`)\n\nMade by:\n\n```\n" << o.command << "\n```\n\n"
     << "Written " << now_utc() << "; this invocation took " << cli::run::format_duration(wall_s);
  if (invocations > 1)
    md << ", the " << invocations << " invocations that wrote into this folder " << cli::run::format_duration(all_wall_s);
  md << "; the " << results.size() << " runs' training took " << cli::run::format_duration(train_s)
     << " in all (their own clocks).\n\n"
     << "The question (Note [Sinks mode] in examples/tapegrad/study_sinks.cpp): does the baseline put a large share "
        "of its attention on the first token (an attention sink), and does the G1 gate remove it? A sink head "
        "(Gu et al. 2025) has a mean attention on the first token, over the queries that see it, above eps = 0.3; "
        "Sink\\_1^0.3 is the share of (layer, head) pairs that are sink heads. F-Attn is that attention averaged "
        "over heads and layers; with uniform attention it would be "
     << fixed(nn::uniform_first_token_attention(static_cast<std::size_t>(f0.seq_len)), 4) << " at T = " << f0.seq_len
     << ". With the BOS on, position 0 of every training and validation window is a token of its own (id 256) "
        "that never occurs in the text.\n\n"
     << "Data: " << fs::path(s.data).filename().string() << " (" << s.data_bytes << " bytes, the last "
     << fixed(100 * s.val_fraction, 0) << "% held out). Every run: B " << s.batch
     << ", AdamW (betas 0.9, 0.95), warm-up min(100, steps / 10), cosine decay to lr/10, clipping " << s.clip
     << ", seed " << s.seed << ", one `tapegrad train` run folder in `runs/`.\n\n";

  // ---- the pilot ----
  md << "## Pilot\n\nThe baseline (" << model_text(s.base) << "), T " << s.seq_len << ", " << o.pilot_steps
     << " steps (" << o.pilot_steps * s.batch * s.seq_len
     << " tokens) at every setting. The rule, fixed before the runs (Note [Sinks mode]): the least-squares line of "
        "the largest per-head F-Attn against tokens through the diagnostics rows of the pilot's second half, "
        "evaluated at a full run's "
     << fixed(choice.full_tokens / 1e6, 1)
     << " M tokens; the largest projection wins. It ranks settings by how fast their strongest head rises; it is "
        "not a forecast.\n\n"
     << "| BOS | lr | weight decay | val loss | Sink\\_1^0.3 | F-Attn | largest head F-Attn (end) | its slope per M tokens "
        "| projected | max \\|h\\| at position 0 | max \\|h\\| elsewhere |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  std::vector<const RunResult*> pilot_runs;
  std::vector<std::string> pilot_titles;
  for (const auto& p : pilots) {
    const RunResult* r = find_run(results, p);
    md << "| " << on_off(p.bos) << " | " << study::format_lr(p.lr) << " | " << study::format_lr(p.weight_decay) << " | ";
    if (!r || !r->ok()) {
      md << (r && r->outcome == Outcome::Diverged ? "diverged" : "not run") << " | | | | | | | |\n";
      continue;
    }
    const json& e = r->eval;
    const bool chosen = p.name() == choice.pilot.name();
    const SinkTrend t = pilot_trend(o, p, choice.full_tokens);
    md << fixed(jn(e, "val_loss"), 4) << " | " << fixed(jn(e, "sink_rate"), 3) << " | " << fixed(jn(e, "f_attn"), 4) << " | "
       << fixed(t.last, 4) << " | " << std::showpos << fixed(t.per_million, 4) << std::noshowpos << " | "
       << (chosen ? "**" : "") << fixed(t.projected, 4) << (chosen ? "**" : "") << " | " << sig3(jn(e, "max_h_first"))
       << " | " << sig3(jn(e, "max_h_rest")) << " |\n";
    pilot_runs.push_back(r);
    pilot_titles.push_back("BOS " + on_off(p.bos) + ", lr " + study::format_lr(p.lr) + ", wd " +
                           study::format_lr(p.weight_decay));
  }
  md << "\nChosen (in bold): BOS " << on_off(choice.pilot.bos) << ", lr " << study::format_lr(choice.pilot.lr)
     << ", weight decay " << study::format_lr(choice.pilot.weight_decay) << ".\n\n![pilot: largest per-head F-Attn](pilot.png)\n\n";
  curve_plot(rep, o, pilot_runs, pilot_titles, "f_attn_max_head", "pilot: the largest per-head F-Attn (baseline)",
             "attention on the first token", "pilot.png");

  // ---- the full runs ----
  md << "## Full runs\n\n" << model_text(full_cfg) << ", T " << f0.seq_len << ", " << o.full_steps << " steps ("
     << o.full_steps * s.batch * f0.seq_len << " tokens per run), BOS " << on_off(f0.bos) << ", lr "
     << study::format_lr(f0.lr) << ", weight decay " << study::format_lr(f0.weight_decay) << "; diagnostics every "
     << f0.diag_every << " steps on " << o.diag_batches << " fixed validation batches.\n\n"
     << "| preset | val loss | Sink\\_1^0.3 | F-Attn | largest head F-Attn | attention on key 1 | max \\|h\\| at position 0 "
        "| max \\|h\\| elsewhere (end) | max \\|h\\| elsewhere (peak, step) | gate at position 0 | gate elsewhere | spikes |\n"
     << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  std::vector<const RunResult*> full_runs;
  std::vector<std::string> full_titles;
  std::map<std::string, const RunResult*> by_preset;
  for (const auto& f : fulls) {
    const RunResult* r = find_run(results, f);
    md << "| " << md_escape(f.preset) << " | ";
    if (!r || !r->ok()) {
      md << (r && r->outcome == Outcome::Diverged ? "diverged" : "not run") << " | | | | | | | | | | |\n";
      continue;
    }
    const json& e = r->eval;
    double peak = 0, peak_step = 0;
    const DiagTable d = read_diag(run_dir(o, f));
    const int c = d.col("max_h_rest"), st = d.col("step");
    for (const auto& row : d.rows)
      if (row[std::size_t(c)] > peak) peak = row[std::size_t(c)], peak_step = row[std::size_t(st)];
    md << fixed(jn(e, "val_loss"), 4) << " | " << fixed(jn(e, "sink_rate"), 3) << " | " << fixed(jn(e, "f_attn"), 4)
       << " | " << fixed(jn(e, "f_attn_max_head"), 4) << " | " << fixed(jn(e, "key1_attn"), 4) << " | "
       << sig3(jn(e, "max_h_first")) << " | " << sig3(jn(e, "max_h_rest")) << " | " << sig3(peak) << " ("
       << std::int64_t(peak_step) << ") | " << fixed(jn(e, "gate_first"), 3) << " | " << fixed(jn(e, "gate_rest"), 3)
       << " | " << r->spikes.spikes << " |\n";
    full_runs.push_back(r);
    full_titles.push_back(f.preset);
    by_preset[f.preset] = r;
  }
  md << "\nAt the end of each run (the last diagnostics row). Spikes: as in the lr mode (a training loss above 1.3x "
        "its running minimum after the warm-up).\n\n";

  // Per layer, at the end.
  const std::size_t L = full_cfg.num_hidden_layers;
  md << "Per layer at the end: F-Attn, then max \\|h\\| of the layer output (M-Act per layer).\n\n| preset |";
  for (std::size_t l = 0; l < L; ++l) md << " F-Attn L" << l << " |";
  for (std::size_t l = 0; l < L; ++l) md << " max \\|h\\| L" << l << " |";
  md << "\n|---|";
  for (std::size_t l = 0; l < 2 * L; ++l) md << "---:|";
  md << "\n";
  std::ostringstream lgp, lp1, lp2;
  std::size_t li = 0;
  for (std::size_t k = 0; k < full_runs.size(); ++k) {
    const DiagTable d = read_diag(run_dir(o, full_runs[k]->spec));
    md << "| " << md_escape(full_titles[k]) << " |";
    std::vector<std::vector<double>> rows;
    for (std::size_t l = 0; l < L; ++l) md << " " << fixed(d.last("f_attn_L" + std::to_string(l)), 4) << " |";
    for (std::size_t l = 0; l < L; ++l) {
      md << " " << sig3(d.last("max_h_L" + std::to_string(l))) << " |";
      rows.push_back({double(l), d.last("f_attn_L" + std::to_string(l)), d.last("max_h_L" + std::to_string(l))});
    }
    md << "\n";
    lgp << datablock("d" + std::to_string(li), rows);
    lp1 << (lp1.tellp() ? ", " : "plot ") << "$d" << li << " using 1:2 with linespoints lw 2 pt 7 lc " << color(k)
        << " title " << gp_quote(full_titles[k]);
    lp2 << (lp2.tellp() ? ", " : "plot ") << "$d" << li << " using 1:3 with linespoints lw 2 pt 7 lc " << color(k)
        << " notitle";
    ++li;
  }
  md << "\n";
  if (li) {
    lgp << "set multiplot layout 1,2\nset grid\nset xlabel 'layer'\nset xtics 1\nset key top left noenhanced\n"
        << "set title 'F-Attn per layer'\nset yrange [0:*]\n" << lp1.str()
        << "\nset title 'M-Act per layer (max |layer output|)'\nset yrange [0:*]\n" << lp2.str() << "\nunset multiplot\n";
    rep.plot(lgp.str(), cli::run::join(o.out, "layers.png"), 1000, 420);
  }
  const double uniform = nn::uniform_first_token_attention(static_cast<std::size_t>(f0.seq_len));
  curve_plot(rep, o, full_runs, full_titles, "f_attn_max_head", "the largest per-head F-Attn over training",
             "attention on the first token", "sink_max_head.png", uniform);
  curve_plot(rep, o, full_runs, full_titles, "f_attn", "F-Attn (mean over heads and layers) over training",
             "attention on the first token", "f_attn.png", uniform);
  curve_plot(rep, o, full_runs, full_titles, "sink_rate", "Sink_1^0.3 over training", "share of sink heads",
             "sink_rate.png");
  curve_plot(rep, o, full_runs, full_titles, "max_h_rest", "max |h| away from position 0 over training", "max |h|",
             "max_h.png");
  md << "![the largest per-head F-Attn over training](sink_max_head.png)\n\n![F-Attn over training](f_attn.png)\n\n"
     << "![Sink_1^0.3 over training](sink_rate.png)\n\n![max |h| over training](max_h.png)\n\n"
     << "![F-Attn and M-Act per layer](layers.png)\n\n";

  {  // gate-score histograms at position 0 and elsewhere
    std::ostringstream gp, plot;
    std::size_t i = 0;
    for (std::size_t k = 0; k < full_runs.size(); ++k) {
      const json& e = full_runs[k]->eval;
      if (!e.contains("gate_hist_first")) continue;
      for (int where = 0; where < 2; ++where) {
        const auto rows = histogram_rows(e[where ? "gate_hist_rest" : "gate_hist_first"].get<std::vector<double>>());
        gp << datablock("d" + std::to_string(i), rows);
        plot << (plot.tellp() ? ", " : "plot ") << "$d" << i << " using 1:2 with histeps lw 2 " << (where ? "" : "dt 2 ")
             << "lc " << color(k) << " title " << gp_quote(full_titles[k] + (where ? ", elsewhere" : ", position 0"));
        ++i;
      }
    }
    if (i) {
      rep.histogram(gp.str(), plot.str(),
                    "gate scores at position 0 and elsewhere (all layers, " + std::to_string(kHistBatches) +
                        " validation batches)",
                    cli::run::join(o.out, "gate_hist.png"));
      md << "![gate scores at position 0 and elsewhere](gate_hist.png)\n\n";
    }
  }
  if (by_preset.count("baseline") && by_preset.count("g1_elementwise"))
    write_heatmap(o, by_preset.at("baseline")->spec, by_preset.at("g1_elementwise")->spec, corpus, rep);

  // ---- the T sweep ----
  if (!o.sweep_seq_lens.empty()) {
    std::vector<std::int64_t> Ts = o.sweep_seq_lens;  // the runs in the flag's order, the table by T
    std::sort(Ts.begin(), Ts.end());
    std::string ts;
    for (std::int64_t T : Ts) ts += (ts.empty() ? "" : ", ") + std::to_string(T);
    md << "## T sweep\n\nThe baseline in the chosen setting at T " << ts << ": "
       << o.full_steps << " steps of B x T = " << s.batch * f0.seq_len << " tokens at every T (B scaled), so every run "
          "sees the same tokens with the same schedule; the run at T " << f0.seq_len
       << " is the full baseline run. Uniform attention on the first token falls as 1/T; the ratio column is F-Attn "
          "over it.\n\n"
       << "| T | B | val loss | Sink\\_1^0.3 | F-Attn | uniform | F-Attn / uniform | largest head F-Attn "
          "| attention on key 1 | max \\|h\\| at position 0 | max \\|h\\| elsewhere |\n"
       << "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    std::vector<const RunResult*> sw;
    std::vector<std::string> sw_titles;
    for (std::int64_t T : Ts) {
      const RunSpec spec = sweep_run_at(o, choice, T);
      const RunResult* r = find_run(results, spec);
      md << "| " << T << " | " << batch_of(s, spec) << " | ";
      if (!r || !r->ok()) {
        md << (r && r->outcome == Outcome::Diverged ? "diverged" : "not run") << " | | | | | | | | |\n";
        continue;
      }
      const json& e = r->eval;
      const double u = nn::uniform_first_token_attention(static_cast<std::size_t>(T));
      md << fixed(jn(e, "val_loss"), 4) << " | " << fixed(jn(e, "sink_rate"), 3) << " | " << fixed(jn(e, "f_attn"), 4)
         << " | " << fixed(u, 4) << " | " << fixed(jn(e, "f_attn") / u, 2) << " | " << fixed(jn(e, "f_attn_max_head"), 4)
         << " | " << fixed(jn(e, "key1_attn"), 4) << " | " << sig3(jn(e, "max_h_first")) << " | "
         << sig3(jn(e, "max_h_rest")) << " |\n";
      sw.push_back(r);
      sw_titles.push_back("T " + std::to_string(T));
    }
    md << "\nAt the end of each run (the last diagnostics row).\n\n"
       << "![the T sweep: the largest per-head F-Attn](sweep_max_head.png)\n\n![the T sweep: F-Attn](sweep_f_attn.png)\n\n"
       << "![the T sweep: max |h|](sweep_max_h.png)\n\n";
    curve_plot(rep, o, sw, sw_titles, "f_attn_max_head", "T sweep (baseline): the largest per-head F-Attn",
               "attention on the first token", "sweep_max_head.png");
    curve_plot(rep, o, sw, sw_titles, "f_attn", "T sweep (baseline): F-Attn (mean over heads and layers)",
               "attention on the first token", "sweep_f_attn.png");
    curve_plot(rep, o, sw, sw_titles, "max_h_rest", "T sweep (baseline): max |h| away from position 0", "max |h|",
               "sweep_max_h.png");
  }

  // ---- against the paper and the targets (mechanical; the verdict is the reader's) ----
  auto get = [&](const char* p, const char* k) {
    return by_preset.count(p) ? jn(by_preset.at(p)->eval, k) : study::kNaN;
  };
  md << "## Against the paper and the issue's targets\n\n"
     << "| | F-Attn paper | F-Attn here | M-Act paper | max \\|h\\| here | mean gate paper | gate here (elsewhere) |\n"
     << "|---|---:|---:|---:|---:|---:|---:|\n"
     << "| baseline | 0.467 | " << fixed(get("baseline", "f_attn"), 4) << " | 1053 | " << sig3(get("baseline", "max_h_rest"))
     << " | — | — |\n"
     << "| g1\\_elementwise | 0.048 | " << fixed(get("g1_elementwise", "f_attn"), 4) << " | 94 | "
     << sig3(get("g1_elementwise", "max_h_rest")) << " | 0.116 | " << fixed(get("g1_elementwise", "gate_rest"), 3) << " |\n\n";
  const double sr = get("baseline", "sink_rate"), bf = get("baseline", "f_attn"), gf = get("g1_elementwise", "f_attn");
  const double bh = get("baseline", "max_h_rest"), gh = get("g1_elementwise", "max_h_rest");
  double best_layer = 0;
  if (by_preset.count("baseline")) {
    const DiagTable d = read_diag(run_dir(o, by_preset.at("baseline")->spec));
    for (std::size_t l = 0; l < L; ++l) best_layer = std::max(best_layer, d.last("f_attn_L" + std::to_string(l)));
  }
  md << "- A sink in the baseline (Sink\\_1^0.3 >= 0.25 or F-Attn >= 0.3 in some layer): Sink\\_1^0.3 " << fixed(sr, 3)
     << ", the largest layer F-Attn " << fixed(best_layer, 4) << ": **" << (sr >= 0.25 || best_layer >= 0.3 ? "yes" : "no")
     << "**.\n"
     << "- g1\\_elementwise cuts the mean F-Attn by >= 4x: " << fixed(bf / gf, 2) << "x.\n"
     << "- g1\\_elementwise cuts the largest max \\|h\\| by >= 2x: " << fixed(bh / gh, 2) << "x (at the end).\n"
     << "- Mean g1\\_elementwise gate score <= 0.2: " << fixed(get("g1_elementwise", "gate_rest"), 3) << ".\n\n";
  rep.write(cli::run::join(o.out, "report.md"));
}

}  // namespace tg::studycmd
