// The CPU driver of the fused upsample + argmax, compiled once per instruction set (see
// upsample_argmax_cpu.cpp); upsample_argmax.cpp picks the best one the CPU runs.
#ifndef SEGDEPLOY_HEAD_UPSAMPLE_ARGMAX_CPU_H
#define SEGDEPLOY_HEAD_UPSAMPLE_ARGMAX_CPU_H

#include "../src/status_internal.h"
#include "segdeploy/upsample_argmax.h"

namespace segdeploy::head {
namespace baseline {
// Runs a validated io on `threads` threads.
Error run_cpu(const sd_upsample_argmax_io& io, int threads);
}
namespace x86_64_v3 {  // AVX2 + FMA + F16C
Error run_cpu(const sd_upsample_argmax_io& io, int threads);
}
}  // namespace segdeploy::head

#endif
