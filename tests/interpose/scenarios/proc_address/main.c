/* A driver function fetched by pointer through cuGetProcAddress (both spellings, and
 * cuGetProcAddress fetched through itself) must still be wrapped. */
#include "../common.h"

static const char *owner(void *p) {
  Dl_info info;
  if (p == NULL || dladdr(p, &info) == 0 || info.dli_fname == NULL) return "?";
  const char *slash = strrchr(info.dli_fname, '/');
  return slash ? slash + 1 : info.dli_fname;
}

typedef int (*sync_fn)(void);
typedef int (*gpa_fn)(const char *, void **, int, unsigned long long, int *);

int main(void) {
  shim_init();
  void *p = NULL;
  int status = -1;
  SAY("v2_rc", "%d", cuGetProcAddress_v2("cuCtxSynchronize", &p, 12000, 0, &status));
  SAY("v2_owner", "%s", owner(p));
  SAY("v2_call", "%d", ((sync_fn)p)());

  void *q = NULL;
  SAY("legacy_rc", "%d", cuGetProcAddress("cuStreamSynchronize", &q, 11030, 0));
  SAY("legacy_owner", "%s", owner(q));
  SAY("legacy_call", "%d", ((int (*)(void *))q)(NULL));

  /* Per-thread-default-stream variants are other functions: handed back untouched. */
  void *r = NULL;
  cuGetProcAddress_v2("cuCtxSynchronize", &r, 12000, 2 /* PER_THREAD_DEFAULT_STREAM */, &status);
  SAY("ptds_owner", "%s", owner(r));

  void *g = NULL;
  cuGetProcAddress_v2("cuGetProcAddress", &g, 12000, 0, &status);
  SAY("gpa_owner", "%s", owner(g));
  SAY("stub_calls", "%d", stub_counter("stub_cuda_calls"));
  shim_shutdown();
  return 0;
}
