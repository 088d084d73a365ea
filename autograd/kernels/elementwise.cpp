// autograd/kernels/elementwise.cpp — see elementwise.hpp.
//
// Layout: small private helpers (thread split, the vector map with its padded
// tail, the vector erfc), then each public kernel with its naive twin right
// after it. Every fast kernel computes each element with exactly one vector
// function, whether the element sits in the body or in the tail (the tail is
// copied into a padded vector), so elementwise results do not depend on the
// array length, the alignment or the thread count.
#include "autograd/kernels/elementwise.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

// GCC 12 reports "__Y may be used uninitialized" from inside xsimd 8.1's
// AVX-512 exp/ldexp (the _mm512_undefined_* idiom) once inlined here; the
// warning is about xsimd's code, not ours, and would bury real ones.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "autograd/kernels/parallel.hpp"

namespace tg::kernels {

namespace {

// Arrays shorter than these stay on the calling thread: below them OpenMP's
// fork/join costs more than the loop. Transcendental maps are ~10x dearer
// per element than the memory-bound ones, hence the two thresholds.
constexpr int64_t kGrainMath = int64_t(1) << 14;
constexpr int64_t kGrainSimple = int64_t(1) << 16;

// Note [xsimd fma on AVX-512]
// xsimd 8.1 has no AVX-512 fma/fms kernels: on an avx512 arch xsimd::fma
// falls back to the generic `x * y + z`, two roundings (and with -std=c++20
// GCC does not contract it). Where one rounding matters we call the
// intrinsic ourselves; on other archs xsimd::fma is the real instruction.
template <class T, class A>
xsimd::batch<T, A> fmadd(const xsimd::batch<T, A>& x, const xsimd::batch<T, A>& y,
                         const xsimd::batch<T, A>& z) {
#if defined(__AVX512F__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    if constexpr (std::is_same_v<T, float>) return _mm512_fmadd_ps(x, y, z);
    else return _mm512_fmadd_pd(x, y, z);
  } else
#endif
    return xsimd::fma(x, y, z);
}
// x * y - z with one rounding.
template <class T, class A>
xsimd::batch<T, A> fmsub(const xsimd::batch<T, A>& x, const xsimd::batch<T, A>& y,
                         const xsimd::batch<T, A>& z) {
#if defined(__AVX512F__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    if constexpr (std::is_same_v<T, float>) return _mm512_fmsub_ps(x, y, z);
    else return _mm512_fmsub_pd(x, y, z);
  } else
#endif
    return xsimd::fms(x, y, z);
}

void check_n(const char* kernel, int64_t n) {
  if (n < 0)
    throw std::invalid_argument(std::string(kernel) + ": negative length n = " + std::to_string(n));
}

void check_rows(const char* kernel, int64_t rows, int64_t n) {
  if (rows < 0 || n < 0)
    throw std::invalid_argument(std::string(kernel) + ": negative shape (" + std::to_string(rows) +
                                ", " + std::to_string(n) + ")");
}

// Runs body(i) for i in [0, count): on tg::num_threads() threads with a
// static schedule when `big`, else on the calling thread.
template <class F>
void parallel_for(int64_t count, bool big, F&& body) {
  const int nt = tg::num_threads();
  if (big && nt > 1 && count > 1) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < count; ++i) body(i);
  } else {
    for (int64_t i = 0; i < count; ++i) body(i);
  }
}

// Runs body(i0, i1) over [0, nvec·W) split into per-thread ranges of whole
// vectors (static, one contiguous range per thread) when `big`, else once.
template <class Body>
void parallel_vectors(int64_t nvec, int64_t W, bool big, Body&& body) {
  const int nt = tg::num_threads();
  if (big && nt > 1 && nvec > 1) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int p = 0; p < nt; ++p) body(nvec * p / nt * W, nvec * (p + 1) / nt * W);
  } else {
    body(0, nvec * W);
  }
}

// The vector loop of vmap over [i0, i1). The pointers are parameters (not
// captured by reference), so the compiler keeps them in registers instead of
// reloading them after every store.
template <class V, class F, class T, class... In>
void vmap_range(int64_t i0, int64_t i1, F f, T* out, const In*... in) {
  for (int64_t i = i0; i < i1; i += int64_t(V::size)) f(V::load_unaligned(in + i)...).store_unaligned(out + i);
}

// out[i] = f(in_0[i], in_1[i], ...) for i in [0, n), f a function of
// xsimd::batch<T>. out may alias any input. The last n % W elements are
// copied into vectors padded with 1 (a value every f here accepts), so they
// go through the same f as the rest.
template <class T, class F, class... In>
void vmap(int64_t n, int64_t grain, F f, T* out, const In*... in) {
  using V = xsimd::batch<T>;
  constexpr int64_t W = V::size;
  static_assert((std::is_same_v<In, T> && ...), "vmap: all arrays have the same type");
  const int64_t nvec = n / W;
  parallel_vectors(nvec, W, n >= grain,
                   [&](int64_t i0, int64_t i1) { vmap_range<V>(i0, i1, f, out, in...); });
  const int64_t i0 = nvec * W, k = n - i0;
  if (k == 0) return;
  constexpr std::size_t N = sizeof...(In);
  alignas(64) T buf[N][W];
  const T* src[N] = {in...};
  for (std::size_t a = 0; a < N; ++a)
    for (int64_t j = 0; j < W; ++j) buf[a][j] = j < k ? src[a][i0 + j] : T(1);
  alignas(64) T res[W];
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    f(V::load_aligned(buf[I])...).store_aligned(res);
  }(std::make_index_sequence<N>{});
  for (int64_t j = 0; j < k; ++j) out[i0 + j] = res[j];
}

// ---- constants shared by the fast and the naive kernels ----

constexpr double kSqrt2OverPi = 0.79788456080286535587989211986876;  // √(2/π)
constexpr double kGeluC = 0.044715;
constexpr double kGeluClamp = 1e4;                                     // Note [Stable gelu]
constexpr double kSqrt1_2 = 0.70710678118654752440084436210485;       // 1/√2
constexpr double kInvSqrt2Pi = 0.39894228040143267793994605993438;    // 1/√(2π)

// ---- vector erfc (Note [Vector erfc]) ----

// G(t) = erfcx(z) (z + 2), t = (z - 2)/(z + 2): monomial coefficients in t,
// lowest degree first, from the Chebyshev interpolant (mpmath, 60 digits).
constexpr double kErfcG_double[] = {
    1.02158270524202297513,     -0.687160684413810597723,   0.279472092556054984054,
    -0.0364422315068777639482,  -0.0215106618895108216188,  0.00647918506767227846385,
    0.0030906120601144902338,   -0.000837296060749871925791, -0.00066307352194255901598,
    0.0000343714109149792704908, 0.000144470914857875914563, 0.0000341491171371999626639,
    -0.0000216972215249628927297, -0.0000161221305623419653546, -0.00000112174068486469062192,
    0.0000036481743337201174512, 0.00000199230005220477918131, -8.73598960246800375533e-9,
    -5.54640157145419274946e-7, -3.05849306816127694446e-7,  -2.33172171863921670201e-8,
    8.78041277634382456342e-8,  7.46414128697626149932e-8,   8.95140598120651554893e-9,
    -2.84881230243343219329e-8, -1.37196576365500460908e-8,  5.28988832636706536863e-9,
    4.14323556216086080696e-9,  -4.11365018170048289775e-10, -4.77994710515129246502e-10};
constexpr float kErfcG_float[] = {
    1.02158270552244715569f,    -0.687160665940192725915f,  0.279472065323773130658f,
    -0.0364427684915142132133f, -0.0215102323055092804211f, 0.00648370979073500840989f,
    0.0030880953661785011721f,  -0.000854040301524499840078f, -0.000656200295970283062771f,
    0.0000659030785403706523538f, 0.000135375613794690369516f, 0.00000265479103535238400736f,
    -0.000017017739800638252254f};

template <class T>
struct ErfcTable;
template <>
struct ErfcTable<double> {
  static constexpr const double* c = kErfcG_double;
  static constexpr int degree = int(std::size(kErfcG_double)) - 1;
  static constexpr double zmax = 30.0;  // erfc(z) < 1e-320 beyond
};
template <>
struct ErfcTable<float> {
  static constexpr const float* c = kErfcG_float;
  static constexpr int degree = int(std::size(kErfcG_float)) - 1;
  static constexpr float zmax = 11.0f;  // erfc(z) < 1e-54 beyond
};

