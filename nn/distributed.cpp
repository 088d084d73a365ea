// nn/distributed.cpp — see distributed.hpp.
//
// Note [N ranks against one]
// One process on the whole batch gets each weight's gradient as one sum over the B·T
// token positions (inside a GEMM, in its blocking order); N ranks get N partial sums over
// B/N rows each, added in rank order. Both are sums of the same B·T terms, grouped
// differently, so they differ by the round-off of a sum: per element at most about
// (log2 N + the GEMM's depth) · eps · Σ|terms| (eps = 2^-24 in float32, 2^-53 in float64),
// and the loss of each rank's share is a different grouping of the mean in the same way.
// AdamW divides by sqrt(v), so a relative change of a gradient moves a weight by at most
// about lr times it; the loss curves therefore agree to a few ulps per step and drift
// slowly apart as the training dynamics amplify the difference. tests/test_distributed.cpp
// checks, on the tiny model, 2 ranks against 1 process: in float64, every loss and every
// final weight to 1e-10 relative; in float32 the losses to 1e-4 over the same steps.
#include "nn/distributed.hpp"

#include <thread>

#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <unordered_map>

#include "autograd/tape.hpp"

#ifdef TAPEGRAD_HAVE_MPI
#include <mpi.h>
#endif

namespace tg::dist {

namespace {

bool g_started = false;  // init() called MPI_Init_thread
bool g_finalized = false;

#ifdef TAPEGRAD_HAVE_MPI
MPI_Comm comm_of(std::intptr_t h) {
  MPI_Comm c;
  static_assert(sizeof(MPI_Comm) <= sizeof(std::intptr_t));
  std::memcpy(&c, &h, sizeof c);
  return c;
}
std::intptr_t handle_of(MPI_Comm c) {
  std::intptr_t h = 0;
  std::memcpy(&h, &c, sizeof c);
  return h;
}
template <class T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <>
MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw std::runtime_error(std::string("MPI: ") + what + " failed: " + std::string(msg, std::size_t(len)));
}
#endif

}  // namespace

bool built_with_mpi() {
#ifdef TAPEGRAD_HAVE_MPI
  return true;
#else
  return false;
#endif
}

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

bool active() { return g_started && !g_finalized; }

void init(int* argc, char*** argv) {
  if (!built_with_mpi()) {
    // N copies of a one-rank program would each train the whole run into the same folder.
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
      if (const char* n = std::getenv(v); n && std::atoi(n) > 1)
        throw std::runtime_error(std::string("started by an MPI launcher with ") + n +
                                 " ranks, but this tapegrad was built without MPI (-DTAPEGRAD_MPI=OFF or MPI not "
                                 "found): rebuild with libopenmpi-dev installed, or run it without mpirun");
    return;
  }
  if (g_started || !launched_by_mpi()) return;
#ifdef TAPEGRAD_HAVE_MPI
  int already = 0;
  MPI_Initialized(&already);
  if (already) {
    g_started = true;
    return;
  }
  int provided = 0;
  check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  g_started = true;
  std::atexit(finalize);
  if (provided < MPI_THREAD_FUNNELED)
    throw std::runtime_error("MPI gives only thread level " + std::to_string(provided) +
                             ", tapegrad needs MPI_THREAD_FUNNELED (OpenMP threads inside each rank)");
#endif
}

void finalize() {
  if (!active()) return;
#ifdef TAPEGRAD_HAVE_MPI
  g_finalized = true;
  MPI_Finalize();
#endif
}

// ---- Group ----------------------------------------------------------------------------

Group Group::world() {
#ifdef TAPEGRAD_HAVE_MPI
  if (active()) {
    int r = 0, n = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    return Group(handle_of(MPI_COMM_WORLD), r, n);
  }
#endif
  return Group(0, 0, 1);
}

Group Group::split(int color) const {
  if (size_ == 1) return *this;
#ifdef TAPEGRAD_HAVE_MPI
  MPI_Comm c;
  check(MPI_Comm_split(comm_of(comm_), color, rank_, &c), "MPI_Comm_split");
  int r = 0, n = 1;
  MPI_Comm_rank(c, &r);
  MPI_Comm_size(c, &n);
  return Group(handle_of(c), r, n);
#else
  return *this;
#endif
}

