// tests/test_kernels_gemm.cpp — tg::kernels::gemm and gemm_batched against their naive twins.
//
// What it is for: checks the packed, blocked, threaded GEMM against the plain
// triple loop in float and double: all four transpose cases, odd sizes that
// leave edge tiles in every direction, sizes past the cache blocks, skinny
// products (M <= 4, unpacked), padded
// leading dimensions (and that padding is left untouched), alpha/beta variants
// including beta = 0 over a NaN-filled C, the batched form (strides, broadcast
// operands, both threading paths), run-to-run bitwise reproducibility at 1 and
// 2 threads, and the argument checks.
//
// What it is not: a speed test (bench/gemm.cpp is).
// Tolerances: |C - C_ref| <= 4 * K * eps * (|alpha| * sum_k |a||b| + |beta * C0|),
// the first-order bound for any summation order.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/kernels/gemm.hpp"
#include "autograd/kernels/parallel.hpp"

using tg::kernels::gemm;
using tg::kernels::gemm_batched;
using tg::kernels::gemm_batched_naive;
using tg::kernels::gemm_naive;

namespace {

// Restores the default thread count when a test case ends.
struct ThreadGuard {
  explicit ThreadGuard(int n) { tg::set_num_threads(n); }
  ~ThreadGuard() { tg::set_num_threads(0); }
};

template <class T>
std::vector<T> random_vec(std::size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<T> v(n);
  for (T& x : v) x = T(u(rng));
  return v;
}

// One GEMM problem with padded leading dimensions.
template <class T>
struct Problem {
  bool tA, tB;
  int64_t M, N, K, lda, ldb, ldc;
  std::vector<T> A, B, C0;
  Problem(bool tA_, bool tB_, int64_t M_, int64_t N_, int64_t K_, int64_t pad, std::mt19937& rng,
          bool nan_C)
      : tA(tA_), tB(tB_), M(M_), N(N_), K(K_) {
    lda = (tA ? M : K) + pad;
    ldb = (tB ? K : N) + pad;
    ldc = N + pad;
    if (lda < 1) lda = 1;
    if (ldb < 1) ldb = 1;
    if (ldc < 1) ldc = 1;
    A = random_vec<T>(std::size_t((tA ? K : M) * lda), rng);
    B = random_vec<T>(std::size_t((tB ? N : K) * ldb), rng);
    C0 = random_vec<T>(std::size_t(M * ldc), rng);
    if (nan_C)
      for (T& c : C0) c = std::numeric_limits<T>::quiet_NaN();
  }
  T a(int64_t m, int64_t k) const { return tA ? A[k * lda + m] : A[m * lda + k]; }
  T b(int64_t k, int64_t n) const { return tB ? B[n * ldb + k] : B[k * ldb + n]; }
};

// Runs gemm and gemm_naive on the same problem and compares element-wise.
template <class T>
void check_against_naive(const Problem<T>& p, T alpha, T beta) {
  CAPTURE(p.tA);
  CAPTURE(p.tB);
  CAPTURE(p.M);
  CAPTURE(p.N);
  CAPTURE(p.K);
  CAPTURE(p.lda);
  CAPTURE(p.ldb);
  CAPTURE(p.ldc);
  CAPTURE(alpha);
  CAPTURE(beta);
  std::vector<T> C = p.C0, R = p.C0;
  gemm<T>(p.tA, p.tB, p.M, p.N, p.K, alpha, p.A.data(), p.lda, p.B.data(), p.ldb, beta, C.data(),
          p.ldc);
  gemm_naive<T>(p.tA, p.tB, p.M, p.N, p.K, alpha, p.A.data(), p.lda, p.B.data(), p.ldb, beta,
                R.data(), p.ldc);
  const double eps = std::numeric_limits<T>::epsilon();
  int64_t bad = 0;
  double worst = 0;
  for (int64_t m = 0; m < p.M; ++m) {
    for (int64_t n = 0; n < p.ldc; ++n) {
      const std::size_t i = std::size_t(m * p.ldc + n);
      if (n >= p.N) {
        // Padding past N must be untouched (compare bit patterns: may be NaN).
        if (!(std::isnan(double(p.C0[i])) ? std::isnan(double(C[i])) : C[i] == p.C0[i])) ++bad;
        continue;
      }
      double s = 0;
      for (int64_t k = 0; k < p.K; ++k) s += std::abs(double(p.a(m, k)) * double(p.b(k, n)));
      const double c0 = beta == T(0) ? 0.0 : std::abs(double(beta) * double(p.C0[i]));
      const double tol = 4.0 * double(std::max<int64_t>(p.K, 1)) * eps *
                             (std::abs(double(alpha)) * s + c0) +
                         std::numeric_limits<T>::min();
      const double err = std::abs(double(C[i]) - double(R[i]));
      if (!(err <= tol)) ++bad;  // also catches NaN
      if (err > worst) worst = err;
    }
  }
  CAPTURE(worst);
  CHECK(bad == 0);
}

const int64_t kOdd[] = {1, 2, 7, 13, 31, 65, 129, 257};

template <class T>
void random_shapes(int threads) {
  ThreadGuard guard(threads);
  std::mt19937 rng(20240 + threads + int(sizeof(T)));
  std::uniform_int_distribution<int> pick(0, int(std::size(kOdd)) - 1);
  const T alphas[] = {T(1), T(-0.5), T(2.5)};
  const T betas[] = {T(0), T(1), T(-1.5)};
  for (int trial = 0; trial < 24; ++trial) {
    for (int t = 0; t < 4; ++t) {
      const bool tA = t & 1, tB = t & 2;
      const int64_t M = kOdd[pick(rng)], N = kOdd[pick(rng)], K = kOdd[pick(rng)];
      const int64_t pad = trial % 3 == 0 ? 0 : 1 + trial % 5;
      const T alpha = alphas[trial % 3];
      const T beta = betas[(trial / 3) % 3];
      // beta == 0: fill C with NaN to prove its old contents are ignored.
      Problem<T> p(tA, tB, M, N, K, pad, rng, beta == T(0));
      check_against_naive(p, alpha, beta);
    }
  }
}

}  // namespace

