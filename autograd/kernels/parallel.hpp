// autograd/kernels/parallel.hpp — the thread count every kernel uses.
//
// What it is for: one place that decides how many OpenMP threads the kernels
// start. It reads OMP_NUM_THREADS at start-up (OpenMP's own rule) and can be
// changed from code with set_num_threads(). Kernels write
//   #pragma omp parallel for num_threads(tg::num_threads()) ...
// so a run at a fixed thread count is bitwise reproducible (static schedules,
// each thread owning its writes; see Note [Deterministic threading]).
//
// What it is not: a thread pool. OpenMP owns the threads.
#pragma once

namespace tg {

// Number of threads the kernels use (>= 1).
int num_threads();
// Set the number of threads the kernels use; n <= 0 restores the default
// (OMP_NUM_THREADS, or the number of cores).
void set_num_threads(int n);

// Note [Deterministic threading]
// Every parallel loop in autograd/kernels/ uses schedule(static) over a range
// whose split depends only on the problem size and num_threads(), and every
// reduction is done per thread into its own slot, then combined in a fixed
// order. So two runs at the same thread count give bitwise identical results.
// Different thread counts may differ in the last bits of reductions.

}  // namespace tg
