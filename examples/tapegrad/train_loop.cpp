// examples/tapegrad/train_loop.cpp — `tapegrad train`'s run: the corpus (bytes, or a
// tokenizer's token file), the model and AdamW, the progress line, evaluation per byte,
// diagnostics, checkpoints and resume, the final sample (train.hpp; Notes [Exact resume] and
// [Training on N ranks] in train.cpp).
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>

#include "autograd/kernels/gemm_bf16.hpp"
#include "autograd/kernels/isa.hpp"
#include "autograd/kernels/parallel.hpp"
#include "commands.hpp"
#include "flags.hpp"
#include "nn/data.hpp"
#include "nn/generate.hpp"
#include "nn/checkpoint.hpp"
#include "nn/diagnostics.hpp"
#include "nn/distributed.hpp"
#include "nn/estimate.hpp"
#include "nn/files.hpp"
#include "nn/model.hpp"
#include "nn/signals.hpp"
#include "nn/train_step.hpp"
#include "optim/optim.hpp"
#include "nn/hf_folder.hpp"
#include "nn/tokenizer.hpp"
#include "nn/tokens.hpp"
#include "run_folder.hpp"

#include "train.hpp"

namespace tg::traincmd {

namespace fs = std::filesystem;


std::string default_data_path(bool* found_note) {
  std::vector<fs::path> tried = {fs::path("data") / "kjv.txt"};
  const std::string exe = cli::run::executable_path();
  if (!exe.empty()) tried.push_back(fs::path(exe).parent_path() / ".." / ".." / "data" / "kjv.txt");
  std::error_code ec;
  for (const auto& p : tried)
    if (fs::is_regular_file(p, ec)) {
      *found_note = true;
      return fs::weakly_canonical(p, ec).string();
    }
  std::string where;
  for (const auto& p : tried) where += (where.empty() ? "" : ", ") + p.lexically_normal().string();
  throw std::runtime_error(
      "no --data given and the default corpus was not found (looked for " + where +
      "): run `bash setup.sh` in the repository (it writes data/kjv.txt, the King James Bible, from Debian's "
      "bible-kjv package) or pass --data FILE");
}

std::string hex64(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// A seed for a separate stream (splitmix64), so the model, the batches and the validation
// batches never share random numbers.
std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t stream) {
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ull * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

bool folder_holds_a_run(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return false;
  for (const char* f : {cli::run::kTrainFile, cli::run::kConfigFile, cli::run::kModelFile, cli::run::kOptimizerFile,
                        cli::run::kMetricsFile, tg::train::kCheckpointsDir})
    if (fs::exists(fs::path(dir) / f, ec)) return true;
  return false;
}

std::string with_commas(std::uint64_t v) {
  std::string s = std::to_string(v), r;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) r += ',';
    r += s[i];
  }
  return r;
}

// ---- the training loop ---------------------------------------------------------------------

class Progress {
 public:
  Progress(std::int64_t total, std::int64_t log_every)
      : tty_(::isatty(STDOUT_FILENO) == 1), total_(total), log_every_(log_every) {}

  // One finished step; `seconds` is its wall time (training only).
  void step(std::int64_t s, double loss, double lr, double seconds, std::size_t tokens) {
    window_.push_back({seconds, tokens});
    if (window_.size() > 20) window_.pop_front();
    double t = 0, n = 0;
    for (auto& [sec, tok] : window_) t += sec, n += double(tok);
    tokens_per_s_ = t > 0 ? n / t : 0;
    const double eta = t / double(window_.size()) * double(total_ - s);
    std::ostringstream line;
    line.setf(std::ios::fixed);
    const int width = 24;
    const int filled = static_cast<int>(double(width) * double(s) / double(total_));
    line << "step " << s << "/" << total_ << " [" << std::string(filled, '#') << std::string(width - filled, '.')
         << "] loss " << std::setprecision(4) << loss << "  lr " << std::scientific << std::setprecision(2) << lr
         << std::fixed << std::setprecision(0) << "  " << tokens_per_s_ << " tok/s  ETA "
         << cli::run::format_duration(eta);
    if (tty_) {
      std::string l = line.str();
      const std::size_t pad = last_len_ > l.size() ? last_len_ - l.size() : 0;
      std::cout << '\r' << l << std::string(pad, ' ') << std::flush;
      last_len_ = l.size();
    } else if (s % log_every_ == 0 || s == total_) {
      std::cout << line.str() << "\n" << std::flush;
    }
  }
  // A line of its own (evaluation, checkpoint), above the bar.
  void message(const std::string& m) {
    if (tty_ && last_len_) {
      std::cout << '\r' << std::string(last_len_, ' ') << '\r';
      last_len_ = 0;
    }
    std::cout << m << "\n" << std::flush;
  }
  void finish() {
    if (tty_ && last_len_) std::cout << "\n";
    last_len_ = 0;
  }
  double tokens_per_s() const { return tokens_per_s_; }