TEST_CASE_TEMPLATE("gemm matches gemm_naive on random odd shapes, 1 thread", T, float, double) {
  random_shapes<T>(1);
}

TEST_CASE_TEMPLATE("gemm matches gemm_naive on random odd shapes, 2 threads", T, float, double) {
  random_shapes<T>(2);
}

TEST_CASE_TEMPLATE("gemm: every transpose case on shapes past the cache blocks", T, float,
                   double) {
  // K past several KC blocks, M past the MC block, and a case whose packed B
  // (K x N) exceeds the budget so the N loop runs more than one column block.
  struct S {
    int64_t M, N, K;
  };
  const S shapes[] = {{700, 45, 600}, {33, 1000, 2100}, {15, 17, 1030}};
  for (int threads : {1, 2}) {
    ThreadGuard guard(threads);
    CAPTURE(threads);
    std::mt19937 rng(7 + threads);
    for (const S& s : shapes)
      for (int t = 0; t < 4; ++t) {
        Problem<T> p(t & 1, t & 2, s.M, s.N, s.K, 3, rng, false);
        check_against_naive(p, T(1), T(0.5));
      }
  }
}

TEST_CASE_TEMPLATE("gemm: a short last panel of every height, with full and partial columns", T,
                   float, double) {
  // The last panel of a block of rows holds M mod MR rows (MR is 6 or 4); on
  // AVX2 a 4-row kernel computes the short ones (gemm.cpp, macro_kernel_packed).
  // Heights 1-5 under both MR, N a whole number of panels and not, K past a slab.
  std::mt19937 rng(11);
  for (int threads : {1, 2}) {
    ThreadGuard guard(threads);
    CAPTURE(threads);
    for (int64_t M : {61, 62, 63, 64, 65, 392, 394, 398})
      for (int64_t N : {64, 45})
        for (int t = 0; t < 4; ++t) {
          Problem<T> p(t & 1, t & 2, M, N, 400, 2, rng, t == 3);
          check_against_naive(p, T(1.5), t == 3 ? T(0) : T(0.5));
        }
  }
}

