// Internal interface of the shim's core, used by interpose/ and csrc/snapshot/.
// Nothing here is exported (the library builds with -fvisibility=hidden); the only exported
// symbols are the C API in jitc.h and the interposed functions.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "failure.h"

namespace jitc {

// The two flags every interposed call reads. They live outside State (state.h) so that
// the checks below inline to one relaxed load each: no call, no static-init guard.
namespace hot {
extern std::atomic<bool> active;
extern std::atomic<uint32_t> armed_faults;   // bit (1 << Fault)
}  // namespace hot

// True once the shim is active in this process (jitc_init ran, or auto-activation below).
inline bool active() { return hot::active.load(std::memory_order_relaxed); }

// For interposers: activate the shim if this process is a rank (RANK set) and jitc is in
// use (JITC_SOCKET or JITC_DIR set). Returns active(). Cheap after the first call.
bool auto_activate();

// Report a failure to the supervisor with its severity (jitc/failure_kinds.def says what
// the kind means). Shim-only mode: a fatal failure of a kind whose reporter is trusted
// starts the local recovery (never returns); anything else is only logged. error: symbolic
// name (e.g. "cudaErrorIllegalAddress") or null; code: numeric code. Thread-safe; NOT
// signal-safe. Reports the same (kind, error) once per step at most.
void report_failure(FailureKind kind, Severity severity, const char* error, long code,
                    const char* detail);

// Hang timeout now in force, seconds (fixed or derived from step times).
double hang_timeout_s();

// Monotonic clock, nanoseconds.
uint64_t now_ns();

// Pollers run on the agent thread once per tick (every ~50 ms), never under the GIL.
// The NCCL interposer registers one that queries its recorded events. A poller must not
// block. Registration is thread-safe; at most 8 pollers.
using Poller = void (*)(uint64_t now_ns);
void add_poller(Poller p);

// Faults armed by jitc_fault_arm(); an interposer takes (consumes) its kind when it fires.
enum class Fault { None = 0, CudaError = 1, NcclError = 2, NcclHang = 3 };
constexpr uint32_t fault_bit(Fault f) { return 1u << static_cast<int>(f); }
// Is any fault of `bits` (fault_bit()s or'ed) armed? Does not take it: one relaxed load, so
// a hot path can test all its kinds at once and handle them out of line.
inline bool any_armed(uint32_t bits) {
  return (hot::armed_faults.load(std::memory_order_relaxed) & bits) != 0;
}
inline bool take_fault(Fault f) {
  uint32_t bit = fault_bit(f);
  // Hot path of every active interposed call: a plain load first, so the common case
  // (nothing armed) costs no locked read-modify-write.
  if ((hot::armed_faults.load(std::memory_order_relaxed) & bit) == 0) return false;
  return (hot::armed_faults.fetch_and(~bit) & bit) != 0;
}

// Logging: only with JITC_DEBUG=1, to stderr, "[jitc pid:tid] ..." (invariant I7).
void debug(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// One line to stderr, "jitc: ...", whatever JITC_DEBUG says: only for a real event the user
// must hear of in shim-only mode, where no supervisor logs it (a snapshot written, or not
// written and why). Never stdout (I7).
void notice(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// GPU side of the snapshot engine, implemented in interpose/cudart.cpp with the *real*
// runtime functions: copy n bytes from device memory src (on device `device`) into host
// memory dst, on the shim's own non-blocking stream, waiting with cudaStreamQuery polls
// (never a blocking call) up to timeout_s. Returns false with a reason in *why if CUDA is
// not loaded, the copy failed, or it timed out.
bool device_to_host(void* dst, const void* src, size_t n, int device, double timeout_s,
                    const char** why);
// Pinned host memory for staging (cudaHostAlloc via the real function); falls back to
// plain malloc when CUDA is not loaded. Free with free_host().
void* alloc_host(size_t n);
void free_host(void* p);

}  // namespace jitc
