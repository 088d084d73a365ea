// autograd/kernels/gemm_bf16.cpp — see gemm_bf16.hpp.
//
// The loop nest of gemm.cpp, simplified: for each column block of C, op(B) is packed once
// for all of K as bf16 pairs in NR-wide panels (threads share the packing), then work
// items (a block of MC rows against a range of panels) pack their rows of op(A) one
// k-slab at a time and run the micro-kernel, which keeps an MR x NR tile of C in 24 zmm
// accumulators. A "pair" is one 32-bit word holding bf16(x[k]) (low half) and
// bf16(x[k+1]) (high half) for an even k: vdpbf16ps multiplies a broadcast pair of A by
// 16 pairs of B and adds both products into 16 float lanes. An odd K is padded with a
// zero k on both sides.
//
// A slab of op(A) is packed in the layout its storage makes cheap: with k contiguous
// (A as stored: the forward's X, the input gradients' dY) each row's pairs stay one
// row (pack_rows, a plain convert-and-store); with rows contiguous (transposed A:
// the weight gradients' dY^T) k-major in MR-row panels (pack_pairs_panels, interleaved
// in registers). The micro-kernel reads either (its RowsA flag). Until 2026-12-07 both
// went through pack_pairs' k-major layout six rows at a time, element by element for
// transposed A: a fifth of dW_qkv's time (perf), against ~3% now.
//
// The AVX512_BF16 code is compiled through target attributes, so this file builds in
// every configuration (portable and -march=haswell too) and the instructions run only
// after cpu_has_avx512_bf16() said yes.
#include "autograd/kernels/gemm_bf16.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define TG_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define TG_HAVE_BF16_CODE 1
#else
#define TG_HAVE_BF16_CODE 0
#endif

#include "autograd/kernels/gemm.hpp"
#include "autograd/kernels/parallel.hpp"

