// bench/distributed.cpp — one data-parallel training step over MPI ranks, and the gradient
// sum against plain MPI_Allreduce of the same bytes.
//
// What it is for: issue 12's measurements. Run as one process (`bench_distributed
// --threads 2`) or under a launcher (`mpirun -np 2 bench_distributed --threads 1`), it
// builds CausalLM<float> of a named size, AdamW, and a dist::GradReducer over the world
// (buckets of 4 MiB, --overlap on|off), then runs --warmup-steps + --steps steps of
//   opt.zero_grad(); out = model.loss(share); reducer.begin();
//   out.loss.backward(rows / B); reducer.finish(); opt.step();
// on random token batches (B, T): every rank draws the whole global batch and keeps its
// rows (Note [Batch shares]), as `tapegrad train` does. It then times the reducer alone
// on the model's gradients (begin + finish, no backward) against MPI_Allreduce(SUM) of a
// buffer of the same number of floats, alternating, --ar-reps times each, after a barrier.
// Rank 0 prints `key=value` lines (bench/distributed.py parses them):
//   config  size=... batch=... seq_len=... ranks=... threads=... overlap=0|1 params=...
//           grad_bytes=... buckets=...
//   step    i=... warmup=0|1 ms=... bwd_ms=... wait_ms=... comm_ms=... loss=...
//           (wait_ms: the time in reducer.finish() after backward returned; comm_ms: all the
//           time the reducer spent in MPI calls and its local sums during the step,
//           including what ran inside backward; both max over ranks)
//   ar      i=... reducer_ms=... allreduce_ms=...            (ranks > 1 only)
//   result  median_ms=... tokens_per_s=... wait_ms=... comm_ms=... reducer_ms=...
//           allreduce_ms=... reducer_gbps=... allreduce_gbps=...
// Bandwidths are "algorithm bandwidth": gradient bytes / time (what a user's step needs);
// a ring moves 2(N-1)/N of them per rank (bench/README.md "Scaling model").
//
// What it is not: a test (nothing is asserted), nor the driver that alternates the
// configurations and prints ratios (bench/distributed.py).
//
// Usage: bench_distributed [--size baby] [--batch 8] [--seq-len 256] [--threads 1]
//                          [--steps 5] [--warmup-steps 2] [--overlap on|off] [--ar-reps 5]
//                          [--seed 0]
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#ifdef TAPEGRAD_HAVE_MPI
#include <mpi.h>
#endif

#include <CLI/CLI.hpp>

#include "autograd/kernels/parallel.hpp"
#include "autograd/memory.hpp"
#include "nn/config.hpp"
#include "nn/distributed.hpp"
#include "nn/model.hpp"
#include "nn/train_step.hpp"
#include "optim/optim.hpp"
#include "bench/bench_util.hpp"
#include "bench/token_batches.hpp"

namespace {

using tg::bench::median;

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

struct Args {
  std::string size = "baby";
  std::int64_t seq_len = 256, batch = 8, steps = 5, warmup = 2, ar_reps = 5;
  int threads = 1;
  bool overlap = true;
  std::uint64_t seed = 0;
};

Args parse(int argc, char** argv) {
  Args a;
  std::string overlap = "on";
  CLI::App app{"Training steps as one process or under mpirun, the gradients summed by dist::GradReducer; "
               "bench/distributed.py drives it"};
  app.name("bench_distributed");
  app.add_option("--size", a.size, "named model size")->capture_default_str();
  app.add_option("--seq-len", a.seq_len, "T")->capture_default_str()->check(CLI::Range(std::int64_t(2), std::int64_t(1) << 20));
  app.add_option("--batch", a.batch, "global B")->capture_default_str()->check(CLI::Range(std::int64_t(1), std::int64_t(1) << 20));
  app.add_option("--threads", a.threads, "threads per rank")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--steps", a.steps, "timed steps")->capture_default_str()->check(CLI::Range(std::int64_t(1), std::int64_t(1) << 30));
  app.add_option("--warmup-steps", a.warmup, "untimed steps first")->capture_default_str()->check(CLI::Range(std::int64_t(0), std::int64_t(1) << 30));
  app.add_option("--overlap", overlap, "sum buckets during backward")->capture_default_str()->check(CLI::IsMember({"on", "off"}));
  app.add_option("--ar-reps", a.ar_reps, "repetitions of the reducer-alone timing")->capture_default_str()->check(CLI::Range(std::int64_t(0), std::int64_t(1) << 20));
  app.add_option("--seed", a.seed, "seed of the weights and tokens")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
  a.overlap = overlap == "on";
  return a;
}

// The largest of every rank's v (the slowest rank sets the step's pace).
double max_over(const tg::dist::Group& g, double v) {
  const auto all = g.all_gather(v);
  return *std::max_element(all.begin(), all.end());
}

}  // namespace

