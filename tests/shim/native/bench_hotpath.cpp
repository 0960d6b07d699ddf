// Cost of the hot-path calls (jitc_step_begin, jitc_mark) in an active shim-only rank.
// Linked against libjitc.so by tests/shim/test_api.py; prints "step_begin_ns mark_ns".
#include <time.h>

#include <cstdint>
#include <cstdio>

#include "jitc.h"

static double now_s() {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) / 1e9;
}

int main() {
  if (jitc_init(0, 0, 1, 0, 1) != JITC_OK) return 2;
  const int n = 1000000;
  double t0 = now_s();
  for (int i = 0; i < n; ++i) jitc_step_begin(i);
  double t1 = now_s();
  for (int i = 0; i < n; ++i) jitc_mark();
  double t2 = now_s();
  std::printf("%.1f %.1f\n", (t1 - t0) / n * 1e9, (t2 - t1) / n * 1e9);
  return jitc_shutdown(1) == JITC_OK ? 0 : 3;
}
