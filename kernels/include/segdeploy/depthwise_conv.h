/* segdeploy kernels: depthwise 2-D convolution (group == channels, one filter per channel) with the
 * following bias (batch norm folded) and activation fused, and the depthwise-separable block
 * (depthwise + bias + activation, then the pointwise 1x1 convolution + bias + activation) computed
 * without writing the depthwise result to memory.
 *
 * Tensors are NCHW, C-contiguous; input, weight, bias and output all have the same dtype (float32 or
 * float16), the sums are accumulated in float32. Padding is zero padding. The output size is
 *   out = floor((in + pad_begin + pad_end - dilation * (kernel - 1) - 1) / stride) + 1
 * (ONNX Conv / torch Conv2d without ceil mode); it must be >= 1. The result does not depend on the
 * thread count. */
#ifndef SEGDEPLOY_DEPTHWISE_CONV_H
#define SEGDEPLOY_DEPTHWISE_CONV_H

#include <stdint.h>

#include "segdeploy/dtype.h"
#include "segdeploy/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sd_activation_kind {
  SD_ACTIVATION_NONE = 0,
  SD_ACTIVATION_CLIP = 1,     /* min(max(x, lower), upper): ReLU = CLIP(0, +inf), ReLU6 = CLIP(0, 6) */
  SD_ACTIVATION_HARDSWISH = 2 /* x * min(max(x + 3, 0), 6) / 6 (ONNX HardSwish) */
} sd_activation_kind;

/* kind is an sd_activation_kind; lower/upper are read for SD_ACTIVATION_CLIP only (lower <= upper,
 * either may be infinite, neither NaN). */
typedef struct sd_activation {
  int32_t kind;
  float lower, upper;
} sd_activation;

typedef struct sd_depthwise_conv_io {
  const void* input; /* (batch, channels, in_height, in_width) */
  int32_t dtype;     /* sd_dtype (dtype.h): SD_DTYPE_FLOAT32 or SD_DTYPE_FLOAT16 */
  int32_t batch, channels, in_height, in_width;
  int32_t kernel_height, kernel_width;             /* 1..7 each (3x3 and 5x5 are the fast paths) */
  int32_t stride_height, stride_width;             /* >= 1 (1 and 2 are the fast paths) */
  int32_t dilation_height, dilation_width;         /* >= 1 */
  int32_t pad_top, pad_left, pad_bottom, pad_right; /* >= 0, zero padding */
  const void* weight; /* (channels, 1, kernel_height, kernel_width) */
  const void* bias;   /* (channels) or NULL */
  sd_activation activation;
  void* output;       /* (batch, channels, out_height, out_width) */
  int32_t out_height, out_width; /* must equal the formula above (validate checks) */
} sd_depthwise_conv_io;

/* The depthwise convolution immediately followed by the pointwise 1x1 convolution (stride 1, no
 * padding, group 1) + bias + activation, the depthwise result never written to full-size memory.
 * depthwise.output must be NULL; depthwise.out_height/out_width give the output's spatial size. */
typedef struct sd_separable_conv_io {
  sd_depthwise_conv_io depthwise;
  int32_t out_channels;          /* >= 1 */
  const void* pointwise_weight;  /* (out_channels, channels, 1, 1), depthwise.dtype */
  const void* pointwise_bias;    /* (out_channels) or NULL */
  sd_activation pointwise_activation;
  void* output;                  /* (batch, out_channels, out_height, out_width) */
} sd_separable_conv_io;

/* out = floor((in + pad_begin + pad_end - dilation * (kernel - 1) - 1) / stride) + 1 into *out;
 * SD_ERROR_INVALID_ARGUMENT (message names the problem) when a value is out of range or out < 1. */
SD_API int sd_conv_output_size(int32_t in, int32_t kernel, int32_t stride, int32_t dilation, int32_t pad_begin,
                               int32_t pad_end, int32_t* out);

/* Checks the shape/dtype/enum fields and the pointers of io (not the data); SD_OK or the error. */
SD_API int sd_depthwise_conv_validate(const sd_depthwise_conv_io* io);

/* Host memory, num_threads threads (0: every core the process may use). */
SD_API int sd_depthwise_conv_cpu(const sd_depthwise_conv_io* io, int num_threads);

/* Device memory, enqueued on stream (cudaStream_t, NULL = default), never waits; SD_ERROR_NOT_BUILT
 * without CUDA. */
SD_API int sd_depthwise_conv_cuda(const sd_depthwise_conv_io* io, void* stream);

/* Checks io like sd_depthwise_conv_validate (for the depthwise part, whose output must be NULL) and
 * the pointwise fields; SD_OK or the error. */
SD_API int sd_separable_conv_validate(const sd_separable_conv_io* io);

/* Host memory, num_threads threads (0: every core the process may use). No CUDA entry point. */
SD_API int sd_separable_conv_cpu(const sd_separable_conv_io* io, int num_threads);

#ifdef __cplusplus
}
#endif

#endif