void Group::barrier() const {
  if (size_ == 1) return;
#ifdef TAPEGRAD_HAVE_MPI
  check(MPI_Barrier(comm_of(comm_)), "MPI_Barrier");
#endif
}

bool Group::wait_all(const std::function<bool()>& stop, int poll_ms) const {
  if (size_ == 1) return !(stop && stop());
#ifdef TAPEGRAD_HAVE_MPI
  MPI_Request req;
  check(MPI_Ibarrier(comm_of(comm_), &req), "MPI_Ibarrier");
  for (;;) {
    int done = 0;
    check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (done) return true;
    if (stop && stop()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(poll_ms));
  }
#else
  return true;
#endif
}

std::vector<double> Group::all_gather(double v) const {
  std::vector<double> out(std::size_t(size_), v);
#ifdef TAPEGRAD_HAVE_MPI
  if (size_ > 1) check(MPI_Allgather(&v, 1, MPI_DOUBLE, out.data(), 1, MPI_DOUBLE, comm_of(comm_)), "MPI_Allgather");
#endif
  return out;
}

std::vector<std::uint64_t> Group::all_gather(std::uint64_t v) const {
  std::vector<std::uint64_t> out(std::size_t(size_), v);
#ifdef TAPEGRAD_HAVE_MPI
  if (size_ > 1)
    check(MPI_Allgather(&v, 1, MPI_UINT64_T, out.data(), 1, MPI_UINT64_T, comm_of(comm_)), "MPI_Allgather");
#endif
  return out;
}

void Group::broadcast(void* data, std::size_t bytes, int from) const {
  if (size_ == 1) return;
#ifdef TAPEGRAD_HAVE_MPI
  auto* p = static_cast<char*>(data);
  for (std::size_t off = 0; off < bytes;) {
    const int n = static_cast<int>(std::min<std::size_t>(bytes - off, std::size_t(1) << 30));
    check(MPI_Bcast(p + off, n, MPI_BYTE, from, comm_of(comm_)), "MPI_Bcast");
    off += std::size_t(n);
  }
#endif
}

std::string Group::broadcast(const std::string& s, int from) const {
  if (size_ == 1) return s;
  std::uint64_t n = s.size();
  broadcast(&n, sizeof n, from);
  std::string out = rank_ == from ? s : std::string(n, '\0');
  broadcast(out.data(), n, from);
  return out;
}

bool Group::any(bool flag) const {
  int v = flag ? 1 : 0, r = v;
#ifdef TAPEGRAD_HAVE_MPI
  if (size_ > 1) check(MPI_Allreduce(&v, &r, 1, MPI_INT, MPI_LOR, comm_of(comm_)), "MPI_Allreduce");
#endif
  return r != 0;
}

double Group::sum(double v) const {
  double s = 0;
  for (double x : all_gather(v)) s += x;  // rank order
  return s;
}

std::vector<double> Group::sum(const std::vector<double>& v) const {
  if (size_ == 1) return v;
  std::vector<double> all(v.size() * std::size_t(size_));
#ifdef TAPEGRAD_HAVE_MPI
  check(MPI_Allgather(v.data(), int(v.size()), MPI_DOUBLE, all.data(), int(v.size()), MPI_DOUBLE, comm_of(comm_)),
        "MPI_Allgather");
#endif
  std::vector<double> s(v.size(), 0.0);
  for (int r = 0; r < size_; ++r)
    for (std::size_t i = 0; i < v.size(); ++i) s[i] += all[std::size_t(r) * v.size() + i];
  return s;
}

void abort(const std::string& message, int code) {
  const Group w = Group::world();
  if (w.size() > 1)
    std::fprintf(stderr, "tapegrad: error (rank %d of %d): %s\n", w.rank(), w.size(), message.c_str());
  else
    std::fprintf(stderr, "tapegrad: error: %s\n", message.c_str());
  std::fflush(stderr);
#ifdef TAPEGRAD_HAVE_MPI
  if (active()) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::_Exit(code);
}

// ---- shares ------------------------------------------------------------------------------

std::size_t share_begin(std::size_t B, int N, int r) { return B * std::size_t(r) / std::size_t(N); }