namespace tg::kernels {

namespace detail {
// gemm.cpp's argument checks (the messages name `name`).
void check_gemm_args(const char* name, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
                     const float* A, int64_t lda, const float* B, int64_t ldb, const float* C,
                     int64_t ldc);
void gemm_float_kernel(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                       int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
}  // namespace detail

namespace {

std::atomic<bool> g_bf16{false};
std::atomic<bool> g_bf16_emulated{false};  // set_gemm_bf16_emulated: no instruction set needed

// bf16 bits of x (Note [bf16 rounding]).
uint16_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);  // NaN stays NaN
  if ((u & 0x7f800000u) == 0) return uint16_t((u >> 16) & 0x8000u);          // subnormal -> ±0
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

uint32_t pair_bits(float lo, float hi) { return uint32_t(bf16_bits(lo)) | (uint32_t(bf16_bits(hi)) << 16); }

constexpr int MR = 6, NV = 4, NR = NV * 16;  // 6 x 64 tile of C: 24 zmm accumulators
constexpr int64_t KC = 512;                  // k per slab (256 pairs)
constexpr int64_t MC = MR * 40;              // rows of A per work item
constexpr int64_t kBudgetPairs = int64_t(2) << 20;  // packed B block: 8 MiB of pairs
constexpr double kParallelMinFlops = 2.0 * 96 * 96 * 96;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

#if TG_HAVE_BF16_CODE

// dst[k2*ld + r] = pair(x(r, k0+2k2), x(r, k0+2k2+1)) for r < rows and 2k2 < kc, where
// x(r, k) = src[r*rs + k*ks] (one of rs, ks is 1); rows [rows, rpad) and the missing
// odd k are zero.
TG_BF16_TARGET void pack_pairs(const float* src, int64_t rs, int64_t ks, int64_t rows, int64_t rpad,
                               int64_t k0, int64_t kc, uint32_t* dst, int64_t ld) {
  const int64_t kc2 = ceil_div(kc, 2);
  if (ks == 1) {  // k contiguous: a row converts 32 k at a time
    alignas(64) uint32_t t[16];
    for (int64_t r = 0; r < rows; ++r) {
      const float* s = src + r * rs + k0;
      int64_t k = 0;
      for (; k + 32 <= kc; k += 32) {
        const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + k + 16), _mm512_loadu_ps(s + k));
        _mm512_store_si512(t, (__m512i)v);
        for (int j = 0; j < 16; ++j) dst[(k / 2 + j) * ld + r] = t[j];
      }
      for (; k < kc; k += 2) dst[(k / 2) * ld + r] = pair_bits(s[k], k + 1 < kc ? s[k + 1] : 0.f);
    }
  } else {  // rows contiguous: interleave two k rows, 16 rows at a time
    const __m512i lo_idx = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi_idx = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    for (int64_t k2 = 0; k2 < kc2; ++k2) {
      const float* s0 = src + (k0 + 2 * k2) * ks;
      const float* s1 = 2 * k2 + 1 < kc ? s0 + ks : nullptr;
      uint32_t* d = dst + k2 * ld;
      int64_t r = 0;
      for (; r + 16 <= rows; r += 16) {
        const __m512 a = _mm512_loadu_ps(s0 + r), b = s1 ? _mm512_loadu_ps(s1 + r) : _mm512_setzero_ps();
        const __m512 lo = _mm512_permutex2var_ps(a, lo_idx, b), hi = _mm512_permutex2var_ps(a, hi_idx, b);
        _mm512_storeu_si512(d + r, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
      for (; r < rows; ++r) d[r] = pair_bits(s0[r], s1 ? s1[r] : 0.f);
    }
  }
  for (int64_t k2 = 0; k2 < kc2; ++k2)
    for (int64_t r = rows; r < rpad; ++r) dst[k2 * ld + r] = 0;
}

// A work item's rows of one slab when op(A)'s rows are contiguous (transposed A: x(r, k)
// = src[r + k*ks]), packed into the MR-row panels the micro-kernel reads: panel p holds
// rows [p*MR, p*MR + MR) as [kc2][MR] pairs at dst + p*kc2*MR, rows past `rows` zero.
// (pack_pairs would take this case six rows at a time, too few for its 16-row vectors,
// and round every element by itself.) Two pairs of k at a time: the panel's 6 rows of k,
// k+1, k+2, k+3 (masked 8-float loads) are interleaved into the 12 pairs the panel holds
// for k/2 and k/2 + 1, in order, so one rounding and one 12-word store write them.
// (row k0 | row k1) of 8 floats each, masked by m; a row at or past kc reads as zeros.
// (A function, not a lambda: a lambda would not get the target attribute.)
TG_BF16_TARGET inline __m512 join_rows(__mmask8 m, const float* s, int64_t ks, int64_t k0, int64_t k1,
                                       int64_t kc) {
  const __m256 lo = k0 < kc ? _mm256_maskz_loadu_ps(m, s + k0 * ks) : _mm256_setzero_ps();
  const __m256 hi = k1 < kc ? _mm256_maskz_loadu_ps(m, s + k1 * ks) : _mm256_setzero_ps();
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
}

TG_BF16_TARGET void pack_pairs_panels(const float* src, int64_t ks, int64_t rows, int64_t k0, int64_t kc,
                                      uint32_t* dst) {
  static_assert(MR == 6, "the permutations below pair 6 rows");
  const int64_t kc2 = ceil_div(kc, 2);
  // a = rows (k | k+2), b = rows (k+1 | k+3) as (low | high) 8 floats; lanes 0..15 of a are
  // indices 0..15, of b 16..31. lo: pairs 0..5 of k, then 0..1 of k+2; hi: pairs 2..5 of k+2.
  const __m512i lo_idx = _mm512_set_epi32(25, 9, 24, 8, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi_idx = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 29, 13, 28, 12, 27, 11, 26, 10);
  for (int64_t p = 0; p * MR < rows; ++p) {
    const __mmask8 m = __mmask8((1u << std::min<int64_t>(MR, rows - p * MR)) - 1u);
    const float* s = src + p * MR + k0 * ks;
    uint32_t* d = dst + p * kc2 * MR;
    for (int64_t k2 = 0; k2 < kc2; k2 += 2) {
      const int64_t k = 2 * k2;
      const __m512 a = join_rows(m, s, ks, k, k + 2, kc), b = join_rows(m, s, ks, k + 1, k + 3, kc);
      const __m512 lo = _mm512_permutex2var_ps(a, lo_idx, b), hi = _mm512_permutex2var_ps(a, hi_idx, b);
      _mm512_mask_storeu_epi32(d + k2 * MR, k2 + 1 < kc2 ? __mmask16(0x0FFF) : __mmask16(0x003F),
                               (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

// Rows of op(A) (or op(B)) as row-major pairs, for the AMX tiles and, with k contiguous
// (ks == 1), for the vdpbf16ps micro-kernel's row-major panels (kc2p = ceil(kc/2), ld =
// kc2p): a row converts 32 k per instruction and is stored as it is.
// dst[r*ld + k2] = pair(x(r, k0+2k2), x(r, k0+2k2+1)) for r < rows, 2k2 < kc; zero for
// rows [rows, rpad) and for pairs [ceil(kc/2), kc2p). x(r, k) = src[r*rs + k*ks].
TG_BF16_TARGET void pack_rows(const float* src, int64_t rs, int64_t ks, int64_t rows, int64_t rpad,
                              int64_t k0, int64_t kc, int64_t kc2p, uint32_t* dst, int64_t ld) {
  const int64_t kc2 = ceil_div(kc, 2);
  if (ks == 1) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* x = src + r * rs + k0;
      uint32_t* d = dst + r * ld;
      int64_t k = 0;
      for (; k + 32 <= kc; k += 32)
        _mm512_storeu_si512(d + k / 2, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + k + 16), _mm512_loadu_ps(x + k)));
      for (; k < kc; k += 2) d[k / 2] = pair_bits(x[k], k + 1 < kc ? x[k + 1] : 0.f);
      for (int64_t k2 = kc2; k2 < kc2p; ++k2) d[k2] = 0;
    }
  } else {  // rows contiguous: 16 rows' pairs per vector, scattered into their rows
    const __m512i lo_idx = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi_idx = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    const __m512i rows_at = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(int(ld)));
    for (int64_t k2 = 0; k2 < kc2; ++k2) {
      const float* x0 = src + (k0 + 2 * k2) * ks;
      const float* x1 = 2 * k2 + 1 < kc ? x0 + ks : nullptr;
      int64_t r = 0;
      for (; r + 16 <= rows; r += 16) {
        const __m512 a = _mm512_loadu_ps(x0 + r), b = x1 ? _mm512_loadu_ps(x1 + r) : _mm512_setzero_ps();
        const __m512 lo = _mm512_permutex2var_ps(a, lo_idx, b), hi = _mm512_permutex2var_ps(a, hi_idx, b);
        _mm512_i32scatter_epi32(dst + r * ld + k2, rows_at, (__m512i)_mm512_cvtne2ps_pbh(hi, lo), 4);
      }
      for (; r < rows; ++r) dst[r * ld + k2] = pair_bits(x0[r], x1 ? x1[r] : 0.f);
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k2 = kc2; k2 < kc2p; ++k2) dst[r * ld + k2] = 0;
  }
  for (int64_t r = rows; r < rpad; ++r)
    for (int64_t k2 = 0; k2 < kc2p; ++k2) dst[r * ld + k2] = 0;
}

// c(rows, cols) = alpha * a(MR, kc2 pairs) @ b(kc2 pairs, NR) + beta * c (beta == 0
// overwrites); b is [kc2][NR] packed pairs, a is [kc2][MR] (RowsA false: the layout of
// pack_pairs and pack_pairs_panels) or [MR][kc2] (RowsA true: pack_rows). The
// broadcasts read A from memory either way; row-major A is six sequential streams.
template <int NVU, bool RowsA>
TG_BF16_TARGET void micro_kernel(int64_t kc2, const uint32_t* __restrict a, const uint32_t* __restrict b,
                                 float* c, int64_t ldc, float alpha, float beta, int64_t rows, int64_t cols) {
  const int64_t rstride = RowsA ? kc2 : 1, kstride = RowsA ? 1 : MR;  // a(i, k2) = a[i*rstride + k2*kstride]
  __m512 acc[MR][NVU];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NVU; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t k2 = 0; k2 < kc2; ++k2) {
    __m512bh bv[NVU];
    for (int v = 0; v < NVU; ++v) bv[v] = (__m512bh)_mm512_load_si512(b + k2 * NR + 16 * v);
    for (int i = 0; i < MR; ++i) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(int(a[i * rstride + k2 * kstride]));
      for (int v = 0; v < NVU; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int i = 0; i < MR && i < rows; ++i)
    for (int v = 0; v < NVU; ++v) {
      const int64_t n = std::clamp<int64_t>(cols - 16 * v, 0, 16);
      if (n == 0) break;
      const __mmask16 m = __mmask16((1u << n) - 1u);
      float* p = c + i * ldc + 16 * v;
      const __m512 r = beta == 0.f ? _mm512_mul_ps(va, acc[i][v])
                                   : _mm512_fmadd_ps(va, acc[i][v], _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, p)));
      _mm512_mask_storeu_ps(p, m, r);
    }
}

