// autograd/kernels/gemm.cpp — packed, cache-blocked, threaded GEMM and its twin.
//
// What it is for: the implementation behind gemm.hpp. The fast path is the
// Goto / BLIS loop nest, with the row-block loop turned into work items:
//
//   for jc in N step NC                  column block of C
//     pack B(:, jc:jc+NC), all k-slabs   NR-wide panels, shared, in L3
//     for item (ic block, jr range)      taken by threads from a counter
//       for pc in K step KC              k-slab; A(ic:ic+MC, pc:pc+KC) in L2
//         for jr in range step NR        one B micro-panel (KC x NR)
//           for ir in MC step MR         micro-kernel: C(MR,NR) += A(MR,KC) @ Bp(KC,NR)
//
// The micro-kernel keeps an MR x NR tile of C in vector registers
// (NR = NV * vector width) and does one broadcast of A and NV FMAs per row
// per k. B is packed. With AVX-512, A is read where it lies, through a row
// stride and a k stride, so both of its transpose cases cost nothing (Note
// [GEMM reads A in place]); with AVX2 (and SSE2) each block of A is packed
// first (Note [GEMM packs A on AVX2]). Edge tiles (M or N not a multiple of
// MR / NR) use zero-padded panels and a masked write-back.
//
// The naive twin (gemm_naive, gemm_batched_naive) is in gemm_naive.cpp, the argument
// checks both share in gemm_checks.hpp.
//
// What it is not: a tuner. Block sizes are constants chosen by measurement on
// the reference machines (see Note [GEMM block sizes]); the instruction set is
// the one this copy of the kernels is compiled for (a portable build loads the
// copy that matches the CPU: autograd/kernels/isa.hpp).
#include "autograd/kernels/gemm.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <cstring>
#include <type_traits>
#include <xsimd/xsimd.hpp>

#include "autograd/kernels/gemm_bf16.hpp"
#include "autograd/kernels/gemm_checks.hpp"
#include "autograd/kernels/gemm_skinny.hpp"
#include "autograd/kernels/gemm_team.hpp"
#include "autograd/kernels/parallel.hpp"

