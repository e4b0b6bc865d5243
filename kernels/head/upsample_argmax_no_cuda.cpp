// sd_upsample_argmax_cuda in a library built without a CUDA compiler.
#include "../src/status_internal.h"
#include "segdeploy/upsample_argmax.h"

extern "C" int sd_upsample_argmax_cuda(const sd_upsample_argmax_io*, void*) {
  segdeploy::set_last_error("segdeploy kernels were built without CUDA (no CUDA compiler was found)");
  return SD_ERROR_NOT_BUILT;
}
