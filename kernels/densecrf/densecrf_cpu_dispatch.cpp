// sd_crf_cpu: validates, then runs the CPU driver built for the best instruction set available.
#include <cstdlib>

#include "../src/cpu_features.h"
#include "../src/status_internal.h"
#include "../src/thread_pool.h"
#include "crf_problem.h"
#include "densecrf_cpu.h"

namespace segdeploy::densecrf {
namespace {

int thread_count(int requested) { return requested > 0 ? requested : available_cores(); }

}  // namespace
}  // namespace segdeploy::densecrf

extern "C" int sd_crf_cpu(const sd_crf_params* params, const sd_crf_io* io, int num_threads) {
  using namespace segdeploy::densecrf;
  return segdeploy::report([&]() -> segdeploy::Error {
    SD_RETURN_IF_ERROR(validate(params, io));
    if (num_threads < 0) return segdeploy::invalid("num_threads must be >= 0 (0: all cores), got ", num_threads);
    const int threads = thread_count(num_threads);
#if defined(SD_CPU_X86_64_V3)
    if (segdeploy::cpu_has_x86_64_v3()) return x86_64_v3::run_cpu(*params, *io, threads);
#endif
    return baseline::run_cpu(*params, *io, threads);
  });
}
