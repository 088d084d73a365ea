// bench/train_step.cpp — wall time and peak memory of one full training step of the
// model of nn/MODEL.md in tapegrad (float32): forward + loss, backward, AdamW.
//
// What it is for: the tapegrad half of issue 6's `bench/train_step` benchmark. It builds
// CausalLM<float> for a named size (default `baby`) and a preset, an AdamW over
// make_param_groups (weight decay 0.1 on matrices, none on norms), and runs
// --warmup-steps + --steps training steps on random token batches (B, T), each step
//   opt.zero_grad(); out = model.loss(tokens); out.loss.backward(); opt.step();
// (no gradient clipping, no schedule: the same work as the PyTorch peer in
// bench/train_step.py). It prints machine-readable lines, `key=value` separated by
// spaces, which bench/train_step.py parses:
//   config  preset=... size=... batch=... seq_len=... threads=... params=... matmul_params=...
//           model_flops=...      (6 * matmul_params * B*T + 12 * L * H * D * T * B*T)
//   step    i=... warmup=0|1 ms=... cpu_ms=... fwd_ms=... bwd_ms=... opt_ms=...
//           fwd_cpu_ms=... bwd_cpu_ms=... opt_cpu_ms=... minflt=... loss=...
//   result  median_ms=... cpu_ms=... tokens_per_s=... model_gflops=... rss_before_kib=...
//           peak_rss_kib=... step_rise_kib=... hwm_reset=0|1
// Memory: rss_before is the resident set after the model, the optimizer and the token
// batches exist (before the first step); the high-water mark is then reset through
// /proc/self/clear_refs (hwm_reset=1 when allowed) so peak_rss is the largest resident
// set during the steps (whole process: weights, gradients, AdamW moments, activations,
// libraries), and step_rise = peak_rss - rss_before. Run one configuration per process.
// cpu_ms is the CPU time of the whole process (all threads, CLOCK_PROCESS_CPUTIME_ID)
// during the step: on a loaded machine it tracks the work done better than the wall time
// does (with more than one thread it also counts OpenMP's spin-waiting). minflt counts
// the minor page faults of the step: pages the allocator had returned to the kernel and
// touches again (glibc's malloc gives large blocks back with munmap / trimming) —
// none once tg::keep_freed_memory() is on, as it is unless --malloc-default is given
// (config's malloc=kept|default says which).
//
// With --op-profile it also wraps every backward closure on the tape with a timer
// (instrumentation from outside the engine: Node::backward is a public std::function)
// and prints, per op name, the backward time of the timed steps per step (process CPU
// time and wall time; cpu_share is the op's part of all backward CPU time):
//   opbwd   op=... calls=... cpu_ms_per_step=... ms_per_step=... cpu_share=...
// Forward time per op is not available this way (use `perf record` for that).
//
// What it is not: a test (nothing is asserted), nor the driver that alternates tapegrad
// and PyTorch and prints the table (bench/train_step.py).
//
// Usage: bench_train_step [--preset baseline] [--size baby] [--seq-len 256] [--batch 8]
//                         [--threads 1] [--steps 5] [--warmup-steps 2] [--seed 0]
//                         [--lr 1e-3] [--op-profile] [--malloc-default] [--dump-config PATH]
//                         [--bf16]   (float32 model, matmul operands in bf16: train --dtype bf16)
//                         [--checkpoint-activations]   (each layer recomputed in backward)
#include <cblas.h>

#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "autograd/kernels/gemm_bf16.hpp"
#include "autograd/kernels/parallel.hpp"
#include "autograd/memory.hpp"
#include "autograd/tape.hpp"
#include "nn/config.hpp"
#include "nn/model.hpp"
#include "optim/optim.hpp"
#include "bench/bench_util.hpp"
#include "bench/token_batches.hpp"

namespace {

using tg::bench::median;
using tg::bench::reset_hwm;
using tg::bench::status_kib;

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// Minor page faults of the process so far (a fresh page touched: mostly memory the
// allocator got from the kernel again after returning it).
long minor_faults() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

// CPU time of the whole process (all threads), in ms.
double process_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) * 1e-6;
}

struct Args {
  std::string preset = "baseline", size = "baby", dump_config;
  std::int64_t seq_len = 256, batch = 8, steps = 5, warmup = 2;
  int threads = 1;
  std::uint64_t seed = 0;
  double lr = 1e-3;
  bool op_profile = false;
  bool checkpoint = false;  // --checkpoint-activations: CausalLM::set_checkpoint_layers
  bool bf16 = false;  // --bf16: matmuls in bf16 (autograd/kernels/gemm_bf16.hpp)
  bool malloc_default = false;  // --malloc-default: skip tg::keep_freed_memory()
};