template <bool RowsA>
TG_BF16_TARGET void run_micro(int64_t kc2, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc,
                              float alpha, float beta, int64_t rows, int64_t cols) {
  switch (ceil_div(cols, 16)) {  // a narrow last panel computes only its vectors
    case 1: micro_kernel<1, RowsA>(kc2, a, b, c, ldc, alpha, beta, rows, cols); break;
    case 2: micro_kernel<2, RowsA>(kc2, a, b, c, ldc, alpha, beta, rows, cols); break;
    case 3: micro_kernel<3, RowsA>(kc2, a, b, c, ldc, alpha, beta, rows, cols); break;
    default: micro_kernel<4, RowsA>(kc2, a, b, c, ldc, alpha, beta, rows, cols); break;
  }
}

template <class T>
T* aligned_buffer(std::vector<T>& v, std::size_t n) {  // 64-byte aligned view into v
  if (v.size() < n + 16) v.resize(n + 16);
  auto p = reinterpret_cast<std::uintptr_t>(v.data());
  return reinterpret_cast<T*>((p + 63) / 64 * 64);
}

// The loop nest both bf16 paths share. Path says how many rows of A a work item takes
// (Path::MC), what a slab's pairs are padded to (Path::pad), what a thread does before and
// after its items (begin_thread, end_thread), and how one slab of an item is packed and
// multiplied (Path::slab). The nest itself runs no vector code and needs no target.
template <class Path>
void bf16_loop_nest(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                    int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  // op(A)(i, k) = A[i*ars + k*aks]; op(B)(k, j) = B[j*brs + k*bks] (j plays the row).
  const int64_t ars = transA ? 1 : lda, aks = transA ? lda : 1;
  const int64_t brs = transB ? ldb : 1, bks = transB ? 1 : ldb;
  const int64_t n_slabs = ceil_div(K, KC), kc2_max = Path::pad(ceil_div(std::min(K, KC), 2));
  const int64_t K2 = n_slabs * kc2_max;  // pair rows of the packed B block (slab-major)
  const int64_t NC = std::min(ceil_div(N, NR) * NR, std::max<int64_t>(NR, kBudgetPairs / K2 / NR * NR));
  int nt = omp_in_parallel() ? 1 : std::max(1, tg::num_threads());
  if (2.0 * double(M) * double(N) * double(K) < kParallelMinFlops) nt = 1;
  static thread_local std::vector<uint32_t> b_store;
  uint32_t* Bp = aligned_buffer(b_store, std::size_t(K2 * NC));
  const int64_t m_blocks = ceil_div(M, Path::MC);
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc), n_panels = ceil_div(nc, NR);
    const int64_t nb = m_blocks < 2 * nt ? std::min<int64_t>(n_panels, ceil_div(2 * nt, m_blocks)) : 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      // 1. pack op(B)(:, jc : jc+nc): panel q of slab s at Bp + (s*n_panels + q) * kc2_max*NR,
      //    its pairs past the slab's k zero (a whole AMX tile reads them).
