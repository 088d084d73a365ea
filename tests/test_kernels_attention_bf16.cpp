// tests/test_kernels_attention_bf16.cpp — attention in the bf16 mode (Note [bf16
// attention] in autograd/kernels/attention.cpp).
//
// What it is for: the two implementations of the same rounding — the emulated one
// (float tile products on rounded copies and rounded tiles, any CPU) and the vdpbf16ps
// one on pairs (AVX512_BF16) — against each other on shapes at the tiles' edges, in
// both backward schedules and memory layouts; the emulated one against float32 (really
// rounded, and close); the fallback to emulation for head dims the pairs path does not
// take; bitwise reproducibility across thread counts. The float kernels themselves are
// checked against the naive twins in test_kernels_attention.cpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "autograd/kernels/attention.hpp"
#include "autograd/kernels/gemm_bf16.hpp"
#include "autograd/kernels/parallel.hpp"

using tg::kernels::AttnDims;
using tg::kernels::AttnStrides;
namespace K = tg::kernels;

namespace {

// A (B, heads, T, D) tensor stored (B,H,T,D) or (B,T,H,D).
struct Buf {
  std::vector<float> x;
  AttnStrides s;
  Buf(int64_t B, int64_t heads, int64_t T, int64_t D, bool bthd)
      : x(B * heads * T * D, 0.f),
        s(bthd ? AttnStrides{T * heads * D, D, heads * D} : AttnStrides{heads * T * D, T * D, D}) {}
};

struct Outputs {
  std::vector<float> out, lse, dq, dk, dv;
};

struct Problem {
  AttnDims d;
  bool bthd;
  Buf q, k, v, dout;
  Problem(AttnDims d_, bool bthd_, std::mt19937& rng)
      : d(d_), bthd(bthd_), q(d.B, d.H, d.Tq, d.D, bthd), k(d.B, d.Hkv, d.Tk, d.D, bthd),
        v(d.B, d.Hkv, d.Tk, d.D, bthd), dout(d.B, d.H, d.Tq, d.D, bthd) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (Buf* b : {&q, &k, &v, &dout})
      for (float& e : b->x) e = 2.f * u(rng);  // scores of a few units: a peaked softmax
  }
  Outputs run() const {
    Buf out(d.B, d.H, d.Tq, d.D, bthd), dq(d.B, d.H, d.Tq, d.D, bthd), dk(d.B, d.Hkv, d.Tk, d.D, bthd),
        dv(d.B, d.Hkv, d.Tk, d.D, bthd);
    std::vector<float> lse(d.B * d.H * d.Tq);
    const float scale = 1.f / std::sqrt(float(d.D));
    K::attention_forward<float>(d, scale, q.x.data(), q.s, k.x.data(), k.s, v.x.data(), v.s, out.x.data(), out.s,
                                lse.data());
    K::attention_backward<float>(d, scale, q.x.data(), q.s, k.x.data(), k.s, v.x.data(), v.s, out.x.data(),
                                 out.s, dout.x.data(), dout.s, lse.data(), dq.x.data(), dq.s, dk.x.data(), dk.s,
                                 dv.x.data(), dv.s);
    return {out.x, lse, dq.x, dk.x, dv.x};
  }
};

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {  // ||a - b|| / ||b||
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Each output's distance from ref, the largest of the five.
double worst(const Outputs& a, const Outputs& ref) {
  return std::max({rel_err(a.out, ref.out), rel_err(a.lse, ref.lse), rel_err(a.dq, ref.dq),
                   rel_err(a.dk, ref.dk), rel_err(a.dv, ref.dv)});
}

Outputs emulated(const Problem& p) {
  K::GemmBf16EmulatedScope on;
  return p.run();
}
Outputs hardware(const Problem& p) {
  K::GemmBf16Scope on;
  return p.run();
}

std::string describe(const AttnDims& d, bool bthd) {
  return "B=" + std::to_string(d.B) + " H=" + std::to_string(d.H) + " Hkv=" + std::to_string(d.Hkv) +
         " Tq=" + std::to_string(d.Tq) + " Tk=" + std::to_string(d.Tk) + " D=" + std::to_string(d.D) +
         (bthd ? " BTHD" : " BHTD");
}

// Shapes at the edges of the tiling (64-row query blocks and key tiles, 6-row register
// groups, the diagonal anywhere in a tile, odd row counts for the pairs of rows), head
// dims with 1..5 vectors of 16, and 1 or 2 threads: B*Hkv = 1 takes the two-pass
// backward at 2 threads, the others one pass.
std::vector<AttnDims> shapes() {
  return {{1, 1, 1, 1, 1, 16},     {1, 2, 1, 7, 7, 32},     {2, 4, 2, 65, 65, 64},   {1, 6, 1, 130, 130, 48},
          {1, 4, 4, 17, 80, 64},   {2, 2, 2, 64, 128, 80},  {1, 3, 1, 129, 200, 16}, {2, 4, 1, 11, 11, 64},
          {1, 4, 2, 1, 130, 64},   {1, 2, 2, 192, 192, 32}};
}

}  // namespace

