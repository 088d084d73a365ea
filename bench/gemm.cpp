// bench/gemm.cpp — GFLOP/s of tg::kernels::gemm against OpenBLAS cblas_?gemm.
//
// What it is for: the side-by-side GEMM benchmark of issue 3. In one run it
// times tapegrad and OpenBLAS on the same operands, alternating the two in
// blocks, several repetitions, and reports the medians of each and the median of
// the rounds' ratios (one block of each per round, back to back), for
//   - square sizes 64 .. 2048 (C = A @ B),
//   - the matmuls of the baby model's training step (tokens T=2048, width 384,
//     MLP 1024, qkv 1152, vocab 256): forward y = x @ W^T, backward
//     dX = dY @ W and dW = dY^T @ X,
//   - one-token decoding (M = 1, and M = 4) through the qkv, MLP-down and MLP-up weights,
//   - the batched attention matmuls (batch 48 = 8 sequences x 6 heads, T=256,
//     D=64): scores q @ k^T and P @ v (peer: a loop of cblas calls),
// at 1 and 2 threads (tg::set_num_threads and openblas_set_num_threads).
// Prints a table; --csv PATH writes rows `case,threads,ours,peer,unit,ratio`.
//
// What it is not: a test. Nothing here asserts speed; a loose agreement check
// against OpenBLAS only guards against timing a wrong kernel.
//
// --dtype bf16 times tapegrad's bf16 mode (gemm_bf16.hpp: bf16 operands, float
// accumulation, AVX512_BF16) against OpenBLAS's float sgemm: the speed a bf16 training
// step gets from its matmuls.
//
// Usage: bench_gemm [--quick] [--dtype f32|f64|both|bf16] [--threads 1,2]
//                   [--only SUBSTRING] [--reps N] [--csv PATH]
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "autograd/kernels/gemm.hpp"
#include "autograd/kernels/gemm_bf16.hpp"
#include "autograd/kernels/parallel.hpp"
#include "bench/bench_util.hpp"

