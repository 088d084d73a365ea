// autograd/kernels/isa.cpp — which instruction set the running kernels were compiled for
// (isa.hpp, Note [Portable kernels]).
#include "autograd/kernels/isa.hpp"

#include <dlfcn.h>

#include "autograd/kernels/simd.hpp"

namespace tg::kernels {

KernelIsa kernel_isa() {
  KernelIsa k;
  k.arch = xsimd::default_arch::name();
  k.level = TG_COMPILED_LEVEL;
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