template <class T>
xsimd::batch<T> erfc_vec(xsimd::batch<T> z) {
  using V = xsimd::batch<T>;
  using Tab = ErfcTable<T>;
  const V a = xsimd::abs(z);
  const V inv = V(T(1)) / (a + V(T(2)));
  const V t = (a - V(T(2))) * inv;
  V g(Tab::c[Tab::degree]);
  for (int k = Tab::degree - 1; k >= 0; --k) g = fmadd(g, t, V(Tab::c[k]));
  const V hi = a * a;
  const V lo = fmsub(a, a, hi);  // a² = hi + lo exactly
  const V e = xsimd::exp(-hi) * (V(T(1)) - lo);
  V r = e * g * inv;
  r = xsimd::select(a > V(Tab::zmax), V(T(0)), r);  // also keeps ∞ from making 0·∞
  return xsimd::select(z < V(T(0)), V(T(2)) - r, r);
}

// ---- scalar forms used by the naive twins ----

template <class T>
T gelu_u(T x) {  // u(x) of gelu_tanh, with x clamped (Note [Stable gelu])
  const T xc = std::clamp(x, T(-kGeluClamp), T(kGeluClamp));
  return T(kSqrt2OverPi) * (xc + T(kGeluC) * xc * xc * xc);
}
template <class T>
T gelu_du(T x) {  // u'(x)
  const T xc = std::clamp(x, T(-kGeluClamp), T(kGeluClamp));
  return T(kSqrt2OverPi) * (T(1) + T(3 * kGeluC) * xc * xc);
}

// ---- vector forms used by the fast kernels (same operation order) ----

template <class V>
V v_gelu_u(V x) {
  using T = typename V::value_type;
  const V xc = xsimd::clip(x, V(T(-kGeluClamp)), V(T(kGeluClamp)));
  return V(T(kSqrt2OverPi)) * (xc + V(T(kGeluC)) * xc * xc * xc);
}
template <class V>
V v_gelu_du(V x) {
  using T = typename V::value_type;
  const V xc = xsimd::clip(x, V(T(-kGeluClamp)), V(T(kGeluClamp)));
  return V(T(kSqrt2OverPi)) * (V(T(1)) + V(T(3 * kGeluC)) * xc * xc);
}

// A plain loop, for the naive twins.
template <class F>
void each(int64_t n, F&& body) {
  for (int64_t i = 0; i < n; ++i) body(i);
}

}  // namespace

// ============================================================================
// unary maps
// ============================================================================

const char* unary_name(Unary f) {
  switch (f) {
    case Unary::Exp: return "exp";
    case Unary::Log: return "log";
    case Unary::Sqrt: return "sqrt";
    case Unary::Rsqrt: return "rsqrt";
    case Unary::Tanh: return "tanh";
    case Unary::Sigmoid: return "sigmoid";
    case Unary::Silu: return "silu";
    case Unary::Relu: return "relu";
    case Unary::GeluTanh: return "gelu_tanh";
    case Unary::GeluErf: return "gelu_erf";
    case Unary::Abs: return "abs";
  }
  return "?";
}

bool unary_backward_uses_x(Unary f) {
  switch (f) {
    case Unary::Log:
    case Unary::Silu:
    case Unary::GeluTanh:
    case Unary::GeluErf:
    case Unary::Abs: return true;
    default: return false;
  }
}

bool unary_backward_uses_y(Unary f) { return !unary_backward_uses_x(f); }

namespace {
// Maps with no transcendental call are memory bound and get the larger grain.
bool unary_forward_is_cheap(Unary f) { return f == Unary::Relu || f == Unary::Abs; }
bool unary_backward_is_cheap(Unary f) {
  return !(f == Unary::Silu || f == Unary::GeluTanh || f == Unary::GeluErf);
}

template <class T>
void check_unary_backward(Unary f, int64_t n, const T* x, const T* y, const T* dy, T* dx) {
  check_n("unary_backward", n);
  if (n == 0) return;
  const bool bad = (unary_backward_uses_x(f) && !x) || (unary_backward_uses_y(f) && !y) || !dy || !dx;
  if (bad)
    throw std::invalid_argument(std::string("unary_backward(") + unary_name(f) + ", n = " +
                                std::to_string(n) + "): a needed array is null (" +
                                (unary_backward_uses_x(f) ? "x" : "y") + ", dy and dx are needed)");
}
}  // namespace

template <class T>
void unary_forward(Unary f, int64_t n, const T* x, T* y) {
  using V = xsimd::batch<T>;
  check_n("unary_forward", n);
  const int64_t g = unary_forward_is_cheap(f) ? kGrainSimple : kGrainMath;
  const V one(T(1)), zero(T(0));
  switch (f) {
    case Unary::Exp: vmap(n, g, [](V a) { return xsimd::exp(a); }, y, x); break;
    case Unary::Log: vmap(n, g, [](V a) { return xsimd::log(a); }, y, x); break;
    case Unary::Sqrt: vmap(n, g, [](V a) { return xsimd::sqrt(a); }, y, x); break;
    // Not xsimd::rsqrt: that is the ~12-bit hardware estimate.
    case Unary::Rsqrt: vmap(n, g, [=](V a) { return one / xsimd::sqrt(a); }, y, x); break;
    case Unary::Tanh: vmap(n, g, [](V a) { return xsimd::tanh(a); }, y, x); break;
    case Unary::Sigmoid: vmap(n, g, [=](V a) { return one / (one + xsimd::exp(-a)); }, y, x); break;
    case Unary::Silu: vmap(n, g, [=](V a) { return a / (one + xsimd::exp(-a)); }, y, x); break;
    case Unary::Relu: vmap(n, g, [=](V a) { return xsimd::select(a < zero, zero, a); }, y, x); break;
    case Unary::GeluTanh:
      vmap(n, g, [=](V a) { return a / (one + xsimd::exp(V(T(-2)) * v_gelu_u(a))); }, y, x);
      break;
    case Unary::GeluErf:
      vmap(n, g, [](V a) { return V(T(0.5)) * a * erfc_vec(a * V(T(-kSqrt1_2))); }, y, x);
      break;
    case Unary::Abs: vmap(n, g, [](V a) { return xsimd::abs(a); }, y, x); break;
  }
}

template <class T>
void unary_forward_naive(Unary f, int64_t n, const T* x, T* y) {
  check_n("unary_forward_naive", n);
  switch (f) {
    case Unary::Exp: each(n, [&](int64_t i) { y[i] = std::exp(x[i]); }); break;
    case Unary::Log: each(n, [&](int64_t i) { y[i] = std::log(x[i]); }); break;
    case Unary::Sqrt: each(n, [&](int64_t i) { y[i] = std::sqrt(x[i]); }); break;
    case Unary::Rsqrt: each(n, [&](int64_t i) { y[i] = T(1) / std::sqrt(x[i]); }); break;
    case Unary::Tanh: each(n, [&](int64_t i) { y[i] = std::tanh(x[i]); }); break;
    case Unary::Sigmoid: each(n, [&](int64_t i) { y[i] = T(1) / (T(1) + std::exp(-x[i])); }); break;
    case Unary::Silu: each(n, [&](int64_t i) { y[i] = x[i] / (T(1) + std::exp(-x[i])); }); break;
    case Unary::Relu: each(n, [&](int64_t i) { y[i] = x[i] < T(0) ? T(0) : x[i]; }); break;
    case Unary::GeluTanh:
      each(n, [&](int64_t i) { y[i] = x[i] / (T(1) + std::exp(T(-2) * gelu_u(x[i]))); });
      break;
    case Unary::GeluErf:
      each(n, [&](int64_t i) { y[i] = T(0.5) * x[i] * std::erfc(x[i] * T(-kSqrt1_2)); });
      break;
    case Unary::Abs: each(n, [&](int64_t i) { y[i] = std::abs(x[i]); }); break;
  }
}