namespace tg::kernels {

// Note [GEMM block sizes]
// MR x NR is the register tile: MR rows of C, NR = NV vectors of columns.
// With AVX-512 (32 vector registers) the tile is 6 x 4 vectors: 24
// accumulators, 4 registers for the B row, one for the broadcast of A. (14 x 2,
// 12 x 2, 8 x 3 and 7 x 4 measured within noise of it; 6 rows waste the least
// on edge tiles.) With AVX2 (16 registers) the tile has 12 accumulators:
// 6 x 2 vectors for float, 4 x 3 for double (measured best of 6x2 / 4x3).
// KC = 256 (384 on AVX2) bounds the k-slab: the A block (MC x KC, 240 KiB in
// float) stays in L2 while the B micro-panels (KC x NR) stream through L1,
// and each C tile is loaded and stored once per slab. The packed B
// block (all of K x NC) is kept under B_budget elements (8 MiB), a share of
// the 32 MiB L3. The reference machine reports 48 KiB L1d and 1 MiB L2 per
// core (the design note says 32 KiB / 512 KiB); these sizes were measured
// there, all within a few percent of each other (KC 192..512, MC 168..480).
//
// Note [GEMM determinism]
// Every element of C is produced by one thread, by one work item, over the
// whole K range: the split is over blocks of rows and of column panels of C,
// never over K. Each element's arithmetic is fixed by the problem alone: the
// k-slabs are cut at multiples of KC, each slab is accumulated in k order in a
// register, C is updated once per slab in slab order, and edge tiles use the
// same arithmetic as full ones (std::fma == the vector FMA). Which thread takes
// which item (items are handed out dynamically) therefore changes nothing, so
// results are bitwise identical run to run and, in this implementation, also
// across thread counts.
//
// Note [GEMM reads A in place]
// The micro-kernel needs, at each k, the MR values op(A)(i..i+MR, k), one
// broadcast each. They can come from a packed panel or straight from A: with
// A stored (M,K) they are MR rows apart (row stride lda, k stride 1); with A
// stored (K,M), transA, they are adjacent (row stride 1, k stride lda). An
// MC x KC block of A is as cache-friendly in place as packed (whole cache
// lines in both layouts, and it is reused from L2 across the B panels), so
// the copy bought nothing, and it cost: packing A took 3-7% of the time of
// the products whose N is small against K (MLP-down forward 2048x384x1024,
// lm_head, the weight gradients), and 2 threads packed each A block twice
// when columns were split. Measured on the reference machine, reading in
// place moved those cases from 0.93-0.95 of OpenBLAS to 0.98-1.03 (bench_gemm,
// same run). Only a last panel of fewer than MR rows is copied, zero-padded,
// so that the micro-kernel never reads past the end of A. Each element still
// sees the same FMAs in the same order, so the bits do not change.
// With transA, each k of a panel is a new row of A, lda apart: the hardware
// prefetcher lags on that stride, so the micro-kernel prefetches the values 16
// k ahead (dW of the qkv projection, 1152x384x2048: 226 -> 252 GFLOP/s). Not
// when lda is a multiple of 4 KiB: then every row of the panel falls in the
// same L1 set, the prefetched lines evict the ones still in use, and it
// measured slower (dW of the MLP-up projection, 1024 x 384: 246 -> 228).
// (All of this was measured with AVX-512; for AVX2 see the next Note.)
//
// Note [GEMM packs A on AVX2]
// With AVX2 the micro-kernel has half the FMAs per broadcast of A (2 vectors
// per row instead of 4), so how A reaches it costs twice as much per flop, and
// reading in place lost: on a Zen 3 core (bench_gemm against OpenBLAS's
// Haswell kernels, 2026-12-07) the weight gradients (transposed A) ran at
// 0.75-0.95 of OpenBLAS, worst where A's rows are 4 KiB apart (MLP up dW,
// 0.74: each k of a panel falls in the same L1 set), and the squares at 0.89-
// 0.92. So on AVX2 every block of A is packed once per k-slab, MR-row panels
// k-major (the layout OpenBLAS and BLIS use), and the micro-kernel reads the
// packed panel with compile-time strides and its k loop unrolled by 4. The
// pack reads A in its own order: with transA each k is one contiguous row
// piece of mc values (copied MR at a time, the row 8 k ahead prefetched,
// since consecutive rows are lda apart and each 4 KiB page yields only mc
// values to this block); without, each panel is MR rows read side by side.
// Measured (same run, 3 alternating rounds each, one thread): MLP up dW 0.74
// -> 0.96, MLP down dW 0.81 -> 0.93, qkv dW 0.93 -> 0.95-1.03, o dW 0.94 ->
// 0.95, square 1024 0.92 -> 0.93-0.97. Each element still sees the same FMAs
// in the same order, so the bits do not change.
// The A block on AVX2 is 384 rows (MC = 6 x 64; 576 KiB at KC 384, in a 1 MiB
// L2), not 192: each packed B panel, which comes from L3 (the packed B of a
// K = 2048 product is 8 MiB), is then reused by 64 micro-kernels instead of 32,
// and the 384-row weight gradients run as one block. Measured on a Zen 4 core
// in the AVX2 build (2026-12-08, a harness alternating tapegrad and
// cblas_sgemm call by call, median of 40 paired ratios, four rounds): MLP down
// dW 0.906-0.926 -> 0.934-0.948, o dW 0.94 -> 0.97, square 2048 0.93-0.95 ->
// 0.95-0.97, the rest within noise. (On a CPU with a 512 KiB L2, Zen 3, the
// block does not fit in L2; not measured there.) The last panel of a block,
// when it has 1-4 rows (M = 64, 1024, 2048), is computed by a 4-row kernel.
// Not the cause, measured the same day: prefetching C's tile (its load latency
// shows in the profile's epilogue, but hiding it changed nothing), a smaller
// packed B (NC 256 or 512 at K 2048: A is repacked per column block, worse),
// the short last k-slab (K 1920 against 2048), C's 4 KiB row stride. C's
// alignment does count: 64-byte aligned C ran MLP down dW at 0.91 of OpenBLAS,
// C 16 bytes past a page (a large std::vector's or xtensor's data) at 0.87.

// Note [GEMM packs B as it goes]
// B is packed first, all of its K x NC block, by all threads together, and then
// read back by each item: the work is shared, and no item waits for another.
// But when one thread computes one block of rows (M <= 384 on AVX2: the weight
// gradients of the o, MLP-down and lm_head projections), each packed panel is
// used by that block only, and it is packed just before its micro-kernels use
// it, a group of four panels at a time, so it is read back from L1 / L2 at once
// instead of from L3 or memory once the whole block is packed (8 MiB for the
// K = 2048 weight gradients). The packed values are the same, so the bits are.
// Measured on a Zen 4 core, AVX2 build, median of 40 paired calls against
// cblas_sgemm, three rounds: MLP down dW 0.926-0.936 -> 0.957-0.963. Where
// later blocks of rows read the panels back anyway it bought nothing (square
// 2048 measured 0-3% slower: the packing evicts the first block's A from L2),
// nor with AVX-512 (A read in place), so it is used only on AVX2 (and the
// other packed-A paths: SSE2, NEON) with one item.

namespace {

using std::int64_t;
using namespace gemm_detail;  // buffers, waits and the team runner (gemm_team.hpp)

template <class T>
struct Blocking;

#if defined(__AVX512F__)
template <>
struct Blocking<float> {
  static constexpr int MR = 6, NV = 4;  // 6 x 64 tile, 24 zmm accumulators
  static constexpr int64_t KC = 256, MC = 6 * 40, B_budget = int64_t(2) << 20;
};
template <>
struct Blocking<double> {
  static constexpr int MR = 6, NV = 4;  // 6 x 32 tile
  static constexpr int64_t KC = 256, MC = 6 * 20, B_budget = int64_t(1) << 20;
};
#else
template <>
struct Blocking<float> {
  static constexpr int MR = 6, NV = 2;  // 6 x 16 tile, 12 ymm accumulators
  static constexpr int64_t KC = 384, MC = 6 * 64, B_budget = int64_t(2) << 20;
};
template <>
struct Blocking<double> {
  static constexpr int MR = 4, NV = 3;  // 4 x 12 tile
  static constexpr int64_t KC = 384, MC = 4 * 24, B_budget = int64_t(1) << 20;
};
#endif
// Whether blocks of A are packed (Note [GEMM packs A on AVX2]) or read in place
// (Note [GEMM reads A in place]).
#if defined(__AVX512F__)
constexpr bool kPackA = false;
#else
constexpr bool kPackA = true;
#endif

// Below this many flops (2*M*N*K) one thread is used. On a quiet machine with
// a warm team two threads still win at 48^3 (measured), but on a busy one a
// team whose other thread is descheduled or shares the core costs a scheduler
// tick (4 ms, measured) per call, which such a small call cannot afford.
constexpr double kParallelMinFlops = 2.0 * 96 * 96 * 96;


// ---- packing ------------------------------------------------------------------
// The last, short panel of a block of A: rows [i0, i0+rows) of op(A), rows < MR,
// over k in [pc, pc+kc), copied k-major and zero-padded to MR rows:
// Ap[k*MR + i] = op(A)(i0 + i, pc + k). Full panels are read in place (Note
// [GEMM reads A in place]); this copy keeps the micro-kernel inside A.
template <class T, int MR>
void pack_A_edge(bool transA, const T* A, int64_t lda, int64_t i0, int64_t rows, int64_t pc,
                 int64_t kc, T* Ap) {
  for (int64_t k = 0; k < kc; ++k) {
    for (int64_t i = 0; i < rows; ++i)
      Ap[k * MR + i] = transA ? A[(pc + k) * lda + i0 + i] : A[(i0 + i) * lda + pc + k];
    for (int64_t i = rows; i < MR; ++i) Ap[k * MR + i] = T(0);
  }
}

// A whole block of A, packed (Note [GEMM packs A on AVX2]): rows [ic, ic+mc) of
// op(A) over k in [pc, pc+kc), as ceil(mc/MR) panels of MR rows, each k-major:
// Ap[p*MR*kc + k*MR + i] = op(A)(ic + p*MR + i, pc + k); rows past mc are zero.
template <class T, int MR>
void pack_A_block(bool transA, const T* A, int64_t lda, int64_t ic, int64_t mc, int64_t pc,
                  int64_t kc, T* Ap) {
  const int64_t full = mc / MR, rest = mc % MR;
  if (transA) {  // op(A)(i, k) = A[k*lda + i]: row k of A holds mc adjacent values
    constexpr int64_t kAhead = 8, kLine = 64 / int64_t(sizeof(T));
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = A + (pc + k) * lda + ic;
      if (k + kAhead < kc)
        for (int64_t i = 0; i < mc; i += kLine) __builtin_prefetch(src + kAhead * lda + i);
      T* dst = Ap + k * MR;
      for (int64_t p = 0; p < full; ++p) std::memcpy(dst + p * MR * kc, src + p * MR, MR * sizeof(T));
      if (rest > 0) {
        T* d = dst + full * MR * kc;
        for (int64_t i = 0; i < MR; ++i) d[i] = i < rest ? src[full * MR + i] : T(0);
      }
    }
  } else {  // op(A)(i, k) = A[i*lda + k]: MR rows read side by side
    for (int64_t p = 0; p * MR < mc; ++p) {
      const int64_t rows = std::min<int64_t>(MR, mc - p * MR);
      const T* src = A + (ic + p * MR) * lda + pc;
      T* dst = Ap + p * MR * kc;
      if (rows == MR) {
        for (int64_t k = 0; k < kc; ++k)
#pragma GCC unroll 8
          for (int i = 0; i < MR; ++i) dst[k * MR + i] = src[i * lda + k];
      } else {
        for (int64_t k = 0; k < kc; ++k)
          for (int64_t i = 0; i < MR; ++i) dst[k * MR + i] = i < rows ? src[i * lda + k] : T(0);
      }
    }
  }
}

// A panel q of the packed B block holds columns [q*NR, q*NR+NR) of op(B):
// Bp[q*NR*kc + k*NR + j] = op(B)(pc + k, jc + q*NR + j). Columns past the end
// are zero. Packs panels [q0, q1) only (threads share the work).
template <class T, int NR>
void pack_B(bool transB, const T* B, int64_t ldb, int64_t jc, int64_t nc, int64_t pc,
            int64_t kc, int64_t q0, int64_t q1, T* Bp) {
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t cols = std::min<int64_t>(NR, nc - q * NR);
    T* dst = Bp + q * NR * kc;
    const int64_t j0 = jc + q * NR;
    if (!transB) {
      // op(B)(k,j) = B[k*ldb + j]: NR contiguous values per k.
      const T* src = B + pc * ldb + j0;
      if (cols == NR) {
        for (int64_t k = 0; k < kc; ++k) {
#pragma GCC unroll 8
          for (int j = 0; j < NR; ++j) dst[k * NR + j] = src[k * ldb + j];
        }
      } else {
        for (int64_t k = 0; k < kc; ++k) {
          for (int j = 0; j < cols; ++j) dst[k * NR + j] = src[k * ldb + j];
          for (int j = static_cast<int>(cols); j < NR; ++j) dst[k * NR + j] = T(0);
        }
      }
    } else {
      // op(B)(k,j) = B[j*ldb + k]: gather NR rows of the stored B.
      const T* src = B + j0 * ldb + pc;
      if (cols < NR) {
        for (int64_t k = 0; k < kc; ++k)
          for (int j = static_cast<int>(cols); j < NR; ++j) dst[k * NR + j] = T(0);
      }
      for (int j = 0; j < cols; ++j) {
        const T* s = src + j * ldb;
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = s[k];
      }
    }
  }
}

