#include "crf_problem.h"

#include <limits>

#include "../src/status_internal.h"

namespace segdeploy::densecrf {

namespace {
Error require_theta(float theta, const char* name) {
  if (std::isfinite(theta) && theta > 0.0f) return {};
  return invalid(name, " must be a finite number > 0, got ", theta);
}
Error require_weight(float weight, const char* name) {
  if (std::isfinite(weight) && weight >= 0.0f) return {};
  return invalid(name, " must be a finite number >= 0, got ", weight);
}
}  // namespace

Error validate(const sd_crf_params* params, const sd_crf_io* io) {
  if (params == nullptr) return invalid("params must not be NULL");
  if (io == nullptr) return invalid("io must not be NULL");
  const sd_crf_params& p = *params;
  SD_RETURN_IF_ERROR(require_weight(p.spatial_weight, "spatial_weight"));
  SD_RETURN_IF_ERROR(require_weight(p.bilateral_weight, "bilateral_weight"));
  SD_RETURN_IF_ERROR(require_theta(p.spatial_theta, "spatial_theta"));
  SD_RETURN_IF_ERROR(require_theta(p.bilateral_theta_xy, "bilateral_theta_xy"));
  SD_RETURN_IF_ERROR(require_theta(p.bilateral_theta_rgb, "bilateral_theta_rgb"));
  if (p.iterations < 0) return invalid("iterations must be >= 0, got ", p.iterations);
  if (p.normalization != SD_CRF_NORMALIZE_SYMMETRIC && p.normalization != SD_CRF_NORMALIZE_AFTER)
    return invalid("normalization must be SD_CRF_NORMALIZE_SYMMETRIC (0) or SD_CRF_NORMALIZE_AFTER (1), got ",
                 p.normalization);

  if (io->unary == nullptr) return invalid("unary must not be NULL");
  if (io->image == nullptr) return invalid("image must not be NULL");
  if (io->probabilities == nullptr && io->labels == nullptr)
    return invalid("at least one output (probabilities or labels) must be given");
  if (io->unary_dtype != SD_DTYPE_FLOAT32 && io->unary_dtype != SD_DTYPE_FLOAT16)
    return invalid("unary_dtype must be SD_DTYPE_FLOAT32 (0) or SD_DTYPE_FLOAT16 (1), got ", io->unary_dtype);
  if (io->unary_kind < SD_CRF_UNARY_LOGITS || io->unary_kind > SD_CRF_UNARY_NEG_LOG_PROB)
    return invalid("unary_kind must be logits (0), probabilities (1) or neg_log_prob (2), got ", io->unary_kind);
  if (io->image_layout != SD_IMAGE_HWC && io->image_layout != SD_IMAGE_CHW)
    return invalid("image_layout must be SD_IMAGE_HWC (0) or SD_IMAGE_CHW (1), got ", io->image_layout);
  if (io->batch < 1 || io->classes < 1 || io->height < 1 || io->width < 1)
    return invalid("batch, classes, height and width must all be >= 1, got batch=", io->batch,
                 " classes=", io->classes, " height=", io->height, " width=", io->width);
  // Lattice entries are indexed with int32: pixels * (D+1) must fit.
  const int64_t max_pixels = std::numeric_limits<int32_t>::max() / (kBilateralDims + 1);
  if (pixel_count(*io) > max_pixels)
    return invalid("image of ", io->height, "x", io->width, " pixels is too large (at most ", max_pixels, " pixels)");
  return {};
}

}  // namespace segdeploy::densecrf

extern "C" void sd_crf_default_params(sd_crf_params* params) {
  if (params == nullptr) return;
  *params = sd_crf_params{3.0f, 3.0f, 4.0f, 67.0f, 3.0f, 10, SD_CRF_NORMALIZE_SYMMETRIC};
}

extern "C" int sd_crf_validate(const sd_crf_params* params, const sd_crf_io* io) {
  return segdeploy::report([&] { return segdeploy::densecrf::validate(params, io); });
}