TEST_CASE_TEMPLATE("gemm: beta = 0 ignores NaN in C, alpha = 0 and K = 0 only scale C", T, float,
                   double) {
  std::mt19937 rng(3);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (int threads : {1, 2}) {
    ThreadGuard guard(threads);
    // beta = 0 over NaN, a size big enough to take the threaded path.
    Problem<T> p(false, true, 130, 97, 150, 0, rng, true);
    check_against_naive(p, T(1), T(0));
    // alpha = 0: A and B are not read (NaN there must not leak), C = beta*C.
    Problem<T> q(false, false, 9, 11, 5, 2, rng, false);
    for (T& a : q.A) a = nan;
    std::vector<T> C = q.C0;
    gemm<T>(false, false, q.M, q.N, q.K, T(0), q.A.data(), q.lda, q.B.data(), q.ldb, T(2),
            C.data(), q.ldc);
    bool ok = true;
    for (int64_t m = 0; m < q.M; ++m)
      for (int64_t n = 0; n < q.ldc; ++n) {
        const std::size_t i = std::size_t(m * q.ldc + n);
        ok = ok && C[i] == (n < q.N ? T(2) * q.C0[i] : q.C0[i]);
      }
    CHECK(ok);
    // K = 0, beta = 0: C becomes zero even if it held NaN.
    std::vector<T> Cn(std::size_t(4 * 6), nan);
    gemm<T>(true, true, 4, 6, 0, T(1), nullptr, 4, nullptr, 1, T(0), Cn.data(), 6);
    for (T c : Cn) CHECK(c == T(0));
    // M = 0 or N = 0: nothing happens, null C allowed.
    CHECK_NOTHROW(gemm<T>(false, false, 0, 5, 3, T(1), nullptr, 3, nullptr, 5, T(0), nullptr, 5));
  }
}

TEST_CASE_TEMPLATE("gemm is bitwise reproducible run to run at 1 and 2 threads", T, float,
                   double) {
  // Every transpose case; one block of rows (at one thread B is then packed as it
  // is used, Note [GEMM packs B as it goes]), and a second shape with several
  // column blocks (K x N past the packed-B budget) and several blocks of rows.
  std::mt19937 rng(11);
  struct S {
    int64_t M, N, K;
  };
  for (S s : {S{301, 259, 517}, S{40, 1000, 2100}, S{900, 70, 400}})
    for (int t = 0; t < 4; ++t) {
      CAPTURE(s.M);
      CAPTURE(t);
      Problem<T> p(t & 1, t & 2, s.M, s.N, s.K, 1, rng, false);
      std::vector<std::vector<T>> out;
      for (int threads : {1, 2, 2, 1}) {
        ThreadGuard guard(threads);
        std::vector<T> C = p.C0;
        gemm<T>(p.tA, p.tB, p.M, p.N, p.K, T(0.75), p.A.data(), p.lda, p.B.data(), p.ldb, T(-1),
                C.data(), p.ldc);
        out.push_back(C);
      }
      // Run to run at a fixed thread count (the project's guarantee) ...
      CHECK(out[0] == out[3]);
      CHECK(out[1] == out[2]);
      // ... and, for this kernel, also across thread counts (Note [GEMM determinism]).
      CHECK(out[0] == out[1]);
    }
}

TEST_CASE_TEMPLATE("gemm: skinny products (M <= 4, Note [GEMM skinny products]) in every case", T,
                   float, double) {
  // M = 1..4 take the unpacked path, M = 5 the packed one. N crosses the column chunk
  // and the 256-column work item and leaves partial chunks; K leaves vector tails; N*K
  // of 513 x 1000 is big enough for a team.
  struct S {
    int64_t N, K;
  };
  const S shapes[] = {{1, 1}, {7, 15}, {64, 16}, {65, 17}, {300, 33}, {513, 1000}};
  for (int threads : {1, 2}) {
    ThreadGuard guard(threads);
    CAPTURE(threads);
    std::mt19937 rng(99 + threads);
    for (int64_t M = 1; M <= 5; ++M)
      for (const S& s : shapes)
        for (int t = 0; t < 4; ++t) {
          Problem<T> p(t & 1, t & 2, M, s.N, s.K, int(M % 3), rng, M == 2);
          check_against_naive(p, T(1.5), M == 2 ? T(0) : T(-0.5));
        }
  }
  // Bitwise the same at 1 and 2 threads (a team splits the columns, never K).
  std::mt19937 rng(5);
  for (int t = 0; t < 4; ++t) {
    Problem<T> p(t & 1, t & 2, 3, 777, 1001, 2, rng, false);
    std::vector<T> C1 = p.C0, C2 = p.C0;
    {
      ThreadGuard guard(1);
      gemm<T>(p.tA, p.tB, p.M, p.N, p.K, T(1), p.A.data(), p.lda, p.B.data(), p.ldb, T(1),
              C1.data(), p.ldc);
    }
    {
      ThreadGuard guard(2);
      gemm<T>(p.tA, p.tB, p.M, p.N, p.K, T(1), p.A.data(), p.lda, p.B.data(), p.ldb, T(1),
              C2.data(), p.ldc);
    }
    CHECK(C1 == C2);
  }
}

