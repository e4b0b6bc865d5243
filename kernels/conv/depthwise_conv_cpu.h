// The CPU driver of the depthwise convolution and the separable block, compiled once per
// instruction set (see depthwise_conv_cpu.cpp); depthwise_conv.cpp picks the best one the CPU runs.
#ifndef SEGDEPLOY_CONV_DEPTHWISE_CONV_CPU_H
#define SEGDEPLOY_CONV_DEPTHWISE_CONV_CPU_H

#include "../src/status_internal.h"
#include "segdeploy/depthwise_conv.h"

namespace segdeploy::conv {
namespace baseline {
// Run a validated io on `threads` threads.
Error run_depthwise(const sd_depthwise_conv_io& io, int threads);
Error run_separable(const sd_separable_conv_io& io, int threads);
}  // namespace baseline
namespace x86_64_v3 {  // AVX2 + FMA + F16C
Error run_depthwise(const sd_depthwise_conv_io& io, int threads);
Error run_separable(const sd_separable_conv_io& io, int threads);
}  // namespace x86_64_v3
namespace x86_64_v4 {  // x86_64_v3 + AVX-512 F, BW, DQ, VL
Error run_depthwise(const sd_depthwise_conv_io& io, int threads);
Error run_separable(const sd_separable_conv_io& io, int threads);
}  // namespace x86_64_v4
}  // namespace segdeploy::conv

#endif
