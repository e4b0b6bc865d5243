// What the CPU and CUDA drivers of the fused upsample + argmax share: validation, and the source
// coordinate, taps and weights of each output row and column, computed exactly as ONNX Runtime's
// linear Resize computes them (float arithmetic, the same operations in the same order), so that
// every driver interpolates between the same two source pixels with the same weights.
#ifndef SEGDEPLOY_HEAD_UPSAMPLE_ARGMAX_COMMON_H
#define SEGDEPLOY_HEAD_UPSAMPLE_ARGMAX_COMMON_H

#include <cstdint>

#include "segdeploy/upsample_argmax.h"

#if !defined(__CUDA_ARCH__)
#include <cmath>
#include "../src/status_internal.h"
#endif

#include "../src/host_device.h"

namespace segdeploy::head {

#if !defined(__CUDA_ARCH__)
// SD_ERROR_INVALID_ARGUMENT naming the first unusable field of io, or success (see
// sd_upsample_argmax_validate). Every driver calls it first.
Error validate(const sd_upsample_argmax_io* io);
#endif

// Largest class count a uint8 label map holds.
constexpr int32_t kMaxUint8Classes = 256;

// One output row's or column's interpolation: value = first_weight * in[first] +
// second_weight * in[second]. first <= second <= first + 1; at the clamped borders first ==
// second and both weights are 0.5, as in ONNX Runtime.
struct LinearTap {
  int32_t first, second;
  float first_weight, second_weight;
};

// IEEE float division also in device code compiled with fast-math flags.
SD_HOST_DEVICE float divide_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// The Resize's scale along one axis: the given one, or out / in when it is 0 (a Resize given
// sizes; ONNX Runtime divides in float).
SD_HOST_DEVICE float resize_scale(float given, int32_t in_length, int32_t out_length) {
  return given != 0.0f ? given : divide_rn(float(out_length), float(in_length));
}

// Source coordinate of output index `out_index` before clamping (ONNX's
// coordinate_transformation_mode). ONNX Runtime maps an axis whose scale is exactly 1 onto itself
// whatever the mode.
SD_HOST_DEVICE float source_coordinate(int32_t out_index, float scale, int32_t in_length, int32_t out_length,
                                       int32_t coordinates) {
  const float x = float(out_index);
  if (scale == 1.0f) return x;
  switch (coordinates) {
    case SD_RESIZE_PYTORCH_HALF_PIXEL:
      return out_length > 1 ? divide_rn(x + 0.5f, scale) - 0.5f : 0.0f;
    case SD_RESIZE_ALIGN_CORNERS:
      return out_length == 1 ? 0.0f : divide_rn(x * float(in_length - 1), float(out_length - 1));
    case SD_RESIZE_ASYMMETRIC:
      return divide_rn(x, scale);
    default:  // SD_RESIZE_HALF_PIXEL
      return divide_rn(x + 0.5f, scale) - 0.5f;
  }
}

// The two taps and weights of output index `out_index`: the coordinate clamped to [0, in - 1]
// (NaN to 0), then ONNX Runtime's weights |c - second| for first and |c - first| for second.
SD_HOST_DEVICE LinearTap linear_tap(int32_t out_index, float scale, int32_t in_length, int32_t out_length,
                                    int32_t coordinates) {
  float c = source_coordinate(out_index, scale, in_length, out_length, coordinates);
  const float last = float(in_length - 1);
  c = c < last ? c : last;   // std::min(c, last): NaN stays NaN
  c = 0.0f < c ? c : 0.0f;   // std::max(0, c): NaN becomes 0
  LinearTap tap;
  tap.first = int32_t(c) < in_length - 1 ? int32_t(c) : in_length - 1;
  tap.second = tap.first + 1 < in_length - 1 ? tap.first + 1 : in_length - 1;
  if (tap.first == tap.second) {
    tap.first_weight = 0.5f;
    tap.second_weight = 0.5f;
  } else {
    tap.first_weight = fabsf(c - float(tap.second));
    tap.second_weight = fabsf(c - float(tap.first));
  }
  return tap;
}

// The row and column taps of output pixel (y, x) for io (validated).
SD_HOST_DEVICE LinearTap row_tap(const sd_upsample_argmax_io& io, int32_t y) {
  return linear_tap(y, resize_scale(io.scale_height, io.in_height, io.out_height), io.in_height, io.out_height,
                    io.coordinates);
}
SD_HOST_DEVICE LinearTap column_tap(const sd_upsample_argmax_io& io, int32_t x) {
  return linear_tap(x, resize_scale(io.scale_width, io.in_width, io.out_width), io.in_width, io.out_width,
                    io.coordinates);
}

// Interpolation of two values: the rounding every driver uses (products, then one sum: a
// fused multiply-add where the compiler contracts it).
SD_HOST_DEVICE float blend(float first_weight, float first, float second_weight, float second) {
  return first_weight * first + second_weight * second;
}

}  // namespace segdeploy::head

#endif
