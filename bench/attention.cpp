// bench/attention.cpp — flash attention against its O(T^2) naive twin: time and memory.
//
// What it is for: measures forward+backward of tg::kernels::attention_forward /
// attention_backward (flash-style, memory linear in T) against the naive twins
// (materialised (B,H,T,T) scores) at T = 256, 1024, 4096, B = 1, H = 6, D = 64,
// float, in (B,T,H,D) layout, with H = Hkv = 6 ("mha") and a grouped-query case
// H = 6, Hkv = 2 ("gqa"), at 1 and 2 threads. For each it reports
//   - the median wall time of forward+backward over several runs;
//   - the scratch memory, counted two ways: analytically (the buffers each
//     kernel allocates, attention_scratch_bytes) and measured (the rise of the
//     peak resident set, VmHWM, across one forward+backward).
// Each (case, threads, kernel) runs in its own forked child, so one measurement's
// heap cannot hide or inflate another's. The child warms up on a tiny problem
// (OpenMP threads, code pages), returns freed heap to the OS (malloc_trim), then
// resets the high-water mark through /proc/self/clear_refs (if not allowed, the
// rise is taken from VmHWM as is) and runs one forward+backward.
//
// What it is not: a test (it checks nothing), nor the GEMM or op benchmarks.
//
// Usage: bench_attention [--quick] [--csv PATH] [--no-naive-4096] [--bf16]
//   --quick          T = 256, 1024 only and fewer repetitions
//   --bf16           instead: flash in the bf16 mode (Note [bf16 attention] in
//                    autograd/kernels/attention.cpp) against flash in float32, time only
//                    (needs AVX512_BF16; an error names it otherwise)
//   --csv PATH       also write rows `case,threads,ours,peer,unit,ratio` (peer = naive,
//                    ratio = ours / peer; "NA" where naive was skipped)
//   --no-naive-4096  skip the naive twin at T = 4096 (its single run takes
//                    ~15 s per cell and ~0.8 GB of scores)
#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "autograd/kernels/attention.hpp"
#include "autograd/kernels/gemm_bf16.hpp"
#include "autograd/kernels/parallel.hpp"
#include "bench/bench_util.hpp"

namespace K = tg::kernels;
using K::AttnDims;
using K::AttnStrides;

namespace {

using tg::bench::median;
using tg::bench::reset_hwm;
using tg::bench::status_kib;

struct Case {
  const char* heads;  // "mha" or "gqa"
  int64_t T, H, Hkv;
};

// What a child sends back through its pipe.
struct Measurement {
  double fwd_ms = 0, bwd_ms = 0, total_ms = 0;  // medians
  double peak_kib = 0;                           // rise of VmHWM across one forward+backward
  int hwm_reset = 0;                             // 1 if clear_refs reset the high-water mark
};

// The buffers of one problem in (B,T,H,D) layout.
struct Buffers {
  AttnDims d;
  AttnStrides qs, kvs;
  std::vector<float> q, k, v, out, dout, dq, dk, dv, lse;
  explicit Buffers(AttnDims d_) : d(d_) {
    qs = {d.Tq * d.H * d.D, d.D, d.H * d.D};
    kvs = {d.Tk * d.Hkv * d.D, d.D, d.Hkv * d.D};
    const std::size_t nq = d.B * d.Tq * d.H * d.D, nkv = d.B * d.Tk * d.Hkv * d.D;
    std::mt19937 rng(42);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (auto* x : {&q, &out, &dout, &dq}) x->resize(nq);
    for (auto* x : {&k, &v, &dk, &dv}) x->resize(nkv);
    lse.resize(d.B * d.H * d.Tq);
    for (auto* x : {&q, &k, &v, &dout}) std::generate(x->begin(), x->end(), [&] { return u(rng); });
  }
  void forward(bool naive) {
    auto f = naive ? K::attention_forward_naive<float> : K::attention_forward<float>;
    f(d, 1.f / std::sqrt(float(d.D)), q.data(), qs, k.data(), kvs, v.data(), kvs, out.data(), qs, lse.data());
  }
  void backward(bool naive) {
    auto f = naive ? K::attention_backward_naive<float> : K::attention_backward<float>;
    f(d, 1.f / std::sqrt(float(d.D)), q.data(), qs, k.data(), kvs, v.data(), kvs, out.data(), qs, dout.data(), qs,
      lse.data(), dq.data(), qs, dk.data(), kvs, dv.data(), kvs);
  }
};

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Runs in the child: memory on the first forward+backward, then the timed runs.
Measurement measure(const Case& c, int threads, bool naive, int reps, bool bf16) {
  tg::set_num_threads(threads);
  K::GemmBf16Scope bf16_mode(bf16);
  Measurement m;
  {  // warm up OpenMP's threads and this kernel's code on a tiny problem
    Buffers tiny(AttnDims{1, c.H, c.Hkv, 64, 64, 64});
    tiny.forward(naive);
    tiny.backward(naive);
  }
  // Give the warm-up's freed scratch back to the OS, so the measured call has to
  // fault its own scratch pages in (the flash tiles do not grow with T and would
  // otherwise reuse the warm-up's resident pages unseen).
  malloc_trim(0);
  Buffers buf(AttnDims{1, c.H, c.Hkv, c.T, c.T, 64});
  m.hwm_reset = reset_hwm() ? 1 : 0;
  const long before = status_kib("VmHWM:");
  buf.forward(naive);
  buf.backward(naive);
  m.peak_kib = double(status_kib("VmHWM:") - before);
  std::vector<double> f, b, t;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    buf.forward(naive);
    const double tf = ms_since(t0);
    auto t1 = std::chrono::steady_clock::now();
    buf.backward(naive);
    const double tb = ms_since(t1);
    f.push_back(tf);
    b.push_back(tb);
    t.push_back(tf + tb);
  }
  m.fwd_ms = median(f);
  m.bwd_ms = median(b);
  m.total_ms = median(t);
  return m;
}

