// Interposer for NCCL (libnccl), generated from symbols.def.
//
// A collective that returns an error is reported at once; one that returns success is
// watched until its completion event fires (nccl_watch.cpp), because a collective whose
// peer died usually returns success and then never completes.
#include "nccl_watch.h"
#include "wrap.h"

namespace jitc::interpose {
namespace {

enum NcclIndex {
#define JITC_CUDART JITC_SKIP
#define JITC_CUDA JITC_SKIP
#define JITC_NCCL JITC_INDEX
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL
  kNcclCount
};

const char* const kNames[] = {
#define JITC_CUDART JITC_SKIP
#define JITC_CUDA JITC_SKIP
#define JITC_NCCL JITC_NAME
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL
};

std::atomic<void*> g_slots[kNcclCount];
Library g_lib{"libnccl.so", kNames, g_slots, kNcclCount};

// After the real collective, with the wrapper's Guard still held: a failure is reported; a
// success is watched for completion. never_complete: an injected nccl-hang.
inline void after_collective(ncclResult_t r, const char* name, ncclComm_t comm,
                             cudaStream_t stream, bool never_complete) {
  if (r != ncclSuccess && r != ncclInProgress)
    check(Api::Nccl, r, name);
  else if (never_complete)
    watch::issued(comm, name, stream, true);
  else
    watch::issued(comm, name, stream);
}

// An armed nccl-error fires: the collective fails as NCCL fails when a kernel or a peer
// dies, and the communicator's asynchronous error says so from now on.
bool injected_error(ncclComm_t comm, const char* name) {
  if (!jitc::take_fault(jitc::Fault::NcclError)) return false;
  watch::poison(comm, ncclUnhandledCudaError);
  check(Api::Nccl, ncclUnhandledCudaError, name, true);
  return true;
}

// The faults a collective fires: the wrappers' fast path tests them all with one load.
constexpr uint32_t kNcclFaults =
    jitc::fault_bit(jitc::Fault::NcclError) | jitc::fault_bit(jitc::Fault::NcclHang);

}  // namespace

namespace real_nccl {
#define JITC_CUDART JITC_SKIP
#define JITC_CUDA JITC_SKIP
#define JITC_NCCL(policy, ret, name, params, args)                                \
  ret name params {                                                              \
    auto fn = reinterpret_cast<ret(*) params>(real(g_lib, k_##name));            \
    return fn ? fn args : not_loaded<ret>();                                     \
  }
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL
}  // namespace real_nccl

}  // namespace jitc::interpose

using namespace jitc::interpose;

// ---- generated wrappers ---------------------------------------------------------------
// A collective wrapper is two functions. name##_full is the whole wrapper; the exported
// function is its fast path for the two calls that matter, an observed collective with no
// fault armed and a call in an inert process (passed straight through). Anything else
// (the real function not resolved yet, the activation attempt, a nested call, an armed
// fault) is a tail call to name##_full with the same arguments, so the exported function
// saves no argument across a call before the real one and its frame stays small: it runs
// on every collective.
// An injected nccl-hang still issues the real collective (the peers are not disturbed);
// only this rank's watchdog is told it never completes.
#define JITC_NCCL_COLL(ret, name, params, args)                                   \
  namespace {                                                                    \
  __attribute__((noinline, cold)) ret name##_full params {                       \
    auto fn = reinterpret_cast<ret(*) params>(real(g_lib, k_##name));            \
    if (fn == nullptr) return not_loaded<ret>();                                 \
    if (!observing()) return fn args;                                            \
    Guard guard;                                                                 \
    if (injected_error(comm, #name)) return ncclUnhandledCudaError;              \
    bool hang = jitc::take_fault(jitc::Fault::NcclHang);                         \
    ret r = fn args;                                                             \
    after_collective(r, #name, comm, stream, hang);                              \
    return r;                                                                    \
  }                                                                              \
  }                                                                              \
  JITC_EXPORT ret name params {                                                  \
    auto fn = reinterpret_cast<ret(*) params>(                                   \
        g_slots[k_##name].load(std::memory_order_acquire));                      \
    if (__builtin_expect(fn == nullptr, 0)) return name##_full args;             \
    if (__builtin_expect(!jitc::active(), 0))                                    \
      return activation_tried() ? fn args : name##_full args;                    \
    if (__builtin_expect(t_inside != 0 || jitc::any_armed(kNcclFaults), 0))      \
      return name##_full args;                                                   \
    Guard guard;                                                                 \
    ret r = fn args;                                                             \
    after_collective(r, #name, comm, stream, false);                             \
    return r;                                                                    \
  }

#define JITC_NCCL_GROUP(ret, name, params, args)                                  \
  JITC_EXPORT ret name params {                                                  \
    auto fn = reinterpret_cast<ret(*) params>(real(g_lib, k_##name));            \
    if (fn == nullptr) return not_loaded<ret>();                                 \
    if (!observing()) return fn args;                                            \
    Guard guard;                                                                 \
    ret r = fn args;                                                             \
    check(Api::Nccl, r, #name);                                                  \
    bool ok = r == ncclSuccess || r == ncclInProgress;                           \
    if (k_##name == k_ncclGroupStart) {                                          \
      if (ok) watch::group_start();                                              \
    } else {                                                                     \
      watch::group_end(ok);                                                      \
    }                                                                            \
    return r;                                                                    \
  }

#define JITC_NCCL_CUSTOM(ret, name, params, args)
#define JITC_NCCL_REAL(ret, name, params, args)
#define JITC_CUDART JITC_SKIP
#define JITC_CUDA JITC_SKIP
#define JITC_NCCL(policy, ret, name, params, args) JITC_NCCL_##policy(ret, name, params, args)
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL

// ---- hand-written wrappers --------------------------------------------------------------
JITC_EXPORT ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  using Fn = ncclResult_t (*)(ncclComm_t, ncclResult_t*);
  auto fn = reinterpret_cast<Fn>(real(g_lib, k_ncclCommGetAsyncError));
  if (fn == nullptr) return not_loaded<ncclResult_t>();
  if (!observing()) return fn(comm, error);
  Guard guard;
  ncclResult_t r = fn(comm, error);
  if (r != ncclSuccess || error == nullptr) return r;
  ncclResult_t injected = watch::poisoned(comm);
  if (injected != ncclSuccess) *error = injected;
  if (*error != ncclSuccess && *error != ncclInProgress)
    check(Api::Nccl, *error, "ncclCommGetAsyncError", injected != ncclSuccess);
  return r;
}

// Abort and destroy free the communicator: stop watching it first, so the watchdog never
// queries a freed communicator or reports the aborted operations as hangs.
JITC_EXPORT ncclResult_t ncclCommAbort(ncclComm_t comm) {
  using Fn = ncclResult_t (*)(ncclComm_t);
  auto fn = reinterpret_cast<Fn>(real(g_lib, k_ncclCommAbort));
  if (fn == nullptr) return not_loaded<ncclResult_t>();
  if (jitc::active()) watch::forget(comm);
  return fn(comm);
}

JITC_EXPORT ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  using Fn = ncclResult_t (*)(ncclComm_t);
  auto fn = reinterpret_cast<Fn>(real(g_lib, k_ncclCommDestroy));
  if (fn == nullptr) return not_loaded<ncclResult_t>();
  if (jitc::active()) watch::forget(comm);
  return fn(comm);
}

JITC_EXPORT const char* ncclGetErrorString(ncclResult_t result) {
  using Fn = const char* (*)(ncclResult_t);
  auto fn = reinterpret_cast<Fn>(real(g_lib, k_ncclGetErrorString));
  return fn ? fn(result) : error_name(Api::Nccl, result);
}
