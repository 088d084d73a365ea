// autograd/kernels/attention.cpp — flash-style causal attention and its naive twin.
//
// What it is for: the definitions behind attention.hpp (read that first for the
// formulas). What it is not: an op or a graph node; no Tensor here.
//
// Note [Flash attention tiling]
// -----------------------------
// One (batch b, query head h) pair reads kv head g = h / (H/Hkv) directly from
// k and v (no per-head copy). Its queries are cut into blocks of kBq rows and its
// keys into tiles of kBk rows. Query row i sits at absolute position off + i,
// off = Tk - Tq, and sees keys 0..off+i. A key tile starting at j0 is skipped for
// a query block whose last row cannot see it, so the work above the causal
// diagonal is never done; only diagonal tiles need a mask.
//
// Forward, per (b, h, query block Qi (mq,D)), tiles of keys Kj, Vj (nk,D):
//   S   = scale * Qi Kj^T                              (mq,nk)
//   m'  = max(m, rowmax S);   P = exp(S - m')           (mq,nk), masked -> 0
//   l   = l * exp(m - m') + rowsum P
//   acc = acc * exp(m - m') + P Vj                      (mq,D)
// and at the end out = acc / l, lse = m + log l. The running max m keeps every
// exp() argument <= 0, so large scores cannot overflow.
//
// Backward (P is recomputed, never stored): with Di = sum_d dout[i,d] out[i,d]
// (B,H,Tq) computed once up front,
//   P   = exp(scale * Qi Kj^T - lse_i)                  (mq,nk)
//   dVj += P^T dOi                                      (nk,D)
//   dP  = dOi Vj^T                                      (mq,nk)
//   dS  = scale * P * (dP - Di)                         (mq,nk)
//   dQi += dS Kj                                        (mq,D)
//   dKj += dS^T Qi                                      (nk,D)
// (dS already carries the scale: d S / d q = scale * k.) Why dP - Di: the
// softmax Jacobian gives dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij'), and
// sum_j' P_ij' dP_ij' = sum_j' P_ij' (dO_i . V_j') = dO_i . O_i = Di.
//
// Per-thread scratch: K^T (and in the backward V^T) of one kv head packed as
// (D, kBk) panels, one per key tile, each packed the first time the thread needs
// it and kept (tagged with its (b, g)) while the thread stays on that kv head, so
// the query blocks and the query heads of a group reuse it instead of packing
// again; S and dP as (kBq, kBk) tiles, the forward accumulator (kBq, D), m and
// the rescale factors (kBq), and l as (kBq, W) per-lane partial sums. So memory
// is O(threads * D * Tk) plus the O(B*H*Tq) row terms Di, linear in T.
//
// The two matrix shapes that occur are both done by register-tiled xsimd loops
// (up to 6 rows x 4 vectors, see "register-tiled xsimd tile products" below):
//   tile_abt:    C = epi(A B^T)   with B^T packed as a (D, kBk) panel, so each
//                step broadcasts one A element against a vector of B^T (no
//                horizontal sums); used for S and dP. The epilogue epi runs on
//                the register block before it is stored: scale * x for S in the
//                forward, and in the backward P = exp(scale x - lse) (masked)
//                and dS = scale * P * (x - Di), so neither needs another pass.
//   tile_ab_acc: C += A B   with A read through (row, column) strides, so A may be
//                P or P^T; B rows are rows of v, dout, k or q; used for the rest.
// In a diagonal tile both skip the part above the diagonal at the granularity of
// a 6-row group (and of a vector of columns in tile_abt).
//
// Note [Attention backward schedules]
// -----------------------------------
// Each OpenMP thread must own its writes (no atomics) and results must be
// bitwise reproducible. dk, dv of kv head g collect from all query heads of the
// group; dq of head h collects from all key tiles. Two schedules do that:
//   one pass: a work item is a (b, g) pair; it walks every key tile and, for each
//     query head of the group, every query block that sees it, updating dKj, dVj
//     and dQi. Every write of the item lands in rows only it touches.
//   two passes: pass 1 items are (b, g, key tile) and update dKj, dVj only;
//     pass 2 items are (b, h, query block) and recompute S, P, dP to update dQi.
// One pass does 5 tile products per tile pair, two passes 7, but two passes have
// many more work items. attention_backward_one_pass() picks the one with the
// smaller estimated time: one pass unless B*Hkv pairs balance badly over the
// threads (e.g. B*Hkv = 1 on 2 threads). Inside each item the order of every sum
// is fixed, and items never share outputs, so a run is reproducible at a fixed
// thread count (and across thread counts that pick the same schedule).
//
// Note [Attention work items]
// ---------------------------
// Every parallel loop here hands out work items that own all their writes (rows
// of out/lse, of dk/dv, of dq, of probs) and compute them from the inputs alone,
// in an order fixed inside the item; the per-thread workspace only caches packed
// copies of k and v. So which thread runs an item cannot change any bit of the
// result, and the loops whose items differ in size (query blocks lower in the
// causal triangle see more keys) use schedule(dynamic, 1) with the longest items
// first, which balances the threads (with static, 1 and 4 blocks per head on 2
// threads, one thread would get blocks 1 and 3, 6 of 10 units of work). Results
// are bitwise identical at any thread count that picks the same backward schedule.
#include "autograd/kernels/attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

