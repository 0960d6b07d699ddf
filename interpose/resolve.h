// Finding the real CUDA/NCCL functions behind our exported wrappers, and the gate every
// wrapper passes through.
//
// Why lazily, per call site: we export e.g. cudaDeviceSynchronize from a preloaded
// library, so every process with the shim binds that name to us, even one that has not
// loaded libcudart yet (torch dlopens it late) or never will. A slot is therefore filled
// on first use and retried until the real library shows up; a wrapper whose real function
// cannot be found returns the library's "not initialised" code instead of crashing.
#pragma once

#include <atomic>
#include <cstddef>

#include "core.h"

#define JITC_EXPORT extern "C" __attribute__((visibility("default")))

namespace jitc::interpose {

// One interposed library: its symbol names (from symbols.def) and their resolved slots.
struct Library {
  const char* soname_prefix;          // "libcudart.so": used when RTLD_NEXT cannot see it
  const char* const* names;
  std::atomic<void*>* slots;
  size_t count;
};

// Slow path of real(): resolves every still-empty slot of the library (dlsym RTLD_NEXT,
// then the already-loaded library found by name). Returns the slot's value, maybe null.
void* resolve_slow(Library& lib, size_t index);

inline void* real(Library& lib, size_t index) {
  void* p = lib.slots[index].load(std::memory_order_acquire);
  return p ? p : resolve_slow(lib, index);
}

// Re-entry guard. Set while the shim itself is inside a real CUDA/NCCL call (a runtime
// call that goes through a driver function we also wrap, our watchdog's event queries,
// the snapshot copies): nested wrappers then pass straight through, so one failure is
// classified once and an armed fault is never consumed by the shim's own calls.
// initial-exec: the library is preloaded, so its TLS is static and this is one
// %fs-relative load instead of a __tls_get_addr call on every interposed call.
// __thread, not thread_local: an extern thread_local costs a TLS-wrapper check per use.
extern __thread int t_inside __attribute__((tls_model("initial-exec")));

struct Guard {
  Guard() { ++t_inside; }
  ~Guard() { --t_inside; }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
};

// Slow path of observing(): one auto-activation attempt per process (docs/internals.md).
bool observing_slow();
// Set once that attempt was made (by observing_slow): not active() after it, the process
// is inert (invariant I4) for good.
extern std::atomic<bool> g_activation_tried;
inline bool activation_tried() { return g_activation_tried.load(std::memory_order_relaxed); }

// Should this call be observed (classified, watched, fault-injected)? Inert processes
// (invariant I4) pay one relaxed load and, after the first call, one more.
inline bool observing() {
  if (!jitc::active()) return !activation_tried() && observing_slow();
  return t_inside == 0;
}

}  // namespace jitc::interpose
