// tests/test_distributed.cpp — data parallelism (nn/distributed.hpp): batch shares, the
// fixed-order gradient sum, and `mpirun -np 2 tapegrad train` against one process.
//
// The cases of TEST_SUITE("ranks") hold at any number of ranks: ctest runs them once in one
// process and once under `mpirun -np 2` (test_distributed:2-ranks). The other cases start
// mpirun themselves (TAPEGRAD_MPIEXEC; skipped in a build without MPI, and when this test
// itself runs under mpirun).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "autograd/ops.hpp"
#include "autograd/tape.hpp"
#include "nn/checkpoint.hpp"
#include "nn/distributed.hpp"
#include "nn/safetensors.hpp"
#include "nn/train_step.hpp"
#include "optim/optim.hpp"
#include "program_util.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace tg;

namespace {

const bool g_mpi_started = (tg::dist::init(nullptr, nullptr), true);

// Rank r's input: a deterministic function of (r, i), different on every rank.
double input(int r, std::size_t i) { return std::sin(0.37 * double(i) + 1.3 * double(r)) * (1.0 + 0.1 * r); }

// A small graph over the parameters (W1 (3,5), b (5), W2 (5,2), unused (4)); the loss on
// rank r's data. Gradients land in the parameters.
void backward_on(int r, std::vector<Tensor<double>>& ps, dist::GradReducer<double>* red) {
  xt::xarray<double> x = xt::zeros<double>({4, 3});
  for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = input(r, i);
  auto X = Tensor<double>(x);
  auto h = tanh(add(matmul(X, ps[0]), ps[1]));  // (4,5)
  auto y = matmul(h, ps[2]);                    // (4,2)
  auto loss = sum(mul(y, y));
  if (red) red->begin();
  loss.backward();
  if (red) red->finish();
}

std::vector<Tensor<double>> make_params() {
  Generator g(7);
  return {Tensor<double>::randn({3, 5}, g, 0, 1, true), Tensor<double>::randn({5}, g, 0, 1, true),
          Tensor<double>::randn({5, 2}, g, 0, 1, true), Tensor<double>::randn({4}, g, 0, 1, true)};
}

}  // namespace

TEST_CASE("distributed: batch shares cover the batch, differ by at most one row, refuse N > B") {
  for (std::size_t B : {1, 2, 5, 7, 8, 64})
    for (int N = 1; N <= int(B); ++N) {
      CHECK(dist::share_begin(B, N, 0) == 0);
      CHECK(dist::share_begin(B, N, N) == B);
      for (int r = 0; r < N; ++r) {
        const std::size_t n = dist::share_begin(B, N, r + 1) - dist::share_begin(B, N, r);
        CHECK((n == B / N || n == B / N + 1));
      }
    }
  const std::string m = THROW_MSG(dist::check_batch(3, 4));
  CHECK(m.find("--batch 3") != std::string::npos);
  CHECK(m.find("ranks 4") != std::string::npos);
}

