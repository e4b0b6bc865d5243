#include "segdeploy/kernels.h"

extern "C" const char* sd_version(void) { return "0.1.0"; }

extern "C" int sd_built_with_cuda(void) {
#ifdef SD_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}