int main(int argc, char** argv) {
  tg::dist::init(&argc, &argv);
  const Args a = parse(argc, argv);
  tg::keep_freed_memory();
  tg::set_num_threads(a.threads);
  openblas_set_num_threads(1);  // linked for the other benchmarks; unused here
  const tg::dist::Group world = tg::dist::Group::world();
  const bool root = world.root();

  tg::nn::ModelConfig cfg;
  try {
    cfg = tg::nn::named_size(a.size);
    if (std::size_t(a.seq_len) > cfg.max_position_embeddings) cfg.max_position_embeddings = std::size_t(a.seq_len);
    cfg.validate();
    tg::dist::check_batch(std::size_t(a.batch), world.size());
  } catch (const std::exception& e) {
    if (root) std::fprintf(stderr, "bench_distributed: %s\n", e.what());
    return 2;
  }

  tg::nn::CausalLM<float> model(cfg, a.seed);  // the same seed: the same weights on every rank
  tg::optim::AdamWOptions ao;
  ao.lr = 1e-3;
  ao.weight_decay = 0.1;
  tg::optim::AdamW<float> opt(tg::optim::make_param_groups(model.named_parameters(), 0.1), ao);
  tg::dist::GradReducer<float> reducer(opt.parameters(), world, 4u << 20, a.overlap);
  std::size_t n_grad = 0;
  for (const auto& p : opt.parameters()) n_grad += p.numel();
  const double grad_bytes = double(n_grad) * sizeof(float);
  const std::size_t B = std::size_t(a.batch);
  const double weight =
      double(tg::dist::share_begin(B, world.size(), world.rank() + 1) - tg::dist::share_begin(B, world.size(), world.rank())) /
      double(B);

  if (root) {
    std::printf("config size=%s batch=%lld seq_len=%lld ranks=%d threads=%d overlap=%d params=%zu grad_bytes=%.0f "
                "buckets=%zu steps=%lld warmup=%lld\n",
                a.size.c_str(), (long long)a.batch, (long long)a.seq_len, world.size(), a.threads, a.overlap ? 1 : 0,
                model.num_parameters(), grad_bytes, reducer.num_buckets(), (long long)a.steps, (long long)a.warmup);
    std::fflush(stdout);
  }

  // Global token batches, uniform in [0, V), the same on every rank; each keeps its rows.
  const std::int64_t n_steps = a.warmup + a.steps;
  std::vector<tg::Index> shares;
  for (const tg::Index& b : tg::bench::random_token_batches(a.seed, cfg.vocab_size, n_steps, B, std::size_t(a.seq_len)))
    shares.push_back(tg::train::batch_share(b, world));

  std::vector<double> total, waits, comms;
  world.barrier();
  for (std::int64_t s = 0; s < n_steps; ++s) {
    const bool warm = s < a.warmup;
    double tb = 0, tw = 0, loss = 0;
    const auto t0 = Clock::now();
    {
      opt.zero_grad();
      tg::nn::LossOutput<float> out = model.loss(shares[std::size_t(s)]);  // (rows, T) -> loss []
      reducer.begin();
      const auto b0 = Clock::now();
      out.loss.backward(xt::xarray<float>(float(weight)));
      tb = ms_since(b0);
      const auto w0 = Clock::now();
      reducer.finish();
      tw = ms_since(w0);
      loss = world.sum(weight * double(out.ce.item()));
      opt.step();
    }
    const double tt = max_over(world, ms_since(t0));
    tw = max_over(world, tw);
    tb = max_over(world, tb);
    const double tc = max_over(world, reducer.stats().seconds_waiting * 1e3);
    if (root) {
      std::printf("step i=%lld warmup=%d ms=%.3f bwd_ms=%.3f wait_ms=%.3f comm_ms=%.3f loss=%.6f\n", (long long)s,
                  warm ? 1 : 0, tt, tb, tw, tc, loss);
      std::fflush(stdout);
    }
    if (!warm) total.push_back(tt), waits.push_back(tw), comms.push_back(tc);
  }

  // The reducer alone on the model's gradients against MPI_Allreduce of as many floats.
  std::vector<double> red, ar;
#ifdef TAPEGRAD_HAVE_MPI
  if (world.size() > 1) {
    std::vector<float> buf(n_grad, 1.0f);
    for (std::int64_t r = 0; r < a.ar_reps; ++r) {
      world.barrier();
      auto t0 = Clock::now();
      reducer.begin();
      reducer.finish();
      const double tr = max_over(world, ms_since(t0));
      world.barrier();
      t0 = Clock::now();
      MPI_Allreduce(MPI_IN_PLACE, buf.data(), int(n_grad), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      const double ta = max_over(world, ms_since(t0));
      std::fill(buf.begin(), buf.end(), 1.0f);  // keep the values finite
      if (root) std::printf("ar i=%lld reducer_ms=%.3f allreduce_ms=%.3f\n", (long long)r, tr, ta);
      red.push_back(tr), ar.push_back(ta);
    }
  }
#endif
  if (root) {
    const double med = median(total);
    const double tokens = double(a.batch) * double(a.seq_len);
    const double rm = median(red), am = median(ar);
    std::printf("result median_ms=%.3f tokens_per_s=%.2f wait_ms=%.3f comm_ms=%.3f reducer_ms=%.3f allreduce_ms=%.3f "
                "reducer_gbps=%.3f allreduce_gbps=%.3f\n",
                med, tokens / (med / 1e3), median(waits), median(comms), rm, am, grad_bytes / (rm / 1e3) / 1e9,
                grad_bytes / (am / 1e3) / 1e9);
    std::fflush(stdout);
  }
  return 0;
}
