// tests/test_kernels_gemm_bf16.cpp — the bf16 GEMM mode (autograd/kernels/gemm_bf16.hpp).
//
// What it is for: round_bf16 on known values (ties to even, NaN, subnormals, overflow);
// gemm_bf16 against its naive twin in every transpose case, on odd shapes, edges and
// shapes past the k-slab and the packed-B budget, at 1 and 2 threads (and bitwise equal
// across them); that the mode really changes float gemm (and only float), that
// ReferenceKernels reaches the twin, and the error without AVX512_BF16
// (TAPEGRAD_DISABLE_BF16=1). Cases needing the instructions are skipped on CPUs without them.
//
// Tolerance against the twin: both multiply the same bf16 values (exact products) and
// sum in float in different orders: |C - C_ref| <= 4 K eps_f32 * (|alpha| sum_k |a||b|
// + |beta C0|). Against float32 GEMM the operand rounding (2^-8 relative each) dominates.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "autograd/kernels/dispatch.hpp"
#include "autograd/kernels/gemm.hpp"
#include "autograd/kernels/gemm_bf16.hpp"
#include "autograd/kernels/parallel.hpp"

namespace k = tg::kernels;

namespace {

struct ThreadGuard {
  explicit ThreadGuard(int n) { tg::set_num_threads(n); }
  ~ThreadGuard() { tg::set_num_threads(0); }
};

struct Case {
  bool tA, tB;
  int64_t M, N, K, pad;
};

struct Data {
  Case c;
  int64_t lda, ldb, ldc;
  std::vector<float> A, B, C0;
  Data(const Case& c_, std::mt19937& rng) : c(c_) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    lda = (c.tA ? c.M : c.K) + c.pad;
    ldb = (c.tB ? c.K : c.N) + c.pad;
    ldc = c.N + c.pad;
    A.resize(std::size_t((c.tA ? c.K : c.M) * lda));
    B.resize(std::size_t((c.tB ? c.N : c.K) * ldb));
    C0.resize(std::size_t(c.M * ldc));
    for (auto* v : {&A, &B, &C0})
      for (float& x : *v) x = u(rng);
  }
  float a(int64_t m, int64_t kk) const { return c.tA ? A[kk * lda + m] : A[m * lda + kk]; }
  float b(int64_t kk, int64_t n) const { return c.tB ? B[n * ldb + kk] : B[kk * ldb + n]; }
};

// max over elements of |X - Y| / bound, bound = 4 K eps (|alpha| sum|ab| + |beta C0|) + tiny.
double worst_ratio(const Data& d, const std::vector<float>& X, const std::vector<float>& Y, float alpha,
                   float beta, double rel) {
  double worst = 0;
  for (int64_t m = 0; m < d.c.M; ++m)
    for (int64_t n = 0; n < d.c.N; ++n) {
      double s = 0;
      for (int64_t kk = 0; kk < d.c.K; ++kk) s += std::abs(double(d.a(m, kk)) * d.b(kk, n));
      const double bound = rel * (std::abs(alpha) * s + std::abs(beta * d.C0[m * d.ldc + n])) + 1e-30;
      worst = std::max(worst, std::abs(double(X[m * d.ldc + n]) - Y[m * d.ldc + n]) / bound);
    }
  return worst;
}

const Case kCases[] = {
    {false, false, 1, 1, 1, 0},      {false, false, 7, 5, 3, 1},     {true, false, 13, 70, 31, 2},
    {false, true, 6, 64, 32, 0},     {true, true, 17, 129, 33, 3},   {false, false, 3, 200, 77, 0},
    {false, true, 250, 65, 1029, 1}, {true, false, 97, 300, 600, 0}, {false, false, 64, 4100, 600, 0},
    {true, true, 241, 17, 513, 5},
};

}  // namespace

