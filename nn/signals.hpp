// nn/signals.hpp — Ctrl-C (SIGINT) and SIGTERM for long jobs: stop cleanly, never mid-save.
//
// What it is for: the one stop-signal handler the programs share (train, study). The first
// signal is recorded (stop_signal() becomes non-zero; the job finishes its step, saves and
// exits), a message is written to stderr, and the signal is forwarded to a child process
// if one is set (a study's running `train`). A second signal ends the process at once
// (status 128 + signal) — unless a HoldStopSignals scope is alive (a checkpoint being
// written): then the exit waits for the end of that scope, so a save is complete or was
// never started.
//
// Why a flag and not sigprocmask: a signal sent to the process may be delivered to any
// thread that does not block it (OpenMP's workers included), so blocking it in the saving
// thread alone would not hold it.
//
// What it is not: a general signal library (only SIGINT and SIGTERM).
#pragma once

#include <sys/types.h>

namespace tg::signals {

// Installs the handler for SIGINT and SIGTERM. `message` (a string that lives for the
// whole program, e.g. a literal) is written to stderr at the first signal.
void install_stop_handlers(const char* message);
// Puts SIGINT and SIGTERM back to their default action.
void restore_default_handlers();
// 0 until a stop signal came, then that signal.
int stop_signal();
// The signal is also sent to `pid` (0: to nobody); the child then decides.
void forward_to(pid_t pid);

// While one is alive a second stop signal does not end the process; it ends when the last
// scope closes (after the save it protected).
class HoldStopSignals {
 public:
  HoldStopSignals();
  ~HoldStopSignals();
  HoldStopSignals(const HoldStopSignals&) = delete;
  HoldStopSignals& operator=(const HoldStopSignals&) = delete;
};

}  // namespace tg::signals
