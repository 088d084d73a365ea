// autograd/kernels/swiglu.hpp — the SwiGLU gate of the feed-forward block, fused.
//
// What it is for: y = silu(g) * u, the product of the gate projection g passed through
// SiLU and the up projection u (LLaMA / Qwen3 MLP: down(silu(gate(x)) * up(x))), and its
// backward, in one pass each, so the MLP never stores silu(g) separately. The fast
// kernels use xsimd (vector exp) and OpenMP over blocks; each has a `_naive` twin, a
// plain scalar loop with std::exp.
//
// Beside it, the same shape of kernel for the attention output gate of the gated-attention
// zoo (G1 with a sigmoid, multiplicative): y = x * sigmoid(s), fused so that sigmoid(s) is
// never stored and the backward is one pass.
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

// The sigmoid gate, x, s, y each (n):  a = sigmoid(s),  y = x * a.  y may alias x or s.
template <class T>
void sigmoid_gate_forward(int64_t n, const T* x, const T* s, T* y);
template <class T>
void sigmoid_gate_forward_naive(int64_t n, const T* x, const T* s, T* y);

// Its backward, ACCUMULATING:  dx += dy * a,  ds += dy * x * a * (1 - a).
// dx or ds may be nullptr (not wanted); they must not overlap x, s, dy or each other.
template <class T>
void sigmoid_gate_backward(int64_t n, const T* x, const T* s, const T* dy, T* dx, T* ds);
template <class T>
void sigmoid_gate_backward_naive(int64_t n, const T* x, const T* s, const T* dy, T* dx, T* ds);

}  // namespace tg::kernels