template <class T>
void unary_backward(Unary f, int64_t n, const T* x, const T* y, const T* dy, T* dx) {
  using V = xsimd::batch<T>;
  check_unary_backward(f, n, x, y, dy, dx);
  if (n == 0) return;
  const int64_t g = unary_backward_is_cheap(f) ? kGrainSimple : kGrainMath;
  const V one(T(1)), zero(T(0));
  switch (f) {
    case Unary::Exp:
      vmap(n, g, [](V yv, V d, V acc) { return acc + d * yv; }, dx, y, dy, dx);
      break;
    case Unary::Log:
      vmap(n, g, [](V xv, V d, V acc) { return acc + d / xv; }, dx, x, dy, dx);
      break;
    case Unary::Sqrt:
      vmap(n, g, [](V yv, V d, V acc) { return acc + V(T(0.5)) * d / yv; }, dx, y, dy, dx);
      break;
    case Unary::Rsqrt:
      vmap(n, g, [](V yv, V d, V acc) { return acc + V(T(-0.5)) * d * yv * yv * yv; }, dx, y, dy,
           dx);
      break;
    case Unary::Tanh:
      vmap(n, g, [=](V yv, V d, V acc) { return acc + d * (one - yv * yv); }, dx, y, dy, dx);
      break;
    case Unary::Sigmoid:
      vmap(n, g, [=](V yv, V d, V acc) { return acc + d * yv * (one - yv); }, dx, y, dy, dx);
      break;
    case Unary::Silu:
      vmap(n, g,
           [=](V xv, V d, V acc) {
             const V s = one / (one + xsimd::exp(-xv));
             return acc + d * (s * (one + xv * (one - s)));
           },
           dx, x, dy, dx);
      break;
    case Unary::Relu:
      vmap(n, g, [=](V yv, V d, V acc) { return acc + xsimd::select(yv > zero, d, zero); }, dx, y,
           dy, dx);
      break;
    case Unary::GeluTanh:
      vmap(n, g,
           [=](V xv, V d, V acc) {
             const V s = one / (one + xsimd::exp(V(T(-2)) * v_gelu_u(xv)));
             return acc + d * (s + V(T(2)) * xv * s * (one - s) * v_gelu_du(xv));
           },
           dx, x, dy, dx);
      break;
    case Unary::GeluErf:
      vmap(n, g,
           [](V xv, V d, V acc) {
             const V cdf = V(T(0.5)) * erfc_vec(xv * V(T(-kSqrt1_2)));
             const V pdf = xsimd::exp(V(T(-0.5)) * xv * xv) * V(T(kInvSqrt2Pi));
             return acc + d * (cdf + xv * pdf);
           },
           dx, x, dy, dx);
      break;
    case Unary::Abs:
      vmap(n, g,
           [=](V xv, V d, V acc) {
             return acc + xsimd::select(xv > zero, d, xsimd::select(xv < zero, -d, zero));
           },
           dx, x, dy, dx);
      break;
  }
}

template <class T>
void unary_backward_naive(Unary f, int64_t n, const T* x, const T* y, const T* dy, T* dx) {
  check_unary_backward(f, n, x, y, dy, dx);
  if (n == 0) return;
  switch (f) {
    case Unary::Exp: each(n, [&](int64_t i) { dx[i] += dy[i] * y[i]; }); break;
    case Unary::Log: each(n, [&](int64_t i) { dx[i] += dy[i] / x[i]; }); break;
    case Unary::Sqrt: each(n, [&](int64_t i) { dx[i] += T(0.5) * dy[i] / y[i]; }); break;
    case Unary::Rsqrt:
      each(n, [&](int64_t i) { dx[i] += T(-0.5) * dy[i] * y[i] * y[i] * y[i]; });
      break;
    case Unary::Tanh: each(n, [&](int64_t i) { dx[i] += dy[i] * (T(1) - y[i] * y[i]); }); break;
    case Unary::Sigmoid: each(n, [&](int64_t i) { dx[i] += dy[i] * y[i] * (T(1) - y[i]); }); break;
    case Unary::Silu:
      each(n, [&](int64_t i) {
        const T s = T(1) / (T(1) + std::exp(-x[i]));
        dx[i] += dy[i] * (s * (T(1) + x[i] * (T(1) - s)));
      });
      break;
    case Unary::Relu: each(n, [&](int64_t i) { dx[i] += y[i] > T(0) ? dy[i] : T(0); }); break;
    case Unary::GeluTanh:
      each(n, [&](int64_t i) {
        const T s = T(1) / (T(1) + std::exp(T(-2) * gelu_u(x[i])));
        dx[i] += dy[i] * (s + T(2) * x[i] * s * (T(1) - s) * gelu_du(x[i]));
      });
      break;
    case Unary::GeluErf:
      each(n, [&](int64_t i) {
        const T cdf = T(0.5) * std::erfc(x[i] * T(-kSqrt1_2));
        const T pdf = std::exp(T(-0.5) * x[i] * x[i]) * T(kInvSqrt2Pi);
        dx[i] += dy[i] * (cdf + x[i] * pdf);
      });
      break;
    case Unary::Abs:
      each(n, [&](int64_t i) {
        dx[i] += x[i] > T(0) ? dy[i] : (x[i] < T(0) ? -dy[i] : T(0));
      });
      break;
  }
}

// ============================================================================
// binary maps
// ============================================================================

const char* binary_name(Binary op) {
  switch (op) {
    case Binary::Add: return "add";
    case Binary::Sub: return "sub";
    case Binary::Mul: return "mul";
    case Binary::Div: return "div";
  }
  return "?";
}

template <class T>
void binary_forward(Binary op, int64_t n, const T* x, const T* y, T* z) {
  using V = xsimd::batch<T>;
  check_n("binary_forward", n);
  const int64_t g = kGrainSimple;
  switch (op) {
    case Binary::Add: vmap(n, g, [](V a, V b) { return a + b; }, z, x, y); break;
    case Binary::Sub: vmap(n, g, [](V a, V b) { return a - b; }, z, x, y); break;
    case Binary::Mul: vmap(n, g, [](V a, V b) { return a * b; }, z, x, y); break;
    case Binary::Div: vmap(n, g, [](V a, V b) { return a / b; }, z, x, y); break;
  }
}

template <class T>
void binary_forward_naive(Binary op, int64_t n, const T* x, const T* y, T* z) {
  check_n("binary_forward_naive", n);
  switch (op) {
    case Binary::Add: each(n, [&](int64_t i) { z[i] = x[i] + y[i]; }); break;
    case Binary::Sub: each(n, [&](int64_t i) { z[i] = x[i] - y[i]; }); break;
    case Binary::Mul: each(n, [&](int64_t i) { z[i] = x[i] * y[i]; }); break;
    case Binary::Div: each(n, [&](int64_t i) { z[i] = x[i] / y[i]; }); break;
  }
}

template <class T>
void binary_forward_scalar(Binary op, int64_t n, const T* x, T s, T* z) {
  using V = xsimd::batch<T>;
  check_n("binary_forward_scalar", n);
  const int64_t g = kGrainSimple;
  const V sv(s);
  switch (op) {
    case Binary::Add: vmap(n, g, [=](V a) { return a + sv; }, z, x); break;
    case Binary::Sub: vmap(n, g, [=](V a) { return a - sv; }, z, x); break;
    case Binary::Mul: vmap(n, g, [=](V a) { return a * sv; }, z, x); break;
    case Binary::Div: vmap(n, g, [=](V a) { return a / sv; }, z, x); break;
  }
}

template <class T>
void binary_forward_scalar_naive(Binary op, int64_t n, const T* x, T s, T* z) {
  check_n("binary_forward_scalar_naive", n);
  switch (op) {
    case Binary::Add: each(n, [&](int64_t i) { z[i] = x[i] + s; }); break;
    case Binary::Sub: each(n, [&](int64_t i) { z[i] = x[i] - s; }); break;
    case Binary::Mul: each(n, [&](int64_t i) { z[i] = x[i] * s; }); break;
    case Binary::Div: each(n, [&](int64_t i) { z[i] = x[i] / s; }); break;
  }
}

template <class T>
void binary_forward_scalar_lhs(Binary op, int64_t n, T s, const T* y, T* z) {
  using V = xsimd::batch<T>;
  check_n("binary_forward_scalar_lhs", n);
  const int64_t g = kGrainSimple;
  const V sv(s);
  switch (op) {
    case Binary::Add: vmap(n, g, [=](V b) { return sv + b; }, z, y); break;
    case Binary::Sub: vmap(n, g, [=](V b) { return sv - b; }, z, y); break;
    case Binary::Mul: vmap(n, g, [=](V b) { return sv * b; }, z, y); break;
    case Binary::Div: vmap(n, g, [=](V b) { return sv / b; }, z, y); break;
  }
}

