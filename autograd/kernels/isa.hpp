// autograd/kernels/isa.hpp — which instruction set the running kernels were compiled for.
//
// What it is for: `tapegrad --version`, the startup line of `train` and the benchmarks
// say which kernels run. In the default build (TAPEGRAD_NATIVE=ON) the kernels are part
// of the program, compiled with -march=native. In the portable build (TAPEGRAD_NATIVE=OFF
// on x86-64, Note [Portable kernels]) they are a shared library built three times, and
// the dynamic loader picks one copy at start-up by the CPU's features; the answer here
// comes from the copy that was loaded, so it names the choice that was made.
//
// What it is not: a dispatcher. Nothing here chooses; the build and the loader do.
//
// Note [Portable kernels]
// With TAPEGRAD_NATIVE=OFF on x86-64, autograd/kernels/*.cpp become libtapegrad_kernels.so,
// compiled for
//   lib/libtapegrad_kernels.so                            x86-64 (SSE2, any 64-bit x86)
//   lib/glibc-hwcaps/x86-64-v3/libtapegrad_kernels.so     AVX2 + FMA (Haswell, Zen 1-3)
//   lib/glibc-hwcaps/x86-64-v4/libtapegrad_kernels.so     AVX-512 F/BW/CD/DQ/VL (Skylake-X, Zen 4)
// and the rest of the engine links the first. glibc (2.33 and later) looks in the
// glibc-hwcaps subdirectories of every library directory first, and takes the highest level
// this CPU supports: the same mechanism distributions use to ship optimised libraries, with
// no dispatch code and no function pointers in the kernels (each copy is the whole kernel
// library compiled for its level, so nothing inside falls back). The choice is forced, for
// testing, by masking CPU features from the loader:
//   GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F          AVX2 copy (on a CPU that has AVX2)
//   GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX2    the x86-64 baseline copy
// (`/lib64/ld-linux-x86-64.so.2 --help` lists which levels are supported and searched).
// The bf16 GEMM (gemm_bf16.cpp) is compiled into every copy through target attributes and
// checks the CPU itself.
#pragma once

#include <string>

// The x86-64 micro-architecture level (psABI) of the file that expands it, from the
// compiler's feature macros: a macro, not a function, so that each file answers for its own
// flags (in the portable build the kernels and the rest of the engine differ).
#if defined(__x86_64__)
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512CD__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__)
#define TG_COMPILED_LEVEL "x86-64-v4"
#elif defined(__AVX2__) && defined(__FMA__) && defined(__BMI2__)
#define TG_COMPILED_LEVEL "x86-64-v3"
#elif defined(__SSE4_2__) && defined(__POPCNT__)
#define TG_COMPILED_LEVEL "x86-64-v2"
#else
#define TG_COMPILED_LEVEL "x86-64"
#endif
#elif defined(__aarch64__)
#define TG_COMPILED_LEVEL "aarch64"
#else
#define TG_COMPILED_LEVEL "other"
#endif

namespace tg::kernels {

struct KernelIsa {
  std::string arch;   // xsimd's default arch of the kernels: "avx512bw", "fma3+avx2", "sse2", "arm64+neon"
  std::string level;  // "x86-64-v4", "x86-64-v3", "x86-64-v2", "x86-64", "aarch64", or "other"
  std::string file;   // the file the kernels were loaded from (the program itself when linked in)
  bool portable;      // true when the kernels are the shared library of the portable build
};

// The kernels that run in this process.
KernelIsa kernel_isa();

// One line for people: "avx512bw (x86-64-v4; libtapegrad_kernels.so from
// build/lib/glibc-hwcaps/x86-64-v4, chosen at start-up by CPU features)" or
// "avx512bw (x86-64-v4; compiled into the program with -march=native)".
std::string kernel_isa_line();

}  // namespace tg::kernels