// GCC 12 warns "may be used uninitialized" inside xsimd's AVX-512 reductions
// (hadd, max over _mm512_undefined lanes); those are false positives.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <xsimd/xsimd.hpp>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "autograd/kernels/parallel.hpp"

namespace tg::kernels {

namespace {

constexpr int64_t kBq = 64;  // query rows per block
constexpr int64_t kBk = 64;  // key rows per tile; also the leading dim of tiles and panels

template <class T>
using batch = xsimd::batch<T>;
template <class T>
constexpr int64_t kW = static_cast<int64_t>(batch<T>::size);
static_assert(kBk % kW<float> == 0 && kBk % kW<double> == 0, "key tiles must be whole SIMD vectors");

template <class T>
constexpr T neg_inf() { return -std::numeric_limits<T>::infinity(); }

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// ---- argument checks --------------------------------------------------------

std::string dims_str(const AttnDims& d) {
  std::ostringstream s;
  s << "B=" << d.B << " H=" << d.H << " Hkv=" << d.Hkv << " Tq=" << d.Tq << " Tk=" << d.Tk
    << " D=" << d.D;
  return s.str();
}

void check_dims(const char* who, const AttnDims& d) {
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument(std::string(who) + ": " + why + " (" + dims_str(d) + ")");
  };
  if (d.B < 1 || d.H < 1 || d.Hkv < 1 || d.Tq < 1 || d.Tk < 1 || d.D < 1)
    fail("every dimension must be >= 1");
  if (d.H % d.Hkv != 0) fail("query heads H must be a multiple of kv heads Hkv");
  if (d.Tq > d.Tk) fail("query positions Tq must not exceed key positions Tk");
}

void check_ptrs(const char* who, std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p == nullptr) throw std::invalid_argument(std::string(who) + ": null pointer argument");
}

// ---- the operands of one call, with row addressing ---------------------------

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
  Workspace(int64_t D_, int64_t Tk, bool backward)
      : D(D_), ntiles((Tk + kBk - 1) / kBk), Kt(ntiles * D * kBk), Vt(backward ? ntiles * D * kBk : 0),
        ktag(ntiles, -1), vtag(backward ? ntiles : 0, -1), S(kBq * kBk), dP(backward ? kBq * kBk : 0),
        acc(backward ? 0 : kBq * D), m(kBq), alpha(kBq), l(kBq * kW<T>) {}
};

// Elements of one Workspace<T> with sizeof(T) = elem_size (must match the
// constructor above; the tags are counted as elements too, which over-counts
// them for float).
std::size_t workspace_elems(int64_t D, int64_t Tk, bool backward, std::size_t elem_size) {
  const int64_t ntiles = (Tk + kBk - 1) / kBk, panels = backward ? 2 : 1;
  const int64_t W = elem_size == sizeof(float) ? kW<float> : kW<double>;
  return static_cast<std::size_t>(panels * ntiles * (D * kBk + 1) + kBq * kBk * panels +
                                  (backward ? 0 : kBq * D) + kBq * (2 + W));
}

// ---- register-tiled xsimd tile products ---------------------------------------
//
// Both products keep an MR x (NV vectors) block of C in registers, MR <= 6 and
// NV <= 4: with AVX-512 and float that is a 6 x 64 block in 24 of the 32 zmm
// registers, one broadcast of A per row and NV FMAs per broadcast (as in the GEMM
// micro-kernel of gemm.cpp). Leftover rows (see row_group) and columns (fewer
// than 4 vectors) dispatch to smaller instantiations.
//
// Causal masks enter as ranges, so work above the diagonal is skipped inside the
// diagonal tiles too:
//   tile_abt: row r needs only columns [0, c0 + r) (clamped): the columns past
//     the last one its MR-row group needs are stored as 0, not computed.
//   tile_ab_acc: the sum over p of row group [r, r+MR) runs over
//     [r + lo, r + MR - 1 + hi) (clamped to [0, K)); the terms left out are
//     those whose A entry is a masked 0, so the result is the same.

