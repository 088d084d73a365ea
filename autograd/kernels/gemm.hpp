// autograd/kernels/gemm.hpp — dense matrix multiply (GEMM) on raw pointers.
//
// What it is for: every matmul of the engine (linear layers, attention scores,
// their backwards) ends here. The fast version packs panels of B into
// contiguous, cache-sized blocks, reads cache-sized blocks of A in place, and
// runs an xsimd FMA register-tile micro-kernel over them, threaded with OpenMP
// over output blocks. The four transpose cases are absorbed by B's packing
// and by A's two strides, so matmul's backward never materialises a
// transpose. Each fast entry point has a plain triple-loop twin
// (`*_naive`, same signature) that the tests use as the oracle.
//
// What it is not: a general BLAS. Only row-major storage, float and double,
// no complex types, no triangular/symmetric variants. It knows nothing about
// Tensor or the tape.
//
// Conventions (all matrices row-major):
//   op(A) is (M,K): A is stored (M,K) with leading dimension lda >= K, or,
//                   when transA, stored (K,M) with lda >= M.
//   op(B) is (K,N): B is stored (K,N) with ldb >= N, or, when transB, (N,K)
//                   with ldb >= K.
//   C is (M,N) with ldc >= N.
// Bad arguments (negative sizes, a leading dimension too small, a null pointer
// for a non-empty operand) throw std::invalid_argument naming the kernel.
//
// Threading: tg::num_threads() threads (autograd/kernels/parallel.hpp); each
// block of C is computed by one thread over all of K (a reduction over K is
// never split), so the result is bitwise identical from run to run (and, for
// this implementation, across thread counts too; see Note [GEMM determinism]
// in gemm.cpp). Products under 2*96^3 flops run on one thread. Called from
// inside an OpenMP parallel region, the kernels run single-threaded.
//
// Products of at most 4 rows (one-token decoding) skip packing and read B in
// place (Note [GEMM skinny products] in gemm.cpp); they too are identical across
// thread counts.
#pragma once

#include <cstdint>

namespace tg::kernels {

// C = alpha * op(A) @ op(B) + beta * C.
//   C(m,n) = alpha * sum_k op(A)(m,k) * op(B)(k,n) + beta * C(m,n)
// beta == 0 means C is overwritten: its old contents, even NaN, are ignored.
// alpha == 0 or K == 0 gives C = beta * C without reading A or B.
template <class T>
void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// The plain triple loop twin of gemm (same arguments, same checks); the oracle.
template <class T>
void gemm_naive(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// Strided batch: for b in [0, batch)
//   C + b*strideC = alpha * op(A + b*strideA) @ op(B + b*strideB) + beta * (C + b*strideC)
// A stride of 0 reuses the same operand for every batch entry (broadcast);
// the C blocks of different entries must not overlap (strideC large enough).
// Parallel over the batch (whole GEMMs per thread) when batch >= threads and
// the entries split evenly enough (batch a multiple of the thread count, or
// at least 4 per thread, or small entries); otherwise threads work inside
// each GEMM in turn.
template <class T>
void gemm_batched(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha,
                  const T* A, int64_t lda, int64_t strideA, const T* B, int64_t ldb,
                  int64_t strideB, T beta, T* C, int64_t ldc, int64_t strideC, int64_t batch);

// The plain loop twin of gemm_batched (a loop over gemm_naive).
template <class T>
void gemm_batched_naive(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha,
                        const T* A, int64_t lda, int64_t strideA, const T* B, int64_t ldb,
                        int64_t strideB, T beta, T* C, int64_t ldc, int64_t strideC,
                        int64_t batch);

}  // namespace tg::kernels