TEST_SUITE("ranks") {
  TEST_CASE("distributed: the gradient sum is the rank-order sum, bitwise, with and without overlap") {
    const dist::Group w = dist::Group::world();
    // What every rank must end with: each rank's gradients, added in rank order.
    std::vector<xt::xarray<double>> expect;
    for (int r = 0; r < w.size(); ++r) {
      auto ps = make_params();
      backward_on(r, ps, nullptr);
      for (std::size_t i = 0; i < 3; ++i)
        if (r == 0) expect.push_back(ps[i].grad());
        else expect[i] = expect[i] + ps[i].grad();
    }
    for (bool overlap : {false, true})
      for (std::size_t bucket : {std::size_t(8), std::size_t(4) << 20}) {
        CAPTURE(overlap);
        CAPTURE(bucket);
        auto ps = make_params();
        dist::GradReducer<double> red(ps, w, bucket, overlap);
        backward_on(w.rank(), ps, &red);
        for (std::size_t i = 0; i < 3; ++i) {
          REQUIRE(ps[i].has_grad());
          CHECK(xt::all(xt::equal(ps[i].grad(), expect[i])));  // bitwise
        }
        CHECK_FALSE(ps[3].has_grad());  // no rank had one: still none
        if (w.size() > 1) {
          CHECK(red.stats().bytes_sent > 0);
          if (bucket == 8) CHECK(red.num_buckets() == 4);
          if (overlap && bucket == 8) CHECK(red.stats().started_in_backward >= 2);
          if (!overlap) CHECK(red.stats().started_in_backward == 0);
        }
      }
  }

  TEST_CASE("distributed: collectives give every rank the same values in rank order") {
    const dist::Group w = dist::Group::world();
    const auto g = w.all_gather(double(w.rank()) + 0.5);
    REQUIRE(g.size() == std::size_t(w.size()));
    for (int r = 0; r < w.size(); ++r) CHECK(g[std::size_t(r)] == r + 0.5);
    double s = 0;
    for (int r = 0; r < w.size(); ++r) s += 0.1 * (r + 1);
    CHECK(w.sum(0.1 * (w.rank() + 1)) == s);
    CHECK(w.any(w.rank() == w.size() - 1));
    CHECK_FALSE(w.any(false));
    CHECK(w.broadcast(w.root() ? std::string("from rank 0") : std::string()) == "from rank 0");
    // the sleeping barrier: every rank leaves it, and a stop request leaves it at once
    CHECK(w.wait_all([] { return false; }, 5));
    if (w.size() == 1) CHECK_FALSE(w.wait_all([] { return true; }));
    CHECK(THROW_MSG(dist::check_same(w, 42, "weights")) == "");
    const std::string m = THROW_MSG(dist::check_same(w, std::uint64_t(w.rank() == 1), "weights at step 3"));
    if (w.size() > 1) CHECK(m.find("rank 1's weights at step 3 differ from rank 0's") != std::string::npos);
  }
}

// ---- mpirun -np 2 tapegrad train ---------------------------------------------------------

#ifdef TAPEGRAD_MPIEXEC
namespace {

struct Proc {
  pid_t pid;
  std::string log;
};

// Starts `mpirun -np ranks tapegrad args` (ranks 0: tapegrad alone), output into a log.
Proc start(int ranks, const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> full;
  if (ranks > 0) full = {TAPEGRAD_MPIEXEC, "-np", std::to_string(ranks), "--oversubscribe"};
  full.push_back(tg::testing::program());
  full.insert(full.end(), args.begin(), args.end());
  return {tg::testing::spawn_argv(full, log), log};
}

struct Ran {
  int status;
  std::string output;
};
Ran run(int ranks, const std::vector<std::string>& args, const fs::path& dir) {
  static int n = 0;
  const std::string log = (dir / ("log" + std::to_string(n++))).string();
  const int st = tg::testing::wait_status(start(ranks, args, log).pid);
  return {st, tg::testing::read_all(log)};
}

std::string corpus(std::size_t bytes) {
  std::string s;
  const char* words[] = {"in", "the", "beginning", "god", "created", "heaven", "and", "earth", "light", "day"};
  std::uint64_t x = 99;
  while (s.size() < bytes) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    s += words[(x >> 33) % 10];
    s += (x >> 20) % 7 == 0 ? ".\n" : " ";
  }
  return s.substr(0, bytes);
}

std::vector<std::string> tiny(const fs::path& data, const fs::path& out, const std::string& dtype, int batch,
                              int steps = 12) {
  return {"train", "--size", "tiny", "--data", data.string(), "--out", out.string(), "--steps",
          std::to_string(steps), "--batch", std::to_string(batch), "--seq-len", "16", "--eval-every", "6",
          "--eval-batches", "3", "--save-every", "6", "--sample-len", "0", "--threads", "1", "--dtype", dtype,
          "--lr", "1e-2"};
}

