// examples/tapegrad/config.cpp — `tapegrad config --check FILE | --fields`.
//
// What it is for: asking whether a config.json (or a model folder's) loads, and what it
// means, before anything runs; and listing every field the model reads (the field table of
// nn/config.hpp, Note [One field table]).
//   tapegrad config --check FILE|DIR   parses it: the model it describes (sizes, gate,
//                                      parameters) and the keys accepted without effect,
//                                      or the error naming the key (exit 1)
//   tapegrad config --fields           one line per field: key, type, default, meaning
// What it is not: a converter or an editor of config files.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <iomanip>
#include <iostream>

#include "commands.hpp"
#include "nn/config.hpp"

namespace {

using namespace tg;

int run_config(int argc, char** argv) {
  CLI::App app{"Checks a config.json, or lists the fields the model reads."};
  std::string check;
  bool fields = false;
  app.add_option("--check", check, "a config.json, or a model folder holding one");
  app.add_flag("--fields", fields, "list every config.json field: key, type, default, meaning");
  CLI11_PARSE(app, argc, argv);
  if (check.empty() == !fields) throw std::runtime_error("give --check FILE or --fields (one of them)");
  if (fields) {
    std::cout << std::left << std::setw(30) << "key" << std::setw(16) << "type" << std::setw(34) << "default"
              << "meaning\n";
    for (const auto& f : nn::config_fields())
      std::cout << std::setw(30) << f.key << std::setw(16) << f.type << std::setw(34) << f.default_value << f.doc
                << "\n";
    std::cout << "\naccepted without effect on the computation, whatever their value:\n ";
    for (const auto& k : nn::accepted_keys()) std::cout << " " << k;
    std::cout << "\naccepted only with the value this model implements:\n";
    for (const auto& k : nn::refused_keys()) std::cout << "  " << k << "\n";
    return 0;
  }
  std::string path = check;
  if (std::filesystem::is_directory(path)) path = (std::filesystem::path(path) / "config.json").string();
  const nn::ConfigReport r = nn::read_config(path);
  const nn::ModelConfig& c = r.config;
  std::cout << path << ": ok — " << (c.is_moe() ? "MoE" : "dense") << " model, vocab " << c.vocab_size << ", width "
            << c.hidden_size << ", " << c.num_hidden_layers << " layers, " << c.num_attention_heads << " heads ("
            << c.num_key_value_heads << " kv), head dim " << c.head_dim << ", gate: " << c.gate.describe() << ", "
            << nn::count_parameters(c) << " parameters\n";
  if (c.is_moe())
    std::cout << "  MoE: " << c.num_experts << " experts, top " << c.num_experts_per_tok << ", aux loss "
              << nn::to_string(c.moe_aux_loss) << " x " << c.aux_loss_weight() << ", z-loss x " << c.z_loss_weight()
              << "\n";
  if (const std::string n = r.notice(path); !n.empty()) std::cout << n << "\n";
  return 0;
}

const bool registered =
    tg::cli::register_command({"config", "check a config.json (--check FILE) or list its fields (--fields)", run_config});

}  // namespace
