// tests/test_kernels_broadcast.cpp — the broadcasting binary kernels
// (binary_broadcast_forward / _backward in autograd/kernels/elementwise.hpp)
// against their naive twins, float and double: forward bitwise; backward bitwise
// where an input is not summed over and to summation-order rounding where it is;
// on the models' broadcast patterns, edge shapes (empty, size-1 axes, scalars)
// and random shapes of rank 1-5, at 1-3 threads; broadcast_strides; bad strides
// and missing arrays are errors.
//
// Not here: the same-shape binary maps (test_kernels_elementwise.cpp), and the
// ops that broadcast (their gradchecks live with the ops).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "autograd/kernels/elementwise.hpp"
#include "autograd/kernels/parallel.hpp"
#include "kernel_test_util.hpp"

using namespace tg::kernels;
using namespace tg::testing;

namespace {
const Binary kAllBinary[] = {Binary::Add, Binary::Sub, Binary::Mul, Binary::Div};
}  // namespace

// ============================================================================
// binary maps with broadcasting
// ============================================================================

namespace {

using Dims = std::vector<int64_t>;

std::string dims_str(const Dims& d) {
  std::string s = "(";
  for (std::size_t k = 0; k < d.size(); ++k) s += (k ? "," : "") + std::to_string(d[k]);
  return s + ")";
}

int64_t numel(const Dims& d) {
  int64_t n = 1;
  for (int64_t v : d) n *= v;
  return n;
}

// z's shape: both shapes aligned on the right, the larger size on each axis.
Dims broadcast_of(const Dims& a, const Dims& b) {
  const std::size_t r = std::max(a.size(), b.size());
  Dims z(r);
  for (std::size_t k = 0; k < r; ++k) {
    const int64_t da = k < r - a.size() ? 1 : a[k - (r - a.size())];
    const int64_t db = k < r - b.size() ? 1 : b[k - (r - b.size())];
    z[k] = da == 1 ? db : da;
  }
  return z;
}

Dims strides_of(const Dims& z, const Dims& in) {
  Dims s(z.size());
  broadcast_strides(int(z.size()), z.data(), int(in.size()), in.data(), s.data());
  return s;
}

// Nonzero values of either sign, |v| in [0.5, 2]: divisors stay tame.
template <class T>
std::vector<T> away_from_zero(int64_t n, uint64_t seed) {
  auto v = uniform<T>(n, 0.5, 2.0, seed);
  for (std::size_t i = 0; i < v.size(); i += 3) v[i] = -v[i];
  return v;
}

template <class T>
std::vector<T> abs_of(std::vector<T> v) {
  for (auto& e : v) e = std::abs(e);
  return v;
}

// a op b for inputs of shapes as and bs: the fast kernels against their naive
// twins. Forward bitwise; backward bitwise for an input that is not summed
// (same element count as z), else within one rounding of the double sum,
// measured against Σ|term| (the naive backward on |dz|, |a|, |b|). The
// gradients are pre-filled with NaN: the kernels must write every element.
template <class T>
void check_broadcast_case(const Dims& as, const Dims& bs, uint64_t seed) {
  const Dims zs = broadcast_of(as, bs);
  const int rank = int(zs.size());
  const Dims sa = strides_of(zs, as), sb = strides_of(zs, bs);
  const int64_t na = numel(as), nb = numel(bs), nz = numel(zs);
  const auto a = uniform<T>(na, -2, 2, seed);
  const auto b = away_from_zero<T>(nb, seed + 1);
  const auto dz = uniform<T>(nz, -1, 1, seed + 2);
  const auto aa = abs_of(a), ab = abs_of(b), adz = abs_of(dz);
  const bool fl = std::is_same_v<T, float>;
  const double rtol = fl ? 2.5e-7 : 1e-12;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (Binary op : kAllBinary) {
    const std::string name = std::string(binary_name(op)) + " " + dims_str(as) + " with " + dims_str(bs);
    CAPTURE(name);
    std::vector<T> z1(std::size_t(nz), nan), z2(std::size_t(nz), nan);
    binary_broadcast_forward(op, rank, zs.data(), sa.data(), sb.data(), a.data(), b.data(), z1.data());
    binary_broadcast_forward_naive(op, rank, zs.data(), sa.data(), sb.data(), a.data(), b.data(), z2.data());
    CHECK_MESSAGE(same_bits(z1, z2), name, " forward");

    std::vector<T> da1(std::size_t(na), nan), db1(std::size_t(nb), nan), da2 = da1, db2 = db1;
    binary_broadcast_backward(op, rank, zs.data(), sa.data(), sb.data(), a.data(), b.data(), dz.data(),
                              da1.data(), db1.data());
    binary_broadcast_backward_naive(op, rank, zs.data(), sa.data(), sb.data(), a.data(), b.data(),
                                    dz.data(), da2.data(), db2.data());
    std::vector<T> sca(static_cast<std::size_t>(na)), scb(static_cast<std::size_t>(nb));  // Σ|term|
    binary_broadcast_backward_naive(op, rank, zs.data(), sa.data(), sb.data(), aa.data(), ab.data(),
                                    adz.data(), sca.data(), scb.data());
    std::vector<double> scale_a, scale_b;  // Sub's and Div's db terms are negative: |Σ|
    for (T v : sca) scale_a.push_back(std::abs(double(v)));
    for (T v : scb) scale_b.push_back(std::abs(double(v)));
    if (na == nz) CHECK_MESSAGE(same_bits(da1, da2), name, " da (not summed)");
    else check_close(da1, da2, rtol, 0.0, name + " da", &scale_a);
    if (nb == nz) CHECK_MESSAGE(same_bits(db1, db2), name, " db (not summed)");
    else check_close(db1, db2, rtol, 0.0, name + " db", &scale_b);

    // One gradient alone: the same values.
    std::vector<T> only_a(std::size_t(na), nan), only_b(std::size_t(nb), nan);
    binary_broadcast_backward(op, rank, zs.data(), sa.data(), sb.data(), a.data(), b.data(), dz.data(),
                              only_a.data(), static_cast<T*>(nullptr));
    binary_broadcast_backward(op, rank, zs.data(), sa.data(), sb.data(), a.data(), b.data(), dz.data(),
                              static_cast<T*>(nullptr), only_b.data());
    CHECK_MESSAGE(same_bits(only_a, da1), name, " da alone");
    CHECK_MESSAGE(same_bits(only_b, db1), name, " db alone");
  }
}

// The patterns the models make, and the edges of the iteration.
const std::pair<Dims, Dims> kBroadcastCases[] = {
    {{2, 3, 4, 64}, {2, 3, 4, 1}},   // headwise gate: one value per row of D
    {{2, 3, 4, 64}, {4, 64}},        // a (H,D) parameter over B, T
    {{2, 5, 33}, {33}},              // bias over (B,T)
    {{3, 4, 5}, {1, 1, 1}},          // scalar-like
    {{1, 1, 1}, {3, 4, 5}},          // the left input broadcast
    {{2, 1, 4}, {1, 3, 1}},          // both broadcast
    {{5, 1, 7}, {5, 3, 7}},          // size 1 in the middle
    {{5, 3, 7}, {5, 3, 1}},          // size 1 at the end
    {{3, 1, 2, 1, 5}, {4, 1, 3, 5}}, // rank 5, alternating
    {{7}, {1}},                      // rank 1
    {{}, {3}},                       // 0-d against rank 1
    {{}, {}},                        // one element
    {{2, 3}, {2, 3}},                // equal shapes
    {{0, 3}, {1, 3}},                // empty z
    {{2, 1}, {2, 0}},                // empty z, a not empty: da = 0
    // Above the threading threshold: rows split across threads; one row split
    // inside; a summed input with fewer rows than threads (per-thread partials).
    {{8, 64, 6, 64}, {8, 64, 6, 1}},
    {{8, 64, 6, 64}, {6, 64}},
    {{512, 384}, {384}},
    {{1, 100003}, {1}},
    {{3, 70001}, {1, 70001}},
    {{2, 40000}, {2, 1}},
};

}  // namespace

