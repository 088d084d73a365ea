// autograd/kernels/adamw.cpp — fused AdamW and SGD updates; see adamw.hpp for the formulas
// and for why the multiply-adds are fused where they are.
//
// Threading: the n elements are cut into blocks of kBlock (a multiple of every vector
// width) handed out by OpenMP; only the last block has a scalar tail, so the result does
// not depend on the thread count.
#include "autograd/kernels/adamw.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

// GCC 12 warns (falsely) about _mm512_undefined_ps() inside the AVX-512 intrinsics that
// xsimd::sqrt inlines into this file; the warning is about the compiler's own headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <xsimd/xsimd.hpp>

#include "autograd/kernels/parallel.hpp"

namespace tg::kernels {

namespace {

constexpr int64_t kBlock = 4096;                    // elements per OpenMP work item
constexpr int64_t kParallelMin = int64_t(1) << 15;  // below this, one thread

int threads_for(int64_t n) {
  if (n < kParallelMin) return 1;
  return int(std::max<int64_t>(1, std::min<int64_t>(tg::num_threads(), (n + kBlock - 1) / kBlock)));
}

// The coefficients of one AdamW step, computed in double as PyTorch's Python code does,
// then rounded to T once.
template <class T>
struct AdamWCoefs {
  T decay;          // 1 - lr*wd
  T b1, omb1;       // beta1, 1 - beta1
  T b2, omb2;       // beta2, 1 - beta2
  T bc2_sqrt;       // sqrt(1 - beta2^step)
  T neg_step_size;  // -lr / (1 - beta1^step)
  T eps;
};

template <class T>
AdamWCoefs<T> adamw_coefs(const char* K, int64_t n, T* p, const T* g, T* m, T* v, T lr,
                          T beta1, T beta2, T eps, T weight_decay, int64_t step) {
  auto bad = [&](const std::string& what) {
    return std::invalid_argument(std::string(K) + ": " + what + " (n=" + std::to_string(n) +
                                 ", step=" + std::to_string(step) + ")");
  };
  if (n < 0) throw bad("n must be >= 0");
  if (n > 0 && (!p || !g || !m || !v)) throw bad("p, g, m or v is nullptr");
  if (step < 1) throw bad("step is 1-based and must be >= 1");
  if (!(lr >= T(0))) throw bad("lr must be >= 0, got " + std::to_string(double(lr)));
  if (!(eps >= T(0))) throw bad("eps must be >= 0, got " + std::to_string(double(eps)));
  if (!(beta1 >= T(0) && beta1 < T(1)))
    throw bad("beta1 must be in [0, 1), got " + std::to_string(double(beta1)));
  if (!(beta2 >= T(0) && beta2 < T(1)))
    throw bad("beta2 must be in [0, 1), got " + std::to_string(double(beta2)));
  if (!(weight_decay >= T(0)))
    throw bad("weight_decay must be >= 0, got " + std::to_string(double(weight_decay)));
  const double k = double(step);
  const double bc1 = 1.0 - std::pow(double(beta1), k);
  const double bc2 = 1.0 - std::pow(double(beta2), k);
  AdamWCoefs<T> c;
  c.decay = T(1.0 - double(lr) * double(weight_decay));
  c.b1 = beta1;
  c.omb1 = T(1.0 - double(beta1));
  c.b2 = beta2;
  c.omb2 = T(1.0 - double(beta2));
  c.bc2_sqrt = T(std::sqrt(bc2));
  c.neg_step_size = T(-(double(lr) / bc1));
  c.eps = eps;
  return c;
}

template <class T>
void check_sgd(const char* K, int64_t n, T* p, const T* g, T* buf, T lr, T momentum,
               T dampening, T weight_decay, bool nesterov) {
  auto bad = [&](const std::string& what) {
    return std::invalid_argument(std::string(K) + ": " + what + " (n=" + std::to_string(n) + ")");
  };
  if (n < 0) throw bad("n must be >= 0");
  if (!(lr >= T(0))) throw bad("lr must be >= 0, got " + std::to_string(double(lr)));
  if (!(momentum >= T(0))) throw bad("momentum must be >= 0, got " + std::to_string(double(momentum)));
  if (!(weight_decay >= T(0)))
    throw bad("weight_decay must be >= 0, got " + std::to_string(double(weight_decay)));
  if (nesterov && (momentum <= T(0) || dampening != T(0)))
    throw bad("nesterov momentum requires momentum > 0 and dampening == 0");
  if (n > 0 && (!p || !g)) throw bad("p or g is nullptr");
  if (n > 0 && momentum != T(0) && !buf) throw bad("momentum != 0 needs a momentum buffer, buf is nullptr");
}

}  // namespace

// ======================================================================================
// AdamW
// ======================================================================================

template <class T>
void adamw_step(int64_t n, T* p, const T* g, T* m, T* v, T lr, T beta1, T beta2, T eps,
                T weight_decay, int64_t step) {
  const AdamWCoefs<T> c =
      adamw_coefs("adamw_step", n, p, g, m, v, lr, beta1, beta2, eps, weight_decay, step);
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  static_assert(kBlock % W == 0, "kBlock must be a multiple of the vector width");
  const B decay(c.decay), b1(c.b1), omb1(c.omb1), b2(c.b2), omb2(c.omb2), bc2s(c.bc2_sqrt),
      nss(c.neg_step_size), epsv(c.eps);
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  const int nt = threads_for(n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t i0 = blk * kBlock, i1 = std::min(n, i0 + kBlock);
    int64_t i = i0;
    for (; i + W <= i1; i += W) {
      const B gv = B::load_unaligned(g + i);
      const B pv = B::load_unaligned(p + i) * decay;
      const B mv = xsimd::fma(omb1, gv, B::load_unaligned(m + i) * b1);
      const B vv = xsimd::fma(omb2 * gv, gv, B::load_unaligned(v + i) * b2);
      const B denom = xsimd::sqrt(vv) / bc2s + epsv;
      (pv + (nss * mv) / denom).store_unaligned(p + i);
      mv.store_unaligned(m + i);
      vv.store_unaligned(v + i);
    }
    for (; i < i1; ++i) {
      const T pi = p[i] * c.decay;
      const T mi = std::fma(c.omb1, g[i], m[i] * c.b1);
      const T vi = std::fma(c.omb2 * g[i], g[i], v[i] * c.b2);
      const T denom = std::sqrt(vi) / c.bc2_sqrt + c.eps;
      p[i] = pi + (c.neg_step_size * mi) / denom;
      m[i] = mi;
      v[i] = vi;
    }
  }
}

template <class T>
void adamw_step_naive(int64_t n, T* p, const T* g, T* m, T* v, T lr, T beta1, T beta2, T eps,
                      T weight_decay, int64_t step) {
  const AdamWCoefs<T> c = adamw_coefs("adamw_step_naive", n, p, g, m, v, lr, beta1, beta2, eps,
                                      weight_decay, step);
  for (int64_t i = 0; i < n; ++i) {
    p[i] = p[i] * c.decay;                                  // param.mul_(1 - lr*wd)
    m[i] = std::fma(c.omb1, g[i], m[i] * c.b1);             // m.mul_(b1).add_(g, alpha=1-b1)
    v[i] = std::fma(c.omb2 * g[i], g[i], v[i] * c.b2);      // v.mul_(b2).addcmul_(g, g, value=1-b2)
    const T denom = std::sqrt(v[i]) / c.bc2_sqrt + c.eps;   // v.sqrt() / sqrt(bc2) + eps
    p[i] = p[i] + (c.neg_step_size * m[i]) / denom;         // p.addcdiv_(m, denom, value=-lr/bc1)
  }
}

// ======================================================================================
// SGD
// ======================================================================================

template <class T>
void sgd_step(int64_t n, T* p, const T* g, T* buf, T lr, T momentum, T dampening,
              T weight_decay, bool nesterov, bool first_step) {
  check_sgd("sgd_step", n, p, g, buf, lr, momentum, dampening, weight_decay, nesterov);
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  const bool decay = weight_decay != T(0), mom = momentum != T(0);
  const T one_m_damp = T(1.0 - double(dampening)), neg_lr = T(-double(lr));
  const B wdv(weight_decay), momv(momentum), odv(one_m_damp), nlrv(neg_lr);
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  const int nt = threads_for(n);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t i0 = blk * kBlock, i1 = std::min(n, i0 + kBlock);
    int64_t i = i0;
    for (; i + W <= i1; i += W) {
      const B pv = B::load_unaligned(p + i);
      B d = B::load_unaligned(g + i);
      if (decay) d = xsimd::fma(wdv, pv, d);
      if (mom) {
        const B bv = first_step ? d : xsimd::fma(odv, d, B::load_unaligned(buf + i) * momv);
        bv.store_unaligned(buf + i);
        d = nesterov ? xsimd::fma(momv, bv, d) : bv;
      }
      xsimd::fma(nlrv, d, pv).store_unaligned(p + i);
    }
    for (; i < i1; ++i) {
      T d = g[i];
      if (decay) d = std::fma(weight_decay, p[i], d);
      if (mom) {
        const T b = first_step ? d : std::fma(one_m_damp, d, buf[i] * momentum);
        buf[i] = b;
        d = nesterov ? std::fma(momentum, b, d) : b;
      }
      p[i] = std::fma(neg_lr, d, p[i]);
    }
  }
}

