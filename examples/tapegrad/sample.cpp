// examples/tapegrad/sample.cpp — `tapegrad sample`: generate text from a trained model.
//
// What it is for: loading a model from a run folder (--run: config.json, model.safetensors,
// and train.json for the dtype and the context length) or from a config.json and a
// safetensors file (--config + --weights), and continuing a prompt byte by byte with
// temperature, top-k and top-p sampling (nn/generate.hpp generate()). Decoding uses the KV
// cache (one token per forward); --no-cache recomputes the whole window each step, which
// gives the same tokens (tests/test_train.cpp checks it) and shows what the cache saves.
//
// Tokens: bytes, or the tokenizer.json of a --model folder, or the copy a run trained with
// --tokenizer keeps in its folder (--run).
//
// What it is not: a chat interface.
#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>
#include <iomanip>
#include <iostream>

#include "autograd/kernels/parallel.hpp"
#include "commands.hpp"
#include "flags.hpp"
#include "nn/estimate.hpp"
#include "nn/files.hpp"
#include "nn/data.hpp"
#include "nn/generate.hpp"
#include "nn/model.hpp"
#include "nn/hf_folder.hpp"
#include "nn/tokenizer.hpp"
#include "run_folder.hpp"

namespace {

namespace fs = std::filesystem;
using namespace tg;

struct SampleInvocation {
  nn::ModelConfig config;
  std::string weights;
  std::shared_ptr<const nn::HfFolder> folder;  // --model DIR (then weights is empty)
  std::shared_ptr<const text::Tokenizer> tokenizer;  // the folder's tokenizer.json, else bytes
  std::string prompt;
  nn::SampleOptions options;
  bool raw = false;
};

// Writes bytes as they come, holding back an unfinished UTF-8 sequence so printable()
// sees whole characters.
class Printer {
 public:
  explicit Printer(bool raw) : raw_(raw) {}
  void put(const std::string& bytes) {
    for (char c : bytes) {
      // A byte that cannot continue the pending sequence ends it (printable() marks it).
      if (!buf_.empty() && (static_cast<unsigned char>(c) & 0xC0) != 0x80) flush();
      buf_ += c;
      if (buf_.size() >= needed()) flush();
    }
    std::cout << std::flush;
  }
  void flush() {
    std::cout << (raw_ ? buf_ : data::printable(buf_));
    buf_.clear();
  }

