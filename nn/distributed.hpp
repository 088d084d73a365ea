// nn/distributed.hpp — data-parallel training over MPI: ranks, batch shares, and a
// gradient sum whose result does not depend on timing.
//
// What it is for: `mpirun -np N tapegrad train ...` (and `study`). Each process (rank)
// computes the gradient of its share of the global batch; GradReducer sums those
// gradients across ranks in a fixed order (Note [A deterministic gradient sum]), so that
// every rank holds the same bits and takes the same optimizer step; rank 0 alone writes.
// Built without MPI (-DTAPEGRAD_MPI=OFF), or run without a launcher, the same interface
// is one rank: the sums are the identity and nothing is sent.
//
// What it is not: a model-parallel or pipeline engine, a parameter server, or a fault-
// tolerant runtime: a rank that dies ends the job (Note [When a rank dies]).
//
// Note [A deterministic gradient sum]
// MPI_Allreduce may add the ranks' contributions in any order (and OpenMPI picks its
// algorithm by message size), so two runs could differ in the last bits. GradReducer
// instead cuts every bucket of gradients into N fixed chunks (chunk k: elements
// [n·k/N, n·(k+1)/N)) and does the reduction as data movement plus one local sum:
//   1. all-to-all: rank k receives chunk k of every rank's bucket (MPI_Ialltoallv);
//   2. rank k adds them in rank order, g_0 + g_1 + ... + g_{N-1}, element by element;
//   3. all-gather: every rank receives every summed chunk (MPI_Iallgatherv).
// MPI only copies bytes, so the result is a pure function of the N inputs: bitwise the
// same on every rank and in every run at a fixed N, whether the buckets overlap backward
// or not. Each rank sends and receives (N-1)/N of the gradient bytes in each of the two
// phases, as a ring all-reduce does. Against one process on the whole batch the sum is
// a different grouping of the same terms: see Note [N ranks against one] in
// distributed.cpp for the bound and tests/test_distributed.cpp for its check.
//
// Note [Batch shares]
// `--batch B` stays the global batch. Every rank draws the whole batch from the seeded
// sampler (B window starts, a few microseconds) and keeps its rows
// [share_begin(B, N, r), share_begin(B, N, r+1)), so the data generator advances the same
// on every rank and a checkpoint resumes at any N. When N does not divide B the shares
// differ by one row; each rank weights its mean loss by its rows / B (the seed of its
// backward), so the summed gradient is the gradient of the mean over all B·T tokens,
// exactly as with one process. N > B is refused. (With MoE the load-balancing and z losses
// become the weighted mean of the ranks' own, not the loss of the whole batch.)
//
// Note [When a rank dies]
// mpirun ends every rank when one exits without MPI_Finalize or is killed, and says which.
// An error thrown on one rank is printed by that rank, which then calls MPI_Abort (abort()
// below), so no rank waits forever in a collective for a partner that has stopped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autograd/tensor.hpp"

namespace tg::dist {

// True when this build has MPI (TAPEGRAD_MPI).
bool built_with_mpi();
// True when the process was started by an MPI launcher (mpirun, srun: the launcher's
// environment variables are present).
bool launched_by_mpi();

// Starts MPI (MPI_Init_thread, MPI_THREAD_FUNNELED: only the main thread calls MPI, OpenMP
// threads compute inside a rank) when built with MPI and launched by mpirun; otherwise the
// process is rank 0 of 1. Idempotent. Throws std::runtime_error if MPI cannot give FUNNELED.
void init(int* argc, char*** argv);
// MPI_Finalize if init started MPI (also registered with atexit by init).
void finalize();
bool active();  // MPI is initialised and not finalised

// ---- a group of ranks (the world, or a part of it for study) ---------------------------

class Group {
 public:
  // The world: every rank of the job (one rank without MPI).
  static Group world();
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool root() const { return rank_ == 0; }
  // Splits into groups of the ranks with the same color, ranked by their rank here
  // (MPI_Comm_split; collective over this group).
  Group split(int color) const;

  void barrier() const;
  // A barrier that sleeps while it waits (MPI_Ibarrier polled every poll_ms; MPI_Barrier
  // spins a core at 100%, which a rank waiting for another's hour-long run must not do).
  // Returns false as soon as stop() is true (the barrier is then left pending: end the job).
  bool wait_all(const std::function<bool()>& stop, int poll_ms = 100) const;
  // Every rank's `v`, in rank order (MPI_Allgather).
  std::vector<double> all_gather(double v) const;
  std::vector<std::uint64_t> all_gather(std::uint64_t v) const;
  // The same `n` values on every rank: those of rank `from`.
  void broadcast(void* data, std::size_t bytes, int from = 0) const;
  std::string broadcast(const std::string& s, int from = 0) const;
  // True on every rank if `flag` is true on any (a stop request).
  bool any(bool flag) const;
  // Sum in rank order of every rank's `v`: bitwise the same on every rank.
  double sum(double v) const;
  // Elementwise sum of v over ranks in rank order (same bits on every rank).
  std::vector<double> sum(const std::vector<double>& v) const;

  // An opaque handle to the communicator (MPI_Comm as an integer; 0 without MPI).
  std::intptr_t handle() const { return comm_; }

 private:
  Group(std::intptr_t comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {}
  std::intptr_t comm_ = 0;
  int rank_ = 0, size_ = 1;
};

// Ends the whole job: prints `message` (prefixed with this rank) to stderr and calls
// MPI_Abort (std::exit without MPI).
[[noreturn]] void abort(const std::string& message, int code = 1);

// ---- batch shares (Note [Batch shares]) -------------------------------------------------

// The first row of rank r's share of a global batch of B rows over N ranks: r·B/N rounded
// down, so shares differ by at most one row. share_begin(B, N, N) == B.
std::size_t share_begin(std::size_t B, int N, int r);
// Throws std::invalid_argument naming both numbers when N > B.
void check_batch(std::size_t B, int N);

// ---- the gradient sum (Note [A deterministic gradient sum]) ------------------------------

struct ReduceStats {
  double seconds_waiting = 0;  // time spent in MPI calls and the local sums, this step
  std::uint64_t bytes_sent = 0;
  std::size_t buckets = 0;
  std::size_t started_in_backward = 0;  // buckets whose exchange began before backward ended
};

// Sums the gradients of a fixed list of parameters across the ranks of a group. The
// parameters are put in buckets of about `bucket_bytes` in reverse order (the order in
// which backward finishes them). Use:
//   reducer.begin();              // before backward: arms the tape hook if overlap
//   loss.backward(...);           // buckets start as their gradients become final
//   reducer.finish();             // the rest, wait, every grad now holds the sum
// Without overlap the buckets all start in finish(). A parameter without a gradient on
// any rank is left without one; one with a gradient on some rank gets the sum (a missing
// gradient counts as zero).
template <class T>
class GradReducer {
 public:
  GradReducer(std::vector<Tensor<T>> params, Group group, std::size_t bucket_bytes = 4u << 20, bool overlap = true);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  void begin();
  void finish();
  const ReduceStats& stats() const { return stats_; }
  std::size_t num_buckets() const;
  bool overlap() const { return overlap_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool overlap_;
  ReduceStats stats_;
};

// The bytes of every tensor's value, hashed (FNV-1a 64): ranks compare it to check that
// they hold the same weights.
template <class T>
std::uint64_t hash_values(const std::vector<Tensor<T>>& tensors);

// Throws std::runtime_error naming the first rank whose `hash` differs from rank 0's
// (`what` says what was hashed).
void check_same(const Group& g, std::uint64_t hash, const std::string& what);

}  // namespace tg::dist