TEST_CASE_TEMPLATE("gemm called from inside a parallel region runs single-threaded and correctly",
                   T, float, double) {
  ThreadGuard guard(2);
  std::mt19937 rng(5);
  Problem<T> p(true, false, 140, 150, 160, 0, rng, false);
  std::vector<T> R = p.C0;
  gemm_naive<T>(p.tA, p.tB, p.M, p.N, p.K, T(1), p.A.data(), p.lda, p.B.data(), p.ldb, T(0),
                R.data(), p.ldc);
  std::vector<std::vector<T>> Cs(2, p.C0);
#pragma omp parallel for num_threads(2) schedule(static)
  for (int t = 0; t < 2; ++t)
    gemm<T>(p.tA, p.tB, p.M, p.N, p.K, T(1), p.A.data(), p.lda, p.B.data(), p.ldb, T(0),
            Cs[t].data(), p.ldc);
  CHECK(Cs[0] == Cs[1]);
  const double tol = 4.0 * double(p.K) * std::numeric_limits<T>::epsilon() * double(p.K);
  double worst = 0;
  for (std::size_t i = 0; i < R.size(); ++i)
    worst = std::max(worst, std::abs(double(Cs[0][i]) - double(R[i])));
  CHECK(worst <= tol);
}

TEST_CASE_TEMPLATE("gemm_batched matches gemm_batched_naive", T, float, double) {
  std::mt19937 rng(17);
  struct S {
    int64_t M, N, K, batch;
    bool bcastB;
  };
  // batch >= threads (parallel over the batch) and batch < threads (inside).
  const S shapes[] = {{13, 31, 7, 5, false}, {65, 64, 33, 3, true}, {129, 100, 70, 1, false},
                      {1, 1, 1, 4, false},   {0, 3, 2, 3, false},   {150, 140, 130, 2, true}};
  for (int threads : {1, 2}) {
    ThreadGuard guard(threads);
    for (const S& s : shapes)
      for (int t = 0; t < 4; ++t) {
        const bool tA = t & 1, tB = t & 2;
        CAPTURE(threads);
        CAPTURE(tA);
        CAPTURE(tB);
        CAPTURE(s.M);
        CAPTURE(s.N);
        CAPTURE(s.K);
        CAPTURE(s.batch);
        const int64_t lda = (tA ? s.M : s.K) + 2, ldb = (tB ? s.K : s.N) + 1, ldc = s.N + 3;
        const int64_t sA = (tA ? s.K : s.M) * lda + 5, sB = s.bcastB ? 0 : (tB ? s.N : s.K) * ldb;
        const int64_t sC = s.M * ldc + 4;
        auto A = random_vec<T>(std::size_t(std::max<int64_t>(1, sA * s.batch)), rng);
        auto B = random_vec<T>(std::size_t(std::max<int64_t>(1, (tB ? s.N : s.K) * ldb +
                                                                     sB * s.batch)),
                               rng);
        auto C = random_vec<T>(std::size_t(std::max<int64_t>(1, sC * s.batch)), rng);
        auto R = C;
        gemm_batched<T>(tA, tB, s.M, s.N, s.K, T(1.5), A.data(), lda, sA, B.data(), ldb, sB,
                        T(-0.5), C.data(), ldc, sC, s.batch);
        gemm_batched_naive<T>(tA, tB, s.M, s.N, s.K, T(1.5), A.data(), lda, sA, B.data(), ldb, sB,
                              T(-0.5), R.data(), ldc, sC, s.batch);
        const double tol = 8.0 * double(s.K + 1) * std::numeric_limits<T>::epsilon() *
                           double(s.K + 1);
        double worst = 0;
        for (std::size_t i = 0; i < C.size(); ++i)
          worst = std::max(worst, std::abs(double(C[i]) - double(R[i])));
        CHECK(worst <= tol);
      }
  }
}

