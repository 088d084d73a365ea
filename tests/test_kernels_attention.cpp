// tests/test_kernels_attention.cpp — the flash attention kernels against their naive twins.
//
// What it is for: checks autograd/kernels/attention.{hpp,cpp}: fast forward,
// backward and probabilities against the O(T^2) naive twins on many shapes and
// memory layouts (float and double), the naive backward itself against central
// finite differences (so the oracle is verified too), large scores, bitwise
// reproducibility at a fixed thread count and across thread counts, both backward
// schedules, the edges of the kernels' tiling, and argument errors. What it is
// not: a test of the attention op or module (autograd/, nn/).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/kernels/attention.hpp"
#include "autograd/kernels/parallel.hpp"

using tg::kernels::AttnDims;
using tg::kernels::AttnStrides;
namespace K = tg::kernels;

namespace {

// Memory layouts a caller may hand the kernels.
enum class Layout { BHTD, BTHD, Padded };  // Padded: (B,T,H,D) with gaps after rows and batches
const char* name(Layout l) { return l == Layout::BHTD ? "BHTD" : l == Layout::BTHD ? "BTHD" : "padded"; }

// A (B,N,T,D) tensor stored in some layout; gaps hold a sentinel that must survive.
template <class T>
struct Buf {
  std::vector<T> data;
  AttnStrides s{};
  int64_t B = 0, N = 0, Tn = 0, D = 0;
  T& at(int64_t b, int64_t h, int64_t t, int64_t d) { return data[b * s.b + h * s.h + t * s.t + d]; }
  const T& at(int64_t b, int64_t h, int64_t t, int64_t d) const { return data[b * s.b + h * s.h + t * s.t + d]; }
};

template <class T>
constexpr T kSentinel = T(-12345.5);

template <class T>
Buf<T> make_buf(int64_t B, int64_t N, int64_t Tn, int64_t D, Layout l) {
  Buf<T> x;
  x.B = B; x.N = N; x.Tn = Tn; x.D = D;
  std::size_t size = 0;
  switch (l) {
    case Layout::BHTD: x.s = {N * Tn * D, Tn * D, D}; size = B * N * Tn * D; break;
    case Layout::BTHD: x.s = {Tn * N * D, D, N * D}; size = B * Tn * N * D; break;
    case Layout::Padded: {
      const int64_t row = N * D + 3;
      x.s = {Tn * row + 7, D, row};
      size = B * x.s.b;
      break;
    }
  }
  x.data.assign(size, kSentinel<T>);
  return x;
}

template <class T>
void fill_random(Buf<T>& x, std::mt19937& rng, T lo = T(-1), T hi = T(1)) {
  std::uniform_real_distribution<T> u(lo, hi);
  for (int64_t b = 0; b < x.B; ++b)
    for (int64_t h = 0; h < x.N; ++h)
      for (int64_t t = 0; t < x.Tn; ++t)
        for (int64_t d = 0; d < x.D; ++d) x.at(b, h, t, d) = u(rng);
}

// max |a - b| over the logical elements, relative to max(1, max |b|).
template <class T>
double rel_err(const Buf<T>& a, const Buf<T>& b) {
  double diff = 0, mag = 1;
  for (int64_t i = 0; i < a.B; ++i)
    for (int64_t h = 0; h < a.N; ++h)
      for (int64_t t = 0; t < a.Tn; ++t)
        for (int64_t d = 0; d < a.D; ++d) {
          const double x = a.at(i, h, t, d), y = b.at(i, h, t, d);
          diff = std::max(diff, std::abs(x - y));
          if (!std::isfinite(x) || !std::isfinite(y)) diff = INFINITY;
          mag = std::max(mag, std::abs(y));
        }
  return diff / mag;
}

template <class T>
double rel_err(const std::vector<T>& a, const std::vector<T>& b) {
  double diff = 0, mag = 1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) diff = INFINITY;
    mag = std::max(mag, std::abs(double(b[i])));
  }
  return diff / mag;
}