#pragma omp for schedule(static) collapse(2)
      for (int64_t s = 0; s < n_slabs; ++s)
        for (int64_t q = 0; q < n_panels; ++q) {
          const int64_t pc = s * KC, kc = std::min(KC, K - pc), j0 = jc + q * NR;
          uint32_t* dst = Bp + (s * n_panels + q) * kc2_max * NR;
          pack_pairs(B + j0 * brs, brs, bks, std::min<int64_t>(NR, N - j0), NR, pc, kc, dst, NR);
          std::fill(dst + ceil_div(kc, 2) * NR, dst + kc2_max * NR, 0u);
        }
      // 2. items: a block of Path::MC rows against a range of panels, all slabs in order
      //    (C takes beta on the first slab, then accumulates).
      Path::begin_thread();
      static thread_local std::vector<uint32_t> a_store;
      uint32_t* Ap = aligned_buffer(a_store, std::size_t(Path::MC * kc2_max));
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < m_blocks * nb; ++it) {
        const int64_t ic = (it / nb) * Path::MC, mc = std::min(Path::MC, M - ic);
        const int64_t q0 = n_panels * (it % nb) / nb, q1 = n_panels * (it % nb + 1) / nb;
        for (int64_t s = 0; s < n_slabs; ++s) {
          const int64_t pc = s * KC, kc = std::min(KC, K - pc);
          Path::slab(A + ic * ars, ars, aks, mc, pc, kc, Ap, Bp + s * n_panels * kc2_max * NR, kc2_max * NR,
                     q0, q1, nc, C + ic * ldc + jc, ldc, alpha, s == 0 ? beta : 1.f);
        }
      }
      Path::end_thread();
    }
  }
}

