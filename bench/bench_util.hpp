// bench/bench_util.hpp — what the benchmark programs of bench/ share: the median of a
// set of timings and the process's memory readings from /proc (Linux); the random token batches
// of the training benchmarks: bench/token_batches.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace tg::bench {

// The median (NaN for none).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  if (n == 0) return NAN;
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// A field of /proc/self/status in KiB ("VmRSS:", "VmHWM:"), or -1.
inline long status_kib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0) return std::atol(line.c_str() + n + 1);
  return -1;
}

// Resets VmHWM to the current resident set (Linux >= 4.0); false if not allowed.
inline bool reset_hwm() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

}  // namespace tg::bench
