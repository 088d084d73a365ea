// examples/tapegrad/main.cpp — the `tapegrad` program: dispatches to a subcommand.
//
//   tapegrad                 runs the default job (see kDefault below)
//   tapegrad <command> ...   runs a subcommand; `tapegrad <command> --help` lists its flags
//   tapegrad --help          lists the subcommands
//   tapegrad --version       the version, the kernels' instruction set, the bf16 path
#include <cstring>
#include <exception>
#include <iostream>
#include <string>


#include "autograd/kernels/gemm_bf16.hpp"
#include "autograd/kernels/isa.hpp"
#include "autograd/memory.hpp"
#include "commands.hpp"
#include "nn/distributed.hpp"

namespace tg::cli {

std::vector<Command>& registry() {
  static std::vector<Command> r;
  return r;
}
bool register_command(Command c) {
  registry().push_back(std::move(c));
  return true;
}
const std::vector<Command>& commands() { return registry(); }

}  // namespace tg::cli

namespace {

// The job that `tapegrad` with no arguments runs: the first registered of these.
const char* kDefaultOrder[] = {"train", "demo"};

void usage(std::ostream& os) {
  os << "tapegrad — tape-based autograd, a Qwen3-style model and the gated-attention zoo\n\n"
        "usage: tapegrad [command] [flags]   (no command: the default job)\n\ncommands:\n";
  for (auto& c : tg::cli::commands()) os << "  " << c.name << std::string(10 - std::min<size_t>(9, c.name.size()), ' ') << c.help << "\n";
  os << "\n`tapegrad <command> --help` lists a command's flags.\n";
}

}  // namespace

int main(int argc, char** argv) {
  // Every subcommand repeats the same large allocations step after step: keep freed
  // memory in the process instead of faulting it in again (autograd/memory.hpp).
  tg::keep_freed_memory();
  try {
    // Under mpirun: MPI starts here (nn/distributed.hpp); only rank 0 prints (errors are
    // printed by the rank that has them, then end the whole job) — except in a study,
    // whose ranks run runs of their own and report them (Note [Study on many ranks]).
    tg::dist::init(&argc, &argv);
    const bool study = argc >= 2 && !std::strcmp(argv[1], "study");
    if (!tg::dist::Group::world().root() && !study) {
      std::cout.rdbuf(nullptr);
      std::cerr.rdbuf(nullptr);
    }
    if (argc >= 2 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help"))) {
      usage(std::cout);
      return 0;
    }
    if (argc >= 2 && !std::strcmp(argv[1], "--version")) {
      // The instruction set of the kernels that run (in the portable build, the copy the
      // loader chose by CPU features: Note [Portable kernels]) and the bf16 path.
      std::cout << "tapegrad " << TAPEGRAD_VERSION << "\nkernels: compiled for " << tg::kernels::kernel_isa_line()
                << "\nbf16 matmuls (--dtype bf16): " << tg::kernels::gemm_bf16_path() << "\n";
      return 0;
    }
    const tg::cli::Command* cmd = nullptr;
    int shift = 1;
    if (argc >= 2 && argv[1][0] != '-') {
      for (auto& c : tg::cli::commands())
        if (c.name == argv[1]) cmd = &c;
      if (!cmd) {
        std::cerr << "tapegrad: unknown command '" << argv[1] << "'\n\n";
        usage(std::cerr);
        return 2;
      }
      shift = 2;
    } else {
      for (const char* name : kDefaultOrder) {
        for (auto& c : tg::cli::commands())
          if (c.name == name) cmd = &c;
        if (cmd) break;
      }
      if (!cmd) {
        usage(std::cerr);
        return 2;
      }
      std::cout << "tapegrad: no command given, running the default job `" << cmd->name << "`\n";
    }
    std::string prog = std::string("tapegrad ") + cmd->name;
    std::vector<char*> args;
    args.push_back(prog.data());
    for (int i = shift; i < argc; ++i) args.push_back(argv[i]);
    return cmd->run(static_cast<int>(args.size()), args.data());
  } catch (const std::exception& e) {
    // Note [When a rank dies]: with more ranks, the others must not wait for this one.
    if (tg::dist::Group::world().size() > 1) tg::dist::abort(e.what());
    std::cerr << "tapegrad: error: " << e.what() << "\n";
    return 1;
  }
}
