// autograd/kernels/gemm_team.hpp — the threading machinery of gemm.cpp (private to it;
// not installed for users): per-thread packing buffers, spinning waits, and the team
// runner that notices a busy machine and falls back to one thread (Note [GEMM on a busy
// machine]). What it is not: GEMM arithmetic; nothing here changes a result.
#pragma once

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <thread>

namespace tg::kernels::gemm_detail {

using std::int64_t;

inline constexpr std::size_t kAlign = 64;

// A grow-only, 64-byte aligned scratch buffer; one per thread and purpose
// (thread_local below), so steady-state calls never allocate.
template <class T>
class PackBuffer {
 public:
  PackBuffer() = default;
  PackBuffer(const PackBuffer&) = delete;
  PackBuffer& operator=(const PackBuffer&) = delete;
  ~PackBuffer() { std::free(ptr_); }
  T* get(std::size_t n) {
    if (n > cap_) {
      std::free(ptr_);
      std::size_t bytes = (n * sizeof(T) + kAlign - 1) / kAlign * kAlign;
      ptr_ = static_cast<T*>(std::aligned_alloc(kAlign, bytes));
      if (!ptr_) {
        cap_ = 0;
        throw std::bad_alloc();
      }
      cap_ = n;
    }
    return ptr_;
  }

 private:
  T* ptr_ = nullptr;
  std::size_t cap_ = 0;
};

template <class T>
T* buffer_A(std::size_t n) {
  thread_local PackBuffer<T> buf;
  return buf.get(n);
}
template <class T>
T* buffer_B(std::size_t n) {
  thread_local PackBuffer<T> buf;
  return buf.get(n);
}

inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads of one GEMM wait for each other only through shared counters (no
// OpenMP barrier inside the region), spinning briefly, then yielding the core.
template <class Pred>
void wait_until(Pred done) {
  for (int spins = 0; !done(); ++spins) {
    if (spins < 1024)
      spin_pause();
    else
      std::this_thread::yield();
  }
}

// Note [GEMM on a busy machine]
// When the machine is oversubscribed (other processes compiling, say), the
// second thread of a team may start milliseconds late: it waits for a core,
// or shares the caller's core while libgomp's barriers spin. Measured on the
// reference machine: 4 to 12 ms per call (one or more scheduler ticks) for a
// product that takes 10 us on one core, for seconds on end. So run_team
// notes when the last thread of a team started. A late start (over
// kLateStartNs after the fork) right after another team finished (within
// kRecentNs, while libgomp's idle threads still spin and should answer at
// once), when the wait was at least half of the call, means the cores are
// contended: GEMMs then run on one thread for a back-off time (10 ms,
// doubling while it recurs, up to 100 ms), then try the team again. A late start after a long idle time is only the wake-up of
// sleeping threads and is not counted. This changes nothing in the results:
// they do not depend on the thread count (Note [GEMM determinism]).
inline constexpr int64_t kLateStartNs = 1'000'000, kRecentNs = 2'000'000;
inline constexpr int64_t kBackoffMinNs = 10'000'000, kBackoffMaxNs = 100'000'000;
inline std::atomic<int64_t> g_solo_until_ns{0};  // before this time, one thread
inline std::atomic<int64_t> g_backoff_ns{0};
inline std::atomic<int64_t> g_team_end_ns{0};  // when the last team finished

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The thread count to use now: nt, or 1 while backing off.
inline int threads_to_use(int nt) {
  if (nt > 1 && now_ns() < g_solo_until_ns.load(std::memory_order_relaxed)) return 1;
  return nt;
}

// Runs body(team) on a team of nt threads (nt == 1: on the caller, no
// region). OpenMP may start fewer threads than asked, so body gets the real
// team size and must not assume nt threads take part.
template <class F>
void run_team(int nt, F&& body) {
  if (nt == 1) {
    body(1);
    return;
  }
  const int64_t fork = now_ns();
  std::atomic<int64_t> last_start{fork};
#pragma omp parallel num_threads(nt)
  {
    const int64_t start = now_ns();
    int64_t seen = last_start.load(std::memory_order_relaxed);
    while (start > seen && !last_start.compare_exchange_weak(seen, start, std::memory_order_relaxed)) {
    }
    body(omp_get_num_threads());
  }
  const int64_t end = now_ns();
  const bool late = last_start.load(std::memory_order_relaxed) - fork > kLateStartNs;
  const bool recent = fork - g_team_end_ns.load(std::memory_order_relaxed) < kRecentNs;
  g_team_end_ns.store(end, std::memory_order_relaxed);
  // Back off only when waiting dominated the call (half of it or more): a
  // millisecond lost in a 20 ms product is not worth losing the team for.
  const bool dominated = 2 * (last_start.load(std::memory_order_relaxed) - fork) > end - fork;
  if (late && recent && dominated) {
    const int64_t b = std::clamp<int64_t>(2 * g_backoff_ns.load(std::memory_order_relaxed),
                                          kBackoffMinNs, kBackoffMaxNs);
    g_backoff_ns.store(b, std::memory_order_relaxed);
    g_solo_until_ns.store(end + b, std::memory_order_relaxed);
  } else if (!late) {
    g_backoff_ns.store(0, std::memory_order_relaxed);
  }
}

}  // namespace tg::kernels::gemm_detail
