// autograd/kernels/gemm_checks.hpp — the argument checks of the GEMM entry points and their
// naive twins (gemm.cpp, gemm_naive.cpp): sizes, leading dimensions, strides, null
// pointers; an error names the entry point and every size. Internal to the kernels.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace tg::kernels::gemm_detail {

using std::int64_t;

// ---- argument checks ------------------------------------------------------------
inline std::string sizes_str(bool transA, bool transB, int64_t M, int64_t N, int64_t K, int64_t lda,
                      int64_t ldb, int64_t ldc) {
  return "(transA=" + std::to_string(transA) + ", transB=" + std::to_string(transB) +
         ", M=" + std::to_string(M) + ", N=" + std::to_string(N) + ", K=" + std::to_string(K) +
         ", lda=" + std::to_string(lda) + ", ldb=" + std::to_string(ldb) +
         ", ldc=" + std::to_string(ldc) + ")";
}

template <class T>
inline void check_args(const char* name, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
                const T* A, int64_t lda, const T* B, int64_t ldb, const T* C, int64_t ldc) {
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument(std::string(name) + ": " + why + " " +
                                sizes_str(transA, transB, M, N, K, lda, ldb, ldc));
  };
  if (M < 0 || N < 0 || K < 0) fail("negative size");
  const int64_t a_cols = transA ? M : K, b_cols = transB ? K : N;
  if (lda < std::max<int64_t>(1, a_cols)) fail("lda too small");
  if (ldb < std::max<int64_t>(1, b_cols)) fail("ldb too small");
  if (ldc < std::max<int64_t>(1, N)) fail("ldc too small");
  if (M > 0 && N > 0 && !C) fail("C is null");
  if (M > 0 && N > 0 && K > 0 && (!A || !B)) fail("A or B is null");
}

template <class T>
inline void check_batched(const char* name, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
                   const T* A, int64_t lda, int64_t strideA, const T* B, int64_t ldb,
                   int64_t strideB, const T* C, int64_t ldc, int64_t strideC, int64_t batch) {
  check_args(name, transA, transB, M, N, K, A, lda, B, ldb, C, ldc);
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument(std::string(name) + ": " + why + " " +
                                sizes_str(transA, transB, M, N, K, lda, ldb, ldc) +
                                " strideA=" + std::to_string(strideA) +
                                " strideB=" + std::to_string(strideB) +
                                " strideC=" + std::to_string(strideC) +
                                " batch=" + std::to_string(batch));
  };
  if (batch < 0) fail("negative batch");
  if (strideA < 0 || strideB < 0) fail("negative stride");
  // The C blocks must not overlap (each is written by one thread).
  if (batch > 1 && M > 0 && N > 0 && strideC < (M - 1) * ldc + N) fail("strideC too small");
}

}  // namespace tg::kernels::gemm_detail