TEST_CASE("broadcast_strides: zero on missing and size-1 axes, errors") {
  const Dims z = {2, 3, 4, 64};
  CHECK(strides_of(z, {4, 64}) == Dims{0, 0, 64, 1});
  CHECK(strides_of(z, {2, 3, 4, 1}) == Dims{12, 4, 1, 0});
  CHECK(strides_of(z, {}) == Dims{0, 0, 0, 0});
  CHECK(strides_of(z, {2, 1, 4, 64}) == Dims{256, 0, 64, 1});
  Dims s(4);
  const Dims bad = {3, 64};
  CHECK_THROWS_AS(broadcast_strides(4, z.data(), 2, bad.data(), s.data()), std::invalid_argument);
  const Dims longer = {1, 2, 3, 4, 64};
  CHECK_THROWS_AS(broadcast_strides(4, z.data(), 5, longer.data(), s.data()), std::invalid_argument);
}

TEST_CASE_TEMPLATE("broadcast binary kernels match their naive twins: model patterns and edges", T, float,
                   double) {
  for (int nt : {1, 2, 3}) {
    Threads th(nt);
    uint64_t seed = 1000;
    for (const auto& [as, bs] : kBroadcastCases) {
      CAPTURE(nt);
      check_broadcast_case<T>(as, bs, seed += 10);
    }
  }
}