// Forks a child for one measurement; returns false if it failed.
bool run_child(const Case& c, int threads, bool naive, int reps, Measurement& out, bool bf16 = false) {
  int fd[2];
  if (pipe(fd) != 0) return false;
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    close(fd[0]);
    const Measurement m = measure(c, threads, naive, reps, bf16);
    const ssize_t w = write(fd[1], &m, sizeof m);
    _exit(w == ssize_t(sizeof m) ? 0 : 1);
  }
  close(fd[1]);
  ssize_t got = 0;
  while (got < ssize_t(sizeof out)) {
    const ssize_t r = read(fd[0], reinterpret_cast<char*>(&out) + got, sizeof out - got);
    if (r <= 0) break;
    got += r;
  }
  close(fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return got == ssize_t(sizeof out) && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

std::string num(double x, int prec) {
  if (!std::isfinite(x)) return "NA";
  char s[64];
  std::snprintf(s, sizeof s, "%.*f", prec, x);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, naive_4096 = true, bf16 = false;
  std::string csv_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--no-naive-4096") naive_4096 = false;
    else if (a == "--bf16") bf16 = true;
    else if (a == "--csv" && i + 1 < argc) csv_path = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--csv PATH] [--no-naive-4096] [--bf16]\n", argv[0]);
      return 2;
    }
  }
  std::vector<int64_t> Ts = {256, 1024, 4096};
  if (quick) Ts = {256, 1024};
  std::vector<Case> cases;
  for (int64_t T : Ts) {
    cases.push_back({"mha", T, 6, 6});
    cases.push_back({"gqa", T, 6, 2});
  }

  std::FILE* csv = nullptr;
  if (!csv_path.empty()) {
    csv = std::fopen(csv_path.c_str(), "w");
    if (!csv) {
      std::fprintf(stderr, "bench_attention: cannot write %s\n", csv_path.c_str());
      return 1;
    }
    std::fprintf(csv, "case,threads,ours,peer,unit,ratio\n");
  }
  auto csv_row = [&](const std::string& name, int threads, double ours, double peer, const char* unit, int prec) {
    if (!csv) return;
    const double ratio = ours / peer;
    std::fprintf(csv, "%s,%d,%s,%s,%s,%s\n", name.c_str(), threads, num(ours, prec).c_str(), num(peer, prec).c_str(),
                 unit, num(ratio, 4).c_str());
  };

  if (bf16) {
    if (!K::cpu_has_avx512_bf16()) {
      std::fprintf(stderr, "bench_attention: --bf16 needs a CPU with AVX512_BF16 (this one has none)\n");
      return 1;
    }
    std::printf("attention forward+backward, B=1 H=6 D=64, (B,T,H,D) layout: flash in the bf16 mode (%s) vs flash "
                "in float32\ntime: median of runs, alternating children\n\n",
                K::gemm_bf16_path());
    std::printf("%-10s %3s | %9s %9s %9s %9s %7s\n", "case", "thr", "bf16 ms", "f32 ms", "bf16 fwd", "f32 fwd", "ratio");
    std::printf("%s\n", std::string(68, '-').c_str());
    for (const Case& c : cases)
      for (int threads : {1, 2}) {
        const int reps = quick ? 5 : (c.T >= 4096 ? 3 : 9);
        Measurement b, f;
        if (!run_child(c, threads, false, reps, b, true) || !run_child(c, threads, false, reps, f, false)) {
          std::fprintf(stderr, "bench_attention: child failed (T=%lld)\n", (long long)c.T);
          return 1;
        }
        const std::string name = std::string(c.heads) + "_T" + std::to_string(c.T);
        std::printf("%-10s %3d | %9.2f %9.2f %9.2f %9.2f %7.3f\n", name.c_str(), threads, b.total_ms, f.total_ms,
                    b.fwd_ms, f.fwd_ms, b.total_ms / f.total_ms);
        std::fflush(stdout);
        csv_row("attn_bf16_fwdbwd_time_" + name, threads, b.total_ms, f.total_ms, "ms", 3);
      }
    std::printf("\nratio = bf16 / float32 (< 1 is faster).\n");
    if (csv) std::fclose(csv);
    return 0;
  }
  std::printf("attention forward+backward, float, B=1 H=6 D=64, (B,T,H,D) layout; flash vs naive (O(T^2) twin)\n");
  std::printf("time: median of runs; memory: scratch beyond inputs/outputs, analytic (buffers allocated)\n");
  std::printf("and measured (rise of peak RSS across one forward+backward, one forked child per cell)\n\n");
  std::printf("%-10s %3s | %9s %9s %9s %7s | %9s %9s %9s %9s %7s\n", "case", "thr", "flash ms", "naive ms",
              "fl fwd ms", "ratio", "fl MiB", "fl meas", "nv MiB", "nv meas", "ratio");
  std::printf("%s\n", std::string(112, '-').c_str());
  bool hwm_reset_everywhere = true;
  for (const Case& c : cases) {
    for (int threads : {1, 2}) {
      const AttnDims d{1, c.H, c.Hkv, c.T, c.T, 64};
      const int reps = quick ? 3 : (c.T >= 4096 ? 3 : (c.T >= 1024 ? 5 : 9));
      const bool skip_naive = c.T >= 4096 && !naive_4096;
      Measurement fl, nv;
      if (!run_child(c, threads, false, reps, fl)) {
        std::fprintf(stderr, "bench_attention: flash child failed (T=%lld)\n", (long long)c.T);
        return 1;
      }
      if (!skip_naive && !run_child(c, threads, true, c.T >= 4096 ? 1 : reps, nv)) {
        std::fprintf(stderr, "bench_attention: naive child failed (T=%lld)\n", (long long)c.T);
        return 1;
      }
      hwm_reset_everywhere = hwm_reset_everywhere && fl.hwm_reset && (skip_naive || nv.hwm_reset);
      // fwd+bwd peak = the larger of the two calls' scratch (forward frees its own before backward)
      const double fl_bytes = double(std::max(K::attention_scratch_bytes(d, sizeof(float), false, false, threads),
                                              K::attention_scratch_bytes(d, sizeof(float), true, false, threads)));
      const double nv_bytes = double(std::max(K::attention_scratch_bytes(d, sizeof(float), false, true, threads),
                                              K::attention_scratch_bytes(d, sizeof(float), true, true, threads)));
      const double nan = std::nan("");
      const double nv_ms = skip_naive ? nan : nv.total_ms;
      const double nv_meas = skip_naive ? nan : nv.peak_kib / 1024.0;
      const std::string name = std::string(c.heads) + "_T" + std::to_string(c.T);
      std::printf("%-10s %3d | %9.2f %9s %9.2f %7s | %9.3f %9.3f %9.1f %9s %7s%s\n", name.c_str(), threads,
                  fl.total_ms, num(nv_ms, 2).c_str(), fl.fwd_ms, num(fl.total_ms / nv_ms, 3).c_str(), mib(fl_bytes),
                  fl.peak_kib / 1024.0, mib(nv_bytes), num(nv_meas, 1).c_str(),
                  num(mib(fl_bytes) / mib(nv_bytes), 4).c_str(), skip_naive ? "  (naive skipped)" : (c.T >= 4096 ? "  (naive: 1 run)" : ""));
      std::fflush(stdout);
      csv_row("attn_fwdbwd_time_" + name, threads, fl.total_ms, nv_ms, "ms", 3);
      csv_row("attn_fwd_time_" + name, threads, fl.fwd_ms, skip_naive ? nan : nv.fwd_ms, "ms", 3);
      csv_row("attn_bwd_time_" + name, threads, fl.bwd_ms, skip_naive ? nan : nv.bwd_ms, "ms", 3);
      csv_row("attn_mem_analytic_" + name, threads, mib(fl_bytes), mib(nv_bytes), "MiB", 4);
      csv_row("attn_mem_measured_" + name, threads, fl.peak_kib / 1024.0, nv_meas, "MiB", 4);
    }
  }
  std::printf("\nratio = flash / naive (time: < 1 is faster; memory: analytic flash / analytic naive).\n");
  if (!hwm_reset_everywhere)
    std::printf("note: /proc/self/clear_refs was not writable; measured peaks are relative to the "
                "earlier high-water mark and may read low.\n");
  if (csv) std::fclose(csv);
  return 0;
}
