/* Cost of one interposed call. argv: fn (sync | launch | allreduce), mode (direct | inert |
 * active), iterations [, burst]. Prints "ns_per_call=<float>". The loop is its own function
 * so callgrind can count instructions in it alone (--toggle-collect=bench_loop).
 *
 * burst > 0: run the iterations in bursts of that many calls with a pause between bursts
 * (not timed). A tracked collective holds a slot of the shim's ring (256) until the agent's
 * next tick (50 ms) sees it complete; back-to-back calls would fill the ring within
 * microseconds and then measure only the cheaper "ring full, not tracked" path. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { unsigned x, y, z; } dim3;
int cudaStreamSynchronize(void *stream);
int cudaLaunchKernel(const void *f, dim3 g, dim3 b, void **a, size_t sh, void *s);
int ncclAllReduce(const void *s, void *r, size_t n, int t, int op, void *comm, void *stream);

static int which;

__attribute__((noinline)) int bench_loop(long n) {
  int acc = 0;
  dim3 one = {1, 1, 1};
  for (long i = 0; i < n; ++i) {
    if (which == 0) acc += cudaStreamSynchronize(NULL);
    else if (which == 1) acc += cudaLaunchKernel(NULL, one, one, NULL, 0, NULL);
    else acc += ncclAllReduce(NULL, NULL, 1, 7, 0, (void *)0x10, NULL);
  }
  return acc;
}

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  which = strcmp(argv[1], "sync") == 0 ? 0 : strcmp(argv[1], "launch") == 0 ? 1 : 2;
  long n = atol(argv[3]);
  if (strcmp(argv[2], "active") == 0) {
    int (*init)(int, int, int, int, int) =
        (int (*)(int, int, int, int, int))dlsym(RTLD_DEFAULT, "jitc_init");
    if (init == NULL || init(0, 0, 1, 0, 1) != 0) {
      fprintf(stderr, "bench: cannot activate the shim\n");
      return 3;
    }
  }
  long burst = argc > 4 ? atol(argv[4]) : 0;
  if (burst <= 0) burst = n;
  const struct timespec pause = {0, 120 * 1000 * 1000};  /* two agent ticks */
  bench_loop(burst < n / 10 + 1 ? burst : n / 10 + 1);  /* warm-up: resolution, first-call work */
  int acc = 0;
  double ns = 0;
  for (long done = 0; done < n; done += burst) {
    long m = n - done < burst ? n - done : burst;
    if (burst < n) nanosleep(&pause, NULL);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    acc += bench_loop(m);
    clock_gettime(CLOCK_MONOTONIC, &b);
    ns += (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
  }
  printf("ns_per_call=%.3f\nacc=%d\n", ns / (double)n, acc);
  int (*fin)(int) = (int (*)(int))dlsym(RTLD_DEFAULT, "jitc_shutdown");
  if (fin != NULL && strcmp(argv[2], "active") == 0) fin(0);
  return 0;
}