TEST_CASE_TEMPLATE("broadcast binary kernels match their naive twins: random shapes", T, float, double) {
  // Rank 1-5, odd and vector-sized axes; each input drops some leading axes
  // and has each remaining axis at full size or 1.
  std::mt19937_64 g(7);
  const int64_t sizes[] = {1, 2, 3, 5, 7, 8, 9, 16, 17, 33};
  Threads th(2);
  for (int iter = 0; iter < 150; ++iter) {
    const int rank = 1 + int(g() % 5);
    Dims z;
    int64_t total = 1;
    for (int k = 0; k < rank; ++k) {
      int64_t n = sizes[g() % std::size(sizes)];
      if (total * n > 40000) n = 1;
      z.push_back(n);
      total *= n;
    }
    auto pick = [&]() {
      const std::size_t lead = g() % 3 == 0 ? g() % (z.size() + 1) : 0;  // leading axes missing
      Dims d;
      for (std::size_t k = lead; k < z.size(); ++k) d.push_back(g() % 5 < 2 ? 1 : z[k]);
      return d;
    };
    const Dims as = pick(), bs = pick();
    CAPTURE(iter);
    check_broadcast_case<T>(as, bs, 5000 + uint64_t(iter) * 10);
  }
}

TEST_CASE("broadcast binary kernels: reproducible at a thread count, forward independent of it") {
  const Dims zs = {8, 64, 6, 64}, gs = {8, 64, 6, 1}, ps = {6, 64};
  const auto y = uniform<float>(numel(zs), -2, 2, 11);
  const auto gv = away_from_zero<float>(numel(gs), 12);
  const auto pv = away_from_zero<float>(numel(ps), 13);
  const auto dz = uniform<float>(numel(zs), -1, 1, 14);
  for (const Dims* bs : {&gs, &ps}) {
    const std::vector<float>& b = bs == &gs ? gv : pv;
    const Dims sa = strides_of(zs, zs), sb = strides_of(zs, *bs);
    auto run = [&](int nt, std::vector<float>& z, std::vector<float>& da, std::vector<float>& db) {
      Threads th(nt);
      z.assign(std::size_t(numel(zs)), 0.f);
      da.assign(std::size_t(numel(zs)), 0.f);
      db.assign(b.size(), 0.f);
      binary_broadcast_forward(Binary::Mul, 4, zs.data(), sa.data(), sb.data(), y.data(), b.data(), z.data());
      binary_broadcast_backward(Binary::Div, 4, zs.data(), sa.data(), sb.data(), y.data(), b.data(),
                                dz.data(), da.data(), db.data());
    };
    std::vector<float> z1, da1, db1, z2, da2, db2, z3, da3, db3;
    run(2, z1, da1, db1);
    run(2, z2, da2, db2);
    CHECK(same_bits(z1, z2));
    CHECK(same_bits(da1, da2));
    CHECK(same_bits(db1, db2));
    run(1, z3, da3, db3);
    CHECK(same_bits(z1, z3));
    CHECK(same_bits(da1, da3));
  }
}

TEST_CASE("broadcast binary kernels reject bad strides and missing arrays") {
  const Dims z = {2, 3, 4};
  const Dims ok = {12, 4, 1}, bcast = {0, 0, 1}, wrong = {3, 4, 1};
  std::vector<double> a(24, 1.0), b(4, 1.0), out(24), dz(24, 1.0), da(24), db(4);
  CHECK_THROWS_AS(binary_broadcast_forward(Binary::Add, 3, z.data(), wrong.data(), bcast.data(), a.data(),
                                           b.data(), out.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(binary_broadcast_forward_naive(Binary::Add, 3, z.data(), ok.data(), wrong.data(), a.data(),
                                                 b.data(), out.data()),
                  std::invalid_argument);
  const Dims neg = {2, -3, 4};
  CHECK_THROWS_AS(binary_broadcast_forward(Binary::Add, 3, neg.data(), ok.data(), bcast.data(), a.data(),
                                           b.data(), out.data()),
                  std::invalid_argument);
  // Mul's db needs a; Div's da needs b.
  CHECK_THROWS_AS(binary_broadcast_backward(Binary::Mul, 3, z.data(), ok.data(), bcast.data(),
                                            static_cast<const double*>(nullptr), b.data(), dz.data(),
                                            static_cast<double*>(nullptr), db.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(binary_broadcast_backward_naive(Binary::Div, 3, z.data(), ok.data(), bcast.data(), a.data(),
                                                  static_cast<const double*>(nullptr), dz.data(), da.data(),
                                                  static_cast<double*>(nullptr)),
                  std::invalid_argument);
  // Add reads neither input.
  binary_broadcast_backward(Binary::Add, 3, z.data(), ok.data(), bcast.data(), static_cast<const double*>(nullptr),
                            static_cast<const double*>(nullptr), dz.data(), da.data(), db.data());
  CHECK(db == std::vector<double>(4, 6.0));
  CHECK(da == std::vector<double>(24, 1.0));
}
