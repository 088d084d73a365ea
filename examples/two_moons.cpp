// examples/two_moons.cpp — an MLP trained with plain SGD on two moons, from scratch.
// Run: build/bin/two_moons [--steps N] [--lr X] [--seed S]
#include <CLI/CLI.hpp>

#include "teaching.hpp"

int main(int argc, char** argv) {
  CLI::App app{"Train a 2-16-16-2 MLP with SGD on a seeded two-moons data set"};
  std::size_t steps = 600;
  double lr = 0.5;
  std::uint64_t seed = 0;
  app.add_option("--steps", steps, "SGD steps (full batch)")->capture_default_str()->check(CLI::Range(10, 1000000));
  app.add_option("--lr", lr, "learning rate")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed of the data and the initialisation")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  double acc = tg::teaching::two_moons_demo(steps, lr, seed);
  return acc > 0.5 ? 0 : 1;
}
