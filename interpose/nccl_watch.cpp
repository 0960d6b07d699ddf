// The ring of outstanding NCCL operations and the watchdog pass over it.
//
// Concurrency: any thread that issues collectives is a producer; the agent thread is the
// only consumer. A slot is owned by whoever moved its state last (free -> filling by a
// producer's CAS, filling -> pending by that producer, pending -> free by the poller), so
// no lock is taken on the collective path. The communicator list has a mutex because the
// poller must not call ncclCommGetAsyncError on a communicator that ncclCommAbort is
// freeing; both sides hold it only around non-blocking calls.
#include "nccl_watch.h"

#include <atomic>
#include <cstdio>
#include <mutex>

#include "core.h"
#include "wrap.h"

namespace jitc::interpose::watch {
namespace {

enum State : int { kFree = 0, kFilling = 1, kPending = 2, kReported = 3 };

struct Op {
  std::atomic<int> state{kFree};
  std::atomic<bool> forgotten{false};
  ncclComm_t comm = nullptr;
  const char* name = nullptr;
  uint64_t issued_ns = 0;
  cudaEvent_t event = nullptr;      // owned by the slot, reused
  bool never_complete = false;
};

Op g_ring[kRing];
std::atomic<uint64_t> g_next{0};
std::atomic<uint64_t> g_dropped{0}, g_hangs{0};   // tracked = g_next - g_dropped

constexpr int kComms = 64;
std::mutex g_comms_mu;
ncclComm_t g_comms[kComms];              // guarded by g_comms_mu
bool g_comm_reported[kComms];            // async error already reported
std::atomic<uint64_t> g_comm_gen{1};     // bumped by forget(): invalidates thread caches

std::atomic<ncclComm_t> g_poison_comm{nullptr};
std::atomic<int> g_poison_err{ncclSuccess};

std::atomic<bool> g_poller_added{false};

thread_local ncclComm_t t_last_comm __attribute__((tls_model("initial-exec"))) = nullptr;
thread_local uint64_t t_last_gen __attribute__((tls_model("initial-exec"))) = 0;

struct Deferred {
  ncclComm_t comm;
  const char* name;
  cudaStream_t stream;
  bool never_complete;
};
constexpr int kGroupOps = 32;
thread_local int t_group_n = 0;
thread_local Deferred t_group[kGroupOps];

// The fast paths below run on every collective; their slow halves are out of line so the
// common case stays a handful of instructions with few registers to save.
__attribute__((noinline, cold)) void add_poller_once() {
  if (!g_poller_added.exchange(true)) jitc::add_poller(&poll);
}

inline void ensure_poller() {
  if (!g_poller_added.load(std::memory_order_relaxed)) add_poller_once();
}

__attribute__((noinline)) void note_comm_slow(ncclComm_t comm, uint64_t gen) {
  std::lock_guard<std::mutex> lock(g_comms_mu);
  int free_slot = -1;
  for (int i = 0; i < kComms; ++i) {
    if (g_comms[i] == comm) free_slot = -2;
    if (free_slot == -1 && g_comms[i] == nullptr) free_slot = i;
    if (free_slot == -2) break;
  }
  if (free_slot >= 0) {
    g_comms[free_slot] = comm;
    g_comm_reported[free_slot] = false;
  }
  t_last_comm = comm;
  t_last_gen = gen;
}

inline void note_comm(ncclComm_t comm) {
  uint64_t gen = g_comm_gen.load(std::memory_order_relaxed);
  if (comm != t_last_comm || gen != t_last_gen) note_comm_slow(comm, gen);
}

// Records the slot's event on stream, creating or re-creating it as needed (an event
// belongs to the device current at its creation; a stream on another device rejects it).
__attribute__((noinline)) bool record_slow(Op& op, cudaStream_t stream) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (op.event == nullptr &&
        real_cudart::cudaEventCreateWithFlags(&op.event, cudaEventDisableTiming) != cudaSuccess) {
      op.event = nullptr;
      return false;
    }
    if (real_cudart::cudaEventRecord(op.event, stream) == cudaSuccess) return true;
    real_cudart::cudaEventDestroy(op.event);
    op.event = nullptr;
  }
  return false;
}

inline bool record(Op& op, cudaStream_t stream) {
  if (op.event != nullptr && real_cudart::cudaEventRecord(op.event, stream) == cudaSuccess)
    return true;
  return record_slow(op, stream);
}

__attribute__((noinline, cold)) void drop(Op* op) {
  if (op != nullptr) op->state.store(kFree, std::memory_order_release);
  g_dropped.fetch_add(1, std::memory_order_relaxed);
}

void report_hang(const Op& op, uint64_t now_ns, double timeout_s) {
  char detail[200];
  double age = static_cast<double>(now_ns - op.issued_ns) / 1e9;
  std::snprintf(detail, sizeof(detail), "%s on comm %p not complete after %.1f s (timeout %.1f s)%s",
                op.name, static_cast<void*>(op.comm), age, timeout_s,
                op.never_complete ? " [injected]" : "");
  jitc::debug("interpose: nccl hang: %s", detail);
  g_hangs.fetch_add(1, std::memory_order_relaxed);
  jitc::report_failure("nccl-hang", op.name, 0, detail);
}

}  // namespace