// Every element outside the logical tensor still holds the sentinel.
template <class T>
bool gaps_untouched(const Buf<T>& x) {
  std::vector<char> used(x.data.size(), 0);
  for (int64_t b = 0; b < x.B; ++b)
    for (int64_t h = 0; h < x.N; ++h)
      for (int64_t t = 0; t < x.Tn; ++t)
        for (int64_t d = 0; d < x.D; ++d) used[b * x.s.b + h * x.s.h + t * x.s.t + d] = 1;
  for (std::size_t i = 0; i < used.size(); ++i)
    if (!used[i] && x.data[i] != kSentinel<T>) return false;
  return true;
}

template <class T>
bool bitwise_equal(const Buf<T>& a, const Buf<T>& b) {
  return a.data.size() == b.data.size() && std::memcmp(a.data.data(), b.data.data(), a.data.size() * sizeof(T)) == 0;
}

// All the buffers of one attention problem.
template <class T>
struct Problem {
  AttnDims d;
  T scale;
  Buf<T> q, k, v, dout;
  Problem(AttnDims d_, Layout l, std::mt19937& rng, T mag = T(1))
      : d(d_), scale(T(1) / std::sqrt(T(d_.D))) {
    q = make_buf<T>(d.B, d.H, d.Tq, d.D, l);
    k = make_buf<T>(d.B, d.Hkv, d.Tk, d.D, l);
    v = make_buf<T>(d.B, d.Hkv, d.Tk, d.D, l);
    dout = make_buf<T>(d.B, d.H, d.Tq, d.D, l);
    fill_random(q, rng, -mag, mag);
    fill_random(k, rng, -mag, mag);
    fill_random(v, rng);
    fill_random(dout, rng);
  }
};

// Outputs of one forward + backward.
template <class T>
struct Result {
  Buf<T> out, dq, dk, dv;
  std::vector<T> lse;
};

template <class T>
Result<T> run(const Problem<T>& p, Layout l, bool naive) {
  const AttnDims& d = p.d;
  Result<T> r;
  r.out = make_buf<T>(d.B, d.H, d.Tq, d.D, l);
  r.dq = make_buf<T>(d.B, d.H, d.Tq, d.D, l);
  r.dk = make_buf<T>(d.B, d.Hkv, d.Tk, d.D, l);
  r.dv = make_buf<T>(d.B, d.Hkv, d.Tk, d.D, l);
  r.lse.assign(d.B * d.H * d.Tq, T(0));
  auto fwd = naive ? K::attention_forward_naive<T> : K::attention_forward<T>;
  auto bwd = naive ? K::attention_backward_naive<T> : K::attention_backward<T>;
  fwd(d, p.scale, p.q.data.data(), p.q.s, p.k.data.data(), p.k.s, p.v.data.data(), p.v.s,
      r.out.data.data(), r.out.s, r.lse.data());
  bwd(d, p.scale, p.q.data.data(), p.q.s, p.k.data.data(), p.k.s, p.v.data.data(), p.v.s,
      r.out.data.data(), r.out.s, p.dout.data.data(), p.dout.s, r.lse.data(), r.dq.data.data(), r.dq.s,
      r.dk.data.data(), r.dk.s, r.dv.data.data(), r.dv.s);
  return r;
}

template <class T>
constexpr double kTol = std::is_same_v<T, float> ? 2e-5 : 1e-12;

std::string describe(const AttnDims& d, Layout l) {
  return "B=" + std::to_string(d.B) + " H=" + std::to_string(d.H) + " Hkv=" + std::to_string(d.Hkv) +
         " Tq=" + std::to_string(d.Tq) + " Tk=" + std::to_string(d.Tk) + " D=" + std::to_string(d.D) +
         " " + name(l);
}