 private:
  bool tty_;
  std::int64_t total_, log_every_;
  std::deque<std::pair<double, std::size_t>> window_;
  double tokens_per_s_ = 0;
  std::size_t last_len_ = 0;
};

// The validation loss in nats per byte of text (Note [Loss per byte]); *per_token (if given)
// gets the mean cross-entropy per token.
//
// Note [Loss per byte]
// A byte model predicts one byte per token, so its loss per token is its loss per byte. A
// BPE model predicts several bytes per token; to compare the two, a BPE run's validation
// loss is the total cross-entropy of the evaluated targets (nats) over the number of bytes
// those targets decode to: sum_i ce_i * B * T / sum_i bytes_i, batch by batch. metrics.csv's
// val_loss and val_bpb are per byte in both kinds of run (for bytes, exactly as before: the
// mean over batches); train_loss stays the model's loss per token.
template <class T>
double evaluate(const nn::CausalLM<T>& model, const data::BatchSampler& val, std::int64_t batches,
                std::uint64_t val_seed, const dist::Group& group, const text::Tokenizer* tok,
                double* per_token = nullptr) {
  NoGrad no_grad;
  Generator gen(val_seed);  // the same validation batches at every evaluation
  // Batch i on rank i mod N; every other rank's slot is 0, so the sum over ranks is exact.
  std::vector<double> losses(static_cast<std::size_t>(batches), 0.0);
  double target_bytes = 0;  // bytes the targets of all batches decode to (every rank draws every batch)
  const std::size_t B = val.batch(), Tn = val.seq_len();
  for (std::int64_t i = 0; i < batches; ++i) {
    const Index b = val.next(gen);
    if (tok)
      for (std::size_t r = 0; r < B; ++r)
        for (std::size_t t = 1; t <= Tn; ++t)
          target_bytes += double(tok->token_bytes(static_cast<std::int32_t>(b.data()[r * (Tn + 1) + t])).size());
    if (i % group.size() == group.rank()) losses[std::size_t(i)] = static_cast<double>(model.loss(b).ce.item());
  }
  losses = group.sum(losses);
  double sum = 0;
  for (double l : losses) sum += l;
  const double mean = sum / static_cast<double>(batches);
  if (per_token) *per_token = mean;
  if (!tok) return mean;
  return sum * double(B * Tn) / std::max(target_bytes, 1.0);
}

// Where the token file of `data` under tokenizer `hash` lives: beside the text, named by the
// tokenizer's hash (data/kjv.txt.tokens-<hash>), so every run on that text with that tokenizer
// reuses it and two tokenizers do not overwrite each other's file; its header names the text's
// fingerprint, so an edited text rebuilds it (data::prepare_token_file). A text in a folder
// that cannot be written gets it under $XDG_CACHE_HOME/tapegrad (or ~/.cache/tapegrad).
std::vector<std::string> token_file_paths(const std::string& data, const std::string& hash) {
  std::vector<std::string> paths = {data + ".tokens-" + hash};
  fs::path cache;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) cache = fs::path(x) / "tapegrad";
  else if (const char* h = std::getenv("HOME"); h && *h) cache = fs::path(h) / ".cache" / "tapegrad";
  if (!cache.empty())
    paths.push_back((cache / (fs::path(data).filename().string() + "-" +
                              hex64(data::fnv1a64(data.data(), data.size())) + ".tokens-" + hash))
                        .string());
  return paths;
}

