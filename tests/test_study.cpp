// tests/test_study.cpp — `tapegrad study`: its arithmetic (spike and divergence counting,
// pooled diagnostics, histogram), its probe of attention probabilities and gate scores
// against the model's own Diagnostics, and the program end to end on tiny models: the
// report's rows, and resuming an interrupted study (stop flag and SIGTERM).
//
// The program is the one built beside this test (<build>/bin/tapegrad; TAPEGRAD_BIN
// overrides). Every study here is the `tiny` size with a handful of steps on one thread.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "examples/tapegrad/study_analysis.hpp"
#include "examples/tapegrad/study_probe.hpp"
#include "nn/checkpoint.hpp"
#include "nn/config.hpp"
#include "nn/data.hpp"
#include "nn/model.hpp"

#include "program_util.hpp"

namespace fs = std::filesystem;
using namespace tg;
using namespace tg::testing;  // program(), TempDir, run(), spawn(), ... (program_util.hpp)

namespace {

const double nan_ = std::numeric_limits<double>::quiet_NaN();

// ---- helpers for the program ---------------------------------------------------------------

std::size_t count_of(const std::string& s, const std::string& part) {
  std::size_t n = 0;
  for (std::size_t p = s.find(part); p != std::string::npos; p = s.find(part, p + 1)) ++n;
  return n;
}

// Text with some structure, enough for a tiny model to learn a little.
std::string genesis_text(std::size_t bytes) {
  const char* words[] = {"in", "the", "beginning", "god", "created", "heaven", "and", "earth", "light", "was",
                         "darkness", "upon", "face", "of", "deep", "spirit", "moved", "waters", "said", "let"};
  std::string s;
  std::uint64_t x = 777;
  while (s.size() < bytes) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    s += words[(x >> 33) % 20];
    s += ((x >> 21) % 11 == 0) ? ".\n" : " ";
  }
  s.resize(bytes);
  return s;
}

// A tiny study: two presets, 12 steps of 2 x 16 tokens, one thread.
std::vector<std::string> tiny_study(const std::string& data, const std::string& out, const std::string& mode,
                                    int steps = 12) {
  return {"study",      "--size",  "tiny",   "--presets", "baseline,g1_elementwise", "--steps", std::to_string(steps),
          "--batch",    "2",       "--seq-len", "16",    "--data",     data,       "--out",   out,
          "--threads",  "1",       "--mode", mode,       "--eval-batches", "2",    "--timing-rounds", "1"};
}

// The last step of a run folder's metrics.csv (0 if there is none).
long last_step(const std::string& run) {
  std::istringstream in(read(run + "/metrics.csv"));
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  if (last.empty() || last.rfind("step", 0) == 0) return 0;
  return std::stol(last.substr(0, last.find(',')));
}

// The cells of the report's table row that starts with "| <name> |".
std::vector<std::string> table_row(const std::string& md, const std::string& name) {
  const std::string start = "| " + name + " |";
  const auto p = md.find(start);
  if (p == std::string::npos) return {};
  const std::string line = md.substr(p, md.find('\n', p) - p);
  std::vector<std::string> cells;
  std::stringstream ss(line.substr(1));
  std::string c;
  while (std::getline(ss, c, '|')) {
    while (!c.empty() && c.front() == ' ') c.erase(c.begin());
    while (!c.empty() && c.back() == ' ') c.pop_back();
    cells.push_back(c);
  }
  return cells;
}

std::string with_commas(long v) {
  std::string d = std::to_string(v), r;
  for (std::size_t i = 0; i < d.size(); ++i) {
    if (i > 0 && (d.size() - i) % 3 == 0) r += ',';
    r += d[i];
  }
  return r;
}