// Fast vs naive forward and backward on one shape; returns nothing, CHECKs inside.
template <class T>
void check_against_naive(const AttnDims& d, Layout l, std::mt19937& rng) {
  CAPTURE(describe(d, l));
  Problem<T> p(d, l, rng);
  Result<T> fast = run(p, l, false), ref = run(p, l, true);
  CHECK(rel_err(fast.out, ref.out) < kTol<T>);
  CHECK(rel_err(fast.lse, ref.lse) < kTol<T>);
  CHECK(rel_err(fast.dq, ref.dq) < 5 * kTol<T>);
  CHECK(rel_err(fast.dk, ref.dk) < 5 * kTol<T>);
  CHECK(rel_err(fast.dv, ref.dv) < 5 * kTol<T>);
  CHECK(gaps_untouched(fast.out));
  CHECK(gaps_untouched(fast.dq));
  CHECK(gaps_untouched(fast.dk));
  CHECK(gaps_untouched(fast.dv));
}

// Causal softmax of scale * q k^T for (b, h), in double, straight from the definition.
template <class T>
std::vector<double> reference_probs(const Problem<T>& p, int64_t b, int64_t h) {
  const AttnDims& d = p.d;
  const int64_t g = h / (d.H / d.Hkv);
  std::vector<double> P(d.Tq * d.Tk, 0.0);
  for (int64_t i = 0; i < d.Tq; ++i) {
    const int64_t last = d.Tk - d.Tq + i;
    double mx = -INFINITY, sum = 0;
    for (int64_t j = 0; j <= last; ++j) {
      double s = 0;
      for (int64_t c = 0; c < d.D; ++c) s += double(p.q.at(b, h, i, c)) * double(p.k.at(b, g, j, c));
      P[i * d.Tk + j] = double(p.scale) * s;
      mx = std::max(mx, P[i * d.Tk + j]);
    }
    for (int64_t j = 0; j <= last; ++j) sum += (P[i * d.Tk + j] = std::exp(P[i * d.Tk + j] - mx));
    for (int64_t j = 0; j <= last; ++j) P[i * d.Tk + j] /= sum;
  }
  return P;
}

// The shapes of the sweep: every T in {1,3,17,65,130} x D in {8,16,64,24} x
// heads in {(4,4),(4,2),(6,1)} for Tq == Tk, plus decode shapes Tq < Tk.
std::vector<AttnDims> sweep_shapes() {
  std::vector<AttnDims> shapes;
  const int64_t Ts[] = {1, 3, 17, 65, 130}, Ds[] = {8, 16, 64, 24};
  const int64_t heads[][2] = {{4, 4}, {4, 2}, {6, 1}};
  int n = 0;
  for (int64_t T : Ts)
    for (int64_t D : Ds)
      for (auto& hh : heads) shapes.push_back({1 + (n++ % 2), hh[0], hh[1], T, T, D});
  // decode against a KV cache: (Tq, Tk)
  const int64_t dec[][2] = {{1, 5}, {1, 130}, {3, 17}, {17, 65}, {64, 130}, {65, 130}, {129, 130}, {7, 200}};
  for (auto& tt : dec)
    for (auto& hh : heads) shapes.push_back({1 + (n++ % 2), hh[0], hh[1], tt[0], tt[1], 16 + 8 * (n % 7)});
  // head dims that are not a multiple of any vector width
  shapes.push_back({1, 2, 1, 33, 33, 5});
  shapes.push_back({2, 3, 3, 70, 80, 33});
  return shapes;
}

}  // namespace

TEST_CASE_TEMPLATE("attention: fast forward and backward match the naive twins", T, float, double) {
  std::mt19937 rng(1234);
  const Layout layouts[] = {Layout::BHTD, Layout::BTHD, Layout::Padded};
  int n = 0;
  for (const AttnDims& d : sweep_shapes()) {
    check_against_naive<T>(d, layouts[n % 3], rng);
    // (B,H,T,D) and (B,T,H,D) for every shape with T >= 17
    if (d.Tq >= 17) check_against_naive<T>(d, layouts[(n + 1) % 3], rng);
    ++n;
  }
}

