// Turns a CUDA runtime error into a library Failure carrying the runtime's own text.
#ifndef SEGDEPLOY_CUDA_CHECK_H
#define SEGDEPLOY_CUDA_CHECK_H

#include <cuda_runtime_api.h>

#include "status_internal.h"

namespace segdeploy {

inline void cuda_check(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return;
  cudaGetLastError();  // clear a sticky-free error so that the next call starts clean
  fail(error == cudaErrorMemoryAllocation ? SD_ERROR_OUT_OF_MEMORY : SD_ERROR_CUDA, what, ": ",
       cudaGetErrorName(error), " (", cudaGetErrorString(error), ")");
}

}  // namespace segdeploy

#endif
