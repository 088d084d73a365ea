// autograd/kernels/adamw.cpp — fused AdamW and SGD updates; see adamw.hpp for the formulas
// and Note [Exact rounding in the optimizer kernels] below for how the rounding is kept.
//
// Threading: the n elements are cut into blocks of kBlock (a multiple of every vector
// width) handed out by OpenMP; only the last block has a scalar tail, so the result does
// not depend on the thread count.
#include "autograd/kernels/adamw.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "autograd/kernels/simd.hpp"

namespace tg::kernels {

namespace {

constexpr int64_t kBlock = 4096;                    // elements per OpenMP work item
constexpr int64_t kParallelMin = int64_t(1) << 15;  // below this, one thread


// Note [Exact rounding in the optimizer kernels]
// To round exactly as PyTorch does, every multiply-add below must be fused where PyTorch
// fuses it and rounded where PyTorch rounds. Two things get in the way:
// 1. xsimd 8.1 has no AVX-512 fma kernel: xsimd::fma falls back to `x * y + z`, which the
//    compiler may contract into an FMA or not, and when z is itself a product it may
//    fuse the wrong product. fmadd() calls the AVX-512 intrinsic directly (elsewhere
//    xsimd::fma already maps to the FMA3 instruction).
// 2. GCC contracts `a * b + c` into an FMA by default (-ffp-contract=fast), also across
//    statements, so PyTorch's separate `param.mul_(1 - lr*wd)` followed by an add would
//    lose its rounding. rounded() hides a value from the optimiser with an empty asm
//    statement, so the product that made it is rounded and stored as written.
using simd::fmadd;

template <class T, class A>
xsimd::batch<T, A> rounded(const xsimd::batch<T, A>& v) {
  typename xsimd::batch<T, A>::register_type r = v;
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(r));
#elif defined(__aarch64__)
  asm("" : "+w"(r));  // "w": a SIMD/FP register
#endif
  return r;
}

template <class T>
T rounded(T v) {
  static_assert(std::is_floating_point_v<T>);
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(v));
#elif defined(__aarch64__)
  asm("" : "+w"(v));
#endif
  return v;
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
AdamWCoefs<T> adamw_coefs(const char* K, int64_t n, T* p, const T* g, T* m, T* v, double lr,
                          double beta1, double beta2, double eps, double weight_decay,
                          int64_t step) {
  auto bad = [&](const std::string& what) {
    return std::invalid_argument(std::string(K) + ": " + what + " (n=" + std::to_string(n) +
                                 ", step=" + std::to_string(step) + ")");
  };
  if (n < 0) throw bad("n must be >= 0");
  if (n > 0 && (!p || !g || !m || !v)) throw bad("p, g, m or v is nullptr");
  if (step < 1) throw bad("step is 1-based and must be >= 1");
  if (!(lr >= 0)) throw bad("lr must be >= 0, got " + std::to_string(lr));
  if (!(eps >= 0)) throw bad("eps must be >= 0, got " + std::to_string(eps));
  if (!(beta1 >= 0 && beta1 < 1)) throw bad("beta1 must be in [0, 1), got " + std::to_string(beta1));
  if (!(beta2 >= 0 && beta2 < 1)) throw bad("beta2 must be in [0, 1), got " + std::to_string(beta2));
  if (!(weight_decay >= 0))
    throw bad("weight_decay must be >= 0, got " + std::to_string(weight_decay));
  const double k = double(step);
  const double bc1 = 1.0 - std::pow(beta1, k);
  const double bc2 = 1.0 - std::pow(beta2, k);
  AdamWCoefs<T> c;
  c.decay = T(1.0 - lr * weight_decay);
  c.b1 = T(beta1);
  c.omb1 = T(1.0 - beta1);
  c.b2 = T(beta2);
  c.omb2 = T(1.0 - beta2);
  c.bc2_sqrt = T(std::sqrt(bc2));
  c.neg_step_size = T(-(lr / bc1));
  c.eps = T(eps);
  return c;
}

template <class T>
void check_sgd(const char* K, int64_t n, T* p, const T* g, T* buf, double lr, double momentum,
               double dampening, double weight_decay, bool nesterov) {
  auto bad = [&](const std::string& what) {
    return std::invalid_argument(std::string(K) + ": " + what + " (n=" + std::to_string(n) + ")");
  };
  if (n < 0) throw bad("n must be >= 0");
  if (!(lr >= 0)) throw bad("lr must be >= 0, got " + std::to_string(lr));
  if (!(momentum >= 0)) throw bad("momentum must be >= 0, got " + std::to_string(momentum));
  if (!(weight_decay >= 0))
    throw bad("weight_decay must be >= 0, got " + std::to_string(weight_decay));
  if (nesterov && (momentum <= 0 || dampening != 0))
    throw bad("nesterov momentum requires momentum > 0 and dampening == 0");
  if (n > 0 && (!p || !g)) throw bad("p or g is nullptr");
  if (n > 0 && momentum != 0 && !buf)
    throw bad("momentum != 0 needs a momentum buffer, buf is nullptr");
}

}  // namespace

