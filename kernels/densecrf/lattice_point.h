// Embedding of one feature vector into the permutohedral lattice (Adams, Baek & Davis,
// "Fast High-Dimensional Filtering Using the Permutohedral Lattice", Eurographics 2010),
// shared by the CPU and CUDA implementations so that both build the identical lattice.
//
// The arithmetic follows the densecrf reference implementation (Krähenbühl & Koltun 2011,
// as packaged by pydensecrf) operation by operation, including float rounding, so that a point
// lands in the same simplex with the same barycentric weights: labels then agree to 99.9%.
#ifndef SEGDEPLOY_DENSECRF_LATTICE_POINT_H
#define SEGDEPLOY_DENSECRF_LATTICE_POINT_H

#include <cmath>
#include <cstdint>

#include "../src/host_device.h"

namespace segdeploy::densecrf {

// Products rounded to float before any later addition: a fused multiply-add rounds once and
// would move points across simplex borders. On the host an empty asm statement makes the
// product a value the compiler must materialise, so the hot loops elsewhere may still use FMAs.
SD_HOST_DEVICE float exact_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  float product = a * b;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(product));
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(product));
#else
  __asm__("" : "+m"(product));
#endif
  return product;
#endif
}
SD_HOST_DEVICE float exact_sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
SD_HOST_DEVICE float round_half_even(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  return std::nearbyint(v);
#endif
}

// Per-axis scale of the elevation matrix E (p.5 of Adams et al.), times the inverse standard
// deviation sqrt(2/3)(D+1) that makes the lattice blur approximate a unit Gaussian.
template <int D>
struct LatticeScale {
  float axis[D];
  LatticeScale() {  // on the host; kernels receive a copy
    const float inv_std_dev = static_cast<float>(std::sqrt(2.0 / 3.0) * (D + 1));
    for (int i = 0; i < D; ++i) axis[i] = static_cast<float>(1.0 / std::sqrt(double((i + 2) * (i + 1))) * inv_std_dev);
  }
};

// For feature f (already divided by the kernel's θ), writes the keys of the D+1 vertices of the
// enclosing simplex (D coordinates each; the last coordinate is implied) and their barycentric
// weights. Vertex r is the one of "remainder" r; keys[r * D + k].
template <int D>
SD_HOST_DEVICE void embed_point(const float* f, const LatticeScale<D>& scale, int32_t* keys, float* weights) {
  constexpr int kVertices = D + 1;
  const float down_factor = 1.0f / kVertices;
  const float up_factor = static_cast<float>(kVertices);

  // Elevate onto the hyperplane sum(x) = 0: elevated = E f.
  float elevated[kVertices];
  float running_sum = 0.0f;
  for (int j = D; j > 0; --j) {
    const float cf = exact_mul(f[j - 1], scale.axis[j - 1]);
    elevated[j] = exact_sub(running_sum, exact_mul(static_cast<float>(j), cf));
    running_sum += cf;
  }
  elevated[0] = running_sum;

  // Nearest remainder-0 point: each coordinate rounded to a multiple of D+1.
  float rem0[kVertices];
  float coordinate_sum = 0.0f;
  for (int i = 0; i < kVertices; ++i) {
    const float v = round_half_even(exact_mul(down_factor, elevated[i]));
    rem0[i] = exact_mul(v, up_factor);
    coordinate_sum += v;
  }

  // Rank of each coordinate's residual; it identifies the simplex around the point.
  int rank[kVertices] = {};
  for (int i = 0; i < D; ++i) {
    const float di = exact_sub(elevated[i], rem0[i]);
    for (int j = i + 1; j < kVertices; ++j) {
      if (di < exact_sub(elevated[j], rem0[j])) ++rank[i];
      else ++rank[j];
    }
  }
  // Bring a point whose rounded coordinates do not sum to zero back onto the plane.
  const int sum = static_cast<int>(coordinate_sum);
  for (int i = 0; i < kVertices; ++i) {
    rank[i] += sum;
    if (rank[i] < 0) {
      rank[i] += kVertices;
      rem0[i] += up_factor;
    } else if (rank[i] >= kVertices) {
      rank[i] -= kVertices;
      rem0[i] -= up_factor;
    }
  }

  // Barycentric coordinates (p.10 of Adams et al.).
  float barycentric[kVertices + 1] = {};
  for (int i = 0; i < kVertices; ++i) {
    const float v = exact_mul(exact_sub(elevated[i], rem0[i]), down_factor);
    barycentric[D - rank[i]] += v;
    barycentric[D - rank[i] + 1] -= v;
  }
  barycentric[0] += 1.0f + barycentric[kVertices];

  // Vertex r of the simplex: rem0 plus the canonical simplex's r-th vertex, permuted by rank.
  for (int r = 0; r < kVertices; ++r) {
    for (int k = 0; k < D; ++k) {
      const int canonical = rank[k] <= D - r ? r : r - kVertices;
      keys[r * D + k] = static_cast<int32_t>(rem0[k]) + canonical;
    }
    weights[r] = barycentric[r];
  }
}

}  // namespace segdeploy::densecrf

#endif
