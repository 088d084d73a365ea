// examples/tapegrad/train.cpp — `tapegrad train`: a language model on a text file (its bytes, or
// the tokens of a byte-level BPE tokenizer).
//
// What it is for: the main job of the project. It builds a model (a named size or a
// config.json, with any preset of the gating zoo), reads the corpus once, and trains with
// AdamW, warm-up + cosine decay and gradient clipping, showing a progress bar (step, loss,
// tokens/s, ETA) and evaluating on the held-out tail of the corpus (loss and bits per
// byte). Everything goes to a run folder (run_folder.hpp): config.json, train.json,
// metrics.csv, checkpoints (checkpoints/step-NNNNNN/, nn/checkpoint.hpp), loss.png. `--resume` continues a run exactly where it stopped
// (same losses as without the interruption, at the same thread count); Ctrl-C finishes the
// current step, writes a checkpoint and exits with status 130. At the end it prints a
// sample of generated text.
//
// With no flags (and so `tapegrad` with no command) it trains the baby model on the King
// James Bible (data/kjv.txt, written by setup.sh) for a few minutes on 2 cores.
//
// Under `mpirun -np N` it trains data-parallel (nn/distributed.hpp): every rank computes
// its share of each global batch, the gradients are summed in a fixed order, and rank 0
// alone prints and writes the run folder (Note [Training on N ranks]).
//
// The parts (train.hpp): this file is the command line (flags, the checks of a resume, the
// model and data settings, all before anything is allocated or written); train_loop.cpp
// is the run itself.
//
// What it is not: the model (nn/), the optimizer (optim/), the checkpoint format
// (nn/checkpoint.hpp), or the communication (nn/distributed.hpp).
//
// Note [Exact resume]
// A step draws its batch from the data generator, whose state is saved in
// optimizer.safetensors with the step count; the weights and AdamW moments are saved in
// the training dtype (exact); the learning rate is a pure function of the step; the
// validation batches come from a generator seeded afresh at every evaluation. So a run
// stopped at step k and resumed computes bit for bit what the uninterrupted run computes
// (given the same thread count: OpenMP reductions are deterministic per thread count).
//
// Note [Training on N ranks]
// Every rank builds the same model from the seed, reads the same corpus, and draws every
// global batch from the same data generator; it keeps its rows (Note [Batch shares] in
// nn/distributed.hpp), and train_step sums the gradients across ranks before clipping and
// AdamW, so all ranks hold the same weights (checked by a hash at start and at every
// checkpoint). A stop request (Ctrl-C, SIGTERM from mpirun) is agreed on by all ranks after
// each step, so they stop at the same step and rank 0 writes the checkpoint. Evaluation
// batch i runs on rank i mod N and the losses are summed in batch order: the same bits as
// one process. Diagnostics and the sample run on rank 0 only. `--resume` reads the run
// folder on every rank (a file system every machine sees); the checkpoint holds no rank
// count, so a run continues at any N with the same --batch (losses then change in the last
// bits, as with another thread count).
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
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