// The sink metrics (nn/diagnostics.hpp) on the first `batches` validation batches (the
// evaluation's), T positions of each window.
template <class T>
nn::SinkSummary sink_diagnostics(const nn::CausalLM<T>& model, const data::BatchSampler& val, std::int64_t batches,
                                 std::uint64_t val_seed) {
  NoGrad no_grad;
  Generator gen(val_seed);
  const std::size_t B = val.batch(), Tn = val.seq_len();
  Index x = Index::from_shape({B * static_cast<std::size_t>(batches), Tn});  // (n*B, T)
  for (std::int64_t i = 0; i < batches; ++i) {
    const Index b = val.next(gen);  // (B, T+1)
    for (std::size_t r = 0; r < B; ++r)
      std::copy_n(b.data() + r * (Tn + 1), Tn, x.data() + (std::size_t(i) * B + r) * Tn);
  }
  nn::Diagnostics d;
  model.forward(x, nullptr, &d);
  return nn::summarize_sinks(d, Tn);
}

// diagnostics.csv: the header, then the rows kept so far (written atomically).
void write_diag_csv(const std::string& dir, std::size_t layers,
                    const std::vector<std::pair<std::int64_t, std::string>>& rows) {
  std::string text = nn::sink_csv_header(layers) + "\n";
  for (const auto& r : rows) text += r.second + "\n";
  cli::run::write_file_atomic(cli::run::join(dir, "diagnostics.csv"), text);
}