// One slab of a work item on the vdpbf16ps path: its rows of op(A) packed MR at a time,
// then each MR x NR tile of C against each panel. a: the item's first row of op(A);
// panels: the slab's packed B panels, panel_stride apart; c: the item's C at column jc.
struct Vdpbf16psPath {
  static constexpr int64_t MC = tg::kernels::MC;
  static int64_t pad(int64_t kc2) { return kc2; }
  static void begin_thread() {}
  static void end_thread() {}
  TG_BF16_TARGET static void slab(const float* a, int64_t ars, int64_t aks, int64_t mc, int64_t pc, int64_t kc,
                                  uint32_t* Ap, const uint32_t* panels, int64_t panel_stride, int64_t q0,
                                  int64_t q1, int64_t nc, float* c, int64_t ldc, float alpha, float beta) {
    const int64_t kc2 = ceil_div(kc, 2);
    // Panel ir of the item (rows ir .. ir + MR) starts at Ap + ir * kc2 in both layouts.
    const bool rows_a = aks == 1;  // k contiguous: row-major panels; else [kc2][MR]
    if (rows_a)
      pack_rows(a, ars, 1, mc, ceil_div(mc, MR) * MR, pc, kc, kc2, Ap, kc2);
    else
      pack_pairs_panels(a, aks, mc, pc, kc, Ap);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t j0 = q * NR, cols = std::min<int64_t>(NR, nc - j0);
      for (int64_t ir = 0; ir < mc; ir += MR) {
        auto* run = rows_a ? run_micro<true> : run_micro<false>;
        run(kc2, Ap + ir * kc2, panels + q * panel_stride, c + ir * ldc + j0, ldc, alpha, beta,
            std::min<int64_t>(MR, mc - ir), cols);
      }
    }
  }
};


