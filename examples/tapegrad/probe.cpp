// examples/tapegrad/probe.cpp — `tapegrad probe`: the gated-attention paper's Table 4 for any
// checkpoint, measured on a text.
//
//   tapegrad probe --model DIR --text FILE [--seq-len T] [--windows 8] [--eps 0.3]
//   tapegrad probe --config C.json --weights W.safetensors --text FILE [--bos-id 256]
//
// What it is for: a user with the paper's released models (or any Qwen3-style folder, or a
// tapegrad checkpoint) measures what the paper measured: F-Attn (attention on the first
// token) per layer and overall beside what uniform attention would give, Sink_1^eps (Gu et
// al.: the share of heads whose mean first-token attention exceeds eps), M-Act (max |h| of
// each layer's output) at the first position and elsewhere, the gate-score statistics
// (mean, share below 1e-2 and 1e-3) at the first position and elsewhere, and the perplexity
// of the model on the text. The text is tokenised with the folder's tokenizer.json (bytes
// otherwise), cut into --windows consecutive windows of --seq-len tokens from its start
// (fewer when the text is shorter), optionally each led by --bos-id, and run through one
// forward pass with diagnostics (nn/diagnostics.hpp), in float32 by default.
//
// What it is not: a benchmark of speed, or an evaluation harness (one text, no tasks).
#include <cmath>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>

#include "autograd/autograd.hpp"
#include "autograd/kernels/parallel.hpp"
#include "commands.hpp"
#include "flags.hpp"
#include "nn/config.hpp"
#include "nn/data.hpp"
#include "nn/diagnostics.hpp"
#include "nn/estimate.hpp"
#include "nn/files.hpp"
#include "nn/hf_folder.hpp"
#include "nn/model.hpp"
#include "nn/safetensors.hpp"
#include "nn/tokenizer.hpp"

