// What the C ABI tests (test_densecrf, test_upsample_argmax, test_upsample_argmax_cuda) share: the
// EXPECT check and its failure count, the exit of main, float16 conversions and device buffers.
// Each test is one translation unit, so everything here lives in an unnamed namespace.
#ifndef SEGDEPLOY_TESTS_TEST_SUPPORT_H
#define SEGDEPLOY_TESTS_TEST_SUPPORT_H

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "segdeploy/cuda.h"
#include "segdeploy/status.h"

namespace {

int failures = 0;  // failed EXPECTs so far

// Counts a failure and prints where, what was expected and the printf-style message; the test goes on.
#define EXPECT(condition, ...)                                                      \
  do {                                                                              \
    if (!(condition)) {                                                             \
      ++failures;                                                                   \
      std::fprintf(stderr, "%s:%d: expected %s: ", __FILE__, __LINE__, #condition); \
      std::fprintf(stderr, __VA_ARGS__);                                            \
      std::fprintf(stderr, "\n");                                                   \
    }                                                                               \
  } while (0)

// main's exit status: 0 and "all <suite> tests passed" when no EXPECT failed, else 1 and the count.
int finish(const char* suite) {
  if (failures != 0) {
    std::fprintf(stderr, "%d failure(s)\n", failures);
    return 1;
  }
  std::printf("all %s tests passed\n", suite);
  return 0;
}

// IEEE binary16 of a float, rounded to nearest even. Below the normal range (|value| < 2^-14) it
// gives a signed zero, above it infinity, NaN a quiet NaN: the tests' values are normal or zero.
uint16_t float_to_half(float value) {
  if (std::isnan(value)) return 0x7e00;
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const int32_t exponent = int32_t((bits >> 23) & 0xffu) - 127 + 15;
  const uint32_t mantissa = bits & 0x7fffffu;
  if (exponent <= 0) return uint16_t(sign);
  if (exponent >= 31) return uint16_t(sign | 0x7c00u);
  uint32_t half = sign | (uint32_t(exponent) << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // a carry goes into the exponent, as it should
  return uint16_t(half);
}

// The value of IEEE binary16 bits (exact: every float16 is a float and a double).
double half_to_double(uint16_t half) {
  const int exponent = (half >> 10) & 0x1f, mantissa = half & 0x3ff;
  const double sign = (half & 0x8000) ? -1.0 : 1.0;
  if (exponent == 31) return mantissa ? NAN : sign * INFINITY;
  if (exponent == 0) return sign * std::ldexp(double(mantissa), -24);
  return sign * std::ldexp(double(mantissa | 0x400), exponent - 25);
}

// Device memory of the library (host memory under emulation) holding a copy of `bytes` host bytes
// (or nothing), freed at scope exit. A failed allocation or copy is a failed EXPECT.
struct DeviceBuffer {
  void* pointer = nullptr;
  explicit DeviceBuffer(size_t bytes, const void* host = nullptr) {
    EXPECT(sd_cuda_malloc(bytes, &pointer) == SD_OK, "%s", sd_last_error());
    if (host != nullptr) EXPECT(sd_cuda_memcpy(pointer, host, bytes) == SD_OK, "%s", sd_last_error());
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { sd_cuda_free(pointer); }
};

}  // namespace

#endif