// B panels packed as they are first used (one thread; Note [GEMM packs B as it
// goes]): before the macro-kernel's panel q, when q starts a group of four,
// panels [q, q+4) of this k-slab are packed into Bp (the slab's panels).
template <class T, int NR>
struct PackBAsItGoes {
  bool transB;
  const T* B;
  int64_t ldb, jc, nc, pc, kc, n_panels;
  T* Bp;
  void before_panel(int64_t q) const {
    if (q % 4 == 0) pack_B<T, NR>(transB, B, ldb, jc, nc, pc, kc, q, std::min(n_panels, q + 4), Bp);
  }
};

// ---- micro-kernel -----------------------------------------------------------
// c(MR, NR) = alpha * a(MR,kc) @ Bp(kc,NR) + beta * c; beta == 0 overwrites.
// a(i, k) is a[i*rsa + k*csa]: A in place, or a packed edge panel (rsa 1, csa MR).
// When `full` is false only the top-left rows x cols corner is written.
// NVS is the packed panel's width in vectors; NV < NVS computes only its first NV
// vectors of columns (the last, narrow panel of a matrix: 6 columns need not pay
// for 64). Each element sees the same FMAs in the same order either way.
// Prefetch: fetch the A values kPrefetchK steps of k ahead (used with transA;
// Note [GEMM reads A in place]). Packed: a is a packed panel (rsa 1, csa PS,
// known here, and the k loop unrolled by 4; Note [GEMM packs A on AVX2]); PS is
// the panel's height, which is MR except in the last panel of a block, where
// an MR < PS kernel computes only the rows that exist.
// Never inlined: inlined into the driver (GCC did, once the macro-kernel took one
// more argument) its accumulators spilled to the stack, at half the speed.
constexpr int64_t kPrefetchK = 16;
template <class T, int MR, int NV, int NVS = NV, bool Prefetch = false, bool Packed = false,
          int PS = MR>
