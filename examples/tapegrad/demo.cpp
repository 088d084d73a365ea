// examples/tapegrad/demo.cpp — `tapegrad demo`: the teaching walk-throughs in one go.
#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>

#include "../teaching.hpp"
#include "commands.hpp"
#include "flags.hpp"

namespace {

int run_demo(int argc, char** argv) {
  CLI::App app{"The teaching walk-through: a scalar expression's tape with its gradients, an MLP trained "
               "with SGD on two moons, then second order: Newton's method and a gradient penalty"};
  app.name("tapegrad demo");
  std::size_t steps = 600;
  double lr = 0.5;
  std::uint64_t seed = 0;
  app.add_option("--steps", steps, "SGD steps of the MLP")->capture_default_str()->check(CLI::Range(10, 1000000));
  app.add_option("--lr", lr, "learning rate")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed")->capture_default_str();
  std::string dot_dir;
  app.add_option("--dot", dot_dir,
                 "also draw the graphs (Graphviz DOT, and PNG when graphviz is installed) into this folder: "
                 "scalar_tape.dot, gradient_penalty.dot");
  tg::cli::refuse_non_finite(app);  // Note [Finite number flags] (flags.hpp)
  CLI11_PARSE(app, argc, argv);
  if (!dot_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(dot_dir, ec);
    if (ec) {
      std::cerr << "tapegrad demo: error: --dot " << dot_dir << ": cannot create the folder: " << ec.message() << "\n";
      return 1;
    }
  }
  auto dot = [&](const char* name) { return dot_dir.empty() ? std::string() : (std::filesystem::path(dot_dir) / name).string(); };
  std::cout << "=== 1. A scalar expression and its tape ===\n\n";
  tg::teaching::scalar_tape_demo(std::cout, dot("scalar_tape.dot"));
  std::cout << "\n=== 2. An MLP trained from scratch ===\n\n";
  tg::teaching::two_moons_demo(steps, lr, seed);
  std::cout << "\n=== 3. Second order: Newton's method ===\n\n";
  tg::teaching::newton_demo();
  std::cout << "\n=== 4. Second order: the gradient of a gradient penalty ===\n\n";
  tg::teaching::gradient_penalty_demo(std::cout, dot("gradient_penalty.dot"));
  std::cout << "\n=== 5. Adding an op of your own ===\n\n";
  tg::teaching::custom_op_demo();
  return 0;
}

const bool registered = tg::cli::register_command({"demo", "teaching walk-through: a tape with its gradients, an MLP on two moons, second order", run_demo});

}  // namespace
