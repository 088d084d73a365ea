// autograd/kernels/norm.hpp — fused RMSNorm and LayerNorm kernels, forward and backward.
//
// What it is for: the normalisation layers of the transformer (block norms, the final
// norm, QK-norm) on raw row-major buffers. Each normalises the last axis: x is viewed as
// (rows, C), one row per token (or per token and head for QK-norm). The fast kernels use
// xsimd vectors along C and OpenMP threads over rows; each has a `_naive` twin with the
// same signature, a plain scalar loop, kept beside it as its test oracle.
//
// What it is not: an op. These functions know nothing of Tensor or the tape; the ops in
// autograd/ call them, check shapes, and own the saved buffers (mean, rstd).
//
// Conventions shared by every function here:
// - x, y, dy, dx are (rows, C), contiguous; w, b, dw, db are (C); mean, rstd are (rows).
// - Backward ACCUMULATES: dx += ..., dw += ..., db += ... (the tape accumulates
//   gradients). Zero the buffers first if you want plain gradients.
// - Every optional pointer may be nullptr: a nullptr weight means "no weight" (w = 1),
//   a nullptr bias means "no bias" (b = 0), a nullptr gradient means "not wanted".
// - y may alias x (in place); no other buffers may overlap.
// - Bad arguments throw std::invalid_argument naming the kernel and the sizes.
// - Deterministic: bitwise identical results from run to run at a fixed thread count
//   (see Note [Deterministic threading] in parallel.hpp). dw and db are reductions over
//   rows: each thread sums its own block of rows into its own partial buffer, and the
//   partials are added in thread order.
#pragma once

#include <cstdint>

namespace tg::kernels {

// ---- RMSNorm -------------------------------------------------------------------------
// Forward, per row (Hugging Face Qwen3 / LLaMA order of operations):
//   rstd = 1 / sqrt(mean_j(x_j^2) + eps)
//   y_j  = w_j * (x_j * rstd)            (w_j = 1 when w is nullptr)
// Saves rstd (rows) for the backward; rstd may be nullptr when no backward follows.
template <class T>
void rmsnorm_forward(int64_t rows, int64_t C, const T* x, const T* w, T eps, T* y, T* rstd);
template <class T>
void rmsnorm_forward_naive(int64_t rows, int64_t C, const T* x, const T* w, T eps, T* y,
                           T* rstd);

// Backward, per row, with g_j = w_j * dy_j and r = rstd:
//   dx_j += r * g_j - (r^3 / C) * x_j * sum_k(g_k * x_k)
//   dw_j += sum_rows dy_j * x_j * r
// dx and dw may be nullptr; dw must be nullptr when w is.
template <class T>
void rmsnorm_backward(int64_t rows, int64_t C, const T* x, const T* w, const T* rstd,
                      const T* dy, T* dx, T* dw);
template <class T>
void rmsnorm_backward_naive(int64_t rows, int64_t C, const T* x, const T* w, const T* rstd,
                            const T* dy, T* dx, T* dw);

// ---- LayerNorm -----------------------------------------------------------------------
// Forward, per row (two passes, so the variance never cancels catastrophically):
//   mean = mean_j(x_j),  var = mean_j((x_j - mean)^2)   (biased, as PyTorch)
//   rstd = 1 / sqrt(var + eps),  xhat_j = (x_j - mean) * rstd
//   y_j  = xhat_j * w_j + b_j
// Saves mean and rstd (rows); either may be nullptr when no backward follows.
template <class T>
void layernorm_forward(int64_t rows, int64_t C, const T* x, const T* w, const T* b, T eps, T* y,
                       T* mean, T* rstd);
template <class T>
void layernorm_forward_naive(int64_t rows, int64_t C, const T* x, const T* w, const T* b, T eps,
                             T* y, T* mean, T* rstd);

// Backward, per row, with g_j = w_j * dy_j, r = rstd, xhat_j = (x_j - mean) * r:
//   dx_j += r * (g_j - mean_k(g_k) - xhat_j * mean_k(g_k * xhat_k))
//   dw_j += sum_rows dy_j * xhat_j,   db_j += sum_rows dy_j
// dx, dw, db may be nullptr; dw must be nullptr when w is. (b is not needed here: the
// bias does not change any gradient but its own.)
template <class T>
void layernorm_backward(int64_t rows, int64_t C, const T* x, const T* w, const T* mean,
                        const T* rstd, const T* dy, T* dx, T* dw, T* db);
template <class T>
void layernorm_backward_naive(int64_t rows, int64_t C, const T* x, const T* w, const T* mean,
                              const T* rstd, const T* dy, T* dx, T* dw, T* db);

}  // namespace tg::kernels