[[gnu::noinline]] void micro_kernel(int64_t kc, const T* __restrict a, int64_t rsa_in, int64_t csa_in,
                         const T* __restrict b, T* c, int64_t ldc, T alpha, T beta, int64_t rows,
                         int64_t cols, bool full) {
  using V = xsimd::batch<T>;
  constexpr int W = static_cast<int>(V::size);
  const int64_t rsa = Packed ? 1 : rsa_in, csa = Packed ? PS : csa_in;
  V acc[MR][NV];
#pragma GCC unroll 64
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 64
    for (int v = 0; v < NV; ++v) acc[i][v] = V(T(0));

  auto step = [&] {  // acc += a(:, k) * b(k, :), then on to k + 1
    if constexpr (Prefetch) __builtin_prefetch(a + kPrefetchK * csa);
    V bv[NV];
#pragma GCC unroll 64
    for (int v = 0; v < NV; ++v) bv[v] = V::load_aligned(b + v * W);
#pragma GCC unroll 64
    for (int i = 0; i < MR; ++i) {
      const V av(a[i * rsa]);
#pragma GCC unroll 64
      for (int v = 0; v < NV; ++v) acc[i][v] = xsimd::fma(av, bv[v], acc[i][v]);
    }
    a += csa;
    b += NVS * W;
  };
  if constexpr (Packed) {
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) step();
  } else {
    for (int64_t k = 0; k < kc; ++k) step();
  }

  const V valpha(alpha);
  if (full) {
    if (beta == T(0)) {
#pragma GCC unroll 64
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 64
        for (int v = 0; v < NV; ++v) (valpha * acc[i][v]).store_unaligned(c + i * ldc + v * W);
    } else {
      const V vbeta(beta);
#pragma GCC unroll 64
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 64
        for (int v = 0; v < NV; ++v) {
          T* p = c + i * ldc + v * W;
          xsimd::fma(valpha, acc[i][v], vbeta * V::load_unaligned(p)).store_unaligned(p);
        }
    }
  } else {
    alignas(kAlign) T tile[MR][NV * W];
#pragma GCC unroll 64
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 64
      for (int v = 0; v < NV; ++v) acc[i][v].store_aligned(&tile[i][v * W]);
    for (int64_t i = 0; i < rows; ++i) {
      T* p = c + i * ldc;
      if (beta == T(0)) {
        for (int64_t j = 0; j < cols; ++j) p[j] = alpha * tile[i][j];
      } else {
        for (int64_t j = 0; j < cols; ++j) p[j] = std::fma(alpha, tile[i][j], beta * p[j]);
      }
    }
  }
}

