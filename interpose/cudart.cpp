// Interposer for the CUDA runtime (libcudart), generated from symbols.def.
//
// Synchronising calls, copies and launches are where a fatal device error surfaces (an
// illegal address in a kernel is reported by the next synchronisation), so those results
// are classified and reported; the queries are classified too, with not-ready benign.
#include <cstring>

#include "wrap.h"

namespace jitc::interpose {

std::atomic<int> g_sticky_cuda{0};

int cuda_pre_call(bool* injected) {
  int sticky = g_sticky_cuda.load(std::memory_order_relaxed);
  if (sticky != 0) return sticky;
  if (!jitc::take_fault(jitc::Fault::CudaError)) return 0;
  // cudaErrorIllegalAddress and CUDA_ERROR_ILLEGAL_ADDRESS are both 700.
  g_sticky_cuda.store(700, std::memory_order_relaxed);
  *injected = true;
  return 700;
}

namespace {

enum CudartIndex {
#define JITC_CUDART JITC_INDEX
#define JITC_CUDA JITC_SKIP
#define JITC_NCCL JITC_SKIP
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL
  kCudartCount
};

const char* const kNames[] = {
#define JITC_CUDART JITC_NAME
#define JITC_CUDA JITC_SKIP
#define JITC_NCCL JITC_SKIP
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL
};

std::atomic<void*> g_slots[kCudartCount];
Library g_lib{"libcudart.so", kNames, g_slots, kCudartCount};

}  // namespace

namespace real_cudart {
#define JITC_CUDART(policy, ret, name, params, args)                              \
  ret name params {                                                              \
    auto fn = reinterpret_cast<ret(*) params>(real(g_lib, k_##name));            \
    return fn ? fn args : not_loaded<ret>();                                     \
  }                                                                              \
  ret (*name##_fn()) params {                                                    \
    return reinterpret_cast<ret(*) params>(real(g_lib, k_##name));               \
  }
#define JITC_CUDA JITC_SKIP
#define JITC_NCCL JITC_SKIP
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL
}  // namespace real_cudart

}  // namespace jitc::interpose

using namespace jitc::interpose;

// ---- generated wrappers ---------------------------------------------------------------
#define JITC_CUDART_SYNC(ret, name, params, args)                                 \
  JITC_EXPORT ret name params {                                                  \
    auto fn = reinterpret_cast<ret(*) params>(real(g_lib, k_##name));            \
    if (fn == nullptr) return not_loaded<ret>();                                 \
    if (!observing()) return fn args;                                            \
    Guard guard;                                                                 \
    bool injected = false;                                                       \
    int pre = cuda_pre_call(&injected);                                          \
    ret r = pre != 0 ? static_cast<ret>(pre) : fn args;                          \
    check(Api::Runtime, r, #name, injected);                                     \
    return r;                                                                    \
  }

#define JITC_CUDART_QUERY(ret, name, params, args)                                \
  JITC_EXPORT ret name params {                                                  \
    auto fn = reinterpret_cast<ret(*) params>(real(g_lib, k_##name));            \
    if (fn == nullptr) return not_loaded<ret>();                                 \
    if (!observing()) return fn args;                                            \
    Guard guard;                                                                 \
    int sticky = g_sticky_cuda.load(std::memory_order_relaxed);                  \
    ret r = sticky != 0 ? static_cast<ret>(sticky) : fn args;                    \
    check(Api::Runtime, r, #name);                                               \
    return r;                                                                    \
  }

#define JITC_CUDART_CUSTOM(ret, name, params, args)
#define JITC_CUDART_REAL(ret, name, params, args)
#define JITC_CUDART(policy, ret, name, params, args) JITC_CUDART_##policy(ret, name, params, args)
#define JITC_CUDA JITC_SKIP
#define JITC_NCCL JITC_SKIP
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL

// ---- hand-written wrappers --------------------------------------------------------------
// torch fetches driver functions through the runtime (c10's driver API table); hand back
// our wrappers so those calls are observed like direct ones.
JITC_EXPORT cudaError_t cudaGetDriverEntryPoint(const char* symbol, void** fn,
                                                unsigned long long flags,
                                                cudaDriverEntryPointQueryResult* status) {
  using Fn = cudaError_t (*)(const char*, void**, unsigned long long,
                             cudaDriverEntryPointQueryResult*);
  auto real_fn = reinterpret_cast<Fn>(real(g_lib, k_cudaGetDriverEntryPoint));
  if (real_fn == nullptr) return not_loaded<cudaError_t>();
  cudaError_t r;
  {
    Guard guard;   // the runtime may call cuGetProcAddress, which we also wrap
    r = real_fn(symbol, fn, flags, status);
  }
  if (r == cudaSuccess && fn != nullptr) *fn = driver_substitute(symbol, *fn, flags, -1);
  return r;
}

JITC_EXPORT cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn,
                                                         unsigned int version,
                                                         unsigned long long flags,
                                                         cudaDriverEntryPointQueryResult* status) {
  using Fn = cudaError_t (*)(const char*, void**, unsigned int, unsigned long long,
                             cudaDriverEntryPointQueryResult*);
  auto real_fn = reinterpret_cast<Fn>(real(g_lib, k_cudaGetDriverEntryPointByVersion));
  if (real_fn == nullptr) return not_loaded<cudaError_t>();
  cudaError_t r;
  {
    Guard guard;
    r = real_fn(symbol, fn, version, flags, status);
  }
  if (r == cudaSuccess && fn != nullptr) *fn = driver_substitute(symbol, *fn, flags, static_cast<int>(version));
  return r;
}
