// The native SIMD register of the CPU build being compiled (each CPU driver is compiled once per
// instruction set, cpu_features.h), through the vector types of GCC and Clang: kLanes floats
// (SSE/NEON: 4, AVX: 8) in a Floats, as many int32 in an Ints.
#ifndef SEGDEPLOY_SRC_SIMD_H
#define SEGDEPLOY_SRC_SIMD_H

#include <cstdint>

namespace segdeploy::simd {

#if defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float Floats __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t Ints __attribute__((vector_size(kLanes * sizeof(int32_t))));

}  // namespace segdeploy::simd

#endif