template <class T>
int train(Invocation& inv) {
  const TrainArgs& a = inv.args;
  const std::string& dir = inv.out;
  namespace run = cli::run;

  // ---- everything that can fail on bad input happens before anything is written ----
  data::Corpus corpus = data::Corpus::open(a.data);
  const std::string fingerprint = hex64(corpus.fingerprint());
  if (inv.resume && (fingerprint != a.data_fingerprint || corpus.size() != a.data_bytes))
    throw std::runtime_error("the data file " + a.data + " is not the text this run was trained on (" +
                             std::to_string(corpus.size()) + " bytes, fingerprint " + fingerprint +
                             "; train.json says " + std::to_string(a.data_bytes) + " bytes, " + a.data_fingerprint +
                             ")");
  const std::size_t B = static_cast<std::size_t>(a.batch), Tn = static_cast<std::size_t>(a.seq_len);
  // Note [Training on N ranks]
  const dist::Group world = dist::Group::world();
  const bool root = world.root();
  dist::check_batch(B, world.size());
  // --tokenizer: the text as token ids, encoded once into a token file (token_file_paths).
  std::optional<data::TokenFile> tokens;
  const text::Tokenizer* tok = inv.tokenizer.get();
  if (tok) {
    std::string errors;
    for (const auto& path : token_file_paths(a.data, a.tokenizer_hash)) {
      try {
        std::error_code ec;
        fs::create_directories(fs::path(path).parent_path(), ec);
        bool rebuilt = false;
        const auto t0 = std::chrono::steady_clock::now();
        tokens.emplace(data::prepare_token_file(*tok, corpus, path, &rebuilt));
        if (root)
          std::cout << "tokens: " << (rebuilt ? "encoded " : "reused ") << path << " ("
                    << with_commas(tokens->header().count) << " tokens, " << std::setprecision(3)
                    << double(corpus.size()) / double(std::max<std::uint64_t>(tokens->header().count, 1))
                    << std::setprecision(6) << " bytes per token"
                    << (rebuilt ? ", " + cli::run::format_duration(
                                             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count())
                                : std::string())
                    << ")\n";
        break;
      } catch (const std::runtime_error& e) {
        errors += std::string(errors.empty() ? "" : "; ") + e.what();
      }
    }
    if (!tokens) throw std::runtime_error("cannot write the token file of " + a.data + ": " + errors);
  }
  const data::Split parts = tokens ? data::split(tokens->all(), "the tokens of " + a.data, a.val_fraction, Tn + 1)
                                   : data::split(corpus, a.val_fraction, Tn + 1);
  const data::WindowOptions windows{a.bos_id, a.doc_sep};  // Note [BOS and document windows]
  const data::BatchSampler train_batches(parts.train, B, Tn, "the training split", windows);
  const data::BatchSampler val_batches(parts.val, B, Tn, "the validation split", windows);

  nn::CausalLM<T> model(inv.config, a.seed);
  model.set_checkpoint_layers(inv.checkpoint_activations);  // the same losses, less memory
  optim::AdamWOptions ao;
  ao.lr = a.lr, ao.beta1 = a.beta1, ao.beta2 = a.beta2, ao.weight_decay = a.weight_decay;
  optim::AdamW<T> opt(optim::make_param_groups(model.named_parameters(), a.weight_decay), ao);
  dist::GradReducer<T> reducer(opt.parameters(), world);
  tg::train::DataParallel<T> parallel{&reducer, world,
                                      double(dist::share_begin(B, world.size(), world.rank() + 1) -
                                             dist::share_begin(B, world.size(), world.rank())) /
                                          double(B)};
  auto same_weights = [&](const std::string& when) {
    if (world.size() > 1) dist::check_same(world, dist::hash_values(opt.parameters()), "weights " + when);
  };
  const optim::LrSchedule schedule = optim::LrSchedule::warmup_cosine(a.lr, a.warmup, a.steps, a.min_lr);

  Generator data_gen(derive_seed(a.seed, 1));
  const std::uint64_t val_seed = derive_seed(a.seed, 2);
  TrainState state;
  state.data_rng = data::generator_state(data_gen);
  if (inv.init && !inv.resume) {
    inv.init->load_into(model);  // errors name the folder and the tensor; nothing is written yet
    std::cout << "init: weights from " << inv.init->dir() << " (" << inv.init->files().size() << " file(s), "
              << inv.init->file_bytes() << " bytes)\n";
  }
  if (inv.resume) {
    std::string used;
    std::vector<std::string> skipped;
    state = tg::train::load_latest_checkpoint(dir, model, opt, &used, &skipped);
    for (const auto& w : skipped) std::cerr << "tapegrad train: warning: skipped a checkpoint: " << w << "\n";
    std::cout << "resume: from " << used << " (step " << state.step << ")\n";
    if (inv.stop_at > 0 && inv.stop_at <= state.step)
      throw std::runtime_error("--stop-at " + std::to_string(inv.stop_at) + " is not after the checkpoint's step " +
                               std::to_string(state.step));
    data::set_generator_state(data_gen, state.data_rng);
    // Rows past the checkpoint belong to steps that will be done again.
    std::vector<MetricsRow> kept;
    for (const auto& r : inv.metrics)
      if (r.step <= state.step) kept.push_back(r);
    inv.metrics = std::move(kept);
    std::vector<std::pair<std::int64_t, std::string>> kept_diag;
    for (const auto& r : inv.diag_rows)
      if (r.first <= state.step) kept_diag.push_back(r);
    inv.diag_rows = std::move(kept_diag);
    if (world.size() > 1) world.barrier();  // every rank has read it before rank 0 writes
    if (state.step >= a.steps) {
      if (root)
        for (const auto& p : tg::train::clean_interrupted_saves(dir))
        std::cerr << "tapegrad train: removed " << p << " (left by an interrupted save)\n";
      std::cout << "tapegrad train: the run in " << dir << " already finished its " << a.steps
                << " steps; pass --steps N (more than " << state.step << ") to train it further\n";
      return 0;
    }
  }

  // ---- from here on the run folder is written ----
  same_weights(inv.resume ? "after loading the checkpoint" : "at initialisation");
  signals::install_stop_handlers(root ? kStopMessage : "");  // Ctrl-C from now on ends with a checkpoint
  TrainArgs recorded = a;
  recorded.threads = tg::num_threads();
  recorded.ranks = world.size();
  recorded.data_bytes = corpus.size();
  recorded.data_fingerprint = fingerprint;
  if (root) {  // rank 0 alone writes the run folder
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw std::runtime_error("cannot create the run folder " + dir + ": " + ec.message());
    for (const auto& p : tg::train::clean_interrupted_saves(dir))
      std::cerr << "tapegrad train: removed " << p << " (left by an interrupted save)\n";
    if (!inv.resume) run::save_model_spec(run::join(dir, run::kConfigFile), {inv.config, inv.preset});
    if (!inv.resume && tok) run::write_file_atomic(run::join(dir, run::kTokenizerFile), inv.tokenizer_text);
    run::write_file_atomic(run::join(dir, run::kTrainFile), run::to_json(recorded).dump(2) + "\n");
  }

  const std::size_t nparams = model.num_parameters();
  const tg::kernels::KernelIsa isa = tg::kernels::kernel_isa();
  std::cout << "tapegrad train: " << (a.config.empty() ? a.size : a.config) << " model, preset " << inv.preset
            << ", " << with_commas(nparams) << " parameters, "
            << (tg::kernels::gemm_bf16_enabled() ? std::string("bf16 matmuls, f32 weights") : std::string(dtype_name<T>()))
            << ", " << tg::num_threads()
            << " thread" << (tg::num_threads() == 1 ? "" : "s") << ", kernels " << isa.arch << " (" << isa.level << ")";
  if (world.size() > 1)
    std::cout << " per rank, " << world.size() << " ranks (MPI; " << dist::share_begin(B, world.size(), 1)
              << (B % std::size_t(world.size()) ? "-" + std::to_string(dist::share_begin(B, world.size(), 1) + 1) : "")
              << " of the " << B << " rows of each batch per rank)";
  std::cout << "\n";
  if (inv.default_data)
    std::cout << "data: no --data given, using the default corpus " << a.data << "\n";
  if (tok)
    std::cout << "data: " << a.data << " (" << with_commas(corpus.size()) << " bytes, " << with_commas(tokens->header().count)
              << " tokens of " << a.tokenizer << " (vocabulary " << tok->vocab_size() << "): "
              << with_commas(parts.train.size) << " for training, the last " << with_commas(parts.val.size) << " ("
              << with_commas(data::decoded_bytes(*tok, parts.val)) << " bytes) for validation)\n";
  else
    std::cout << "data: " << a.data << " (" << with_commas(corpus.size()) << " bytes: " << with_commas(parts.train.size)
              << " for training, the last " << with_commas(parts.val.size) << " for validation)\n";
  const double tokens_total = double(a.steps) * double(B * Tn);
  std::cout << "training: " << a.steps << " steps of " << B << " x " << Tn << " tokens (" << with_commas(std::uint64_t(tokens_total))
            << " tokens, " << std::setprecision(2) << tokens_total / double(parts.train.size) << std::setprecision(6) << " epochs), AdamW "
            << schedule.describe() << ", weight decay " << a.weight_decay << ", clip ";
  if (a.clip > 0) std::cout << a.clip;
  else std::cout << "off";
  std::cout << "\n";
  std::cout << "run folder: " << dir << (inv.resume ? " (resuming at step " + std::to_string(state.step) + ")" : "")
            << "\n"
            << std::flush;

  const bool gnuplot = run::have_gnuplot();
  if (!gnuplot) std::cerr << "tapegrad train: warning: gnuplot not found, " << run::kPlotFile << " will not be drawn\n";

  auto write_metrics = [&] {
    if (!root) return;
    run::write_file_atomic(run::join(dir, run::kMetricsFile), run::metrics_csv(inv.metrics));
    if (a.diag_every > 0) write_diag_csv(dir, inv.config.num_hidden_layers, inv.diag_rows);
  };
  auto plot = [&] {
    if (!gnuplot || !root) return;
    std::string why;
    const std::string title = "tapegrad " + inv.preset + " " + (a.config.empty() ? a.size : a.config) + ", seed " +
                              std::to_string(a.seed);
    if (!run::plot_loss(inv.metrics, run::join(dir, run::kPlotFile), title, &why))
      std::cerr << "tapegrad train: warning: no loss plot: " << why << "\n";
  };
  std::int64_t last_saved_step = inv.resume ? state.step : -1;
  auto last_checkpoint_note = [&] {
    return last_saved_step < 0 ? std::string("no checkpoint was written yet")
                               : "the last finite checkpoint, step " + std::to_string(last_saved_step) + ", is kept in " +
                                     run::join(dir, tg::train::kCheckpointsDir);
  };
  auto checkpoint = [&] {
    // metrics.csv first: rows past a checkpoint are dropped on resume, missing rows could
    // not be made up.
    write_metrics();
    state.data_rng = data::generator_state(data_gen);
    same_weights("at step " + std::to_string(state.step));
    if (!root) {
      last_saved_step = state.step;
      return;
    }
    const signals::HoldStopSignals hold;  // a second Ctrl-C waits for the save to end
    try {
      tg::train::save_run_checkpoint(dir, model, opt, state, inv.keep);
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string(e.what()) + "; " + last_checkpoint_note());
    }
    last_saved_step = state.step;
    plot();
  };

  Progress progress(a.steps, inv.log_every);
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const double elapsed0 = state.elapsed_s;
  auto elapsed = [&] { return elapsed0 + std::chrono::duration<double>(clock::now() - t0).count(); };
  double last_val = run::kNone;
  std::int64_t last_val_step = -1;
  const std::int64_t first_step = state.step;
  model.train();
  std::optional<DetectAnomaly> anomaly;
  if (inv.detect_anomaly) anomaly.emplace();

  while (state.step < a.steps) {
    const auto ts = clock::now();
    const Index batch = train_batches.next(data_gen);  // (B, T+1), the same on every rank
    const double lr = schedule.at(state.step);
    tg::train::StepResult r;
    try {
      r = world.size() > 1
              ? tg::train::train_step(model, opt, tg::train::batch_share(batch, world), lr, a.clip, &parallel)
              : tg::train::train_step(model, opt, batch, lr, a.clip);
    } catch (const tg::AnomalyError& e) {
      // --detect-anomaly: the first op that made a NaN/Inf, its inputs' shapes and its module.
      progress.finish();
      write_metrics();
      std::cerr << "tapegrad train: step " << state.step + 1 << ": " << e.what()
                << " (nothing was saved from this step); " << last_checkpoint_note() << ".\n";
      return 3;
    }
    const double loss = r.loss, gnorm = r.grad_norm;
    if (!r.finite) {
      progress.finish();
      write_metrics();
      std::cerr << "tapegrad train: step " << state.step + 1 << ": the loss is " << loss << " and the gradient norm "
                << gnorm << ": training diverged (nothing was saved from this step); " << last_checkpoint_note()
                << ". Try a lower --lr or --clip, or --detect-anomaly to name the op.\n";
      return 3;
    }
    ++state.step;
    state.tokens_seen += B * Tn;
    const double step_s = std::chrono::duration<double>(clock::now() - ts).count();
    progress.step(state.step, loss, lr, step_s, B * Tn);

    MetricsRow row;
    row.step = state.step, row.lr = lr, row.train_loss = loss, row.grad_norm = gnorm;
    row.tokens_per_s = progress.tokens_per_s();
    const bool last = state.step == a.steps;
    if (state.step % a.eval_every == 0 || last) {
      model.eval();
      double per_token = 0;
      last_val = evaluate(model, val_batches, a.eval_batches, val_seed, world, tok, &per_token);
      model.train();
      last_val_step = state.step;
      row.val_loss = last_val;
      row.val_bpb = last_val / std::log(2.0);
      std::ostringstream m;
      m.setf(std::ios::fixed);
      m << "step " << state.step << "/" << a.steps << ": val loss " << std::setprecision(4) << last_val
        << (tok ? " nats/byte" : "") << " (" << std::setprecision(3) << row.val_bpb << " bits/byte"
        << (tok ? ", " + [&] { std::ostringstream o; o.setf(std::ios::fixed); o << std::setprecision(4) << per_token; return o.str(); }() + " nats/token" : std::string())
        << "), train loss " << std::setprecision(4) << loss
        << ", elapsed " << run::format_duration(elapsed());
      progress.message(m.str());
    }
    if (root && a.diag_every > 0 && (state.step % a.diag_every == 0 || last || state.step == 1)) {
      model.eval();
      inv.diag_rows.emplace_back(state.step, nn::sink_csv_row(state.step, state.tokens_seen,
                                                              sink_diagnostics(model, val_batches, a.diag_batches, val_seed)));
      model.train();
      if (!(row.val_loss == row.val_loss)) write_metrics();
    }
    row.elapsed_s = elapsed();
    state.elapsed_s = row.elapsed_s;
    inv.metrics.push_back(row);
    if (row.val_loss == row.val_loss) write_metrics();

    const bool stop_requested = world.any(signals::stop_signal() != 0);  // all ranks stop at the same step
    const bool stop_at = inv.stop_at > 0 && state.step == inv.stop_at && !last;
    if (last || stop_requested || stop_at || (a.save_every > 0 && state.step % a.save_every == 0)) {
      checkpoint();
      if (!last && !stop_requested && !stop_at)
        progress.message("step " + std::to_string(state.step) + ": checkpoint written to " + dir);
    }
    if (stop_requested || stop_at) {
      progress.finish();
      const std::string how = stop_requested ? "interrupted" : "stopped (--stop-at)";
      std::cerr << "tapegrad train: " << how << " at step " << state.step << "/" << a.steps
                << "; checkpoint written to " << dir << ". Continue with:\n  tapegrad train --resume " << dir << "\n";
      return stop_requested ? 130 : 0;
    }
  }
  progress.finish();
  // Training is over and saved: Ctrl-C during the sample just quits.
  signals::restore_default_handlers();

  const double wall = elapsed() - elapsed0;
  std::cout << std::fixed << std::setprecision(4) << "done: " << a.steps - first_step << " steps in "
            << run::format_duration(wall) << " (" << std::setprecision(0)
            << double((a.steps - first_step) * std::int64_t(B * Tn)) / std::max(wall, 1e-9)
            << " tokens/s including evaluation); validation loss " << std::setprecision(4) << last_val << " = "
            << std::setprecision(3) << last_val / std::log(2.0) << " bits per byte at step " << last_val_step << "\n"
            << "run folder: " << dir << " (config.json, train.json, metrics.csv, checkpoints/step-"
            << std::setw(6) << std::setfill('0') << a.steps << std::setfill(' ') << "/"
            << (gnuplot ? ", loss.png" : "") << ")\n";

  if (inv.sample_len > 0 && root) {
    nn::SampleOptions so;
    so.length = static_cast<std::size_t>(inv.sample_len);
    so.temperature = inv.sample_temperature;
    so.seed = a.seed;
    so.context = Tn;
    model.eval();
    std::vector<std::int64_t> prompt;
    if (tok) {
      for (const std::int32_t id : tok->encode(inv.sample_prompt)) prompt.push_back(id);
    } else {
      const Index prompt_ids = data::ByteTokenizer::encode(inv.sample_prompt);
      prompt.assign(prompt_ids.begin(), prompt_ids.end());
    }
    const auto ids = nn::generate(model, prompt, so);
    std::string text;
    if (tok) {
      // An id past the tokenizer's vocabulary (the BOS id, a --config's spare rows) decodes to nothing.
      for (const std::int64_t id : ids) text += tok->token_bytes(static_cast<std::int32_t>(id));
    } else {
      text = data::ByteTokenizer::decode(ids.data(), ids.size());
    }
    std::cout << "\n--- a sample (temperature " << std::setprecision(2) << so.temperature << ", " << ids.size()
              << (tok ? " tokens" : " bytes") << "; more with `tapegrad sample --run " << dir << "`) ---\n"
              << data::printable(inv.sample_prompt + text) << "\n---\n";
  }
  return 0;
}

template int train<float>(Invocation&);
template int train<double>(Invocation&);

}  // namespace tg::traincmd