std::string fmt(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

// ---- spikes and divergence ---------------------------------------------------------------------

TEST_CASE("study: a steadily falling loss has no spikes and does not diverge") {
  std::vector<double> l;
  for (int i = 0; i < 50; ++i) l.push_back(5.5 * std::exp(-0.03 * i) + 1.0);
  const auto r = study::count_spikes(l, 5);
  CHECK(r.spikes == 0);
  CHECK(r.spike_steps == 0);
  CHECK_FALSE(r.diverged);
  CHECK(r.initial == l[0]);
  CHECK(r.minimum == l.back());
}

TEST_CASE("study: spikes are events above 1.3x the running minimum after the warm-up") {
  // steps:             1    2    3    4    5    6    7    8    9    10   11
  std::vector<double> l{5.0, 4.0, 3.0, 2.0, 2.0, 2.7, 2.8, 2.0, 1.9, 2.5, 1.8};
  // 2.7 and 2.8 > 1.3*2 = 2.6 (one event of two steps); 2.5 > 1.3*1.9 = 2.47 (another).
  auto r = study::count_spikes(l, 2);
  CHECK(r.spikes == 2);
  CHECK(r.spike_steps == 3);
  CHECK_FALSE(r.diverged);
  CHECK(r.minimum == 1.8);
  // A spike inside the warm-up is not counted: with a warm-up of 7 only step 10 counts.
  r = study::count_spikes(l, 7);
  CHECK(r.spikes == 1);
  CHECK(r.spike_steps == 1);
  // Exactly 1.3x is not a spike.
  r = study::count_spikes({4.0, 2.0, 2.6}, 0);
  CHECK(r.spikes == 0);
  r = study::count_spikes({4.0, 2.0, 2.6000001}, 0);
  CHECK(r.spikes == 1);
}

TEST_CASE("study: divergence is a NaN loss, or a loss above the initial one after the warm-up") {
  auto r = study::count_spikes({5.5, 4.0, 3.0, nan_, 2.0}, 1);
  CHECK(r.diverged);
  CHECK(r.diverged_step == 4);
  CHECK(r.why == "NaN loss");
  r = study::count_spikes({5.5, 4.0, std::numeric_limits<double>::infinity()}, 10);  // even in the warm-up
  CHECK(r.diverged);
  CHECK(r.diverged_step == 3);
  r = study::count_spikes({5.5, 5.6, 4.0, 3.0, 5.8, 5.0}, 2);  // 5.6 is in the warm-up; 5.8 at step 5 is not
  CHECK(r.diverged);
  CHECK(r.diverged_step == 5);
  CHECK(r.why == "loss above its initial value");
  CHECK(r.spikes == 1);  // 5.8 and 5.0 > 1.3 * 3.0, one event
  CHECK(r.spike_steps == 2);
  r = study::count_spikes({5.5, 5.6, 4.0}, 2);
  CHECK_FALSE(r.diverged);
  CHECK(study::count_spikes({}, 0).spikes == 0);
}

// ---- pooling and histograms --------------------------------------------------------------------

TEST_CASE("study: pooled gate statistics equal the statistics of all scores together") {
  xt::xarray<double> a = {0.5, 0.001, 0.2, 0.0005, 0.9};
  xt::xarray<double> b = {0.05, 0.0001, 0.7};
  xt::xarray<double> ab = {0.5, 0.001, 0.2, 0.0005, 0.9, 0.05, 0.0001, 0.7};
  study::GatePool p;
  p.add(nn::gate_stats(a));
  p.add(nn::gate_stats(b));
  const nn::GateStats all = nn::gate_stats(ab);
  CHECK(p.count == doctest::Approx(8));
  CHECK(p.mean() == doctest::Approx(all.mean).epsilon(1e-12));
  CHECK(p.std() == doctest::Approx(all.std).epsilon(1e-9));
  CHECK(p.min == all.min);
  CHECK(p.max == all.max);
  CHECK(p.frac_below_1e2() == doctest::Approx(all.frac_below_1e2));
  CHECK(p.frac_below_1e3() == doctest::Approx(all.frac_below_1e3));
  CHECK(p.frac_below_1e2() == doctest::Approx(3.0 / 8));  // 0.001, 0.0005, 0.0001
  CHECK(p.frac_below_1e3() == doctest::Approx(2.0 / 8));  // 0.0005, 0.0001
  CHECK(study::GatePool().empty());
  CHECK(std::isnan(study::GatePool().mean()));
}

TEST_CASE("study: diagnostics pooled over batches: F-Attn averaged, max |h| maximised") {
  nn::Diagnostics d1, d2;
  d1.layers.resize(2), d2.layers.resize(2);
  d1.layers[0].first_token_attention = 0.2, d2.layers[0].first_token_attention = 0.4;
  d1.layers[1].first_token_attention = 0.1, d2.layers[1].first_token_attention = 0.3;
  d1.layers[0].max_ffn_residual = 5, d2.layers[0].max_ffn_residual = 7;
  d1.layers[1].max_ffn_residual = 9, d2.layers[1].max_ffn_residual = 3;
  study::DiagnosticsPool p;
  p.add(d1);
  p.add(d2);
  CHECK(p.layers[0].fattn() == doctest::Approx(0.3));
  CHECK(p.layers[1].fattn() == doctest::Approx(0.2));
  CHECK(p.mean_fattn() == doctest::Approx(0.25));
  CHECK(p.mean_max_activation() == doctest::Approx((7.0 + 9.0) / 2));
  CHECK(std::isnan(p.mean_gate_score()));
  nn::Diagnostics d3;
  d3.layers.resize(3);
  CHECK_THROWS_AS(p.add(d3), std::invalid_argument);
}

TEST_CASE("study: histogram bins, edges and out-of-range values") {
  std::vector<double> h(10, 0.0);
  const double v[] = {0.0, 0.05, 0.1, 0.999, 1.0, 1.5, -0.2, nan_};
  study::add_to_histogram(h, v, 8, 0.0, 1.0);
  CHECK(h[0] == 3);  // 0, 0.05, and -0.2 clamped
  CHECK(h[1] == 1);  // 0.1
  CHECK(h[9] == 3);  // 0.999, 1.0 and 1.5 clamped
  double total = 0;
  for (double c : h) total += c;
  CHECK(total == 7);  // NaN skipped
  CHECK(study::run_name("g1_elementwise", 3e-3) == "g1_elementwise-lr0.003");
  CHECK(study::format_lr(3e-2) == "0.03");
  CHECK(study::signed_count(65536) == "+65,536");
  CHECK(study::signed_count(0) == "0");
  CHECK(study::sig3(1053.2) == "1053");
  CHECK(study::sig3(0.04678) == "0.0468");
}

// ---- the probe against the model's own diagnostics ----------------------------------------------

TEST_CASE("study: probe_layer's probabilities and gate scores agree with the model's Diagnostics") {
  const std::vector<std::string> presets = {"baseline",         "g1_elementwise", "g1_headwise",   "g2_elementwise",
                                            "g2_headwise",      "g3_elementwise", "g4_elementwise", "g5_elementwise",
                                            "g1_head_shared",   "g2_head_shared", "g1_input_independent",
                                            "g1_ns_sigmoid",    "g1_additive_silu", "g1_elementwise_silu", "g1_rmsnorm"};
  for (const auto& p : presets) {
    CAPTURE(p);
    nn::ModelConfig c = nn::with_preset(nn::named_size("tiny"), p);  // H 4, K 2: G1's grouped layout
    c.initializer_range = 0.4;  // far from uniform attention and from gate scores of 1/2
    nn::CausalLM<double> model(c, 11);
    if (p == "g1_input_independent") {  // θ starts at zero: give it values
      Generator g(3);
      for (auto& [name, t] : model.named_parameters())
        if (name.find("gate_theta") != std::string::npos) {
          auto& v = t.mutable_value();
          for (auto& x : v) x = Tensor<double>::randn({1}, g).item();
        }
    }
    Generator gen(5);
    Index tokens = xt::zeros<std::int64_t>({std::size_t(2), std::size_t(9)});
    for (auto& t : tokens) t = static_cast<std::int64_t>(data::uniform_index(gen, c.vocab_size));
    nn::Diagnostics d;
    {
      NoGrad ng;
      model.forward(tokens, nullptr, &d);
    }
    for (std::size_t l = 0; l < c.num_hidden_layers; ++l) {
      CAPTURE(l);
      const auto pr = study::probe_layer(model, tokens, l);
      REQUIRE(pr.probs.shape().size() == 4);
      CHECK(pr.probs.shape()[1] == c.num_attention_heads);
      CHECK(study::first_token_attention(pr.probs) == doctest::Approx(d.layers[l].first_token_attention).epsilon(1e-10));
      // each row sums to 1 over the keys it may see
      for (std::size_t i = 0; i < 9; ++i) {
        double s = 0;
        for (std::size_t j = 0; j < 9; ++j) s += pr.probs(1, 2, i, j);
        CHECK(s == doctest::Approx(1.0));
      }
      CHECK(pr.has_gate_scores == d.layers[l].has_gate_scores);
      if (d.layers[l].has_gate_scores) {
        const nn::GateStats g = nn::gate_stats(pr.gate_scores);
        CHECK(g.count == d.layers[l].gate.count);
        CHECK(g.mean == doctest::Approx(d.layers[l].gate.mean).epsilon(1e-10));
        CHECK(g.std == doctest::Approx(d.layers[l].gate.std).epsilon(1e-9));
        CHECK(g.min == doctest::Approx(d.layers[l].gate.min).epsilon(1e-10));
        CHECK(g.max == doctest::Approx(d.layers[l].gate.max).epsilon(1e-10));
      }
    }
  }
  nn::CausalLM<float> m(nn::named_size("tiny"));
  CHECK_THROWS_AS(study::probe_layer(m, Index(xt::zeros<std::int64_t>({std::size_t(1), std::size_t(4)})), 2),
                  std::invalid_argument);
}

// ---- the program ---------------------------------------------------------------------------------

TEST_CASE("study: a tiny main study writes report.md with a row per preset") {
  if (!have_program()) return;
  TempDir tmp("study");
  std::ofstream(tmp / "text.txt") << genesis_text(40000);
  const std::string out = tmp / "study";
  const Result r = run(tiny_study(tmp / "text.txt", out, "main"));
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(contains(r.output, "study 1/2 baseline-lr0.003"));
  CHECK(contains(r.output, "study 2/2 g1_elementwise-lr0.003: step 12/12"));  // the progress line
  const std::string md = read(out + "/report.md");
  REQUIRE(!md.empty());
  CHECK(contains(md, "tapegrad study --size tiny --presets baseline,g1_elementwise"));  // the command
  const auto j_base = nlohmann::json::parse(read(out + "/results/baseline-lr0.003.json"));
  const auto j_gate = nlohmann::json::parse(read(out + "/results/g1_elementwise-lr0.003.json"));
  const auto base = table_row(md, "baseline");
  const auto gate = table_row(md, "g1\\_elementwise");
  REQUIRE(base.size() >= 11);
  REQUIRE(gate.size() >= 11);
  // added parameters: G1 elementwise widens q_proj by H*D rows of C in each layer
  const nn::ModelConfig tiny = nn::named_size("tiny");
  const long added = long(tiny.num_hidden_layers * tiny.num_attention_heads * tiny.head_dim * tiny.hidden_size);
  CHECK(base[1] == "0");
  CHECK(gate[1] == "+" + with_commas(added));
  // val loss and PPL from the cached evaluation
  const double vl = j_gate["val_loss"].get<double>();
  CHECK(gate[2] == fmt(vl, 4));
  CHECK(gate[3] == fmt(std::exp(vl), 3));
  CHECK(vl > 0.5);
  CHECK(vl < 6.0);
  CHECK(gate[4] == fmt(j_gate["fattn"].get<double>(), 3));
  CHECK(gate[6] == fmt(j_gate["mean_gate"].get<double>(), 3));
  CHECK(base[6] == "—");  // no gate, no gate score
  CHECK(base[9] == "1.00x");  // step time (wall), relative to baseline
  CHECK(base[10] == "1.00x");  // step time (CPU)
  CHECK(contains(gate[9], "x"));
  CHECK(contains(gate[10], "x"));
  const auto times = nlohmann::json::parse(read(out + "/time.json"));
  CHECK(times["invocations"].size() == 1);
  CHECK(j_base["layers"].size() == tiny.num_hidden_layers);
  CHECK(j_gate["gate_hist"].size() == 100);
  CHECK(!j_base.contains("gate_hist"));
  // the run folders are `tapegrad train` run folders, trained to the end
  CHECK(last_step(out + "/runs/baseline-lr0.003") == 12);
  CHECK(last_step(out + "/runs/g1_elementwise-lr0.003") == 12);
  if (std::system("command -v gnuplot > /dev/null 2>&1") == 0) {
    for (const char* png : {"val_loss.png", "layers.png", "gate_hist.png", "attention_heatmap.png"}) {
      CAPTURE(png);
      CHECK(fs::exists(out + "/" + png));
    }
  }
  // Another invocation with other settings into the same folder is refused.
  const Result bad = run(plus(tiny_study(tmp / "text.txt", out, "main"), {"--seed", "2"}));
  CHECK(bad.status != 0);
  CHECK(contains(bad.output, "other settings"));
  CHECK(contains(bad.output, "seed"));
}

TEST_CASE("study: an interrupted study resumes - finished runs are reused, not retrained") {
  if (!have_program()) return;
  TempDir tmp("study");
  std::ofstream(tmp / "text.txt") << genesis_text(40000);
  const std::string out = tmp / "study";
  const std::string run_a = out + "/runs/baseline-lr0.003", run_b = out + "/runs/g1_elementwise-lr0.003";

  // 1. Stopped at step 5 of the first run.
  Result r = run(plus(tiny_study(tmp / "text.txt", out, "main"), {"--stop-at", "5"}));
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(contains(r.output, "stopped at step 5 of baseline-lr0.003"));
  CHECK(last_step(run_a) == 5);
  CHECK_FALSE(fs::exists(run_b));
  CHECK_FALSE(fs::exists(out + "/report.md"));

  // 2. Continued: the first run resumes from its checkpoint, the second is trained.
  r = run(tiny_study(tmp / "text.txt", out, "main"));
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(contains(r.output, "baseline-lr0.003: continuing the run in"));
  CHECK(contains(r.output, "g1_elementwise-lr0.003: training into"));
  CHECK(contains(read(out + "/logs/baseline-lr0.003.log"), "resuming at step 5"));
  CHECK(last_step(run_a) == 12);
  CHECK(last_step(run_b) == 12);
  REQUIRE(fs::exists(out + "/report.md"));
  const auto metrics_a = read(run_a + "/metrics.csv");
  const auto weights_a = read(tg::train::latest_checkpoint(run_a) + "/model.safetensors");

  // 3. Again, with the lr mode added: the two finished runs are reused (nothing is
  // retrained, their files are untouched); only the new learning rates are trained.
  r = run(plus(tiny_study(tmp / "text.txt", out, "all"), {"--lrs", "3e-3,3e-2"}));
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(count_of(r.output, "finished earlier, reused") == 2);
  CHECK(count_of(r.output, "training into") == 2);
  CHECK_FALSE(contains(r.output, "baseline-lr0.003: training into"));
  CHECK(read(run_a + "/metrics.csv") == metrics_a);
  CHECK(read(tg::train::latest_checkpoint(run_a) + "/model.safetensors") == weights_a);
  const std::string md = read(out + "/report.md");
  CHECK(nlohmann::json::parse(read(out + "/time.json"))["invocations"].size() == 3);  // the parts add up
  CHECK(contains(md, "the 3 invocations that wrote into this folder"));
  CHECK(contains(md, "## Learning-rate stability"));
  CHECK(contains(md, "## Length extrapolation"));
  CHECK(table_row(md, "baseline").size() >= 10);
}

TEST_CASE("study: SIGTERM stops the study with a checkpoint - the same command continues it") {
  if (!have_program()) return;
  TempDir tmp("study");
  std::ofstream(tmp / "text.txt") << genesis_text(40000);
  const std::string out = tmp / "study";
  const auto args = tiny_study(tmp / "text.txt", out, "main", 400);
  const std::string log = tmp / "log1.txt";
  const pid_t pid = spawn(args, log);
  // Wait until the first run is training (its progress shows), then stop the study.
  const auto t0 = std::chrono::steady_clock::now();
  while (!contains(read(log), "baseline-lr0.003: step ") &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ::kill(pid, SIGTERM);
  const int st = wait_status(pid);
  const std::string out1 = read(log);
  INFO(out1);
  REQUIRE(st == 130);
  CHECK(contains(out1, "interrupted"));
  const long stopped = last_step(out + "/runs/baseline-lr0.003");
  CHECK(stopped > 0);
  CHECK(stopped < 400);
  CHECK_FALSE(tg::train::latest_checkpoint(out + "/runs/baseline-lr0.003").empty());
  CHECK_FALSE(fs::exists(out + "/runs/g1_elementwise-lr0.003"));

  const Result r = run(args);
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(contains(r.output, "baseline-lr0.003: continuing the run"));
  CHECK(contains(read(out + "/logs/baseline-lr0.003.log"), "resuming at step " + std::to_string(stopped)));
  CHECK(last_step(out + "/runs/baseline-lr0.003") == 400);
  CHECK(last_step(out + "/runs/g1_elementwise-lr0.003") == 400);
  CHECK(fs::exists(out + "/report.md"));
}

TEST_CASE("study: the program rebuilt while a study runs - the next runs start the new file") {
  // /proc/self/exe of a program whose file was replaced reads "<path> (deleted)"; the study
  // starts its runs from the file now at that path (cli::run::executable_path).
  if (!have_program()) return;
  TempDir tmp("study");
  std::ofstream(tmp / "text.txt") << genesis_text(40000);
  const fs::path exe = tmp.path / "tapegrad";
  fs::copy_file(program(), exe);
  const std::string log = tmp / "log";
  auto args = tiny_study(tmp / "text.txt", tmp / "study", "main", 1500);
  args.erase(args.end() - 2, args.end());  // no timing rounds
  args.insert(args.end(), {"--timing-rounds", "0"});
  const pid_t pid = spawn(args, log, "", exe.string());
  // while the first run trains (its progress reached the log), replace the file: a new file
  // renamed over the path, so no exec can meet it half written
  for (int i = 0; i < 1000 && !contains(read(log), "baseline-lr0.003: step "); ++i) ::usleep(10000);
  const fs::path fresh = tmp.path / "tapegrad.new";
  fs::copy_file(program(), fresh);
  fs::rename(fresh, exe);
  const bool replaced_before_run_2 = !contains(read(log), "study 2/2");  // 1,500 steps take seconds
  const int st = wait_status(pid);
  CHECK(replaced_before_run_2);
  const std::string out = read(log);
  INFO(out);
  CHECK(st == 0);
  CHECK(contains(out, "study 2/2 g1_elementwise-lr0.003"));
  CHECK(fs::exists(tmp.path / "study" / "report.md"));
}

// The sinks mode (Note [Sinks mode] in examples/tapegrad/study_sinks.cpp): the pilot grid,
// the choice by the rule (recomputed here from the pilot's diagnostics.csv files), the full
// runs in the chosen setting, the gate histograms at position 0 and elsewhere, and a rerun
// that reuses every run.
TEST_CASE("study: --mode sinks runs the pilot grid, picks its most sink-prone setting, then the full runs") {
  if (!have_program()) return;
  TempDir tmp("study");
  std::ofstream(tmp / "text.txt") << genesis_text(40000);
  const std::string out = tmp / "sinks";
  const std::vector<std::string> cmd = {"study", "--mode", "sinks", "--size", "tiny", "--pilot-steps", "6",
                                        "--full-steps", "8", "--pilot-lrs", "1e-2", "--pilot-wds", "0.1,0.5",
                                        "--pilot-bos", "on,off", "--sink-presets", "baseline,g1_elementwise",
                                        "--batch", "2", "--seq-len", "16", "--data", tmp / "text.txt",
                                        "--out", out, "--threads", "1", "--eval-batches", "2",
                                        "--sweep-seq-lens", "8,16,32"};
  Result r = run(cmd);
  INFO(r.output);
  REQUIRE(r.status == 0);
  // The pilot: every setting of the grid, the baseline, with diagnostics; the BOS in the
  // vocabulary only where it is on.
  std::string best;
  double best_f = -1;
  for (const char* bos : {"bos", "nobos"})
    for (const char* wd : {"0.1", "0.5"}) {
      const std::string name = std::string("pilot-baseline-") + bos + "-lr0.01-wd" + wd;
      CAPTURE(name);
      const std::string dir = out + "/runs/" + name;
      CHECK(last_step(dir) == 6);
      const auto train = nlohmann::json::parse(read(dir + "/train.json"));
      CHECK(train["weight_decay"].get<double>() == std::stod(wd));
      const auto config = nlohmann::json::parse(read(dir + "/config.json"));
      CHECK(config["vocab_size"].get<long>() == (std::string(bos) == "bos" ? 257 : 256));
      // The rule: the line of f_attn_max_head against tokens through the rows of the second
      // half of the tokens, at a full run's tokens (8 steps x 2 x 16); the largest wins, ties
      // to the earlier.
      std::istringstream in(read(dir + "/diagnostics.csv"));
      std::string header, line;
      std::getline(in, header);
      std::vector<std::vector<std::string>> rows;
      std::vector<std::string> h;
      auto cells = [](const std::string& l) {
        std::vector<std::string> v;
        std::stringstream ss(l);
        std::string cell;
        while (std::getline(ss, cell, ',')) v.push_back(cell);
        return v;
      };
      h = cells(header);
      while (std::getline(in, line))
        if (!line.empty()) rows.push_back(cells(line));
      const auto col = std::size_t(std::find(h.begin(), h.end(), "f_attn_max_head") - h.begin());
      const auto tcol = std::size_t(std::find(h.begin(), h.end(), "tokens") - h.begin());
      REQUIRE(!rows.empty());
      REQUIRE(col < rows.back().size());
      CHECK(std::stol(rows.back()[0]) == 6);  // a row at the last step
      const double last_tokens = std::stod(rows.back()[tcol]);
      CHECK(last_tokens == 6 * 2 * 16);
      std::vector<double> x, y;
      for (const auto& row : rows)
        if (std::stod(row[tcol]) >= last_tokens / 2) x.push_back(std::stod(row[tcol])), y.push_back(std::stod(row[col]));
      REQUIRE(x.size() >= 2);
      double mx = 0, my = 0, sxy = 0, sxx = 0;
      for (std::size_t i = 0; i < x.size(); ++i) mx += x[i] / double(x.size()), my += y[i] / double(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) sxy += (x[i] - mx) * (y[i] - my), sxx += (x[i] - mx) * (x[i] - mx);
      const double f = my + sxy / sxx * (8 * 2 * 16 - mx);
      if (f > best_f) best_f = f, best = name;
    }
  REQUIRE(!best.empty());
  const std::string setting = best.substr(std::string("pilot-baseline-").size());  // "bos-lr0.01-wd0.5"
  CHECK(contains(r.output, "the pilot's most sink-prone setting: " + best));
  for (const char* p : {"baseline", "g1_elementwise"}) {
    const std::string dir = out + "/runs/full-" + std::string(p) + "-" + setting;
    CAPTURE(dir);
    CHECK(last_step(dir) == 8);
    CHECK(fs::exists(dir + "/diagnostics.csv"));
  }
  // The T sweep: the baseline at T 8 and 32 with B x T = 32 kept (T 16 is the full run).
  for (const auto& [T, B] : std::vector<std::pair<int, int>>{{8, 4}, {32, 1}}) {
    const std::string dir = out + "/runs/sweep-baseline-" + setting + "-T" + std::to_string(T);
    CAPTURE(dir);
    CHECK(last_step(dir) == 8);
    const auto train = nlohmann::json::parse(read(dir + "/train.json"));
    CHECK(train["seq_len"].get<int>() == T);
    CHECK(train["batch"].get<int>() == B);
    CHECK(fs::exists(dir + "/diagnostics.csv"));
  }
  CHECK_FALSE(fs::exists(out + "/runs/sweep-baseline-" + setting + "-T16"));
  // The gate histograms: every score of 2 batches, every layer; position 0 apart.
  const auto g = nlohmann::json::parse(read(out + "/results/full-g1_elementwise-" + setting + ".json"));
  const nn::ModelConfig tiny = nn::named_size("tiny");
  const double per_position = 2.0 * 2.0 * double(tiny.num_hidden_layers * tiny.num_attention_heads * tiny.head_dim);
  double first = 0, rest = 0;
  for (double c : g["gate_hist_first"].get<std::vector<double>>()) first += c;
  for (double c : g["gate_hist_rest"].get<std::vector<double>>()) rest += c;
  CHECK(first == per_position);
  CHECK(rest == per_position * 15);
  CHECK(g["gate_hist_first"].size() == 100);
  const auto b = nlohmann::json::parse(read(out + "/results/full-baseline-" + setting + ".json"));
  CHECK_FALSE(b.contains("gate_hist_first"));
  CHECK(b["f_attn_uniform"].get<double>() > 0);
  const std::string md = read(out + "/report.md");
  CHECK(contains(md, "## Pilot"));
  CHECK(contains(md, "## Full runs"));
  CHECK(contains(md, "tapegrad study --mode sinks"));
  CHECK(table_row(md, "baseline").size() >= 12);
  CHECK(table_row(md, "g1\\_elementwise").size() >= 12);
  CHECK(contains(md, "## T sweep"));
  for (const char* T : {"8", "16", "32"}) {
    CAPTURE(T);
    CHECK(table_row(md, T).size() >= 11);
  }
  if (std::system("command -v gnuplot > /dev/null 2>&1") == 0)
    for (const char* png : {"pilot.png", "sink_max_head.png", "f_attn.png", "max_h.png", "gate_hist.png", "layers.png",
                            "attention_heatmap.png"}) {
      CAPTURE(png);
      CHECK(fs::exists(out + "/" + png));
    }
  // The same command again: nothing is retrained.
  r = run(cmd);
  REQUIRE(r.status == 0);
  CHECK(count_of(r.output, "finished earlier, reused") == 8);
  CHECK_FALSE(contains(r.output, "training into"));
  // A sweep T that does not divide B x T is refused, naming the flag and the product.
  const Result bad_t = run(plus(cmd, {"--sweep-seq-lens", "12"}));
  CHECK(bad_t.status != 0);
  CHECK(contains(bad_t.output, "--sweep-seq-lens: T 12 does not divide B x T = 2 x 16 = 32"));
  // Flags of the other modes are refused in this one, and the other way round.
  const Result bad = run(plus(cmd, {"--steps", "5"}));
  CHECK(bad.status != 0);
  CHECK(contains(bad.output, "--steps does not apply to --mode sinks"));
  const Result bad2 = run(plus(tiny_study(tmp / "text.txt", tmp / "other", "main"), {"--pilot-steps", "5"}));
  CHECK(bad2.status != 0);
  CHECK(contains(bad2.output, "--pilot-steps applies to --mode sinks only"));
  // The rule judges the trend, not the last row: hand-made pilot diagnostics where the
  // largest last value (flat at 0.5, BOS on, wd 0.1) loses to a head still rising (0.1 +
  // 0.002 per token: 0.484 at the pilot's 192 tokens, 0.612 projected to a full run's 256).
  auto fake = [&](const std::string& name, auto f) {
    std::ofstream csv(out + "/runs/pilot-baseline-" + name + "/diagnostics.csv");
    csv << "step,tokens,f_attn_max_head\n";
    for (int step = 1; step <= 6; ++step) csv << step << "," << step * 32 << "," << f(step * 32.0) << "\n";
  };
  fake("bos-lr0.01-wd0.1", [](double) { return 0.5; });
  fake("bos-lr0.01-wd0.5", [](double t) { return 0.1 + 0.002 * t; });
  fake("nobos-lr0.01-wd0.1", [](double) { return 0.1; });
  fake("nobos-lr0.01-wd0.5", [](double) { return 0.1; });
  r = run(cmd);
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(contains(r.output, "the pilot's most sink-prone setting: pilot-baseline-bos-lr0.01-wd0.5 (largest head F-Attn 0.4840, "
                           "projected 0.6120)"));
  CHECK(last_step(out + "/runs/full-baseline-bos-lr0.01-wd0.5") == 8);
  CHECK(contains(read(out + "/report.md"), "| on | 0.01 | 0.5 |"));
}