TEST_CASE_TEMPLATE("attention: probabilities match the definition and reproduce out", T, float, double) {
  std::mt19937 rng(99);
  const AttnDims shapes[] = {{2, 4, 2, 17, 17, 24}, {1, 6, 1, 65, 130, 64}, {1, 4, 4, 130, 130, 16}, {1, 4, 4, 1, 3, 8}};
  for (const AttnDims& d : shapes) {
    CAPTURE(describe(d, Layout::BTHD));
    Problem<T> p(d, Layout::BTHD, rng);
    Result<T> ref = run(p, Layout::BTHD, true);
    std::vector<T> P(d.B * d.H * d.Tq * d.Tk, T(-1));
    K::attention_probs<T>(d, p.scale, p.q.data.data(), p.q.s, p.k.data.data(), p.k.s, ref.lse.data(), P.data());
    double worst = 0, worst_rowsum = 0, worst_pv = 0;
    bool zeros_above = true;
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t h = 0; h < d.H; ++h) {
        const std::vector<double> R = reference_probs(p, b, h);
        const T* Pbh = P.data() + (b * d.H + h) * d.Tq * d.Tk;
        const int64_t g = h / (d.H / d.Hkv);
        for (int64_t i = 0; i < d.Tq; ++i) {
          double rowsum = 0;
          for (int64_t j = 0; j < d.Tk; ++j) {
            worst = std::max(worst, std::abs(Pbh[i * d.Tk + j] - R[i * d.Tk + j]));
            rowsum += Pbh[i * d.Tk + j];
            if (j > d.Tk - d.Tq + i && Pbh[i * d.Tk + j] != T(0)) zeros_above = false;
          }
          worst_rowsum = std::max(worst_rowsum, std::abs(rowsum - 1));
          for (int64_t c = 0; c < d.D; ++c) {  // P v == out of the naive forward
            double o = 0;
            for (int64_t j = 0; j < d.Tk; ++j) o += double(Pbh[i * d.Tk + j]) * p.v.at(b, g, j, c);
            worst_pv = std::max(worst_pv, std::abs(o - ref.out.at(b, h, i, c)));
          }
        }
      }
    CHECK(zeros_above);
    CHECK(worst < kTol<T>);
    CHECK(worst_rowsum < 10 * kTol<T>);
    CHECK(worst_pv < 10 * kTol<T>);
    // The naive twin (full score matrix, row softmax; lse not read) gives the same P.
    std::vector<T> Pn(P.size(), T(-1));
    K::attention_probs_naive<T>(d, p.scale, p.q.data.data(), p.q.s, p.k.data.data(), p.k.s, ref.lse.data(),
                                Pn.data());
    double worst_twin = 0;
    for (std::size_t e = 0; e < P.size(); ++e) worst_twin = std::max(worst_twin, std::abs(double(P[e]) - Pn[e]));
    CHECK(worst_twin < kTol<T>);
  }
}

TEST_CASE("attention: naive backward matches central finite differences (double)") {
  // L = sum(out * W), so dout = W; each input element is nudged by +-eps.
  std::mt19937 rng(7);
  const AttnDims shapes[] = {{1, 4, 2, 3, 5, 3}, {2, 2, 1, 4, 4, 2}, {1, 3, 3, 1, 4, 4}};
  for (const AttnDims& d : shapes) {
    CAPTURE(describe(d, Layout::BTHD));
    Problem<double> p(d, Layout::BTHD, rng);
    p.scale = 0.7;  // not 1/sqrt(D), so a misplaced scale would show
    Result<double> r = run(p, Layout::BTHD, true);
    auto loss = [&](const Problem<double>& pp) {
      Buf<double> out = make_buf<double>(d.B, d.H, d.Tq, d.D, Layout::BTHD);
      std::vector<double> lse(d.B * d.H * d.Tq);
      K::attention_forward_naive<double>(d, pp.scale, pp.q.data.data(), pp.q.s, pp.k.data.data(), pp.k.s,
                                         pp.v.data.data(), pp.v.s, out.data.data(), out.s, lse.data());
      double L = 0;
      for (int64_t b = 0; b < d.B; ++b)
        for (int64_t h = 0; h < d.H; ++h)
          for (int64_t i = 0; i < d.Tq; ++i)
            for (int64_t c = 0; c < d.D; ++c) L += out.at(b, h, i, c) * pp.dout.at(b, h, i, c);
      return L;
    };
    const double eps = 1e-6;
    double worst = 0;
    auto check_input = [&](Buf<double> Problem<double>::*member, const Buf<double>& grad) {
      Problem<double> pp = p;
      Buf<double>& x = pp.*member;
      for (int64_t b = 0; b < x.B; ++b)
        for (int64_t h = 0; h < x.N; ++h)
          for (int64_t t = 0; t < x.Tn; ++t)
            for (int64_t c = 0; c < x.D; ++c) {
              const double x0 = x.at(b, h, t, c);
              x.at(b, h, t, c) = x0 + eps;
              const double Lp = loss(pp);
              x.at(b, h, t, c) = x0 - eps;
              const double Lm = loss(pp);
              x.at(b, h, t, c) = x0;
              worst = std::max(worst, std::abs((Lp - Lm) / (2 * eps) - grad.at(b, h, t, c)));
            }
    };
    check_input(&Problem<double>::q, r.dq);
    check_input(&Problem<double>::k, r.dk);
    check_input(&Problem<double>::v, r.dv);
    CHECK(worst < 1e-8);
  }
}