template <class T>
void binary_forward_scalar_lhs_naive(Binary op, int64_t n, T s, const T* y, T* z) {
  check_n("binary_forward_scalar_lhs_naive", n);
  switch (op) {
    case Binary::Add: each(n, [&](int64_t i) { z[i] = s + y[i]; }); break;
    case Binary::Sub: each(n, [&](int64_t i) { z[i] = s - y[i]; }); break;
    case Binary::Mul: each(n, [&](int64_t i) { z[i] = s * y[i]; }); break;
    case Binary::Div: each(n, [&](int64_t i) { z[i] = s / y[i]; }); break;
  }
}

namespace {
template <class T>
void check_binary_backward(const char* kernel, Binary op, int64_t n, const T* x, const T* y,
                           const T* dz, T* dx, T* dy) {
  check_n(kernel, n);
  if (n == 0 || (!dx && !dy)) return;
  const bool mul_div = op == Binary::Mul || op == Binary::Div;
  const bool need_x = mul_div && dy;
  const bool need_y = (op == Binary::Mul && dx) || (op == Binary::Div);
  if (!dz || (need_x && !x) || (need_y && !y))
    throw std::invalid_argument(std::string(kernel) + "(" + binary_name(op) + ", n = " +
                                std::to_string(n) + "): a needed input array is null");
}
}  // namespace

template <class T>
void binary_backward(Binary op, int64_t n, const T* x, const T* y, const T* dz, T* dx, T* dy) {
  using V = xsimd::batch<T>;
  check_binary_backward("binary_backward", op, n, x, y, dz, dx, dy);
  if (n == 0) return;
  const int64_t g = kGrainSimple;
  // Each output is its own pass, so each loop owns its writes.
  switch (op) {
    case Binary::Add:
      if (dx) vmap(n, g, [](V d, V acc) { return acc + d; }, dx, dz, dx);
      if (dy) vmap(n, g, [](V d, V acc) { return acc + d; }, dy, dz, dy);
      break;
    case Binary::Sub:
      if (dx) vmap(n, g, [](V d, V acc) { return acc + d; }, dx, dz, dx);
      if (dy) vmap(n, g, [](V d, V acc) { return acc - d; }, dy, dz, dy);
      break;
    case Binary::Mul:
      if (dx) vmap(n, g, [](V yv, V d, V acc) { return acc + d * yv; }, dx, y, dz, dx);
      if (dy) vmap(n, g, [](V xv, V d, V acc) { return acc + d * xv; }, dy, x, dz, dy);
      break;
    case Binary::Div:
      if (dx) vmap(n, g, [](V yv, V d, V acc) { return acc + d / yv; }, dx, y, dz, dx);
      if (dy)
        vmap(n, g, [](V xv, V yv, V d, V acc) { return acc - (d / yv) * xv / yv; }, dy, x, y, dz,
             dy);
      break;
  }
}

template <class T>
void binary_backward_naive(Binary op, int64_t n, const T* x, const T* y, const T* dz, T* dx,
                           T* dy) {
  check_binary_backward("binary_backward_naive", op, n, x, y, dz, dx, dy);
  if (n == 0) return;
  switch (op) {
    case Binary::Add:
      if (dx) each(n, [&](int64_t i) { dx[i] += dz[i]; });
      if (dy) each(n, [&](int64_t i) { dy[i] += dz[i]; });
      break;
    case Binary::Sub:
      if (dx) each(n, [&](int64_t i) { dx[i] += dz[i]; });
      if (dy) each(n, [&](int64_t i) { dy[i] -= dz[i]; });
      break;
    case Binary::Mul:
      if (dx) each(n, [&](int64_t i) { dx[i] += dz[i] * y[i]; });
      if (dy) each(n, [&](int64_t i) { dy[i] += dz[i] * x[i]; });
      break;
    case Binary::Div:
      if (dx) each(n, [&](int64_t i) { dx[i] += dz[i] / y[i]; });
      if (dy) each(n, [&](int64_t i) { dy[i] -= (dz[i] / y[i]) * x[i] / y[i]; });
      break;
  }
}

// ============================================================================
// BLAS-1 helpers
// ============================================================================

template <class T>
void axpy(int64_t n, T a, const T* x, T* y) {
  using V = xsimd::batch<T>;
  check_n("axpy", n);
  const V av(a);
  vmap(n, kGrainSimple, [=](V xv, V yv) { return fmadd(av, xv, yv); }, y, x, y);
}

template <class T>
void axpy_naive(int64_t n, T a, const T* x, T* y) {
  check_n("axpy_naive", n);
  each(n, [&](int64_t i) { y[i] = std::fma(a, x[i], y[i]); });
}

template <class T>
void scale(int64_t n, T a, const T* x, T* y) {
  using V = xsimd::batch<T>;
  check_n("scale", n);
  const V av(a);
  vmap(n, kGrainSimple, [=](V xv) { return av * xv; }, y, x);
}

template <class T>
void scale_naive(int64_t n, T a, const T* x, T* y) {
  check_n("scale_naive", n);
  each(n, [&](int64_t i) { y[i] = a * x[i]; });
}

template <class T>
void fill(int64_t n, T value, T* y) {
  check_n("fill", n);
  // std::fill_n compiles to vector stores; split across threads when large.
  constexpr int64_t kChunk = int64_t(1) << 14;
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  parallel_for(nchunks, n >= 4 * kGrainSimple, [&](int64_t c) {
    const int64_t i0 = c * kChunk;
    std::fill_n(y + i0, std::min(kChunk, n - i0), value);
  });
}

template <class T>
void fill_naive(int64_t n, T value, T* y) {
  check_n("fill_naive", n);
  each(n, [&](int64_t i) { y[i] = value; });
}

// ============================================================================
// reductions
// ============================================================================

namespace {

// Σ x[0..n) accumulated in double (Note [Accumulation in double]): four
// vector accumulators, then the scalar tail; a fixed order for a given n.
template <class T>
double sum_contig(const T* x, int64_t n) {
  using D = xsimd::batch<double>;
  constexpr int64_t W = D::size;
  D a0(0.0), a1(0.0), a2(0.0), a3(0.0);
  int64_t j = 0;
  for (; j + 4 * W <= n; j += 4 * W) {  // a float pointer loads with conversion
    a0 += D::load_unaligned(x + j);
    a1 += D::load_unaligned(x + j + W);
    a2 += D::load_unaligned(x + j + 2 * W);
    a3 += D::load_unaligned(x + j + 3 * W);
  }
  for (; j + W <= n; j += W) a0 += D::load_unaligned(x + j);
  double s = xsimd::hadd((a0 + a1) + (a2 + a3));
  for (; j < n; ++j) s += double(x[j]);
  return s;
}

// Splits [0, n) into `parts` pieces whose starts are multiples of 64.
struct Split {
  int64_t chunk;
  Split(int64_t n, int parts) {
    const int64_t c = (n + parts - 1) / parts;
    chunk = std::max<int64_t>(64, (c + 63) / 64 * 64);
  }
  int64_t begin(int64_t n, int64_t p) const { return std::min(n, p * chunk); }
  int64_t end(int64_t n, int64_t p) const { return std::min(n, (p + 1) * chunk); }
};

}  // namespace

template <class T>
void sum_rows(int64_t rows, int64_t n, const T* x, T* out) {
  check_rows("sum_rows", rows, n);
  const int nt = tg::num_threads();
  const bool big = rows * n >= kGrainSimple;
  if (!big || nt == 1 || rows >= nt) {
    // Each row summed whole by one thread: independent of the thread count.
    parallel_for(rows, big, [&](int64_t r) { out[r] = T(sum_contig(x + r * n, n)); });
    return;
  }
  // Fewer rows than threads: each row split into nt blocks, one partial per
  // block, combined in block order (Note [Deterministic threading]).
  const Split sp(n, nt);
  std::vector<double> part(static_cast<std::size_t>(nt));
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * n;
    parallel_for(nt, true, [&](int64_t p) {
      const int64_t b = sp.begin(n, p), e = sp.end(n, p);
      part[std::size_t(p)] = sum_contig(xr + b, e - b);
    });
    double s = 0.0;
    for (int p = 0; p < nt; ++p) s += part[std::size_t(p)];
    out[r] = T(s);
  }
}

template <class T>
void sum_rows_naive(int64_t rows, int64_t n, const T* x, T* out) {
  check_rows("sum_rows_naive", rows, n);
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) s += double(x[r * n + j]);
    out[r] = T(s);
  }
}

