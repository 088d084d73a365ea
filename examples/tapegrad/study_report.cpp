// examples/tapegrad/study_report.cpp — `tapegrad study`'s report: report.md with the
// tables beside the paper's and the gnuplot plots (loss curves, F-Attn and M-Act per layer,
// gate-score histograms, attention heat maps, lr stability, length extrapolation) (study.hpp).
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

// ---- the report --------------------------------------------------------------------------------

// The paper's values (15B MoE, nn/MODEL.md "Diagnostics").
struct PaperRow {
  const char* preset;
  double fattn, mact, gate;
};
const PaperRow kPaper[] = {{"baseline", 0.467, 1053, study::kNaN},
                           {"g1_elementwise", 0.048, 94, 0.116},
                           {"g1_headwise", 0.073, 98, 0.172}};


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
      const auto rows = histogram_rows(r->eval["gate_hist"].get<std::vector<double>>());
      gp << datablock("d" + std::to_string(i), rows);
      plot << (plot.tellp() ? ", " : "plot ") << "$d" << i << " using 1:2 with histeps lw 2 lc " << color(i)
           << " title " << gp_quote(p);
      ++i;
    }
    if (i)
      rep.histogram(gp.str(), plot.str(),
                    "gate scores (all layers, " + std::to_string(kHistBatches) + " validation batches; bins of 0.01)",
                    cli::run::join(o.out, "gate_hist.png"));
  }
}

// The heat map: base_spec's run vs gate_spec's, the same layer and head (the base run's most
// first-token-heavy head), on the first validation sequence (with the runs' BOS, if any).
void write_heatmap(const Options& o, const RunSpec& base_spec, const RunSpec& gate_spec, const data::Corpus& corpus,
                   Report& rep) {
  const Settings& s = o.s;
  auto& md = rep.md;
  const std::size_t Tn = static_cast<std::size_t>(seq_len_of(s, base_spec));
  const data::Split parts = data::split(corpus, s.val_fraction, Tn + 1);
  const data::BatchSampler one(parts.val, 1, Tn, "the validation split", run_windows(run_dir(o, base_spec)));
  Generator gen(eval_seed(s));
  const Index seq = one.next(gen);  // (1, T+1)
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
     << "set title '" << base_spec.preset << ", layer " << best_layer << " head " << best_head << " (F-Attn " << fixed(best, 2)
     << ")'\nplot $a matrix with image notitle\n"
     << "set title '" << gate_spec.preset << ", layer " << best_layer << " head " << best_head << " (F-Attn "
     << fixed(gated_f, 2) << ")'\nplot $b matrix with image notitle\nunset multiplot\n";
  rep.plot(gp.str(), cli::run::join(o.out, "attention_heatmap.png"), 1000, 460);
  const std::string bn = md_escape(base_spec.preset), gn = md_escape(gate_spec.preset);
  md << "### Attention maps\n\nLayer " << best_layer << ", head " << best_head
     << " (the baseline head with the most attention on the first token), first " << n
     << " positions of one validation sequence" << (base_spec.bos ? " (position 0: the BOS)" : "")
     << "; F-Attn of this head on the whole sequence: " << bn << " " << fixed(best, 3) << ", " << gn << " "
     << fixed(gated_f, 3) << ".\n\n![attention maps](attention_heatmap.png)\n\n";
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
    if (by_preset.count("baseline") && by_preset.count("g1_elementwise") && by_preset.at("baseline")->ok() &&
        by_preset.at("g1_elementwise")->ok())
      write_heatmap(o, by_preset.at("baseline")->spec, by_preset.at("g1_elementwise")->spec, corpus, rep);
  }
  if (o.lr_mode()) write_lr_section(o, results, rep);
  if (o.length_mode()) write_length_section(o, results, rep);
  if (o.main_mode()) write_paper_section(o, by_preset, results, rep);
  rep.write(cli::run::join(o.out, "report.md"));
}


}  // namespace tg::studycmd