template <class T>
void sgd_step_naive(int64_t n, T* p, const T* g, T* buf, T lr, T momentum, T dampening,
                    T weight_decay, bool nesterov, bool first_step) {
  check_sgd("sgd_step_naive", n, p, g, buf, lr, momentum, dampening, weight_decay, nesterov);
  const T one_m_damp = T(1.0 - double(dampening)), neg_lr = T(-double(lr));
  for (int64_t i = 0; i < n; ++i) {
    T d = g[i];
    if (weight_decay != T(0)) d = std::fma(weight_decay, p[i], d);  // d = g.add(p, alpha=wd)
    if (momentum != T(0)) {
      if (first_step)
        buf[i] = d;                                                 // buf = clone(d)
      else
        buf[i] = std::fma(one_m_damp, d, buf[i] * momentum);        // buf.mul_(mom).add_(d, alpha=1-damp)
      d = nesterov ? std::fma(momentum, buf[i], d) : buf[i];        // d.add(buf, alpha=mom) or buf
    }
    p[i] = std::fma(neg_lr, d, p[i]);                               // p.add_(d, alpha=-lr)
  }
}

#define TG_INSTANTIATE_OPTIM(T)                                                              \
  template void adamw_step<T>(int64_t, T*, const T*, T*, T*, T, T, T, T, T, int64_t);        \
  template void adamw_step_naive<T>(int64_t, T*, const T*, T*, T*, T, T, T, T, T, int64_t);  \
  template void sgd_step<T>(int64_t, T*, const T*, T*, T, T, T, T, bool, bool);              \
  template void sgd_step_naive<T>(int64_t, T*, const T*, T*, T, T, T, T, bool, bool);

TG_INSTANTIATE_OPTIM(float)
TG_INSTANTIATE_OPTIM(double)
#undef TG_INSTANTIATE_OPTIM

}  // namespace tg::kernels