constexpr int kMR = 6;
constexpr int kNV = 4;
constexpr int64_t kNoLimit = int64_t(1) << 40;  // a range bound that never clips

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
template <class T>
const T* panel_of(const Attn<T>& A, const T* src, AttnStrides s, int64_t b, int64_t g, int64_t kt,
                  std::vector<T>& panels, std::vector<int64_t>& tags) {
  const int64_t D = A.d.D, tag = b * A.d.Hkv + g;
  T* p = panels.data() + kt * D * kBk;
  if (tags[kt] != tag) {
    const int64_t j0 = kt * kBk, nk = std::min(kBk, A.d.Tk - j0);
    pack_transposed(nk, round_up(nk, kW<T>), D, src + Attn<T>::at(s, b, g, j0), s.t, p);
    tags[kt] = tag;
  }
  return p;
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


// ---- forward ----------------------------------------------------------------------

// One query block [i0, i0+mq) of (b, h): out rows and lse entries.
template <class T>
void forward_block(const Attn<T>& A, T* out, AttnStrides os, T* lse, int64_t b, int64_t h,
                   int64_t i0, int64_t mq, Workspace<T>& ws) {
  const int64_t D = A.d.D, g = h / A.group;
  const T* Qi = A.qrow(b, h, i0);
  T* acc = ws.acc.data();
  std::fill(acc, acc + mq * D, T(0));
  constexpr int64_t W = kW<T>;
  T* m = ws.m.data();
  T* alpha = ws.alpha.data();
  T* l = ws.l.data();
  std::fill(m, m + kBq, neg_inf<T>());
  std::fill(alpha, alpha + kBq, T(0));
  std::fill(l, l + kBq * W, T(0));
  const int64_t kend = A.off + i0 + mq;  // keys [0, kend) are seen by some row of the block
  for (int64_t j0 = 0; j0 < kend; j0 += kBk) {
    const int64_t nk = std::min(kBk, kend - j0), npad = round_up(nk, kW<T>);
    const int64_t c0 = A.off + i0 - j0 + 1;  // row r of the block sees keys [j0, j0 + c0 + r)
    const T* Kt = panel_of(A, A.k, A.ks, b, g, j0 / kBk, ws.Kt, ws.ktag);
    T* S = ws.S.data();
    tile_abt(mq, npad, D, Qi, A.qs.t, Kt, S, c0, ScaleEpi<T>{batch<T>(A.scale)});  // S = scale Qi Kj^T
    // New running max m' per row; alpha = m - m' for now (0 for rows that see
    // none of the tile), then exp(m - m') for all rows at once (0 on a row's
    // first visible tile, where m = -inf).
    for (int64_t r = 0; r < mq; ++r) {
      const int64_t c = A.visible(i0 + r, j0, nk);
      if (c == 0) {
        alpha[r] = T(0);
        continue;
      }
      const T m_new = std::max(m[r], row_max(S + r * kBk, c));
      alpha[r] = m[r] - m_new;
      m[r] = m_new;
    }
    for (int64_t r = 0; r < mq; r += W)  // rows mq.. of alpha stay 0 (finite)
      xsimd::exp(batch<T>::load_unaligned(alpha + r)).store_unaligned(alpha + r);
    for (int64_t r = 0; r < mq; ++r) {
      T* Sr = S + r * kBk;
      const int64_t c = A.visible(i0 + r, j0, nk);
      if (c == 0) {  // the whole tile lies above this row's diagonal
        std::fill(Sr, Sr + npad, T(0));
        continue;
      }
      const batch<T> rowsum = exp_shift_masked(Sr, c, npad, m[r]);  // S row becomes P row
      xsimd::fma(batch<T>::load_unaligned(l + r * W), batch<T>(alpha[r]), rowsum).store_unaligned(l + r * W);
      if (alpha[r] != T(1)) {
        const T a = alpha[r];
        for (int64_t d = 0; d < D; ++d) acc[r * D + d] *= a;
      }
    }
    tile_ab_acc(mq, nk, D, S, kBk, 1, A.vrow(b, g, j0), A.vs.t, acc, D, -kNoLimit, c0);  // acc += P Vj
  }
  T* lsum = alpha;  // alpha's rows now hold the row sums l, then log l
  for (int64_t r = 0; r < mq; ++r) {
    T* o = out + Attn<T>::at(os, b, h, i0 + r);
    const T lr = lsum[r] = xsimd::hadd(batch<T>::load_unaligned(l + r * W));
    // l > 0 always holds in causal attention with Tq <= Tk; the guard keeps a row
    // that sees no key at 0 instead of NaN (its lse is then -inf, see below).
    const T inv = lr > T(0) ? T(1) / lr : T(0);
    for (int64_t d = 0; d < D; ++d) o[d] = acc[r * D + d] * inv;
  }
  for (int64_t r = 0; r < mq; r += W)  // rows mq.. hold finite values >= 0
    xsimd::log(batch<T>::load_unaligned(lsum + r)).store_unaligned(lsum + r);
  T* lse_rows = lse + A.row_index(b, h, i0);
  for (int64_t r = 0; r < mq; ++r) lse_rows[r] = lsum[r] == neg_inf<T>() ? neg_inf<T>() : m[r] + lsum[r];
}

// ---- backward -------------------------------------------------------------------

// P tile for query block [i0, i0+mq) of (b, h) against the key tile [j0, j0+nk)
// whose transposed panel is Kt: ws.S = exp(scale Qi Kj^T - lse), masked.
template <class T>
void recompute_probs(const Attn<T>& A, int64_t b, int64_t h, int64_t i0, int64_t mq, int64_t j0,
                     int64_t nk, int64_t npad, const T* Kt, Workspace<T>& ws) {
  const int64_t c0 = A.off + i0 - j0 + 1;  // row r sees keys [j0, j0 + c0 + r)
  const ProbEpi<T> epi{batch<T>(A.scale), lane_iota<T>(), A.lse + A.row_index(b, h, i0), c0, nk};
  tile_abt(mq, npad, A.d.D, A.qrow(b, h, i0), A.qs.t, Kt, ws.S.data(), c0, epi);
}

// One query block x key tile step of the backward for query head h (Note [Flash
// attention tiling]), with the panels Kj^T, Vj^T of the key tile.
template <class T>
void backward_block(const Attn<T>& A, int64_t b, int64_t h, int64_t i0, int64_t mq, int64_t j0,
                    int64_t nk, const T* Kt, const T* Vt, Workspace<T>& ws, bool kv_grads, bool q_grads) {
  const int64_t D = A.d.D, g = h / A.group, npad = round_up(nk, kW<T>);
  const int64_t c0 = A.off + i0 - j0 + 1;  // row r sees keys [j0, j0 + c0 + r); key j is seen from row j + 1 - c0
  const T* Qi = A.qrow(b, h, i0);
  const T* dOi = A.dout + Attn<T>::at(A.dos, b, h, i0);
  T* P = ws.S.data();
  T* dS = ws.dP.data();
  recompute_probs(A, b, h, i0, mq, j0, nk, npad, Kt, ws);
  if (kv_grads)  // dVj += P^T dOi: A[r=j, p=i] = P[i*kBk + j]
    tile_ab_acc(nk, mq, D, P, 1, kBk, dOi, A.dos.t, A.dv + Attn<T>::at(A.dvs, b, g, j0), A.dvs.t, 1 - c0, kNoLimit);
  // dP = dOi Vj^T, stored as dS = scale * P * (dP - Di)
  tile_abt(mq, npad, D, dOi, A.dos.t, Vt, dS, c0, DsEpi<T>{batch<T>(A.scale), P, A.Di + A.row_index(b, h, i0)});
  if (kv_grads)  // dKj += dS^T Qi
    tile_ab_acc(nk, mq, D, dS, 1, kBk, Qi, A.qs.t, A.dk + Attn<T>::at(A.dks, b, g, j0), A.dks.t, 1 - c0, kNoLimit);
  if (q_grads)  // dQi += dS Kj
    tile_ab_acc(mq, nk, D, dS, kBk, 1, A.krow(b, g, j0), A.ks.t, A.dq + Attn<T>::at(A.dqs, b, h, i0), A.dqs.t,
                -kNoLimit, c0);
}

template <class T>
void zero_rows(T* base, AttnStrides s, int64_t b, int64_t h, int64_t t0, int64_t n, int64_t D) {
  for (int64_t t = t0; t < t0 + n; ++t) {
    T* r = base + Attn<T>::at(s, b, h, t);
    std::fill(r, r + D, T(0));
  }
}

// dK, dV for key tile [j0, j0+nk) of kv head g (all query heads of the group and
// all query rows that see the tile); also dQ when q_grads (one-pass schedule).
template <class T>
void backward_key_tile(const Attn<T>& A, int64_t b, int64_t g, int64_t j0, Workspace<T>& ws, bool q_grads) {
  const int64_t nk = std::min(kBk, A.d.Tk - j0), kt = j0 / kBk;
  const T* Kt = panel_of(A, A.k, A.ks, b, g, kt, ws.Kt, ws.ktag);
  const T* Vt = panel_of(A, A.v, A.vs, b, g, kt, ws.Vt, ws.vtag);
  const int64_t i_first = std::max<int64_t>(0, j0 - A.off);  // first query row that sees key j0
  for (int64_t h = g * A.group; h < (g + 1) * A.group; ++h)
    for (int64_t i0 = i_first; i0 < A.d.Tq; i0 += kBq)
      backward_block(A, b, h, i0, std::min(kBq, A.d.Tq - i0), j0, nk, Kt, Vt, ws, true, q_grads);
}

}  // namespace

