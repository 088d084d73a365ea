// examples/tapegrad/demo.cpp — `tapegrad demo`: the teaching walk-throughs in one go.
#include <CLI/CLI.hpp>

#include "../teaching.hpp"
#include "commands.hpp"
#include "flags.hpp"

namespace {

int run_demo(int argc, char** argv) {
  CLI::App app{"The teaching walk-through: a scalar expression's tape with its gradients, then an MLP trained "
               "with SGD on two moons"};
  app.name("tapegrad demo");
  std::size_t steps = 600;
  double lr = 0.5;
  std::uint64_t seed = 0;
  app.add_option("--steps", steps, "SGD steps of the MLP")->capture_default_str()->check(CLI::Range(10, 1000000));
  app.add_option("--lr", lr, "learning rate")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed")->capture_default_str();
  tg::cli::refuse_non_finite(app);  // Note [Finite number flags] (flags.hpp)
  CLI11_PARSE(app, argc, argv);
  std::cout << "=== 1. A scalar expression and its tape ===\n\n";
  tg::teaching::scalar_tape_demo();
  std::cout << "\n=== 2. An MLP trained from scratch ===\n\n";
  tg::teaching::two_moons_demo(steps, lr, seed);
  return 0;
}

const bool registered = tg::cli::register_command({"demo", "teaching walk-through: a tape with its gradients, an MLP on two moons", run_demo});

}  // namespace
