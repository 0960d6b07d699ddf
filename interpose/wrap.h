// Shared pieces of the generated wrappers: the "library not loaded" answers, the injected
// sticky CUDA error, and the real-function accessors the shim itself uses.
#pragma once

#include <atomic>

#include "classify.h"
#include "cuda_api.h"
#include "nccl_api.h"
#include "resolve.h"

namespace jitc::interpose {

// What a wrapper returns when the real library is not loaded in this process.
template <class T> T not_loaded();
template <> inline cudaError_t not_loaded<cudaError_t>() { return cudaErrorInsufficientDriver; }
template <> inline CUresult not_loaded<CUresult>() { return CUDA_ERROR_NOT_INITIALIZED; }
template <> inline ncclResult_t not_loaded<ncclResult_t>() { return ncclSystemError; }
template <> inline const char* not_loaded<const char*>() { return nullptr; }

// After an injected cuda-error the context behaves as after a real sticky error: every
// later observed CUDA call returns the same code. 0 while nothing was injected.
extern std::atomic<int> g_sticky_cuda;

// Fires an armed cuda-error fault (or repeats the sticky one). Returns 0 when the real
// call should proceed, else the error code to return; *injected tells which.
int cuda_pre_call(bool* injected);

// Driver: hand back our wrapper for a driver function fetched by pointer (cuGetProcAddress,
// cudaGetDriverEntryPoint). Returns fn itself for anything we do not wrap. version: the
// CUDA version the caller asked for, < 0 if unknown.
void* driver_substitute(const char* symbol, void* fn, unsigned long long flags, int version);

// Real functions, for the shim's own use (callers hold a Guard). Declared from the table;
// each returns not_loaded<ret>() when its library is absent. name##_fn() is the resolved
// pointer itself (null while libcudart is not loaded), for a caller on a hot path that
// caches it and calls it directly, without the not-loaded check on every call.
namespace real_cudart {
#define JITC_CUDART(policy, ret, name, params, args) ret name params; ret (*name##_fn()) params;
#define JITC_CUDA(policy, ret, name, params, args)
#define JITC_NCCL(policy, ret, name, params, args)
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL
}  // namespace real_cudart

namespace real_nccl {
#define JITC_CUDART(policy, ret, name, params, args)
#define JITC_CUDA(policy, ret, name, params, args)
#define JITC_NCCL(policy, ret, name, params, args) ret name params;
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL
}  // namespace real_nccl

}  // namespace jitc::interpose

// Index enums and name lists, one per library, from the table.
#define JITC_INDEX(policy, ret, name, params, args) k_##name,
#define JITC_NAME(policy, ret, name, params, args) #name,
#define JITC_SKIP(policy, ret, name, params, args)