// ---- public entry points ----------------------------------------------------------

bool attention_backward_one_pass(const AttnDims& d, int threads) {
  // Estimated time in tile products per thread (Note [Attention backward schedules]):
  // one pass: ceil(pairs/threads) items of 5 units each per pair;
  // two passes: 7 units per pair spread evenly.
  const int64_t pairs = d.B * d.Hkv, nt = std::max(threads, 1);
  return 5 * ((pairs + nt - 1) / nt) * nt <= 7 * pairs;
}

std::size_t attention_scratch_bytes(const AttnDims& d, std::size_t elem_size, bool backward,
                                    bool naive, int threads) {
  const std::size_t rows = static_cast<std::size_t>(d.B * d.H * d.Tq);
  if (naive) return elem_size * rows * static_cast<std::size_t>(d.Tk) * (backward ? 2 : 1);
  return elem_size * (static_cast<std::size_t>(std::max(threads, 1)) * workspace_elems(d.D, d.Tk, backward, elem_size) +
                      (backward ? rows : 0));
}

template <class T>
void attention_forward(const AttnDims& d, T scale, const T* q, AttnStrides qs, const T* k,
                       AttnStrides ks, const T* v, AttnStrides vs, T* out, AttnStrides os, T* lse) {
  check_dims("attention_forward", d);
  check_ptrs("attention_forward", {q, k, v, out, lse});
  Attn<T> A{};
  A.d = d; A.scale = scale; A.group = d.H / d.Hkv; A.off = d.Tk - d.Tq;
  A.q = q; A.k = k; A.v = v; A.qs = qs; A.ks = ks; A.vs = vs;
  const int64_t nblk = (d.Tq + kBq - 1) / kBq, items = d.B * d.H * nblk;
#pragma omp parallel num_threads(tg::num_threads())
  {
    Workspace<T> ws(d.D, d.Tk, false);
    // Longest blocks first, handed out dynamically (Note [Attention work items]).
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t bh = it / nblk, i0 = (nblk - 1 - it % nblk) * kBq;
      forward_block(A, out, os, lse, bh / d.H, bh % d.H, i0, std::min(kBq, d.Tq - i0), ws);
    }
  }
}