// ---- macro-kernel: one block of A against a range of packed B panels ----------
// The block is op(A)(ic:ic+mc, pc:pc+kc). With kPackA it is packed whole into
// `scratch` (ceil(mc/MR)*MR x kc); otherwise it is read in place from A, and
// only a last panel of fewer than MR rows is copied to `scratch` (MR x kc).
template <class T, int NR>
void macro_kernel_packed(bool transA, const T* A, int64_t lda, int64_t ic, int64_t mc, int64_t pc,
                         int64_t kc, T* scratch, const T* Bp, int64_t q0, int64_t q1, int64_t nc,
                         T* C, int64_t ldc, T alpha, T beta, const PackBAsItGoes<T, NR>* lazy_b) {
  constexpr int MR = Blocking<T>::MR;
  constexpr int NV = Blocking<T>::NV;
  constexpr int W = static_cast<int>(xsimd::batch<T>::size);
  static_assert(NR == NV * W);
  pack_A_block<T, MR>(transA, A, lda, ic, mc, pc, kc, scratch);
  for (int64_t q = q0; q < q1; ++q) {
    if (lazy_b) lazy_b->before_panel(q);
    const int64_t cols = std::min<int64_t>(NR, nc - q * NR);
    const T* b = Bp + q * NR * kc;
    for (int64_t p = 0; p * MR < mc; ++p) {
      const int64_t rows = std::min<int64_t>(MR, mc - p * MR);
      const T* a = scratch + p * MR * kc;
      T* c = C + p * MR * ldc + q * NR;
      // The kernel for `R` rows of this panel. The last panel of a block may be
      // short (4 or 2 of 6 rows: M = 64, 1024, 128, 2048); a 4-row kernel does
      // not multiply two of the zero rows, and with 4 rows it writes C directly
      // instead of through the tile. (A 2-row kernel's 4 accumulators cannot hide
      // the FMA latency: measured slower than the 6-row one at M = 128.)
      auto rows_kernel = [&]<int R>() {
        if (cols > NR - W)
          micro_kernel<T, R, NV, NV, false, true, MR>(kc, a, 1, MR, b, c, ldc, alpha, beta, rows,
                                                      cols, rows == R && cols == NR);
        else if (cols <= W)
          micro_kernel<T, R, 1, NV, false, true, MR>(kc, a, 1, MR, b, c, ldc, alpha, beta, rows,
                                                     cols, false);
        else if (cols <= 2 * W)
          micro_kernel<T, R, (NV >= 2 ? 2 : NV), NV, false, true, MR>(kc, a, 1, MR, b, c, ldc, alpha,
                                                                      beta, rows, cols, false);
        else
          micro_kernel<T, R, (NV >= 3 ? 3 : NV), NV, false, true, MR>(kc, a, 1, MR, b, c, ldc, alpha,
                                                                      beta, rows, cols, false);
      };
      if (rows == MR || MR <= 4 || rows > 4)
        rows_kernel.template operator()<MR>();
      else
        rows_kernel.template operator()<4>();
    }
  }
}