Args parse(int argc, char** argv) {
  Args a;
  CLI::App app{"One configuration of the training step (forward, backward, AdamW), timed step by step; "
               "bench/train_step.py drives it against PyTorch"};
  app.name("bench_train_step");
  app.add_option("--preset", a.preset, "preset of the gating zoo")->capture_default_str();
  app.add_option("--size", a.size, "named model size")->capture_default_str();
  app.add_option("--seq-len", a.seq_len, "T")->capture_default_str()->check(CLI::Range(std::int64_t(2), std::int64_t(1) << 20));
  app.add_option("--batch", a.batch, "B")->capture_default_str()->check(CLI::Range(std::int64_t(1), std::int64_t(1) << 20));
  app.add_option("--threads", a.threads, "threads")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--steps", a.steps, "timed steps")->capture_default_str()->check(CLI::Range(std::int64_t(1), std::int64_t(1) << 30));
  app.add_option("--warmup-steps", a.warmup, "untimed steps first")->capture_default_str()->check(CLI::Range(std::int64_t(0), std::int64_t(1) << 30));
  app.add_option("--seed", a.seed, "seed of the weights and tokens")->capture_default_str();
  app.add_option("--lr", a.lr, "AdamW learning rate")->capture_default_str()->check(CLI::Range(0.0, 10.0));
  app.add_flag("--op-profile", a.op_profile, "time the backward per op");
  app.add_flag("--malloc-default", a.malloc_default, "glibc's malloc policy (no tg::keep_freed_memory())");
  app.add_option("--dump-config", a.dump_config, "write the model's config.json here (for the PyTorch side)");
  app.add_flag("--bf16", a.bf16, "matmuls in bf16 (autograd/kernels/gemm_bf16.hpp)");
  app.add_flag("--checkpoint-activations", a.checkpoint, "recompute each layer in backward");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
  return a;
}

// Per-op backward timer, filled by the wrappers of --op-profile.
struct OpTimes {
  std::map<std::string, double> ms, cpu_ms;
  std::map<std::string, std::int64_t> calls;
  bool on = false;  // only the timed (non-warm-up) steps count
};

