// Error classification for CUDA runtime, CUDA driver and NCCL return codes.
//
// Fatal (sticky): the CUDA context is unusable and must be rebuilt; this rank's state now
// has to come from a replica. Recoverable: the call failed but the context is intact (out
// of memory, a bad argument). Benign: not an error at all for us (not-ready from a query,
// the runtime unloading at exit, probing answers torch handles itself). Fatal and
// recoverable results are reported to the core, with the error's symbolic name.
#pragma once

namespace jitc::interpose {

enum class Severity { Benign = 0, Recoverable = 1, Fatal = 2 };
enum class Api { Runtime, Driver, Nccl };

Severity classify(Api api, long code);
// Symbolic name ("cudaErrorIllegalAddress", "CUDA_ERROR_ILLEGAL_ADDRESS",
// "ncclUnhandledCudaError"); "unknown" for codes outside our table.
const char* error_name(Api api, long code);
const char* severity_name(Severity s);

// Classify `code` returned by `call` and report it to the core unless benign. kind is
// "cuda-error" or "nccl-error". Returns the severity. Cheap for success (one compare).
Severity check_slow(Api api, const char* kind, long code, const char* call, bool injected);

inline Severity check(Api api, const char* kind, long code, const char* call,
                      bool injected = false) {
  if (code == 0) return Severity::Benign;
  return check_slow(api, kind, code, call, injected);
}

}  // namespace jitc::interpose