TEST_CASE_TEMPLATE("attention: large scores neither overflow nor lose the softmax", T, float, double) {
  // |q|, |k| up to 40 with D = 16 gives scores of several hundred: exp() of them
  // overflows float without the running max.
  std::mt19937 rng(5);
  const AttnDims d{2, 4, 2, 70, 70, 16};
  Problem<T> p(d, Layout::BHTD, rng, T(40));
  Result<T> fast = run(p, Layout::BHTD, false), ref = run(p, Layout::BHTD, true);
  double max_lse = 0;
  for (T x : fast.lse) max_lse = std::max(max_lse, std::abs(double(x)));
  CHECK(max_lse > 100);  // the scores really are large
  CHECK(rel_err(fast.lse, ref.lse) < kTol<T>);
  // scores of magnitude ~1e3 carry an absolute rounding error of ~1e3 * eps into P
  const double tol = std::is_same_v<T, float> ? 2e-3 : 1e-10;
  CHECK(rel_err(fast.out, ref.out) < tol);
  CHECK(rel_err(fast.dq, ref.dq) < tol);
  CHECK(rel_err(fast.dk, ref.dk) < tol);
  CHECK(rel_err(fast.dv, ref.dv) < tol);
  // each out row is a convex combination of v rows, all in [-1, 1]
  bool convex = true;
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.H; ++h)
      for (int64_t i = 0; i < d.Tq; ++i)
        for (int64_t c = 0; c < d.D; ++c) {
          const T o = fast.out.at(b, h, i, c);
          if (!(std::isfinite(o) && std::abs(o) <= T(1) + T(1e-5))) convex = false;
        }
  CHECK(convex);
}

TEST_CASE_TEMPLATE("attention: both backward schedules, bitwise reproducible at fixed threads", T, float, double) {
  std::mt19937 rng(11);
  const int saved = tg::num_threads();
  // At 2 threads, B*Hkv = 1 takes two passes and B*Hkv = 2 one pass.
  const AttnDims two_pass{1, 6, 1, 130, 130, 24}, one_pass{2, 4, 1, 65, 130, 64};
  REQUIRE_FALSE(K::attention_backward_one_pass(two_pass, 2));
  REQUIRE(K::attention_backward_one_pass(one_pass, 2));
  REQUIRE(K::attention_backward_one_pass(two_pass, 1));
  for (const AttnDims& d : {two_pass, one_pass}) {
    for (int threads : {1, 2, 3}) {
      CAPTURE(threads);
      CAPTURE(describe(d, Layout::BTHD));
      tg::set_num_threads(threads);
      Problem<T> p(d, Layout::BTHD, rng);
      Result<T> a = run(p, Layout::BTHD, false), b = run(p, Layout::BTHD, false);
      CHECK(bitwise_equal(a.out, b.out));
      CHECK(a.lse == b.lse);
      CHECK(bitwise_equal(a.dq, b.dq));
      CHECK(bitwise_equal(a.dk, b.dk));
      CHECK(bitwise_equal(a.dv, b.dv));
      Result<T> ref = run(p, Layout::BTHD, true);
      CHECK(rel_err(a.dq, ref.dq) < 5 * kTol<T>);
      CHECK(rel_err(a.dk, ref.dk) < 5 * kTol<T>);
      CHECK(rel_err(a.dv, ref.dv) < 5 * kTol<T>);
    }
  }
  tg::set_num_threads(saved);
}