TEST_CASE("bf16 attention: the vdpbf16ps path on pairs matches the emulated rounding") {
  if (!K::cpu_has_avx512_bf16()) {
    MESSAGE("skipped: this CPU has no AVX512_BF16");
    return;
  }
  std::mt19937 rng(3);
  const int saved = tg::num_threads();
  int n = 0;
  for (const AttnDims& d : shapes())
    for (int threads : {1, 2}) {
      const bool bthd = n++ % 2 == 1;
      CAPTURE(describe(d, bthd));
      CAPTURE(threads);
      tg::set_num_threads(threads);
      const Problem p(d, bthd, rng);
      const Outputs emu = emulated(p), hw = hardware(p), f32 = p.run();
      // The same roundings; what differs is the order of the float sums (pairs of
      // terms), and the rare bf16 rounding that order flips.
      CHECK(worst(hw, emu) < 2e-4);
      // Far closer to each other than either is to float32.
      CHECK(worst(emu, f32) > 1e-3);
      CHECK(worst(hw, f32) > 1e-3);
    }
  tg::set_num_threads(saved);
}

TEST_CASE("bf16 attention: emulated on any CPU, really rounded and close to float32") {
  std::mt19937 rng(5);
  for (const AttnDims& d : {AttnDims{2, 4, 2, 65, 65, 64}, AttnDims{1, 3, 1, 33, 40, 24}}) {
    CAPTURE(describe(d, false));
    const Problem p(d, false, rng);
    const Outputs emu = emulated(p), f32 = p.run();
    for (const auto& [a, b] : {std::pair{&emu.out, &f32.out}, std::pair{&emu.dq, &f32.dq},
                               std::pair{&emu.dk, &f32.dk}, std::pair{&emu.dv, &f32.dv}}) {
      CHECK(rel_err(*a, *b) > 1e-3);  // bf16 keeps 8 significant bits: 2^-9 per operand
      CHECK(rel_err(*a, *b) < 3e-2);
    }
    CHECK(rel_err(emu.lse, f32.lse) < 1e-2);
    // Deterministic: the same bits twice.
    const Outputs again = emulated(p);
    CHECK(same_bits(emu.out, again.out));
    CHECK(same_bits(emu.dk, again.dk));
  }
}

TEST_CASE("bf16 attention: head dims the pairs path does not take are emulated, bit for bit") {
  if (!K::cpu_has_avx512_bf16()) {
    MESSAGE("skipped: this CPU has no AVX512_BF16");
    return;
  }
  std::mt19937 rng(7);
  for (int64_t D : {8, 24, 33}) {  // not multiples of 16
    const AttnDims d{1, 4, 2, 70, 70, D};
    CAPTURE(describe(d, true));
    const Problem p(d, true, rng);
    const Outputs emu = emulated(p), hw = hardware(p);
    CHECK(same_bits(hw.out, emu.out));
    CHECK(same_bits(hw.lse, emu.lse));
    CHECK(same_bits(hw.dq, emu.dq));
    CHECK(same_bits(hw.dk, emu.dk));
    CHECK(same_bits(hw.dv, emu.dv));
  }
}

TEST_CASE("bf16 attention: the pairs path is bitwise equal across thread counts of one schedule") {
  if (!K::cpu_has_avx512_bf16()) {
    MESSAGE("skipped: this CPU has no AVX512_BF16");
    return;
  }
  std::mt19937 rng(9);
  const int saved = tg::num_threads();
  const AttnDims d{2, 4, 2, 130, 130, 64};  // B*Hkv = 4: one pass at 1, 2 and 4 threads
  REQUIRE(K::attention_backward_one_pass(d, 1));
  REQUIRE(K::attention_backward_one_pass(d, 2));
  REQUIRE(K::attention_backward_one_pass(d, 4));
  const Problem p(d, false, rng);
  tg::set_num_threads(1);
  const Outputs one = hardware(p);
  for (int threads : {2, 4}) {
    CAPTURE(threads);
    tg::set_num_threads(threads);
    const Outputs many = hardware(p);
    CHECK(same_bits(many.out, one.out));
    CHECK(same_bits(many.lse, one.lse));
    CHECK(same_bits(many.dq, one.dq));
    CHECK(same_bits(many.dk, one.dk));
    CHECK(same_bits(many.dv, one.dv));
  }
  tg::set_num_threads(saved);
}
