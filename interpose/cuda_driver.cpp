// Interposer for the CUDA driver (libcuda), generated from symbols.def.
//
// HAZARD: since CUDA 11.3 most driver calls do not go through exported symbols at all:
// callers fetch function pointers with cuGetProcAddress (directly, or through the
// runtime's cudaGetDriverEntryPoint). Hooking only the symbols would silently miss them,
// so cuGetProcAddress is wrapped as well and hands back a second set of wrappers that call
// the pointer the driver returned ("proc" wrappers), which may differ from the exported
// symbol's address.
#include <cstring>

#include "wrap.h"

namespace jitc::interpose {
namespace {

enum DriverIndex {
#define JITC_CUDART JITC_SKIP
#define JITC_CUDA JITC_INDEX
#define JITC_NCCL JITC_SKIP
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL
  kDriverCount
};

const char* const kNames[] = {
#define JITC_CUDART JITC_SKIP
#define JITC_CUDA JITC_NAME
#define JITC_NCCL JITC_SKIP
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL
};

std::atomic<void*> g_slots[kDriverCount];
// Real pointers handed out by cuGetProcAddress, one per wrapped symbol (first one wins).
std::atomic<void*> g_proc[kDriverCount];
Library g_lib{"libcuda.so", kNames, g_slots, kDriverCount};

// Body shared by the exported and the proc wrapper of a SYNC symbol.
#define JITC_DRIVER_BODY(ret, name, params, args, slot_expr)                     \
  auto fn = reinterpret_cast<ret(*) params>(slot_expr);                          \
  if (fn == nullptr) return not_loaded<ret>();                                   \
  if (!observing()) return fn args;                                              \
  Guard guard;                                                                   \
  bool injected = false;                                                         \
  int pre = cuda_pre_call(&injected);                                            \
  ret r = pre != 0 ? static_cast<ret>(pre) : fn args;                            \
  check(Api::Driver, r, #name, injected);                                        \
  return r;

#define JITC_CUDA_SYNC(ret, name, params, args)                                   \
  ret proc_##name params {                                                       \
    JITC_DRIVER_BODY(ret, name, params, args,                                    \
                     g_proc[k_##name].load(std::memory_order_acquire))           \
  }
#define JITC_CUDA_CUSTOM(ret, name, params, args)
#define JITC_CUDA_REAL(ret, name, params, args)
#define JITC_CUDART JITC_SKIP
#define JITC_CUDA(policy, ret, name, params, args) JITC_CUDA_##policy(ret, name, params, args)
#define JITC_NCCL JITC_SKIP
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL
#undef JITC_CUDA_SYNC
#undef JITC_CUDA_CUSTOM
#undef JITC_CUDA_REAL

// The proc wrapper of each symbol, null for those that are not SYNC.
#define JITC_CUDA_SYNC(ret, name, params, args) reinterpret_cast<void*>(&proc_##name),
#define JITC_CUDA_CUSTOM(ret, name, params, args) nullptr,
#define JITC_CUDA_REAL(ret, name, params, args) nullptr,
#define JITC_CUDART JITC_SKIP
#define JITC_CUDA(policy, ret, name, params, args) JITC_CUDA_##policy(ret, name, params, args)
#define JITC_NCCL JITC_SKIP
void* const kProcWrappers[] = {
#include "symbols.def"
};
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL
#undef JITC_CUDA_SYNC
#undef JITC_CUDA_CUSTOM
#undef JITC_CUDA_REAL

// "cuMemcpyDtoH_v2" is requested as "cuMemcpyDtoH" (the version picks _v2).
bool same_symbol(const char* requested, const char* ours) {
  size_t n = std::strlen(requested);
  if (std::strncmp(requested, ours, n) != 0) return false;
  return ours[n] == '\0' || std::strcmp(ours + n, "_v2") == 0;
}

// HAZARD: one requested name maps to different ABIs depending on the requested CUDA
// version (cudaTypedefs.h: PFN_cuCtxSynchronize_v2000 takes no argument, _v13000 takes a
// context). Our wrapper has exactly the prototype in symbols.def, so it is handed out only
// for the versions that have that prototype. version < 0: unknown (the runtime chose).
struct AbiRange {
  const char* name;
  int from, until;   // [from, until); until 0 = no upper bound
};
constexpr AbiRange kAbi[] = {
    {"cuMemcpyDtoH_v2", 3020, 0},
    {"cuMemcpyHtoD_v2", 3020, 0},
    {"cuCtxSynchronize", 0, 13000},
};

bool prototype_matches(const char* ours, int version) {
  for (const auto& a : kAbi) {
    if (std::strcmp(a.name, ours) != 0) continue;
    if (version < 0) return a.until == 0;
    return version >= a.from && (a.until == 0 || version < a.until);
  }
  return true;
}

}  // namespace
}  // namespace jitc::interpose

using namespace jitc::interpose;

// ---- exported wrappers --------------------------------------------------------------
#define JITC_CUDA_CUSTOM(ret, name, params, args)
#define JITC_CUDA_REAL(ret, name, params, args)
#define JITC_CUDA_SYNC(ret, name, params, args)                                   \
  JITC_EXPORT ret name params {                                                  \
    JITC_DRIVER_BODY(ret, name, params, args, real(g_lib, k_##name))             \
  }
#define JITC_CUDART JITC_SKIP
#define JITC_CUDA(policy, ret, name, params, args) JITC_CUDA_##policy(ret, name, params, args)
#define JITC_NCCL JITC_SKIP
#include "symbols.def"
#undef JITC_CUDART
#undef JITC_CUDA
#undef JITC_NCCL

// Both spellings of cuGetProcAddress: the CUDA 12+ one with a status out-parameter, and
// the legacy four-argument symbol (cuda.h maps the name onto _v2, hence the asm label).
JITC_EXPORT CUresult jitc_cuGetProcAddress_legacy(const char* symbol, void** fn, int version,
                                                  cuuint64_t flags) __asm__("cuGetProcAddress");

JITC_EXPORT CUresult cuGetProcAddress_v2(const char* symbol, void** fn, int version,
                                         cuuint64_t flags,
                                         CUdriverProcAddressQueryResult* status) {
  using Fn = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
  auto real_fn = reinterpret_cast<Fn>(real(g_lib, k_cuGetProcAddress_v2));
  if (real_fn == nullptr) return not_loaded<CUresult>();
  CUresult r = real_fn(symbol, fn, version, flags, status);
  // Inside cudaGetDriverEntryPoint (t_inside) the outer wrapper substitutes, once.
  if (r == CUDA_SUCCESS && fn != nullptr && t_inside == 0)
    *fn = driver_substitute(symbol, *fn, flags, version);
  return r;
}

CUresult jitc_cuGetProcAddress_legacy(const char* symbol, void** fn, int version,
                                      cuuint64_t flags) {
  using Fn = CUresult (*)(const char*, void**, int, cuuint64_t);
  auto real_fn = reinterpret_cast<Fn>(real(g_lib, k_cuGetProcAddress));
  if (real_fn == nullptr) return not_loaded<CUresult>();
  CUresult r = real_fn(symbol, fn, version, flags);
  if (r == CUDA_SUCCESS && fn != nullptr && t_inside == 0)
    *fn = driver_substitute(symbol, *fn, flags, version);
  return r;
}

namespace jitc::interpose {

// Pointers are substituted even while the shim is inert: they are fetched once, at CUDA
// initialisation, long before jitc_init(), and kept for the life of the process. The
// wrappers handed out are gated like the exported ones, so an inert process still only
// passes through.
void* driver_substitute(const char* symbol, void* fn, unsigned long long flags, int version) {
  if (symbol == nullptr || fn == nullptr) return fn;
  // Per-thread-default-stream variants (_ptsz/_ptds) are different functions with other
  // stream semantics; we only wrap the legacy-stream ones and leave these untouched.
  if (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) return fn;
  if (std::strcmp(symbol, "cuGetProcAddress") == 0) {
    // Whoever fetches cuGetProcAddress itself fetches everything else through it.
    if (fn == real(g_lib, k_cuGetProcAddress_v2))
      return reinterpret_cast<void*>(&cuGetProcAddress_v2);
    if (fn == real(g_lib, k_cuGetProcAddress))
      return reinterpret_cast<void*>(&jitc_cuGetProcAddress_legacy);
    return fn;
  }
  for (size_t i = 0; i < kDriverCount; ++i) {
    if (kProcWrappers[i] == nullptr || !same_symbol(symbol, kNames[i])) continue;
    if (!prototype_matches(kNames[i], version)) return fn;
    if (fn == kProcWrappers[i]) return fn;   // already ours
    void* expected = nullptr;
    if (g_proc[i].compare_exchange_strong(expected, fn) || expected == fn)
      return kProcWrappers[i];
    // A second, different variant of the same name (another ABI version): it would need
    // its own slot; hand it back unwrapped rather than call the wrong function.
    jitc::debug("interpose: %s: second driver variant left unwrapped", symbol);
    return fn;
  }
  return fn;
}

}  // namespace jitc::interpose
