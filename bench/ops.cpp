// bench/ops.cpp — the fused op kernels against their naive twins: softmax, RMSNorm,
// cross-entropy (forward + backward), at the shapes of the baby model's training step.
//
// What it is for: showing what the xsimd + OpenMP kernels buy over the plain loops they
// are tested against. Each case times forward + backward of the fast kernel and of its
// `_naive` twin, alternating, and reports medians, at 1 and 2 threads.
// Attention forward + backward (T = 256, 1024, 4096, with peak memory) is measured by
// bench_attention, which forks a child per case so memory can be measured cleanly.
//
// What it is not: a test (nothing is checked here; tests/test_kernels_* do that).
//
// Usage: bench_ops [--quick] [--reps N] [--csv PATH]
//   --csv PATH writes rows `case,threads,ours,peer,unit,ratio` (unit ms, peer = naive twin,
//   ratio = peer / ours, the speed-up).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "autograd/kernels/norm.hpp"
#include "autograd/kernels/parallel.hpp"
#include "bench/bench_util.hpp"
#include "autograd/kernels/softmax.hpp"

namespace K = tg::kernels;

namespace {

using tg::bench::median;

double time_ms(const std::function<void()>& f) {
  auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<float> randv(std::size_t n, std::mt19937& g, float lo = -3.f, float hi = 3.f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

struct Case {
  std::string name;
  std::function<void()> fast, naive;  // forward + backward each
};

}  // namespace

int main(int argc, char** argv) {
  int reps = 21;
  std::string csv;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") reps = 5;
    else if (a == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (a == "--csv" && i + 1 < argc) csv = argv[++i];
    else {
      std::fprintf(stderr, "bench_ops: unknown argument '%s'\nusage: bench_ops [--quick] [--reps N] [--csv PATH]\n",
                   a.c_str());
      return 2;
    }
  }
  std::mt19937 g(0);
  // baby training step: B*T = 8*256 = 2048 tokens, width 384, vocab 256, 6 heads of T=256 scores
  const int64_t N = 2048, C = 384, V = 256, Rs = 8 * 6 * 256, Ts = 256;
  auto x = randv(N * C, g), w = randv(C, g, 0.5f, 1.5f), dy = randv(N * C, g);
  std::vector<float> y(N * C), rstd(N), dx(N * C), dw(C);
  auto s = randv(Rs * Ts, g), ds = randv(Rs * Ts, g);
  std::vector<float> p(Rs * Ts), dsx(Rs * Ts);
  auto logits = randv(N * V, g, -5.f, 5.f);
  std::vector<int64_t> tgt(N);
  for (auto& t : tgt) t = int64_t(g() % V);
  std::vector<float> loss(N), lse(N), dl(N, 1.f / N), dlogits(N * V);

  std::vector<Case> cases = {
      {"rmsnorm fwd+bwd (2048x384)",
       [&] {
         K::rmsnorm_forward<float>(N, C, x.data(), w.data(), 1e-6f, y.data(), rstd.data());
         K::rmsnorm_backward<float>(N, C, x.data(), w.data(), rstd.data(), dy.data(), dx.data(), dw.data());
       },
       [&] {
         K::rmsnorm_forward_naive<float>(N, C, x.data(), w.data(), 1e-6f, y.data(), rstd.data());
         K::rmsnorm_backward_naive<float>(N, C, x.data(), w.data(), rstd.data(), dy.data(), dx.data(), dw.data());
       }},
      {"softmax fwd+bwd (12288x256)",
       [&] {
         K::softmax_forward<float>(Rs, Ts, s.data(), p.data());
         K::softmax_backward<float>(Rs, Ts, p.data(), ds.data(), dsx.data());
       },
       [&] {
         K::softmax_forward_naive<float>(Rs, Ts, s.data(), p.data());
         K::softmax_backward_naive<float>(Rs, Ts, p.data(), ds.data(), dsx.data());
       }},
      {"cross_entropy fwd+bwd (2048x256)",
       [&] {
         K::cross_entropy_forward<float>(N, V, logits.data(), tgt.data(), -100, loss.data(), lse.data());
         K::cross_entropy_backward<float>(N, V, logits.data(), tgt.data(), -100, lse.data(), dl.data(), dlogits.data());
       },
       [&] {
         K::cross_entropy_forward_naive<float>(N, V, logits.data(), tgt.data(), -100, loss.data(), lse.data());
         K::cross_entropy_backward_naive<float>(N, V, logits.data(), tgt.data(), -100, lse.data(), dl.data(),
                                                dlogits.data());
       }},
  };

  std::FILE* out = nullptr;
  if (!csv.empty() && !(out = std::fopen(csv.c_str(), "w"))) {
    std::fprintf(stderr, "bench_ops: cannot write %s\n", csv.c_str());
    return 1;
  }
  if (out) std::fprintf(out, "case,threads,ours,peer,unit,ratio\n");
  std::printf("%-34s %7s %12s %12s %9s\n", "case (float32)", "threads", "fast ms", "naive ms", "speed-up");
  for (int threads : {1, 2}) {
    tg::set_num_threads(threads);
    for (auto& c : cases) {
      c.fast();  // warm up (threads, caches)
      c.naive();
      std::vector<double> tf, tn;
      for (int r = 0; r < reps; ++r) {  // alternate, so both see the same machine load
        tf.push_back(time_ms(c.fast));
        tn.push_back(time_ms(c.naive));
      }
      double f = median(tf), n = median(tn);
      std::printf("%-34s %7d %12.3f %12.3f %8.1fx\n", c.name.c_str(), threads, f, n, n / f);
      if (out) std::fprintf(out, "\"%s\",%d,%.4f,%.4f,ms,%.3f\n", c.name.c_str(), threads, f, n, n / f);
    }
  }
  if (out) std::fclose(out);
  std::printf("(medians of %d alternating runs; attention: see bench_attention)\n", reps);
  return 0;
}
