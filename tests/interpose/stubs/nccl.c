/* Stub NCCL (soname libnccl.so.2).
 *   STUB_NCCL_RESULT       returned by the collectives (default 0)
 *   STUB_NCCL_ASYNC_ERROR  reported by ncclCommGetAsyncError (default 0) */
#include <stddef.h>
#include "stub_env.h"

int stub_nccl_calls = 0;
#define COUNT() (__atomic_add_fetch(&stub_nccl_calls, 1, __ATOMIC_RELAXED))
#define RESULT() (COUNT(), stub_env("STUB_NCCL_RESULT", 0))

int ncclAllReduce(const void *s, void *r, size_t n, int t, int op, void *c, void *st) {
  (void)s; (void)r; (void)n; (void)t; (void)op; (void)c; (void)st; return RESULT();
}
int ncclBroadcast(const void *s, void *r, size_t n, int t, int root, void *c, void *st) {
  (void)s; (void)r; (void)n; (void)t; (void)root; (void)c; (void)st; return RESULT();
}
int ncclReduce(const void *s, void *r, size_t n, int t, int op, int root, void *c, void *st) {
  (void)s; (void)r; (void)n; (void)t; (void)op; (void)root; (void)c; (void)st; return RESULT();
}
int ncclAllGather(const void *s, void *r, size_t n, int t, void *c, void *st) {
  (void)s; (void)r; (void)n; (void)t; (void)c; (void)st; return RESULT();
}
int ncclReduceScatter(const void *s, void *r, size_t n, int t, int op, void *c, void *st) {
  (void)s; (void)r; (void)n; (void)t; (void)op; (void)c; (void)st; return RESULT();
}
int ncclSend(const void *s, size_t n, int t, int peer, void *c, void *st) {
  (void)s; (void)n; (void)t; (void)peer; (void)c; (void)st; return RESULT();
}
int ncclRecv(void *r, size_t n, int t, int peer, void *c, void *st) {
  (void)r; (void)n; (void)t; (void)peer; (void)c; (void)st; return RESULT();
}
int ncclGroupStart(void) { COUNT(); return 0; }
int ncclGroupEnd(void) { COUNT(); return 0; }
int ncclCommGetAsyncError(void *c, int *e) { (void)c; COUNT(); *e = stub_env("STUB_NCCL_ASYNC_ERROR", 0); return 0; }
int ncclCommAbort(void *c) { (void)c; COUNT(); return 0; }
int ncclCommDestroy(void *c) { (void)c; COUNT(); return 0; }
const char *ncclGetErrorString(int r) { return r ? "stub error" : "no error"; }