// ---- AMX (Note [bf16 on AMX]) -------------------------------------------------------
// Note [bf16 on AMX]
// vdpbf16ps does 32 multiply-adds per instruction, but on the CPUs that have it
// (Sapphire Rapids and later) it issues at half the rate of the float FMA, so it is no
// faster than float32 (measured: ~100 against ~150 GFLOP/s on one core). Those CPUs also
// have AMX: tdpbf16ps multiplies a 16 x 32 bf16 tile of A by a 32 x 16 tile of B (in the
// same pair layout as above) into a 16 x 16 float tile of C, 8192 multiply-adds per
// instruction. The AMX path keeps a 32 x 32 block of C in four tiles (tmm0-3), A in
// tmm4-5 and B in tmm6-7, all configured as 16 rows x 64 bytes. A is packed row-major in
// pairs (Ap[r*ld + k2]); B uses the panels above with k padded to whole tiles (32 k).
// Each block's sum runs over the k of a slab in pairs, in tile order, then C is updated
// once per slab as on the vdpbf16ps path: results are identical across thread counts.
// Linux hands out AMX state only on request (arch_prctl ARCH_REQ_XCOMP_PERM); without
// it, or with TAPEGRAD_BF16_NO_AMX=1, the vdpbf16ps path runs.
constexpr int64_t MRA = 32;          // rows of a block (two tiles)
constexpr int64_t MCA = MRA * 8;     // rows of A per work item

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, pad[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

#define TG_AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))

TG_AMX_TARGET void amx_configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

TG_AMX_TARGET void amx_release() { _tile_release(); }

// c(rows, cols) = alpha * A(32 rows, kc2p pairs) @ B(kc2p pairs, 32 cols) + beta * c.
// a: Ap rows (ld pairs apart); b: a B panel at its first column of the block (NR apart).
TG_AMX_TARGET void amx_block(int64_t kc2p, const uint32_t* a, int64_t ld, const uint32_t* b, float* c,
                             int64_t ldc, float alpha, float beta, int64_t rows, int64_t cols) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kk = 0; kk < kc2p; kk += 16) {
    _tile_loadd(4, a + kk, ld * 4);
    _tile_loadd(5, a + 16 * ld + kk, ld * 4);
    _tile_loadd(6, b + kk * NR, NR * 4);
    _tile_loadd(7, b + kk * NR + 16, NR * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float t[32][32];
  _tile_stored(0, &t[0][0], 128);
  _tile_stored(1, &t[0][16], 128);
  _tile_stored(2, &t[16][0], 128);
  _tile_stored(3, &t[16][16], 128);
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int64_t i = 0; i < rows; ++i)
    for (int v = 0; v < 2; ++v) {
      const int64_t n = std::clamp<int64_t>(cols - 16 * v, 0, 16);
      if (n == 0) break;
      const __mmask16 m = __mmask16((1u << n) - 1u);
      float* p = c + i * ldc + 16 * v;
      const __m512 acc = _mm512_load_ps(&t[i][16 * v]);
      const __m512 r = beta == 0.f ? _mm512_mul_ps(va, acc)
                                   : _mm512_fmadd_ps(va, acc, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, p)));
      _mm512_mask_storeu_ps(p, m, r);
    }
}

// One slab of a work item on the AMX path: the item's rows of op(A) packed row-major
// (pairs padded to whole tiles), then 32 x 32 blocks of C against each panel's two halves.
struct AmxPath {
  static constexpr int64_t MC = MCA;
  static int64_t pad(int64_t kc2) { return (kc2 + 15) / 16 * 16; }
  static void begin_thread() { amx_configure(); }
  static void end_thread() { amx_release(); }
  TG_AMX_TARGET static void slab(const float* a, int64_t ars, int64_t aks, int64_t mc, int64_t pc, int64_t kc,
                                 uint32_t* Ap, const uint32_t* panels, int64_t panel_stride, int64_t q0,
                                 int64_t q1, int64_t nc, float* c, int64_t ldc, float alpha, float beta) {
    const int64_t kc2p = pad(ceil_div(kc, 2));
    pack_rows(a, ars, aks, mc, ceil_div(mc, MRA) * MRA, pc, kc, kc2p, Ap, kc2p);
    for (int64_t q = q0; q < q1; ++q) {
      const uint32_t* bp = panels + q * panel_stride;
      for (int64_t h = 0; h < NR; h += 32) {
        const int64_t j0 = q * NR + h, cols = std::min<int64_t>(32, nc - j0);
        if (cols <= 0) break;
        for (int64_t ir = 0; ir < mc; ir += MRA)
          amx_block(kc2p, Ap + ir * kc2p, kc2p, bp + h, c + ir * ldc + j0, ldc, alpha, beta,
                    std::min<int64_t>(MRA, mc - ir), cols);
      }
    }
  }
};

bool amx_available() {
  static const bool ok = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!((d >> 22) & 1u) || !((d >> 24) & 1u)) return false;  // AMX-BF16, AMX-TILE
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  }();
  return ok;
}

bool use_amx() {
  const char* off = std::getenv("TAPEGRAD_BF16_NO_AMX");
  if (off && *off && std::strcmp(off, "0") != 0) return false;
  return amx_available();
}

#endif  // TG_HAVE_BF16_CODE

void require_bf16(const char* who) {
  if (!cpu_has_avx512_bf16())
    throw std::runtime_error(std::string(who) +
                             ": bf16 matmuls need the AVX512_BF16 instruction set (vdpbf16ps, with "
                             "AVX-512 F/BW/VL), which this CPU does not have (no avx512_bf16 in "
                             "/proc/cpuinfo); use float32 instead");
}

}  // namespace

