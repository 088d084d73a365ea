// autograd/kernels/attention_tiles.hpp — the pieces the flash attention kernels are
// built from (private to attention.cpp and attention_naive.cpp; not installed for users).
//
// What it is for: the argument checks, the operands of one call with their row
// addressing (Attn), the per-thread scratch (Workspace), the register-tiled xsimd tile
// products (tile_abt, tile_ab_acc) with the epilogues that fuse scale, exp and the
// softmax backward into them, and the row helpers of the online softmax. Read
// Note [Flash attention tiling] in attention.cpp first.
//
// What it is not: a kernel. The loops over blocks and tiles are in attention.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "autograd/kernels/attention.hpp"
#include "autograd/kernels/simd.hpp"

namespace tg::kernels::attention_detail {

inline constexpr int64_t kBq = 64;  // query rows per block
inline constexpr int64_t kBk = 64;  // key rows per tile; also the leading dim of tiles and panels

template <class T>
using batch = xsimd::batch<T>;
template <class T>
inline constexpr int64_t kW = static_cast<int64_t>(batch<T>::size);
static_assert(kBk % kW<float> == 0 && kBk % kW<double> == 0, "key tiles must be whole SIMD vectors");

template <class T>
constexpr T neg_inf() { return -std::numeric_limits<T>::infinity(); }

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// ---- argument checks --------------------------------------------------------

inline std::string dims_str(const AttnDims& d) {
  std::ostringstream s;
  s << "B=" << d.B << " H=" << d.H << " Hkv=" << d.Hkv << " Tq=" << d.Tq << " Tk=" << d.Tk
    << " D=" << d.D;
  return s.str();
}

inline void check_dims(const char* who, const AttnDims& d) {
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument(std::string(who) + ": " + why + " (" + dims_str(d) + ")");
  };
  if (d.B < 1 || d.H < 1 || d.Hkv < 1 || d.Tq < 1 || d.Tk < 1 || d.D < 1)
    fail("every dimension must be >= 1");
  if (d.H % d.Hkv != 0) fail("query heads H must be a multiple of kv heads Hkv");
  if (d.Tq > d.Tk) fail("query positions Tq must not exceed key positions Tk");
}

inline void check_ptrs(const char* who, std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p == nullptr) throw std::invalid_argument(std::string(who) + ": null pointer argument");
}

// ---- the operands of one call, with row addressing ---------------------------

// How a float call treats bf16 (Note [bf16 attention] in attention.cpp): off; emulated
// (q, k, v, dout replaced by rounded float copies, the P and dS tiles rounded in place,
// the float tile products); pairs (the same roundings, products by vdpbf16ps on pairs).
enum class Bf16Mode { off, emulated, pairs };

template <class T>
struct Attn {
  AttnDims d;
  T scale;
  int64_t group;  // H / Hkv query heads per kv head
  int64_t off;    // Tk - Tq: absolute position of query row 0
  const T *q, *k, *v, *out, *dout, *lse, *Di;
  AttnStrides qs, ks, vs, os, dos;
  T *dq, *dk, *dv;
  AttnStrides dqs, dks, dvs;
  Bf16Mode bf16 = Bf16Mode::off;  // Note [bf16 attention] in attention.cpp

  // Row pointers: head h is a query head, g a kv head.
  static int64_t at(AttnStrides s, int64_t b, int64_t h, int64_t t) { return b * s.b + h * s.h + t * s.t; }
  const T* qrow(int64_t b, int64_t h, int64_t i) const { return q + at(qs, b, h, i); }
  const T* krow(int64_t b, int64_t g, int64_t j) const { return k + at(ks, b, g, j); }
  const T* vrow(int64_t b, int64_t g, int64_t j) const { return v + at(vs, b, g, j); }
  int64_t row_index(int64_t b, int64_t h, int64_t i) const { return (b * d.H + h) * d.Tq + i; }
  // Number of keys of the tile [j0, j0+nk) that query row i sees.
  int64_t visible(int64_t i, int64_t j0, int64_t nk) const {
    return std::clamp<int64_t>(off + i - j0 + 1, 0, nk);
  }
};

