// examples/tapegrad/commands.hpp — how the `tapegrad` program finds its subcommands.
//
// Each subcommand lives in its own file in this folder and registers itself with
//   static const bool registered = tg::cli::register_command({"oracle", "one-line help", run_oracle});
// so adding a subcommand never touches main.cpp.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace tg::cli {

struct Command {
  std::string name;
  std::string help;
  // argv[0] is "tapegrad <name>"; returns the process exit code.
  std::function<int(int argc, char** argv)> run;
};

bool register_command(Command c);
const std::vector<Command>& commands();

}  // namespace tg::cli
