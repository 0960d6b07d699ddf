/* Stub CUDA driver (soname libcuda.so.1). Like the real driver, cuGetProcAddress hands out
 * the addresses of internal functions, not of the exported symbols, so a test can tell a
 * pointer that went through the shim's proc wrappers from one that bypassed them.
 *   STUB_CU_SYNC_ERROR  returned by the synchronising calls (default 0) */
#include <stddef.h>
#include <string.h>
#include "stub_env.h"

int stub_cuda_calls = 0;
#define COUNT() (__atomic_add_fetch(&stub_cuda_calls, 1, __ATOMIC_RELAXED))

static int impl_sync(void) { COUNT(); return stub_env("STUB_CU_SYNC_ERROR", 0); }
static int impl_stream_sync(void *s) { (void)s; return impl_sync(); }
static int impl_launch(void *f, unsigned a, unsigned b, unsigned c, unsigned d, unsigned e,
                       unsigned g, unsigned sh, void *s, void **p, void **x) {
  (void)f; (void)a; (void)b; (void)c; (void)d; (void)e; (void)g; (void)sh; (void)s; (void)p;
  (void)x;
  return impl_sync();
}

int cuCtxSynchronize(void) { return impl_sync(); }
int cuStreamSynchronize(void *s) { return impl_stream_sync(s); }
int cuLaunchKernel(void *f, unsigned a, unsigned b, unsigned c, unsigned d, unsigned e,
                   unsigned g, unsigned sh, void *s, void **p, void **x) {
  return impl_launch(f, a, b, c, d, e, g, sh, s, p, x);
}

int cuGetProcAddress_v2(const char *symbol, void **pfn, int version, unsigned long long flags,
                        int *status);

static int lookup(const char *symbol, void **pfn) {
  if (strcmp(symbol, "cuGetProcAddress") == 0) *pfn = (void *)&cuGetProcAddress_v2;
  else if (strcmp(symbol, "cuCtxSynchronize") == 0) *pfn = (void *)&impl_sync;
  else if (strcmp(symbol, "cuStreamSynchronize") == 0) *pfn = (void *)&impl_stream_sync;
  else if (strcmp(symbol, "cuLaunchKernel") == 0) *pfn = (void *)&impl_launch;
  else { *pfn = NULL; return 500; /* CUDA_ERROR_NOT_FOUND */ }
  return 0;
}

int cuGetProcAddress_v2(const char *symbol, void **pfn, int version, unsigned long long flags,
                        int *status) {
  (void)version; (void)flags;
  int r = lookup(symbol, pfn);
  if (status) *status = r == 0 ? 0 : 1;
  return r;
}
int cuGetProcAddress(const char *symbol, void **pfn, int version, unsigned long long flags) {
  (void)version; (void)flags;
  return lookup(symbol, pfn);
}
int cuGetErrorName(int e, const char **name) { *name = e ? "CUDA_ERROR_STUB" : "CUDA_SUCCESS"; return 0; }
