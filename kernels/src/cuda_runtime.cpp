// CUDA runtime services for callers without a CUDA runtime of their own (see segdeploy/cuda.h).
#include "segdeploy/cuda.h"

#include <new>

#include "status_internal.h"

#ifdef SD_WITH_CUDA
#include "cuda_check.h"

struct sd_cuda_event {
  cudaEvent_t event;
};

using segdeploy::cuda_error;
using segdeploy::Error;
using segdeploy::report;

extern "C" int sd_cuda_device_count(void) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

extern "C" int sd_cuda_set_device(int device) {
  return report([&] { return cuda_error(cudaSetDevice(device), "cudaSetDevice"); });
}

extern "C" int sd_cuda_malloc(size_t bytes, void** pointer) {
  return report([&]() -> Error {
    if (pointer == nullptr) return segdeploy::invalid("pointer must not be NULL");
    *pointer = nullptr;
    return cuda_error(cudaMalloc(pointer, bytes), "cudaMalloc");
  });
}

extern "C" int sd_cuda_free(void* pointer) {
  return report([&] { return cuda_error(cudaFree(pointer), "cudaFree"); });
}

extern "C" int sd_cuda_memcpy(void* destination, const void* source, size_t bytes) {
  return report([&] { return cuda_error(cudaMemcpy(destination, source, bytes, cudaMemcpyDefault), "cudaMemcpy"); });
}

extern "C" int sd_cuda_stream_synchronize(void* stream) {
  return report([&] {
    return cuda_error(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
  });
}

extern "C" int sd_cuda_event_create(sd_cuda_event** event) {
  return report([&]() -> Error {
    if (event == nullptr) return segdeploy::invalid("event must not be NULL");
    cudaEvent_t created;
    SD_RETURN_IF_ERROR(cuda_error(cudaEventCreate(&created), "cudaEventCreate"));
    *event = new (std::nothrow) sd_cuda_event{created};
    if (*event != nullptr) return {};
    cudaEventDestroy(created);
    return segdeploy::out_of_host_memory();
  });
}

extern "C" int sd_cuda_event_record(sd_cuda_event* event, void* stream) {
  return report([&]() -> Error {
    if (event == nullptr) return segdeploy::invalid("event must not be NULL");
    return cuda_error(cudaEventRecord(event->event, static_cast<cudaStream_t>(stream)), "cudaEventRecord");
  });
}

extern "C" int sd_cuda_event_elapsed_ms(sd_cuda_event* start, sd_cuda_event* end, float* milliseconds) {
  return report([&]() -> Error {
    if (start == nullptr || end == nullptr || milliseconds == nullptr)
      return segdeploy::invalid("start, end and milliseconds must not be NULL");
    SD_RETURN_IF_ERROR(cuda_error(cudaEventSynchronize(end->event), "cudaEventSynchronize"));
    return cuda_error(cudaEventElapsedTime(milliseconds, start->event, end->event), "cudaEventElapsedTime");
  });
}

extern "C" void sd_cuda_event_destroy(sd_cuda_event* event) {
  if (event == nullptr) return;
  cudaEventDestroy(event->event);
  delete event;
}

#else  // built without CUDA

namespace {
int not_built() {
  segdeploy::set_last_error("segdeploy kernels were built without CUDA (no CUDA compiler was found)");
  return SD_ERROR_NOT_BUILT;
}
}  // namespace

extern "C" int sd_cuda_device_count(void) { return 0; }
extern "C" int sd_cuda_set_device(int) { return not_built(); }
extern "C" int sd_cuda_malloc(size_t, void**) { return not_built(); }
extern "C" int sd_cuda_free(void*) { return not_built(); }
extern "C" int sd_cuda_memcpy(void*, const void*, size_t) { return not_built(); }
extern "C" int sd_cuda_stream_synchronize(void*) { return not_built(); }
extern "C" int sd_cuda_event_create(sd_cuda_event**) { return not_built(); }
extern "C" int sd_cuda_event_record(sd_cuda_event*, void*) { return not_built(); }
extern "C" int sd_cuda_event_elapsed_ms(sd_cuda_event*, sd_cuda_event*, float*) { return not_built(); }
extern "C" void sd_cuda_event_destroy(sd_cuda_event*) {}

#endif