// Column `col` of metrics.csv (train_loss 2, val_loss 3), as numbers (NaN when empty).
std::vector<double> column(const fs::path& run, int col) {
  std::istringstream in(tg::testing::read_all(run / "metrics.csv"));
  std::string line;
  std::getline(in, line);
  std::vector<double> v;
  while (std::getline(in, line)) {
    std::stringstream ls(line);
    std::string f;
    for (int i = 0; i <= col; ++i) std::getline(ls, f, ',');
    v.push_back(f.empty() ? NAN : std::stod(f));
  }
  return v;
}

double max_rel(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!(std::isnan(a[i]) && std::isnan(b[i]))) m = std::max(m, std::abs(a[i] - b[i]) / std::abs(b[i]));
  return m;
}

// The largest relative difference between the final weights of two runs.
template <class T>
double weights_rel(const fs::path& a, const fs::path& b) {
  const auto fa = st::SafeTensorsFile::load(tg::train::latest_checkpoint(a.string()) + "/model.safetensors");
  const auto fb = st::SafeTensorsFile::load(tg::train::latest_checkpoint(b.string()) + "/model.safetensors");
  double num = 0, den = 0;
  for (const auto& name : fa.names()) {
    const auto x = fa.template get<T>(name), y = fb.template get<T>(name);
    REQUIRE(x.shape() == y.shape());
    for (std::size_t i = 0; i < x.size(); ++i) {
      num = std::max(num, std::abs(double(x.data()[i]) - double(y.data()[i])));
      den = std::max(den, std::abs(double(y.data()[i])));
    }
  }
  return num / den;
}

bool standalone() { return dist::Group::world().size() == 1; }

}  // namespace

TEST_CASE("distributed: 2 ranks x B/2 match 1 process x B (float64 to 1e-10, float32 to 1e-4), bitwise run to run") {
  if (!standalone()) return;
  const fs::path d = tg::testing::scratch_dir("distributed_match");
  std::ofstream(d / "text.txt") << corpus(40000);
  // float64: every loss and the final weights to round-off.
  for (int batch : {4, 5}) {  // 5: uneven shares (3 + 2 rows), weighted
    CAPTURE(batch);
    const std::string b = std::to_string(batch);
    auto one = run(0, tiny(d / "text.txt", d / ("one" + b), "f64", batch), d);
    auto two = run(2, tiny(d / "text.txt", d / ("two" + b), "f64", batch), d);
    INFO(one.output);
    INFO(two.output);
    REQUIRE(one.status == 0);
    REQUIRE(two.status == 0);
    CHECK(two.output.find("2 ranks") != std::string::npos);
    const auto l1 = column(d / ("one" + b), 2), l2 = column(d / ("two" + b), 2);
    CHECK(l1.size() == 12);
    CHECK(max_rel(l1, l2) < 1e-10);
    CHECK(max_rel(column(d / ("one" + b), 3), column(d / ("two" + b), 3)) < 1e-10);
    CHECK(weights_rel<double>(d / ("one" + b), d / ("two" + b)) < 1e-10);
  }
  // float32, and a second 2-rank run: the same bits.
  auto one = run(0, tiny(d / "text.txt", d / "one32", "f32", 4), d);
  auto two = run(2, tiny(d / "text.txt", d / "two32", "f32", 4), d);
  auto again = run(2, tiny(d / "text.txt", d / "again32", "f32", 4), d);
  REQUIRE(one.status == 0);
  REQUIRE(two.status == 0);
  REQUIRE(again.status == 0);
  CHECK(max_rel(column(d / "one32", 2), column(d / "two32", 2)) < 1e-4);
  CHECK(column(d / "two32", 2) == column(d / "again32", 2));
  CHECK(tg::testing::read_all(tg::train::latest_checkpoint((d / "two32").string()) + "/model.safetensors") ==
        tg::testing::read_all(tg::train::latest_checkpoint((d / "again32").string()) + "/model.safetensors"));
}

