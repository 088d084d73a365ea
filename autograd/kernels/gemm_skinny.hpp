// autograd/kernels/gemm_skinny.hpp — products of at most kSkinnyM rows of C, for
// gemm.cpp's driver (private to it; not installed for users). Note [GEMM skinny
// products] in gemm_skinny.cpp.
#pragma once

#include <cstdint>

namespace tg::kernels::gemm_detail {

inline constexpr std::int64_t kSkinnyM = 4;

// C = alpha * op(A) @ op(B) + beta * C for M <= kSkinnyM, on nt threads (gemm's arguments).
template <class T>
void gemm_skinny(bool transA, bool transB, std::int64_t M, std::int64_t N, std::int64_t K, T alpha, const T* A,
                 std::int64_t lda, const T* B, std::int64_t ldb, T beta, T* C, std::int64_t ldc, int nt);

}  // namespace tg::kernels::gemm_detail
