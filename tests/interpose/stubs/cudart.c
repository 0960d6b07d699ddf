/* Stub CUDA runtime (soname libcudart.so.13) for the loader-level tests. Only what the
 * scenarios and the shim need; answers are controlled by environment variables:
 *   STUB_CUDA_SYNC_ERROR    returned by the synchronising calls and copies (default 0)
 *   STUB_CUDA_LAUNCH_ERROR  returned by cudaLaunchKernel (default 0)
 *   STUB_CUDA_QUERY_ERROR   returned by cudaStreamQuery (default 0)
 *   STUB_NCCL_NEVER_COMPLETE=1  cudaEventQuery answers cudaErrorNotReady forever
 * stub_cudart_calls counts calls that reached the stub (pass-through checks). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include "stub_env.h"

typedef struct { unsigned x, y, z; } dim3;
int stub_cudart_calls = 0;
int stub_events_recorded = 0;

#define COUNT() (__atomic_add_fetch(&stub_cudart_calls, 1, __ATOMIC_RELAXED))

int cudaDeviceSynchronize(void) { COUNT(); return stub_env("STUB_CUDA_SYNC_ERROR", 0); }
int cudaStreamSynchronize(void *s) { (void)s; COUNT(); return stub_env("STUB_CUDA_SYNC_ERROR", 0); }
int cudaEventSynchronize(void *e) { (void)e; COUNT(); return stub_env("STUB_CUDA_SYNC_ERROR", 0); }
int cudaMemcpy(void *d, const void *s, size_t n, int k) {
  (void)k; COUNT();
  int e = stub_env("STUB_CUDA_SYNC_ERROR", 0);
  if (!e) for (size_t i = 0; i < n; ++i) ((char *)d)[i] = ((const char *)s)[i];
  return e;
}
int cudaMemcpyAsync(void *d, const void *s, size_t n, int k, void *st) {
  (void)st;
  return cudaMemcpy(d, s, n, k);
}
int cudaLaunchKernel(const void *f, dim3 g, dim3 b, void **a, size_t sh, void *s) {
  (void)f; (void)g; (void)b; (void)a; (void)sh; (void)s; COUNT();
  return stub_env("STUB_CUDA_LAUNCH_ERROR", 0);
}
int cudaGetLastError(void) { COUNT(); return 0; }
int cudaPeekAtLastError(void) { COUNT(); return 0; }
int cudaStreamQuery(void *s) { (void)s; COUNT(); return stub_env("STUB_CUDA_QUERY_ERROR", 0); }
int cudaEventQuery(void *e) {
  (void)e; COUNT();
  return stub_env("STUB_NCCL_NEVER_COMPLETE", 0) ? 600 : 0;
}
int cudaEventCreateWithFlags(void **e, unsigned f) { (void)f; *e = malloc(8); return 0; }
int cudaEventDestroy(void *e) { free(e); return 0; }
int cudaEventRecord(void *e, void *s) {
  (void)e; (void)s;
  __atomic_add_fetch(&stub_events_recorded, 1, __ATOMIC_RELAXED);
  return 0;
}
int cudaGetDevice(int *d) { *d = 0; return 0; }
int cudaSetDevice(int d) { (void)d; return 0; }
int cudaStreamCreateWithFlags(void **s, unsigned f) { (void)f; *s = malloc(8); return 0; }
int cudaHostAlloc(void **p, size_t n, unsigned f) { (void)f; *p = malloc(n); return *p ? 0 : 2; }
int cudaFreeHost(void *p) { free(p); return 0; }
const char *cudaGetErrorName(int e) { return e == 0 ? "cudaSuccess" : "cudaErrorStub"; }