namespace {

namespace fs = std::filesystem;
using namespace tg;
using namespace tg::traincmd;

// ---- the command line ------------------------------------------------------------------------

int run_train(int argc, char** argv) {
  CLI::App app{
      "Train a byte-level language model on a text file (default: the baby model on the King James Bible, a few "
      "minutes on 2 cores), writing a run folder with config.json, train.json, metrics.csv, the checkpoints "
      "(checkpoints/step-NNNNNN/: model.safetensors, optimizer.safetensors, manifest.json) and loss.png; then print "
      "a sample."};
  app.name("tapegrad train");
  app.get_formatter()->column_width(34);
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // a later flag wins

  TrainArgs a;
  a.steps = 800, a.batch = 8, a.seq_len = 128;
  a.lr = 2e-3, a.warmup = 40, a.min_lr = 1e-4, a.weight_decay = 0.1, a.clip = 1.0;
  a.eval_every = 100, a.eval_batches = 8, a.save_every = 400;
  Invocation inv;
  inv.sample_len = 400;
  inv.sample_prompt = "\n";
  std::string resume_dir;

  app.add_option("--preset,--variant", a.preset, "gating preset (nn/MODEL.md \"Presets\")")
      ->capture_default_str()
      ->check(CLI::IsMember(nn::list_presets()));
  app.add_option("--size", a.size, "model size (nn/config.hpp)")
      ->capture_default_str()
      ->check(CLI::IsMember(nn::size_names()));
  auto* config_opt = app.add_option("--config", a.config, "a config.json for the model (instead of --size)");
  app.add_option("--init-from", a.init_from,
                 "start from the weights of a Hugging Face model folder (config.json + model.safetensors or "
                 "sharded with model.safetensors.index.json; instead of --size / --config)");
  app.add_option("--data", a.data, "the text to train on (default: data/kjv.txt, written by setup.sh)");
  std::string tokenizer_path;
  app.add_option("--tokenizer", tokenizer_path,
                 "train on the tokens of this Hugging Face byte-level BPE tokenizer.json instead of bytes (e.g. "
                 "from `tapegrad tokenizer train`); the text is encoded once into DATA.tokens-<hash>, the model's "
                 "vocab_size is the tokenizer's, the run folder keeps a copy");
  app.add_option("--val-fraction", a.val_fraction, "the last part of the text held out for validation")
      ->capture_default_str()
      ->check(CLI::Range(1e-6, 0.5));
  app.add_option("--steps", a.steps, "optimizer steps")->capture_default_str()->check(CLI::Range(std::int64_t(1), std::int64_t(1) << 40));
  app.add_option("--batch", a.batch, "sequences per step (B)")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  app.add_option("--seq-len", a.seq_len, "tokens per sequence (T)")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  app.add_option("--lr", a.lr, "peak learning rate")->capture_default_str()->check(CLI::Range(0.0, 10.0));
  app.add_option("--warmup", a.warmup, "linear warm-up steps")->capture_default_str()->check(CLI::Range(std::int64_t(0), std::int64_t(1) << 40));
  app.add_option("--min-lr", a.min_lr, "floor of the cosine decay")->capture_default_str()->check(CLI::Range(0.0, 10.0));
  app.add_option("--weight-decay", a.weight_decay, "AdamW weight decay (matrices only; not norms, biases)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 10.0));
  app.add_option("--clip", a.clip, "clip the global gradient norm to this (0: off)")->capture_default_str()->check(CLI::Range(0.0, 1e9));
  app.add_option("--seed", a.seed, "seed of the initialisation and the batches")->capture_default_str();
  app.add_option("--threads", a.threads, "threads (0: OMP_NUM_THREADS or all cores)")->capture_default_str()->check(CLI::Range(0, 4096));
  app.add_option("--eval-every", a.eval_every, "steps between validation evaluations")->capture_default_str()->check(CLI::Range(std::int64_t(1), std::int64_t(1) << 40));
  app.add_option("--eval-batches", a.eval_batches, "batches per validation evaluation")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  app.add_option("--save-every", a.save_every, "steps between checkpoints (0: only at the end)")->capture_default_str()->check(CLI::Range(std::int64_t(0), std::int64_t(1) << 40));
  bool bos = false;
  app.add_flag("--bos", bos, "put a BOS token (id 256, vocabulary 257) at position 0 of every window")
      ->capture_default_str();
  app.add_option("--doc-windows", a.doc_sep,
                 "start windows only at document starts: " + data::document_separators() +
                     " (nn/data.hpp Note [BOS and document windows])");
  app.add_option("--diag-every", a.diag_every, "steps between sink diagnostics into diagnostics.csv (0: off)")
      ->capture_default_str()->check(CLI::Range(std::int64_t(0), std::int64_t(1) << 40));
  app.add_option("--diag-batches", a.diag_batches, "validation batches of each sink diagnostic")
      ->capture_default_str()->check(CLI::Range(std::int64_t(1), std::int64_t(1) << 20));
  app.add_option("--dtype", a.dtype,
                 "f32, f64, or bf16 (float32 weights, optimizer state, norms and softmax; matmul operands "
                 "rounded to bfloat16 with float32 accumulation; needs AVX512_BF16)")
      ->capture_default_str()->check(CLI::IsMember({"f32", "f64", "bf16"}));
  app.add_option("--out", inv.out, "the run folder (default: runs/<preset>-<size>-s<seed>, numbered if it exists)");
  app.add_option("--resume", resume_dir, "continue the run in this folder (or --out) from its checkpoint")
      ->expected(0, 1);
  app.add_option("--sample-len", inv.sample_len, "bytes of the sample printed at the end (0: none)")
      ->capture_default_str()
      ->check(CLI::Range(std::int64_t(0), std::int64_t(1) << 30));
  app.add_option("--sample-prompt", inv.sample_prompt, "the prompt of that sample (default: a newline)");
  app.add_option("--log-every", inv.log_every, "steps between progress lines when the output is not a terminal (0: auto)")
      ->check(CLI::Range(std::int64_t(0), std::int64_t(1) << 40));
  app.add_option("--stop-at", inv.stop_at, "stop with a checkpoint after this step, as if interrupted (for tests)")
      ->check(CLI::Range(std::int64_t(0), std::int64_t(1) << 40));
  app.add_option("--keep", inv.keep, "complete checkpoints kept in <out>/checkpoints/")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  std::string max_memory;
  app.add_option("--max-memory", max_memory,
                 "refuse a model whose estimated training memory exceeds this (e.g. 8G; default: the machine's memory)");
  app.add_flag("--detect-anomaly", inv.detect_anomaly,
               "stop at the first op whose output or gradient holds NaN or Inf, naming it, its shapes and the layer "
               "(also TAPEGRAD_DETECT_ANOMALY=1)");
  app.add_flag("--checkpoint-activations", inv.checkpoint_activations,
               "keep only each decoder layer's input in the forward and recompute the layer in backward "
               "(autograd/activation_checkpoint.hpp): the same losses, much less activation memory, about one more "
               "forward per step; may change on --resume");
  tg::cli::refuse_non_finite(app);  // Note [Finite number flags] (flags.hpp)
  CLI11_PARSE(app, argc, argv);
  if (const char* e = std::getenv("TAPEGRAD_DETECT_ANOMALY"); e && std::string(e) == "1") inv.detect_anomaly = true;

  inv.resume = app.count("--resume") > 0;
  auto given = [&](const char* flag) { return app.count(flag) > 0; };
  // A tokenizer.json: its exact bytes and the tokenizer made from them (errors name the file).
  auto load_tokenizer = [&](const std::string& path, const char* what) {
    tg::io::check_regular_file(path, what);
    std::string text = cli::run::read_file(path);
    auto t = std::make_shared<const text::Tokenizer>(text::Tokenizer::from_string(text, path));
    return std::make_pair(std::move(t), std::move(text));
  };
  tg::set_num_threads(a.threads);

  if (inv.resume) {
    // ---- continue a run: its settings come from train.json ----
    if (!resume_dir.empty() && !inv.out.empty() && fs::path(resume_dir) != fs::path(inv.out))
      throw std::runtime_error("--resume " + resume_dir + " and --out " + inv.out + " name different folders");
    if (!resume_dir.empty()) inv.out = resume_dir;
    if (inv.out.empty()) throw std::runtime_error("--resume needs the run folder: --resume DIR (or --out DIR)");
    if (!folder_holds_a_run(inv.out)) throw std::runtime_error("--resume: " + inv.out + " holds no run");
    if (tg::train::latest_checkpoint(inv.out).empty())
      throw std::runtime_error("--resume: the run in " + inv.out +
                               " has no checkpoint yet (it stopped before its first one): start it again with "
                               "another --out, or delete the folder");
    TrainArgs stored = cli::run::train_args_from_json(cli::run::read_json(cli::run::join(inv.out, cli::run::kTrainFile)),
                                                      cli::run::join(inv.out, cli::run::kTrainFile));
    auto fixed = [&](const char* flag, bool same) {
      if (given(flag) && !same)
        throw std::runtime_error(std::string(flag) +
                                 " differs from the run's value in train.json; a resumed run keeps its settings "
                                 "(only --steps, --eval-every, --eval-batches, --save-every, --threads, --data (same "
                                 "text), --tokenizer (the same), --sample-len, --sample-prompt, --log-every and --stop-at may change)");
    };
    fixed("--preset", a.preset == stored.preset);
    fixed("--size", a.size == stored.size);
    fixed("--config", !a.config.empty() && fs::absolute(a.config).lexically_normal().string() == stored.config);
    fixed("--init-from", !a.init_from.empty() && fs::absolute(a.init_from).lexically_normal().string() == stored.init_from);
    fixed("--val-fraction", a.val_fraction == stored.val_fraction);
    fixed("--batch", a.batch == stored.batch);
    fixed("--seq-len", a.seq_len == stored.seq_len);
    fixed("--lr", a.lr == stored.lr);
    fixed("--warmup", a.warmup == stored.warmup);
    fixed("--min-lr", a.min_lr == stored.min_lr);
    fixed("--weight-decay", a.weight_decay == stored.weight_decay);
    fixed("--clip", a.clip == stored.clip);
    fixed("--seed", a.seed == stored.seed);
    fixed("--dtype", a.dtype == stored.dtype);
    fixed("--bos", !bos || stored.bos_id >= 0);
    fixed("--doc-windows", !given("--doc-windows") || a.doc_sep == stored.doc_sep);
    if (!stored.tokenizer.empty()) {
      // The run folder's copy is the run's tokenizer; it must be the one train.json names.
      const std::string copy = cli::run::join(inv.out, cli::run::kTokenizerFile);
      if (!fs::exists(copy))
        throw std::runtime_error("--resume: the run in " + inv.out + " trains with the tokenizer " + stored.tokenizer +
                                 " (hash " + stored.tokenizer_hash + ") but its copy " + copy + " is missing");
      std::tie(inv.tokenizer, inv.tokenizer_text) = load_tokenizer(copy, "the run's tokenizer.json");
      if (hex64(inv.tokenizer->hash()) != stored.tokenizer_hash)
        throw std::runtime_error("--resume: " + copy + " (hash " + hex64(inv.tokenizer->hash()) +
                                 ") is not the tokenizer this run was trained with (train.json says " +
                                 stored.tokenizer_hash + ")");
      if (given("--tokenizer")) {
        const auto given_tok = load_tokenizer(tokenizer_path, "--tokenizer");
        if (given_tok.first->hash() != inv.tokenizer->hash())
          throw std::runtime_error("--tokenizer " + tokenizer_path + " (hash " + hex64(given_tok.first->hash()) +
                                   ") is not the tokenizer this run was trained with: " + stored.tokenizer +
                                   " (hash " + stored.tokenizer_hash + ", copied in " + copy + ")");
      }
    } else if (given("--tokenizer")) {
      throw std::runtime_error("--tokenizer " + tokenizer_path + ": the run in " + inv.out +
                               " was trained on bytes, not on a tokenizer's tokens");
    }
    TrainArgs r = stored;
    if (given("--steps")) r.steps = a.steps;
    if (given("--eval-every")) r.eval_every = a.eval_every;
    if (given("--eval-batches")) r.eval_batches = a.eval_batches;
    if (given("--save-every")) r.save_every = a.save_every;
    if (given("--diag-every")) r.diag_every = a.diag_every;
    if (given("--diag-batches")) r.diag_batches = a.diag_batches;
    if (given("--data")) r.data = fs::absolute(a.data).lexically_normal().string();
    // A warning as one write, after what stdout holds: under mpirun both streams reach the
    // terminal through the launcher, and a line written in pieces comes out interleaved.
    auto warn = [](const std::string& line) {
      std::cout << std::flush;
      std::cerr << ("tapegrad train: warning: " + line + "\n") << std::flush;
    };
    if (tg::num_threads() != stored.threads)
      warn("this run used " + std::to_string(stored.threads) + " thread(s), now " + std::to_string(tg::num_threads()) +
           ": the losses may differ from an uninterrupted run in the last bits");
    if (dist::Group::world().size() != stored.ranks)
      warn("this run used " + std::to_string(stored.ranks) + " rank(s), now " +
           std::to_string(dist::Group::world().size()) +
           " (the same global --batch): the losses may differ from an uninterrupted run in the last bits");
    if (r.warmup > r.steps) throw std::runtime_error("--steps " + std::to_string(r.steps) + " is less than the run's warm-up");
    inv.args = r;
    const auto spec = cli::run::load_model_spec(cli::run::join(inv.out, cli::run::kConfigFile));
    inv.config = spec.config;
    inv.preset = spec.preset;
    const std::string mpath = cli::run::join(inv.out, cli::run::kMetricsFile);
    if (fs::exists(mpath)) inv.metrics = cli::run::parse_metrics_csv(cli::run::read_file(mpath), mpath);
    const std::string dpath = cli::run::join(inv.out, "diagnostics.csv");
    if (fs::exists(dpath)) {
      std::istringstream in(cli::run::read_file(dpath));
      std::string line;
      std::getline(in, line);  // the header
      while (std::getline(in, line))
        if (!line.empty()) inv.diag_rows.emplace_back(std::stoll(line.substr(0, line.find(','))), line);
    }
  } else {
    // ---- a new run ----
    if (!given("--warmup")) a.warmup = std::min(a.warmup, a.steps);  // short runs: a shorter warm-up
    if (a.warmup > a.steps)
      throw std::runtime_error("--warmup " + std::to_string(a.warmup) + " exceeds --steps " + std::to_string(a.steps));
    if (a.min_lr > a.lr)
      throw std::runtime_error("--min-lr " + std::to_string(a.min_lr) + " exceeds --lr " + std::to_string(a.lr));
    std::size_t base_vocab = data::ByteTokenizer::vocab_size;  // bytes, or the tokenizer's ids
    std::string base_name = "the byte tokenizer's";
    if (given("--tokenizer")) {
      std::tie(inv.tokenizer, inv.tokenizer_text) = load_tokenizer(tokenizer_path, "--tokenizer");
      a.tokenizer = fs::absolute(tokenizer_path).lexically_normal().string();
      a.tokenizer_hash = hex64(inv.tokenizer->hash());
      base_vocab = inv.tokenizer->vocab_size();
      base_name = "the tokenizer " + tokenizer_path + "'s";
    }
    auto check_vocab = [&](const std::string& file) {
      if (inv.config.vocab_size < base_vocab)
        throw std::runtime_error(file + ": vocab_size " + std::to_string(inv.config.vocab_size) + " is smaller than " +
                                 base_name + " " + std::to_string(base_vocab));
    };
    if (given("--init-from")) {
      if (given("--size") || config_opt->count() > 0)
        throw std::runtime_error("give --init-from DIR, or --size / --config, not both (the folder's config.json is the model)");
      if (given("--preset"))
        throw std::runtime_error("--preset with --init-from: a preset changes the model's parameters, so the folder's "
                                 "weights would not fit; the folder's config.json is the model");
      inv.init = std::make_shared<const nn::HfFolder>(nn::HfFolder::open(a.init_from));
      if (const std::string n = inv.init->notice(); !n.empty()) std::cerr << "tapegrad train: " << n << "\n";
      inv.config = inv.init->config();
      inv.preset = "custom";
      check_vocab(a.init_from + "/config.json");
      a.init_from = fs::absolute(a.init_from).lexically_normal().string();
      a.config = a.init_from + "/config.json";
      a.size = "custom";
      a.preset = inv.preset;
    } else if (config_opt->count() > 0) {
      if (given("--size")) throw std::runtime_error("give --size or --config, not both");
      tg::io::check_regular_file(a.config, "--config");  // a FIFO would block forever
      const auto spec = cli::run::load_model_spec(a.config);
      inv.config = spec.config;
      inv.preset = spec.preset;
      if (given("--preset")) {
        nn::apply_preset(inv.config, a.preset);
        inv.preset = a.preset;
      }
      check_vocab(a.config);
      a.config = fs::absolute(a.config).lexically_normal().string();
      a.size = "custom";
      a.preset = inv.preset;
    } else {
      inv.config = nn::named_size(a.size);
      inv.config.vocab_size = base_vocab;  // bytes, or the tokenizer's ids
      nn::apply_preset(inv.config, a.preset);
      inv.preset = a.preset;
    }
    if (bos) {
      // Note [BOS and document windows]: the id after the bytes (or the tokenizer's ids), in
      // the vocabulary.
      a.bos_id = static_cast<std::int64_t>(base_vocab);
      if (inv.config.vocab_size <= base_vocab) {
        if (inv.init)
          throw std::runtime_error("--bos needs id " + std::to_string(base_vocab) + ", but the model of --init-from " +
                                   a.init_from + " has vocab_size " + std::to_string(inv.config.vocab_size));
        inv.config.vocab_size = base_vocab + 1;
      }
    }
    if (!a.doc_sep.empty() && inv.tokenizer)
      throw std::runtime_error("--doc-windows works on bytes only: it cannot be combined with --tokenizer (yet)");
    if (!a.doc_sep.empty()) (void)data::document_starts({nullptr, 0}, a.doc_sep);  // checks the separator
    // The defaults must fit the chosen size (tiny has 64 positions): an unset --seq-len
    // shrinks to the model's longest window.
    if (!given("--seq-len") && static_cast<std::size_t>(a.seq_len) + 1 > inv.config.max_position_embeddings)
      a.seq_len = static_cast<std::int64_t>(inv.config.max_position_embeddings) - 1;
    if (a.seq_len < 1)
      throw std::runtime_error("the model's max_position_embeddings " + std::to_string(inv.config.max_position_embeddings) +
                               " leaves no room for a training window (it needs T + 1 >= 2 positions)");
    if (static_cast<std::size_t>(a.seq_len) + 1 > inv.config.max_position_embeddings)
      throw std::runtime_error("--seq-len " + std::to_string(a.seq_len) + " needs " + std::to_string(a.seq_len + 1) +
                               " positions, more than the model's max_position_embeddings " +
                               std::to_string(inv.config.max_position_embeddings));
    if (a.data.empty()) {
      a.data = default_data_path(&inv.default_data);
    } else {
      a.data = fs::absolute(a.data).lexically_normal().string();
    }
    if (inv.out.empty()) {
      fs::path init_path(a.init_from);
      if (init_path.filename().empty()) init_path = init_path.parent_path();  // "dir/"
      const std::string size_label = !a.init_from.empty() ? init_path.filename().string()
                                     : a.config.empty()   ? a.size
                                                          : fs::path(a.config).stem().string();
      const std::string base = (fs::path("runs") / (inv.preset + "-" + size_label + "-s" + std::to_string(a.seed))).string();
      inv.out = base;
      for (int k = 2; folder_holds_a_run(inv.out); ++k) inv.out = base + "-" + std::to_string(k);
    } else if (folder_holds_a_run(inv.out)) {
      throw std::runtime_error("the run folder " + inv.out +
                               " already holds a run: continue it with --resume, or choose another --out");
    }
    inv.args = a;
  }
  if (inv.log_every == 0) inv.log_every = std::max<std::int64_t>(1, inv.args.steps / 20);
  // Before anything is allocated or written: does the model fit (nn/estimate.hpp)?
  const nn::MemoryEstimate need =
      nn::estimate_memory(inv.config, std::uint64_t(inv.args.batch), std::uint64_t(inv.args.seq_len),
                          inv.args.dtype == "f64" ? 8 : 4, /*training=*/true);
  nn::check_memory(need, max_memory.empty() ? 0 : nn::parse_bytes(max_memory, "--max-memory"),
                   inv.resume ? inv.out : (inv.args.config.empty() ? "--size " + inv.args.size : inv.args.config));
  if (inv.args.dtype == "f64") return train<double>(inv);
  // bf16: float training with the matmuls in bf16 (autograd/kernels/gemm_bf16.hpp); throws,
  // naming AVX512_BF16, on a CPU without it.
  tg::kernels::set_gemm_bf16(inv.args.dtype == "bf16");
  return train<float>(inv);
}

const bool registered = tg::cli::register_command(
    {"train", "train a language model on a text file, on bytes or a BPE tokenizer's tokens (the default job)", run_train});

}  // namespace

