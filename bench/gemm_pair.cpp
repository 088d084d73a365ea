// bench/gemm_pair.cpp — one GEMM shape, tapegrad against cblas_sgemm, call by call.
//
// What it is for: comparing kernel changes on one shape on a shared machine whose
// speed drifts from second to second. bench_gemm times blocks of calls (its 2-thread
// rows need them: OpenBLAS's idle workers spin after a call); here, at one thread,
// the two libraries alternate call by call (which goes first alternates too), each
// pair gives a ratio, and the median of the pairs' ratios is printed with each
// side's median GFLOP/s. Two builds of tapegrad are compared by running each, one
// after the other, a few rounds: the ratios to the same peer compare.
//
// Operands are allocated like tapegrad's tensors (std::allocator, so a large
// buffer starts 16 bytes past a page boundary); --c-offset moves C by a number of
// floats, --align64 aligns all three to 64 bytes.
//
// What it is not: a test (a loose agreement check only guards against timing a
// wrong kernel), nor a two-thread benchmark (use bench_gemm for those).
//
// Usage: bench_gemm_pair --shape MxNxK [--op NN|NT|TN|TT] [--pairs N] [--ldc-pad N]
//                        [--c-offset N] [--align64]
#include <cblas.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "autograd/kernels/gemm.hpp"
#include "autograd/kernels/parallel.hpp"
#include "bench/bench_util.hpp"

namespace {

// A float buffer of n values (plus room for the offset), either from
// std::allocator (as tapegrad's tensors are) or 64-byte aligned.
struct Buffer {
  std::vector<float> plain;
  float* aligned = nullptr;
  float* p = nullptr;
  Buffer(std::size_t n, std::size_t offset, bool align64) {
    if (align64) {
      aligned = static_cast<float*>(std::aligned_alloc(64, ((n + offset) * sizeof(float) + 63) / 64 * 64));
      if (!aligned) throw std::bad_alloc();
      p = aligned + offset;
    } else {
      plain.resize(n + offset);
      p = plain.data() + offset;
    }
  }
  ~Buffer() { std::free(aligned); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"One GEMM shape, tapegrad against cblas_sgemm alternating call by call at one thread; "
               "prints the median of the pairs' ratios"};
  app.name("bench_gemm_pair");
  std::string shape, op = "NN";
  int pairs = 40;
  int64_t ldc_pad = 0, c_offset = 0;
  bool align64 = false;
  app.add_option("--shape", shape, "MxNxK of C = op(A) op(B), C M x N")->required();
  app.add_option("--op", op, "transposes of A and B: NN, NT, TN or TT")->capture_default_str()
      ->check(CLI::IsMember({"NN", "NT", "TN", "TT"}));
  app.add_option("--pairs", pairs, "timed pairs of calls")->capture_default_str()->check(CLI::Range(1, 1 << 24));
  app.add_option("--ldc-pad", ldc_pad, "ldc = N + this")->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  app.add_option("--c-offset", c_offset, "C starts this many floats into its buffer")->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(1024)));
  app.add_flag("--align64", align64, "64-byte aligned buffers instead of std::allocator's");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  long long m = 0, n = 0, k = 0;
  char tail = 0;
  if (std::sscanf(shape.c_str(), "%lldx%lldx%lld%c", &m, &n, &k, &tail) != 3 || m < 1 || n < 1 || k < 1 ||
      m > (1 << 20) || n > (1 << 20) || k > (1 << 20)) {
    std::fprintf(stderr, "bench_gemm_pair: --shape must be MxNxK with each in 1..1048576, got '%s'\n",
                 shape.c_str());
    return 2;
  }
  const int64_t M = m, N = n, K = k;
  const bool tA = op[0] == 'T', tB = op[1] == 'T';
  tg::set_num_threads(1);
  openblas_set_num_threads(1);

  const int64_t lda = tA ? M : K, ldb = tB ? K : N, ldc = N + ldc_pad;
  Buffer A(std::size_t(M * K), 0, align64), B(std::size_t(K * N), 0, align64),
      C(std::size_t(M * ldc), std::size_t(c_offset), align64),
      R(std::size_t(M * ldc), 0, false);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int64_t i = 0; i < M * K; ++i) A.p[i] = u(rng);
  for (int64_t i = 0; i < K * N; ++i) B.p[i] = u(rng);

  auto ours = [&](float* c) {
    tg::kernels::gemm<float>(tA, tB, M, N, K, 1.f, A.p, lda, B.p, ldb, 0.f, c, ldc);
  };
  auto peer = [&](float* c) {
    cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, int(M), int(N),
                int(K), 1.f, A.p, int(lda), B.p, int(ldb), 0.f, c, int(ldc));
  };
  auto timed = [](auto&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  // Agreement (and warm-up).
  ours(C.p);
  peer(R.p);
  double maxerr = 0, maxref = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      maxerr = std::max(maxerr, double(std::abs(C.p[i * ldc + j] - R.p[i * ldc + j])));
      maxref = std::max(maxref, double(std::abs(R.p[i * ldc + j])));
    }
  if (!(maxerr <= 0x1p-12 * std::sqrt(double(K)) * std::max(1.0, maxref)))
    std::fprintf(stderr, "WARNING: bench_gemm_pair: tapegrad disagrees with OpenBLAS: max |diff| %g\n", maxerr);

  std::vector<double> t_ours, t_peer, ratios;
  for (int p = 0; p < pairs; ++p) {
    double a, b;
    if (p % 2) {
      a = timed([&] { ours(C.p); });
      b = timed([&] { peer(R.p); });
    } else {
      b = timed([&] { peer(R.p); });
      a = timed([&] { ours(C.p); });
    }
    t_ours.push_back(a);
    t_peer.push_back(b);
    ratios.push_back(b / a);  // > 1: tapegrad faster
  }
  const double gflop = 2.0 * double(M) * double(N) * double(K) * 1e-9;
  std::printf("%lldx%lldx%lld %s, 1 thread, %d pairs: tapegrad %.1f GFLOP/s, OpenBLAS (%s) %.1f GFLOP/s, "
              "ratio (median of pairs) %.3f\n",
              m, n, k, op.c_str(), pairs, gflop / tg::bench::median(t_ours), openblas_get_corename(),
              gflop / tg::bench::median(t_peer), tg::bench::median(ratios));
  return 0;
}
