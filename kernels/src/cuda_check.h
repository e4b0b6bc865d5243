// A CUDA runtime error as a library Error carrying the runtime's own text.
#ifndef SEGDEPLOY_CUDA_CHECK_H
#define SEGDEPLOY_CUDA_CHECK_H

#include <cuda_runtime_api.h>

#include "status_internal.h"

namespace segdeploy {

inline Error cuda_error(cudaError_t result, const char* what) {
  if (result == cudaSuccess) return {};
  cudaGetLastError();  // clear a non-sticky error so that the next call starts clean
  return error(result == cudaErrorMemoryAllocation ? SD_ERROR_OUT_OF_MEMORY : SD_ERROR_CUDA, what, ": ",
               cudaGetErrorName(result), " (", cudaGetErrorString(result), ")");
}

}  // namespace segdeploy

#endif