__thread int t_group_depth __attribute__((tls_model("initial-exec"))) = 0;

void issued(ncclComm_t comm, const char* name, cudaStream_t stream, bool never_complete) {
  ensure_poller();
  note_comm(comm);
  Op& op = g_ring[g_next.fetch_add(1, std::memory_order_relaxed) % kRing];
  int expected = kFree;
  if (!op.state.compare_exchange_strong(expected, kFilling, std::memory_order_acquire)) {
    drop(nullptr);
    return;
  }
  op.comm = comm;
  op.name = name;
  op.never_complete = never_complete;
  op.forgotten.store(false, std::memory_order_relaxed);
  op.issued_ns = jitc::now_ns();
  if (!never_complete && !record(op, stream)) {
    drop(&op);
    return;
  }
  op.state.store(kPending, std::memory_order_release);
}

void group_start() { ++t_group_depth; }


void group_defer(ncclComm_t comm, const char* name, cudaStream_t stream, bool never_complete) {
  if (t_group_n < kGroupOps) {
    t_group[t_group_n++] = Deferred{comm, name, stream, never_complete};
  } else {
    g_dropped.fetch_add(1, std::memory_order_relaxed);
  }
}

void group_end(bool launched) {
  if (t_group_depth > 0) --t_group_depth;
  if (t_group_depth > 0) return;
  if (launched)
    for (int i = 0; i < t_group_n; ++i)
      issued(t_group[i].comm, t_group[i].name, t_group[i].stream, t_group[i].never_complete);
  t_group_n = 0;
}

void poison(ncclComm_t comm, ncclResult_t err) {
  g_poison_err.store(err, std::memory_order_relaxed);
  g_poison_comm.store(comm, std::memory_order_release);
}

ncclResult_t poisoned(ncclComm_t comm) {
  if (comm == nullptr || g_poison_comm.load(std::memory_order_acquire) != comm) return ncclSuccess;
  return static_cast<ncclResult_t>(g_poison_err.load(std::memory_order_relaxed));
}

void forget(ncclComm_t comm) {
  {
    // Taking the mutex waits out a poller pass that may be inside ncclCommGetAsyncError
    // on this communicator (a non-blocking call, so the wait is short and bounded).
    std::lock_guard<std::mutex> lock(g_comms_mu);
    for (int i = 0; i < kComms; ++i)
      if (g_comms[i] == comm) g_comms[i] = nullptr;
    g_comm_gen.fetch_add(1, std::memory_order_relaxed);
  }
  for (Op& op : g_ring) {
    int s = op.state.load(std::memory_order_acquire);
    if ((s == kPending || s == kReported) && op.comm == comm)
      op.forgotten.store(true, std::memory_order_release);
  }
  if (g_poison_comm.load(std::memory_order_relaxed) == comm) g_poison_comm.store(nullptr);
}

void poll(uint64_t now_ns) {
  Guard guard;   // our own queries are not observed, and consume no fault
  double timeout_s = jitc::hang_timeout_s();
  uint64_t timeout_ns = timeout_s > 0 ? static_cast<uint64_t>(timeout_s * 1e9) : 0;
  for (Op& op : g_ring) {
    int s = op.state.load(std::memory_order_acquire);
    if (s != kPending && s != kReported) continue;
    if (op.forgotten.load(std::memory_order_acquire)) {
      op.state.store(kFree, std::memory_order_release);
      continue;
    }
    cudaError_t r = op.never_complete ? cudaErrorNotReady : real_cudart::cudaEventQuery(op.event);
    if (r == cudaSuccess) {
      op.state.store(kFree, std::memory_order_release);
    } else if (r == cudaErrorNotReady) {
      if (s == kPending && timeout_ns > 0 && now_ns > op.issued_ns &&
          now_ns - op.issued_ns > timeout_ns) {
        report_hang(op, now_ns, timeout_s);
        op.state.store(kReported, std::memory_order_release);
      }
    } else {
      // The stream failed under the collective: a sticky CUDA error surfaced here.
      check(Api::Runtime, "cuda-error", r, op.name);
      op.state.store(kFree, std::memory_order_release);
    }
  }

  std::lock_guard<std::mutex> lock(g_comms_mu);
  for (int i = 0; i < kComms; ++i) {
    ncclComm_t comm = g_comms[i];
    if (comm == nullptr || g_comm_reported[i]) continue;
    ncclResult_t err = poisoned(comm);
    if (err == ncclSuccess) {
      ncclResult_t async = ncclSuccess;
      if (real_nccl::ncclCommGetAsyncError(comm, &async) != ncclSuccess) continue;
      err = async;
    }
    if (err != ncclSuccess && err != ncclInProgress) {
      check(Api::Nccl, "nccl-error", err, "ncclCommGetAsyncError");
      g_comm_reported[i] = true;
    }
  }
}

Stats stats() {
  uint64_t dropped = g_dropped.load();
  return Stats{g_next.load() - dropped, dropped, g_hangs.load()};
}

}  // namespace jitc::interpose::watch