TEST_CASE("round_bf16: nearest even on the top 16 bits, NaN kept, subnormals to zero, overflow to inf") {
  CHECK(k::round_bf16(1.0f) == 1.0f);
  CHECK(k::round_bf16(1.0f + 0x1p-8f) == 1.0f);                   // tie, even is 1.0
  CHECK(k::round_bf16(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f);     // tie, even is up
  CHECK(k::round_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 1.0f + 0x1p-7f);  // above the tie
  CHECK(k::round_bf16(-3.14159f) == -3.140625f);
  CHECK(std::isnan(k::round_bf16(std::numeric_limits<float>::quiet_NaN())));
  CHECK(k::round_bf16(1e-40f) == 0.0f);
  CHECK(std::signbit(k::round_bf16(-1e-40f)));
  CHECK(k::round_bf16(std::numeric_limits<float>::max()) == std::numeric_limits<float>::infinity());
  CHECK(k::round_bf16(std::numeric_limits<float>::infinity()) == std::numeric_limits<float>::infinity());
}

TEST_CASE("gemm_bf16 matches its naive twin in every case, 1 and 2 threads, bitwise across threads") {
  if (!k::cpu_has_avx512_bf16()) {
    MESSAGE("skipped: this CPU has no AVX512_BF16");
    return;
  }
  std::mt19937 rng(7);
  for (const Case& c : kCases) {
    CAPTURE(c.tA);
    CAPTURE(c.tB);
    CAPTURE(c.M);
    CAPTURE(c.N);
    CAPTURE(c.K);
    Data d(c, rng);
    for (auto [alpha, beta] : {std::pair{1.f, 0.f}, std::pair{-0.5f, 1.25f}}) {
      std::vector<float> ref = d.C0, one = d.C0, two = d.C0, f32 = d.C0;
      k::gemm_bf16_naive(c.tA, c.tB, c.M, c.N, c.K, alpha, d.A.data(), d.lda, d.B.data(), d.ldb, beta,
                         ref.data(), d.ldc);
      {
        ThreadGuard g(1);
        k::gemm_bf16(c.tA, c.tB, c.M, c.N, c.K, alpha, d.A.data(), d.lda, d.B.data(), d.ldb, beta, one.data(),
                     d.ldc);
      }
      {
        ThreadGuard g(2);
        k::gemm_bf16(c.tA, c.tB, c.M, c.N, c.K, alpha, d.A.data(), d.lda, d.B.data(), d.ldb, beta, two.data(),
                     d.ldc);
      }
      k::gemm<float>(c.tA, c.tB, c.M, c.N, c.K, alpha, d.A.data(), d.lda, d.B.data(), d.ldb, beta, f32.data(),
                     d.ldc);
      const double eps = std::numeric_limits<float>::epsilon();
      CHECK(worst_ratio(d, one, ref, alpha, beta, 4 * double(c.K) * eps) <= 1.0);
      CHECK(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)) == 0);
      // Against float32: within the operands' rounding (2 * 2^-8 relative, plus the sum) ...
      CHECK(worst_ratio(d, one, f32, alpha, beta, 2 * 0x1p-8 + 8 * double(c.K) * eps) <= 1.0);
      // ... and really rounded (a K >= 3 product of random floats is not exact in bf16).
      if (c.K >= 3) CHECK(std::memcmp(one.data(), f32.data(), one.size() * sizeof(float)) != 0);
      // Padding of C untouched.
      for (int64_t m = 0; m < c.M; ++m)
        for (int64_t n = c.N; n < d.ldc; ++n) CHECK(one[m * d.ldc + n] == d.C0[m * d.ldc + n]);
    }
  }
}

TEST_CASE("gemm_bf16: beta = 0 ignores NaN in C - alpha = 0 and K = 0 only scale C") {
  if (!k::cpu_has_avx512_bf16()) return;
  std::mt19937 rng(3);
  Data d({false, true, 9, 40, 21, 0}, rng);
  std::vector<float> C(d.C0.size(), std::numeric_limits<float>::quiet_NaN()), ref = C;
  k::gemm_bf16(false, true, 9, 40, 21, 1.f, d.A.data(), d.lda, d.B.data(), d.ldb, 0.f, C.data(), d.ldc);
  k::gemm_bf16_naive(false, true, 9, 40, 21, 1.f, d.A.data(), d.lda, d.B.data(), d.ldb, 0.f, ref.data(), d.ldc);
  for (float v : C) CHECK(std::isfinite(v));
  std::vector<float> S = d.C0;
  k::gemm_bf16(false, true, 9, 40, 0, 1.f, d.A.data(), d.lda, d.B.data(), d.ldb, 2.f, S.data(), d.ldc);
  for (std::size_t i = 0; i < S.size(); ++i) CHECK(S[i] == 2.f * d.C0[i]);
}

