// sd_depthwise_conv_cuda in a library built without a CUDA compiler.
#include "../src/status_internal.h"
#include "segdeploy/depthwise_conv.h"

extern "C" int sd_depthwise_conv_cuda(const sd_depthwise_conv_io*, void*) {
  segdeploy::set_last_error("segdeploy kernels were built without CUDA (no CUDA compiler was found)");
  return SD_ERROR_NOT_BUILT;
}
