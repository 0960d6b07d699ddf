/* A collective is issued and (with STUB_NCCL_NEVER_COMPLETE=1) never completes: the
 * watchdog must report nccl-hang after JITC_HANG_TIMEOUT. argv[1]: plain | group.
 * argv[2]: seconds to stay alive while the watchdog runs. */
#include "../common.h"

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "plain";
  double stay = argc > 2 ? atof(argv[2]) : 1.5;
  shim_init();
  int rc;
  if (strcmp(mode, "group") == 0) {
    ncclGroupStart();
    rc = ncclAllReduce(NULL, NULL, 1, 7, 0, (void *)0x2, NULL);
    SAY("recorded_in_group", "%d", stub_counter("stub_events_recorded"));
    ncclGroupEnd();
  } else {
    rc = ncclAllReduce(NULL, NULL, 1, 7, 0, (void *)0x2, NULL);
  }
  SAY("rc", "%d", rc);
  SAY("recorded", "%d", stub_counter("stub_events_recorded"));
  sleep_s(stay);
  SAY("event_queries", "%d", stub_counter("stub_cudart_calls"));
  shim_shutdown();
  return 0;
}
