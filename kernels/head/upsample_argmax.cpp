// sd_upsample_argmax_validate, and sd_upsample_argmax_cpu: validates, then runs the CPU driver
// built for the best instruction set available.
#include <cmath>
#include <cstdlib>

#include "../src/cpu_features.h"
#include "../src/status_internal.h"
#include "../src/thread_pool.h"
#include "upsample_argmax_common.h"
#include "upsample_argmax_cpu.h"

namespace segdeploy::head {
namespace {

Error require_scale(float scale, const char* name) {
  if (std::isfinite(scale) && scale >= 0.0f) return {};
  return invalid(name, " must be a finite number > 0 (or 0: out / in), got ", scale);
}

}  // namespace

Error validate(const sd_upsample_argmax_io* io) {
  if (io == nullptr) return invalid("io must not be NULL");
  if (io->scores == nullptr) return invalid("scores must not be NULL");
  if (io->labels == nullptr) return invalid("labels must not be NULL");
  if (io->scores_dtype != SD_DTYPE_FLOAT32 && io->scores_dtype != SD_DTYPE_FLOAT16)
    return invalid("scores_dtype must be SD_DTYPE_FLOAT32 (0) or SD_DTYPE_FLOAT16 (1), got ", io->scores_dtype);
  if (io->labels_dtype != SD_LABELS_UINT8 && io->labels_dtype != SD_LABELS_INT32)
    return invalid("labels_dtype must be SD_LABELS_UINT8 (0) or SD_LABELS_INT32 (1), got ", io->labels_dtype);
  if (io->coordinates < SD_RESIZE_HALF_PIXEL || io->coordinates > SD_RESIZE_ASYMMETRIC)
    return invalid("coordinates must be half_pixel (0), pytorch_half_pixel (1), align_corners (2) or "
                   "asymmetric (3), got ", io->coordinates);
  if (io->batch < 1 || io->classes < 1 || io->in_height < 1 || io->in_width < 1 || io->out_height < 1 ||
      io->out_width < 1)
    return invalid("batch, classes, in_height, in_width, out_height and out_width must all be >= 1, got batch=",
                   io->batch, " classes=", io->classes, " in_height=", io->in_height, " in_width=", io->in_width,
                   " out_height=", io->out_height, " out_width=", io->out_width);
  if (io->labels_dtype == SD_LABELS_UINT8 && io->classes > kMaxUint8Classes)
    return invalid("uint8 labels hold at most ", kMaxUint8Classes, " classes, got ", io->classes,
                   ": use SD_LABELS_INT32");
  SD_RETURN_IF_ERROR(require_scale(io->scale_height, "scale_height"));
  SD_RETURN_IF_ERROR(require_scale(io->scale_width, "scale_width"));
  return {};
}

}  // namespace segdeploy::head

extern "C" int sd_upsample_argmax_validate(const sd_upsample_argmax_io* io) {
  return segdeploy::report([&] { return segdeploy::head::validate(io); });
}

extern "C" int sd_upsample_argmax_cpu(const sd_upsample_argmax_io* io, int num_threads) {
  using namespace segdeploy::head;
  return segdeploy::report([&]() -> segdeploy::Error {
    SD_RETURN_IF_ERROR(validate(io));
    if (num_threads < 0) return segdeploy::invalid("num_threads must be >= 0 (0: all cores), got ", num_threads);
    const int threads = num_threads > 0 ? num_threads : segdeploy::available_cores();
#if defined(SD_CPU_X86_64_V3)
    if (segdeploy::cpu_has_x86_64_v3()) return x86_64_v3::run_cpu(*io, threads);
#endif
    return baseline::run_cpu(*io, threads);
  });
}