namespace {
// acc[0..w) += rows [r0, r1) of the column block x[:, c0 : c0 + w]; x is (rows, n).
template <class T>
void add_col_block(const T* x, int64_t n, int64_t r0, int64_t r1, int64_t c0, int64_t w,
                   double* acc) {
  using D = xsimd::batch<double>;
  constexpr int64_t W = D::size;
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * n + c0;
    int64_t j = 0;
    for (; j + W <= w; j += W) (D::load_unaligned(acc + j) + D::load_unaligned(xr + j)).store_unaligned(acc + j);
    for (; j < w; ++j) acc[j] += double(xr[j]);
  }
}
}  // namespace

template <class T>
void sum_cols(int64_t rows, int64_t n, const T* x, T* out) {
  check_rows("sum_cols", rows, n);
  if (n == 0) return;
  const int nt = tg::num_threads();
  const bool big = rows * n >= kGrainSimple;
  // Column blocks of at most 1024 columns keep the double accumulators in L1.
  constexpr int64_t kMaxBlock = 1024;
  const int64_t blk = std::min<int64_t>(kMaxBlock, std::max<int64_t>(16, ((n + nt - 1) / nt + 15) / 16 * 16));
  const int64_t nblocks = (n + blk - 1) / blk;
  if (!big || nt == 1 || nblocks >= nt) {
    // Each column block summed over all rows, in row order, by one thread:
    // the same order as the naive twin, so the two agree bitwise, at any
    // thread count.
    parallel_for(nblocks, big, [&](int64_t b) {
      const int64_t c0 = b * blk, w = std::min(blk, n - c0);
      double acc[kMaxBlock];
      std::fill_n(acc, w, 0.0);
      add_col_block(x, n, 0, rows, c0, w, acc);
      for (int64_t j = 0; j < w; ++j) out[c0 + j] = T(acc[j]);
    });
    return;
  }
  // Few columns, many rows: each thread sums a block of rows into its own
  // partial (n doubles), then the partials are added in block order.
  const int64_t rchunk = (rows + nt - 1) / nt;
  std::vector<double> part(std::size_t(nt) * std::size_t(n), 0.0);
  parallel_for(nt, true, [&](int64_t p) {
    const int64_t r0 = std::min(rows, p * rchunk), r1 = std::min(rows, (p + 1) * rchunk);
    add_col_block(x, n, r0, r1, 0, n, part.data() + p * n);
  });
  for (int64_t j = 0; j < n; ++j) {
    double s = 0.0;
    for (int p = 0; p < nt; ++p) s += part[std::size_t(p * n + j)];
    out[j] = T(s);
  }
}

template <class T>
void sum_cols_naive(int64_t rows, int64_t n, const T* x, T* out) {
  check_rows("sum_cols_naive", rows, n);
  std::vector<double> acc(std::size_t(n), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) acc[std::size_t(j)] += double(x[r * n + j]);
  for (int64_t j = 0; j < n; ++j) out[j] = T(acc[std::size_t(j)]);
}

namespace {

struct ArgMax {
  int64_t arg;
  bool nan;  // arg is the first NaN
};

// First maximum of x[b..e) (b < e), or the first NaN if there is one.
template <class T>
ArgMax argmax_contig(const T* x, int64_t b, int64_t e) {
  using V = xsimd::batch<T>;
  constexpr int64_t W = V::size;
  const T ninf = -std::numeric_limits<T>::infinity();
  V m0(ninf), m1(ninf);
  // xsimd::isnan, not v != v: xsimd's != is the ordered compare (false on NaN).
  auto nan0 = xsimd::isnan(m0), nan1 = nan0;  // all false
  int64_t j = b;
  for (; j + 2 * W <= e; j += 2 * W) {
    const V v0 = V::load_unaligned(x + j), v1 = V::load_unaligned(x + j + W);
    m0 = xsimd::max(m0, v0);
    m1 = xsimd::max(m1, v1);
    nan0 = nan0 || xsimd::isnan(v0);
    nan1 = nan1 || xsimd::isnan(v1);
  }
  alignas(64) T lanes[W];
  xsimd::max(m0, m1).store_aligned(lanes);
  bool has_nan = xsimd::any(nan0 || nan1);
  T m = ninf;
  for (int64_t l = 0; l < W; ++l) m = std::max(m, lanes[l]);
  for (; j < e; ++j) {
    if (std::isnan(x[j])) has_nan = true;
    else m = std::max(m, x[j]);
  }
  if (has_nan) {
    for (int64_t k = b; k < e; ++k)
      if (std::isnan(x[k])) return {k, true};
  }
  for (int64_t k = b; k < e; ++k)
    if (x[k] == m) return {k, false};
  return {b, false};  // not reached: m is one of the values
}

}  // namespace

template <class T>
void max_rows(int64_t rows, int64_t n, const T* x, T* out_max, int64_t* out_arg) {
  check_rows("max_rows", rows, n);
  if (rows > 0 && n == 0)
    throw std::invalid_argument("max_rows: max over an empty axis, shape (" + std::to_string(rows) +
                                ", 0)");
  const int nt = tg::num_threads();
  const bool big = rows * n >= kGrainSimple;
  auto put = [&](int64_t r, int64_t arg) {
    out_max[r] = x[r * n + arg];
    if (out_arg) out_arg[r] = arg;
  };
  if (!big || nt == 1 || rows >= nt) {
    parallel_for(rows, big, [&](int64_t r) { put(r, argmax_contig(x + r * n, 0, n).arg); });
    return;
  }
  // Few long rows: one candidate per block, then the first NaN, else the
  // first block holding a strictly larger value, wins — the same answer as a
  // left-to-right scan.
  const Split sp(n, nt);
  std::vector<ArgMax> part(static_cast<std::size_t>(nt));
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * n;
    parallel_for(nt, true, [&](int64_t p) {
      const int64_t b = sp.begin(n, p), e = sp.end(n, p);
      part[std::size_t(p)] = b < e ? argmax_contig(xr, b, e) : ArgMax{-1, false};
    });
    ArgMax best = part[0];
    for (int p = 1; p < nt && !best.nan; ++p) {
      const ArgMax c = part[std::size_t(p)];
      if (c.arg < 0) continue;
      if (c.nan || xr[c.arg] > xr[best.arg]) best = c;
    }
    put(r, best.arg);
  }
}

template <class T>
void max_rows_naive(int64_t rows, int64_t n, const T* x, T* out_max, int64_t* out_arg) {
  check_rows("max_rows_naive", rows, n);
  if (rows > 0 && n == 0)
    throw std::invalid_argument("max_rows_naive: max over an empty axis, shape (" +
                                std::to_string(rows) + ", 0)");
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * n;
    int64_t arg = 0;
    for (int64_t j = 0; j < n; ++j) {
      if (std::isnan(xr[j])) {
        arg = j;
        break;
      }
      if (xr[j] > xr[arg]) arg = j;
    }
    out_max[r] = xr[arg];
    if (out_arg) out_arg[r] = arg;
  }
}

// ============================================================================
// binary maps with broadcasting
// ============================================================================
//
// The fast kernels: `collapse` turns (out_shape, a_strides, b_strides) into a
// few merged axes; the outer ones are walked row by row (Walker), the last,
// "inner" one is a vector loop (map_run) in which each input is contiguous or
// one value. The backward either maps (the input has z's full shape) or sums
// rows into double accumulators with sum_contig / add_col_block above.

namespace {

std::string dims_string(int rank, const int64_t* s) {
  std::string m = "(";
  for (int k = 0; k < rank; ++k) m += (k ? "," : "") + std::to_string(s[k]);
  return m + ")";
}

}  // namespace

void broadcast_strides(int out_rank, const int64_t* out_shape, int in_rank, const int64_t* in_shape,
                       int64_t* strides) {
  if (in_rank < 0 || in_rank > out_rank)
    throw std::invalid_argument("broadcast_strides: input rank " + std::to_string(in_rank) +
                                " does not fit output rank " + std::to_string(out_rank));
  int64_t s = 1;
  for (int k = out_rank - 1; k >= 0; --k) {
    const int j = k - (out_rank - in_rank);
    const int64_t n = j >= 0 ? in_shape[j] : 1;
    if (n < 0 || out_shape[k] < 0 || (n != 1 && n != out_shape[k]))
      throw std::invalid_argument("broadcast_strides: shape " + dims_string(in_rank, in_shape) +
                                  " does not broadcast to " + dims_string(out_rank, out_shape));
    strides[k] = n == 1 ? 0 : s;
    s *= n;
  }
}