// Shapes at the edges of the kernels' blocking (attention.cpp): key tiles and
// query blocks of 64, register blocks of 6 rows (7..11 leftover rows split in
// two), 16 x 16 transposes when packing k and v (float), head dims with 1..4
// vectors of columns and a scalar tail, and key offsets Tk - Tq that put the
// causal diagonal at every position inside a tile.
TEST_CASE_TEMPLATE("attention: tile, register-block and diagonal edge cases match the naive twins", T, float,
                   double) {
  std::mt19937 rng(77);
  const Layout layouts[] = {Layout::BTHD, Layout::Padded, Layout::BHTD};
  int n = 0;
  for (int64_t Tq : {6, 7, 11, 12, 16, 63, 64, 65, 127, 128, 129, 192})
    for (int64_t extra : {0, 1, 5, 64, 70}) {
      const int64_t D = (n % 5 == 0) ? 16 : (n % 5 == 1) ? 32 : (n % 5 == 2) ? 48 : (n % 5 == 3) ? 80 : 20;
      const int64_t heads[][2] = {{2, 2}, {3, 1}, {4, 2}};
      const AttnDims d{1 + (n % 2), heads[n % 3][0], heads[n % 3][1], Tq, Tq + extra, D};
      check_against_naive<T>(d, layouts[n % 3], rng);
      ++n;
    }
}

// The parallel loops hand out work items dynamically (Note [Attention work
// items]); each item owns its writes, so the results must not depend on which
// thread ran which item, nor on the thread count.
TEST_CASE_TEMPLATE("attention: forward, probabilities and backward bitwise equal across thread counts", T, float,
                   double) {
  std::mt19937 rng(5);
  const int saved = tg::num_threads();
  // B*Hkv = 6 takes the one-pass backward at 1, 2 and 3 threads.
  const AttnDims shapes[] = {{2, 6, 3, 200, 200, 32}, {2, 3, 3, 70, 150, 48}};
  for (const AttnDims& d : shapes) {
    CAPTURE(describe(d, Layout::BTHD));
    Problem<T> p(d, Layout::BTHD, rng);
    std::vector<Result<T>> res;
    std::vector<std::vector<T>> probs;
    for (int threads : {1, 2, 3}) {
      REQUIRE(K::attention_backward_one_pass(d, threads));
      tg::set_num_threads(threads);
      res.push_back(run(p, Layout::BTHD, false));
      probs.emplace_back(d.B * d.H * d.Tq * d.Tk, T(-1));
      K::attention_probs<T>(d, p.scale, p.q.data.data(), p.q.s, p.k.data.data(), p.k.s, res.back().lse.data(),
                            probs.back().data());
    }
    for (std::size_t t = 1; t < res.size(); ++t) {
      CAPTURE(t);
      CHECK(bitwise_equal(res[t].out, res[0].out));
      CHECK(res[t].lse == res[0].lse);
      CHECK(bitwise_equal(res[t].dq, res[0].dq));
      CHECK(bitwise_equal(res[t].dk, res[0].dk));
      CHECK(bitwise_equal(res[t].dv, res[0].dv));
      CHECK(std::memcmp(probs[t].data(), probs[0].data(), probs[0].size() * sizeof(T)) == 0);
    }
    // the two-pass backward (B*Hkv = 1 at 2 threads) at 2 and 3 threads
    const AttnDims d1{1, 3, 1, d.Tq, d.Tk, d.D};
    Problem<T> p1(d1, Layout::BTHD, rng);
    std::vector<Result<T>> r1;
    for (int threads : {2, 3}) {
      REQUIRE_FALSE(K::attention_backward_one_pass(d1, threads));
      tg::set_num_threads(threads);
      r1.push_back(run(p1, Layout::BTHD, false));
    }
    CHECK(bitwise_equal(r1[1].out, r1[0].out));
    CHECK(bitwise_equal(r1[1].dq, r1[0].dq));
    CHECK(bitwise_equal(r1[1].dk, r1[0].dk));
    CHECK(bitwise_equal(r1[1].dv, r1[0].dv));
  }
  tg::set_num_threads(saved);
}

