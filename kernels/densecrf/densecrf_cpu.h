// The CPU driver, compiled once per instruction set (see densecrf_cpu.cpp).
#ifndef SEGDEPLOY_DENSECRF_CPU_H
#define SEGDEPLOY_DENSECRF_CPU_H

#include "../src/status_internal.h"
#include "segdeploy/densecrf.h"

namespace segdeploy::densecrf {
namespace baseline {
// Runs validated params/io on `threads` threads.
Error run_cpu(const sd_crf_params& params, const sd_crf_io& io, int threads);
}
namespace x86_64_v3 {  // AVX2 + FMA
Error run_cpu(const sd_crf_params& params, const sd_crf_io& io, int threads);
}
}  // namespace segdeploy::densecrf

#endif
