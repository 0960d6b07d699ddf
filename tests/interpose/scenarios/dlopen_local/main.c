/* The CUDA runtime arrives only through a library dlopened RTLD_LOCAL (as torch's CUDA
 * libraries arrive under Python). The shim must still find the real function, and the
 * call must still be observed. argv[1]: directory of libframework.so. */
#include "../common.h"

int main(int argc, char **argv) {
  char path[4096];
  snprintf(path, sizeof path, "%s/libframework.so", argc > 1 ? argv[1] : ".");
  shim_init();
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  int (*fw)(void) = (int (*)(void))dlsym(h, "framework_sync");
  SAY("rc", "%d", fw());
  shim_shutdown();
  return 0;
}
