// autograd/kernels/embedding.hpp — embedding lookup (gather) and its backward (scatter-add).
//
// What it is for: turning token ids into rows of the embedding matrix W (V,C), and
// adding the rows of the upstream gradient back into dW. The fast scatter-add is
// threaded without atomics and is deterministic: every element of dW receives its
// contributions in the order of the tokens, whatever the thread count, so the result is
// bitwise the same as the naive twin's (see Note [Embedding scatter-add]).
//
// What it is not: an op (no Tensor, no tape), and not the tied lm_head (that is a GEMM).
#pragma once

#include <cstdint>

namespace tg::kernels {

// Forward: y[i, :] = W[ids[i], :] for i < N. ids is (N), W is (V,C), y is (N,C).
// Every id must lie in [0, V): otherwise throws std::invalid_argument naming the kernel,
// the position i and the id, before anything is written.
template <class T>
void embedding_forward(int64_t N, int64_t V, int64_t C, const int64_t* ids, const T* W, T* y);
template <class T>
void embedding_forward_naive(int64_t N, int64_t V, int64_t C, const int64_t* ids, const T* W,
                             T* y);

// Backward: dW[ids[i], :] += dy[i, :] for i = 0..N-1 in order. dy is (N,C), dW is (V,C).
// ACCUMULATES into dW. Ids are checked as in the forward.
//
// Note [Embedding scatter-add]
// Two tokens with the same id write the same row of dW, so rows of dy cannot be split
// between threads. Instead each thread owns a slice of dW: a block of columns when C is
// wide (each thread walks all N tokens over its columns), or else a block of vocabulary
// rows (each thread walks all N tokens and takes those whose id it owns). Either way
// each dW element is updated by one thread, in token order: no atomics, no races, and
// the same rounding as the serial loop.
template <class T>
void embedding_backward(int64_t N, int64_t V, int64_t C, const int64_t* ids, const T* dy, T* dW);
template <class T>
void embedding_backward_naive(int64_t N, int64_t V, int64_t C, const int64_t* ids, const T* dy,
                              T* dW);

}  // namespace tg::kernels
