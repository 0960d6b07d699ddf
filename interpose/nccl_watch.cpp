// The ring of outstanding NCCL operations and the watchdog pass over it.
//
// Concurrency: any thread that issues collectives is a producer; the agent thread is the
// only consumer. A slot is owned by whoever moved its state last (free -> filling by a
// producer's CAS, filling -> pending by that producer, pending -> free by the poller), so
// no lock is taken on the collective path, and the CAS is its one locked instruction.
// Where a producer looks first is only a hint (g_hint, plain relaxed loads and stores):
// two producers that read the same hint race for the same slot, the CAS gives it to one,
// and the other moves on to the next free slot; a stale hint costs a few extra probes,
// never a slot owned twice. The communicator list has a mutex because the poller must not
// call ncclCommGetAsyncError on a communicator that ncclCommAbort is freeing; both sides
// hold it only around non-blocking calls.
//
// Issue times come from the agent's clock, not the producer's: the poller stamps an
// operation with its tick time the first time it sees it pending. A clock read on every
// collective (clock_gettime, ~20 instructions and as many ns) buys nothing for a timeout of
// seconds checked once a tick; the stamp is at most one tick late, so a hang is reported at
// most one tick later than with an exact issue time, never earlier, and the age, a
// difference of two readings of the same monotonic clock on the same thread, is never
// negative.
#include "nccl_watch.h"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <new>

#include "core.h"
#include "wrap.h"