namespace {

using tg::bench::median;

struct Case {
  std::string name;
  bool transA, transB;
  int64_t M, N, K;
  int64_t batch;  // 1: plain gemm
};

std::vector<Case> make_cases(bool quick) {
  std::vector<Case> cs;
  const std::vector<int64_t> squares =
      quick ? std::vector<int64_t>{64, 256, 1024} : std::vector<int64_t>{64, 128, 256, 512, 1024, 2048};
  for (int64_t n : squares) cs.push_back({"square_" + std::to_string(n), false, false, n, n, n, 1});
  // Baby model: tokens T = 2048 (batch 8 x seq 256), width 384.
  const int64_t T = 2048, d = 384;
  struct Lin {
    const char* name;
    int64_t out, in;
  };
  std::vector<Lin> lins = {{"qkv", 1152, d}, {"o", d, d}, {"up", 1024, d}, {"down", d, 1024},
                           {"lm_head", 256, d}};
  if (quick) lins = {{"qkv", 1152, d}, {"down", d, 1024}};
  for (const Lin& l : lins) {
    const std::string s = std::string(l.name);
    // forward y(T,out) = x(T,in) @ W(out,in)^T
    cs.push_back({"fwd_" + s, false, true, T, l.out, l.in, 1});
    // dX(T,in) = dY(T,out) @ W(out,in)
    cs.push_back({"dX_" + s, false, false, T, l.in, l.out, 1});
    // dW(out,in) = dY(T,out)^T @ X(T,in)
    cs.push_back({"dW_" + s, true, false, l.out, l.in, T, 1});
  }
  // The g1_headwise preset widens q_proj by one score per head: 384 + 6 columns, a
  // last panel of 6 columns (a narrow edge the micro-kernel should not pay 64 for).
  if (!quick) cs.push_back({"fwd_q_headwise", false, true, T, d + 6, d, 1});
  // Decoding with the KV cache: one token (M = 1), or a few, through a weight matrix
  // (the skinny path: B is read in place, not packed). B stays in cache between
  // repetitions here, unlike a real decoding step that streams all the weights.
  if (!quick) {
    cs.push_back({"dec_qkv", false, true, 1, 1152, d, 1});
    cs.push_back({"dec_down", false, true, 1, d, 1024, 1});
    cs.push_back({"dec4_up", false, true, 4, 1024, d, 1});
  }
  // Attention, batch 8*6 heads, T=256, D=64.
  cs.push_back({"attn_qkT_b48", false, true, 256, 256, 64, 48});
  if (!quick) cs.push_back({"attn_pv_b48", false, false, 256, 64, 256, 48});
  return cs;
}

std::string shape_str(const Case& c) {
  std::string s = c.batch > 1 ? "b" + std::to_string(c.batch) + " " : std::string();
  s += std::to_string(c.M) + "x" + std::to_string(c.N) + "x" + std::to_string(c.K) + " ";
  s += c.transA ? 'T' : 'N';
  s += c.transB ? 'T' : 'N';
  return s;
}

void cblas_call(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans,
              int(M), int(N), int(K), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}
void cblas_call(bool tA, bool tB, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans,
              int(M), int(N), int(K), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Row {
  std::string name;
  int threads;
  double ours, peer;  // medians of the blocks' GFLOP/s
  double ratio;       // median of the rounds' ratios (each round: one block of each, adjacent)
};

template <class T>
Row run_case(const Case& c, const char* dtype, int threads, int reps, double block_s) {
  const int64_t lda = c.transA ? c.M : c.K, ldb = c.transB ? c.K : c.N, ldc = c.N;
  const int64_t sA = c.M * c.K, sB = c.K * c.N, sC = c.M * c.N;
  std::vector<T> A(size_t(sA * c.batch)), B(size_t(sB * c.batch)), C1(size_t(sC * c.batch)),
      C2(size_t(sC * c.batch));
  std::mt19937 rng(1234);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  for (T& x : A) x = T(u(rng));
  for (T& x : B) x = T(u(rng));

  auto ours = [&] {
    if (c.batch == 1)
      tg::kernels::gemm<T>(c.transA, c.transB, c.M, c.N, c.K, T(1), A.data(), lda, B.data(), ldb,
                           T(0), C1.data(), ldc);
    else
      tg::kernels::gemm_batched<T>(c.transA, c.transB, c.M, c.N, c.K, T(1), A.data(), lda, sA,
                                   B.data(), ldb, sB, T(0), C1.data(), ldc, sC, c.batch);
  };
  auto peer = [&] {
    for (int64_t b = 0; b < c.batch; ++b)
      cblas_call(c.transA, c.transB, c.M, c.N, c.K, T(1), A.data() + b * sA, lda,
                 B.data() + b * sB, ldb, T(0), C2.data() + b * sC, ldc);
  };

  // Warm up both and check they agree (guards against timing a wrong kernel).
  ours();
  peer();
  double maxerr = 0, maxref = 0;
  for (size_t i = 0; i < C1.size(); ++i) {
    maxerr = std::max(maxerr, std::abs(double(C1[i]) - double(C2[i])));
    maxref = std::max(maxref, std::abs(double(C2[i])));
  }
  double tol = 8.0 * double(c.K) * std::numeric_limits<T>::epsilon() * std::max(1.0, maxref);
  if (tg::kernels::gemm_bf16_enabled())  // operands rounded to 8 bits: a looser check
    tol = 0x1p-6 * std::sqrt(double(c.K)) * std::max(1.0, maxref);
  if (!(maxerr <= tol))
    std::fprintf(stderr, "WARNING: %s %s disagrees with OpenBLAS: max |diff| %g (tol %g)\n",
                 dtype, c.name.c_str(), maxerr, tol);

  const double flops = 2.0 * double(c.M) * double(c.N) * double(c.K) * double(c.batch);
  // Iterations per timed block: about block_s seconds, from a short probe.
  double t0 = now_s();
  int probe = 0;
  do {
    ours();
    ++probe;
  } while (now_s() - t0 < 0.02);
  const double per = (now_s() - t0) / probe;
  const int iters = std::max(1, int(block_s / per));

  std::vector<double> g_ours, g_peer, ratios;
  for (int r = 0; r < reps; ++r) {
    // Alternate which one goes first so neither always follows the other.
    for (int w = 0; w < 2; ++w) {
      const bool do_ours = (r + w) % 2 == 0;
      // Untimed lead-in: run this side for 0.15 s first. The other library's
      // idle workers stop spinning meanwhile (OpenBLAS's spin for about 0.1 s
      // after a call, libgomp's for a few ms), and this side's workers are
      // awake and on their cores, as in a program that calls one library
      // steadily. (Sleeping instead lets the scheduler stack a woken worker
      // onto the caller's core on a busy machine.)
      const double lead = now_s();
      if (do_ours) {
        while (now_s() - lead < 0.15) ours();
        const double s = now_s();
        for (int i = 0; i < iters; ++i) ours();
        g_ours.push_back(flops * iters / (now_s() - s) * 1e-9);
      } else {
        while (now_s() - lead < 0.15) peer();
        const double s = now_s();
        for (int i = 0; i < iters; ++i) peer();
        g_peer.push_back(flops * iters / (now_s() - s) * 1e-9);
      }
    }
    // The ratio of this round's two blocks, run back to back: on a shared machine
    // whose speed drifts from second to second this compares like with like.
    ratios.push_back(g_ours.back() / g_peer.back());
  }
  return {std::string(dtype) + "/" + c.name, threads, median(g_ours), median(g_peer), median(ratios)};
}

// Alternates both libraries on a 512^3 product for about `seconds`.
template <class T>
void warm_up(double seconds) {
  const int64_t n = 512;
  std::vector<T> A(size_t(n * n), T(0.5)), B(size_t(n * n), T(0.25)), C(size_t(n * n));
  const double t0 = now_s();
  while (now_s() - t0 < seconds) {
    for (int i = 0; i < 4; ++i)
      tg::kernels::gemm<T>(false, false, n, n, n, T(1), A.data(), n, B.data(), n, T(0), C.data(), n);
    for (int i = 0; i < 4; ++i)
      cblas_call(false, false, n, n, n, T(1), A.data(), n, B.data(), n, T(0), C.data(), n);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string dtype = "both", csv, only;
  std::vector<int> thread_list = {1, 2};
  int reps = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_gemm: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--quick") {
      quick = true;
    } else if (a == "--dtype") {
      dtype = next();
      if (dtype != "f32" && dtype != "f64" && dtype != "both" && dtype != "bf16") {
        std::fprintf(stderr, "bench_gemm: --dtype must be f32, f64, both or bf16\n");
        return 2;
      }
    } else if (a == "--csv") {
      csv = next();
    } else if (a == "--only") {
      only = next();
    } else if (a == "--reps") {
      reps = std::atoi(next().c_str());
    } else if (a == "--threads") {
      thread_list.clear();
      std::string s = next();
      for (size_t p = 0; p < s.size();) {
        size_t q = s.find(',', p);
        if (q == std::string::npos) q = s.size();
        thread_list.push_back(std::atoi(s.substr(p, q - p).c_str()));
        p = q + 1;
      }
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: bench_gemm [--quick] [--dtype f32|f64|both|bf16] [--threads 1,2] [--only SUBSTR]\n"
          "                  [--reps N] [--csv PATH]\n");
      return 0;
    } else {
      std::fprintf(stderr, "bench_gemm: unknown flag %s (try --help)\n", a.c_str());
      return 2;
    }
  }
  if (reps <= 0) reps = quick ? 3 : 7;
  const double block_s = quick ? 0.03 : 0.08;

