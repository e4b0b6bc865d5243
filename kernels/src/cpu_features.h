// Which of a kernel's CPU builds this CPU runs (each CPU driver is compiled once per instruction
// set: baseline and, on x86-64, x86_64_v3 with AVX2/FMA/F16C).
#ifndef SEGDEPLOY_SRC_CPU_FEATURES_H
#define SEGDEPLOY_SRC_CPU_FEATURES_H

#include <cstdlib>

namespace segdeploy {

// SEGDEPLOY_CPU_PORTABLE=1 selects the portable build (SSE here; what ARM CPUs such as Jetson's
// run), so that tests on an x86-64 machine cover it too.
inline bool cpu_has_x86_64_v3() {
#if defined(SD_CPU_X86_64_V3)
  const char* portable = std::getenv("SEGDEPLOY_CPU_PORTABLE");
  if (portable != nullptr && portable[0] != '\0' && portable[0] != '0') return false;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

}  // namespace segdeploy

#endif
