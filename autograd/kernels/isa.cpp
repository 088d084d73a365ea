// autograd/kernels/isa.cpp — which instruction set the running kernels were compiled for
// (isa.hpp, Note [Portable kernels]).
#include "autograd/kernels/isa.hpp"

#include <dlfcn.h>

#include "autograd/kernels/simd.hpp"

namespace tg::kernels {

namespace {

// The x86-64 micro-architecture level this file was compiled for, from the compiler's
// feature macros (the levels of the x86-64 psABI).
const char* compiled_level() {
#if defined(__x86_64__)
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512CD__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__)
  return "x86-64-v4";
#elif defined(__AVX2__) && defined(__FMA__) && defined(__BMI2__)
  return "x86-64-v3";
#elif defined(__SSE4_2__) && defined(__POPCNT__)
  return "x86-64-v2";
#else
  return "x86-64";
#endif
#elif defined(__aarch64__)
  return "aarch64";
#else
  return "other";
#endif
}

}  // namespace

KernelIsa kernel_isa() {
  KernelIsa k;
  k.arch = xsimd::default_arch::name();
  k.level = compiled_level();
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&kernel_isa), &info) && info.dli_fname) k.file = info.dli_fname;
#if defined(TAPEGRAD_PORTABLE_KERNELS)
  k.portable = true;
#else
  k.portable = false;
#endif
  return k;
}

std::string kernel_isa_line() {
  const KernelIsa k = kernel_isa();
  std::string s = k.arch + " (" + k.level + "; ";
  if (k.portable)
    s += "portable build: " + (k.file.empty() ? std::string("libtapegrad_kernels.so") : k.file) +
         ", chosen at start-up by CPU features)";
  else
    s += "compiled into the program for this build's -march)";
  return s;
}

}  // namespace tg::kernels
