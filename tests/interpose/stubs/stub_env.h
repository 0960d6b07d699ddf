/* Shared by the stub libraries: an integer from the environment, read on every call so a
 * scenario can change a stub's answer between calls with setenv(). */
#ifndef STUB_ENV_H
#define STUB_ENV_H
#include <stdlib.h>
static inline int stub_env(const char *name, int fallback) {
#ifdef STUB_NO_ENV
  /* Benchmarks: getenv's cost grows with the environment (LD_PRELOAD adds to it), which
   * would blur the difference being measured. */
  (void)name;
  return fallback;
#endif
  const char *v = getenv(name);
  return (v && *v) ? atoi(v) : fallback;
}
#endif
