// SD_HOST_DEVICE: a small function both the host drivers and the CUDA kernels call.
#ifndef SEGDEPLOY_SRC_HOST_DEVICE_H
#define SEGDEPLOY_SRC_HOST_DEVICE_H

#if defined(__CUDACC__)
#  define SD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#  define SD_HOST_DEVICE inline
#endif

#endif