template <class T>
void attention_backward(const AttnDims& d, T scale, const T* q, AttnStrides qs, const T* k,
                        AttnStrides ks, const T* v, AttnStrides vs, const T* out, AttnStrides os,
                        const T* dout, AttnStrides dos, const T* lse, T* dq, AttnStrides dqs, T* dk,
                        AttnStrides dks, T* dv, AttnStrides dvs) {
  check_dims("attention_backward", d);
  check_ptrs("attention_backward", {q, k, v, out, dout, lse, dq, dk, dv});
  const int nt = tg::num_threads();
  const int64_t rows = d.B * d.H * d.Tq, D = d.D;

  // Di = sum_d dout * out, one per query row (B,H,Tq).
  std::vector<T> Di(static_cast<std::size_t>(rows));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / (d.H * d.Tq), h = (r / d.Tq) % d.H, i = r % d.Tq;
    Di[r] = dot(dout + Attn<T>::at(dos, b, h, i), out + Attn<T>::at(os, b, h, i), D);
  }

  Attn<T> A{};
  A.d = d; A.scale = scale; A.group = d.H / d.Hkv; A.off = d.Tk - d.Tq;
  A.q = q; A.k = k; A.v = v; A.out = out; A.dout = dout; A.lse = lse; A.Di = Di.data();
  A.qs = qs; A.ks = ks; A.vs = vs; A.os = os; A.dos = dos;
  A.dq = dq; A.dk = dk; A.dv = dv; A.dqs = dqs; A.dks = dks; A.dvs = dvs;
  const int64_t nkt = (d.Tk + kBk - 1) / kBk, nqb = (d.Tq + kBq - 1) / kBq;

  if (attention_backward_one_pass(d, nt)) {
    // One item per (b, kv head g): it owns dk, dv of g and dq of g's query heads.
#pragma omp parallel num_threads(nt)
    {
      Workspace<T> ws(D, d.Tk, true);
#pragma omp for schedule(static)
      for (int64_t bg = 0; bg < d.B * d.Hkv; ++bg) {
        const int64_t b = bg / d.Hkv, g = bg % d.Hkv;
        zero_rows(dk, dks, b, g, 0, d.Tk, D);
        zero_rows(dv, dvs, b, g, 0, d.Tk, D);
        for (int64_t h = g * A.group; h < (g + 1) * A.group; ++h) zero_rows(dq, dqs, b, h, 0, d.Tq, D);
        for (int64_t kt = 0; kt < nkt; ++kt) backward_key_tile(A, b, g, kt * kBk, ws, true);
      }
    }
    return;
  }
  // Two passes. Pass 1: one item per (b, g, key tile) owns those dk, dv rows.
