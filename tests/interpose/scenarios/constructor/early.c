/* A library whose constructor calls interposed functions before main() and before the
 * shim was ever used (libfaketime's test_constructors): the calls must reach the real
 * library and return its answers. */
int cudaDeviceSynchronize(void);
int cudaStreamSynchronize(void *stream);
int cuCtxSynchronize(void);
int ncclGroupStart(void);
int ncclGroupEnd(void);

int early_rc[5] = {-1, -1, -1, -1, -1};

__attribute__((constructor)) static void early(void) {
  early_rc[0] = cudaDeviceSynchronize();
  early_rc[1] = cudaStreamSynchronize(0);
  early_rc[2] = cuCtxSynchronize();
  early_rc[3] = ncclGroupStart();
  early_rc[4] = ncclGroupEnd();
}
