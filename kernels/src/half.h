// IEEE float16 bits to float and back, on the host (whatever the CPU converts in hardware) and on the GPU.
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

// float to IEEE float16 bits, rounded to nearest even (what F16C's and CUDA's conversions give):
// overflow to infinity, below the normal range to a subnormal or zero, NaN to a quiet NaN.
SD_HOST_DEVICE uint16_t float_to_half(float value) {
#if defined(__CUDA_ARCH__)
  const uint32_t bits = __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
#endif
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u : 0u));
  if (magnitude >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to infinity
  if (magnitude <= 0x33000000u) return uint16_t(sign);            // <= 2^-25 rounds to zero
  uint32_t half, rest, halfway;
  if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half, in units of 2^-24
    const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - (magnitude >> 23);  // 14..24
    half = mantissa >> shift;
    rest = mantissa & ((1u << shift) - 1u);
    halfway = 1u << (shift - 1u);
  } else {  // rebias the exponent (127 -> 15), keep 10 mantissa bits
    half = (magnitude >> 13) - (112u << 10);
    rest = magnitude & 0x1fffu;
    halfway = 0x1000u;
  }
  if (rest > halfway || (rest == halfway && (half & 1u))) ++half;  // a carry into the exponent is right
  return uint16_t(sign | half);
}

}  // namespace segdeploy

#endif
