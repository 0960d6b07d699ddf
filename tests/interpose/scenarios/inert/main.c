/* No jitc_init, no RANK: the shim must pass every call straight through (invariant I4):
 * the stubs' answers unchanged, no thread started, nothing printed. */
#include "../common.h"

static int threads(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  int n = -1;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "Threads:", 8) == 0) n = atoi(line + 8);
  if (f) fclose(f);
  return n;
}

int main(void) {
  dim3 one = {1, 1, 1};
  int err = 0;
  SAY("sync", "%d", cudaStreamSynchronize(NULL));
  SAY("launch", "%d", cudaLaunchKernel(NULL, one, one, NULL, 0, NULL));
  SAY("query", "%d", cudaEventQuery(NULL));
  SAY("driver", "%d", cuCtxSynchronize());
  SAY("nccl", "%d", ncclAllReduce(NULL, NULL, 1, 7, 0, (void *)0x3, NULL));
  ncclCommGetAsyncError((void *)0x3, &err);
  SAY("async", "%d", err);
  SAY("recorded", "%d", stub_counter("stub_events_recorded"));
  SAY("cudart_calls", "%d", stub_counter("stub_cudart_calls"));
  SAY("threads", "%d", threads());
  return 0;
}