TEST_CASE("bf16 mode: float gemm and gemm_batched use it, double does not, ReferenceKernels reaches the twin") {
  if (!k::cpu_has_avx512_bf16()) return;
  std::mt19937 rng(11);
  Data d({false, true, 50, 70, 90, 0}, rng);
  std::vector<float> want(d.C0.size()), got(d.C0.size()), naive(d.C0.size()), got_naive(d.C0.size());
  k::gemm_bf16(false, true, 50, 70, 90, 1.f, d.A.data(), d.lda, d.B.data(), d.ldb, 0.f, want.data(), d.ldc);
  k::gemm_bf16_naive(false, true, 50, 70, 90, 1.f, d.A.data(), d.lda, d.B.data(), d.ldb, 0.f, naive.data(), d.ldc);
  std::vector<float> batched(2 * d.C0.size());
  {
    k::GemmBf16Scope on;
    CHECK(k::gemm_bf16_enabled());
    k::gemm<float>(false, true, 50, 70, 90, 1.f, d.A.data(), d.lda, d.B.data(), d.ldb, 0.f, got.data(), d.ldc);
    k::gemm_batched<float>(false, true, 50, 70, 90, 1.f, d.A.data(), d.lda, 0, d.B.data(), d.ldb, 0, 0.f,
                           batched.data(), d.ldc, int64_t(d.C0.size()), 2);
    k::gemm_naive<float>(false, true, 50, 70, 90, 1.f, d.A.data(), d.lda, d.B.data(), d.ldb, 0.f,
                         got_naive.data(), d.ldc);
    // double is untouched: equal to the double naive loop to double round-off.
    std::vector<double> Ad(d.A.begin(), d.A.end()), Bd(d.B.begin(), d.B.end()), Cd(d.C0.size()), Cn(d.C0.size());
    k::gemm<double>(false, true, 50, 70, 90, 1.0, Ad.data(), d.lda, Bd.data(), d.ldb, 0.0, Cd.data(), d.ldc);
    k::gemm_naive<double>(false, true, 50, 70, 90, 1.0, Ad.data(), d.lda, Bd.data(), d.ldb, 0.0, Cn.data(), d.ldc);
    for (std::size_t i = 0; i < Cd.size(); ++i) CHECK(std::abs(Cd[i] - Cn[i]) < 1e-12);
  }
  CHECK_FALSE(k::gemm_bf16_enabled());
  CHECK(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(batched.data(), want.data(), want.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(batched.data() + want.size(), want.data(), want.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(got_naive.data(), naive.data(), naive.size() * sizeof(float)) == 0);
}

TEST_CASE("bf16 mode without AVX512_BF16 is an error naming the instruction set") {
  setenv("TAPEGRAD_DISABLE_BF16", "1", 1);
  CHECK_FALSE(k::cpu_has_avx512_bf16());
  CHECK_THROWS_WITH_AS(k::set_gemm_bf16(true), doctest::Contains("AVX512_BF16"), std::runtime_error);
  CHECK_FALSE(k::gemm_bf16_enabled());
  float a = 1, b = 1, c = 0;
  CHECK_THROWS_WITH_AS(k::gemm_bf16(false, false, 1, 1, 1, 1.f, &a, 1, &b, 1, 0.f, &c, 1),
                       doctest::Contains("gemm_bf16"), std::runtime_error);
  unsetenv("TAPEGRAD_DISABLE_BF16");
}

TEST_CASE("emulated bf16 mode: on any CPU, float gemm multiplies the rounded operands (the twin's arithmetic)") {
  // No instruction set needed: the check below runs with AVX512_BF16 reported absent.
  setenv("TAPEGRAD_DISABLE_BF16", "1", 1);
  std::mt19937 rng(19);
  for (const Case& c : kCases) {
    CAPTURE(c.tA);
    CAPTURE(c.tB);
    CAPTURE(c.M);
    CAPTURE(c.N);
    CAPTURE(c.K);
    Data d(c, rng);
    for (auto [alpha, beta] : {std::pair{1.f, 0.f}, std::pair{-0.5f, 1.25f}}) {
      std::vector<float> ref = d.C0, got = d.C0, f32 = d.C0, batched(2 * d.C0.size());
      k::gemm_bf16_naive(c.tA, c.tB, c.M, c.N, c.K, alpha, d.A.data(), d.lda, d.B.data(), d.ldb, beta,
                         ref.data(), d.ldc);
      k::gemm<float>(c.tA, c.tB, c.M, c.N, c.K, alpha, d.A.data(), d.lda, d.B.data(), d.ldb, beta, f32.data(),
                     d.ldc);
      {
        k::GemmBf16EmulatedScope emulated;
        CHECK(k::gemm_bf16_enabled());
        CHECK(k::gemm_bf16_emulated());
        k::gemm<float>(c.tA, c.tB, c.M, c.N, c.K, alpha, d.A.data(), d.lda, d.B.data(), d.ldb, beta, got.data(),
                       d.ldc);
        std::copy(d.C0.begin(), d.C0.end(), batched.begin());
        std::copy(d.C0.begin(), d.C0.end(), batched.begin() + std::ptrdiff_t(d.C0.size()));
        k::gemm_batched<float>(c.tA, c.tB, c.M, c.N, c.K, alpha, d.A.data(), d.lda, 0, d.B.data(), d.ldb, 0, beta,
                               batched.data(), d.ldc, int64_t(d.C0.size()), 2);
      }
      CHECK_FALSE(k::gemm_bf16_enabled());
      const double eps = std::numeric_limits<float>::epsilon();
      CHECK(worst_ratio(d, got, ref, alpha, beta, 4 * double(c.K) * eps) <= 1.0);
      CHECK(std::memcmp(batched.data(), got.data(), got.size() * sizeof(float)) == 0);
      CHECK(std::memcmp(batched.data() + got.size(), got.data(), got.size() * sizeof(float)) == 0);
      if (c.K >= 3) CHECK(std::memcmp(got.data(), f32.data(), got.size() * sizeof(float)) != 0);
      for (int64_t m = 0; m < c.M; ++m)
        for (int64_t n = c.N; n < d.ldc; ++n) CHECK(got[m * d.ldc + n] == d.C0[m * d.ldc + n]);
    }
  }
  // Exactly the float product of the rounded operands: 1 + 2^-10 rounds to 1 in bf16.
  const float a = 1.f + 0x1p-10f, b = 3.f;
  float c = 0;
  {
    k::GemmBf16EmulatedScope emulated;
    k::gemm<float>(false, false, 1, 1, 1, 1.f, &a, 1, &b, 1, 0.f, &c, 1);
  }
  CHECK(c == 3.f);
  unsetenv("TAPEGRAD_DISABLE_BF16");
}