template <class T, int NR>
void macro_kernel(bool transA, const T* A, int64_t lda, int64_t ic, int64_t mc, int64_t pc,
                  int64_t kc, T* edge, const T* Bp, int64_t q0, int64_t q1, int64_t nc, T* C,
                  int64_t ldc, T alpha, T beta, const PackBAsItGoes<T, NR>* lazy_b) {
  if constexpr (kPackA) {
    macro_kernel_packed<T, NR>(transA, A, lda, ic, mc, pc, kc, edge, Bp, q0, q1, nc, C, ldc, alpha,
                               beta, lazy_b);
    return;
  }
  constexpr int MR = Blocking<T>::MR;
  constexpr int NV = Blocking<T>::NV;
  constexpr int W = static_cast<int>(xsimd::batch<T>::size);
  static_assert(NR == NV * W);
  // op(A)(i, k) = A[i*rsa + k*csa].
  const int64_t rsa = transA ? 1 : lda, csa = transA ? lda : 1;
  const bool prefetch = transA && (lda * int64_t(sizeof(T))) % 4096 != 0;
  const int64_t full_panels = mc / MR, edge_rows = mc % MR;
  if (edge_rows > 0) pack_A_edge<T, MR>(transA, A, lda, ic + full_panels * MR, edge_rows, pc, kc, edge);
  for (int64_t q = q0; q < q1; ++q) {
    if (lazy_b) lazy_b->before_panel(q);
    const int64_t cols = std::min<int64_t>(NR, nc - q * NR);
    const T* b = Bp + q * NR * kc;
    for (int64_t p = 0; p * MR < mc; ++p) {
      const bool is_edge = p == full_panels;
      const int64_t rows = is_edge ? edge_rows : MR;
      const T* a = is_edge ? edge : A + (ic + p * MR) * rsa + pc * csa;
      const int64_t ra = is_edge ? 1 : rsa, ca = is_edge ? MR : csa;
      T* c = C + p * MR * ldc + q * NR;
      if (cols > NR - W) {
        if (prefetch && !is_edge)
          micro_kernel<T, MR, NV, NV, true>(kc, a, ra, ca, b, c, ldc, alpha, beta, rows, cols,
                                            rows == MR && cols == NR);
        else
          micro_kernel<T, MR, NV>(kc, a, ra, ca, b, c, ldc, alpha, beta, rows, cols,
                                  rows == MR && cols == NR);
      } else if (cols <= W) {
        micro_kernel<T, MR, 1, NV>(kc, a, ra, ca, b, c, ldc, alpha, beta, rows, cols, false);
      } else if (cols <= 2 * W) {
        micro_kernel<T, MR, (NV >= 2 ? 2 : NV), NV>(kc, a, ra, ca, b, c, ldc, alpha, beta, rows,
                                                    cols, false);
      } else {
        micro_kernel<T, MR, (NV >= 3 ? 3 : NV), NV>(kc, a, ra, ca, b, c, ldc, alpha, beta, rows,
                                                    cols, false);
      }
    }
  }
}

// C = beta * C (beta == 0: zero, ignoring old contents).
template <class T>
void scale_C(int64_t M, int64_t N, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    T* p = C + i * ldc;
    if (beta == T(0))
      std::fill(p, p + N, T(0));
    else if (beta != T(1))
      for (int64_t j = 0; j < N; ++j) p[j] *= beta;
  }
}

// ---- skinny products: at most kSkinnyM rows of C (gemm_skinny.cpp) ----------------

// Splits [0, n) into `parts` nearly equal contiguous ranges; returns range i.
inline void split_range(int64_t n, int64_t parts, int64_t i, int64_t& lo, int64_t& hi) {
  lo = n * i / parts;
  hi = n * (i + 1) / parts;
}

