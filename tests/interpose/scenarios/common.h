/* Shared by the scenario programs: reach the preloaded shim's C API with dlsym (the
 * programs are not linked against libjitc.so, exactly like a training process), and
 * print results as key=value lines for the test to parse. */
#ifndef SCENARIO_COMMON_H
#define SCENARIO_COMMON_H
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline void *shim_sym(const char *name) {
  void *p = dlsym(RTLD_DEFAULT, name);
  if (p == NULL) {
    fprintf(stderr, "scenario: %s not found: is libjitc.so preloaded?\n", name);
    exit(90);
  }
  return p;
}

/* Activate the shim as jitc.protect() would: rank 0 of 1. */
static inline void shim_init(void) {
  int (*init)(int, int, int, int, int) = (int (*)(int, int, int, int, int))shim_sym("jitc_init");
  int rc = init(0, 0, 1, 0, 1);
  if (rc != 0) {
    fprintf(stderr, "scenario: jitc_init failed: %d\n", rc);
    exit(91);
  }
}

static inline void shim_arm(const char *kind) {
  int (*arm)(const char *) = (int (*)(const char *))shim_sym("jitc_fault_arm");
  if (arm(kind) != 0) {
    fprintf(stderr, "scenario: jitc_fault_arm(%s) failed\n", kind);
    exit(92);
  }
}

static inline void shim_shutdown(void) {
  int (*fin)(int) = (int (*)(int))shim_sym("jitc_shutdown");
  fin(1);
}

static inline void sleep_s(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
  nanosleep(&ts, NULL);
}

/* A stub's call counter (defined in the stub library). */
static inline int stub_counter(const char *name) {
  int *p = (int *)dlsym(RTLD_DEFAULT, name);
  return p ? *p : -1;
}

#define SAY(key, fmt, ...) (printf("%s=" fmt "\n", key, __VA_ARGS__), fflush(stdout))

/* Prototypes of the stub (and real) APIs, as plain C with int results. */
typedef struct { unsigned x, y, z; } dim3;
int cudaDeviceSynchronize(void);
int cudaStreamSynchronize(void *stream);
int cudaLaunchKernel(const void *f, dim3 g, dim3 b, void **a, size_t sh, void *s);
int cudaGetLastError(void);
int cudaEventQuery(void *event);
int cudaStreamQuery(void *stream);
int cuCtxSynchronize(void);
int cuGetProcAddress_v2(const char *symbol, void **pfn, int version, unsigned long long flags,
                        int *status);
int cuGetProcAddress(const char *symbol, void **pfn, int version, unsigned long long flags);
int ncclAllReduce(const void *s, void *r, size_t n, int t, int op, void *comm, void *stream);
int ncclGroupStart(void);
int ncclGroupEnd(void);
int ncclCommGetAsyncError(void *comm, int *error);
int ncclCommAbort(void *comm);
#endif