void check_batch(std::size_t B, int N) {
  if (std::size_t(N) > B)
    throw std::invalid_argument("--batch " + std::to_string(B) + " is smaller than the number of ranks " +
                                std::to_string(N) + ": every rank needs at least one row of the global batch");
}

// ---- GradReducer -------------------------------------------------------------------------

template <class T>
struct GradReducer<T>::Impl {
  struct Bucket {
    std::vector<std::size_t> params;  // indices into Impl::params
    std::vector<std::size_t> offset;  // of each parameter in buf; then one flag per parameter
    std::size_t n = 0;                // elements: the gradients, then the flags
    std::vector<T> buf, recv;
    std::vector<int> send_counts, send_displs, recv_counts, recv_displs;
    std::size_t ready = 0;
    enum class State { Idle, Exchange, Gather, Done } state = State::Idle;
#ifdef TAPEGRAD_HAVE_MPI
    MPI_Request req = MPI_REQUEST_NULL;
#endif
  };
  std::vector<Tensor<T>> params;
  Group group = Group::world();
  std::vector<Bucket> buckets;
  std::vector<std::size_t> bucket_of;  // parameter -> bucket
  std::unordered_map<std::uint64_t, std::vector<std::size_t>> done_at;  // node id -> params final after it
  std::vector<char> ready;
  ReduceStats* stats = nullptr;
  bool hooked = false;
  // Nonblocking collectives match by the order they are started on a communicator. The
  // exchanges start in a fixed order (as the buckets become ready, the same on every rank),
  // but an all-gather starts when its exchange is seen complete, which depends on timing;
  // so each phase has its own communicator, and the exchanges are completed in start order.
  std::vector<std::size_t> order;  // buckets in the order their exchange started
  std::size_t next_exchange = 0;   // order[next_exchange] is the oldest exchange in flight
#ifdef TAPEGRAD_HAVE_MPI
  MPI_Comm exchange_comm = MPI_COMM_NULL, gather_comm = MPI_COMM_NULL;
#endif

  std::size_t lo(std::size_t n, int k) const { return n * std::size_t(k) / std::size_t(group.size()); }

  void start(Bucket& b) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::size_t np = b.params.size();
    for (std::size_t j = 0; j < np; ++j) {
      const auto& impl = *params[b.params[j]].impl();
      T* dst = b.buf.data() + b.offset[j];
      const std::size_t len = impl.value.size();
      if (impl.has_grad)
        std::memcpy(dst, impl.grad.data(), len * sizeof(T));
      else
        std::memset(dst, 0, len * sizeof(T));
      b.buf[b.n - np + j] = impl.has_grad ? T(1) : T(0);  // summed: > 0 when any rank had one
    }
#ifdef TAPEGRAD_HAVE_MPI
    check(MPI_Ialltoallv(b.buf.data(), b.send_counts.data(), b.send_displs.data(), mpi_type<T>(), b.recv.data(),
                         b.recv_counts.data(), b.recv_displs.data(), mpi_type<T>(), exchange_comm, &b.req),
          "MPI_Ialltoallv");
#endif
    b.state = Bucket::State::Exchange;
    order.push_back(std::size_t(&b - buckets.data()));
    if (hooked) ++stats->started_in_backward;
    stats->seconds_waiting += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // Exchange finished: add chunk `rank` of every rank in rank order, then share it.
  void sum_and_gather(Bucket& b) {
    const int N = group.size(), me = group.rank();
    const std::size_t a = lo(b.n, me), len = lo(b.n, me + 1) - a;
    T* out = b.buf.data() + a;
    const T* in = b.recv.data();
    for (std::size_t i = 0; i < len; ++i) out[i] = in[i];
    for (int r = 1; r < N; ++r) {
      const T* x = in + std::size_t(r) * len;
      for (std::size_t i = 0; i < len; ++i) out[i] += x[i];
    }
#ifdef TAPEGRAD_HAVE_MPI
    // Chunk k of buf comes from rank k: the same counts and offsets as the exchange sent.
    check(MPI_Iallgatherv(MPI_IN_PLACE, 0, mpi_type<T>(), b.buf.data(), b.send_counts.data(), b.send_displs.data(), mpi_type<T>(), gather_comm, &b.req),
          "MPI_Iallgatherv");
#endif
    b.state = Bucket::State::Gather;
  }