// The driver. nt is the number of threads to use (1: no parallel region).
//
// Work is cut into items: (block of MR panels of C rows) x (range of NR panels
// of C columns). Threads take items from a shared counter (dynamic, so a
// thread descheduled by another process does not hold the others back), and
// each item is computed by one thread over the whole K range, so which thread
// takes which item changes nothing in the result (Note [GEMM determinism]).
// B is packed once per NC column block, for all of K, by all threads together
// (pack items from another counter); a thread starts its compute items as
// soon as the last B item is packed, without waiting for the others to
// arrive. Threads meet only before B is repacked for the next column block.
template <class T>
void gemm_driver(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                 int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc, int nt) {
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == T(0)) {
    scale_C(M, N, beta, C, ldc);
    return;
  }
  if (M <= kSkinnyM) {  // Note [GEMM skinny products]
    gemm_skinny(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nt);
    return;
  }
  constexpr int MR = Blocking<T>::MR;
  constexpr int NR = Blocking<T>::NV * static_cast<int>(xsimd::batch<T>::size);
  constexpr int64_t KC = Blocking<T>::KC;
  constexpr int64_t MC_panels = Blocking<T>::MC / MR;

  if (2.0 * double(M) * double(N) * double(K) < kParallelMinFlops) nt = 1;

  // Column blocks: the packed B block (all of K x NC) stays within the budget.
  const int64_t nc_budget = std::max<int64_t>(NR, Blocking<T>::B_budget / K / NR * NR);
  const int64_t NC = std::min<int64_t>(nc_budget, ceil_div(N, NR) * NR);
  const int64_t n_slabs = ceil_div(K, KC);
  const int64_t kc_max = std::min<int64_t>(KC, K);
  T* Bp = buffer_B<T>(std::size_t(NC * n_slabs * kc_max));

  // Items: mb row blocks x nb column chunks (per column block). Row blocks
  // stay near MC tall (each B micro-panel is reused by mc/MR micro-kernels, so
  // short blocks would stream B from L3 too often); with several threads the
  // item count is made a multiple of the thread count, and columns are cut
  // too until there are at least 2 items per thread (more, smaller items
  // measured slower: each reloads its A block into L2).
  const int64_t m_panels = ceil_div(M, MR);
  int64_t mb = ceil_div(m_panels, MC_panels);
  if (nt > 1 && mb % nt != 0 && mb < 8 * int64_t(nt)) mb = std::min(m_panels, ceil_div(mb, nt) * nt);
  const bool lazy = kPackA && nt == 1 && mb == 1;  // Note [GEMM packs B as it goes]

  // Shared counters, four per column block (B items claimed, B items done,
  // compute items claimed, threads done with the block), never reset.
  const int64_t n_jc = ceil_div(N, NC);
  std::unique_ptr<std::atomic<int64_t>[]> counters(new std::atomic<int64_t>[4 * n_jc]);
  for (int64_t i = 0; i < 4 * n_jc; ++i) counters[i].store(0, std::memory_order_relaxed);

  auto body = [&](int team) {
    T* edge = buffer_A<T>(std::size_t((kPackA ? MC_panels : 1) * MR * kc_max));  // macro_kernel's scratch
    for (int64_t jb = 0; jb < n_jc; ++jb) {
      const int64_t jc = jb * NC, nc = std::min<int64_t>(NC, N - jc);
      const int64_t n_panels = ceil_div(nc, NR);
      std::atomic<int64_t>& b_claim = counters[4 * jb];
      std::atomic<int64_t>& b_done = counters[4 * jb + 1];
      std::atomic<int64_t>& c_claim = counters[4 * jb + 2];
      std::atomic<int64_t>& left = counters[4 * jb + 3];
      // 1. pack B(:, jc:jc+nc): items are (slab, group of 4 panels). One
      // thread packs them as it goes instead (Note [GEMM packs B as it goes]).
      const int64_t groups = ceil_div(n_panels, 4);
      const int64_t b_items = lazy ? 0 : n_slabs * groups;
      for (;;) {
        const int64_t it = b_claim.fetch_add(1, std::memory_order_relaxed);
        if (it >= b_items) break;
        const int64_t s = it / groups, g = it % groups;
        const int64_t pc = s * KC, kc = std::min<int64_t>(KC, K - pc);
        pack_B<T, NR>(transB, B, ldb, jc, nc, pc, kc, 4 * g, std::min<int64_t>(n_panels, 4 * g + 4),
                      Bp + s * kc_max * NC);
        b_done.fetch_add(1, std::memory_order_release);
      }
      // Wait until every B item is packed. Not a barrier: a thread that has
      // not arrived yet (descheduled by another process) holds nobody up.
      wait_until([&] { return b_done.load(std::memory_order_acquire) >= b_items; });
      // 2. compute items.
      int64_t nb = 1;
      if (nt > 1 && mb < 2 * int64_t(nt))
        nb = std::min<int64_t>(n_panels, ceil_div(2 * int64_t(nt), mb));
      for (;;) {
        const int64_t it = c_claim.fetch_add(1, std::memory_order_relaxed);
        if (it >= mb * nb) break;
        int64_t p0, p1, q0, q1;
        split_range(m_panels, mb, it / nb, p0, p1);
        split_range(n_panels, nb, it % nb, q0, q1);
        const int64_t ic = p0 * MR, mc = std::min<int64_t>(M, p1 * MR) - ic;
        if (mc <= 0 || q1 <= q0) continue;
        for (int64_t s = 0; s < n_slabs; ++s) {
          const int64_t pc = s * KC, kc = std::min<int64_t>(KC, K - pc);
          T* Bs = Bp + s * kc_max * NC;
          // lazy: one thread, one item, which covers every panel and packs them.
          const PackBAsItGoes<T, NR> lazy_b{transB, B, ldb, jc, nc, pc, kc, n_panels, Bs};
          macro_kernel<T, NR>(transA, A, lda, ic, mc, pc, kc, edge, Bs, q0, q1, nc,
                              C + ic * ldc + jc, ldc, alpha, s == 0 ? beta : T(1),
                              lazy && it == 0 ? &lazy_b : nullptr);
        }
      }
      // The next column block repacks B: everyone must be done with this one.
      if (team > 1 && jb + 1 < n_jc) {
        left.fetch_add(1, std::memory_order_acq_rel);
        wait_until([&] { return left.load(std::memory_order_acquire) >= team; });
      }
    }
  };

  run_team(nt, body);
}