// Wraps every alive node's backward closure on the calling thread's tape with a timer.
void instrument_tape(OpTimes& times) {
  for (const auto& node : tg::Tape<float>::current().nodes()) {
    if (!node->backward) continue;
    auto inner = std::move(node->backward);
    std::string op = node->op;
    node->backward = [inner = std::move(inner), op = std::move(op), &times](const xt::xarray<float>& dout) {
      const auto t0 = Clock::now();
      const double c0 = process_cpu_ms();
      inner(dout);
      if (times.on) {
        times.cpu_ms[op] += process_cpu_ms() - c0;
        times.ms[op] += ms_since(t0);
        times.calls[op] += 1;
      }
    };
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  // tapegrad's programs keep freed memory in the process (autograd/memory.hpp);
  // --malloc-default measures glibc's default policy instead.
  const bool kept = !a.malloc_default && tg::keep_freed_memory();
  tg::set_num_threads(a.threads);
  if (a.bf16) tg::kernels::set_gemm_bf16(true);  // throws, naming AVX512_BF16, without it
  openblas_set_num_threads(1);  // linked for the other benchmarks; unused here

  tg::nn::ModelConfig cfg;
  try {
    cfg = tg::nn::with_preset(tg::nn::named_size(a.size), a.preset);
    if (std::size_t(a.seq_len) > cfg.max_position_embeddings) cfg.max_position_embeddings = std::size_t(a.seq_len);
    cfg.validate();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train_step: %s\n", e.what());
    return 2;
  }
  if (!a.dump_config.empty()) {
    cfg.save(a.dump_config);
    return 0;
  }

  tg::nn::CausalLM<float> model(cfg, a.seed);
  model.set_checkpoint_layers(a.checkpoint);
  const auto named = model.named_parameters();
  tg::optim::AdamWOptions ao;
  ao.lr = a.lr;
  ao.weight_decay = 0.1;
  tg::optim::AdamW<float> opt(tg::optim::make_param_groups(named, 0.1), ao);

  // Model FLOPs of one step (PaLM's convention, full T x T attention):
  // 6 * (matmul parameters) * tokens + 12 * L * H * D * T * tokens.
  std::size_t matmul_params = 0;
  for (const auto& [name, p] : named)
    if (p.shape().size() == 2 && name != "model.embed_tokens.weight") matmul_params += p.numel();
  if (cfg.tie_word_embeddings) matmul_params += cfg.vocab_size * cfg.hidden_size;
  const double tokens = double(a.batch) * double(a.seq_len);
  const double model_flops = 6.0 * double(matmul_params) * tokens +
                             12.0 * double(cfg.num_hidden_layers) * double(cfg.num_attention_heads) *
                                 double(cfg.head_dim) * double(a.seq_len) * tokens;

  std::printf("config preset=%s size=%s dtype=%s batch=%lld seq_len=%lld threads=%d params=%zu matmul_params=%zu "
              "model_flops=%.6e steps=%lld warmup=%lld malloc=%s checkpoint=%d\n",
              a.preset.c_str(), a.size.c_str(), a.bf16 ? "bf16" : "f32", (long long)a.batch, (long long)a.seq_len,
              a.threads, model.num_parameters(), matmul_params, model_flops, (long long)a.steps, (long long)a.warmup,
              kept ? "kept" : "default", a.checkpoint ? 1 : 0);
  std::fflush(stdout);

  // Token batches, uniform in [0, V), one per step (made before the clock starts).
  const std::int64_t n_steps = a.warmup + a.steps;
  const std::vector<tg::Index> batches =
      tg::bench::random_token_batches(a.seed, cfg.vocab_size, n_steps, std::size_t(a.batch), std::size_t(a.seq_len));

  const long rss_before = status_kib("VmRSS:");
  const long hwm_build = status_kib("VmHWM:");
  const bool hwm_reset = reset_hwm();

  OpTimes op_times;
  std::vector<double> total, fwd, bwd, optt, cpu;
  for (std::int64_t s = 0; s < n_steps; ++s) {
    const bool warm = s < a.warmup;
    op_times.on = !warm;
    double tf = 0, tb = 0, to = 0, cf = 0, cb = 0, co = 0, loss = 0;
    const long pf0 = minor_faults();
    const double c0 = process_cpu_ms();
    const auto t0 = Clock::now();
    {
      opt.zero_grad();
      const auto f0 = Clock::now();
      const double fc0 = process_cpu_ms();
      tg::nn::LossOutput<float> out = model.loss(batches[std::size_t(s)]);
      tf = ms_since(f0);
      cf = process_cpu_ms() - fc0;
      if (a.op_profile) instrument_tape(op_times);  // outside the timed parts
      const auto b0 = Clock::now();
      const double bc0 = process_cpu_ms();
      out.loss.backward();
      tb = ms_since(b0);
      cb = process_cpu_ms() - bc0;
      loss = double(out.ce.item());
      const auto o0 = Clock::now();
      const double oc0 = process_cpu_ms();
      opt.step();
      to = ms_since(o0);
      co = process_cpu_ms() - oc0;
    }  // the rest of the graph is freed here, inside the step's time
    const double tt = ms_since(t0);
    const double tc = process_cpu_ms() - c0;
    const long pf = minor_faults() - pf0;
    std::printf("step i=%lld warmup=%d ms=%.3f cpu_ms=%.3f fwd_ms=%.3f bwd_ms=%.3f opt_ms=%.3f fwd_cpu_ms=%.3f "
                "bwd_cpu_ms=%.3f opt_cpu_ms=%.3f minflt=%ld loss=%.6f\n",
                (long long)s, warm ? 1 : 0, tt, tc, tf, tb, to, cf, cb, co, pf, loss);
    std::fflush(stdout);
    if (!std::isfinite(loss)) {
      std::fprintf(stderr, "bench_train_step: loss is %g at step %lld\n", loss, (long long)s);
      return 1;
    }
    if (!warm) total.push_back(tt), cpu.push_back(tc), fwd.push_back(tf), bwd.push_back(tb), optt.push_back(to);
  }

  const long hwm_steps = status_kib("VmHWM:");
  const long peak = hwm_reset ? std::max(hwm_steps, hwm_build) : hwm_steps;
  const double med = median(total);
  std::printf("result median_ms=%.3f cpu_ms=%.3f fwd_ms=%.3f bwd_ms=%.3f opt_ms=%.3f tokens_per_s=%.2f "
              "model_gflops=%.3f rss_before_kib=%ld peak_rss_kib=%ld step_rise_kib=%ld hwm_reset=%d\n",
              med, median(cpu), median(fwd), median(bwd), median(optt), tokens / (med / 1e3), model_flops / (med / 1e3) / 1e9,
              rss_before, peak, hwm_steps - rss_before, hwm_reset ? 1 : 0);
  if (a.op_profile) {
    double sum = 0;
    for (const auto& [op, ms] : op_times.cpu_ms) sum += ms;
    std::vector<std::pair<double, std::string>> order;
    for (const auto& [op, ms] : op_times.cpu_ms) order.emplace_back(ms, op);
    std::sort(order.rbegin(), order.rend());
    for (const auto& [cpu, op] : order)
      std::printf("opbwd op=%s calls=%lld cpu_ms_per_step=%.3f ms_per_step=%.3f cpu_share=%.4f\n", op.c_str(),
                  (long long)(op_times.calls[op] / a.steps), cpu / double(a.steps), op_times.ms[op] / double(a.steps),
                  sum > 0 ? cpu / sum : 0.0);
  }
  return 0;
}