  // Advances every bucket in flight without blocking (wait: blocks until each is done).
  void progress(bool wait) {
#ifdef TAPEGRAD_HAVE_MPI
    const auto t0 = std::chrono::steady_clock::now();
    while (next_exchange < order.size()) {  // exchanges complete in start order
      Bucket& b = buckets[order[next_exchange]];
      int flag = 1;
      if (wait)
        check(MPI_Wait(&b.req, MPI_STATUS_IGNORE), "MPI_Wait");
      else
        check(MPI_Test(&b.req, &flag, MPI_STATUS_IGNORE), "MPI_Test");
      if (!flag) break;
      sum_and_gather(b);
      ++next_exchange;
    }
    for (auto& b : buckets) {
      if (b.state != Bucket::State::Gather) continue;
      int flag = 1;
      if (wait)
        check(MPI_Wait(&b.req, MPI_STATUS_IGNORE), "MPI_Wait");
      else
        check(MPI_Test(&b.req, &flag, MPI_STATUS_IGNORE), "MPI_Test");
      if (flag) b.state = Bucket::State::Done;
    }
    stats->seconds_waiting += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
#endif
  }

  void mark_ready(std::size_t p) {
    if (ready[p]) return;
    ready[p] = 1;
    Bucket& b = buckets[bucket_of[p]];
    if (++b.ready == b.params.size()) start(b);
  }
};

template <class T>
GradReducer<T>::GradReducer(std::vector<Tensor<T>> params, Group group, std::size_t bucket_bytes, bool overlap)
    : impl_(std::make_unique<Impl>()), overlap_(overlap) {
  Impl& m = *impl_;
  m.params = std::move(params);
  m.group = group;
  m.stats = &stats_;
  m.bucket_of.assign(m.params.size(), 0);
  m.ready.assign(m.params.size(), 0);
  if (group.size() == 1) return;
  const int N = group.size();
#ifdef TAPEGRAD_HAVE_MPI
  check(MPI_Comm_dup(comm_of(group.handle()), &m.exchange_comm), "MPI_Comm_dup");
  check(MPI_Comm_dup(comm_of(group.handle()), &m.gather_comm), "MPI_Comm_dup");
#endif
  // Reverse order: the last parameters (near the loss) get their gradients first.
  typename Impl::Bucket cur;
  std::size_t bytes = 0;
  auto close = [&] {
    if (cur.params.empty()) return;
    const std::size_t np = cur.params.size();
    cur.n += np;  // the flags
    if (cur.n > std::size_t(INT_MAX))
      throw std::invalid_argument("GradReducer: a bucket of " + std::to_string(cur.n) +
                                  " elements is too large for MPI's int counts");
    cur.buf.assign(cur.n, T(0));
    const std::size_t mine = m.lo(cur.n, group.rank() + 1) - m.lo(cur.n, group.rank());
    cur.recv.assign(mine * std::size_t(N), T(0));
    for (int k = 0; k < N; ++k) {
      const std::size_t a = m.lo(cur.n, k), e = m.lo(cur.n, k + 1);
      cur.send_counts.push_back(int(e - a));  // chunk k goes to rank k
      cur.send_displs.push_back(int(a));
      cur.recv_counts.push_back(int(mine));  // rank k's copy of my chunk
      cur.recv_displs.push_back(int(std::size_t(k) * mine));
    }
    for (std::size_t j = 0; j < np; ++j) m.bucket_of[cur.params[j]] = m.buckets.size();
    m.buckets.push_back(std::move(cur));
    cur = typename Impl::Bucket{};
    bytes = 0;
  };
  for (std::size_t i = m.params.size(); i-- > 0;) {
    const std::size_t len = m.params[i].impl()->value.size();
    if (!cur.params.empty() && bytes + len * sizeof(T) > bucket_bytes) close();
    cur.params.push_back(i);
    cur.offset.push_back(cur.n);
    cur.n += len;
    bytes += len * sizeof(T);
  }
  close();
}

