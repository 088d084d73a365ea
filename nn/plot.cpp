// nn/plot.cpp — see plot.hpp: gnuplot as a child process, PNGs written atomically.
#include "nn/plot.hpp"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <sstream>

#include "nn/files.hpp"

extern char** environ;

namespace tg::plot {

namespace {
// gnuplot's path from PATH ("" when it is not installed).
std::string gnuplot_path() {
  const char* path = std::getenv("PATH");
  if (!path) return "";
  std::string p(path);
  std::size_t b = 0;
  for (;;) {
    const std::size_t e = p.find(':', b);
    std::string dir = p.substr(b, e == std::string::npos ? std::string::npos : e - b);
    if (dir.empty()) dir = ".";
    if (::access((dir + "/gnuplot").c_str(), X_OK) == 0) return dir + "/gnuplot";
    if (e == std::string::npos) return "";
    b = e + 1;
  }
}
}  // namespace

bool have_gnuplot() { return !gnuplot_path().empty(); }

std::string quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) {
    if (c == '\'') r += "''";
    else if (c == '\n') r += ' ';
    else r += c;
  }
  return r + "'";
}

std::string datablock(const std::string& name, const std::vector<std::vector<double>>& rows) {
  std::ostringstream s;
  s << std::setprecision(8) << "$" << name << " << EOD\n";
  for (auto& r : rows) {
    for (std::size_t i = 0; i < r.size(); ++i) {
      if (i) s << ' ';
      if (std::isfinite(r[i])) s << r[i];
      else s << "NaN";
    }
    s << "\n";
  }
  s << "EOD\n";
  return s.str();
}

bool gnuplot_png(const std::string& body, const std::string& png, int w, int h, std::string* why) {
  auto fail = [&](const std::string& w) {
    if (why) *why = w;
    return false;
  };
  if (!have_gnuplot()) return fail("gnuplot is not installed (Debian: apt-get install gnuplot-nox)");
  const std::string pid = std::to_string(::getpid());
  const std::string tmp = png + ".tmp." + pid, script = png + ".gp.tmp." + pid, err = png + ".err.tmp." + pid;
  std::ostringstream s;
  s << "set terminal png size " << w << "," << h << " font ',10'\nset output " << quote(tmp) << "\n" << body;
  try {
    io::write_file_atomic(script, s.str());
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  // gnuplot runs as a child that dies with this process (PR_SET_PDEATHSIG): a training run
  // killed while it plots must not leave a gnuplot behind that writes into the run folder
  // after the resume has cleaned it. Between fork and exec only async-signal-safe calls.
  const std::string exe = gnuplot_path();
  std::string prog = "gnuplot";
  std::vector<char*> argv = {prog.data(), const_cast<char*>(script.c_str()), nullptr};
  const pid_t parent = ::getpid();
  const pid_t child = ::fork();
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
    const int in = ::open("/dev/null", O_RDONLY), out = ::open("/dev/null", O_WRONLY),
              e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0 || e < 0) ::_exit(126);
    ::dup2(in, 0), ::dup2(out, 1), ::dup2(e, 2);
    ::execve(exe.c_str(), argv.data(), environ);
    ::_exit(127);
  }
  const int rc = child < 0 ? errno : 0;
  int status = 0;
  if (rc == 0)
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
  std::string msg;
  try {
    msg = io::read_file(err);
  } catch (...) {
  }
  ::unlink(script.c_str());
  ::unlink(err.c_str());
  if (rc != 0) {
    ::unlink(tmp.c_str());
    return fail(std::string("cannot run gnuplot: ") + std::strerror(rc));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || ::access(tmp.c_str(), F_OK) != 0) {
    ::unlink(tmp.c_str());
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    return fail("gnuplot failed" + (msg.empty() ? std::string() : ": " + msg));
  }
  if (::rename(tmp.c_str(), png.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return fail("cannot rename the plot to " + png + ": " + std::strerror(e));
  }
  return true;
}

bool plot_loss(const std::vector<train::MetricsRow>& rows, const std::string& png_path, const std::string& title,
               std::string* why) {
  if (rows.empty()) {
    if (why) *why = "no metrics to plot";
    return false;
  }
  std::vector<std::vector<double>> train, val;
  for (const auto& r : rows) {
    if (std::isfinite(r.train_loss)) train.push_back({double(r.step), r.train_loss});
    if (std::isfinite(r.val_loss)) val.push_back({double(r.step), r.val_loss});
  }
  std::ostringstream s;
  s << "set title " << quote(title) << " noenhanced\n"
    << "set xlabel 'step'\nset ylabel 'loss (nats per byte)'\n"
    << "set y2label 'bits per byte'\nset ytics nomirror\nset y2tics 0.5 format '%.1f'\n"
    << "set link y2 via y/log(2) inverse y*log(2)\n"
    << "set grid\nset key top right opaque box\n"
    << datablock("train", train);
  if (!val.empty()) s << datablock("val", val);
  s << "plot $train using 1:2 with lines lw 1 lc rgb '#6baed6' title 'train'";
  if (!val.empty()) s << ", $val using 1:2 with linespoints lw 2 pt 7 ps 0.8 lc rgb '#d62728' title 'validation'";
  s << "\n";
  return gnuplot_png(s.str(), png_path, 960, 540, why);
}

}  // namespace tg::plot