TEST_CASE("attention: bad dimensions and null pointers throw invalid_argument naming the kernel") {
  std::vector<float> buf(4096, 0.f), lse(64, 0.f);
  const AttnStrides s{256, 64, 8};
  auto fwd = [&](AttnDims d) {
    K::attention_forward<float>(d, 1.f, buf.data(), s, buf.data(), s, buf.data(), s, buf.data(), s, lse.data());
  };
  auto message = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "(no exception)";
  };
  const std::string tq = message([&] { fwd({1, 2, 2, 5, 4, 8}); });
  CHECK(tq.find("attention_forward") != std::string::npos);
  CHECK(tq.find("Tq=5") != std::string::npos);
  CHECK(tq.find("Tk=4") != std::string::npos);
  const std::string heads = message([&] { fwd({1, 3, 2, 4, 4, 8}); });
  CHECK(heads.find("H=3") != std::string::npos);
  CHECK(heads.find("Hkv=2") != std::string::npos);
  CHECK(message([&] { fwd({1, 2, 2, 4, 4, 0}); }).find("D=0") != std::string::npos);
  CHECK(message([&] { fwd({0, 2, 2, 4, 4, 8}); }).find("B=0") != std::string::npos);
  CHECK(message([&] { fwd({1, 2, 0, 4, 4, 8}); }).find("Hkv=0") != std::string::npos);
  CHECK(message([&] { fwd({1, 2, 2, 0, 4, 8}); }).find("Tq=0") != std::string::npos);
  CHECK_THROWS_AS(K::attention_forward<float>({1, 2, 2, 4, 4, 8}, 1.f, nullptr, s, buf.data(), s, buf.data(), s,
                                              buf.data(), s, lse.data()),
                  std::invalid_argument);
  float* p = buf.data();
  const std::string bwd = message([&] {
    K::attention_backward<float>({1, 4, 4, 9, 8, 8}, 1.f, p, s, p, s, p, s, p, s, p, s, lse.data(), p, s, p, s, p, s);
  });
  CHECK(bwd.find("attention_backward") != std::string::npos);
  const std::string probs = message([&] {
    K::attention_probs<float>({1, 4, 3, 4, 4, 8}, 1.f, p, s, p, s, lse.data(), p);
  });
  CHECK(probs.find("attention_probs") != std::string::npos);
  CHECK_THROWS_AS(K::attention_forward_naive<float>({1, 2, 2, 5, 4, 8}, 1.f, p, s, p, s, p, s, p, s, lse.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(K::attention_backward_naive<float>({1, 2, 2, 4, 4, -1}, 1.f, p, s, p, s, p, s, p, s, p, s,
                                                     lse.data(), p, s, p, s, p, s),
                  std::invalid_argument);
}

TEST_CASE("attention: scratch memory of the fast kernels is linear in T") {
  const AttnDims small{1, 6, 6, 1024, 1024, 64}, big{1, 6, 6, 4096, 4096, 64};
  const std::size_t fast_small = K::attention_scratch_bytes(small, 4, true, false, 2);
  const std::size_t fast_big = K::attention_scratch_bytes(big, 4, true, false, 2);
  const std::size_t naive_small = K::attention_scratch_bytes(small, 4, true, true, 2);
  CHECK(naive_small == 2u * 6 * 1024 * 1024 * 4);
  CHECK(fast_big <= 4 * fast_small);  // at most linear growth
  CHECK(fast_small * 10 <= naive_small);
}