namespace {

// Number of elements of an input with these strides over out_shape:
// Π out_shape[k] over its non-zero strides.
int64_t input_count(int rank, const int64_t* out_shape, const int64_t* strides) {
  int64_t n = 1;
  for (int k = 0; k < rank; ++k)
    if (strides[k] != 0) n *= out_shape[k];
  return n;
}

int64_t output_count(int rank, const int64_t* out_shape) {
  int64_t n = 1;
  for (int k = 0; k < rank; ++k) n *= out_shape[k];
  return n;
}

// The shape and strides of the broadcast kernels (see elementwise.hpp): each
// non-zero stride must be the product of out_shape over the later axes with a
// non-zero stride, i.e. the input is contiguous in its own shape.
void check_broadcast(const char* kernel, Binary op, int rank, const int64_t* out_shape,
                     const int64_t* a_strides, const int64_t* b_strides) {
  const std::string where = std::string(kernel) + "(" + binary_name(op) + ")";
  if (rank < 0) throw std::invalid_argument(where + ": negative rank " + std::to_string(rank));
  if (rank > 0 && (!out_shape || !a_strides || !b_strides))
    throw std::invalid_argument(where + ": null shape or strides for rank " + std::to_string(rank));
  for (int k = 0; k < rank; ++k)
    if (out_shape[k] < 0)
      throw std::invalid_argument(where + ": negative size in shape " + dims_string(rank, out_shape));
  for (const int64_t* s : {a_strides, b_strides}) {
    int64_t expect = 1;
    for (int k = rank - 1; k >= 0; --k) {
      if (s[k] == 0) continue;
      if (s[k] != expect)
        throw std::invalid_argument(where + ": strides " + dims_string(rank, s) + " of " +
                                    (s == a_strides ? "a" : "b") +
                                    " are not those of a contiguous input broadcast to " +
                                    dims_string(rank, out_shape) + " (0 or the row-major stride)");
      expect *= out_shape[k];
    }
  }
}

// z's axes after dropping the size-1 ones and merging neighbours along which
// a is contiguous or broadcast and so is b; outermost first, the last is the
// inner axis. sa, sb, sz: strides of a, b and z (= dz). Never empty: a
// one-element z gives one axis of size 1 with both inputs broadcast.
struct Axes {
  std::vector<int64_t> n, sa, sb, sz;
  int outer() const { return int(n.size()) - 1; }
  int64_t inner() const { return n.back(); }
};

Axes collapse(int rank, const int64_t* out_shape, const int64_t* a_strides, const int64_t* b_strides) {
  std::vector<int64_t> zs(static_cast<std::size_t>(rank));
  for (int64_t k = rank - 1, s = 1; k >= 0; --k) {
    zs[std::size_t(k)] = s;
    s *= out_shape[k];
  }
  Axes c;
  for (int k = 0; k < rank; ++k) {
    if (out_shape[k] == 1) continue;
    const bool merge = !c.n.empty() && (c.sa.back() == 0) == (a_strides[k] == 0) &&
                       (c.sb.back() == 0) == (b_strides[k] == 0);
    if (merge) {  // the outer axis so far and k become one axis with k's strides
      c.n.back() *= out_shape[k];
      c.sa.back() = a_strides[k];
      c.sb.back() = b_strides[k];
      c.sz.back() = zs[std::size_t(k)];
    } else {
      c.n.push_back(out_shape[k]);
      c.sa.push_back(a_strides[k]);
      c.sb.push_back(b_strides[k]);
      c.sz.push_back(zs[std::size_t(k)]);
    }
  }
  if (c.n.empty()) {
    c.n = {1};
    c.sa = {0};
    c.sb = {0};
    c.sz = {1};
  }
  return c;
}

// Walks rows (index tuples of some outer axes, last axis fastest) keeping the
// offsets o[0], o[1], o[2] of a, b and z in step.
struct Walker {
  std::vector<int64_t> n, s0, s1, s2, idx;
  int64_t o[3] = {0, 0, 0};