TEST_CASE("gemm_batched is bitwise reproducible on both threading paths") {
  std::mt19937 rng(23);
  const int64_t M = 120, N = 96, K = 200;
  for (int64_t batch : {1, 2, 5}) {
    auto A = random_vec<float>(std::size_t(M * K * batch), rng);
    auto B = random_vec<float>(std::size_t(N * K * batch), rng);
    std::vector<std::vector<float>> out;
    for (int threads : {2, 2, 1}) {
      ThreadGuard guard(threads);
      std::vector<float> C(std::size_t(M * N * batch), 0.f);
      gemm_batched<float>(false, true, M, N, K, 1.f, A.data(), K, M * K, B.data(), K, N * K, 0.f,
                          C.data(), N, M * N, batch);
      out.push_back(C);
    }
    CAPTURE(batch);
    CHECK(out[0] == out[1]);
    CHECK(out[0] == out[2]);
  }
}

TEST_CASE("gemm: bad arguments throw std::invalid_argument naming the kernel") {
  std::vector<float> a(64, 1.f), b(64, 1.f), c(64, 0.f);
  auto throws_naming = [](auto&& f, const std::string& name) {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK(msg.rfind(name + ":", 0) == 0);
      return;
    }
    FAIL("no std::invalid_argument thrown");
  };
  // negative sizes
  throws_naming([&] { gemm<float>(false, false, -1, 2, 2, 1.f, a.data(), 2, b.data(), 2, 0.f, c.data(), 2); },
                "gemm");
  throws_naming([&] { gemm<float>(false, false, 2, 2, -3, 1.f, a.data(), 2, b.data(), 2, 0.f, c.data(), 2); },
                "gemm");
  throws_naming([&] { gemm_naive<float>(false, false, 2, -2, 2, 1.f, a.data(), 2, b.data(), 2, 0.f, c.data(), 2); },
                "gemm_naive");
  // leading dimensions too small, for each storage layout
  throws_naming([&] { gemm<float>(false, false, 4, 3, 5, 1.f, a.data(), 4, b.data(), 3, 0.f, c.data(), 3); },
                "gemm");  // lda < K
  throws_naming([&] { gemm<float>(true, false, 4, 3, 5, 1.f, a.data(), 3, b.data(), 3, 0.f, c.data(), 3); },
                "gemm");  // transA: lda < M
  throws_naming([&] { gemm<float>(false, false, 4, 3, 5, 1.f, a.data(), 5, b.data(), 2, 0.f, c.data(), 3); },
                "gemm");  // ldb < N
  throws_naming([&] { gemm<float>(false, true, 4, 3, 5, 1.f, a.data(), 5, b.data(), 4, 0.f, c.data(), 3); },
                "gemm");  // transB: ldb < K
  throws_naming([&] { gemm<float>(false, false, 4, 3, 5, 1.f, a.data(), 5, b.data(), 3, 0.f, c.data(), 2); },
                "gemm");  // ldc < N
  throws_naming([&] { gemm<double>(false, false, 2, 2, 2, 1.0, nullptr, 2, nullptr, 2, 0.0, nullptr, 2); },
                "gemm");  // null pointers
  // batched: negative batch, negative stride, overlapping C blocks
  throws_naming([&] {
    gemm_batched<float>(false, false, 2, 2, 2, 1.f, a.data(), 2, 4, b.data(), 2, 4, 0.f, c.data(), 2, 4, -1);
  }, "gemm_batched");
  throws_naming([&] {
    gemm_batched<float>(false, false, 2, 2, 2, 1.f, a.data(), 2, -4, b.data(), 2, 4, 0.f, c.data(), 2, 4, 2);
  }, "gemm_batched");
  throws_naming([&] {
    gemm_batched<float>(false, false, 2, 2, 2, 1.f, a.data(), 2, 4, b.data(), 2, 4, 0.f, c.data(), 2, 3, 2);
  }, "gemm_batched");
  throws_naming([&] {
    gemm_batched_naive<float>(false, false, 2, 2, 2, 1.f, a.data(), 1, 4, b.data(), 2, 4, 0.f, c.data(), 2, 4, 2);
  }, "gemm_batched_naive");
  // the message names the sizes
  try {
    gemm<float>(false, false, 4, 3, 5, 1.f, a.data(), 4, b.data(), 3, 0.f, c.data(), 3);
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    CHECK(msg.find("lda") != std::string::npos);
    CHECK(msg.find("K=5") != std::string::npos);
  }
}
