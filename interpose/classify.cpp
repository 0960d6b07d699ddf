// The classification tables. Runtime and driver share numeric codes for every error that
// matters here (CUDA keeps them aligned), so one table carries both spellings.
#include "classify.h"

#include <cstdio>

#include "core.h"

namespace jitc::interpose {
namespace {

struct CudaCode {
  long code;
  const char* runtime;
  const char* driver;
  Severity severity;
};

constexpr Severity B = Severity::Benign, R = Severity::Recoverable, F = Severity::Fatal;

// Anything not listed is Recoverable: an unexpected failure is worth a report, but we do
// not claim the context is lost without knowing.
constexpr CudaCode kCuda[] = {
    {0, "cudaSuccess", "CUDA_SUCCESS", B},
    {1, "cudaErrorInvalidValue", "CUDA_ERROR_INVALID_VALUE", R},
    {2, "cudaErrorMemoryAllocation", "CUDA_ERROR_OUT_OF_MEMORY", R},
    {3, "cudaErrorInitializationError", "CUDA_ERROR_NOT_INITIALIZED", R},
    // The runtime is being torn down at process exit: late calls from destructors.
    {4, "cudaErrorCudartUnloading", "CUDA_ERROR_DEINITIALIZED", B},
    // Device/driver probing (torch.cuda.is_available() and friends) answers these.
    {35, "cudaErrorInsufficientDriver", "CUDA_ERROR_INSUFFICIENT_DRIVER", B},
    {36, "cudaErrorSetOnActiveProcess", "CUDA_ERROR_SET_ON_ACTIVE_PROCESS", B},
    {46, "cudaErrorDevicesUnavailable", "CUDA_ERROR_DEVICES_UNAVAILABLE", F},
    {100, "cudaErrorNoDevice", "CUDA_ERROR_NO_DEVICE", B},
    {101, "cudaErrorInvalidDevice", "CUDA_ERROR_INVALID_DEVICE", R},
    {214, "cudaErrorECCUncorrectable", "CUDA_ERROR_ECC_UNCORRECTABLE", F},
    {220, "cudaErrorNvlinkUncorrectable", "CUDA_ERROR_NVLINK_UNCORRECTABLE", F},
    {400, "cudaErrorInvalidResourceHandle", "CUDA_ERROR_INVALID_HANDLE", R},
    // A completion query that is still running: the normal answer, never an error.
    {600, "cudaErrorNotReady", "CUDA_ERROR_NOT_READY", B},
    {700, "cudaErrorIllegalAddress", "CUDA_ERROR_ILLEGAL_ADDRESS", F},
    {701, "cudaErrorLaunchOutOfResources", "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", R},
    {702, "cudaErrorLaunchTimeout", "CUDA_ERROR_LAUNCH_TIMEOUT", F},
    {704, "cudaErrorPeerAccessAlreadyEnabled", "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED", B},
    {705, "cudaErrorPeerAccessNotEnabled", "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED", B},
    {709, "cudaErrorContextIsDestroyed", "CUDA_ERROR_CONTEXT_IS_DESTROYED", F},
    {710, "cudaErrorAssert", "CUDA_ERROR_ASSERT", F},
    {712, "cudaErrorHostMemoryAlreadyRegistered", "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED", B},
    {713, "cudaErrorHostMemoryNotRegistered", "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED", B},
    {714, "cudaErrorHardwareStackError", "CUDA_ERROR_HARDWARE_STACK_ERROR", F},
    {715, "cudaErrorIllegalInstruction", "CUDA_ERROR_ILLEGAL_INSTRUCTION", F},
    {716, "cudaErrorMisalignedAddress", "CUDA_ERROR_MISALIGNED_ADDRESS", F},
    {717, "cudaErrorInvalidAddressSpace", "CUDA_ERROR_INVALID_ADDRESS_SPACE", F},
    {718, "cudaErrorInvalidPc", "CUDA_ERROR_INVALID_PC", F},
    {719, "cudaErrorLaunchFailure", "CUDA_ERROR_LAUNCH_FAILED", F},
    {720, "cudaErrorCooperativeLaunchTooLarge", "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE", R},
    {999, "cudaErrorUnknown", "CUDA_ERROR_UNKNOWN", F},
};

struct NcclCode {
  long code;
  const char* name;
  Severity severity;
};

constexpr NcclCode kNccl[] = {
    {0, "ncclSuccess", B},
    {1, "ncclUnhandledCudaError", F},
    {2, "ncclSystemError", F},
    {3, "ncclInternalError", F},
    {4, "ncclInvalidArgument", R},
    {5, "ncclInvalidUsage", R},
    {6, "ncclRemoteError", F},
    // Non-blocking communicators: the operation is still being set up.
    {7, "ncclInProgress", B},
};

const CudaCode* find_cuda(long code) {
  for (const auto& c : kCuda)
    if (c.code == code) return &c;
  return nullptr;
}

const NcclCode* find_nccl(long code) {
  for (const auto& c : kNccl)
    if (c.code == code) return &c;
  return nullptr;
}

}  // namespace

Severity classify(Api api, long code) {
  if (api == Api::Nccl) {
    const NcclCode* c = find_nccl(code);
    return c ? c->severity : Severity::Recoverable;
  }
  const CudaCode* c = find_cuda(code);
  return c ? c->severity : Severity::Recoverable;
}

const char* error_name(Api api, long code) {
  if (api == Api::Nccl) {
    const NcclCode* c = find_nccl(code);
    return c ? c->name : "ncclUnknownError";
  }
  const CudaCode* c = find_cuda(code);
  if (c == nullptr) return api == Api::Runtime ? "cudaErrorUnknownCode" : "CUDA_ERROR_UNKNOWN_CODE";
  return api == Api::Runtime ? c->runtime : c->driver;
}

Severity check_slow(Api api, long code, const char* call, bool injected) {
  Severity s = classify(api, code);
  if (s == Severity::Benign) return s;
  char detail[160];
  std::snprintf(detail, sizeof(detail), "%s returned %s (%ld, %s)%s", call,
                error_name(api, code), code, severity_name(s), injected ? " [injected]" : "");
  jitc::debug("interpose: %s", detail);
  FailureKind kind = api == Api::Nccl ? FailureKind::NcclError : FailureKind::CudaError;
  jitc::report_failure(kind, s, error_name(api, code), code, detail);
  return s;
}

}  // namespace jitc::interpose
