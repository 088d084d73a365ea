// autograd/kernels/swiglu.hpp — the SwiGLU gate of the feed-forward block, fused.
//
// What it is for: y = silu(g) * u, the product of the gate projection g passed through
// SiLU and the up projection u (LLaMA / Qwen3 MLP: down(silu(gate(x)) * up(x))), and its
// backward, in one pass each, so the MLP never stores silu(g) separately. The fast
// kernels use xsimd (vector exp) and OpenMP over blocks; each has a `_naive` twin, a
// plain scalar loop with std::exp.
//
// What it is not: the projections (GEMM) or an op (no Tensor, no tape).
#pragma once

#include <cstdint>

namespace tg::kernels {

// Forward over n elements, g, u, y each (n):
//   s = sigmoid(g) = 1 / (1 + exp(-g)),  silu(g) = g * s,  y = silu(g) * u
// y may alias g or u.
template <class T>
void swiglu_forward(int64_t n, const T* g, const T* u, T* y);
template <class T>
void swiglu_forward_naive(int64_t n, const T* g, const T* u, T* y);

// Backward, ACCUMULATING (the tape accumulates gradients):
//   silu'(g) = s * (1 + g * (1 - s))
//   dg += dy * u * silu'(g),   du += dy * silu(g)
// dg or du may be nullptr (not wanted); they must not overlap g, u, dy or each other.
template <class T>
void swiglu_backward(int64_t n, const T* g, const T* u, const T* dy, T* dg, T* du);
template <class T>
void swiglu_backward_naive(int64_t n, const T* g, const T* u, const T* dy, T* dg, T* du);

}  // namespace tg::kernels