// The extra scratch of Bf16Mode::pairs (Note [bf16 attention]), per thread. Every array
// holds pairs (D2 = D / 2). Panels as in Workspace: Kt2, Vt2 (D2, kBk) per key tile (pairs
// along d), made through rows2 (kBk, D2); pair rows: Kr2, Vr2 (kBk/2, D) per key tile;
// tiles: P2, dS2 (kBq, kBk/2) (pairs along j), PT2, dST2 (kBq/2, kBk) (pairs along i, the
// transposed tiles). Q2 points at the current query block's rows as pairs (kBq, D2): in
// the forward at Q2f, in the backward at a slot of the query-side cache, which keeps for
// every query block of the kv head's group its rows of q and dout as pairs (Q2c, dO2c,
// kBq x D2 each) and as pair rows (Qr2c, dOr2c, kBq/2 x D), tagged with the block,
// since the backward visits each block once per key tile.
struct PairWorkspace {
  std::vector<float> Kt2, Vt2, rows2, Kr2, Vr2, Q2f, P2, dS2, PT2, dST2;
  std::vector<float> Q2c, dO2c, Qr2c, dOr2c;
  std::vector<int64_t> kt2tag, vt2tag, kr2tag, vr2tag, qtag;
  int64_t nqb = 0, qslot = 0;  // query blocks per head; the current block's cache slot
  const float* Q2 = nullptr;
  PairWorkspace(const AttnDims& d, bool backward) {
    const int64_t D = d.D, nt = (d.Tk + kBk - 1) / kBk, D2 = (D + 1) / 2;
    Kt2.resize(nt * D2 * kBk), kt2tag.assign(nt, -1), rows2.resize(kBk * D2);
    P2.resize(kBq * kBk / 2);
    if (!backward) {
      Q2f.resize(kBq * D2), Vr2.resize(nt * kBk / 2 * D), vr2tag.assign(nt, -1);
      return;
    }
    Vt2.resize(nt * D2 * kBk), vt2tag.assign(nt, -1);
    Kr2.resize(nt * kBk / 2 * D), kr2tag.assign(nt, -1);
    dS2.resize(kBq * kBk / 2), PT2.resize(kBq / 2 * kBk), dST2.resize(kBq / 2 * kBk);
    nqb = (d.Tq + kBq - 1) / kBq;
    const int64_t slots = d.H / d.Hkv * nqb;
    Q2c.resize(slots * kBq * D2), dO2c.resize(slots * kBq * D2);
    Qr2c.resize(slots * kBq / 2 * D), dOr2c.resize(slots * kBq / 2 * D), qtag.assign(slots, -1);
  }
};

// Per-thread scratch, allocated once per call inside the parallel region.
// The key and value panels hold every key tile of one kv head, packed on first
// use and tagged with the (b, g) they hold, so a thread that handles several
// query blocks or query heads of the same kv head packs each tile once
// (Note [Flash attention tiling]).
template <class T>
struct Workspace {
  int64_t D, ntiles;
  std::vector<T> Kt, Vt;           // ntiles (D, kBk) panels: Kt[kt*D*kBk + d*kBk + j] = k[kt*kBk+j, d]
  std::vector<int64_t> ktag, vtag;  // b*Hkv + g held by each panel, -1 = none
  std::vector<T> S, dP;            // (kBq, kBk) tiles
  std::vector<T> acc;              // (kBq, D) forward accumulator
  std::vector<T> m, alpha;         // (kBq) running max, per-tile rescale factor
  std::vector<T> l;                // (kBq, W) running sum, one partial per vector lane
  std::optional<PairWorkspace> pairs;  // Bf16Mode::pairs only (then Kt, Vt stay unused)
  Workspace(int64_t D_, int64_t Tk, bool backward, const AttnDims* with_pairs = nullptr)
      : D(D_), ntiles((Tk + kBk - 1) / kBk), Kt(with_pairs ? 0 : ntiles * D * kBk),
        Vt(backward && !with_pairs ? ntiles * D * kBk : 0), ktag(ntiles, -1), vtag(backward ? ntiles : 0, -1),
        S(kBq * kBk), dP(backward ? kBq * kBk : 0), acc(backward ? 0 : kBq * D), m(kBq), alpha(kBq),
        l(kBq * kW<T>) {
    if (with_pairs) pairs.emplace(*with_pairs, backward);
  }
};