#pragma omp parallel num_threads(nt)
  {
    Workspace<T> ws(D, d.Tk, true);
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < d.B * d.Hkv * nkt; ++it) {  // key tile 0 (the longest) first
      const int64_t bg = it / nkt, j0 = (it % nkt) * kBk, b = bg / d.Hkv, g = bg % d.Hkv;
      const int64_t nk = std::min(kBk, d.Tk - j0);
      zero_rows(dk, dks, b, g, j0, nk, D);
      zero_rows(dv, dvs, b, g, j0, nk, D);
      backward_key_tile(A, b, g, j0, ws, false);
    }
    // Pass 2: one item per (b, h, query block) owns those dq rows.
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < d.B * d.H * nqb; ++it) {  // longest blocks first
      const int64_t bh = it / nqb, i0 = (nqb - 1 - it % nqb) * kBq, b = bh / d.H, h = bh % d.H, g = h / A.group;
      const int64_t mq = std::min(kBq, d.Tq - i0), kend = A.off + i0 + mq;
      zero_rows(dq, dqs, b, h, i0, mq, D);
      for (int64_t j0 = 0; j0 < kend; j0 += kBk) {
        const int64_t nk = std::min(kBk, kend - j0), kt = j0 / kBk;
        const T* Kt = panel_of(A, k, ks, b, g, kt, ws.Kt, ws.ktag);
        const T* Vt = panel_of(A, v, vs, b, g, kt, ws.Vt, ws.vtag);
        backward_block(A, b, h, i0, mq, j0, nk, Kt, Vt, ws, false, true);
      }
    }
  }
}

template <class T>
void attention_probs(const AttnDims& d, T scale, const T* q, AttnStrides qs, const T* k,
                     AttnStrides ks, const T* lse, T* probs) {
  check_dims("attention_probs", d);
  check_ptrs("attention_probs", {q, k, lse, probs});
  Attn<T> A{};
  A.d = d; A.scale = scale; A.group = d.H / d.Hkv; A.off = d.Tk - d.Tq;
  A.q = q; A.k = k; A.lse = lse; A.qs = qs; A.ks = ks;
  const int64_t nqb = (d.Tq + kBq - 1) / kBq, items = d.B * d.H * nqb;
#pragma omp parallel num_threads(tg::num_threads())
  {
    Workspace<T> ws(d.D, d.Tk, false);
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {  // longest blocks first
      const int64_t bh = it / nqb, i0 = (nqb - 1 - it % nqb) * kBq, b = bh / d.H, h = bh % d.H, g = h / A.group;
      const int64_t mq = std::min(kBq, d.Tq - i0), kend = A.off + i0 + mq;
      T* P0 = probs + A.row_index(b, h, i0) * d.Tk;  // rows i0.. of the (Tq, Tk) matrix of (b, h)
      std::fill(P0, P0 + mq * d.Tk, T(0));
      for (int64_t j0 = 0; j0 < kend; j0 += kBk) {
        const int64_t nk = std::min(kBk, kend - j0), npad = round_up(nk, kW<T>);
        const T* Kt = panel_of(A, k, ks, b, g, j0 / kBk, ws.Kt, ws.ktag);
        recompute_probs(A, b, h, i0, mq, j0, nk, npad, Kt, ws);
        for (int64_t r = 0; r < mq; ++r) std::copy_n(ws.S.data() + r * kBk, nk, P0 + r * d.Tk + j0);
      }
    }
  }
}

