// Resolution of the real functions and the activation gate of the interposers.
//
// dlsym(RTLD_NEXT) finds the next definition after libjitc.so in the global lookup scope:
// right for a library the program links or dlopens RTLD_GLOBAL. A library dlopened
// RTLD_LOCAL (torch loads its CUDA libraries as dependencies of Python extension modules)
// is not in that scope, so the fallback looks the library up among the loaded objects by
// file name and asks that object directly.
#include "resolve.h"

#include <dlfcn.h>
#include <link.h>

#include <cstring>
#include <mutex>

namespace jitc::interpose {

__thread int t_inside __attribute__((tls_model("initial-exec"))) = 0;
std::atomic<bool> g_activation_tried{false};

namespace {

struct Search {
  const char* prefix;
  char path[4096];
};

int find_loaded(struct dl_phdr_info* info, size_t, void* data) {
  auto* s = static_cast<Search*>(data);
  const char* name = info->dlpi_name;
  if (name == nullptr || name[0] == '\0') return 0;
  const char* base = std::strrchr(name, '/');
  base = base ? base + 1 : name;
  if (std::strncmp(base, s->prefix, std::strlen(s->prefix)) != 0) return 0;
  std::strncpy(s->path, name, sizeof(s->path) - 1);
  s->path[sizeof(s->path) - 1] = '\0';
  return 1;
}

// A handle on the already-loaded library, or null. RTLD_NOLOAD: never loads anything.
void* loaded_handle(const char* prefix) {
  Search s{prefix, {0}};
  if (dl_iterate_phdr(find_loaded, &s) == 0) return nullptr;
  return dlopen(s.path, RTLD_LAZY | RTLD_NOLOAD);
}

}  // namespace

void* resolve_slow(Library& lib, size_t index) {
  // One resolution pass at a time per library; a race would only store equal values, but
  // the lock keeps dl_iterate_phdr/dlopen off the hot path of concurrent first calls.
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  void* handle = nullptr;
  bool searched = false;
  for (size_t i = 0; i < lib.count; ++i) {
    if (lib.slots[i].load(std::memory_order_relaxed) != nullptr) continue;
    void* p = dlsym(RTLD_NEXT, lib.names[i]);
    if (p == nullptr) {
      if (!searched) {
        handle = loaded_handle(lib.soname_prefix);
        searched = true;
      }
      if (handle != nullptr) p = dlsym(handle, lib.names[i]);
    }
    if (p != nullptr) lib.slots[i].store(p, std::memory_order_release);
  }
  // dlopen(RTLD_NOLOAD) took a reference; the library stays loaded by its real owner.
  if (handle != nullptr) dlclose(handle);
  void* p = lib.slots[index].load(std::memory_order_acquire);
  if (p == nullptr) jitc::debug("interpose: %s not found (%s not loaded)", lib.names[index],
                                lib.soname_prefix);
  return p;
}

bool observing_slow() {
  // auto_activate() reads the environment and may connect to the supervisor: do it once,
  // on the first interposed call, never again in an inert process.
  if (g_activation_tried.load(std::memory_order_relaxed)) return false;
  if (g_activation_tried.exchange(true)) return false;
  return jitc::auto_activate() && t_inside == 0;
}

}  // namespace jitc::interpose
