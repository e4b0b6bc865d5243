// What the CPU and CUDA drivers of the depthwise convolution share: validation (host only) and the
// fused activation, computed by the same float operations in every driver.
#ifndef SEGDEPLOY_CONV_DEPTHWISE_CONV_COMMON_H
#define SEGDEPLOY_CONV_DEPTHWISE_CONV_COMMON_H

#include <cstdint>

#include "segdeploy/depthwise_conv.h"

#if !defined(__CUDA_ARCH__)
#include "../src/status_internal.h"
#endif

#include "../src/host_device.h"

namespace segdeploy::conv {

constexpr int32_t kMaxKernel = 7;

#if !defined(__CUDA_ARCH__)
// SD_ERROR_INVALID_ARGUMENT naming the first unusable field of io, or success (see
// sd_depthwise_conv_validate). `separable`: io is the depthwise part of a separable block (its
// output must be NULL). Every driver calls it first.
Error validate(const sd_depthwise_conv_io* io, bool separable = false);
Error validate(const sd_separable_conv_io* io);
#endif

// HardSwish as ONNX defines it, x * clamp(x / 6 + 1 / 2, 0, 1), with 1/6 as a float product.
constexpr float kOneSixth = 1.0f / 6.0f;

// The activation of one value (activation validated): every driver's scalar path.
SD_HOST_DEVICE float activate(float x, const sd_activation& activation) {
  switch (activation.kind) {
    case SD_ACTIVATION_CLIP:
      x = x < activation.lower ? activation.lower : x;  // NaN stays NaN
      return x > activation.upper ? activation.upper : x;
    case SD_ACTIVATION_HARDSWISH: {
      float gate = x * kOneSixth + 0.5f;
      gate = gate > 0.0f ? gate : 0.0f;
      gate = gate < 1.0f ? gate : 1.0f;
      return x * gate;
    }
    default:
      return x;
  }
}

}  // namespace segdeploy::conv

#endif