// ---- the naive twins: materialise (B,H,Tq,Tk), softmax, multiply ---------------

namespace {

// P[b,h] (Tq,Tk) = causal softmax of scale * q k^T, computed row by row from the
// full score matrix; returns nothing else. Rows of P above the diagonal are 0.
template <class T>
void naive_probs(const AttnDims& d, T scale, const T* q, AttnStrides qs, const T* k, AttnStrides ks,
                 int64_t b, int64_t h, T* P, T* lse) {
  const int64_t g = h / (d.H / d.Hkv), off = d.Tk - d.Tq;
  for (int64_t i = 0; i < d.Tq; ++i) {
    T* Pi = P + i * d.Tk;
    const T* qi = q + b * qs.b + h * qs.h + i * qs.t;
    const int64_t last = off + i;  // last visible key
    T mx = neg_inf<T>();
    for (int64_t j = 0; j < d.Tk; ++j) {
      if (j > last) { Pi[j] = T(0); continue; }
      const T* kj = k + b * ks.b + g * ks.h + j * ks.t;
      T s = 0;
      for (int64_t c = 0; c < d.D; ++c) s += qi[c] * kj[c];
      Pi[j] = scale * s;
      mx = std::max(mx, Pi[j]);
    }
    T sum = 0;
    for (int64_t j = 0; j <= last; ++j) {
      Pi[j] = std::exp(Pi[j] - mx);
      sum += Pi[j];
    }
    for (int64_t j = 0; j <= last; ++j) Pi[j] /= sum;
    if (lse) lse[(b * d.H + h) * d.Tq + i] = mx + std::log(sum);
  }
}

}  // namespace

template <class T>
void attention_forward_naive(const AttnDims& d, T scale, const T* q, AttnStrides qs, const T* k,
                             AttnStrides ks, const T* v, AttnStrides vs, T* out, AttnStrides os, T* lse) {
  check_dims("attention_forward_naive", d);
  check_ptrs("attention_forward_naive", {q, k, v, out, lse});
  const int64_t TT = d.Tq * d.Tk;
  std::vector<T> P(static_cast<std::size_t>(d.B * d.H * TT));  // (B,H,Tq,Tk)
#pragma omp parallel for num_threads(tg::num_threads()) schedule(static)
  for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
    const int64_t b = bh / d.H, h = bh % d.H, g = h / (d.H / d.Hkv);
    T* Pbh = P.data() + bh * TT;
    naive_probs(d, scale, q, qs, k, ks, b, h, Pbh, lse);
    for (int64_t i = 0; i < d.Tq; ++i) {  // out = P v
      T* o = out + b * os.b + h * os.h + i * os.t;
      std::fill(o, o + d.D, T(0));
      for (int64_t j = 0; j < d.Tk; ++j) {
        const T p = Pbh[i * d.Tk + j];
        const T* vj = v + b * vs.b + g * vs.h + j * vs.t;
        for (int64_t c = 0; c < d.D; ++c) o[c] += p * vj[c];
      }
    }
  }
}

