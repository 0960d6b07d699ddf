#include "../common.h"

extern int early_rc[5];

int main(void) {
  SAY("early", "%d,%d,%d,%d,%d", early_rc[0], early_rc[1], early_rc[2], early_rc[3], early_rc[4]);
  SAY("cudart_calls", "%d", stub_counter("stub_cudart_calls"));
  SAY("cuda_calls", "%d", stub_counter("stub_cuda_calls"));
  SAY("nccl_calls", "%d", stub_counter("stub_nccl_calls"));
  return 0;
}