int threads_here() {
  return omp_in_parallel() ? 1 : threads_to_use(std::max(1, tg::num_threads()));
}

}  // namespace

namespace detail {
void check_gemm_args(const char* name, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
                     const float* A, int64_t lda, const float* B, int64_t ldb, const float* C,
                     int64_t ldc) {
  check_args(name, transA, transB, M, N, K, A, lda, B, ldb, C, ldc);
}
// The float GEMM whatever the bf16 mode (emulated bf16 multiplies its rounded copies here).
void gemm_float_kernel(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                       int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_driver(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, threads_here());
}
}  // namespace detail

// ---- public entry points ----------------------------------------------------------
// In the bf16 mode (gemm_bf16.hpp) the float entry points hand over to gemm_bf16 and its
// twin, so ReferenceKernels still switches between a fast kernel and its naive twin.

template <class T>
void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>)
    if (gemm_bf16_enabled() && K > 0) return gemm_bf16(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  check_args("gemm", transA, transB, M, N, K, A, lda, B, ldb, C, ldc);
  gemm_driver(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, threads_here());
}

template <class T>
void gemm_batched(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha,
                  const T* A, int64_t lda, int64_t strideA, const T* B, int64_t ldb,
                  int64_t strideB, T beta, T* C, int64_t ldc, int64_t strideC, int64_t batch) {
  check_batched("gemm_batched", transA, transB, M, N, K, A, lda, strideA, B, ldb, strideB, C, ldc,
                strideC, batch);
  if constexpr (std::is_same_v<T, float>)
    if (gemm_bf16_enabled() && K > 0) {  // each entry threaded inside
      for (int64_t b = 0; b < batch; ++b)
        gemm_bf16(transA, transB, M, N, K, alpha, A + b * strideA, lda, B + b * strideB, ldb, beta,
                  C + b * strideC, ldc);
      return;
    }
  const int nt = threads_here();
  // Whole GEMMs per thread when the batch splits evenly enough; otherwise
  // (few or uneven entries of a big GEMM) thread inside each GEMM.
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const bool over_batch = nt > 1 && batch >= nt &&
                          (batch % nt == 0 || batch >= 4 * int64_t(nt) ||
                           flops < 4 * kParallelMinFlops);
  if (over_batch) {
    // Each thread runs whole GEMMs, single-threaded, on its own packing
    // buffers, taking entries from a shared counter (an entry's result does
    // not depend on which thread computes it).
    std::atomic<int64_t> next{0};
    run_team(nt, [&](int) {
      for (int64_t b; (b = next.fetch_add(1, std::memory_order_relaxed)) < batch;)
        gemm_driver(transA, transB, M, N, K, alpha, A + b * strideA, lda, B + b * strideB, ldb,
                    beta, C + b * strideC, ldc, 1);
    });
  } else {
    for (int64_t b = 0; b < batch; ++b)
      gemm_driver(transA, transB, M, N, K, alpha, A + b * strideA, lda, B + b * strideB, ldb, beta,
                  C + b * strideC, ldc, nt);
  }
}

#define TG_GEMM_INSTANTIATE(T)                                                                   \
  template void gemm<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*,   \
                        int64_t, T, T*, int64_t);                                                \
  template void gemm_batched<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t,     \
                                int64_t, const T*, int64_t, int64_t, T, T*, int64_t, int64_t,    \
                                int64_t);

TG_GEMM_INSTANTIATE(float)
TG_GEMM_INSTANTIATE(double)

#undef TG_GEMM_INSTANTIATE

}  // namespace tg::kernels