TEST_CASE("distributed: a run resumes at another rank count with the same global batch") {
  if (!standalone()) return;
  const fs::path d = tg::testing::scratch_dir("distributed_resume");
  std::ofstream(d / "text.txt") << corpus(40000);
  auto full = run(0, tiny(d / "text.txt", d / "full", "f64", 4), d);
  REQUIRE(full.status == 0);
  auto first = run(0, [&] { auto a = tiny(d / "text.txt", d / "part", "f64", 4); a.push_back("--stop-at"); a.push_back("6"); return a; }(), d);
  REQUIRE(first.status == 0);
  auto rest = run(2, {"train", "--resume", (d / "part").string()}, d);
  INFO(rest.output);
  REQUIRE(rest.status == 0);
  CHECK(rest.output.find("resume: from") != std::string::npos);
  CHECK(rest.output.find("used 1 rank(s), now 2") != std::string::npos);
  CHECK(max_rel(column(d / "full", 2), column(d / "part", 2)) < 1e-10);
  CHECK(weights_rel<double>(d / "full", d / "part") < 1e-10);
}

TEST_CASE("distributed: a killed rank ends the job with a clear message, the last checkpoint intact") {
  if (!standalone()) return;
  const fs::path d = tg::testing::scratch_dir("distributed_kill");
  std::ofstream(d / "text.txt") << corpus(40000);
  auto args = tiny(d / "text.txt", d / "run", "f32", 4, 1000000);
  const Proc p = start(2, args, (d / "log").string());
  // Wait for the first checkpoint (step 6), then kill rank 1.
  const auto t0 = std::chrono::steady_clock::now();
  while (tg::train::latest_checkpoint((d / "run").string()).empty() &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  REQUIRE_FALSE(tg::train::latest_checkpoint((d / "run").string()).empty());
  pid_t victim = 0;
  for (const auto& task : fs::directory_iterator("/proc/" + std::to_string(p.pid) + "/task")) {
    std::istringstream kids(tg::testing::read_all(task.path() / "children"));
    for (pid_t c; kids >> c;) {
      const std::string env = tg::testing::read_all("/proc/" + std::to_string(c) + "/environ");
      if (env.find(std::string("OMPI_COMM_WORLD_RANK=1") + '\0') != std::string::npos) victim = c;
    }
  }
  REQUIRE(victim > 0);
  ::kill(victim, SIGKILL);
  const auto tk = std::chrono::steady_clock::now();
  int st = -1;
  while (std::chrono::steady_clock::now() - tk < std::chrono::seconds(30)) {
    int s = 0;
    if (::waitpid(p.pid, &s, WNOHANG) == p.pid) {
      st = WIFEXITED(s) ? WEXITSTATUS(s) : 128 + WTERMSIG(s);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (st < 0) {
    ::kill(p.pid, SIGKILL);
    tg::testing::wait_status(p.pid);
  }
  const std::string out = tg::testing::read_all(d / "log");
  INFO(out);
  REQUIRE(st >= 0);  // ended within 30 s: no hang
  CHECK(st != 0);
  CHECK(out.find("rank 1") != std::string::npos);
  CHECK(out.find("signal 9") != std::string::npos);
  // The last checkpoint loads.
  auto cfg = nn::named_size("tiny");
  cfg.vocab_size = 256;
  nn::CausalLM<float> model(cfg, 0);
  optim::AdamW<float> opt(optim::make_param_groups(model.named_parameters(), 0.1), optim::AdamWOptions{});
  const auto state = tg::train::load_latest_checkpoint((d / "run").string(), model, opt);
  CHECK(state.step > 0);
  CHECK(state.step % 6 == 0);
}
#endif

#ifdef TAPEGRAD_MPIEXEC
TEST_CASE("distributed: Ctrl-C on mpirun stops every rank at one step with one checkpoint") {
  if (!standalone()) return;
  const fs::path d = tg::testing::scratch_dir("distributed_sigint");
  std::ofstream(d / "text.txt") << corpus(40000);
  const Proc p = start(2, tiny(d / "text.txt", d / "run", "f32", 4, 1000000), (d / "log").string());
  const auto t0 = std::chrono::steady_clock::now();
  while (tg::train::latest_checkpoint((d / "run").string()).empty() &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  REQUIRE_FALSE(tg::train::latest_checkpoint((d / "run").string()).empty());
  ::kill(p.pid, SIGINT);
  const auto tk = std::chrono::steady_clock::now();
  int st = -1;
  while (std::chrono::steady_clock::now() - tk < std::chrono::seconds(30)) {
    int s = 0;
    if (::waitpid(p.pid, &s, WNOHANG) == p.pid) {
      st = WIFEXITED(s) ? WEXITSTATUS(s) : 128 + WTERMSIG(s);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (st < 0) {
    ::kill(p.pid, SIGKILL);
    tg::testing::wait_status(p.pid);
  }
  const std::string out = tg::testing::read_all(d / "log");
  INFO(out);
  REQUIRE(st >= 0);
  const std::size_t at = out.find("interrupted at step ");
  REQUIRE(at != std::string::npos);
  const std::int64_t step = std::stoll(out.substr(at + 20));
  CHECK(out.find("interrupted at step ", at + 1) == std::string::npos);  // rank 0 alone reports it
  const auto list = tg::train::list_checkpoints((d / "run").string());
  REQUIRE_FALSE(list.empty());
  CHECK(list.front().step == step);  // the checkpoint of the step every rank stopped at
  auto rest = run(2, {"train", "--resume", (d / "run").string(), "--steps", std::to_string(std::max<std::int64_t>(step + 3, 41))}, d);
  INFO(rest.output);
  CHECK(rest.status == 0);
}
#endif

#ifdef TAPEGRAD_MPIEXEC
TEST_CASE("distributed: mpirun -np 2 tapegrad study gives the one-process study's results, bit for bit") {
  if (!standalone()) return;
  const fs::path d = tg::testing::scratch_dir("distributed_study");
  std::ofstream(d / "text.txt") << corpus(30000);
  auto study = [&](const fs::path& out) {
    return std::vector<std::string>{"study", "--size", "tiny", "--presets", "baseline,g1_elementwise,g1_headwise",
                                    "--steps", "8", "--batch", "2", "--seq-len", "16", "--data",
                                    (d / "text.txt").string(), "--out", out.string(), "--threads", "1", "--mode",
                                    "main", "--eval-batches", "2", "--timing-rounds", "0"};
  };
  const auto one = run(0, study(d / "one"), d);
  INFO(one.output);
  REQUIRE(one.status == 0);
  const auto two = run(2, study(d / "two"), d);
  INFO(two.output);
  REQUIRE(two.status == 0);
  CHECK(two.output.find("on 2 ranks") != std::string::npos);
  CHECK(two.output.find("rank 1: study 2/3") != std::string::npos);  // run i on rank i mod 2
  CHECK(two.output.find("rank 0: study 3/3") != std::string::npos);
  CHECK(fs::exists(d / "two" / "report.md"));
  CHECK(tg::testing::read_all(d / "two" / "report.md").find("mpirun -np 2 tapegrad study --size tiny") != std::string::npos);
  std::size_t n = 0;
  for (const auto& e : fs::directory_iterator(d / "one" / "results")) {
    const fs::path other = d / "two" / "results" / e.path().filename();
    CAPTURE(e.path().filename().string());
    REQUIRE(fs::exists(other));
    CHECK(tg::testing::read_all(e.path()) == tg::testing::read_all(other));
    ++n;
  }
  CHECK(n == 3);
  // and the runs' own losses
  for (const auto& e : fs::directory_iterator(d / "one" / "runs"))
    CHECK(column(e.path(), 2) == column(d / "two" / "runs" / e.path().filename(), 2));
}
#endif
