/* Armed faults fire at the next interposed call. argv[1]: cuda-error | nccl-error |
 * nccl-hang; argv[2]: seconds to stay alive for the watchdog (nccl-hang). */
#include "../common.h"

int main(int argc, char **argv) {
  const char *kind = argc > 1 ? argv[1] : "cuda-error";
  double stay = argc > 2 ? atof(argv[2]) : 0;
  dim3 one = {1, 1, 1};
  shim_init();
  /* A call before arming: must pass untouched. */
  SAY("before", "%d", cudaStreamSynchronize(NULL));
  shim_arm(kind);
  int calls_before = stub_counter("stub_cudart_calls");
  if (strcmp(kind, "cuda-error") == 0) {
    SAY("launch", "%d", cudaLaunchKernel(NULL, one, one, NULL, 0, NULL));
    SAY("last_error", "%d", cudaGetLastError());
    SAY("sync", "%d", cudaDeviceSynchronize());
    SAY("reached_stub", "%d", stub_counter("stub_cudart_calls") - calls_before);
  } else if (strcmp(kind, "nccl-error") == 0) {
    int err = 0;
    SAY("allreduce", "%d", ncclAllReduce(NULL, NULL, 1, 7, 0, (void *)0x4, NULL));
    ncclCommGetAsyncError((void *)0x4, &err);
    SAY("async", "%d", err);
    SAY("second", "%d", ncclAllReduce(NULL, NULL, 1, 7, 0, (void *)0x4, NULL));
  } else {
    SAY("allreduce", "%d", ncclAllReduce(NULL, NULL, 1, 7, 0, (void *)0x4, NULL));
  }
  sleep_s(stay);
  shim_shutdown();
  return 0;
}
