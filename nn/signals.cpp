// nn/signals.cpp — see signals.hpp: the shared stop-signal handler.
#include "nn/signals.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

namespace tg::signals {

namespace {

volatile std::sig_atomic_t g_signal = 0;    // the first stop signal, or 0
volatile std::sig_atomic_t g_deferred = 0;  // a second signal that came while held
std::atomic<int> g_hold{0};                 // open HoldStopSignals scopes
std::atomic<pid_t> g_child{0};              // where to forward, or 0
const char* g_message = "";

extern "C" void on_stop_signal(int sig) {
  const bool again = g_signal != 0;
  if (!again) g_signal = sig;
  const pid_t child = g_child.load();
  if (child > 0) {
    ::kill(child, sig);  // the child finishes its step (first) or quits (second)
  } else if (again) {
    if (g_hold.load() > 0) {
      g_deferred = sig;  // ends when the save is complete
      return;
    }
    ::_exit(128 + sig);
  }
  if (!again) {
    ssize_t ignored = ::write(STDERR_FILENO, g_message, std::strlen(g_message));
    (void)ignored;
  }
}

}  // namespace

void install_stop_handlers(const char* message) {
  g_message = message ? message : "";
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

void restore_default_handlers() {
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

int stop_signal() { return g_signal; }

void forward_to(pid_t pid) {
  g_child.store(pid);
  if (pid > 0 && g_signal) ::kill(pid, g_signal);  // a signal that came while it started
}

HoldStopSignals::HoldStopSignals() { g_hold.fetch_add(1); }

HoldStopSignals::~HoldStopSignals() {
  if (g_hold.fetch_sub(1) == 1 && g_deferred) ::_exit(128 + g_deferred);
}

}  // namespace tg::signals