  // The walker over c's outer axes taken in the order `axes`.
  Walker(const Axes& c, const std::vector<int>& axes) {
    for (int k : axes) {
      n.push_back(c.n[std::size_t(k)]);
      s0.push_back(c.sa[std::size_t(k)]);
      s1.push_back(c.sb[std::size_t(k)]);
      s2.push_back(c.sz[std::size_t(k)]);
    }
    idx.assign(n.size(), 0);
  }
  void seek(int64_t row) {
    o[0] = o[1] = o[2] = 0;
    for (std::size_t k = n.size(); k-- > 0;) {
      idx[k] = row % n[k];
      row /= n[k];
      o[0] += idx[k] * s0[k];
      o[1] += idx[k] * s1[k];
      o[2] += idx[k] * s2[k];
    }
  }
  void next() {
    for (std::size_t k = n.size(); k-- > 0;) {
      o[0] += s0[k];
      o[1] += s1[k];
      o[2] += s2[k];
      if (++idx[k] < n[k]) return;
      o[0] -= n[k] * s0[k];
      o[1] -= n[k] * s1[k];
      o[2] -= n[k] * s2[k];
      idx[k] = 0;
    }
  }
};

std::vector<int> iota_axes(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  for (int k = 0; k < n; ++k) v[std::size_t(k)] = k;
  return v;
}

// Calls body(o, j0, j1) for every row of c's outer axes (o: the offsets of
// a, b, z at the row's start) and the inner range [j0, j1). When `big`, rows
// are split statically across threads, or, with fewer rows than threads,
// each row's inner range is (blocks of 64). Each call owns z's row range.
template <class Body>
void for_each_row(const Axes& c, bool big, Body&& body) {
  const int64_t inner = c.inner();
  int64_t rows = 1;
  for (int k = 0; k < c.outer(); ++k) rows *= c.n[std::size_t(k)];
  const std::vector<int> axes = iota_axes(c.outer());
  const int nt = tg::num_threads();
  if (big && nt > 1 && rows >= nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int p = 0; p < nt; ++p) {
      const int64_t r0 = rows * p / nt, r1 = rows * (p + 1) / nt;
      Walker w(c, axes);
      w.seek(r0);
      for (int64_t r = r0; r < r1; ++r, w.next()) body(w.o, int64_t(0), inner);
    }
    return;
  }
  Walker w(c, axes);
  if (big && nt > 1) {
    const Split sp(inner, nt);
    for (int64_t r = 0; r < rows; ++r, w.next()) {
#pragma omp parallel for num_threads(nt) schedule(static)
      for (int p = 0; p < nt; ++p) {
        const int64_t j0 = sp.begin(inner, p), j1 = sp.end(inner, p);
        if (j0 < j1) body(w.o, j0, j1);
      }
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r, w.next()) body(w.o, int64_t(0), inner);
}

// One input of the inner loop: contiguous (C) or one value repeated.
template <class T, bool C>
struct Src {
  const T* p;
  xsimd::batch<T> vec(int64_t j) const {
    if constexpr (C) return xsimd::batch<T>::load_unaligned(p + j);
    else return xsimd::batch<T>(*p);
  }
  T at(int64_t j) const {
    if constexpr (C) return p[j];
    else return *p;
  }
};

// out[j] = f(s.at(j)...) for j in [j0, j1): vectors, then a scalar tail (the
// four ops round once, so the tail equals a vector lane bitwise).
template <class T, class F, class... S>
void map_run(int64_t j0, int64_t j1, T* out, F f, S... s) {
  constexpr int64_t W = xsimd::batch<T>::size;
  int64_t j = j0;
  for (; j + W <= j1; j += W) f(s.vec(j)...).store_unaligned(out + j);
  for (; j < j1; ++j) out[j] = f(s.at(j)...);
}

// Runs f(std::bool_constant<ca>, std::bool_constant<cb>).
template <class F>
void with_modes(bool ca, bool cb, F&& f) {
  if (ca && cb) f(std::true_type{}, std::true_type{});
  else if (ca) f(std::true_type{}, std::false_type{});
  else if (cb) f(std::false_type{}, std::true_type{});
  else f(std::false_type{}, std::false_type{});
}

// The term one element of z contributes to da or db (binary_backward's).
enum class Term { Dz, NegDz, DzTimesB, DzTimesA, DzOverB, DivDb };

Term term_of(Binary op, bool target_a) {
  switch (op) {
    case Binary::Add: return Term::Dz;
    case Binary::Sub: return target_a ? Term::Dz : Term::NegDz;
    case Binary::Mul: return target_a ? Term::DzTimesB : Term::DzTimesA;
    case Binary::Div: return target_a ? Term::DzOverB : Term::DivDb;
  }
  return Term::Dz;
}

// out[j0..j1) = the term for one row; d, x, y point at the row's start in dz,
// a, b (x, y are read only by the terms that need them).
template <class T, bool CA, bool CB>
void term_run(Term t, int64_t j0, int64_t j1, T* out, const T* d, const T* x, const T* y) {
  const Src<T, true> sd{d};
  const Src<T, CA> sx{x};
  const Src<T, CB> sy{y};
  switch (t) {
    case Term::Dz: map_run(j0, j1, out, [](auto dv) { return dv; }, sd); break;
    case Term::NegDz: map_run(j0, j1, out, [](auto dv) { return -dv; }, sd); break;
    case Term::DzTimesB: map_run(j0, j1, out, [](auto dv, auto yv) { return dv * yv; }, sd, sy); break;
    case Term::DzTimesA: map_run(j0, j1, out, [](auto dv, auto xv) { return dv * xv; }, sd, sx); break;
    case Term::DzOverB: map_run(j0, j1, out, [](auto dv, auto yv) { return dv / yv; }, sd, sy); break;
    case Term::DivDb:
      map_run(j0, j1, out, [](auto dv, auto xv, auto yv) { return -((dv / yv) * xv / yv); }, sd, sx, sy);
      break;
  }
}

template <class T>
const T* at_offset(const T* p, int64_t off) {
  return p ? p + off : nullptr;
}

// dt = the gradient of one input (a if target_a, else b), written.
template <class T, bool CA, bool CB>
void broadcast_grad(const Axes& c, Term term, bool target_a, const T* a, const T* b, const T* dz, T* dt) {
  const int nd = c.outer();
  const int64_t inner = c.inner();
  const std::vector<int64_t>& st = target_a ? c.sa : c.sb;
  const int ot = target_a ? 0 : 1;  // the target's offset in Walker::o (dt is laid out like it)
  const bool t_inner = st.back() != 0;  // dt contiguous along the inner axis, else one value per row
  std::vector<int> kept, reduced;
  for (int k = 0; k < nd; ++k) (st[std::size_t(k)] != 0 ? kept : reduced).push_back(k);
  const bool big = output_count(int(c.n.size()), c.n.data()) >= kGrainSimple;

  // No axis to sum over: dt[i] is the term of z[i].
  if (reduced.empty() && t_inner) {
    for_each_row(c, big, [&](const int64_t* o, int64_t j0, int64_t j1) {
      term_run<T, CA, CB>(term, j0, j1, dt + o[ot], dz + o[2], at_offset(a, o[0]), at_offset(b, o[1]));
    });
    return;
  }

  // Sums. Rows are walked kept axes first, so group k (one row of dt, `len`
  // elements) is rows [k·R, (k+1)·R). Add and Sub sum dz itself (Sub's db
  // negated at the end: exact), the others the terms of a chunk of the row.
  int64_t K = 1, R = 1;
  for (int k : kept) K *= c.n[std::size_t(k)];
  for (int k : reduced) R *= c.n[std::size_t(k)];
  std::vector<int> order = kept;
  order.insert(order.end(), reduced.begin(), reduced.end());
  const int64_t len = t_inner ? inner : 1;
  const bool pass = term == Term::Dz || term == Term::NegDz;
  const bool negate = term == Term::NegDz;
  constexpr int64_t kChunk = 1024;

  auto add_row = [&](const int64_t* o, double* acc) {
    const T* d = dz + o[2];
    const T* x = at_offset(a, o[0]);
    const T* y = at_offset(b, o[1]);
    alignas(64) T buf[kChunk];
    for (int64_t j0 = 0; j0 < inner; j0 += kChunk) {
      const int64_t w = std::min(kChunk, inner - j0);
      const T* src = d + j0;
      if (!pass) {
        term_run<T, CA, CB>(term, 0, w, buf, d + j0, CA && x ? x + j0 : x, CB && y ? y + j0 : y);
        src = buf;
      }
      if (t_inner) add_col_block(src, w, 0, 1, 0, w, acc + j0);
      else acc[0] += sum_contig(src, w);
    }
  };
  auto put = [&](int64_t toff, const double* acc) {
    for (int64_t j = 0; j < len; ++j) {
      const T v = T(acc[j]);
      dt[toff + j] = negate ? -v : v;
    }
  };
  // Groups [k0, k1), each summed whole by the calling thread.
  auto groups = [&](int64_t k0, int64_t k1) {
    std::vector<double> acc(static_cast<std::size_t>(len));
    Walker w(c, order);
    w.seek(k0 * R);
    for (int64_t k = k0; k < k1; ++k) {
      std::fill(acc.begin(), acc.end(), 0.0);
      const int64_t toff = w.o[ot];
      for (int64_t r = 0; r < R; ++r, w.next()) add_row(w.o, acc.data());
      put(toff, acc.data());
    }
  };

  const int nt = tg::num_threads();
  if (!big || nt == 1) {
    groups(0, K);
  } else if (K >= nt) {
    // Each thread owns whole groups: the same sums as on one thread.
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int p = 0; p < nt; ++p) groups(K * p / nt, K * (p + 1) / nt);
  } else {
    // Fewer groups than threads: thread p sums its block of each group's
    // rows into its own partial; partials are added in thread order
    // (Note [Deterministic threading]).
    std::vector<double> part(std::size_t(nt) * std::size_t(K * len), 0.0);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int p = 0; p < nt; ++p) {
      Walker w(c, order);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t r0 = R * p / nt, r1 = R * (p + 1) / nt;
        double* acc = part.data() + (std::size_t(p) * std::size_t(K) + std::size_t(k)) * std::size_t(len);
        w.seek(k * R + r0);
        for (int64_t r = r0; r < r1; ++r, w.next()) add_row(w.o, acc);
      }
    }
    Walker w(c, order);
    std::vector<double> acc(static_cast<std::size_t>(len));
    for (int64_t k = 0; k < K; ++k) {
      w.seek(k * R);
      for (int64_t j = 0; j < len; ++j) {
        double s = 0.0;
        for (int p = 0; p < nt; ++p)
          s += part[(std::size_t(p) * std::size_t(K) + std::size_t(k)) * std::size_t(len) + std::size_t(j)];
        acc[std::size_t(j)] = s;
      }
      put(w.o[ot], acc.data());
    }
  }
}

template <class T>
void check_broadcast_data(const char* kernel, Binary op, int64_t total, const T* a, const T* b,
                          const T* dz, const T* da, const T* db) {
  if (total == 0 || (!da && !db)) return;
  const bool mul_div = op == Binary::Mul || op == Binary::Div;
  const bool need_a = mul_div && db;
  const bool need_b = (op == Binary::Mul && da) || (op == Binary::Div);
  if (!dz || (need_a && !a) || (need_b && !b))
    throw std::invalid_argument(std::string(kernel) + "(" + binary_name(op) +
                                "): a needed input array is null");
}

}  // namespace

template <class T>
void binary_broadcast_forward(Binary op, int rank, const int64_t* out_shape, const int64_t* a_strides,
                              const int64_t* b_strides, const T* a, const T* b, T* z) {
  check_broadcast("binary_broadcast_forward", op, rank, out_shape, a_strides, b_strides);
  const int64_t total = output_count(rank, out_shape);
  if (total == 0) return;
  if (!a || !b || !z)
    throw std::invalid_argument(std::string("binary_broadcast_forward(") + binary_name(op) + "): null array");
  const Axes c = collapse(rank, out_shape, a_strides, b_strides);
  const bool big = total >= kGrainSimple;
  with_modes(c.sa.back() != 0, c.sb.back() != 0, [&](auto CA, auto CB) {
    auto run = [&](auto f) {
      for_each_row(c, big, [&](const int64_t* o, int64_t j0, int64_t j1) {
        map_run(j0, j1, z + o[2], f, Src<T, decltype(CA)::value>{a + o[0]},
                Src<T, decltype(CB)::value>{b + o[1]});
      });
    };
    switch (op) {
      case Binary::Add: run([](auto x, auto y) { return x + y; }); break;
      case Binary::Sub: run([](auto x, auto y) { return x - y; }); break;
      case Binary::Mul: run([](auto x, auto y) { return x * y; }); break;
      case Binary::Div: run([](auto x, auto y) { return x / y; }); break;
    }
  });
}

