// autograd/kernels/gemm_bf16.hpp — float GEMM with bf16 operands (mixed precision).
//
// What it is for: `--dtype bf16` training. While the bf16 mode is on (set_gemm_bf16),
// every float gemm / gemm_batched (gemm.hpp) rounds its two operands to bfloat16
// (round to nearest even; 8 significant bits) and accumulates their products in float:
// with AMX tiles (tdpbf16ps) where the CPU and the OS allow them, else with AVX512_BF16's
// vdpbf16ps (gemm_bf16.cpp, Note [bf16 on AMX]; TAPEGRAD_BF16_NO_AMX=1 forces the latter).
// C, alpha and beta stay float; so do the master weights, the optimizer state, norms and
// softmax (they never pass through here). The attention kernels follow the same two
// modes for their own tile products (attention.cpp, Note [bf16 attention]).
// double GEMMs are never affected.
//
// What it is not: a bf16 storage type. Operands are float arrays, converted while they
// are packed, so nothing else in the engine changes.
//
// Note [bf16 rounding]
// Each operand element x becomes bf16(x): round to nearest even of its top 16 bits,
// subnormals flushed to zero (as vcvtne2ps2bf16 and vdpbf16ps treat them), NaN kept a
// NaN. A product of two bf16 values is exact in float, so a product's only error is
// the operands' rounding (relative 2^-9 each) plus the float sum. The naive twin
// gemm_bf16_naive rounds the same way and sums in float in k order; the fast kernel
// sums pairs of k (odd then even, as vdpbf16ps does) per k-slab, so the two agree to
// float round-off of the sum, not bitwise.
#pragma once

#include <cstdint>

namespace tg::kernels {

// True if this CPU has AVX512_BF16 (with AVX-512 F/BW/VL). TAPEGRAD_DISABLE_BF16=1 in
// the environment makes it answer false (to test the error path on any machine).
bool cpu_has_avx512_bf16();

// Turn the bf16 mode of float GEMMs on or off (process-wide; default off). Turning it
// on without AVX512_BF16 throws std::runtime_error naming the missing instruction set.
void set_gemm_bf16(bool on);
// True while either mode (set_gemm_bf16 or set_gemm_bf16_emulated) is on.
bool gemm_bf16_enabled();
// True while the hardware mode (set_gemm_bf16) is on.
bool gemm_bf16_hardware();

// The emulated bf16 mode (Note [Emulated bf16] in gemm_bf16.cpp): every float GEMM rounds
// its operands to bf16 and multiplies the rounded copies with the float kernel. Needs no
// instruction set: `tapegrad oracle --dtype bf16` uses it to show a model's bf16 drift on
// any CPU. Takes precedence over the hardware path while on.
void set_gemm_bf16_emulated(bool on);
bool gemm_bf16_emulated();

// Which bf16 path gemm_bf16 takes on this machine: "AMX", "vdpbf16ps", or "unavailable"
// (for `tapegrad --version` and the benchmarks).
const char* gemm_bf16_path();

// RAII scope for one of the two modes: sets it on construction, restores its previous
// setting on destruction.
template <bool (*Get)(), void (*Set)(bool)>
class ModeScope {
 public:
  explicit ModeScope(bool on = true) : prev_(Get()) { Set(on); }
  ~ModeScope() { Set(prev_); }
  ModeScope(const ModeScope&) = delete;
  ModeScope& operator=(const ModeScope&) = delete;

 private:
  bool prev_;
};
using GemmBf16Scope = ModeScope<gemm_bf16_hardware, set_gemm_bf16>;
using GemmBf16EmulatedScope = ModeScope<gemm_bf16_emulated, set_gemm_bf16_emulated>;

// bf16(x) as a float (Note [bf16 rounding]).
float round_bf16(float x);

// C = alpha * bf16(op(A)) @ bf16(op(B)) + beta * C with float accumulation; the
// arguments and their checks are those of gemm (gemm.hpp). Needs AVX512_BF16 (throws
// std::runtime_error without it) unless the emulated mode is on. Threaded like gemm; each element is computed by one
// thread in a fixed order, so results are identical across runs and thread counts.
void gemm_bf16(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc);

// The plain triple-loop twin: round_bf16 on every operand element, float sum in k order.
void gemm_bf16_naive(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                     const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                     float* C, int64_t ldc);

}  // namespace tg::kernels
