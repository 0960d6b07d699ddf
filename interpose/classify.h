// Error classification for CUDA runtime, CUDA driver and NCCL return codes.
//
// Fatal (sticky): the CUDA context is unusable and must be rebuilt; this rank's state now
// has to come from a replica. Recoverable: the call failed but the context is intact (out
// of memory, a bad argument). Benign: not an error at all for us (not-ready from a query,
// the runtime unloading at exit, probing answers torch handles itself). Fatal and
// recoverable results are reported to the core, with the error's symbolic name.
// Severity itself (and its names) comes from the failure table, csrc/failure.h.
#pragma once

#include "failure.h"

namespace jitc::interpose {

enum class Api { Runtime, Driver, Nccl };

Severity classify(Api api, long code);
// Symbolic name ("cudaErrorIllegalAddress", "CUDA_ERROR_ILLEGAL_ADDRESS",
// "ncclUnhandledCudaError"); "unknown" for codes outside our table.
const char* error_name(Api api, long code);

// Classify `code` returned by `call` and report it to the core unless benign, with its
// severity: kind nccl-error for Api::Nccl, else cuda-error. Returns the severity. Cheap
// for success (one compare).
Severity check_slow(Api api, long code, const char* call, bool injected);

inline Severity check(Api api, long code, const char* call, bool injected = false) {
  if (code == 0) return Severity::Benign;
  return check_slow(api, code, call, injected);
}

}  // namespace jitc::interpose
