// autograd/kernels/attention.cpp — flash-style causal attention (the naive twin is in
// attention_naive.cpp, the tile products in attention_tiles.hpp).
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
//
// Note [bf16 attention]
// ---------------------
// While the bf16 mode of the GEMMs is on (gemm_bf16.hpp: train --dtype bf16, or the
// emulated mode of oracle --dtype bf16), the float kernels here take bf16 operands too,
// as mixed-precision attention does elsewhere (FlashAttention's bf16 kernels): every
// tile product's operands are rounded to bf16 and their products summed in float. Which
// values are rounded, exactly:
//   q, k, v, dout (the inputs of the products; Di takes dout unrounded);
//   P, the unnormalised exp(S - m) tile, before P Vj in the forward (the row sums l
//     take it unrounded), and the recomputed P tile in the backward, before P^T dOi and
//     before dS = scale P (dP - Di) is formed from it;
//   dS, before dS^T Qi and dS Kj.
// S, the running max, l, lse, out, Di and every accumulator stay float. double calls
// never round.
// Two implementations of the same roundings: emulated (Bf16Mode::emulated: rounded float
// copies of q, k, v, dout, the P and dS tiles rounded in place, the float tile products
// above), which needs no instruction set; and pairs (Bf16Mode::pairs: AVX512_BF16, head
// dims that are a multiple of 16), where the products run on vdpbf16ps
// (attention_bf16.cpp), so the operands are converted to pairs of bf16 along the summed
// index as the tiles need them: Kt2, Vt2 panels (pairs along d) and Kr2, Vr2 pair rows
// (pairs of key rows) once per key tile; a query block's rows of q and dout both ways
// once per block (cached across the key tiles the backward visits it for); P and dS
// along j and, transposed, along i once per tile. The epilogues (scale, exp, the
// softmax backward) run as separate passes over the float tile there. The two agree to
// the order of the float sums (pairs of terms, rarely a rounding that order flips):
// tests/test_kernels_attention_bf16.cpp. Measured on a Zen 4 core (baby model's shape,
// B 8 H 6 T 256 D 64): forward 6.6 -> 5.1 ms, backward 15.3 -> 11.8 ms; converting
// whole tensors per call instead was slower than float (a sixth of the time, memory-
// bound). The naive twins do not round: under ReferenceKernels bf16 attention is float.
#include "autograd/kernels/attention.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#include "autograd/kernels/attention_tiles.hpp"
#include "autograd/kernels/gemm_bf16.hpp"
#include "autograd/kernels/parallel.hpp"

