// autograd/kernels/gemm_naive.cpp — the naive twins of the GEMM kernels (gemm.hpp): the
// triple loop over C(m,n) = alpha * sum_k op(A)(m,k) op(B)(k,n) + beta * C(m,n), one dot
// product at a time in k order. The readable definition, and the oracle the packed kernel
// (gemm.cpp) is tested against; ReferenceKernels (dispatch.hpp) runs the engine on it.
#include <cstdint>

#include "autograd/kernels/gemm.hpp"
#include "autograd/kernels/gemm_bf16.hpp"
#include "autograd/kernels/gemm_checks.hpp"

namespace tg::kernels {

using std::int64_t;
using namespace gemm_detail;

template <class T>
void gemm_naive(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>)
    if (gemm_bf16_enabled()) return gemm_bf16_naive(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  check_args("gemm_naive", transA, transB, M, N, K, A, lda, B, ldb, C, ldc);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      T sum = T(0);
      for (int64_t k = 0; k < K; ++k) {
        const T a = transA ? A[k * lda + m] : A[m * lda + k];
        const T b = transB ? B[n * ldb + k] : B[k * ldb + n];
        sum += a * b;
      }
      T& c = C[m * ldc + n];
      c = beta == T(0) ? alpha * sum : alpha * sum + beta * c;
    }
  }
}

template <class T>
void gemm_batched_naive(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha,
                        const T* A, int64_t lda, int64_t strideA, const T* B, int64_t ldb,
                        int64_t strideB, T beta, T* C, int64_t ldc, int64_t strideC,
                        int64_t batch) {
  check_batched("gemm_batched_naive", transA, transB, M, N, K, A, lda, strideA, B, ldb, strideB, C,
                ldc, strideC, batch);
  for (int64_t b = 0; b < batch; ++b)
    gemm_naive(transA, transB, M, N, K, alpha, A + b * strideA, lda, B + b * strideB, ldb, beta,
               C + b * strideC, ldc);
}

#define TG_GEMM_NAIVE_INSTANTIATE(T)                                                             \
  template void gemm_naive<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t,       \
                              const T*, int64_t, T, T*, int64_t);                                \
  template void gemm_batched_naive<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*,        \
                                      int64_t, int64_t, const T*, int64_t, int64_t, T, T*,       \
                                      int64_t, int64_t, int64_t);

TG_GEMM_NAIVE_INSTANTIATE(float)
TG_GEMM_NAIVE_INSTANTIATE(double)

#undef TG_GEMM_NAIVE_INSTANTIATE

}  // namespace tg::kernels