// Elements of one Workspace<T> with sizeof(T) = elem_size (must match the
// constructor above; the tags are counted as elements too, which over-counts
// them for float).
inline std::size_t workspace_elems(int64_t D, int64_t Tk, bool backward, std::size_t elem_size) {
  const int64_t ntiles = (Tk + kBk - 1) / kBk, panels = backward ? 2 : 1;
  const int64_t W = elem_size == sizeof(float) ? kW<float> : kW<double>;
  return static_cast<std::size_t>(panels * ntiles * (D * kBk + 1) + kBq * kBk * panels +
                                  (backward ? 0 : kBq * D) + kBq * (2 + W));
}

// ---- register-tiled xsimd tile products ---------------------------------------
//
// Both products keep an MR x (NV vectors) block of C in registers, MR <= 6 and
// NV <= kNV: with AVX-512 and float that is a 6 x 64 block in 24 of the 32 zmm
// registers, with AVX2 a 6 x 16 block in 12 of the 16 ymm registers, one broadcast
// of A per row and NV FMAs per broadcast (as in the GEMM micro-kernel of gemm.cpp).
// Leftover rows (see row_group) and columns (fewer than kNV vectors) dispatch to
// smaller instantiations. (Until 2026-12-07 AVX2 used kNV = 4 too: 24 accumulators
// in 16 registers, spilled.)
//
// Causal masks enter as ranges, so work above the diagonal is skipped inside the
// diagonal tiles too:
//   tile_abt: row r needs only columns [0, c0 + r) (clamped): the columns past
//     the last one its MR-row group needs are stored as 0, not computed.
//   tile_ab_acc: the sum over p of row group [r, r+MR) runs over
//     [r + lo, r + MR - 1 + hi) (clamped to [0, K)); the terms left out are
//     those whose A entry is a masked 0, so the result is the same.

inline constexpr int kMR = 6;
#if defined(__AVX512F__)
inline constexpr int kNV = 4;  // 6 x 4 zmm: 24 of 32 registers
#else
inline constexpr int kNV = 2;  // 6 x 2 ymm: 12 of 16 registers (6 x 4 would spill)
#endif
inline constexpr int64_t kNoLimit = int64_t(1) << 40;  // a range bound that never clips

// Rows of the next register block when `rest` rows are left: kMR, except that
// 7..11 rows are split into two near-equal blocks (64 = 9 * 6 + 5 + 5), since
// blocks of 4 rows or fewer run much slower per flop than 5 or 6.
inline int64_t row_group(int64_t rest) {
  return rest > kMR && rest < 2 * kMR ? (rest + 1) / 2 : std::min<int64_t>(kMR, rest);
}

// Pack nk rows of src (row stride ld, D contiguous) transposed into a (D, kBk)
// panel, zero-filling columns nk..npad-1 so whole vectors can be read.
// With AVX-512 and float, 16 x 16 blocks are transposed in registers; the rest
// is read with gathers, W rows at a time (one gather per column d), and the last
// rows element by element.
#if defined(__AVX512F__)
// panel[c*kBk + i] = src[i*ld + c] for i, c < 16.
inline void transpose16(const float* src, int64_t ld, float* panel) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);      // per 128-bit lane: a0 b0 a1 b1
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);  //                   a2 b2 a3 b3
  }
  for (int i = 0; i < 16; i += 4) {  // r[i+k] lane L: column 4L+k of rows i..i+3
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {  // gather lane L of r[k], r[4+k], r[8+k], r[12+k] into column 4L+k
    const __m512 u0 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x44);
    const __m512 u1 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xEE);
    const __m512 u2 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x44);
    const __m512 u3 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xEE);
    _mm512_storeu_ps(panel + (k + 0) * kBk, _mm512_shuffle_f32x4(u0, u2, 0x88));
    _mm512_storeu_ps(panel + (k + 4) * kBk, _mm512_shuffle_f32x4(u0, u2, 0xDD));
    _mm512_storeu_ps(panel + (k + 8) * kBk, _mm512_shuffle_f32x4(u1, u3, 0x88));
    _mm512_storeu_ps(panel + (k + 12) * kBk, _mm512_shuffle_f32x4(u1, u3, 0xDD));
  }
}
#endif

template <class T>
void pack_transposed(int64_t nk, int64_t npad, int64_t D, const T* src, int64_t ld, T* panel) {
  using Idx = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  constexpr int64_t W = kW<T>;
  int64_t j0 = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    for (; j0 + 16 <= nk; j0 += 16) {
      const T* r = src + j0 * ld;
      int64_t d0 = 0;
      for (; d0 + 16 <= D; d0 += 16) transpose16(r + d0, ld, panel + d0 * kBk + j0);
      for (int64_t j = j0; j < j0 + 16; ++j)
        for (int64_t d = d0; d < D; ++d) panel[d * kBk + j] = src[j * ld + d];
    }
  }
