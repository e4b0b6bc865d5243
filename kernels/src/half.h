// IEEE float16 bits to float, on the host (whatever the CPU converts in hardware) and on the GPU.
#ifndef SEGDEPLOY_SRC_HALF_H
#define SEGDEPLOY_SRC_HALF_H

#include <cstdint>
#include <cstring>

#include "host_device.h"

namespace segdeploy {

SD_HOST_DEVICE float half_to_float(uint16_t bits) {
  const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  uint32_t out;
  if (exponent == 0x1f) {
    out = sign | 0x7f800000u | (mantissa << 13);  // inf / NaN
  } else if (exponent != 0) {
    out = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    out = sign;
  } else {  // subnormal half: normalise it
    int shift = 0;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    out = sign | (uint32_t(113 - shift) << 23) | ((mantissa & 0x3ffu) << 13);
  }
#if defined(__CUDA_ARCH__)
  return __uint_as_float(out);
#else
  float value;
  std::memcpy(&value, &out, sizeof value);
  return value;
#endif
}

}  // namespace segdeploy

#endif