namespace tg::kernels {

using namespace attention_detail;

namespace {

// ---- bf16 (Note [bf16 attention]) ------------------------------------------------------

// The mode of a float call with head dim D: what the GEMMs' bf16 mode asks for, on pairs
// where the hardware can and the tile shapes allow (D a multiple of 16), else emulated.
Bf16Mode bf16_mode(int64_t D) {
  if (gemm_bf16_emulated()) return Bf16Mode::emulated;
  if (gemm_bf16_hardware()) return D % 16 == 0 ? Bf16Mode::pairs : Bf16Mode::emulated;
  return Bf16Mode::off;
}

// dst = the (B, heads, T) rows of src (row (b, h, t) at src + at(s, b, h, t)), each row
// turned into W floats by row(src_row, dst_row), dense.
// (dst is allocated uninitialised: every element is written.)
using Buffer = std::unique_ptr<float[]>;
template <class Row>
void convert_rows(int64_t B, int64_t heads, int64_t T, const float* src, AttnStrides s, int64_t W, Buffer& dst,
                  const Row& row) {
  const int64_t rows = B * heads * T;
  dst.reset(new float[static_cast<std::size_t>(rows * W)]);
#pragma omp parallel for num_threads(tg::num_threads()) schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    row(src + Attn<float>::at(s, r / (heads * T), (r / T) % heads, r % T), dst.get() + r * W);
}

// The bf16 mode of one call, set in A by prepare(), and in emulated mode the rounded
// copies that replace q, k, v (and dout), kept alive here. (The pairs mode converts
// tile by tile instead: whole-tensor copies were a memory-bound sixth of its time.) A
// call that reads dout for anything else (Di) must do so before prepare().
template <class T>
struct Bf16Operands {
  Buffer q, k, v, dout;
  void prepare(Attn<T>& A, bool backward) {
    if constexpr (std::is_same_v<T, float>) {
      const AttnDims& d = A.d;
      A.bf16 = bf16_mode(d.D);
      const int64_t D = d.D;
      if (A.bf16 == Bf16Mode::emulated) {
        auto round = [D](const float* src, float* dst) {
          for (int64_t i = 0; i < D; ++i) dst[i] = round_bf16(src[i]);
        };
        convert_rows(d.B, d.H, d.Tq, A.q, A.qs, D, q, round);
        convert_rows(d.B, d.Hkv, d.Tk, A.k, A.ks, D, k, round);
        convert_rows(d.B, d.Hkv, d.Tk, A.v, A.vs, D, v, round);
        A.q = q.get(), A.k = k.get(), A.v = v.get();
        A.qs = {d.H * d.Tq * D, d.Tq * D, D};
        A.ks = A.vs = {d.Hkv * d.Tk * D, d.Tk * D, D};
        if (backward) {
          convert_rows(d.B, d.H, d.Tq, A.dout, A.dos, D, dout, round);
          A.dout = dout.get(), A.dos = A.qs;
        }
      }
    } else {
      (void)A, (void)backward;
    }
  }
};

// Rows [0, m) of a (., kBk) tile of P or dS, columns [0, npad), rounded to bf16 in place
// (a float reader follows: the float tile products in emulated mode, DsEpi's P in both).
template <class T>
void round_tile(const Attn<T>& A, T* tile, int64_t m, int64_t npad) {
  if constexpr (std::is_same_v<T, float>) {
    if (A.bf16 == Bf16Mode::pairs)
      bf16_round_rows(tile, kBk, m, npad);
    else if (A.bf16 == Bf16Mode::emulated)
      for (int64_t r = 0; r < m; ++r)
        for (int64_t j = 0; j < npad; ++j) tile[r * kBk + j] = round_bf16(tile[r * kBk + j]);
  } else {
    (void)A, (void)tile, (void)m, (void)npad;
  }
}

// Key tile kt of src (k or v of (b, g)) as pair rows (kBk/2, D), made on first use and
// tagged like the panels of panel_of.
inline const float* pair_rows_of(const Attn<float>& A, const float* src, AttnStrides s, int64_t b, int64_t g,
                                 int64_t kt, std::vector<float>& store, std::vector<int64_t>& tags) {
  const int64_t D = A.d.D, tag = b * A.d.Hkv + g;
  float* p = store.data() + kt * (kBk / 2) * D;
  if (tags[kt] != tag) {
    const int64_t j0 = kt * kBk;
    bf16_pairs_of_rows(src + Attn<float>::at(s, b, g, j0), s.t, std::min(kBk, A.d.Tk - j0), D, p, D);
    tags[kt] = tag;
  }
  return p;
}

// Key tile kt of src (k or v of (b, g)) as a (D2, kBk) panel of pairs along d, made on
// first use (each key row paired, then the words transposed as panel_of does) and tagged.
inline const float* pair_panel_of(const Attn<float>& A, const float* src, AttnStrides s, int64_t b, int64_t g,
                                  int64_t kt, std::vector<float>& panels, std::vector<int64_t>& tags,
                                  PairWorkspace& pw) {
  const int64_t D2 = A.d.D / 2, tag = b * A.d.Hkv + g;
  float* p = panels.data() + kt * D2 * kBk;
  if (tags[kt] != tag) {
    const int64_t j0 = kt * kBk, nk = std::min(kBk, A.d.Tk - j0);
    bf16_pairs_along_rows(src + Attn<float>::at(s, b, g, j0), s.t, nk, A.d.D, pw.rows2.data(), D2);
    pack_transposed(nk, round_up(nk, kW<float>), D2, pw.rows2.data(), D2, p);
    tags[kt] = tag;
  }
  return p;
}

// C rows [0, m), columns [0, npad) (leading dim kBk) = epi(C): an epilogue as its own
// pass, for the products on pairs (bf16_tile_abt has none).
template <class T, class Epi>
void apply_epi(int64_t m, int64_t npad, T* C, const Epi& epi) {
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < npad; j += kW<T>)
      epi(r, j, batch<T>::load_unaligned(C + r * kBk + j)).store_unaligned(C + r * kBk + j);
}

// ---- the tile steps, in every mode --------------------------------------------------------

// ws.S = scale Qi Kj^T for query block [i0, i0+mq) of (b, h) and key tile kt (mq, npad),
// the columns past a row's diagonal as tile_abt leaves them (c0: Note [Flash attention tiling]).
template <class T>
void scores(const Attn<T>& A, int64_t b, int64_t h, int64_t i0, int64_t mq, int64_t kt, int64_t npad,
            int64_t c0, Workspace<T>& ws) {
  const int64_t g = h / A.group;
  if constexpr (std::is_same_v<T, float>)
    if (A.bf16 == Bf16Mode::pairs) {
      PairWorkspace& pw = *ws.pairs;  // pw.Q2: the block's rows (forward_block)
      const float* Kt2 = pair_panel_of(A, A.k, A.ks, b, g, kt, pw.Kt2, pw.kt2tag, pw);
      bf16_tile_abt(mq, npad, A.d.D / 2, pw.Q2, A.d.D / 2, Kt2, ws.S.data(), c0, A.scale);
      return;
    }
  const T* Kt = panel_of(A, A.k, A.ks, b, g, kt, ws.Kt, ws.ktag);
  tile_abt(mq, npad, A.d.D, A.qrow(b, h, i0), A.qs.t, Kt, ws.S.data(), c0, ScaleEpi<T>{batch<T>(A.scale)});
}

// ws.acc += P Vj with P = ws.S (mq, npad) the tile's unnormalised probabilities.
template <class T>
void pv_acc(const Attn<T>& A, int64_t b, int64_t g, int64_t mq, int64_t j0, int64_t nk, int64_t npad,
            int64_t c0, Workspace<T>& ws) {
  const int64_t D = A.d.D;
  T* S = ws.S.data();
  if constexpr (std::is_same_v<T, float>)
    if (A.bf16 == Bf16Mode::pairs) {
      PairWorkspace& pw = *ws.pairs;
      float* P2 = pw.P2.data();
      bf16_pairs_along_rows(S, kBk, mq, npad, P2, kBk / 2);
      const float* V2 = pair_rows_of(A, A.v, A.vs, b, g, j0 / kBk, pw.Vr2, pw.vr2tag);
      bf16_tile_ab_acc(mq, nk, D, P2, kBk / 2, 1, V2, D, ws.acc.data(), D, -kNoLimit, c0);
      return;
    }
  round_tile(A, S, mq, npad);
  tile_ab_acc(mq, nk, D, S, kBk, 1, A.vrow(b, g, j0), A.vs.t, ws.acc.data(), D, -kNoLimit, c0);
}

// ---- forward ----------------------------------------------------------------------

// One query block [i0, i0+mq) of (b, h): out rows and lse entries.
template <class T>
void forward_block(const Attn<T>& A, T* out, AttnStrides os, T* lse, int64_t b, int64_t h,
                   int64_t i0, int64_t mq, Workspace<T>& ws) {
  const int64_t D = A.d.D, g = h / A.group;
  if constexpr (std::is_same_v<T, float>)
    if (A.bf16 == Bf16Mode::pairs) {  // the block's rows as pairs, for every key tile's scores
      PairWorkspace& pw = *ws.pairs;
      bf16_pairs_along_rows(A.qrow(b, h, i0), A.qs.t, mq, D, pw.Q2f.data(), D / 2);
      pw.Q2 = pw.Q2f.data();
    }
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
    T* S = ws.S.data();
    scores(A, b, h, i0, mq, j0 / kBk, npad, c0, ws);  // S = scale Qi Kj^T
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
    pv_acc(A, b, g, mq, j0, nk, npad, c0, ws);  // acc += P Vj
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

// P tile for query block [i0, i0+mq) of (b, h) against key tile kt = j0 / kBk:
// ws.S = exp(scale Qi Kj^T - lse), masked (rounded to bf16 in the bf16 modes).
template <class T>
void recompute_probs(const Attn<T>& A, int64_t b, int64_t h, int64_t i0, int64_t mq, int64_t j0,
                     int64_t nk, int64_t npad, Workspace<T>& ws) {
  const int64_t c0 = A.off + i0 - j0 + 1, kt = j0 / kBk, g = h / A.group;  // row r sees keys [j0, j0 + c0 + r)
  const ProbEpi<T> epi{batch<T>(A.scale), lane_iota<T>(), A.lse + A.row_index(b, h, i0), c0, nk};
  if constexpr (std::is_same_v<T, float>)
    if (A.bf16 == Bf16Mode::pairs) {
      PairWorkspace& pw = *ws.pairs;  // pw.Q2: the block's rows (backward_block)
      const float* Kt2 = pair_panel_of(A, A.k, A.ks, b, g, kt, pw.Kt2, pw.kt2tag, pw);
      bf16_tile_abt(mq, npad, A.d.D / 2, pw.Q2, A.d.D / 2, Kt2, ws.S.data(), c0, 1.f);
      apply_epi(mq, npad, ws.S.data(), epi);
      round_tile(A, ws.S.data(), mq, npad);
      return;
    }
  const T* Kt = panel_of(A, A.k, A.ks, b, g, kt, ws.Kt, ws.ktag);
  tile_abt(mq, npad, A.d.D, A.qrow(b, h, i0), A.qs.t, Kt, ws.S.data(), c0, epi);
  round_tile(A, ws.S.data(), mq, npad);
}

// The query block [i0, i0+mq) of (b, h) on the query side of the backward's pairs: its
// rows of q and dout as pairs along d and as pair rows, from the cache slot of the block
// (made on first use); sets pw.qslot to the slot and points pw.Q2 at its q pairs.
inline void query_pairs(const Attn<float>& A, int64_t b, int64_t h, int64_t i0, int64_t mq, PairWorkspace& pw) {
  const int64_t D = A.d.D, D2 = D / 2;
  const int64_t slot = (h % A.group) * pw.nqb + i0 / kBq, tag = (b * A.d.H + h) * A.d.Tq + i0;
  float* Q2 = pw.Q2c.data() + slot * kBq * D2;
  if (pw.qtag[slot] != tag) {
    const float* q = A.qrow(b, h, i0);
    const float* dout = A.dout + Attn<float>::at(A.dos, b, h, i0);
    bf16_pairs_along_rows(q, A.qs.t, mq, D, Q2, D2);
    bf16_pairs_along_rows(dout, A.dos.t, mq, D, pw.dO2c.data() + slot * kBq * D2, D2);
    bf16_pairs_of_rows(q, A.qs.t, mq, D, pw.Qr2c.data() + slot * (kBq / 2) * D, D);
    bf16_pairs_of_rows(dout, A.dos.t, mq, D, pw.dOr2c.data() + slot * (kBq / 2) * D, D);
    pw.qtag[slot] = tag;
  }
  pw.Q2 = Q2, pw.qslot = slot;
}

// The backward's products on pairs (Bf16Mode::pairs), the float steps of backward_block
// below one for one, with P = ws.S already recomputed (and rounded).
inline void backward_block_pairs(const Attn<float>& A, int64_t b, int64_t h, int64_t i0, int64_t mq, int64_t j0,
                                 int64_t nk, Workspace<float>& ws, bool kv_grads, bool q_grads) {
  const int64_t D = A.d.D, D2 = D / 2, g = h / A.group, npad = round_up(nk, kW<float>), kt = j0 / kBk;
  const int64_t c0 = A.off + i0 - j0 + 1;
  PairWorkspace& pw = *ws.pairs;
  const float* P = ws.S.data();
  float* dS = ws.dP.data();
  const int64_t slot = pw.qslot;  // query_pairs' slot of this block
  const float* dO2 = pw.dO2c.data() + slot * kBq * D2;
  const float* Qr2 = pw.Qr2c.data() + slot * (kBq / 2) * D;
  const float* dOr2 = pw.dOr2c.data() + slot * (kBq / 2) * D;
  if (kv_grads) {  // dVj += P^T dOi, pairs along i
    bf16_pairs_of_rows(P, kBk, mq, npad, pw.PT2.data(), kBk);
    bf16_tile_ab_acc(nk, mq, D, pw.PT2.data(), 1, kBk, dOr2, D, A.dv + Attn<float>::at(A.dvs, b, g, j0),
                     A.dvs.t, 1 - c0, kNoLimit);
  }
  // dP = dOi Vj^T, then dS = scale * P * (dP - Di)
  const float* Vt2 = pair_panel_of(A, A.v, A.vs, b, g, kt, pw.Vt2, pw.vt2tag, pw);
  bf16_tile_abt(mq, npad, D2, dO2, D2, Vt2, dS, c0, 1.f);
  apply_epi(mq, npad, dS, DsEpi<float>{batch<float>(A.scale), P, A.Di + A.row_index(b, h, i0)});
  if (kv_grads) {  // dKj += dS^T Qi, pairs along i
    bf16_pairs_of_rows(dS, kBk, mq, npad, pw.dST2.data(), kBk);
    bf16_tile_ab_acc(nk, mq, D, pw.dST2.data(), 1, kBk, Qr2, D, A.dk + Attn<float>::at(A.dks, b, g, j0),
                     A.dks.t, 1 - c0, kNoLimit);
  }
  if (q_grads) {  // dQi += dS Kj, pairs along j
    bf16_pairs_along_rows(dS, kBk, mq, npad, pw.dS2.data(), kBk / 2);
    const float* K2 = pair_rows_of(A, A.k, A.ks, b, g, kt, pw.Kr2, pw.kr2tag);
    bf16_tile_ab_acc(mq, nk, D, pw.dS2.data(), kBk / 2, 1, K2, D, A.dq + Attn<float>::at(A.dqs, b, h, i0), A.dqs.t,
                     -kNoLimit, c0);
  }
}

// One query block x key tile step of the backward for query head h (Note [Flash
// attention tiling]).
template <class T>
void backward_block(const Attn<T>& A, int64_t b, int64_t h, int64_t i0, int64_t mq, int64_t j0,
                    int64_t nk, Workspace<T>& ws, bool kv_grads, bool q_grads) {
  const int64_t D = A.d.D, g = h / A.group, npad = round_up(nk, kW<T>), kt = j0 / kBk;
  const int64_t c0 = A.off + i0 - j0 + 1;  // row r sees keys [j0, j0 + c0 + r); key j is seen from row j + 1 - c0
  if constexpr (std::is_same_v<T, float>)
    if (A.bf16 == Bf16Mode::pairs) {
      query_pairs(A, b, h, i0, mq, *ws.pairs);
      recompute_probs(A, b, h, i0, mq, j0, nk, npad, ws);
      return backward_block_pairs(A, b, h, i0, mq, j0, nk, ws, kv_grads, q_grads);
    }
  recompute_probs(A, b, h, i0, mq, j0, nk, npad, ws);
  const T* Qi = A.qrow(b, h, i0);
  const T* dOi = A.dout + Attn<T>::at(A.dos, b, h, i0);
  const T* P = ws.S.data();
  T* dS = ws.dP.data();
  if (kv_grads)  // dVj += P^T dOi: A[r=j, p=i] = P[i*kBk + j]
    tile_ab_acc(nk, mq, D, P, 1, kBk, dOi, A.dos.t, A.dv + Attn<T>::at(A.dvs, b, g, j0), A.dvs.t, 1 - c0, kNoLimit);
  // dP = dOi Vj^T, stored as dS = scale * P * (dP - Di)
  const T* Vt = panel_of(A, A.v, A.vs, b, g, kt, ws.Vt, ws.vtag);
  tile_abt(mq, npad, D, dOi, A.dos.t, Vt, dS, c0, DsEpi<T>{batch<T>(A.scale), P, A.Di + A.row_index(b, h, i0)});
  round_tile(A, dS, mq, npad);
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
  const int64_t nk = std::min(kBk, A.d.Tk - j0);
  const int64_t i_first = std::max<int64_t>(0, j0 - A.off);  // first query row that sees key j0
  for (int64_t h = g * A.group; h < (g + 1) * A.group; ++h)
    for (int64_t i0 = i_first; i0 < A.d.Tq; i0 += kBq)
      backward_block(A, b, h, i0, std::min(kBq, A.d.Tq - i0), j0, nk, ws, true, q_grads);
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
  Bf16Operands<T> bf16_operands;
  bf16_operands.prepare(A, false);
  const int64_t nblk = (d.Tq + kBq - 1) / kBq, items = d.B * d.H * nblk;
#pragma omp parallel num_threads(tg::num_threads())
  {
    Workspace<T> ws(d.D, d.Tk, false, A.bf16 == Bf16Mode::pairs ? &d : nullptr);
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
  Bf16Operands<T> bf16_operands;  // after Di, which takes dout as it is
  bf16_operands.prepare(A, true);
  const bool pairs = A.bf16 == Bf16Mode::pairs;
  const int64_t nkt = (d.Tk + kBk - 1) / kBk, nqb = (d.Tq + kBq - 1) / kBq;

  if (attention_backward_one_pass(d, nt)) {
    // One item per (b, kv head g): it owns dk, dv of g and dq of g's query heads.
#pragma omp parallel num_threads(nt)
    {
      Workspace<T> ws(D, d.Tk, true, pairs ? &d : nullptr);
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
    Workspace<T> ws(D, d.Tk, true, pairs ? &d : nullptr);
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
      const int64_t bh = it / nqb, i0 = (nqb - 1 - it % nqb) * kBq, b = bh / d.H, h = bh % d.H;
      const int64_t mq = std::min(kBq, d.Tq - i0), kend = A.off + i0 + mq;
      zero_rows(dq, dqs, b, h, i0, mq, D);
      for (int64_t j0 = 0; j0 < kend; j0 += kBk) {
        backward_block(A, b, h, i0, mq, j0, std::min(kBk, kend - j0), ws, false, true);
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
      const int64_t bh = it / nqb, i0 = (nqb - 1 - it % nqb) * kBq, b = bh / d.H, h = bh % d.H;
      const int64_t mq = std::min(kBq, d.Tq - i0), kend = A.off + i0 + mq;
      T* P0 = probs + A.row_index(b, h, i0) * d.Tk;  // rows i0.. of the (Tq, Tk) matrix of (b, h)
      std::fill(P0, P0 + mq * d.Tk, T(0));
      for (int64_t j0 = 0; j0 < kend; j0 += kBk) {
        const int64_t nk = std::min(kBk, kend - j0), npad = round_up(nk, kW<T>);
        recompute_probs(A, b, h, i0, mq, j0, nk, npad, ws);
        for (int64_t r = 0; r < mq; ++r) std::copy_n(ws.S.data() + r * kBk, nk, P0 + r * d.Tk + j0);
      }
    }
  }
}

// ---- explicit instantiations -------------------------------------------------------

#define TG_ATTENTION_INSTANTIATE(T)                                                                      \
  template void attention_forward<T>(const AttnDims&, T, const T*, AttnStrides, const T*, AttnStrides,   \
                                     const T*, AttnStrides, T*, AttnStrides, T*);                         \
  template void attention_backward<T>(const AttnDims&, T, const T*, AttnStrides, const T*, AttnStrides,  \
                                      const T*, AttnStrides, const T*, AttnStrides, const T*,             \
                                      AttnStrides, const T*, T*, AttnStrides, T*, AttnStrides, T*,        \
                                      AttnStrides);                                                       \
  template void attention_probs<T>(const AttnDims&, T, const T*, AttnStrides, const T*, AttnStrides,     \
                                   const T*, T*);

TG_ATTENTION_INSTANTIATE(float)
TG_ATTENTION_INSTANTIATE(double)
#undef TG_ATTENTION_INSTANTIATE

}  // namespace tg::kernels
