// Test-only stand-in for the shim's core (csrc/core.h) and the few C API functions the
// snapshot tests drive, so the snapshot engine can be built and tested on its own
// (libsnaptest.so) before/independently of the real core. CPU only: device_to_host fails.
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core.h"
#include "jitc.h"
#include "snapshot/engine.h"

namespace jitc {
void debug(const char* fmt, ...) {
  const char* d = std::getenv("JITC_DEBUG");
  if (!d || std::strcmp(d, "1") != 0) return;
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "[jitc-snaptest] ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
}
bool device_to_host(void*, const void*, size_t, int, double, const char** why) {
  if (why) *why = "no CUDA in the snapshot test library";
  return false;
}
void* alloc_host(size_t n) { return std::malloc(n); }
void free_host(void* p) { std::free(p); }
}  // namespace jitc

namespace {
thread_local std::string t_err;
int64_t g_step = 0;
}  // namespace

extern "C" {
JITC_API const char* jitc_last_error(void) { return t_err.c_str(); }
JITC_API int jitc_init(int, int, int, int, int) { return JITC_OK; }
JITC_API int jitc_shutdown(int) { return JITC_OK; }
JITC_API int jitc_step_begin(int64_t s) { g_step = s; return JITC_OK; }
JITC_API int jitc_registry_begin(void) { jitc::snapshot::registry_begin(); return JITC_OK; }
JITC_API int jitc_registry_add(const char* name, const void* ptr, uint64_t nbytes,
                               const char* dtype, const int64_t* shape, int ndim, int device) {
  jitc::snapshot::Entry e;
  e.name = name;
  e.ptr = ptr;
  e.nbytes = nbytes;
  e.dtype = dtype;
  e.shape.assign(shape, shape + ndim);
  e.device = device;
  return jitc::snapshot::registry_add(std::move(e), &t_err) ? JITC_OK : JITC_E_INVALID;
}
JITC_API int jitc_registry_commit(void) { jitc::snapshot::registry_commit(); return JITC_OK; }
JITC_API int jitc_set_meta(const void* data, size_t n) {
  jitc::snapshot::set_meta(data, n);
  return JITC_OK;
}
JITC_API int jitc_snapshot_write(const char* dir, int nstripes, const int* stripes,
                                 const char* const* stems, int nlist, double timeout_s,
                                 int64_t* step_out) {
  std::vector<int> list(stripes, stripes + nlist);
  std::vector<std::string> names(stems, stems + nlist);
  auto res = jitc::snapshot::write_stripes(dir, nstripes, list, names, g_step, timeout_s);
  for (auto& r : res)
    if (!r.ok) {
      t_err = r.error;
      return r.error.find("timed out") != std::string::npos ? JITC_E_TIMEOUT : JITC_E_IO;
    }
  if (step_out) *step_out = g_step;
  return JITC_OK;
}
}
