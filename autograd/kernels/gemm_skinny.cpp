// autograd/kernels/gemm_skinny.cpp — gemm's products of at most kSkinnyM rows of C
// (decoding one token: M = 1), which read B where it lies instead of packing it
// (gemm_skinny.hpp; the packed path is gemm.cpp).
#include "autograd/kernels/gemm_skinny.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>

#include <xsimd/xsimd.hpp>

#include "autograd/kernels/gemm_team.hpp"

namespace tg::kernels::gemm_detail {

using std::int64_t;

// ---- skinny products: at most kSkinnyM rows of C ------------------------------------
// Note [GEMM skinny products]
// Decoding one token at a time (tapegrad sample with the KV cache) multiplies one row
// by every weight matrix: M = 1. The packed path would copy all of B (N*K values, in a
// transposing gather for the NT case) to do 2*N*K flops with it: the copy costs more
// than the product. So products of at most kSkinnyM rows read B where it lies and are
// bound by reading it once:
//   transB (B stored (N,K)): C(m,n) is a dot product of two contiguous rows, A(m,:)
//     and B(n,:): vector partial sums over k, then a fixed-order horizontal sum, then
//     the k % W tail in order. Blocks of kSkinnyNB rows of B stay in L1 while each row
//     of A passes over them.
//   otherwise (B stored (K,N)): C(m, j:j+NR) = sum over k, in order, of A(m,k) *
//     B(k, j:j+NR), NR = 4 vectors, one chunk of columns at a time (the chunk stays in
//     L2 while each row of A passes over it); a last, partial chunk column by column
//     with the same FMAs in the same order.
// With transA, op(A) (at most kSkinnyM x K) is first copied to rows. Threads take
// blocks of columns of C from a counter; each element is computed by one thread in an
// order fixed by K alone, so results are identical run to run and across thread counts
// (Note [GEMM determinism]), though not bitwise equal to what the packed path gives for
// the same rows inside a taller product.
namespace {

constexpr int64_t kSkinnyNB = 8, kSkinnyItemCols = 256;

// C(0:M, n0:n1) for transB; a is op(A), row-major with row stride lda_.
template <class T>
void skinny_nt(int64_t M, int64_t K, T alpha, const T* a, int64_t lda_, const T* B, int64_t ldb,
               T beta, T* C, int64_t ldc, int64_t n0, int64_t n1) {
  using V = xsimd::batch<T>;
  constexpr int W = static_cast<int>(V::size);
  constexpr int NB = static_cast<int>(kSkinnyNB);
  const int64_t Kv = K / W * W;
  for (int64_t n = n0; n < n1; n += NB) {
    const int nb = static_cast<int>(std::min<int64_t>(NB, n1 - n));
    const T* b[NB];
    for (int j = 0; j < NB; ++j) b[j] = B + (n + std::min(j, nb - 1)) * ldb;  // extra rows: repeats, not stored
    for (int64_t m = 0; m < M; ++m) {
      const T* am = a + m * lda_;
      V acc[NB];
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) acc[j] = V(T(0));
      for (int64_t k = 0; k < Kv; k += W) {
        const V av = V::load_unaligned(am + k);
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) acc[j] = xsimd::fma(av, V::load_unaligned(b[j] + k), acc[j]);
      }
      for (int j = 0; j < nb; ++j) {
        T sum = xsimd::hadd(acc[j]);
        for (int64_t k = Kv; k < K; ++k) sum = std::fma(am[k], b[j][k], sum);
        T& c = C[m * ldc + n + j];
        c = beta == T(0) ? alpha * sum : std::fma(alpha, sum, beta * c);
      }
    }
  }
}

// C(0:M, n0:n1) for B stored (K,N); a is op(A), row-major with row stride lda_.
template <class T>
void skinny_nn(int64_t M, int64_t K, T alpha, const T* a, int64_t lda_, const T* B, int64_t ldb,
               T beta, T* C, int64_t ldc, int64_t n0, int64_t n1) {
  using V = xsimd::batch<T>;
  constexpr int W = static_cast<int>(V::size);
  constexpr int NV = 4, NR = NV * W;
  const V valpha(alpha), vbeta(beta);
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) {
    for (int64_t m = 0; m < M; ++m) {
      const T* am = a + m * lda_;
      V acc[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[v] = V(T(0));
      for (int64_t k = 0; k < K; ++k) {
        const V av(am[k]);
        const T* bk = B + k * ldb + n;
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[v] = xsimd::fma(av, V::load_unaligned(bk + v * W), acc[v]);
      }
      T* c = C + m * ldc + n;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        if (beta == T(0))
          (valpha * acc[v]).store_unaligned(c + v * W);
        else
          xsimd::fma(valpha, acc[v], vbeta * V::load_unaligned(c + v * W)).store_unaligned(c + v * W);
      }
    }
  }
  for (; n < n1; ++n)  // the last, partial chunk
    for (int64_t m = 0; m < M; ++m) {
      const T* am = a + m * lda_;
      T sum = T(0);
      for (int64_t k = 0; k < K; ++k) sum = std::fma(am[k], B[k * ldb + n], sum);
      T& c = C[m * ldc + n];
      c = beta == T(0) ? alpha * sum : std::fma(alpha, sum, beta * c);
    }
}

}  // namespace

template <class T>
void gemm_skinny(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                 int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc, int nt) {
  // op(A) as rows: A itself, or a copy when transA.
  const T* a = A;
  int64_t lda_ = lda;
  if (transA) {
    T* buf = buffer_A<T>(std::size_t(M * K));
    for (int64_t k = 0; k < K; ++k)
      for (int64_t m = 0; m < M; ++m) buf[m * K + k] = A[k * lda + m];
    a = buf;
    lda_ = K;
  }
  // Reading B once is the cost: a team only when B is big enough to pay for it.
  if (double(N) * double(K) < double(1 << 16)) nt = 1;
  const int64_t items = ceil_div(N, kSkinnyItemCols);  // a multiple of both chunk widths
  std::atomic<int64_t> next{0};
  run_team(nt, [&](int) {
    for (int64_t it; (it = next.fetch_add(1, std::memory_order_relaxed)) < items;) {
      const int64_t n0 = it * kSkinnyItemCols, n1 = std::min(N, n0 + kSkinnyItemCols);
      if (transB)
        skinny_nt(M, K, alpha, a, lda_, B, ldb, beta, C, ldc, n0, n1);
      else
        skinny_nn(M, K, alpha, a, lda_, B, ldb, beta, C, ldc, n0, n1);
    }
  });
}

template void gemm_skinny<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                                 int64_t, float, float*, int64_t, int);
template void gemm_skinny<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                  const double*, int64_t, double, double*, int64_t, int);

}  // namespace tg::kernels::gemm_detail
