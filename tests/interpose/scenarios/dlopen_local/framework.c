/* Stands in for libtorch_cuda.so: linked against the CUDA runtime, loaded by the program
 * with dlopen(RTLD_LOCAL), so the runtime is not in the global lookup scope. */
int cudaStreamSynchronize(void *stream);
int framework_sync(void) { return cudaStreamSynchronize(0); }