template <class T>
void attention_backward_naive(const AttnDims& d, T scale, const T* q, AttnStrides qs, const T* k,
                              AttnStrides ks, const T* v, AttnStrides vs, const T* out, AttnStrides os,
                              const T* dout, AttnStrides dos, const T* lse, T* dq, AttnStrides dqs, T* dk,
                              AttnStrides dks, T* dv, AttnStrides dvs) {
  check_dims("attention_backward_naive", d);
  check_ptrs("attention_backward_naive", {q, k, v, dout, dq, dk, dv});
  const int64_t TT = d.Tq * d.Tk, group = d.H / d.Hkv, D = d.D;
  std::vector<T> P(static_cast<std::size_t>(d.B * d.H * TT));   // (B,H,Tq,Tk)
  std::vector<T> dS(static_cast<std::size_t>(d.B * d.H * TT));  // dP, then dS in place
  // Per (b, h): P, dP = dout v^T, dS = P * (dP - rowsum(P*dP)), dq = scale dS k.
#pragma omp parallel for num_threads(tg::num_threads()) schedule(static)
  for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
    const int64_t b = bh / d.H, h = bh % d.H, g = h / group;
    T* Pbh = P.data() + bh * TT;
    T* dSbh = dS.data() + bh * TT;
    naive_probs<T>(d, scale, q, qs, k, ks, b, h, Pbh, nullptr);
    for (int64_t i = 0; i < d.Tq; ++i) {
      const T* doi = dout + b * dos.b + h * dos.h + i * dos.t;
      T rowdot = 0;
      for (int64_t j = 0; j < d.Tk; ++j) {
        const T* vj = v + b * vs.b + g * vs.h + j * vs.t;
        T s = 0;
        for (int64_t c = 0; c < D; ++c) s += doi[c] * vj[c];
        dSbh[i * d.Tk + j] = s;
        rowdot += Pbh[i * d.Tk + j] * s;
      }
      T* dqi = dq + b * dqs.b + h * dqs.h + i * dqs.t;
      std::fill(dqi, dqi + D, T(0));
      for (int64_t j = 0; j < d.Tk; ++j) {
        T& ds = dSbh[i * d.Tk + j];
        ds = Pbh[i * d.Tk + j] * (ds - rowdot);
        const T* kj = k + b * ks.b + g * ks.h + j * ks.t;
        for (int64_t c = 0; c < D; ++c) dqi[c] += scale * ds * kj[c];
      }
    }
  }
  // Per (b, g): dv = sum_h P^T dout, dk = scale sum_h dS^T q.
#pragma omp parallel for num_threads(tg::num_threads()) schedule(static)
  for (int64_t bg = 0; bg < d.B * d.Hkv; ++bg) {
    const int64_t b = bg / d.Hkv, g = bg % d.Hkv;
    for (int64_t j = 0; j < d.Tk; ++j) {
      T* dkj = dk + b * dks.b + g * dks.h + j * dks.t;
      T* dvj = dv + b * dvs.b + g * dvs.h + j * dvs.t;
      std::fill(dkj, dkj + D, T(0));
      std::fill(dvj, dvj + D, T(0));
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const T* Pbh = P.data() + (b * d.H + h) * TT;
        const T* dSbh = dS.data() + (b * d.H + h) * TT;
        for (int64_t i = 0; i < d.Tq; ++i) {
          const T p = Pbh[i * d.Tk + j], ds = dSbh[i * d.Tk + j];
          const T* qi = q + b * qs.b + h * qs.h + i * qs.t;
          const T* doi = dout + b * dos.b + h * dos.h + i * dos.t;
          for (int64_t c = 0; c < D; ++c) {
            dvj[c] += p * doi[c];
            dkj[c] += scale * ds * qi[c];
          }
        }
      }
    }
  }
}

// ---- explicit instantiations -------------------------------------------------------

#define TG_ATTENTION_INSTANTIATE(T)                                                                      \
  template void attention_forward<T>(const AttnDims&, T, const T*, AttnStrides, const T*, AttnStrides,   \
                                     const T*, AttnStrides, T*, AttnStrides, T*);                         \
  template void attention_forward_naive<T>(const AttnDims&, T, const T*, AttnStrides, const T*,          \
                                           AttnStrides, const T*, AttnStrides, T*, AttnStrides, T*);      \
  template void attention_backward<T>(const AttnDims&, T, const T*, AttnStrides, const T*, AttnStrides,  \
                                      const T*, AttnStrides, const T*, AttnStrides, const T*,             \
                                      AttnStrides, const T*, T*, AttnStrides, T*, AttnStrides, T*,        \
                                      AttnStrides);                                                       \
  template void attention_backward_naive<T>(const AttnDims&, T, const T*, AttnStrides, const T*,         \
                                            AttnStrides, const T*, AttnStrides, const T*, AttnStrides,    \
                                            const T*, AttnStrides, const T*, T*, AttnStrides, T*,         \
                                            AttnStrides, T*, AttnStrides);                                \
  template void attention_probs<T>(const AttnDims&, T, const T*, AttnStrides, const T*, AttnStrides,     \
                                   const T*, T*);

TG_ATTENTION_INSTANTIATE(float)
TG_ATTENTION_INSTANTIATE(double)
#undef TG_ATTENTION_INSTANTIATE

}  // namespace tg::kernels