namespace {
// The naive twins' index arithmetic: element i of the contiguous output, unravelled
// over out_shape, read from a and b through their (0 on broadcast axes) strides.
void broadcast_offsets(int64_t i, int rank, const int64_t* out_shape, const int64_t* a_strides,
                       const int64_t* b_strides, int64_t& ia, int64_t& ib) {
  int64_t rest = i;
  ia = ib = 0;
  for (int k = rank - 1; k >= 0; --k) {
    const int64_t ik = rest % out_shape[k];
    rest /= out_shape[k];
    ia += ik * a_strides[k];
    ib += ik * b_strides[k];
  }
}
}  // namespace

template <class T>
void binary_broadcast_forward_naive(Binary op, int rank, const int64_t* out_shape,
                                    const int64_t* a_strides, const int64_t* b_strides, const T* a,
                                    const T* b, T* z) {
  check_broadcast("binary_broadcast_forward_naive", op, rank, out_shape, a_strides, b_strides);
  const int64_t total = output_count(rank, out_shape);
  for (int64_t i = 0; i < total; ++i) {
    int64_t ia, ib;  // where z's element i reads a and b
    broadcast_offsets(i, rank, out_shape, a_strides, b_strides, ia, ib);
    switch (op) {
      case Binary::Add: z[i] = a[ia] + b[ib]; break;
      case Binary::Sub: z[i] = a[ia] - b[ib]; break;
      case Binary::Mul: z[i] = a[ia] * b[ib]; break;
      case Binary::Div: z[i] = a[ia] / b[ib]; break;
    }
  }
}

template <class T>
void binary_broadcast_backward(Binary op, int rank, const int64_t* out_shape, const int64_t* a_strides,
                               const int64_t* b_strides, const T* a, const T* b, const T* dz, T* da,
                               T* db) {
  check_broadcast("binary_broadcast_backward", op, rank, out_shape, a_strides, b_strides);
  const int64_t total = output_count(rank, out_shape);
  check_broadcast_data("binary_broadcast_backward", op, total, a, b, dz, da, db);
  if (total == 0) {  // nothing was broadcast to: zero gradients
    if (da) std::fill_n(da, input_count(rank, out_shape, a_strides), T(0));
    if (db) std::fill_n(db, input_count(rank, out_shape, b_strides), T(0));
    return;
  }
  const Axes c = collapse(rank, out_shape, a_strides, b_strides);
  with_modes(c.sa.back() != 0, c.sb.back() != 0, [&](auto CA, auto CB) {
    // Each gradient is its own pass, so each pass owns its writes.
    if (da) broadcast_grad<T, decltype(CA)::value, decltype(CB)::value>(c, term_of(op, true), true, a, b, dz, da);
    if (db) broadcast_grad<T, decltype(CA)::value, decltype(CB)::value>(c, term_of(op, false), false, a, b, dz, db);
  });
}

template <class T>
void binary_broadcast_backward_naive(Binary op, int rank, const int64_t* out_shape,
                                     const int64_t* a_strides, const int64_t* b_strides, const T* a,
                                     const T* b, const T* dz, T* da, T* db) {
  check_broadcast("binary_broadcast_backward_naive", op, rank, out_shape, a_strides, b_strides);
  const int64_t total = output_count(rank, out_shape);
  check_broadcast_data("binary_broadcast_backward_naive", op, total, a, b, dz, da, db);
  // Sums start at -0.0, the exact additive identity, so an element with one
  // term gets that term bitwise (-0.0 included).
  std::vector<double> ga(da ? std::size_t(input_count(rank, out_shape, a_strides)) : 0, -0.0);
  std::vector<double> gb(db ? std::size_t(input_count(rank, out_shape, b_strides)) : 0, -0.0);
  for (int64_t i = 0; i < total; ++i) {
    int64_t ia, ib;
    broadcast_offsets(i, rank, out_shape, a_strides, b_strides, ia, ib);
    const T d = dz[i];
    switch (op) {
      case Binary::Add:
        if (da) ga[std::size_t(ia)] += double(d);
        if (db) gb[std::size_t(ib)] += double(d);
        break;
      case Binary::Sub:
        if (da) ga[std::size_t(ia)] += double(d);
        if (db) gb[std::size_t(ib)] += double(-d);
        break;
      case Binary::Mul:
        if (da) ga[std::size_t(ia)] += double(d * b[ib]);
        if (db) gb[std::size_t(ib)] += double(d * a[ia]);
        break;
      case Binary::Div:
        if (da) ga[std::size_t(ia)] += double(d / b[ib]);
        if (db) gb[std::size_t(ib)] += double(-((d / b[ib]) * a[ia] / b[ib]));
        break;
    }
  }
  for (std::size_t j = 0; j < ga.size(); ++j) da[j] = T(ga[j]);
  for (std::size_t j = 0; j < gb.size(); ++j) db[j] = T(gb[j]);
}

// ============================================================================
// explicit instantiation
// ============================================================================

#define TG_ELEMENTWISE_INSTANTIATE(T)                                                          \
  template void unary_forward<T>(Unary, int64_t, const T*, T*);                                \
  template void unary_forward_naive<T>(Unary, int64_t, const T*, T*);                          \
  template void unary_backward<T>(Unary, int64_t, const T*, const T*, const T*, T*);           \
  template void unary_backward_naive<T>(Unary, int64_t, const T*, const T*, const T*, T*);     \
  template void binary_forward<T>(Binary, int64_t, const T*, const T*, T*);                    \
  template void binary_forward_naive<T>(Binary, int64_t, const T*, const T*, T*);              \
  template void binary_forward_scalar<T>(Binary, int64_t, const T*, T, T*);                    \
  template void binary_forward_scalar_naive<T>(Binary, int64_t, const T*, T, T*);              \
  template void binary_forward_scalar_lhs<T>(Binary, int64_t, T, const T*, T*);                \
  template void binary_forward_scalar_lhs_naive<T>(Binary, int64_t, T, const T*, T*);          \
  template void binary_backward<T>(Binary, int64_t, const T*, const T*, const T*, T*, T*);     \
  template void binary_backward_naive<T>(Binary, int64_t, const T*, const T*, const T*, T*, T*); \
  template void axpy<T>(int64_t, T, const T*, T*);                                             \
  template void axpy_naive<T>(int64_t, T, const T*, T*);                                       \
  template void scale<T>(int64_t, T, const T*, T*);                                            \
  template void scale_naive<T>(int64_t, T, const T*, T*);                                      \
  template void fill<T>(int64_t, T, T*);                                                       \
  template void fill_naive<T>(int64_t, T, T*);                                                 \
  template void sum_rows<T>(int64_t, int64_t, const T*, T*);                                   \
  template void sum_rows_naive<T>(int64_t, int64_t, const T*, T*);                             \
  template void sum_cols<T>(int64_t, int64_t, const T*, T*);                                   \
  template void sum_cols_naive<T>(int64_t, int64_t, const T*, T*);                             \
  template void max_rows<T>(int64_t, int64_t, const T*, T*, int64_t*);                         \
  template void max_rows_naive<T>(int64_t, int64_t, const T*, T*, int64_t*);                   \
  template void binary_broadcast_forward<T>(Binary, int, const int64_t*, const int64_t*,       \
                                            const int64_t*, const T*, const T*, T*);           \
  template void binary_broadcast_forward_naive<T>(Binary, int, const int64_t*, const int64_t*, \
                                                  const int64_t*, const T*, const T*, T*);     \
  template void binary_broadcast_backward<T>(Binary, int, const int64_t*, const int64_t*,      \
                                             const int64_t*, const T*, const T*, const T*, T*, \
                                             T*);                                              \
  template void binary_broadcast_backward_naive<T>(Binary, int, const int64_t*,                \
                                                   const int64_t*, const int64_t*, const T*,   \
                                                   const T*, const T*, T*, T*);

TG_ELEMENTWISE_INSTANTIATE(float)
TG_ELEMENTWISE_INSTANTIATE(double)

#undef TG_ELEMENTWISE_INSTANTIATE

}  // namespace tg::kernels
