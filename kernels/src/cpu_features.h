// Which of a kernel's CPU builds this CPU runs (each CPU driver is compiled once per instruction
// set: baseline and, on x86-64, x86_64_v3 with AVX2/FMA/F16C).
#ifndef SEGDEPLOY_SRC_CPU_FEATURES_H
#define SEGDEPLOY_SRC_CPU_FEATURES_H

#include <cstdlib>

#if defined(SD_CPU_X86_64_V3)
#include <cpuid.h>
#endif

namespace segdeploy {

// SEGDEPLOY_CPU_PORTABLE=1 selects the portable build (SSE here; what ARM CPUs such as Jetson's
// run), so that tests on an x86-64 machine cover it too.
inline bool cpu_has_x86_64_v3() {
#if defined(SD_CPU_X86_64_V3)
  const char* portable = std::getenv("SEGDEPLOY_CPU_PORTABLE");
  if (portable != nullptr && portable[0] != '\0' && portable[0] != '0') return false;
  // F16C from CPUID itself: Clang before 15 rejects __builtin_cpu_supports("f16c").
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
#else
  return false;
#endif
}

// x86-64-v4's AVX-512 (F, BW, DQ, VL) on top of x86-64-v3, from CPUID, and the OS saving the
// ZMM registers (XCR0: SSE, AVX, opmask, ZMM state); only the depthwise convolution has this build.
inline bool cpu_has_x86_64_v4() {
#if defined(SD_CPU_X86_64_V4)
  if (!cpu_has_x86_64_v3()) return false;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0 || (ecx & bit_OSXSAVE) == 0) return false;
  unsigned xcr0 = 0, xcr0_high = 0;
  __asm__("xgetbv" : "=a"(xcr0), "=d"(xcr0_high) : "c"(0));
  if ((xcr0 & 0xE6u) != 0xE6u) return false;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  const unsigned needed = bit_AVX512F | bit_AVX512BW | bit_AVX512DQ | bit_AVX512VL;
  return (ebx & needed) == needed;
#else
  return false;
#endif
}

}  // namespace segdeploy

#endif
