// The native SIMD register of the CPU build being compiled (each CPU driver is compiled once per
// instruction set, cpu_features.h), through the vector types of GCC and Clang: kLanes floats
// (SSE/NEON: 4, AVX: 8) in a Floats, as many int32 in an Ints.
#ifndef SEGDEPLOY_SRC_SIMD_H
#define SEGDEPLOY_SRC_SIMD_H

#include <cstdint>
#include <cstring>

namespace segdeploy::simd {

#if defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float Floats __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t Ints __attribute__((vector_size(kLanes * sizeof(int32_t))));

// JetPack's compilers predate two builtins: GCC 9 (JetPack 5) and GCC 11 (JetPack 6) have no
// __builtin_shufflevector (GCC 12), GCC 9 no __builtin_bit_cast (GCC 11). These spell them for every
// GCC and Clang (kernels/tests/check_old_compilers.sh); the instructions are the same.

// The bits of `from` as a To of the same size (vector types, intrinsics' __m128/__m256).
template <typename To, typename From>
inline To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

// Lanes I... of a's lanes followed by b's (indices 0 to 2 * lanes - 1), as many as a has:
// shuffle<2, 3, 0, 1>(a, a) swaps a's halves.
template <int... I, typename V>
inline V shuffle(V a, V b) {
  static_assert(sizeof(a[0]) == 4 && sizeof...(I) * 4 == sizeof(V), "one index per 32-bit lane");
#if defined(__clang__)
  return __builtin_shufflevector(a, b, I...);
#else
  typedef int32_t Indices __attribute__((vector_size(sizeof(V))));
  return __builtin_shuffle(a, b, Indices{I...});
#endif
}

}  // namespace segdeploy::simd

#endif
