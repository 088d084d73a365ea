// examples/tapegrad/oracle.cpp — `tapegrad oracle`: logits, loss and every parameter's
// gradient of a model on given tokens, written to a safetensors file.
//
//   tapegrad oracle --config C.json --weights W.safetensors --tokens T.txt --out O.safetensors
//                   [--dtype f64|f32|bf16] [--drift]
//   tapegrad oracle ... --hvp V.safetensors       (also the Hessian-vector product along V)
//   tapegrad oracle --model DIR --tokens T.txt --out O.safetensors      (a Hugging Face folder,
//                   nn/hf_folder.hpp: config.json + model.safetensors or sharded with an index)
//
// What it is for: the reference other implementations check themselves against. It builds
// the model of nn/MODEL.md from config.json, loads every parameter from the weights file
// (missing, unexpected or mis-shaped tensors are errors naming them), reads the token
// ids (B lines of T ids; see read_token_file), runs forward + loss + backward once and
// writes, in the chosen dtype (f64 by default):
//   logits                      (B,T,V)
//   loss                        []   ce + router_aux_loss_coef*aux + router_z_loss_coef*z
//   aux_loss, z_loss            []   MoE models only (means over the MoE layers)
//   grad.<parameter name>       d loss / d parameter, for every parameter (zeros for one
//                                    the loss does not reach, e.g. an expert no token chose)
//   hvp.<parameter name>        with --hvp V.safetensors (a direction v: one tensor per
//                                    parameter, named and shaped like the weights): the
//                                    Hessian-vector product H v of the loss with respect to
//                                    all parameters (autograd/functional.hpp hvp: two reverse
//                                    passes, the first with create_graph), so another
//                                    implementation can check its second order against it
// The computation itself runs in that dtype too; bf16 is float32 with every matmul's operands
// rounded to bfloat16 (float accumulation; attention, norms and softmax stay float32), as
// `train --dtype bf16` runs, emulated so that any CPU can run it (Note [Emulated bf16] in
// autograd/kernels/gemm_bf16.cpp), written as float32. --drift also runs the model in f64
// and reports how far the chosen dtype's loss, logits and gradients are from it (printed,
// and kept in the output's metadata as drift_*). Nothing is written if anything fails
// (the file is written last, atomically: an existing --out file is either replaced
// whole or left untouched).
//
// What it is not: a trainer or a sampler (no optimizer step, no dropout: the model has
// none), nor a converter of checkpoints.
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "autograd/autograd.hpp"
#include "autograd/kernels/gemm_bf16.hpp"
#include "commands.hpp"
#include "flags.hpp"
#include "nn/config.hpp"
#include "nn/estimate.hpp"
#include "nn/files.hpp"
#include "nn/hf_folder.hpp"
#include "nn/model.hpp"
#include "nn/safetensors.hpp"

