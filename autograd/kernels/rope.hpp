// autograd/kernels/rope.hpp — rotary position embedding (RoPE) kernels and their tables.
//
// What it is for: rotating the query and key heads by their token positions, in the
// `rotate_half` convention of Hugging Face (LLaMA, Qwen3): the head dimension D is split
// into halves, and element i is paired with element i + D/2 (not with its neighbour, as
// in the interleaved GPT-J / Meta convention). Also builds the cos/sin tables, with
// optional custom inverse frequencies and attention scale (YaRN). The fast kernels use
// xsimd along D and OpenMP over rows; each has a `_naive` twin, a plain scalar loop.
//
// What it is not: an op, and not the YaRN maths. The op in autograd/ computes the YaRN
// inverse frequencies and mscale and passes them here; these kernels know nothing of
// Tensor or the tape.
#pragma once

#include <cstdint>

namespace tg::kernels {

// Forward. x is n_rows rows of D values (e.g. (B,H,T,D) or (B,T,H,D) flattened to rows),
// row r starting at x + r * x_row_stride; pos (n_rows) is each row's position, indexing
// the tables cos and sin, which are (P, D) contiguous. With h = D/2, c = cos[pos[r]],
// s = sin[pos[r]], and i < h:
//   y_i     = x_i     * c_i     - x_{i+h} * s_i
//   y_{i+h} = x_{i+h} * c_{i+h} + x_i     * s_{i+h}
// D must be even and > 0, the strides >= D, pos >= 0 (the caller guarantees pos < P:
// the tables' length is not passed). y may be x itself (same stride): in place is fine;
// partial overlaps are not.
template <class T>
void rope_forward(int64_t n_rows, int64_t D, const T* x, int64_t x_row_stride,
                  const int64_t* pos, const T* cos, const T* sin, T* y, int64_t y_row_stride);
template <class T>
void rope_forward_naive(int64_t n_rows, int64_t D, const T* x, int64_t x_row_stride,
                        const int64_t* pos, const T* cos, const T* sin, T* y,
                        int64_t y_row_stride);

// Backward: dx += R^T dy, the transpose of the rotation above:
//   dx_i     += dy_i * c_i     + dy_{i+h} * s_{i+h}
//   dx_{i+h} += dy_{i+h} * c_{i+h} - dy_i * s_i
// ACCUMULATES into dx (the tape accumulates gradients). dx must not overlap dy.
template <class T>
void rope_backward(int64_t n_rows, int64_t D, const T* dy, int64_t dy_row_stride,
                   const int64_t* pos, const T* cos, const T* sin, T* dx, int64_t dx_row_stride);
template <class T>
void rope_backward_naive(int64_t n_rows, int64_t D, const T* dy, int64_t dy_row_stride,
                         const int64_t* pos, const T* cos, const T* sin, T* dx,
                         int64_t dx_row_stride);

// Tables, (P, D) each, as Hugging Face builds them (emb = cat(freqs, freqs)):
//   inv_freq_i = theta^(-2i/D)  (computed as 1 / theta^(2i/D)), i < D/2, unless
//                inv_freq (D/2) is given (e.g. YaRN's blended frequencies)
//   cos[p, j]  = cos(p * inv_freq_{j mod D/2}) * attention_scale
//   sin[p, j]  = sin(p * inv_freq_{j mod D/2}) * attention_scale
// attention_scale is 1 normally (YaRN's mscale otherwise). Angles and their cos/sin are
// computed in double even for float tables (inv_freq and attention_scale are double),
// then rounded once. The rope_table op (autograd/ops_nn.cpp) builds its tables with it. theta must be > 0 when
// inv_freq is nullptr.
template <class T>
void rope_tables(int64_t P, int64_t D, double theta, const double* inv_freq, double attention_scale,
                 T* cos, T* sin);
template <class T>
void rope_tables_naive(int64_t P, int64_t D, double theta, const double* inv_freq, double attention_scale,
                       T* cos, T* sin);

}  // namespace tg::kernels