bool cpu_has_avx512_bf16() {
  const char* off = std::getenv("TAPEGRAD_DISABLE_BF16");
  if (off && std::strcmp(off, "0") != 0 && *off) return false;
#if TG_HAVE_BF16_CODE
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

void set_gemm_bf16(bool on) {
  if (on) require_bf16("set_gemm_bf16");
  g_bf16.store(on, std::memory_order_relaxed);
}

const char* gemm_bf16_path() {
  if (!cpu_has_avx512_bf16()) return "unavailable";
#if TG_HAVE_BF16_CODE
  if (use_amx()) return "AMX";
#endif
  return "vdpbf16ps";
}

bool gemm_bf16_enabled() {
  return g_bf16.load(std::memory_order_relaxed) || g_bf16_emulated.load(std::memory_order_relaxed);
}

bool gemm_bf16_hardware() { return g_bf16.load(std::memory_order_relaxed); }

void set_gemm_bf16_emulated(bool on) { g_bf16_emulated.store(on, std::memory_order_relaxed); }
bool gemm_bf16_emulated() { return g_bf16_emulated.load(std::memory_order_relaxed); }

float round_bf16(float x) {
  const uint32_t u = uint32_t(bf16_bits(x)) << 16;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

namespace {
// Note [Emulated bf16]
// Without AVX512_BF16 (or to check a model's bf16 drift anywhere: `tapegrad oracle --dtype
// bf16`), the bf16 GEMM is emulated: op(A) and op(B) are rounded into float copies
// (round_bf16 on every element, Note [bf16 rounding]) and multiplied by the float GEMM.
// A product of two bf16 values is exact in float, so this is the same arithmetic as
// vdpbf16ps and the tiles of AMX up to the order of the float sum. It costs a copy of both
// operands per call and runs at the float GEMM's speed, no faster.
void gemm_bf16_by_rounding(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                           int64_t ldc) {
  // The copies keep the operands' layout: op(A) is (M,K), stored (K,M) when transA.
  const int64_t a_rows = transA ? K : M, a_cols = transA ? M : K;
  const int64_t b_rows = transB ? N : K, b_cols = transB ? K : N;
  static thread_local std::vector<float> a_copy, b_copy;
  a_copy.resize(std::size_t(a_rows * a_cols));
  b_copy.resize(std::size_t(b_rows * b_cols));
  for (int64_t r = 0; r < a_rows; ++r)
    for (int64_t c = 0; c < a_cols; ++c) a_copy[std::size_t(r * a_cols + c)] = round_bf16(A[r * lda + c]);
  for (int64_t r = 0; r < b_rows; ++r)
    for (int64_t c = 0; c < b_cols; ++c) b_copy[std::size_t(r * b_cols + c)] = round_bf16(B[r * ldb + c]);
  detail::gemm_float_kernel(transA, transB, M, N, K, alpha, a_copy.data(), a_cols, b_copy.data(), b_cols, beta, C,
                            ldc);
}
}  // namespace

void gemm_bf16(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc) {
  detail::check_gemm_args("gemm_bf16", transA, transB, M, N, K, A, lda, B, ldb, C, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.f) {  // C = beta * C, as gemm does
    gemm<float>(transA, transB, M, N, 0, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if (gemm_bf16_emulated()) {
    gemm_bf16_by_rounding(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  require_bf16("gemm_bf16");
#if TG_HAVE_BF16_CODE
  if (use_amx())
    bf16_loop_nest<AmxPath>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    bf16_loop_nest<Vdpbf16psPath>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

void gemm_bf16_naive(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                     const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                     float* C, int64_t ldc) {
  detail::check_gemm_args("gemm_bf16_naive", transA, transB, M, N, K, A, lda, B, ldb, C, ldc);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      float sum = 0.f;
      for (int64_t k = 0; k < K; ++k)
        sum += round_bf16(transA ? A[k * lda + m] : A[m * lda + k]) *
               round_bf16(transB ? B[n * ldb + k] : B[k * ldb + n]);
      float& c = C[m * ldc + n];
      c = beta == 0.f ? alpha * sum : alpha * sum + beta * c;
    }
}

}  // namespace tg::kernels
