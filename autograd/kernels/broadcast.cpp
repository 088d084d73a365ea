// autograd/kernels/broadcast.cpp — the binary maps with numpy broadcasting and their backward; see elementwise.hpp.
//
// Each public kernel is followed by its naive twin. Every fast kernel computes each
// element with exactly one vector function, whether the element sits in the body or in
// the tail (vmap copies the tail into a padded vector), so elementwise results do not
// depend on the array length, the alignment or the thread count.
#include "autograd/kernels/elementwise.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "autograd/kernels/simd.hpp"

namespace tg::kernels {

using namespace simd;

namespace {

// Arrays shorter than this stay on the calling thread: below it OpenMP's fork/join
// costs more than the (memory-bound) loop.
constexpr int64_t kGrainSimple = int64_t(1) << 16;

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

// ---- explicit instantiation ----

#define TG_INSTANTIATE(T) \
  template void binary_broadcast_forward<T>(Binary, int, const int64_t*, const int64_t*, \
                                            const int64_t*, const T*, const T*, T*); \
  template void binary_broadcast_forward_naive<T>(Binary, int, const int64_t*, const int64_t*, \
                                                  const int64_t*, const T*, const T*, T*); \
  template void binary_broadcast_backward<T>(Binary, int, const int64_t*, const int64_t*, \
                                             const int64_t*, const T*, const T*, const T*, T*, \
                                             T*); \
  template void binary_broadcast_backward_naive<T>(Binary, int, const int64_t*, \
                                                   const int64_t*, const int64_t*, const T*, \
                                                   const T*, const T*, T*, T*);

TG_INSTANTIATE(float)
TG_INSTANTIATE(double)
#undef TG_INSTANTIATE

}  // namespace tg::kernels