#endif
  if (ld * W <= std::numeric_limits<int32_t>::max()) {
    alignas(64) Idx lanes[W];
    for (int64_t u = 0; u < W; ++u) lanes[u] = static_cast<Idx>(u * ld);
    const auto idx = xsimd::batch<Idx>::load_aligned(lanes);
    for (; j0 + W <= nk; j0 += W) {
      const T* r = src + j0 * ld;
      for (int64_t d = 0; d < D; ++d) batch<T>::gather(r + d, idx).store_unaligned(panel + d * kBk + j0);
    }
  }
  for (int64_t j = j0; j < nk; ++j) {
    const T* r = src + j * ld;
    for (int64_t d = 0; d < D; ++d) panel[d * kBk + j] = r[d];
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = nk; j < npad; ++j) panel[d * kBk + j] = T(0);
}

// The (D, kBk) panel of key tile kt of src (k or v of (b, g)), packed into
// panels/tags of the workspace on first use.
// D is the row's width: A.d.D, or D2 for the pair arrays of Bf16Mode::pairs.
template <class T>
const T* panel_of(const Attn<T>& A, int64_t D, const T* src, AttnStrides s, int64_t b, int64_t g, int64_t kt,
                  std::vector<T>& panels, std::vector<int64_t>& tags) {
  const int64_t tag = b * A.d.Hkv + g;
  T* p = panels.data() + kt * D * kBk;
  if (tags[kt] != tag) {
    const int64_t j0 = kt * kBk, nk = std::min(kBk, A.d.Tk - j0);
    pack_transposed(nk, round_up(nk, kW<T>), D, src + Attn<T>::at(s, b, g, j0), s.t, p);
    tags[kt] = tag;
  }
  return p;
}
template <class T>
const T* panel_of(const Attn<T>& A, const T* src, AttnStrides s, int64_t b, int64_t g, int64_t kt,
                  std::vector<T>& panels, std::vector<int64_t>& tags) {
  return panel_of(A, A.d.D, src, s, b, g, kt, panels, tags);
}

// What tile_abt stores for the block value x = (A B^T)[r, j..j+W) of tile row r,
// column j: an epilogue, so P and dS are formed while the block is in registers.
template <class T>
struct ScaleEpi {  // alpha * x
  batch<T> alpha;
  batch<T> operator()(int64_t, int64_t, batch<T> x) const { return x * alpha; }
};

// Flash backward: the probabilities exp(scale x - lse_r), 0 at the keys row r
// does not see (columns >= vis(r) = clamp(c0 + r, 0, nk)) and on rows whose lse
// is -inf (rows that see no key; impossible when Tq <= Tk).
template <class T>
struct ProbEpi {
  batch<T> scale, lane;  // lane = (0, 1, ..., W-1)
  const T* lse;          // lse of tile row 0
  int64_t c0, nk;
  batch<T> operator()(int64_t r, int64_t j, batch<T> x) const {
    const int64_t vis = lse[r] == neg_inf<T>() ? 0 : std::clamp<int64_t>(c0 + r, 0, nk);
    if (j >= vis) return batch<T>(T(0));
    const batch<T> e = xsimd::exp(x * scale - batch<T>(lse[r]));
    return j + kW<T> <= vis ? e : xsimd::select(lane < batch<T>(T(vis - j)), e, batch<T>(T(0)));
  }
};

// Flash backward: dS = scale * P * (x - Di_r) with x = dP, P the tile ProbEpi made.
template <class T>
struct DsEpi {
  batch<T> scale;
  const T* P;   // (kBq, kBk) tile
  const T* Di;  // Di of tile row 0
  batch<T> operator()(int64_t r, int64_t j, batch<T> x) const {
    return scale * batch<T>::load_unaligned(P + r * kBk + j) * (x - batch<T>(Di[r]));
  }
};

template <class T>
batch<T> lane_iota() {
  alignas(64) T iota[kW<T>];
  for (int64_t u = 0; u < kW<T>; ++u) iota[u] = T(u);
  return batch<T>::load_aligned(iota);
}