// ======================================================================================
// AdamW
// ======================================================================================

// Note [Block bodies as functions]
// A block's loop is a function of its own, called from the for_blocks lambda, not the
// lambda's body: xsimd's unaligned stores may alias anything (__m256 is may_alias), so
// inside a lambda that captured the pointers and coefficient vectors by reference the
// compiler reloads them from the enclosing frame after every store (AdamW ran ~40% slower
// that way). Parameters and locals of a function stay in registers.
template <class T>
void adamw_block(int64_t i0, int64_t i1, T* p, const T* g, T* m, T* v, const AdamWCoefs<T> c) {
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  const B decay(c.decay), b1(c.b1), omb1(c.omb1), b2(c.b2), omb2(c.omb2), bc2s(c.bc2_sqrt),
      nss(c.neg_step_size), epsv(c.eps);
  int64_t i = i0;
  for (; i + W <= i1; i += W) {
    const B gv = B::load_unaligned(g + i);
    const B pv = rounded(B::load_unaligned(p + i) * decay);
    const B mv = fmadd(omb1, gv, B::load_unaligned(m + i) * b1);
    const B vv = fmadd(omb2 * gv, gv, B::load_unaligned(v + i) * b2);
    const B denom = xsimd::sqrt(vv) / bc2s + epsv;
    (pv + (nss * mv) / denom).store_unaligned(p + i);
    mv.store_unaligned(m + i);
    vv.store_unaligned(v + i);
  }
  for (; i < i1; ++i) {
    const T pi = rounded(p[i] * c.decay);
    const T mi = std::fma(c.omb1, g[i], m[i] * c.b1);
    const T vi = std::fma(c.omb2 * g[i], g[i], v[i] * c.b2);
    const T denom = std::sqrt(vi) / c.bc2_sqrt + c.eps;
    p[i] = pi + (c.neg_step_size * mi) / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

template <class T>
void adamw_step(int64_t n, T* p, const T* g, T* m, T* v, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step) {
  const AdamWCoefs<T> c =
      adamw_coefs("adamw_step", n, p, g, m, v, lr, beta1, beta2, eps, weight_decay, step);
  static_assert(kBlock % xsimd::batch<T>::size == 0, "kBlock must be a multiple of the vector width");
  simd::for_blocks(n, kBlock, kParallelMin, [&](int64_t i0, int64_t i1) { adamw_block(i0, i1, p, g, m, v, c); });
}

template <class T>
void adamw_step_naive(int64_t n, T* p, const T* g, T* m, T* v, double lr, double beta1,
                      double beta2, double eps, double weight_decay, int64_t step) {
  const AdamWCoefs<T> c = adamw_coefs("adamw_step_naive", n, p, g, m, v, lr, beta1, beta2, eps,
                                      weight_decay, step);
  for (int64_t i = 0; i < n; ++i) {
    p[i] = rounded(p[i] * c.decay);                         // param.mul_(1 - lr*wd)
    m[i] = std::fma(c.omb1, g[i], m[i] * c.b1);             // m.mul_(b1).add_(g, alpha=1-b1)
    v[i] = std::fma(c.omb2 * g[i], g[i], v[i] * c.b2);      // v.mul_(b2).addcmul_(g, g, value=1-b2)
    const T denom = std::sqrt(v[i]) / c.bc2_sqrt + c.eps;   // v.sqrt() / sqrt(bc2) + eps
    p[i] = p[i] + (c.neg_step_size * m[i]) / denom;         // p.addcdiv_(m, denom, value=-lr/bc1)
  }
}

// ======================================================================================
// SGD
// ======================================================================================

// SGD on block [i0, i1) (Note [Block bodies as functions]); coefficients rounded to T once,
// as PyTorch casts its Python-float alphas.
template <class T>
void sgd_block(int64_t i0, int64_t i1, T* p, const T* g, T* buf, const T wd, const T mo, const T one_m_damp,
               const T neg_lr, const bool decay, const bool mom, const bool nesterov, const bool first_step) {
  using B = xsimd::batch<T>;
  constexpr int64_t W = B::size;
  const B wdv(wd), momv(mo), odv(one_m_damp), nlrv(neg_lr);
  int64_t i = i0;
  for (; i + W <= i1; i += W) {
    const B pv = B::load_unaligned(p + i);
    B d = B::load_unaligned(g + i);
    if (decay) d = fmadd(wdv, pv, d);
    if (mom) {
      const B bv = first_step ? d : fmadd(odv, d, B::load_unaligned(buf + i) * momv);
      bv.store_unaligned(buf + i);
      d = nesterov ? fmadd(momv, bv, d) : bv;
    }
    fmadd(nlrv, d, pv).store_unaligned(p + i);
  }
  for (; i < i1; ++i) {
    T d = g[i];
    if (decay) d = std::fma(wd, p[i], d);
    if (mom) {
      const T b = first_step ? d : std::fma(one_m_damp, d, buf[i] * mo);
      buf[i] = b;
      d = nesterov ? std::fma(mo, b, d) : b;
    }
    p[i] = std::fma(neg_lr, d, p[i]);
  }
}

template <class T>
void sgd_step(int64_t n, T* p, const T* g, T* buf, double lr, double momentum,
              double dampening, double weight_decay, bool nesterov, bool first_step) {
  check_sgd("sgd_step", n, p, g, buf, lr, momentum, dampening, weight_decay, nesterov);
  const bool decay = weight_decay != 0, mom = momentum != 0;
  const T wd = T(weight_decay), mo = T(momentum), one_m_damp = T(1.0 - dampening), neg_lr = T(-lr);
  simd::for_blocks(n, kBlock, kParallelMin, [&](int64_t i0, int64_t i1) {
    sgd_block(i0, i1, p, g, buf, wd, mo, one_m_damp, neg_lr, decay, mom, nesterov, first_step);
  });
}

template <class T>
void sgd_step_naive(int64_t n, T* p, const T* g, T* buf, double lr, double momentum,
                    double dampening, double weight_decay, bool nesterov, bool first_step) {
  check_sgd("sgd_step_naive", n, p, g, buf, lr, momentum, dampening, weight_decay, nesterov);
  const T wd = T(weight_decay), mo = T(momentum), one_m_damp = T(1.0 - dampening),
          neg_lr = T(-lr);
  for (int64_t i = 0; i < n; ++i) {
    T d = g[i];
    if (weight_decay != 0) d = std::fma(wd, p[i], d);        // d = g.add(p, alpha=wd)
    if (momentum != 0) {
      if (first_step)
        buf[i] = d;                                           // buf = clone(d)
      else
        buf[i] = std::fma(one_m_damp, d, buf[i] * mo);        // buf.mul_(mom).add_(d, alpha=1-damp)
      d = nesterov ? std::fma(mo, buf[i], d) : buf[i];        // d.add(buf, alpha=mom) or buf
    }
    p[i] = std::fma(neg_lr, d, p[i]);                               // p.add_(d, alpha=-lr)
  }
}

#define TG_INSTANTIATE_OPTIM(T)                                                              \
  template void adamw_step<T>(int64_t, T*, const T*, T*, T*, double, double, double, double,   \
                              double, int64_t);                                               \
  template void adamw_step_naive<T>(int64_t, T*, const T*, T*, T*, double, double, double,     \
                                    double, double, int64_t);                                 \
  template void sgd_step<T>(int64_t, T*, const T*, T*, double, double, double, double, bool,   \
                            bool);                                                            \
  template void sgd_step_naive<T>(int64_t, T*, const T*, T*, double, double, double, double,   \
                                  bool, bool);

TG_INSTANTIATE_OPTIM(float)
TG_INSTANTIATE_OPTIM(double)
#undef TG_INSTANTIATE_OPTIM

}  // namespace tg::kernels
