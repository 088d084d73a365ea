// autograd/kernels/attention_bf16.cpp — the vdpbf16ps tile products of attention in
// bf16 mode (Note [bf16 attention] in attention.cpp), and the conversions that make
// their operands. Private to attention.cpp (declared in attention_tiles.hpp).
//
// A "pair" is one 32-bit word holding bf16(x0) in its low half and bf16(x1) in its high
// half, as in gemm_bf16.cpp: vdpbf16ps multiplies a broadcast pair by 16 pairs and adds
// both products into 16 float lanes. Pairs live in float arrays as bit patterns: outside
// this file they are only moved (packed, transposed), never computed with.
//
// Like gemm_bf16.cpp, the AVX512_BF16 code is compiled through target attributes, so the
// file builds in every configuration; attention.cpp calls it only after
// cpu_has_avx512_bf16() said yes. The vectors here are always 16 floats wide, whatever
// the build's xsimd width (kW<float> is 8 in an AVX2 build running on an AVX-512 CPU), so
// partial vectors are masked by column count, not assumed whole.
#include <algorithm>
#include <cstdint>

#include "autograd/kernels/attention_tiles.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#define TG_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace tg::kernels::attention_detail {

namespace {

TG_BF16_TARGET inline __mmask16 first(int64_t n) {  // lanes [0, n) of 16, n clamped to [0, 16]
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

// Whole vectors are moved with plain loads and stores, partial ones masked: a masked
// store cannot forward its data to a later load (Zen 4 waits until the store has
// retired), and these tiles are read right after they are written. Measured on the baby
// model's attention: with masks everywhere the conversions took a third of the time.
TG_BF16_TARGET inline void store(float* p, int64_t n, __m512 x) {
  if (n >= 16)
    _mm512_storeu_ps(p, x);
  else
    _mm512_mask_storeu_ps(p, first(n), x);
}
TG_BF16_TARGET inline void store_words(float* p, int64_t n, __m512i x) {
  if (n >= 16)
    _mm512_storeu_si512(p, x);
  else
    _mm512_mask_storeu_epi32(p, first(n), x);
}
TG_BF16_TARGET inline __m512 load(const float* p, int64_t n) {
  return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(first(n), p);
}

// C[r*kBk + j0 + :] = alpha * sum_{d2 < K2} A2(r, d2) Bt2(d2, j0 + :) for MR rows and NV
// vectors of columns, stored only where the column is < ncols.
template <int MR, int NV>
TG_BF16_TARGET void abt2_kernel(int64_t K2, const float* A2, int64_t lda2, const float* Bt2, float* C,
                                int64_t j0, int64_t ncols, float alpha) {
  __m512 c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int u = 0; u < NV; ++u) c[r][u] = _mm512_setzero_ps();
  const auto* a = reinterpret_cast<const int*>(A2);
  for (int64_t d2 = 0; d2 < K2; ++d2) {
    __m512bh bv[NV];
    for (int u = 0; u < NV; ++u) bv[u] = (__m512bh)_mm512_loadu_si512(Bt2 + d2 * kBk + j0 + 16 * u);
    for (int r = 0; r < MR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(a[r * lda2 + d2]);
      for (int u = 0; u < NV; ++u) c[r][u] = _mm512_dpbf16_ps(c[r][u], av, bv[u]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha);
  for (int r = 0; r < MR; ++r)
    for (int u = 0; u < NV; ++u) store(C + r * kBk + j0 + 16 * u, ncols - j0 - 16 * u, _mm512_mul_ps(va, c[r][u]));
}

template <int MR>
TG_BF16_TARGET void abt2_rows(int64_t K2, const float* A2, int64_t lda2, const float* Bt2, float* C,
                              int64_t ncols, float alpha) {
  int64_t j0 = 0;
  for (; j0 + 64 < ncols; j0 += 64) abt2_kernel<MR, 4>(K2, A2, lda2, Bt2, C, j0, ncols, alpha);
  switch ((ncols - j0 + 15) / 16) {  // the last, partial vectors (masked stores)
    case 4: abt2_kernel<MR, 4>(K2, A2, lda2, Bt2, C, j0, ncols, alpha); break;
    case 3: abt2_kernel<MR, 3>(K2, A2, lda2, Bt2, C, j0, ncols, alpha); break;
    case 2: abt2_kernel<MR, 2>(K2, A2, lda2, Bt2, C, j0, ncols, alpha); break;
    case 1: abt2_kernel<MR, 1>(K2, A2, lda2, Bt2, C, j0, ncols, alpha); break;
    default: break;
  }
}

// C[r*ldc + :16*NV] += sum_{q0 <= q < q1} A2(r, q) B2(q, :) for MR rows.
template <int MR, int NV>
TG_BF16_TARGET void ab2_kernel(int64_t q0, int64_t q1, const float* A2, int64_t ars2, int64_t acs2,
                               const float* B2, int64_t ldb2, float* C, int64_t ldc) {
  __m512 c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int u = 0; u < NV; ++u) c[r][u] = _mm512_loadu_ps(C + r * ldc + 16 * u);
  const auto* a = reinterpret_cast<const int*>(A2);
  for (int64_t q = q0; q < q1; ++q) {
    __m512bh bv[NV];
    for (int u = 0; u < NV; ++u) bv[u] = (__m512bh)_mm512_loadu_si512(B2 + q * ldb2 + 16 * u);
    for (int r = 0; r < MR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(a[r * ars2 + q * acs2]);
      for (int u = 0; u < NV; ++u) c[r][u] = _mm512_dpbf16_ps(c[r][u], av, bv[u]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int u = 0; u < NV; ++u) _mm512_storeu_ps(C + r * ldc + 16 * u, c[r][u]);
}

template <int MR>
TG_BF16_TARGET void ab2_rows(int64_t q0, int64_t q1, const float* A2, int64_t ars2, int64_t acs2,
                             const float* B2, int64_t ldb2, float* C, int64_t ldc, int64_t D) {
  int64_t u = 0;
  for (; u + 64 <= D; u += 64) ab2_kernel<MR, 4>(q0, q1, A2, ars2, acs2, B2 + u, ldb2, C + u, ldc);
  switch ((D - u) / 16) {
    case 3: ab2_kernel<MR, 3>(q0, q1, A2, ars2, acs2, B2 + u, ldb2, C + u, ldc); break;
    case 2: ab2_kernel<MR, 2>(q0, q1, A2, ars2, acs2, B2 + u, ldb2, C + u, ldc); break;
    case 1: ab2_kernel<MR, 1>(q0, q1, A2, ars2, acs2, B2 + u, ldb2, C + u, ldc); break;
    default: break;
  }
}

}  // namespace

TG_BF16_TARGET void bf16_pairs_along_rows(const float* src, int64_t lds, int64_t m, int64_t n, float* dst,
                                          int64_t ldd) {
  for (int64_t r = 0; r < m; ++r) {
    const float* s = src + r * lds;
    float* d = dst + r * ldd;
    for (int64_t i = 0; i < n; i += 32) {
      const __m512 lo = load(s + i, n - i), hi = n - i > 16 ? load(s + i + 16, n - i - 16) : _mm512_setzero_ps();
      store_words(d + i / 2, (n - i + 1) / 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

TG_BF16_TARGET void bf16_pairs_of_rows(const float* src, int64_t lds, int64_t m, int64_t n, float* dst,
                                       int64_t ldd) {
  const __m512i lo_idx = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi_idx = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (int64_t r2 = 0; 2 * r2 < m; ++r2) {
    const float* a = src + 2 * r2 * lds;
    const float* b = 2 * r2 + 1 < m ? a + lds : nullptr;
    float* d = dst + r2 * ldd;
    for (int64_t i = 0; i < n; i += 16) {
      const __m512 x = load(a + i, n - i), y = b ? load(b + i, n - i) : _mm512_setzero_ps();
      const __m512 lo = _mm512_permutex2var_ps(x, lo_idx, y), hi = _mm512_permutex2var_ps(x, hi_idx, y);
      store_words(d + i, n - i, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

TG_BF16_TARGET void bf16_round_rows(float* x, int64_t ld, int64_t m, int64_t n) {
  for (int64_t r = 0; r < m; ++r)
    for (int64_t i = 0; i < n; i += 16) {
      float* p = x + r * ld + i;
      const __m256i h = (__m256i)_mm512_cvtneps_pbh(load(p, n - i));
      store(p, n - i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
}

TG_BF16_TARGET void bf16_tile_abt(int64_t m, int64_t npad, int64_t K2, const float* A2, int64_t lda2,
                                  const float* Bt2, float* C, int64_t c0, float alpha) {
  for (int64_t r = 0, mr = 0; r < m; r += mr) {
    mr = row_group(m - r);
    const int64_t ncols = std::clamp<int64_t>(c0 + r + mr - 1, 0, npad);
    const float* Ar = A2 + r * lda2;
    float* Cr = C + r * kBk;
    switch (mr) {
      case 6: abt2_rows<6>(K2, Ar, lda2, Bt2, Cr, ncols, alpha); break;
      case 5: abt2_rows<5>(K2, Ar, lda2, Bt2, Cr, ncols, alpha); break;
      case 4: abt2_rows<4>(K2, Ar, lda2, Bt2, Cr, ncols, alpha); break;
      case 3: abt2_rows<3>(K2, Ar, lda2, Bt2, Cr, ncols, alpha); break;
      case 2: abt2_rows<2>(K2, Ar, lda2, Bt2, Cr, ncols, alpha); break;
      default: abt2_rows<1>(K2, Ar, lda2, Bt2, Cr, ncols, alpha); break;
    }
    if (ncols < npad)
      for (int64_t rr = 0; rr < mr; ++rr) std::fill(Cr + rr * kBk + ncols, Cr + rr * kBk + npad, 0.f);
  }
}

TG_BF16_TARGET void bf16_tile_ab_acc(int64_t m, int64_t K, int64_t D, const float* A2, int64_t ars2,
                                     int64_t acs2, const float* B2, int64_t ldb2, float* C, int64_t ldc,
                                     int64_t lo, int64_t hi) {
  for (int64_t r = 0, mr = 0; r < m; r += mr) {
    mr = row_group(m - r);
    const int64_t p0 = std::clamp<int64_t>(r + lo, 0, K), p1 = std::clamp<int64_t>(r + mr - 1 + hi, 0, K);
    if (p0 >= p1) continue;
    const int64_t q0 = p0 / 2, q1 = (p1 + 1) / 2;  // the pairs covering [p0, p1)
    const float* Ar = A2 + r * ars2;
    float* Cr = C + r * ldc;
    switch (mr) {
      case 6: ab2_rows<6>(q0, q1, Ar, ars2, acs2, B2, ldb2, Cr, ldc, D); break;
      case 5: ab2_rows<5>(q0, q1, Ar, ars2, acs2, B2, ldb2, Cr, ldc, D); break;
      case 4: ab2_rows<4>(q0, q1, Ar, ars2, acs2, B2, ldb2, Cr, ldc, D); break;
      case 3: ab2_rows<3>(q0, q1, Ar, ars2, acs2, B2, ldb2, Cr, ldc, D); break;
      case 2: ab2_rows<2>(q0, q1, Ar, ars2, acs2, B2, ldb2, Cr, ldc, D); break;
      default: ab2_rows<1>(q0, q1, Ar, ars2, acs2, B2, ldb2, Cr, ldc, D); break;
    }
  }
}

}  // namespace tg::kernels::attention_detail

#else  // not x86-64: no AVX512_BF16, so attention.cpp never takes the pairs path

#include <stdexcept>

namespace tg::kernels::attention_detail {
namespace {
[[noreturn]] void no_bf16() { throw std::logic_error("attention: bf16 pairs path on a CPU without AVX512_BF16"); }
}  // namespace
void bf16_pairs_along_rows(const float*, int64_t, int64_t, int64_t, float*, int64_t) { no_bf16(); }
void bf16_pairs_of_rows(const float*, int64_t, int64_t, int64_t, float*, int64_t) { no_bf16(); }
void bf16_round_rows(float*, int64_t, int64_t, int64_t) { no_bf16(); }
void bf16_tile_abt(int64_t, int64_t, int64_t, const float*, int64_t, const float*, float*, int64_t, float) { no_bf16(); }
void bf16_tile_ab_acc(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*,
                      int64_t, int64_t, int64_t) {
  no_bf16();
}
}  // namespace tg::kernels::attention_detail

#endif