// C[r0+r, j0 + :NV*W] = epi(r0+r, j0 + u*W, sum_d A[r*lda + d] * Bt[d*kBk + j0 + :])
// for MR rows; A points at row r0, C and Bt at row r0 / column 0.
template <class T, int MR, int NV, class Epi>
inline void abt_kernel(int64_t K, const T* A, int64_t lda, const T* Bt, T* C, int64_t r0, int64_t j0,
                       const Epi& epi) {
  constexpr int64_t W = kW<T>;
  batch<T> c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int u = 0; u < NV; ++u) c[r][u] = batch<T>(T(0));
  for (int64_t d = 0; d < K; ++d) {
    batch<T> bv[NV];
    for (int u = 0; u < NV; ++u) bv[u] = batch<T>::load_unaligned(Bt + d * kBk + j0 + u * W);
    for (int r = 0; r < MR; ++r) {
      const batch<T> a(A[r * lda + d]);
      for (int u = 0; u < NV; ++u) c[r][u] = xsimd::fma(a, bv[u], c[r][u]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int u = 0; u < NV; ++u)
      epi(r0 + r, j0 + u * W, c[r][u]).store_unaligned(C + r * kBk + j0 + u * W);
}

// MR rows of C, columns [0, nv*W): whole kNV-vector blocks, then the remainder.
template <class T, int MR, class Epi>
void abt_rows(int64_t K, const T* A, int64_t lda, const T* Bt, T* C, int64_t r0, int64_t nv, const Epi& epi) {
  constexpr int64_t W = kW<T>;
  int64_t u = 0;
  for (; u + kNV <= nv; u += kNV) abt_kernel<T, MR, kNV>(K, A, lda, Bt, C, r0, u * W, epi);
  switch (nv - u) {
    case 3: abt_kernel<T, MR, 3>(K, A, lda, Bt, C, r0, u * W, epi); break;
    case 2: abt_kernel<T, MR, 2>(K, A, lda, Bt, C, r0, u * W, epi); break;
    case 1: abt_kernel<T, MR, 1>(K, A, lda, Bt, C, r0, u * W, epi); break;
    default: break;
  }
}

// C (m, npad), leading dim kBk = epi(A Bt) for A (m, K; row stride lda) and the
// packed panel Bt (K, kBk), for the columns row r needs: [0, c0 + r) rounded up
// to whole vectors (per row group); the other columns of [0, npad) are set to 0,
// which must be what epi would give there. Pass c0 = kNoLimit for a full tile.
// npad must be a multiple of the vector width.
template <class T, class Epi>
void tile_abt(int64_t m, int64_t npad, int64_t K, const T* A, int64_t lda, const T* Bt, T* C, int64_t c0,
              const Epi& epi) {
  constexpr int64_t W = kW<T>;
  for (int64_t r = 0, mr = 0; r < m; r += mr) {
    mr = row_group(m - r);
    const int64_t ncols = round_up(std::clamp<int64_t>(c0 + r + mr - 1, 0, npad), W), nv = ncols / W;
    const T* Ar = A + r * lda;
    T* Cr = C + r * kBk;
    switch (mr) {
      case 6: abt_rows<T, 6>(K, Ar, lda, Bt, Cr, r, nv, epi); break;
      case 5: abt_rows<T, 5>(K, Ar, lda, Bt, Cr, r, nv, epi); break;
      case 4: abt_rows<T, 4>(K, Ar, lda, Bt, Cr, r, nv, epi); break;
      case 3: abt_rows<T, 3>(K, Ar, lda, Bt, Cr, r, nv, epi); break;
      case 2: abt_rows<T, 2>(K, Ar, lda, Bt, Cr, r, nv, epi); break;
      default: abt_rows<T, 1>(K, Ar, lda, Bt, Cr, r, nv, epi); break;
    }
    if (ncols < npad)
      for (int64_t rr = 0; rr < mr; ++rr) std::fill(Cr + rr * kBk + ncols, Cr + rr * kBk + npad, T(0));
  }
}

// C[r*ldc + :NV*W] += sum_{p0 <= p < p1} A[r*ars + p*acs] * B[p*ldb + :]   for MR rows.
template <class T, int MR, int NV>
inline void ab_kernel(int64_t p0, int64_t p1, const T* A, int64_t ars, int64_t acs, const T* B,
                      int64_t ldb, T* C, int64_t ldc) {
  constexpr int64_t W = kW<T>;
  batch<T> c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int u = 0; u < NV; ++u) c[r][u] = batch<T>::load_unaligned(C + r * ldc + u * W);
  for (int64_t p = p0; p < p1; ++p) {
    batch<T> bv[NV];
    for (int u = 0; u < NV; ++u) bv[u] = batch<T>::load_unaligned(B + p * ldb + u * W);
    for (int r = 0; r < MR; ++r) {
      const batch<T> a(A[r * ars + p * acs]);
      for (int u = 0; u < NV; ++u) c[r][u] = xsimd::fma(a, bv[u], c[r][u]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int u = 0; u < NV; ++u) c[r][u].store_unaligned(C + r * ldc + u * W);
}

// MR rows of C, vector columns [0, nv*W), sum over p in [p0, p1).
template <class T, int MR>
void ab_rows(int64_t p0, int64_t p1, const T* A, int64_t ars, int64_t acs, const T* B, int64_t ldb,
             T* C, int64_t ldc, int64_t nv) {
  constexpr int64_t W = kW<T>;
  int64_t u = 0;
  for (; u + kNV <= nv; u += kNV) ab_kernel<T, MR, kNV>(p0, p1, A, ars, acs, B + u * W, ldb, C + u * W, ldc);
  switch (nv - u) {
    case 3: ab_kernel<T, MR, 3>(p0, p1, A, ars, acs, B + u * W, ldb, C + u * W, ldc); break;
    case 2: ab_kernel<T, MR, 2>(p0, p1, A, ars, acs, B + u * W, ldb, C + u * W, ldc); break;
    case 1: ab_kernel<T, MR, 1>(p0, p1, A, ars, acs, B + u * W, ldb, C + u * W, ldc); break;
    default: break;
  }
}

// C (m, D; row stride ldc) += A (m, K) B (K, D), where A[r,p] = A[r*ars + p*acs]
// (so A may be a tile or a transposed tile) and B has row stride ldb. The sum of
// row group [r, r+MR) runs over p in [r + lo, r + MR - 1 + hi) clamped to [0, K):
// lo = -kNoLimit, hi = kNoLimit for all of it.
template <class T>
void tile_ab_acc(int64_t m, int64_t K, int64_t D, const T* A, int64_t ars, int64_t acs,
                 const T* B, int64_t ldb, T* C, int64_t ldc, int64_t lo, int64_t hi) {
  constexpr int64_t W = kW<T>;
  const int64_t nv = D / W, Dv = nv * W;  // vector part of the D columns
  for (int64_t r = 0, mr = 0; r < m; r += mr) {
    mr = row_group(m - r);
    const int64_t p0 = std::clamp<int64_t>(r + lo, 0, K), p1 = std::clamp<int64_t>(r + mr - 1 + hi, 0, K);
    if (p0 >= p1) continue;
    const T* Ar = A + r * ars;
    T* Cr = C + r * ldc;
    switch (mr) {
      case 6: ab_rows<T, 6>(p0, p1, Ar, ars, acs, B, ldb, Cr, ldc, nv); break;
      case 5: ab_rows<T, 5>(p0, p1, Ar, ars, acs, B, ldb, Cr, ldc, nv); break;
      case 4: ab_rows<T, 4>(p0, p1, Ar, ars, acs, B, ldb, Cr, ldc, nv); break;
      case 3: ab_rows<T, 3>(p0, p1, Ar, ars, acs, B, ldb, Cr, ldc, nv); break;
      case 2: ab_rows<T, 2>(p0, p1, Ar, ars, acs, B, ldb, Cr, ldc, nv); break;
      default: ab_rows<T, 1>(p0, p1, Ar, ars, acs, B, ldb, Cr, ldc, nv); break;
    }
    if (Dv < D)  // scalar tail columns
      for (int64_t rr = r; rr < r + mr; ++rr)
        for (int64_t j = Dv; j < D; ++j) {
          T s = C[rr * ldc + j];
          for (int64_t p = p0; p < p1; ++p) s += A[rr * ars + p * acs] * B[p * ldb + j];
          C[rr * ldc + j] = s;
        }
  }
}

// row[0:c) = exp(row[0:c) - shift); row[c:npad) = 0. Returns the sum of row[0:c)
// as a vector of per-lane partial sums.
template <class T>
batch<T> exp_shift_masked(T* row, int64_t c, int64_t npad, T shift) {
  constexpr int64_t W = kW<T>;
  const batch<T> sh(shift), zero(T(0));
  batch<T> sum(T(0));
  alignas(64) T iota[W];
  for (int64_t u = 0; u < W; ++u) iota[u] = T(u);
  const batch<T> lane = batch<T>::load_aligned(iota);
  for (int64_t j = 0; j < npad; j += W) {
    if (j >= c) {
      zero.store_unaligned(row + j);
      continue;
    }
    batch<T> e = xsimd::exp(batch<T>::load_unaligned(row + j) - sh);
    if (j + W > c) e = xsimd::select(lane < batch<T>(T(c - j)), e, zero);
    e.store_unaligned(row + j);
    sum += e;
  }
  return sum;
}

// max of row[0:c), c >= 1.
template <class T>
T row_max(const T* row, int64_t c) {
  constexpr int64_t W = kW<T>;
  T mx = neg_inf<T>();
  int64_t j = 0;
  if (c >= W) {
    batch<T> mv = batch<T>::load_unaligned(row);
    for (j = W; j + W <= c; j += W) mv = xsimd::max(mv, batch<T>::load_unaligned(row + j));
    alignas(64) T lanes[W];
    mv.store_aligned(lanes);
    for (int64_t u = 0; u < W; ++u) mx = std::max(mx, lanes[u]);
  }
  for (; j < c; ++j) mx = std::max(mx, row[j]);
  return mx;
}

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  constexpr int64_t W = kW<T>;
  batch<T> s(T(0));
  int64_t j = 0;
  for (; j + W <= n; j += W) s = xsimd::fma(batch<T>::load_unaligned(a + j), batch<T>::load_unaligned(b + j), s);
  T r = xsimd::hadd(s);
  for (; j < n; ++j) r += a[j] * b[j];
  return r;
}

// ---- bf16 pairs (attention_bf16.cpp; Note [bf16 attention] in attention.cpp) ----------
// A pair is one 32-bit word: bf16(x0) low, bf16(x1) high, kept in float arrays as a bit
// pattern. These need AVX512_BF16 and AVX-512 F/BW/VL (callers check first).

// Rows r < m of dst (row stride ldd) = the pairs along rows r of src (stride lds):
// dst[r][i] = pair(src[r][2i], src[r][2i+1]) for i < ceil(n/2), a missing src[r][n] 0.
void bf16_pairs_along_rows(const float* src, int64_t lds, int64_t m, int64_t n, float* dst, int64_t ldd);
// Rows r2 < ceil(m/2) of dst = the pairs of rows 2 r2 and 2 r2 + 1 of src:
// dst[r2][i] = pair(src[2 r2][i], src[2 r2 + 1][i]) for i < n; a missing row m is 0.
void bf16_pairs_of_rows(const float* src, int64_t lds, int64_t m, int64_t n, float* dst, int64_t ldd);
// x[r][i] = round_bf16(x[r][i]) for r < m, i < n (gemm_bf16.hpp, Note [bf16 rounding]).
void bf16_round_rows(float* x, int64_t ld, int64_t m, int64_t n);
// tile_abt without an epilogue, on pairs: C (m, npad; leading dim kBk) = alpha * A2 Bt2
// with A2 (m, K2 pairs; row stride lda2) and the panel Bt2 (K2, kBk) of pairs, for the
// columns row group [r, r+MR) needs ([0, c0 + r + MR - 1) clamped), 0 in the rest of
// [0, npad).
void bf16_tile_abt(int64_t m, int64_t npad, int64_t K2, const float* A2, int64_t lda2, const float* Bt2,
                   float* C, int64_t c0, float alpha);
// tile_ab_acc on pairs: C (m, D; row stride ldc) += A B with A(r, p) in the pair
// A2[r*ars2 + (p/2)*acs2] and row p of B in the pair row B2[(p/2)*ldb2 + :], summed over
// the pairs covering [r + lo, r + MR - 1 + hi) clamped to [0, K) (so the entries of A
// and B just outside that range must be 0, as masked P and dS entries and pad rows are).
// D must be a multiple of 16.
void bf16_tile_ab_acc(int64_t m, int64_t K, int64_t D, const float* A2, int64_t ars2, int64_t acs2,
                      const float* B2, int64_t ldb2, float* C, int64_t ldc, int64_t lo, int64_t hi);

}  // namespace tg::kernels::attention_detail
