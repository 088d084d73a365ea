// autograd/kernels/dispatch.hpp — choose between a fast kernel and its naive twin.
//
// Every fast kernel `kernels::foo` has a twin `kernels::foo_naive` with the same
// signature: plain loops, easy to read, the test oracle. Ops call TG_KERNEL(foo)(...),
// which picks the fast one unless reference mode is on. Reference mode lets the op-level
// tests run each op both ways and lets a reader step through the simple loops.
#pragma once

namespace tg {

// When true, ops run the `_naive` twins instead of the fast kernels (thread-local).
bool use_reference_kernels();
void set_use_reference_kernels(bool on);

class ReferenceKernels {  // RAII scope for reference mode
 public:
  explicit ReferenceKernels(bool on = true) : prev_(use_reference_kernels()) { set_use_reference_kernels(on); }
  ~ReferenceKernels() { set_use_reference_kernels(prev_); }
  ReferenceKernels(const ReferenceKernels&) = delete;
  ReferenceKernels& operator=(const ReferenceKernels&) = delete;

 private:
  bool prev_;
};

}  // namespace tg

// The kernel `name` for scalar type T: fast, or its naive twin in reference mode.
#define TG_KERNEL(name) (::tg::use_reference_kernels() ? &::tg::kernels::name##_naive<T> : &::tg::kernels::name<T>)
