// autograd/kernels/attention_naive.cpp — the naive twins of the attention kernels
// (attention.hpp): the full (Tq,Tk) score matrix of one (b, h) pair, a causal softmax
// row by row, then plain products. Quadratic memory, no tiling: the readable definition
// and the oracle the flash kernels (attention.cpp) are tested against.
#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/kernels/attention.hpp"
#include "autograd/kernels/attention_tiles.hpp"  // the argument checks

namespace tg::kernels {

using namespace attention_detail;

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

// P of every (b, h) straight from the full score matrix; lse is not read (the twin
// recomputes the softmax, so comparing it with attention_probs also checks lse).
template <class T>
void attention_probs_naive(const AttnDims& d, T scale, const T* q, AttnStrides qs, const T* k,
                           AttnStrides ks, const T* lse, T* probs) {
  check_dims("attention_probs_naive", d);
  check_ptrs("attention_probs_naive", {q, k, lse, probs});
  const int64_t TT = d.Tq * d.Tk;
#pragma omp parallel for num_threads(tg::num_threads()) schedule(static)
  for (int64_t bh = 0; bh < d.B * d.H; ++bh)
    naive_probs(d, scale, q, qs, k, ks, bh / d.H, bh % d.H, probs + bh * TT, static_cast<T*>(nullptr));
}

// ---- explicit instantiations -------------------------------------------------------

#define TG_ATTENTION_INSTANTIATE(T)                                                                      \
  template void attention_forward_naive<T>(const AttnDims&, T, const T*, AttnStrides, const T*,          \
                                           AttnStrides, const T*, AttnStrides, T*, AttnStrides, T*);      \
  template void attention_backward_naive<T>(const AttnDims&, T, const T*, AttnStrides, const T*,         \
                                            AttnStrides, const T*, AttnStrides, const T*, AttnStrides,    \
                                            const T*, AttnStrides, const T*, T*, AttnStrides, T*,         \
                                            AttnStrides, T*, AttnStrides);                                \
  template void attention_probs_naive<T>(const AttnDims&, T, const T*, AttnStrides, const T*,            \
                                         AttnStrides, const T*, T*);

TG_ATTENTION_INSTANTIATE(float)
TG_ATTENTION_INSTANTIATE(double)
#undef TG_ATTENTION_INSTANTIATE

}  // namespace tg::kernels