 private:
  // The length of the sequence buf_ starts (1 for ASCII and for stray bytes).
  std::size_t needed() const {
    const unsigned char lead = static_cast<unsigned char>(buf_[0]);
    if ((lead & 0xE0) == 0xC0) return 2;
    if ((lead & 0xF0) == 0xE0) return 3;
    if ((lead & 0xF8) == 0xF0) return 4;
    return 1;
  }
  bool raw_;
  std::string buf_;
};

template <class T>
int sample(const SampleInvocation& s) {
  nn::CausalLM<T> model(s.config);
  if (s.folder) s.folder->load_into(model);
  else cli::run::load_weights(s.weights, model);
  model.eval();
  std::vector<std::int64_t> prompt;
  if (s.tokenizer) {
    for (const std::int32_t id : s.tokenizer->encode(s.prompt)) prompt.push_back(id);
  } else {
    const Index ids = data::ByteTokenizer::encode(s.prompt);
    prompt.assign(ids.begin(), ids.end());
  }
  Printer out(s.raw);
  out.put(s.prompt);
  const auto t0 = std::chrono::steady_clock::now();
  const auto gen = nn::generate(model, prompt, s.options, [&](std::int64_t t) {
    if (s.tokenizer) out.put(s.tokenizer->token_bytes(static_cast<std::int32_t>(t)));
    else out.put(std::string(1, static_cast<char>(static_cast<unsigned char>(t))));
  });
  out.flush();
  std::cout << "\n" << std::flush;
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const char* unit = s.tokenizer ? " tokens" : " bytes";
  std::cerr << std::fixed << std::setprecision(2) << "(" << gen.size() << unit << " in " << sec << " s, "
            << std::setprecision(0) << double(gen.size()) / std::max(sec, 1e-9) << unit << "/s, "
            << (s.options.use_cache ? "KV cache" : "no cache") << ", " << dtype_name<T>() << ")\n";
  return 0;
}

int run_sample(int argc, char** argv) {
  CLI::App app{"Generate text from a trained model: a run folder (--run) or a config.json with a safetensors file"};
  app.name("tapegrad sample");
  app.get_formatter()->column_width(30);
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // a later flag wins
  std::string run_dir, config_path, weights, dtype;
  SampleInvocation s;
  s.prompt = "\n";
  std::int64_t length = 300, context = 0;
  double temperature = 0.8, top_p = 1.0;
  std::int64_t top_k = 0;
  std::uint64_t seed = 0;
  int threads = 0;
  bool no_cache = false;
  app.add_option("--run", run_dir, "a run folder written by `tapegrad train`");
  std::string model_dir;
  app.add_option("--model", model_dir,
                 "a Hugging Face model folder: config.json + model.safetensors, or shards with "
                 "model.safetensors.index.json (and tokenizer.json, used for the prompt and the output if present)");
  app.add_option("--config", config_path, "a config.json (with --weights, instead of --run)");
  app.add_option("--weights", weights, "a safetensors file of weights for --config");
  app.add_option("--prompt", s.prompt, "the text to continue (default: a newline)");
  app.add_option("--length", length, "bytes to generate")->capture_default_str()->check(CLI::Range(std::int64_t(0), std::int64_t(1) << 30));
  app.add_option("--temperature", temperature, "softmax temperature (0: greedy)")->capture_default_str()->check(CLI::Range(0.0, 100.0));
  app.add_option("--top-k", top_k, "sample among the k likeliest bytes (0: all)")->capture_default_str()->check(CLI::Range(std::int64_t(0), std::int64_t(1) << 30));
  app.add_option("--top-p", top_p, "nucleus sampling: the fewest bytes holding this probability (1: all)")
      ->capture_default_str()
      ->check(CLI::Range(1e-9, 1.0));
  app.add_option("--seed", seed, "seed of the sampling")->capture_default_str();
  app.add_option("--context", context, "longest context the model sees (default: the run's --seq-len, else max_position_embeddings)")
      ->check(CLI::Range(std::int64_t(2), std::int64_t(1) << 30));
  app.add_option("--dtype", dtype, "f32 or f64 (default: the run's)")->check(CLI::IsMember({"f32", "f64"}));
  app.add_option("--threads", threads, "threads (0: OMP_NUM_THREADS or all cores)")->capture_default_str()->check(CLI::Range(0, 4096));
  app.add_flag("--no-cache", no_cache, "recompute the whole window at every step instead of using the KV cache");
  app.add_flag("--raw", s.raw, "write the generated bytes as they are (no replacement of invalid UTF-8)");
  tg::cli::refuse_non_finite(app);  // Note [Finite number flags] (flags.hpp)
  CLI11_PARSE(app, argc, argv);
  tg::set_num_threads(threads);

  std::string run_dtype = "f32";
  std::int64_t run_context = 0;
  if (!model_dir.empty()) {
    if (!run_dir.empty() || !config_path.empty() || !weights.empty())
      throw std::runtime_error("give --model DIR, --run DIR, or --config with --weights: one of them");
    s.folder = std::make_shared<const nn::HfFolder>(nn::HfFolder::open(model_dir));
    if (const std::string n = s.folder->notice(); !n.empty()) std::cerr << "tapegrad sample: " << n << "\n";
    s.config = s.folder->config();
    if (!s.folder->tokenizer_path().empty()) {
      s.tokenizer = std::make_shared<const text::Tokenizer>(text::Tokenizer::from_file(s.folder->tokenizer_path()));
      if (s.tokenizer->vocab_size() > s.config.vocab_size)
        throw std::runtime_error(s.folder->tokenizer_path() + ": " + std::to_string(s.tokenizer->vocab_size()) +
                                 " token ids, more than the model's vocab_size " + std::to_string(s.config.vocab_size) +
                                 " (" + model_dir + "/config.json)");
    } else if (s.config.vocab_size > data::ByteTokenizer::vocab_size + 1) {
      std::cerr << "tapegrad sample: warning: " << model_dir << " has no tokenizer.json; the prompt is read as bytes "
                << "and ids >= 256 are printed as their low byte\n";
    }
  } else if (!run_dir.empty()) {
    if (!config_path.empty() || !weights.empty())
      throw std::runtime_error("give --run, or --config with --weights, not both");
    const std::string cfg = cli::run::join(run_dir, cli::run::kConfigFile);
    if (!fs::exists(cfg)) throw std::runtime_error(run_dir + " is not a run folder (no " + cli::run::kConfigFile + ")");
    s.config = cli::run::load_model_spec(cfg).config;
    const std::string ck = tg::train::latest_checkpoint(run_dir);
    if (ck.empty()) throw std::runtime_error(run_dir + " holds no complete checkpoint yet");
    s.weights = cli::run::join(ck, cli::run::kModelFile);
    const std::string tj = cli::run::join(run_dir, cli::run::kTrainFile);
    if (fs::exists(tj)) {
      const auto targs = cli::run::train_args_from_json(cli::run::read_json(tj), tj);
      run_dtype = targs.dtype;
      run_context = targs.seq_len;
      if (!targs.tokenizer.empty()) {
        // A run trained with --tokenizer decodes with its copy of the tokenizer.
        const std::string tp = cli::run::join(run_dir, cli::run::kTokenizerFile);
        if (!fs::exists(tp))
          throw std::runtime_error(run_dir + " was trained with the tokenizer " + targs.tokenizer + " but its copy " +
                                   tp + " is missing");
        tg::io::check_regular_file(tp, "the run's tokenizer.json");
        s.tokenizer = std::make_shared<const text::Tokenizer>(text::Tokenizer::from_file(tp));
        char h[17];
        std::snprintf(h, sizeof h, "%016llx", static_cast<unsigned long long>(s.tokenizer->hash()));
        if (targs.tokenizer_hash != h)
          throw std::runtime_error(tp + " (hash " + h + ") is not the tokenizer the run was trained with (" + tj +
                                   " says " + targs.tokenizer_hash + ")");
        if (s.tokenizer->vocab_size() > s.config.vocab_size)
          throw std::runtime_error(tp + ": " + std::to_string(s.tokenizer->vocab_size()) +
                                   " token ids, more than the model's vocab_size " + std::to_string(s.config.vocab_size));
      }
    }
  } else {
    if (config_path.empty() || weights.empty())
      throw std::runtime_error("give --model DIR, --run DIR, or --config FILE with --weights FILE");
    tg::io::check_regular_file(config_path, "--config");  // a FIFO would block forever
    tg::io::check_regular_file(weights, "--weights");
    s.config = cli::run::load_model_spec(config_path).config;
    s.weights = weights;
  }
  if (!s.folder && !fs::exists(s.weights)) throw std::runtime_error("no weights: " + s.weights + " does not exist");
  if (s.prompt.empty()) throw std::runtime_error("--prompt must not be empty (the model continues a text)");
  s.options.length = static_cast<std::size_t>(length);
  s.options.temperature = temperature;
  s.options.top_k = static_cast<std::size_t>(top_k);
  s.options.top_p = top_p;
  s.options.seed = seed;
  s.options.use_cache = !no_cache;
  s.options.context = static_cast<std::size_t>(
      context > 0 ? context : (run_context > 0 ? run_context : std::int64_t(s.config.max_position_embeddings)));
  // The text never grows past the prompt (at most one token per byte) plus --length, so a
  // longer window changes nothing but the memory estimate (a real checkpoint's
  // max_position_embeddings of 40960 would ask for tens of GB).
  if (context == 0)
    s.options.context = std::max<std::size_t>(2, std::min(s.options.context, s.prompt.size() + s.options.length));
  if (dtype.empty()) dtype = run_dtype;
  nn::check_memory(nn::estimate_memory(s.config, 1, s.options.context, dtype == "f64" ? 8 : 4, /*training=*/false), 0,
                   !model_dir.empty() ? model_dir : run_dir.empty() ? config_path : run_dir);  // before the weights are read (nn/estimate.hpp)
  return dtype == "f64" ? sample<double>(s) : sample<float>(s);
}

const bool registered =
    tg::cli::register_command({"sample", "generate text from a trained model (a run folder or config + weights)", run_sample});

}  // namespace
