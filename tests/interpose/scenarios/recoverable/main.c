/* A training loop that meets one failing CUDA or NCCL call and goes on, as a job that
 * handles the error itself would. argv[1]: sync | nccl (which call fails, at step 2; the
 * stub's answer comes from STUB_*); argv[2]: steps (default 8), each 100 ms.
 * Prints rc=<the failing call's result> and done=<steps> when it got through. */
#include <stdint.h>

#include "../common.h"

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "sync";
  int steps = argc > 2 ? atoi(argv[2]) : 8;
  int (*step_begin)(int64_t) = (int (*)(int64_t))shim_sym("jitc_step_begin");
  int (*steps_finished)(int64_t) = (int (*)(int64_t))shim_sym("jitc_steps_finished");
  shim_init();
  for (int i = 0; i < steps; ++i) {
    step_begin(i);
    if (i == 2) {
      int rc = strcmp(mode, "nccl") == 0 ? ncclAllReduce(NULL, NULL, 1, 7, 0, (void *)0x1, NULL)
                                         : cudaStreamSynchronize(NULL);
      SAY("rc", "%d", rc);
    }
    sleep_s(0.1);
  }
  steps_finished(steps);
  SAY("done", "%d", steps);
  shim_shutdown();
  return 0;
}
