// autograd/kernels/softmax.hpp — fused softmax, log-softmax and cross-entropy.
//
// What it is for: the row-wise kernels under the softmax, log_softmax and
// cross_entropy ops. Each row is handled in a few passes over memory (max,
// exp-sum, write) with xsimd vectors; rows are spread over OpenMP threads
// (schedule(static), each row done whole by one thread, so results do not
// depend on the thread count; a single long row therefore runs on one thread). Each fast kernel has a `_naive` twin with the same
// signature, a plain scalar loop over std:: math, used as its test oracle.
//
// What it is not: softmax over an axis other than the last (the op layer
// moves that axis last), attention's online softmax (attention.hpp), or the
// reduction of the per-row losses to a mean (the op layer does that, with the
// count returned by cross_entropy_forward).
//
// All arrays are contiguous and row-major: `x is (rows, n)`. Backward kernels
// ACCUMULATE into their gradient outputs. Row sums accumulate in double
// (Note [Accumulation in double] in elementwise.hpp).
//
// Note [Fully masked rows]
// A row whose entries are all -inf (a fully masked row) has no distribution.
// We define:
//   softmax of an all -inf row      = all zeros,  and its backward adds zeros;
//   log_softmax of an all -inf row  = all -inf,   and its backward adds zeros.
// Rows with some -inf entries are ordinary: those entries get probability 0
// (log-probability -inf). A NaN anywhere in a row makes the whole row NaN, and
// a +inf entry makes the row NaN (inf - inf), as in PyTorch.
#pragma once

#include <cstdint>

namespace tg::kernels {

// PyTorch's default ignore_index for cross-entropy.
inline constexpr int64_t kIgnoreIndex = -100;

// y[r, j] = exp(x[r, j] - m_r) / Σ_k exp(x[r, k] - m_r),  m_r = max_k x[r, k].
// x, y are (rows, n); y may alias x.
template <class T>
void softmax_forward(int64_t rows, int64_t n, const T* x, T* y);
template <class T>
void softmax_forward_naive(int64_t rows, int64_t n, const T* x, T* y);

// dx[r, j] += y[r, j] (dy[r, j] - Σ_k dy[r, k] y[r, k]),  y the softmax output.
// y, dy, dx are (rows, n).
template <class T>
void softmax_backward(int64_t rows, int64_t n, const T* y, const T* dy, T* dx);
template <class T>
void softmax_backward_naive(int64_t rows, int64_t n, const T* y, const T* dy, T* dx);

// y[r, j] = (x[r, j] - m_r) - log Σ_k exp(x[r, k] - m_r).  x, y are (rows, n);
// y may alias x.
template <class T>
void log_softmax_forward(int64_t rows, int64_t n, const T* x, T* y);
template <class T>
void log_softmax_forward_naive(int64_t rows, int64_t n, const T* x, T* y);

// dx[r, j] += dy[r, j] - exp(y[r, j]) Σ_k dy[r, k],  y the log_softmax output.
// y, dy, dx are (rows, n).
template <class T>
void log_softmax_backward(int64_t rows, int64_t n, const T* y, const T* dy, T* dx);
template <class T>
void log_softmax_backward_naive(int64_t rows, int64_t n, const T* y, const T* dy, T* dx);

// Fused log-softmax + negative log-likelihood, one row per token.
//   logits is (N, V), targets is (N), loss_per_row and lse are (N).
//   For a row i with t = targets[i] != ignore_index:
//     lse[i]          = log Σ_j exp(logits[i, j])      (computed as m + log Σ exp(x - m))
//     loss_per_row[i] = lse[i] - logits[i, t]
//   For an ignored row: loss_per_row[i] = 0 and lse[i] = 0 (not computed).
// Returns the number of rows that are not ignored (the divisor of a mean).
// A target outside [0, V) that is not ignore_index throws
// std::invalid_argument naming cross_entropy, the row and the value; nothing
// is written then. Logits as large as 1e4 (or -1e4) are fine: everything is
// taken relative to the row max. A kept row whose logits are all -inf has no
// distribution and gets a NaN loss.
template <class T>
int64_t cross_entropy_forward(int64_t N, int64_t V, const T* logits, const int64_t* targets,
                              int64_t ignore_index, T* loss_per_row, T* lse);
template <class T>
int64_t cross_entropy_forward_naive(int64_t N, int64_t V, const T* logits, const int64_t* targets,
                                    int64_t ignore_index, T* loss_per_row, T* lse);

// dlogits[i, j] += dloss_per_row[i] * (softmax(logits[i])[j] - [j == targets[i]])
// for every row that is not ignored; ignored rows get nothing added.
// logits, dlogits are (N, V); targets, lse, dloss_per_row are (N); lse is the
// one cross_entropy_forward saved. Bad targets throw as in the forward.
//
// Note [Renormalised cross-entropy backward]
// softmax = exp(x - lse) only if lse is exact; stored in float, an lse of
// 1e4 is off by up to 5e-4, and so would be every probability (and p - 1 at
// the target, which is what training feeds on, by far more in relative
// terms). The fast kernel therefore computes e = exp(x - lse) (lse only keeps
// the exponent in range) and uses p = e / Σ e, in which the error of lse
// cancels; it costs one cheap extra pass over a row held in a per-thread
// buffer. The naive twin computes the softmax from scratch.
template <class T>
void cross_entropy_backward(int64_t N, int64_t V, const T* logits, const int64_t* targets,
                            int64_t ignore_index, const T* lse, const T* dloss_per_row,
                            T* dlogits);
template <class T>
void cross_entropy_backward_naive(int64_t N, int64_t V, const T* logits, const int64_t* targets,
                                  int64_t ignore_index, const T* lse, const T* dloss_per_row,
                                  T* dlogits);

}  // namespace tg::kernels
