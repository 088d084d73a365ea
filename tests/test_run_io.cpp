// tests/test_run_io.cpp — the library's run-folder plumbing: nn/files (atomic writes,
// non-regular files refused, same_file), nn/metrics (metrics.csv round trip and errors),
// nn/plot (quoting, data blocks, a PNG when gnuplot is there), nn/signals (a second
// Ctrl-C waits for the end of a HoldStopSignals scope).
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "nn/files.hpp"
#include "nn/metrics.hpp"
#include "nn/plot.hpp"
#include "nn/signals.hpp"
#include "test_util.hpp"

using namespace tg;
namespace fs = std::filesystem;

TEST_CASE("files: atomic write, reads refuse FIFOs and folders at once, same_file by inode") {
  const fs::path dir = tg::testing::scratch_dir("run_io") / "files";
  fs::create_directories(dir);
  const std::string p = (dir / "a.txt").string();
  io::write_file_atomic(p, "hello");
  CHECK(io::read_file(p) == "hello");
  io::write_file_atomic(p, "bye");
  CHECK(io::read_file(p) == "bye");
  for (auto& e : fs::directory_iterator(dir)) CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);

  // A failed write leaves the old file: the folder is read-only (unless we are root, then a
  // missing folder does it).
  CHECK_THROWS(io::write_file_atomic((dir / "no" / "such" / "b.txt").string(), "x"));

  const std::string fifo = (dir / "fifo").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  std::string msg = THROW_MSG(io::read_file(fifo));  // would block forever without O_NONBLOCK
  CHECK(msg.find("FIFO") != std::string::npos);
  msg = THROW_MSG(io::check_regular_file(fifo, "--weights"));
  CHECK(msg.find("--weights") != std::string::npos);
  msg = THROW_MSG(io::read_file(dir.string()));
  CHECK(msg.find("directory") != std::string::npos);
  msg = THROW_MSG(io::read_file((dir / "missing").string()));
  CHECK(msg.find("no such file") != std::string::npos);

  const std::string link = (dir / "link").string();
  fs::create_symlink(p, link);
  CHECK(io::same_file(p, link));
  CHECK(io::same_file(p, (dir / "." / "a.txt").string()));
  CHECK_FALSE(io::same_file(p, fifo));
  CHECK_FALSE(io::same_file(p, (dir / "missing").string()));
}

TEST_CASE("metrics: metrics.csv reads back bit for bit, NaN as an empty field, bad lines named") {
  std::vector<train::MetricsRow> rows(3);
  for (int i = 0; i < 3; ++i) {
    rows[i].step = i + 1;
    rows[i].lr = 1e-3 / (i + 1);
    rows[i].train_loss = 5.0 / 3.0 + i;
    rows[i].tokens_per_s = 1234.5;
    rows[i].elapsed_s = 0.1 * i;
    rows[i].grad_norm = std::nextafter(1.0, 2.0);
  }
  rows[2].val_loss = 2.0 / 7.0, rows[2].val_bpb = rows[2].val_loss / std::log(2.0);
  const std::string csv = train::metrics_csv(rows);
  CHECK(csv.rfind(std::string(train::kMetricsHeader) + "\n", 0) == 0);
  const auto back = train::parse_metrics_csv(csv, "m.csv");
  REQUIRE(back.size() == 3);
  for (int i = 0; i < 3; ++i) {
    CHECK(back[i].step == rows[i].step);
    CHECK(back[i].lr == rows[i].lr);
    CHECK(back[i].train_loss == rows[i].train_loss);
    CHECK(back[i].grad_norm == rows[i].grad_norm);
  }
  CHECK(std::isnan(back[0].val_loss));
  CHECK(back[2].val_loss == rows[2].val_loss);
  CHECK(THROW_MSG(train::parse_metrics_csv("step,lr\n", "m.csv")).find("line 1") != std::string::npos);
  CHECK(THROW_MSG(train::parse_metrics_csv(std::string(train::kMetricsHeader) + "\n1,2,3\n", "m.csv"))
            .find("line 2: expected 8 fields") != std::string::npos);
  CHECK(THROW_MSG(train::parse_metrics_csv(std::string(train::kMetricsHeader) + "\nx,1,1,,,1,1,1\n", "m.csv"))
            .find("bad step 'x'") != std::string::npos);
  CHECK(THROW_MSG(train::parse_metrics_csv("", "m.csv")).find("empty") != std::string::npos);
}