namespace jitc::interpose::watch {
namespace {

enum State : int { kFree = 0, kFilling = 1, kPending = 2, kReported = 3 };

// One cache line each, so that a producer filling one slot does not steal the line of the
// slot the poller or another producer is working on. A free slot is clean: issued_ns 0,
// forgotten and never_complete false (the poller resets them before it frees the slot), so
// a producer writes only what differs.
struct alignas(64) Op {
  std::atomic<int> state{kFree};
  std::atomic<bool> forgotten{false};
  // Atomic (relaxed: a plain move) because forget() compares it from another thread, which
  // may race with a producer refilling the slot; a stale answer only marks or spares one
  // op, as a forget() a moment earlier or later would.
  std::atomic<ncclComm_t> comm{nullptr};
  const char* name = nullptr;
  // Tick time at which the poller first saw the op pending; 0 until then. Written and read
  // by the poller only; atomic for stats().
  std::atomic<uint64_t> issued_ns{0};
  cudaEvent_t event = nullptr;      // owned by the slot, reused
  // Kept for record_and_publish(), so that the fast path need not hold the stream in a
  // register across the event record.
  cudaStream_t stream = nullptr;
  bool never_complete = false;
};

Op g_ring[kRing];
std::atomic<uint32_t> g_hint{0};   // where the next producer looks first (see above)
std::atomic<uint64_t> g_seen{0};   // ops the poller has stamped (poller-written)
std::atomic<uint64_t> g_dropped{0}, g_hangs{0};

// The real cudaEventRecord, cached by record_slow() before it creates the first event: a
// slot's event is non-null only after this was set, so record() never sees it null. (A
// producer reaches another producer's event through the slot's release/acquire chain,
// which carries this store with it.)
using EventRecordFn = cudaError_t (*)(cudaEvent_t, cudaStream_t);
std::atomic<EventRecordFn> g_event_record{nullptr};

constexpr int kComms = 64;
std::mutex g_comms_mu;
ncclComm_t g_comms[kComms];              // guarded by g_comms_mu
bool g_comm_reported[kComms];            // async error already reported
std::atomic<uint64_t> g_comm_gen{1};     // bumped by forget(): invalidates thread caches

std::atomic<ncclComm_t> g_poison_comm{nullptr};
std::atomic<int> g_poison_err{ncclSuccess};

std::atomic<bool> g_poller_added{false};

// What the collective path reads of its thread, together: one TLS address for all of it.
// Inside a group, last_comm holds in_group_tag() (the real one waits in outside_comm), so the
// fast path's one comparison with last_comm also sends every call inside a group to the
// general path, which queues it.
struct Thread {
  ncclComm_t last_comm = nullptr;   // the communicator this thread last noted...
  uint64_t last_gen = 0;            // ...under this g_comm_gen
  ncclComm_t outside_comm = nullptr;
  int group_depth = 0;              // ncclGroupStart nesting
};
thread_local Thread t_thread __attribute__((tls_model("initial-exec")));
// Not a communicator: the address of something of ours. (A function, not a constant: a
// reinterpret_cast is no constant expression, and a collective may come before our static
// initialisers have run.)
char g_in_group_tag;
inline ncclComm_t in_group_tag() { return reinterpret_cast<ncclComm_t>(&g_in_group_tag); }

struct Deferred {
  ncclComm_t comm;
  const char* name;
  cudaStream_t stream;
  bool never_complete;
};
constexpr int kGroupOps = 32;
thread_local int t_group_n = 0;
// On the heap, made by the thread's first grouped call (and kept for the thread's life):
// t_thread is initial-exec, which puts the library's whole TLS block in the static TLS
// surplus; 1 KiB more there and a dlopen after torch failed ("cannot allocate memory in
// static TLS block").
thread_local Deferred* t_group = nullptr;

void group_defer(ncclComm_t comm, const char* name, cudaStream_t stream, bool never_complete) {
  if (t_group == nullptr) t_group = new (std::nothrow) Deferred[kGroupOps];
  if (t_group != nullptr && t_group_n < kGroupOps) {
    t_group[t_group_n++] = Deferred{comm, name, stream, never_complete};
  } else {
    g_dropped.fetch_add(1, std::memory_order_relaxed);
  }
}

// The fast paths below run on every collective; their slow halves are out of line so the
// common case stays a handful of instructions with few registers to save.
__attribute__((noinline, cold)) void add_poller_once() {
  if (!g_poller_added.exchange(true)) jitc::add_poller(&poll);
}

// Runs on every thread's first collective (its cache starts empty), so this is also where
// the poller is registered: before any producer publishes its first operation.
__attribute__((noinline)) void note_comm_slow(ncclComm_t comm, uint64_t gen) {
  if (!g_poller_added.load(std::memory_order_relaxed)) add_poller_once();
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
  t_thread.last_comm = comm;
  t_thread.last_gen = gen;
}

inline bool comm_noted(const Thread& t, ncclComm_t comm) {
  return comm == t.last_comm && t.last_gen == g_comm_gen.load(std::memory_order_relaxed);
}

// Records the slot's event on stream, creating or re-creating it as needed (an event
// belongs to the device current at its creation; a stream on another device rejects it).
__attribute__((noinline)) bool record_slow(Op& op, cudaStream_t stream) {
  if (g_event_record.load(std::memory_order_relaxed) == nullptr) {
    EventRecordFn fn = real_cudart::cudaEventRecord_fn();
    if (fn == nullptr) return false;   // libcudart not loaded: nothing to record with
    g_event_record.store(fn, std::memory_order_relaxed);
  }
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

// The producer gives up on an op: its slot (if it had one) goes back as it came, clean.
__attribute__((noinline, cold)) void drop(Op* op) {
  if (op != nullptr) op->state.store(kFree, std::memory_order_release);
  g_dropped.fetch_add(1, std::memory_order_relaxed);
}

// The producer is done with the slot: the poller may look at it from now on (release:
// after the fields and the event record).
inline void publish(Op& op) { op.state.store(kPending, std::memory_order_release); }

// The fast record failed or the slot has no event yet: the full record, then publish.
__attribute__((noinline)) void record_and_publish(Op& op) {
  if (record_slow(op, op.stream))
    publish(op);
  else
    drop(&op);
}

inline void fill(Op& op, ncclComm_t comm, const char* name, cudaStream_t stream) {
  op.comm.store(comm, std::memory_order_relaxed);
  op.name = name;
  op.stream = stream;
}

// acquire (on the CAS): the poller's reset of the slot, released with its kFree store,
// happens before the claimer's writes.
inline bool try_claim(Op& op) {
  int expected = kFree;
  return op.state.compare_exchange_strong(expected, kFilling, std::memory_order_acquire,
                                          std::memory_order_relaxed);
}

// A free slot, searched from the hint on, now in state filling and owned by the caller;
// null when the whole ring is busy. The general path's claim (the fast one tries the slot
// at the hint only). A full ring costs each collective a scan of kRing plain loads, one
// cache line each (~0.1 us, against the several us of launching a collective), until the
// poller's next pass frees slots.
Op* claim() {
  uint32_t i = g_hint.load(std::memory_order_relaxed);
  for (uint32_t n = 0; n < kRing; ++n, ++i) {
    Op& op = g_ring[i % kRing];
    // The plain load first: a busy slot is passed over without a locked instruction.
    if (op.state.load(std::memory_order_relaxed) == kFree && try_claim(op)) {
      g_hint.store(i + 1, std::memory_order_relaxed);
      return &op;
    }
  }
  g_hint.store(i, std::memory_order_relaxed);
  return nullptr;
}

// Poller only: the slot's op is done (complete, failed or forgotten); reset what the poller
// owns and hand the slot back to the producers.
inline void release(Op& op) {
  op.issued_ns.store(0, std::memory_order_relaxed);
  op.forgotten.store(false, std::memory_order_relaxed);
  op.never_complete = false;
  op.state.store(kFree, std::memory_order_release);
}

void report_hang(const Op& op, uint64_t now_ns, double timeout_s) {
  char detail[200];
  double age = static_cast<double>(now_ns - op.issued_ns.load(std::memory_order_relaxed)) / 1e9;
  std::snprintf(detail, sizeof(detail), "%s on comm %p not complete after %.1f s (timeout %.1f s)%s",
                op.name, static_cast<void*>(op.comm.load(std::memory_order_relaxed)), age, timeout_s,
                op.never_complete ? " [injected]" : "");
  jitc::debug("interpose: nccl hang: %s", detail);
  g_hangs.fetch_add(1, std::memory_order_relaxed);
  jitc::report_failure(FailureKind::NcclHang, Severity::Fatal, op.name, 0, detail);
}

}  // namespace

void issued(ncclComm_t comm, const char* name, cudaStream_t stream, bool never_complete) {
  if (t_thread.group_depth > 0) {
    group_defer(comm, name, stream, never_complete);
    return;
  }
  if (!comm_noted(t_thread, comm)) note_comm_slow(comm, g_comm_gen.load(std::memory_order_relaxed));
  Op* op = claim();
  if (op == nullptr) {
    drop(nullptr);
    return;
  }
  fill(*op, comm, name, stream);
  if (never_complete) {
    op->never_complete = true;
    publish(*op);
  } else {
    record_and_publish(*op);
  }
}

void issued(ncclComm_t comm, const char* name, cudaStream_t stream) {
  // Every miss (inside a group, a communicator not noted yet, the slot at the hint taken,
  // the slot's event missing or refusing the stream) is a call to the general form or to
  // record_and_publish: tail calls, so that nothing but the slot lives across the record.
  if (__builtin_expect(!comm_noted(t_thread, comm), 0)) return issued(comm, name, stream, false);
  uint32_t i = g_hint.load(std::memory_order_relaxed);
  Op& op = g_ring[i % kRing];
  if (__builtin_expect(!try_claim(op), 0)) return issued(comm, name, stream, false);
  g_hint.store(i + 1, std::memory_order_relaxed);
  fill(op, comm, name, stream);
  cudaEvent_t event = op.event;
  if (__builtin_expect(event == nullptr, 0)) return record_and_publish(op);
  if (__builtin_expect(g_event_record.load(std::memory_order_relaxed)(event, stream) != cudaSuccess, 0))
    return record_and_publish(op);
  publish(op);
}

void group_start() {
  Thread& t = t_thread;
  if (t.group_depth++ > 0) return;
  t.outside_comm = t.last_comm;
  t.last_comm = in_group_tag();
}

void group_end(bool launched) {
  Thread& t = t_thread;
  if (t.group_depth > 0) --t.group_depth;
  if (t.group_depth > 0) return;
  if (t.last_comm == in_group_tag()) t.last_comm = t.outside_comm;
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
    if ((s == kPending || s == kReported) && op.comm.load(std::memory_order_relaxed) == comm)
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
    uint64_t issued = op.issued_ns.load(std::memory_order_relaxed);
    if (issued == 0) {   // first sight: stamp it (see the top of this file)
      issued = now_ns;
      op.issued_ns.store(issued, std::memory_order_relaxed);
      g_seen.store(g_seen.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    if (op.forgotten.load(std::memory_order_acquire)) {
      release(op);
      continue;
    }
    cudaError_t r = op.never_complete ? cudaErrorNotReady : real_cudart::cudaEventQuery(op.event);
    if (r == cudaSuccess) {
      release(op);
    } else if (r == cudaErrorNotReady) {
      if (s == kPending && timeout_ns > 0 && now_ns > issued && now_ns - issued > timeout_ns) {
        report_hang(op, now_ns, timeout_s);
        op.state.store(kReported, std::memory_order_release);
      }
    } else {
      // The stream failed under the collective: a sticky CUDA error surfaced here.
      check(Api::Runtime, r, op.name);
      release(op);
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
      check(Api::Nccl, err, "ncclCommGetAsyncError");
      g_comm_reported[i] = true;
    }
  }
}

Stats stats() {
  // Tracked: stamped by the poller, plus those published since its last pass. Exact when
  // the poller is not running concurrently; may be off by the ops it handles meanwhile.
  uint64_t tracked = g_seen.load();
  for (const Op& op : g_ring)
    if (op.state.load() == kPending && op.issued_ns.load(std::memory_order_relaxed) == 0)
      ++tracked;
  return Stats{tracked, g_dropped.load(), g_hangs.load()};
}

}  // namespace jitc::interpose::watch