  std::FILE* out = nullptr;
  if (!csv.empty()) {
    out = std::fopen(csv.c_str(), "w");
    if (!out) {
      std::fprintf(stderr, "bench_gemm: cannot write %s\n", csv.c_str());
      return 1;
    }
    std::fprintf(out, "case,threads,ours,peer,unit,ratio\n");
  }

  std::printf("GEMM GFLOP/s, tapegrad vs OpenBLAS (%s), medians of %d alternating blocks; ratio: median of "
              "the rounds' ratios\n",
              openblas_get_corename(), reps);
  std::printf("%-22s %-20s %3s %10s %10s %7s\n", "case", "shape MxNxK op", "thr", "tapegrad",
              "OpenBLAS", "ratio");
  std::vector<std::string> dtypes;
  if (dtype == "bf16") {
    dtypes.push_back("bf16");
    tg::kernels::set_gemm_bf16(true);  // throws, naming AVX512_BF16, on a CPU without it
  } else {
    if (dtype != "f64") dtypes.push_back("f32");
    if (dtype != "f32") dtypes.push_back("f64");
  }
  for (const std::string& dt : dtypes) {
    for (int th : thread_list) {
      tg::set_num_threads(th);
      openblas_set_num_threads(th);
      // Start both libraries' thread pools and let the scheduler settle them
      // on the cores before timing (the first calls after a team is created
      // can be much slower).
      if (dt != "f64")
        warm_up<float>(0.3);
      else
        warm_up<double>(0.3);
      for (const Case& c : make_cases(quick)) {
        if (!only.empty() && c.name.find(only) == std::string::npos) continue;
        Row r = dt != "f64" ? run_case<float>(c, dt.c_str(), th, reps, block_s)
                            : run_case<double>(c, "f64", th, reps, block_s);
        const double ratio = r.ratio;
        std::printf("%-22s %-20s %3d %10.1f %10.1f %7.3f\n", r.name.c_str(), shape_str(c).c_str(),
                    th, r.ours, r.peer, ratio);
        std::fflush(stdout);
        if (out)
          std::fprintf(out, "%s,%d,%.3f,%.3f,GFLOP/s,%.4f\n", r.name.c_str(), th, r.ours, r.peer,
                       ratio);
      }
    }
  }
  if (out) std::fclose(out);
  return 0;
}