namespace tg::cli {
namespace fs = std::filesystem;
namespace {

// Reads a token file: whitespace-separated integer ids, one sequence per line, every line
// of the same length T >= 2, every id in [0, vocab). Lines holding only whitespace are
// skipped (so a trailing newline or blank separator lines are fine). Returns (B,T).
// Throws std::runtime_error naming the file and the line for: a file that cannot be
// read, no sequence at all, a token that is not an integer, an id out of range, a line
// with fewer than 2 ids, lines of different lengths.
Index read_token_file(const std::string& path, std::size_t vocab) {
  std::istringstream in(io::read_file(path));  // refuses a FIFO or folder at once
  std::vector<std::int64_t> ids;
  std::size_t T = 0, B = 0, first_line = 0;
  std::string line;
  for (std::size_t lineno = 1; std::getline(in, line); ++lineno) {
    const std::string where = "tokens file " + path + ", line " + std::to_string(lineno) + ": ";
    std::istringstream ss(line);
    std::string tok;
    std::size_t n = 0;
    while (ss >> tok) {
      std::int64_t v = 0;
      const auto [end, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
      if (ec == std::errc::result_out_of_range)
        throw std::runtime_error(where + "token '" + tok + "' is out of range [0, " + std::to_string(vocab) + ")");
      if (ec != std::errc() || end != tok.data() + tok.size())
        throw std::runtime_error(where + "token '" + tok + "' is not an integer");
      if (v < 0 || static_cast<std::uint64_t>(v) >= vocab)
        throw std::runtime_error(where + "token id " + tok + " is out of range [0, " + std::to_string(vocab) +
                                 ") (vocab_size " + std::to_string(vocab) + ")");
      ids.push_back(v);
      ++n;
    }
    if (n == 0) continue;  // blank line
    if (n < 2)
      throw std::runtime_error(where + "has " + std::to_string(n) +
                               " token; a sequence needs at least 2 (the loss predicts each next token)");
    if (B == 0) {
      T = n;
      first_line = lineno;
    } else if (n != T) {
      throw std::runtime_error(where + "has " + std::to_string(n) + " tokens but line " + std::to_string(first_line) +
                               " has " + std::to_string(T) + " (ragged sequences: all lines must have one length)");
    }
    ++B;
  }
  if (in.bad()) throw std::runtime_error("tokens file " + path + ": read error");
  if (B == 0) throw std::runtime_error("tokens file " + path + ": empty (no token ids found)");
  Index tokens = Index::from_shape({B, T});
  std::copy(ids.begin(), ids.end(), tokens.data());
  return tokens;
}

struct OracleArgs {
  std::string config, weights, model, tokens, out, hvp, dtype = "f64";
  bool drift = false;
};

// The model of `config` with its weights, in precision T.
template <class T>
std::unique_ptr<nn::CausalLM<T>> load_model(const OracleArgs& a, const nn::ModelConfig& config,
                                            const st::SafeTensorsFile* weights, const nn::HfFolder* folder) {
  auto model = std::make_unique<nn::CausalLM<T>>(config);
  if (folder) folder->load_into(*model);
  else model->load_from(*weights, "weights file " + a.weights);
  model->eval();
  return model;
}

// How far x is from the reference r: ||x - r|| / ||r|| (relative, Euclidean; the absolute
// norm when r is all zeros) and max |x - r|.
struct Drift {
  double rel = 0, max_abs = 0;
  double diff2 = 0, ref2 = 0;  // sums of squares, to combine several arrays
  void add(const double* x, const double* r, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      const double d = x[i] - r[i];
      diff2 += d * d;
      ref2 += r[i] * r[i];
      max_abs = std::max(max_abs, std::abs(d));
    }
    rel = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  }
};

template <class T>
xt::xarray<double> as_double(const xt::xarray<T>& x) {
  return xt::xarray<double>(xt::cast<double>(x));
}

// --drift: the same loss, logits and gradients in float64, compared with the chosen dtype's;
// printed and added to the output's metadata.
template <class T>
void report_drift(const OracleArgs& a, const nn::ModelConfig& config, const Index& tokens,
                  const st::SafeTensorsFile* weights, const nn::HfFolder* folder, const nn::LossOutput<T>& out,
                  const nn::CausalLM<T>& model, st::SafeTensorsWriter& w) {
  auto ref = load_model<double>(a, config, weights, folder);
  ref->zero_grad();
  nn::LossOutput<double> r = ref->loss(tokens);
  r.loss.backward();
  const double loss = static_cast<double>(out.loss.value()()), loss64 = r.loss.value()();
  Drift logits;
  const xt::xarray<double> lx = as_double(out.logits.value());
  logits.add(lx.data(), r.logits.value().data(), lx.size());
  Drift grads;
  std::string worst_name;
  double worst_rel = -1;
  const auto named = model.named_parameters(), named64 = ref->named_parameters();
  for (std::size_t i = 0; i < named.size(); ++i) {
    const auto& p = named[i].second;
    const auto& p64 = named64[i].second;
    const xt::xarray<double> g = p.has_grad() ? as_double(p.grad()) : xt::xarray<double>(xt::zeros<double>(p.shape()));
    const xt::xarray<double> g64 = p64.has_grad() ? p64.grad() : xt::xarray<double>(xt::zeros<double>(p64.shape()));
    Drift one;
    one.add(g.data(), g64.data(), g.size());
    grads.add(g.data(), g64.data(), g.size());
    if (one.rel > worst_rel) worst_rel = one.rel, worst_name = named[i].first;
  }
  auto num = [](double v) {
    std::ostringstream s;
    s.precision(3);
    s << std::scientific << v;
    return s.str();
  };
  std::cout << "tapegrad oracle: drift of " << a.dtype << " from f64 (relative = ||x - x_f64|| / ||x_f64||):\n"
            << "  loss       " << loss << " against " << loss64 << ": abs " << num(std::abs(loss - loss64)) << ", relative "
            << num(std::abs(loss - loss64) / std::max(std::abs(loss64), 1e-300)) << "\n"
            << "  logits     relative " << num(logits.rel) << ", max abs " << num(logits.max_abs) << "\n"
            << "  gradients  relative " << num(grads.rel) << " (all parameters), max abs " << num(grads.max_abs)
            << "; worst parameter " << worst_name << ", relative " << num(worst_rel) << "\n";
  w.set_metadata("drift_from", "f64");
  w.set_metadata("drift_loss_abs", num(std::abs(loss - loss64)));
  w.set_metadata("drift_logits_rel", num(logits.rel));
  w.set_metadata("drift_logits_max_abs", num(logits.max_abs));
  w.set_metadata("drift_grad_rel", num(grads.rel));
  w.set_metadata("drift_grad_max_abs", num(grads.max_abs));
  w.set_metadata("drift_grad_worst", worst_name + " " + num(worst_rel));
}

// --hvp: the direction, one tensor per parameter of `model` with its name and shape, and
// nothing else; every mismatch is listed in one error naming the file.
template <class T>
std::vector<Tensor<T>> read_direction(const nn::CausalLM<T>& model, const st::SafeTensorsFile& v, const std::string& path) {
  std::vector<std::string> problems;
  std::set<std::string> wanted;
  std::vector<Tensor<T>> dirs;
  for (const auto& [name, p] : model.named_parameters()) {
    wanted.insert(name);
    if (!v.contains(name)) {
      problems.push_back("no tensor '" + name + "' " + p.shape_str());
      continue;
    }
    if (v.shape(name) != p.shape()) {
      problems.push_back("'" + name + "' has shape " + shape_to_string(v.shape(name)) + ", the parameter " + p.shape_str());
      continue;
    }
    try {
      v.check_float(name);
    } catch (const std::exception& e) {
      problems.push_back(e.what());
      continue;
    }
    dirs.push_back(Tensor<T>(v.get<T>(name)));
  }
  for (const auto& n : v.names())
    if (!wanted.count(n)) problems.push_back("'" + n + "' is not a parameter of the model");
  if (!problems.empty()) {
    std::string m = "--hvp " + path + ": the direction must hold one tensor per parameter, named and shaped like it: ";
    for (std::size_t i = 0; i < problems.size() && i < 8; ++i) m += (i ? "; " : "") + problems[i];
    if (problems.size() > 8) m += "; and " + std::to_string(problems.size() - 8) + " more";
    throw std::runtime_error(m);
  }
  for (std::size_t i = 0; i < dirs.size(); ++i)
    for (const T x : dirs[i].value())
      if (!std::isfinite(static_cast<double>(x)))
        throw std::runtime_error("--hvp " + path + ": '" + model.named_parameters()[i].first + "' holds NaN or Inf");
  return dirs;
}

// Exactly one of `weights` (--config + --weights) and `folder` (--model) is given.
template <class T>
void run_oracle_as(const OracleArgs& a, const nn::ModelConfig& config, const Index& tokens,
                   const st::SafeTensorsFile* weights, const nn::HfFolder* folder) {
  auto model_ptr = load_model<T>(a, config, weights, folder);
  nn::CausalLM<T>& model = *model_ptr;
  std::vector<Tensor<T>> direction;
  if (!a.hvp.empty()) direction = read_direction(model, st::SafeTensorsFile::load(a.hvp), a.hvp);  // before any work
  model.zero_grad();
  nn::LossOutput<T> out = model.loss(tokens);
  out.loss.backward();

  st::SafeTensorsWriter w;
  w.set_metadata("format", "pt");
  w.set_metadata("generator", "tapegrad oracle");
  w.set_metadata("dtype", a.dtype);
  w.add("logits", out.logits.value());
  w.add("loss", out.loss.value());
  if (config.is_moe()) {
    w.add("aux_loss", out.aux.value());
    w.add("z_loss", out.z.value());
  }
  std::size_t n_params = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    if (p.has_grad()) w.add("grad." + name, p.grad());
    else w.add("grad." + name, xt::xarray<T>(xt::zeros<T>(p.shape())));
    ++n_params;
  }
  if (!direction.empty()) {
    // H v of the same loss with respect to every parameter (fresh passes; .grad untouched).
    const auto named = model.named_parameters();
    std::vector<Tensor<T>> params;
    for (const auto& [name, p] : named) params.push_back(p);
    const std::vector<Tensor<T>> hv =
        hvp<T>([&](const std::vector<Tensor<T>>&) { return model.loss(tokens).loss; }, params, direction);
    for (std::size_t i = 0; i < named.size(); ++i) w.add("hvp." + named[i].first, hv[i].value());
  }
  if (a.drift) {
    kernels::GemmBf16EmulatedScope plain(false);  // the reference is float64 throughout
    report_drift(a, config, tokens, weights, folder, out, model, w);
  }
  w.write(a.out);
  std::cout << "tapegrad oracle: B=" << tokens.shape()[0] << " T=" << tokens.shape()[1] << ", " << n_params
            << " parameters (" << model.num_parameters() << " values), loss "
            << static_cast<double>(out.loss.value()()) << " (" << a.dtype << "); wrote " << w.size()
            << " tensors to " << a.out << "\n";
}

int run_oracle(int argc, char** argv) {
  OracleArgs a;
  CLI::App app{
      "Writes a model's logits, loss (MoE: aux_loss, z_loss) and the gradient of the loss with respect to every "
      "parameter (grad.<name>), and with --hvp the Hessian-vector product along a direction (hvp.<name>), to a "
      "safetensors file: the reference other implementations check themselves against.",
      "tapegrad oracle"};
  app.add_option("--config", a.config, "config.json of the model (Hugging Face Qwen3 style; with --weights)");
  app.add_option("--weights", a.weights, "safetensors file holding every parameter, Hugging Face names");
  app.add_option("--model", a.model,
                 "a Hugging Face model folder instead of --config and --weights: config.json + model.safetensors, "
                 "or shards with model.safetensors.index.json");
  app.add_option("--tokens", a.tokens,
                 "token ids: whitespace-separated integers in [0, vocab_size), one sequence per line, "
                 "all lines of one length >= 2")
      ->required();
  app.add_option("--out", a.out, "output safetensors file (written atomically; untouched on any error)")->required();
  app.add_option("--hvp", a.hvp,
                 "also write hvp.<name>: the Hessian-vector product of the loss along this direction (a safetensors "
                 "file with one tensor per parameter, named and shaped like the weights)");
  app.add_option("--dtype", a.dtype,
                 "computation and output dtype: f64 (the default, as an oracle should be), f32, or bf16 (float32 with "
                 "every matmul's operands rounded to bfloat16, emulated on any CPU, as train --dtype bf16 computes; "
                 "written as float32)")
      ->check(CLI::IsMember({"f64", "f32", "bf16"}))
      ->capture_default_str();
  app.add_flag("--drift", a.drift,
               "also run the model in f64 and report how far this dtype's loss, logits and gradients are from it "
               "(printed, and in the output's metadata as drift_*)");
  tg::cli::refuse_non_finite(app);  // Note [Finite number flags] (flags.hpp)
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    // Inputs must be regular files (a FIFO would block forever), and --out must not name
    // one of them: the output would replace the input it was computed from.
    std::optional<nn::HfFolder> folder;
    std::vector<std::pair<std::string, std::string>> inputs = {{"--tokens", a.tokens}};
    if (!a.model.empty()) {
      if (!a.config.empty() || !a.weights.empty())
        throw std::runtime_error("give --model DIR, or --config with --weights, not both");
      folder = nn::HfFolder::open(a.model);
      if (const std::string n = folder->notice(); !n.empty()) std::cerr << "tapegrad oracle: " << n << "\n";
      inputs.emplace_back("--model config", io::join(a.model, nn::kHfConfigFile));
      for (const auto& f : folder->files()) inputs.emplace_back("--model weights", f);
    } else {
      if (a.config.empty() || a.weights.empty())
        throw std::runtime_error("give --model DIR, or --config FILE with --weights FILE");
      io::check_regular_file(a.config, "--config");
      io::check_regular_file(a.weights, "--weights");
      inputs.emplace_back("--config", a.config);
      inputs.emplace_back("--weights", a.weights);
    }
    io::check_regular_file(a.tokens, "--tokens");
    if (!a.hvp.empty()) {
      io::check_regular_file(a.hvp, "--hvp");
      inputs.emplace_back("--hvp", a.hvp);
    }
    for (const auto& [flag, in] : inputs)
      if (io::same_file(a.out, in) || fs::absolute(a.out).lexically_normal() == fs::absolute(in).lexically_normal())
        throw std::runtime_error("--out " + a.out + " is the " + flag + " file " + in +
                                 ": the oracle would overwrite its input");
    const std::string config_label = folder ? io::join(a.model, nn::kHfConfigFile) : a.config;
    const nn::ModelConfig config = folder ? folder->config() : nn::ModelConfig::load(a.config);
    const Index tokens = read_token_file(a.tokens, config.vocab_size);
    if (tokens.shape()[1] > config.max_position_embeddings)
      throw std::runtime_error("tokens file " + a.tokens + ": sequences of " + std::to_string(tokens.shape()[1]) +
                               " tokens are longer than the model's max_position_embeddings " +
                               std::to_string(config.max_position_embeddings) + " (" + config_label + ")");
    nn::check_memory(nn::estimate_memory(config, tokens.shape()[0], tokens.shape()[1], (a.dtype == "f64" ? 8 : 4) + (a.drift ? 8 : 0),
                                         /*training=*/true),
                     0, config_label);  // before the weights are read (nn/estimate.hpp)
    std::optional<st::SafeTensorsFile> weights;
    if (!folder) weights = st::SafeTensorsFile::load(a.weights);
    const st::SafeTensorsFile* w = weights ? &*weights : nullptr;
    const nn::HfFolder* m = folder ? &*folder : nullptr;
    if (a.drift && a.dtype == "f64") throw std::runtime_error("--drift compares --dtype f32 or bf16 with f64; it needs one of them");
    if (a.dtype == "f64") {
      run_oracle_as<double>(a, config, tokens, w, m);
    } else {
      kernels::GemmBf16EmulatedScope bf16(a.dtype == "bf16");  // Note [Emulated bf16]
      run_oracle_as<float>(a, config, tokens, w, m);
    }
  } catch (const std::exception& e) {
    std::cerr << "tapegrad oracle: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

const bool registered = register_command(
    {"oracle", "logits, loss and every parameter gradient of a model on given tokens -> safetensors", run_oracle});

}  // namespace
}  // namespace tg::cli