namespace tg::cli {
namespace {

struct ProbeArgs {
  std::string model, config, weights, text, dtype = "f32";
  std::int64_t seq_len = 0, windows = 8, bos_id = -1;  // seq_len 0: min(512, max_position_embeddings)
  double eps = 0.3;
  int threads = 0;
};

// The windows (N, T): consecutive runs of T tokens from the start of `ids`, each led by
// `bos` when bos >= 0 (then T-1 text tokens per window). Throws when not even one window
// of 2 positions fits.
Index make_windows(const std::vector<std::int64_t>& ids, std::size_t T, std::size_t n, std::int64_t bos,
                   const std::string& label) {
  const std::size_t lead = bos >= 0 ? 1 : 0, text_per = T - lead;
  std::size_t count = std::min(n, ids.size() / text_per);
  std::size_t Tn = T;
  if (count == 0) {  // a short text: one window of all of it
    Tn = ids.size() + lead;
    count = 1;
    if (Tn < 2)
      throw std::runtime_error(label + ": " + std::to_string(ids.size()) +
                               " tokens, too few for one window of 2 positions");
  }
  Index x = Index::from_shape({count, Tn});  // (N, T)
  for (std::size_t w = 0; w < count; ++w) {
    std::int64_t* row = x.data() + w * Tn;
    if (lead) row[0] = bos;
    std::copy_n(ids.begin() + static_cast<std::ptrdiff_t>(w * text_per), Tn - lead, row + lead);
  }
  return x;
}

std::string fmt(double v, int prec) {
  if (std::isnan(v)) return "—";
  std::ostringstream o;
  o << std::fixed << std::setprecision(prec) << v;
  return o.str();
}

template <class T>
void run_probe_as(const ProbeArgs& a, const nn::ModelConfig& config, const Index& x,
                  const st::SafeTensorsFile* weights, const nn::HfFolder* folder) {
  nn::CausalLM<T> model(config);
  if (folder) folder->load_into(model);
  else model.load_from(*weights, "weights file " + a.weights);
  model.eval();
  NoGrad no_grad;
  nn::Diagnostics d;
  const nn::LossOutput<T> out = model.loss(x, &d);  // ce: logits[:, :-1] against x[:, 1:]
  const std::size_t N = x.shape()[0], Tn = x.shape()[1];
  const nn::SinkSummary s = nn::summarize_sinks(d, Tn, a.eps);
  const double ce = static_cast<double>(out.ce.value()());

  std::cout << "tapegrad probe: " << N << " window" << (N == 1 ? "" : "s") << " of " << Tn << " tokens"
            << (a.bos_id >= 0 ? " (each led by token " + std::to_string(a.bos_id) + ")" : std::string())
            << " from " << a.text << ", " << a.dtype << "\n";
  std::cout << "cross-entropy " << fmt(ce, 6) << " nats/token, perplexity " << fmt(std::exp(ce), 4) << "\n\n";
  std::cout << "| layer | F-Attn | Sink_1^" << a.eps << " | max |h| at position 0 | max |h| elsewhere (M-Act) | gate mean | gate < 1e-2 |\n";
  std::cout << "|---:|---:|---:|---:|---:|---:|---:|\n";
  for (std::size_t l = 0; l < d.layers.size(); ++l) {
    const auto& L = d.layers[l];
    std::cout << "| " << l << " | " << fmt(s.f_attn[l], 4) << " | " << fmt(s.sink.per_layer[l], 3) << " | "
              << fmt(L.max_h_first, 2) << " | " << fmt(L.max_h_rest, 2) << " | "
              << (L.has_gate_scores ? fmt(L.gate.mean, 4) : "—") << " | "
              << (L.has_gate_scores ? fmt(L.gate.frac_below_1e2, 4) : "—") << " |\n";
  }
  std::cout << "\nF-Attn " << fmt(s.f_attn_mean, 4) << " (uniform attention over " << Tn << " positions: "
            << fmt(s.f_attn_uniform, 4) << "; largest head " << fmt(s.f_attn_max_head, 4) << "), attention on position 1 "
            << fmt(s.key1_attention, 4) << "\n";
  std::cout << "Sink_1^" << a.eps << " " << fmt(s.sink.overall, 3) << " (share of (layer, head) pairs)\n";
  std::cout << "M-Act: max |h| " << fmt(s.max_h_rest, 2) << " elsewhere, " << fmt(s.max_h_first, 2)
            << " at position 0; mean over layers " << fmt(d.mean_max_activation(), 2) << "\n";
  if (!std::isnan(s.gate_first))
    std::cout << "gate score: mean " << fmt(d.mean_gate_score(), 4) << " (at position 0 " << fmt(s.gate_first, 4)
              << ", elsewhere " << fmt(s.gate_rest, 4) << ")\n";
  std::cout << "paper (Table 4, 15B MoE): baseline F-Attn 0.467, M-Act 1053; G1 elementwise F-Attn 0.048, M-Act 94, "
               "gate mean 0.116\n";
}

int run_probe(int argc, char** argv) {
  ProbeArgs a;
  CLI::App app{"The gated-attention paper's Table 4 for a checkpoint: F-Attn, Sink_1^eps, M-Act per layer, gate "
               "scores at the first position and elsewhere, and the perplexity on a text.",
               "tapegrad probe"};
  app.add_option("--model", a.model, "a Hugging Face model folder (config.json + model.safetensors or shards; "
                                     "its tokenizer.json reads the text, bytes otherwise)");
  app.add_option("--config", a.config, "config.json (with --weights, instead of --model; the text is read as bytes)");
  app.add_option("--weights", a.weights, "safetensors file of every parameter (with --config)");
  app.add_option("--text", a.text, "the text to measure on")->required();
  app.add_option("--seq-len", a.seq_len, "positions per window (default: 512, or max_position_embeddings if fewer)")
      ->check(CLI::Range(std::int64_t(2), std::int64_t(1) << 24));
  app.add_option("--windows", a.windows, "consecutive windows from the start of the text")
      ->capture_default_str()
      ->check(CLI::Range(std::int64_t(1), std::int64_t(1) << 20));
  app.add_option("--bos-id", a.bos_id, "a token id put at position 0 of every window (e.g. 256 for a tapegrad run "
                                       "trained with --bos; default: none)");
  app.add_option("--eps", a.eps, "the threshold of Sink_1^eps")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  app.add_option("--dtype", a.dtype, "f32 or f64")->check(CLI::IsMember({"f32", "f64"}))->capture_default_str();
  app.add_option("--threads", a.threads, "threads (0: OMP_NUM_THREADS or all cores)")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  tg::cli::refuse_non_finite(app);  // Note [Finite number flags] (flags.hpp)
  CLI11_PARSE(app, argc, argv);
  try {
    tg::set_num_threads(a.threads);
    std::optional<nn::HfFolder> folder;
    std::optional<text::Tokenizer> tok;
    if (!a.model.empty()) {
      if (!a.config.empty() || !a.weights.empty())
        throw std::runtime_error("give --model DIR, or --config with --weights, not both");
      folder = nn::HfFolder::open(a.model);
      if (const std::string n = folder->notice(); !n.empty()) std::cerr << "tapegrad probe: " << n << "\n";
      if (!folder->tokenizer_path().empty()) tok = text::Tokenizer::from_file(folder->tokenizer_path());
    } else {
      if (a.config.empty() || a.weights.empty())
        throw std::runtime_error("give --model DIR, or --config FILE with --weights FILE");
      io::check_regular_file(a.config, "--config");
      io::check_regular_file(a.weights, "--weights");
    }
    const std::string config_label = folder ? io::join(a.model, nn::kHfConfigFile) : a.config;
    const nn::ModelConfig config = folder ? folder->config() : nn::ModelConfig::load(a.config);
    if (a.seq_len == 0) a.seq_len = static_cast<std::int64_t>(std::min<std::size_t>(512, config.max_position_embeddings));
    if (static_cast<std::size_t>(a.seq_len) > config.max_position_embeddings)
      throw std::runtime_error("--seq-len " + std::to_string(a.seq_len) + " is more than the model's " +
                               "max_position_embeddings " + std::to_string(config.max_position_embeddings) + " (" +
                               config_label + ")");
    if (a.bos_id >= 0 && static_cast<std::size_t>(a.bos_id) >= config.vocab_size)
      throw std::runtime_error("--bos-id " + std::to_string(a.bos_id) + " is not below the model's vocab_size " +
                               std::to_string(config.vocab_size) + " (" + config_label + ")");
    if (tok && tok->vocab_size() > config.vocab_size)
      throw std::runtime_error(folder->tokenizer_path() + ": " + std::to_string(tok->vocab_size()) +
                               " tokens, more than the model's vocab_size " + std::to_string(config.vocab_size));

    const std::string text = io::read_file(a.text);  // refuses a FIFO or a folder at once
    std::vector<std::int64_t> ids;
    if (tok) {
      for (const std::int32_t id : tok->encode(text)) ids.push_back(id);
    } else {
      if (config.vocab_size < data::ByteTokenizer::vocab_size)
        throw std::runtime_error("the text is read as bytes, but the model's vocab_size is " +
                                 std::to_string(config.vocab_size) + " (< 256; " + config_label + ")");
      for (const unsigned char c : text) ids.push_back(c);
    }
    const Index x = make_windows(ids, static_cast<std::size_t>(a.seq_len), static_cast<std::size_t>(a.windows),
                                 a.bos_id, "--text " + a.text);
    nn::check_memory(nn::estimate_memory(config, x.shape()[0], x.shape()[1], a.dtype == "f64" ? 8 : 4,
                                         /*training=*/false),
                     0, config_label);  // before the weights are read (nn/estimate.hpp)
    std::optional<st::SafeTensorsFile> weights;
    if (!folder) weights = st::SafeTensorsFile::load(a.weights);
    const st::SafeTensorsFile* w = weights ? &*weights : nullptr;
    const nn::HfFolder* m = folder ? &*folder : nullptr;
    if (a.dtype == "f64") run_probe_as<double>(a, config, x, w, m);
    else run_probe_as<float>(a, config, x, w, m);
  } catch (const std::exception& e) {
    std::cerr << "tapegrad probe: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

const bool registered = register_command(
    {"probe", "the paper's Table 4 for a checkpoint: F-Attn, Sink_1^0.3, M-Act, gate scores, perplexity", run_probe});

}  // namespace
}  // namespace tg::cli
