// The CUDA entry points of a library built without a CUDA compiler.
#include "../src/status_internal.h"
#include "segdeploy/densecrf.h"

namespace {
int not_built() {
  segdeploy::set_last_error("segdeploy kernels were built without CUDA (no CUDA compiler was found)");
  return SD_ERROR_NOT_BUILT;
}
}  // namespace

extern "C" int sd_crf_cuda_workspace_bytes(int32_t, int32_t, int32_t, size_t*) { return not_built(); }
extern "C" int sd_crf_cuda(const sd_crf_params*, const sd_crf_io*, void*, size_t, int, void*) { return not_built(); }
