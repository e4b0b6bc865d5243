/* segdeploy kernels: the few CUDA runtime services a caller without its own CUDA runtime needs
 * (Python through ctypes, a benchmark). Every function returns SD_ERROR_NOT_BUILT when the
 * library was built without CUDA, except sd_cuda_device_count which then returns 0. */
#ifndef SEGDEPLOY_CUDA_H
#define SEGDEPLOY_CUDA_H

#include <stddef.h>

#include "segdeploy/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 without CUDA, without a driver or without a device. */
SD_API int sd_cuda_device_count(void);

/* Makes `device` current for this thread: sd_crf_cuda and the allocations below run on it. */
SD_API int sd_cuda_set_device(int device);
SD_API int sd_cuda_malloc(size_t bytes, void** pointer);
SD_API int sd_cuda_free(void* pointer);
/* Copies between host and device memory (the direction is inferred); synchronous. */
SD_API int sd_cuda_memcpy(void* destination, const void* source, size_t bytes);
SD_API int sd_cuda_stream_synchronize(void* stream);

/* CUDA events for timing work on a stream: record one before and one after, then read the
 * elapsed milliseconds (this waits for the second event). */
typedef struct sd_cuda_event sd_cuda_event;
SD_API int sd_cuda_event_create(sd_cuda_event** event);
SD_API int sd_cuda_event_record(sd_cuda_event* event, void* stream);
SD_API int sd_cuda_event_elapsed_ms(sd_cuda_event* start, sd_cuda_event* end, float* milliseconds);
SD_API void sd_cuda_event_destroy(sd_cuda_event* event);

#ifdef __cplusplus
}
#endif

#endif
