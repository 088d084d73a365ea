// autograd/kernels/attention.hpp — causal scaled-dot-product attention kernels.
//
// What it is for: the forward and backward of causal softmax attention with
// grouped-query heads (GQA), computed flash-style: queries and keys are taken in
// tiles, the softmax is accumulated online, and the backward recomputes the
// probabilities from q, k and the saved log-sum-exp. So the memory these kernels
// use grows linearly with the sequence length, never with T^2. Beside each fast
// kernel sits its O(T^2) naive twin (materialised scores, softmax, matmuls), the
// test oracle. attention_probs() returns the probabilities for diagnostics.
//
// In the bf16 mode of the GEMMs (gemm_bf16.hpp) the float kernels round their tile
// products' operands to bf16 as well (Note [bf16 attention] in attention.cpp).
//
// What it is not: an op. These are raw-pointer templates over float and double;
// they know nothing of Tensor or the tape (the attention op in autograd/ calls
// them). No dropout, no padding masks, no non-causal mode.
//
// Shapes: B batch, H query heads, Hkv key/value heads, Tq query positions,
// Tk key positions, D head dim.
//   q (B,H,Tq,D)   k, v (B,Hkv,Tk,D)   out, dout (B,H,Tq,D)   lse (B,H,Tq)
// each given as a pointer plus strides (see AttnStrides), so the caller can pass
// (B,H,T,D) or (B,T,H,D) memory without copying.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tg::kernels {

// Element (b, h, t, d) of a tensor lives at ptr[b*s.b + h*s.h + t*s.t + d]
// (d is always contiguous). For (B,H,T,D) memory: {H*T*D, T*D, D};
// for (B,T,H,D) memory: {T*H*D, D, H*D}.
struct AttnStrides { int64_t b, h, t; };

// B batch, H query heads, Hkv key/value heads (H % Hkv == 0), Tq query positions,
// Tk key positions (Tq <= Tk), D head dim. All must be >= 1.
struct AttnDims { int64_t B, H, Hkv, Tq, Tk, D; };

// Causal scaled-dot-product attention with grouped-query heads.
//
//   S[b,h,i,j] = scale * sum_d q[b,h,i,d] * k[b,g,j,d]        g = h / (H/Hkv)
//   P[b,h,i,:] = softmax_j S[b,h,i,:] over the visible keys j <= Tk - Tq + i
//   out[b,h,i,d] = sum_j P[b,h,i,j] * v[b,g,j,d]
//   lse[b,h,i] = log sum_j exp(S[b,h,i,j])                     (visible j only)
//
// Query i sits at absolute position Tk - Tq + i, so Tq == Tk is ordinary causal
// attention and Tq < Tk is decoding against a KV cache of Tk - Tq earlier keys.
// out is written through its strides; lse is (B,H,Tq) contiguous and is what the
// backward needs besides q, k, v, out.
template <class T>
void attention_forward(const AttnDims& dims, T scale,
                       const T* q, AttnStrides qs, const T* k, AttnStrides ks,
                       const T* v, AttnStrides vs, T* out, AttnStrides os, T* lse);

// Backward of attention_forward, given dout (B,H,Tq,D) with strides dos.
// Overwrites dq (B,H,Tq,D), dk and dv (B,Hkv,Tk,D), each through its strides:
//   dv[j]  = sum_{h in group, i} P[i,j] dout[i]
//   dP[i,j] = dout[i] . v[j]
//   dS[i,j] = P[i,j] (dP[i,j] - Di)          Di = sum_d dout[i,d] out[i,d]
//   dq[i]  = scale * sum_j dS[i,j] k[j]
//   dk[j]  = scale * sum_{h in group, i} dS[i,j] q[i]
// P is recomputed tile by tile from q, k and lse (flash-style).
template <class T>
void attention_backward(const AttnDims& dims, T scale,
                        const T* q, AttnStrides qs, const T* k, AttnStrides ks,
                        const T* v, AttnStrides vs, const T* out, AttnStrides os,
                        const T* dout, AttnStrides dos, const T* lse,
                        T* dq, AttnStrides dqs, T* dk, AttnStrides dks, T* dv, AttnStrides dvs);

// Attention probabilities P (B,H,Tq,Tk), contiguous, zeros above the causal
// diagonal, recomputed from q, k and the lse saved by attention_forward
// (diagnostics: e.g. the attention paid to the first token).
template <class T>
void attention_probs(const AttnDims& dims, T scale,
                     const T* q, AttnStrides qs, const T* k, AttnStrides ks,
                     const T* lse, T* probs);
// Its twin: the full score matrix and a row softmax (lse is not read).
template <class T>
void attention_probs_naive(const AttnDims& dims, T scale,
                           const T* q, AttnStrides qs, const T* k, AttnStrides ks,
                           const T* lse, T* probs);

// The O(T^2) reference twins: materialise the (B,H,Tq,Tk) scores, softmax them,
// then multiply. Same arguments and results as the fast kernels. The naive
// backward ignores lse and out: it recomputes the softmax from scratch and takes
// Di = sum_j P[i,j] dP[i,j], so it checks the fast kernel's use of both.
template <class T>
void attention_forward_naive(const AttnDims& dims, T scale,
                             const T* q, AttnStrides qs, const T* k, AttnStrides ks,
                             const T* v, AttnStrides vs, T* out, AttnStrides os, T* lse);
template <class T>
void attention_backward_naive(const AttnDims& dims, T scale,
                              const T* q, AttnStrides qs, const T* k, AttnStrides ks,
                              const T* v, AttnStrides vs, const T* out, AttnStrides os,
                              const T* dout, AttnStrides dos, const T* lse,
                              T* dq, AttnStrides dqs, T* dk, AttnStrides dks, T* dv, AttnStrides dvs);

// ---- introspection (for tests and the memory report of bench/attention) ------

// Bytes of scratch memory one call allocates beyond its arguments, for scalars of
// elem_size bytes at `threads` threads. Fast kernels: per-thread tiles and the
// per-thread packed K^T (and V^T) panels of one kv head, D * Tk each (plus the
// (B,H,Tq) row terms Di in the backward). Naive twins: the (B,H,Tq,Tk) buffers.
// Without the bf16 mode: in it (Note [bf16 attention] in attention.cpp) the emulation
// adds rounded copies of q, k, v (and dout); the vdpbf16ps path's pair panels take no
// more than the float panels they replace, plus per thread in the backward
// 2 * (H/Hkv) * Tq * D floats of query pairs: still linear in T.
std::size_t attention_scratch_bytes(const AttnDims& dims, std::size_t elem_size,
                                    bool backward, bool naive, int threads);

// Which schedule attention_backward uses at `threads` threads (see Note [Attention
// backward schedules] in attention.cpp): true = one pass with a thread per
// (batch, kv head) pair; false = two passes (dk/dv over key tiles, then dq over
// query tiles).
bool attention_backward_one_pass(const AttnDims& dims, int threads);

}  // namespace tg::kernels