TEST_CASE("plot: quoting, data blocks, and a PNG (or a reason) from gnuplot") {
  CHECK(plot::quote("it's\nok") == "'it''s ok'");
  CHECK(plot::datablock("d", {{1, 2.5}, {2, NAN}}) == "$d << EOD\n1 2.5\n2 NaN\nEOD\n");
  const fs::path dir = tg::testing::scratch_dir("run_io") / "plot";
  fs::create_directories(dir);
  std::vector<train::MetricsRow> rows(4);
  for (int i = 0; i < 4; ++i) rows[i].step = i + 1, rows[i].train_loss = 3.0 - 0.5 * i;
  rows[3].val_loss = 1.9;
  const std::string png = (dir / "loss.png").string();
  std::string why;
  const bool ok = plot::plot_loss(rows, png, "a 'title'", &why);
  if (plot::have_gnuplot()) {
    CHECK_MESSAGE(ok, why);
    CHECK(tg::testing::read_all(png).substr(1, 3) == "PNG");
  } else {
    CHECK_FALSE(ok);
    CHECK(why.find("gnuplot") != std::string::npos);
  }
  for (auto& e : fs::directory_iterator(dir)) CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
  CHECK_FALSE(plot::plot_loss({}, png, "t", &why));
  CHECK(why == "no metrics to plot");
  // A script gnuplot rejects: false, the message, no PNG.
  if (plot::have_gnuplot()) {
    const std::string bad = (dir / "bad.png").string();
    CHECK_FALSE(plot::gnuplot_png("plot $nosuchblock using 1:2\n", bad, 100, 100, &why));
    CHECK(why.find("gnuplot failed") != std::string::npos);
    CHECK_FALSE(fs::exists(bad));
  }
}

namespace {
// In a child: the handler installed, then `body`; returns the child's exit status (or
// 128 + signal).
int in_child(void (*body)()) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    body();
    ::_exit(0);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
}  // namespace

TEST_CASE("plot: gnuplot dies with a process killed while it plots, and writes nothing after") {
  if (!tg::plot::have_gnuplot()) return;
  const fs::path dir = tg::testing::scratch_dir("run_io") / "plot_kill";
  fs::create_directories(dir);
  const std::string png = (dir / "slow.png").string();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // a "training run" that plots slowly (gnuplot sleeps 3 s first)
    tg::plot::gnuplot_png("pause 3\nplot x\n", png, 100, 100, nullptr);
    ::_exit(0);
  }
  // Wait until its gnuplot runs (its script is on disk), then kill the parent.
  bool started = false;
  for (int i = 0; i < 200 && !started; ++i) {
    for (const auto& e : fs::directory_iterator(dir))
      started = started || e.path().filename().string().find(".gp.tmp.") != std::string::npos;
    if (!started) ::usleep(10000);
  }
  REQUIRE(started);
  ::usleep(100000);  // the fork to exec of gnuplot
  ::kill(pid, SIGKILL);
  int st = 0;
  ::waitpid(pid, &st, 0);
  // No gnuplot whose script is in this folder survives; after its 3 s no PNG appears.
  auto gnuplot_alive = [&] {
    for (const auto& e : fs::directory_iterator("/proc")) {
      // A process that exits between the listing and the read makes libstdc++'s filebuf
      // throw (read: ESRCH); it is not a live gnuplot.
      std::string cmd;
      try {
        std::ifstream f(e.path() / "cmdline", std::ios::binary);
        cmd.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
      } catch (const std::exception&) {
        continue;
      }
      if (cmd.rfind("gnuplot", 0) == 0 && cmd.find(dir.string()) != std::string::npos) return true;
    }
    return false;
  };
  bool alive = true;
  for (int i = 0; i < 100 && alive; ++i) {
    alive = gnuplot_alive();
    if (alive) ::usleep(10000);
  }
  CHECK_FALSE(alive);
  // What it left (its temporaries, which the next start of a run removes) does not change
  // after the 3 s its gnuplot would have slept, and no PNG appears.
  auto listing = [&] {
    std::map<std::string, std::uintmax_t> m;
    for (const auto& e : fs::directory_iterator(dir)) m[e.path().filename().string()] = fs::file_size(e.path());
    return m;
  };
  const auto before = listing();
  ::sleep(4);
  CHECK(listing() == before);
  CHECK_FALSE(fs::exists(png));
}

TEST_CASE("signals: the first Ctrl-C is recorded, a second quits, but not inside HoldStopSignals") {
  // One signal: recorded, the process goes on.
  CHECK(in_child([] {
          signals::install_stop_handlers("");
          ::raise(SIGINT);
          ::_exit(signals::stop_signal() == SIGINT ? 7 : 1);
        }) == 7);
  // Two: the second ends the process at once with 130.
  CHECK(in_child([] {
          signals::install_stop_handlers("");
          ::raise(SIGINT);
          ::raise(SIGINT);
          ::_exit(1);  // not reached
        }) == 130);
  // Two inside a hold: the process lives to the end of the scope (the save), then ends.
  const fs::path marker = tg::testing::scratch_dir("run_io") / "saved";
  static std::string marker_path;
  marker_path = marker.string();
  CHECK(in_child([] {
          signals::install_stop_handlers("");
          {
            signals::HoldStopSignals hold;
            ::raise(SIGINT);
            ::raise(SIGTERM);
            std::ofstream(marker_path) << "complete";  // the save goes on
          }
          ::_exit(1);  // not reached: the deferred signal ends it here
        }) == 128 + SIGTERM);
  CHECK(tg::testing::read_all(marker) == "complete");
}