template <class T>
GradReducer<T>::~GradReducer() {
  if (impl_ && impl_->hooked) Tape<T>::current().set_node_done_hook(nullptr);
#ifdef TAPEGRAD_HAVE_MPI
  if (impl_ && active())
    for (MPI_Comm* c : {&impl_->exchange_comm, &impl_->gather_comm})
      if (*c != MPI_COMM_NULL) MPI_Comm_free(c);
#endif
}

template <class T>
std::size_t GradReducer<T>::num_buckets() const {
  return impl_->buckets.size();
}

template <class T>
void GradReducer<T>::begin() {
  Impl& m = *impl_;
  stats_ = ReduceStats{};
  if (m.group.size() == 1) return;
  for (auto& b : m.buckets) b.ready = 0, b.state = Impl::Bucket::State::Idle;
  std::fill(m.ready.begin(), m.ready.end(), 0);
  m.done_at.clear();
  m.order.clear();
  m.next_exchange = 0;
  if (!overlap_) return;
  // The last node (smallest id, the walk goes backwards) that feeds each parameter: after it
  // runs, that parameter's gradient is final.
  std::unordered_map<const TensorImpl<T>*, std::size_t> index;
  for (std::size_t i = 0; i < m.params.size(); ++i) index[m.params[i].impl().get()] = i;
  std::vector<std::uint64_t> last(m.params.size(), UINT64_MAX);
  for (const auto& node : Tape<T>::current().nodes())
    for (const auto& in : node->inputs)
      if (auto it = index.find(in.get()); it != index.end()) last[it->second] = std::min(last[it->second], node->id);
  for (std::size_t i = 0; i < m.params.size(); ++i)
    if (last[i] != UINT64_MAX) m.done_at[last[i]].push_back(i);
  Tape<T>::current().set_node_done_hook([&m](std::uint64_t id) {
    if (auto it = m.done_at.find(id); it != m.done_at.end())
      for (std::size_t p : it->second) m.mark_ready(p);
    m.progress(false);
  });
  m.hooked = true;
}

template <class T>
void GradReducer<T>::finish() {
  Impl& m = *impl_;
  if (m.group.size() == 1) return;
  if (m.hooked) {
    Tape<T>::current().set_node_done_hook(nullptr);
    m.hooked = false;
  }
  for (auto& b : m.buckets)
    if (b.state == Impl::Bucket::State::Idle) m.start(b);
  m.progress(true);
  const int N = m.group.size();
  for (auto& b : m.buckets) {
    const std::size_t np = b.params.size();
    for (std::size_t j = 0; j < np; ++j) {
      auto& impl = *m.params[b.params[j]].impl();
      if (b.buf[b.n - np + j] == T(0)) continue;  // no rank had a gradient
      const std::size_t len = impl.value.size();
      if (!impl.has_grad) {
        impl.grad = xt::xarray<T>::from_shape(impl.value.shape());
        impl.has_grad = true;
      }
      std::memcpy(impl.grad.data(), b.buf.data() + b.offset[j], len * sizeof(T));
    }
    const std::size_t mine = m.lo(b.n, m.group.rank() + 1) - m.lo(b.n, m.group.rank());
    stats_.bytes_sent += 2 * (b.n - mine) * sizeof(T);
  }
  (void)N;
  stats_.buckets = m.buckets.size();
}

template class GradReducer<float>;
template class GradReducer<double>;

// ---- weight checks -----------------------------------------------------------------------

template <class T>
std::uint64_t hash_values(const std::vector<Tensor<T>>& tensors) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const auto& t : tensors) {
    const auto* p = reinterpret_cast<const unsigned char*>(t.value().data());
    const std::size_t n = t.value().size() * sizeof(T);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  }
  return h;
}
template std::uint64_t hash_values<float>(const std::vector<Tensor<float>>&);
template std::uint64_t hash_values<double>(const std::vector<Tensor<double>>&);

void check_same(const Group& g, std::uint64_t hash, const std::string& what) {
  const auto all = g.all_gather(hash);
  for (int r = 1; r < g.size(); ++r)
    if (all[std::size_t(r)] != all[0])
      throw std::runtime_error("rank " + std::to_string(r) + "'s " + what + " differ from rank 0's (of " +
                               std::to_string(g.size()) + " ranks): the ranks no longer train the same model");
}

}  // namespace tg::dist
