// What the CPU and CUDA drivers share about a CRF problem: validation, per-pixel features,
// the unary convention and the normalisation constants.
#ifndef SEGDEPLOY_DENSECRF_CRF_PROBLEM_H
#define SEGDEPLOY_DENSECRF_CRF_PROBLEM_H

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../src/half.h"
#include "../src/status_internal.h"
#include "lattice_point.h"
#include "segdeploy/densecrf.h"

namespace segdeploy::densecrf {

constexpr int kSpatialDims = 2;    // (x, y) / θγ
constexpr int kBilateralDims = 5;  // (x, y) / θα, (r, g, b) / θβ
constexpr int kMaxCudaClasses = 256;
// Log-probability of padding classes: exp() of it is exactly 0, so they never carry mass.
constexpr float kPaddingLogProb = -1e30f;

// SD_ERROR_INVALID_ARGUMENT naming the first unusable field, or success.
Error validate(const sd_crf_params* params, const sd_crf_io* io);

inline int64_t pixel_count(const sd_crf_io& io) { return int64_t(io.height) * io.width; }

// True when a kernel contributes: a zero weight (or no iteration) skips its lattice entirely.
inline bool spatial_active(const sd_crf_params& p) { return p.iterations > 0 && p.spatial_weight != 0.0f; }
inline bool bilateral_active(const sd_crf_params& p) { return p.iterations > 0 && p.bilateral_weight != 0.0f; }

SD_HOST_DEVICE float load_unary(const void* unary, int32_t dtype, int64_t index) {
  return dtype == SD_DTYPE_FLOAT16 ? half_to_float(static_cast<const uint16_t*>(unary)[index])
                                   : static_cast<const float*>(unary)[index];
}

SD_HOST_DEVICE bool unary_value_ok(float value, int32_t kind) {
#if defined(__CUDA_ARCH__)
  const bool finite = isfinite(value);
#else
  const bool finite = std::isfinite(value);
#endif
  return finite && (kind != SD_CRF_UNARY_PROBABILITIES || value >= 0.0f);
}

// -U: the log-probability (up to a per-pixel constant) that the softmax turns into Q.
SD_HOST_DEVICE float log_prob_from_unary(float value, int32_t kind) {
  switch (kind) {
    case SD_CRF_UNARY_LOGITS: return value;
    case SD_CRF_UNARY_PROBABILITIES: return logf(fmaxf(value, 1e-30f));
    default: return -value;
  }
}

// Per-pixel features as pydensecrf's DenseCRF2D computes them (integer coordinate / θ).
SD_HOST_DEVICE void spatial_features(int x, int y, const sd_crf_params& p, float* f) {
  f[0] = float(x) / p.spatial_theta;
  f[1] = float(y) / p.spatial_theta;
}

struct ImageView {
  const uint8_t* data;  // one image
  int32_t layout;
  int32_t height, width;
  SD_HOST_DEVICE uint8_t channel(int x, int y, int c) const {
    return layout == SD_IMAGE_HWC ? data[(int64_t(y) * width + x) * 3 + c]
                                  : data[(int64_t(c) * height + y) * width + x];
  }
};

SD_HOST_DEVICE void bilateral_features(int x, int y, const ImageView& image, const sd_crf_params& p, float* f) {
  f[0] = float(x) / p.bilateral_theta_xy;
  f[1] = float(y) / p.bilateral_theta_xy;
  for (int c = 0; c < 3; ++c) f[2 + c] = float(image.channel(x, y, c)) / p.bilateral_theta_rgb;
}

// The lattice's slice scale: 1 / (1 + 2^-D) (Adams et al.).
template <int D>
SD_HOST_DEVICE float slice_scale() {
  return 1.0f / (1.0f + 1.0f / float(1 << D));
}

// Factors applied before splatting (pre) and after slicing (post) from the kernel's row sum.
SD_HOST_DEVICE void normalization_factors(float row_sum, int32_t normalization, float* pre, float* post) {
  if (normalization == SD_CRF_NORMALIZE_SYMMETRIC) {
    const float n = static_cast<float>(1.0 / sqrt(double(row_sum) + 1e-20));
    *pre = n;
    *post = n;
  } else {
    *pre = 1.0f;
    *post = static_cast<float>(1.0 / (double(row_sum) + 1e-20));
  }
}

}  // namespace segdeploy::densecrf

#endif
