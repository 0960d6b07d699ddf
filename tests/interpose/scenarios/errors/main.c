/* A CUDA or NCCL call fails; the shim must report it with the error's name.
 * argv[1]: sync | query | driver | nccl | async. The stub's answer comes from STUB_*. */
#include "../common.h"

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "sync";
  shim_init();
  int rc = -1, err = 0;
  if (strcmp(mode, "sync") == 0) rc = cudaStreamSynchronize(NULL);
  else if (strcmp(mode, "query") == 0) rc = cudaEventQuery(NULL);
  else if (strcmp(mode, "driver") == 0) rc = cuCtxSynchronize();
  else if (strcmp(mode, "nccl") == 0) rc = ncclAllReduce(NULL, NULL, 1, 7, 0, (void *)0x1, NULL);
  else if (strcmp(mode, "async") == 0) { rc = ncclCommGetAsyncError((void *)0x1, &err); }
  SAY("rc", "%d", rc);
  SAY("async", "%d", err);
  shim_shutdown();
  return 0;
}
