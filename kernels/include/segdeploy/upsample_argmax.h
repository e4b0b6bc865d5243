/* segdeploy kernels: fused bilinear upsample + argmax (the deployment head's label map).
 *
 * label(n, y, x) = argmax over c of the bilinear interpolation of scores[n, c] at the source
 * coordinate of output pixel (y, x): exactly ONNX Resize(mode="linear", the given
 * coordinate_transformation_mode, the given sizes or scales) followed by ArgMax(axis=1,
 * keepdims=0, select_last_index=0). The source coordinate is clamped to [0, in - 1] as ONNX
 * Runtime's linear Resize does; the first maximum wins on exact ties; NaN never wins (a pixel whose
 * values are all NaN gets 0). The full-resolution scores are never written to memory, and the
 * result does not depend on the thread count.
 *
 * Tensors are C-contiguous: scores (batch, classes, in_height, in_width) float32 or float16;
 * labels (batch, out_height, out_width) uint8 or int32. */
#ifndef SEGDEPLOY_UPSAMPLE_ARGMAX_H
#define SEGDEPLOY_UPSAMPLE_ARGMAX_H

#include <stdint.h>

#include "segdeploy/dtype.h"
#include "segdeploy/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sd_resize_coordinates {
  SD_RESIZE_HALF_PIXEL = 0,         /* ONNX half_pixel = torch align_corners=False */
  SD_RESIZE_PYTORCH_HALF_PIXEL = 1, /* ONNX pytorch_half_pixel (coordinate 0 when the output length is 1) */
  SD_RESIZE_ALIGN_CORNERS = 2,      /* ONNX align_corners = torch align_corners=True */
  SD_RESIZE_ASYMMETRIC = 3          /* ONNX asymmetric */
} sd_resize_coordinates;

typedef enum sd_label_dtype { SD_LABELS_UINT8 = 0, SD_LABELS_INT32 = 1 } sd_label_dtype;

typedef struct sd_upsample_argmax_io {
  const void* scores;   /* (batch, classes, in_height, in_width), C-contiguous */
  int32_t scores_dtype; /* sd_dtype (dtype.h): SD_DTYPE_FLOAT32 or SD_DTYPE_FLOAT16 */
  int32_t batch, classes, in_height, in_width, out_height, out_width;
  int32_t coordinates;  /* sd_resize_coordinates */
  float scale_height, scale_width; /* the Resize's scales (out/in); 0: out_size / in_size */
  void* labels;         /* (batch, out_height, out_width) */
  int32_t labels_dtype; /* sd_label_dtype; uint8 needs classes <= 256 */
} sd_upsample_argmax_io;

/* Checks the shape/dtype/enum fields and the pointers of io (not the data); SD_OK or the error. */
SD_API int sd_upsample_argmax_validate(const sd_upsample_argmax_io* io);

/* Host memory, num_threads threads (0: every core the process may use). */
SD_API int sd_upsample_argmax_cpu(const sd_upsample_argmax_io* io, int num_threads);

/* Device memory, enqueued on stream (cudaStream_t, NULL = default), never waits; SD_ERROR_NOT_BUILT
 * without CUDA. */
SD_API int sd_upsample_argmax_cuda(const sd_upsample_argmax_io* io, void* stream);

#ifdef __cplusplus
}
#endif

#endif
