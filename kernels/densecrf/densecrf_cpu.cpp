// CPU driver of the dense CRF: OpenMP threads over pixels and lattice vertices, SIMD over
// classes (each pixel's or vertex's class values form one row padded to a multiple of 8).
#include <algorithm>
#include <cstring>
#include <memory>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../src/status_internal.h"
#include "crf_problem.h"
#include "lattice_build.h"

namespace segdeploy::densecrf {
namespace {

constexpr int kLanes = 8;

// An uninitialised heap array that only grows (reused across the images of a batch).
template <typename T>
class Buffer {
 public:
  T* reserve(size_t count) {
    if (count > size_) {
      data_.reset(new T[count]);
      size_ = count;
    }
    return data_.get();
  }
  T* get() const { return data_.get(); }

 private:
  std::unique_ptr<T[]> data_;
  size_t size_ = 0;
};

template <typename Body>
void parallel_for(int64_t count, int threads, const Body& body) {
#pragma omp parallel for num_threads(threads) schedule(static) if (count > 2048)
  for (int64_t i = 0; i < count; ++i) body(i);
}

// exp(x) for x <= 0 within 2 ulp, exactly 0 below -87; written so that loops over it vectorise.
inline float exp_nonpositive(float x) {
  const float clamped = x < -87.0f ? -87.0f : x;
  const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  const float r = (clamped - n * 0.693359375f) + n * 2.12194440e-4f;            // x - n ln 2, split
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < -87.0f ? 0.0f : p * scale;
}

// In-place softmax of one padded row (padding holds kPaddingLogProb and comes out as 0). The
// reductions keep one partial result per SIMD lane: strict IEEE semantics forbid the compiler to
// vectorise a plain running max or sum.
inline void softmax_row(float* __restrict row, int width) {
  float lane[kLanes];
  std::copy(row, row + kLanes, lane);
  for (int c = kLanes; c < width; c += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] = std::max(lane[l], row[c + l]);
  const float largest = *std::max_element(lane, lane + kLanes);
  for (int c = 0; c < width; ++c) row[c] = exp_nonpositive(row[c] - largest);
  std::fill(lane, lane + kLanes, 0.0f);
  for (int c = 0; c < width; c += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += row[c + l];
  float total = 0.0f;
  for (int l = 0; l < kLanes; ++l) total += lane[l];
  const float inverse = 1.0f / total;
  for (int c = 0; c < width; ++c) row[c] *= inverse;
}

// One lattice with the weights that fold in the kernel's normalisation and Potts weight.
template <int D>
class CpuLattice {
 public:
  static constexpr int kVertices = D + 1;

  explicit CpuLattice(int32_t pixels) {
    L_.pixels = pixels;
    L_.entries = pixels * kVertices;
    const size_t entries = size_t(L_.entries);
    L_.keys = keys_.reserve(entries * D);
    L_.barycentric = barycentric_.reserve(entries);
    L_.table_fill = &table_fill_;
    // A small table stays in cache; lattices of images rarely have more vertices than pixels
    // (the densecrf reference makes the same guess), and build() grows it when they do.
    resize_table(table_size_for(pixels));
    L_.entry_slot = entry_slot_.reserve(entries);
    L_.owner_rank = owner_rank_.reserve(entries);
    L_.entry_vertex = entry_vertex_.reserve(entries);
    L_.vertex_keys = vertex_keys_.reserve(entries * D);
    L_.vertex_size = vertex_size_.reserve(entries);
    L_.segment_start = segment_start_.reserve(entries + 1);
    L_.segment_entry = segment_entry_.reserve(entries);
    L_.neighbors = neighbors_.reserve(entries * 2 * kVertices);
    L_.vertex_count = &vertex_count_;
    splat_weight_.reserve(entries);
    splat_pixel_.reserve(entries);
    slice_weight_.reserve(entries);
  }

  // feature_of(pixel, float* feature) writes the pixel's D features.
  template <typename FeatureOf>
  void build(const FeatureOf& feature_of, int threads) {
    const LatticeArrays<D>& L = L_;
    const LatticeScale<D> scale;
    parallel_for(L.pixels, threads, [&](int64_t pixel) {
      float feature[D];
      feature_of(pixel, feature);
      embed_pixel<D>(L, int32_t(pixel), feature, scale);
    });
    for (;;) {
      parallel_for(int64_t(L.table_mask) + 1, threads, [&](int64_t slot) { L.table[slot] = kEmptySlot; });
      table_fill_ = 0;
      parallel_for(L.entries, threads, [&](int64_t entry) { insert_entry<D>(L, int32_t(entry)); });
      if (table_fill_ < L.max_fill) break;
      resize_table(2 * (L.table_mask + 1));
    }
    int32_t vertices = 0;
    for (int32_t entry = 0; entry < L.entries; ++entry) {
      L.owner_rank[entry] = vertices;
      vertices += owns_key<D>(L, entry);
    }
    vertex_count_ = vertices;
    std::fill(L.vertex_size, L.vertex_size + vertices, 0);
    parallel_for(L.entries, threads, [&](int64_t entry) { assign_vertex<D>(L, int32_t(entry)); });
    parallel_for(int64_t(L.table_mask) + 1, threads, [&](int64_t slot) { relabel_slot<D>(L, uint32_t(slot)); });
    L.segment_start[0] = 0;
    for (int32_t v = 0; v < vertices; ++v) L.segment_start[v + 1] = L.segment_start[v] + L.vertex_size[v];
    std::fill(L.vertex_size, L.vertex_size + vertices, 0);
    parallel_for(L.entries, threads, [&](int64_t entry) { place_in_segment<D>(L, int32_t(entry)); });
    parallel_for(vertices, threads, [&](int64_t v) { sort_segment<D>(L, int32_t(v)); });
    parallel_for(int64_t(vertices) * kVertices, threads, [&](int64_t i) {
      find_neighbors<D>(L, int32_t(i / kVertices), int(i % kVertices), vertices);
    });
  }

  int32_t vertex_count() const { return vertex_count_; }

  void resize_table(uint32_t size) {
    L_.table = table_.reserve(size);
    L_.table_mask = size - 1;
    L_.max_fill = int32_t(std::min<uint32_t>(size / 2, uint32_t(L_.entries) + 1));
  }

  // Row sums of the lattice kernel, then the splat weights (barycentric × pre) in segment order
  // and the slice weights (barycentric × scale × post × Potts weight) in entry order.
  void compute_weights(float potts_weight, int32_t normalization, int threads) {
    const LatticeArrays<D>& L = L_;
    float* splat_weight = splat_weight_.get();
    int32_t* splat_pixel = splat_pixel_.get();
    parallel_for(L.entries, threads, [&](int64_t k) {
      const int32_t entry = L.segment_entry[k];
      splat_weight[k] = L.barycentric[entry];
      splat_pixel[k] = entry / kVertices;
    });
    Buffer<float> ones_buffer, pre_buffer, post_buffer;
    float* ones = ones_buffer.reserve(size_t(L.pixels));
    float* pre = pre_buffer.reserve(size_t(L.pixels));
    float* post = post_buffer.reserve(size_t(L.pixels));
    std::fill(ones, ones + L.pixels, 1.0f);
    splat(ones, 1, threads);
    const float* row_sum = blur(1, threads);
    const float scale = slice_scale<D>();
    parallel_for(L.pixels, threads, [&](int64_t pixel) {
      float sum = 0.0f;
      for (int r = 0; r < kVertices; ++r) {
        const int64_t entry = pixel * kVertices + r;
        sum += L.barycentric[entry] * row_sum[L.entry_vertex[entry]] * scale;
      }
      normalization_factors(sum, normalization, pre + pixel, post + pixel);
    });
    parallel_for(L.entries, threads, [&](int64_t k) { splat_weight[k] *= pre[splat_pixel[k]]; });
    float* slice_weight = slice_weight_.get();
    parallel_for(L.entries, threads, [&](int64_t entry) {
      slice_weight[entry] = L.barycentric[entry] * scale * post[entry / kVertices] * potts_weight;
    });
  }

  // values[v] = Σ over the vertex's entries of splat weight × q[pixel] (rows of `width` floats).
  void splat(const float* q, int width, int threads) {
    const LatticeArrays<D>& L = L_;
    const size_t rows = size_t(vertex_count_) + 1;  // + the zero row that stands for "no neighbour"
    float* values = values_.reserve(rows * width);
    scratch_.reserve(rows * width);
    std::fill(values + vertex_count_ * size_t(width), values + rows * width, 0.0f);
    std::fill(scratch_.get() + vertex_count_ * size_t(width), scratch_.get() + rows * width, 0.0f);
    const float* splat_weight = splat_weight_.get();
    const int32_t* splat_pixel = splat_pixel_.get();
    parallel_for(vertex_count_, threads, [&](int64_t v) {
      float* __restrict out = values + v * width;
      std::fill(out, out + width, 0.0f);
      for (int32_t k = L.segment_start[v]; k < L.segment_start[v + 1]; ++k) {
        const float w = splat_weight[k];
        const float* __restrict in = q + int64_t(splat_pixel[k]) * width;
        for (int c = 0; c < width; ++c) out[c] += w * in[c];
      }
    });
  }

  // The D+1 blur passes over the splatted values; returns the buffer holding the result.
  const float* blur(int width, int threads) {
    const LatticeArrays<D>& L = L_;
    float* source = values_.get();
    float* target = scratch_.get();
    for (int axis = 0; axis < kVertices; ++axis) {
      const int32_t* neighbors = L.neighbors + int64_t(axis) * L.entries * 2;
      parallel_for(vertex_count_, threads, [&](int64_t v) {
        const float* __restrict self = source + v * width;
        const float* __restrict lower = source + int64_t(neighbors[2 * v]) * width;
        const float* __restrict upper = source + int64_t(neighbors[2 * v + 1]) * width;
        float* __restrict out = target + v * width;
        for (int c = 0; c < width; ++c) out[c] = self[c] + 0.5f * (lower[c] + upper[c]);
      });
      std::swap(source, target);
    }
    return source;
  }

  // Adds Σ_r slice weight × blurred[vertex] over the pixel's entries to `row`.
  void add_message(int64_t pixel, const float* blurred, int width, float* __restrict row) const {
    for (int r = 0; r < kVertices; ++r) {
      const int64_t entry = pixel * kVertices + r;
      const float w = slice_weight_.get()[entry];
      const float* __restrict in = blurred + int64_t(L_.entry_vertex[entry]) * width;
      for (int c = 0; c < width; ++c) row[c] += w * in[c];
    }
  }

 private:
  LatticeArrays<D> L_;
  int32_t vertex_count_ = 0;
  int32_t table_fill_ = 0;
  Buffer<int32_t> keys_, table_, entry_slot_, owner_rank_, entry_vertex_, vertex_keys_, vertex_size_,
      segment_start_, segment_entry_, neighbors_, splat_pixel_;
  Buffer<float> barycentric_, splat_weight_, slice_weight_, values_, scratch_;
};

// Reads one image's unary into log-probability rows; throws on a non-finite (or negative
// probability) value, naming its position.
void load_log_prob(const sd_crf_io& io, int32_t image, float* log_prob, int width, int threads) {
  const int64_t pixels = pixel_count(io);
  const int64_t base = int64_t(image) * io.classes * pixels;
  constexpr int64_t kTile = 256;  // pixels per tile: the transposition stays in cache
  int64_t first_bad = INT64_MAX;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(min : first_bad)
  for (int64_t tile = 0; tile < (pixels + kTile - 1) / kTile; ++tile) {
    const int64_t begin = tile * kTile, end = std::min(pixels, begin + kTile);
    for (int32_t c = 0; c < io.classes; ++c) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t index = base + c * pixels + i;
        const float value = load_unary(io.unary, io.unary_dtype, index);
        if (!unary_value_ok(value, io.unary_kind)) first_bad = std::min(first_bad, index);
        log_prob[i * width + c] = log_prob_from_unary(value, io.unary_kind);
      }
    }
    for (int64_t i = begin; i < end; ++i)
      std::fill(log_prob + i * width + io.classes, log_prob + (i + 1) * width, kPaddingLogProb);
  }
  if (first_bad != INT64_MAX) {
    const int64_t in_image = first_bad - base;
    const int64_t c = in_image / pixels, y = (in_image % pixels) / io.width, x = in_image % io.width;
    const float value = load_unary(io.unary, io.unary_dtype, first_bad);
    fail_invalid("unary[", image, ", ", c, ", ", y, ", ", x, "] is ", value, "; the unary must be finite",
                 io.unary_kind == SD_CRF_UNARY_PROBABILITIES ? " and >= 0 for probabilities" : "");
  }
}

void write_outputs(const sd_crf_io& io, int32_t image, const float* q, int width, int threads) {
  const int64_t pixels = pixel_count(io);
  if (io.labels != nullptr) {
    int32_t* labels = io.labels + int64_t(image) * pixels;
    parallel_for(pixels, threads, [&](int64_t i) {
      const float* row = q + i * width;
      labels[i] = int32_t(std::max_element(row, row + io.classes) - row);
    });
  }
  if (io.probabilities != nullptr) {
    float* out = io.probabilities + int64_t(image) * io.classes * pixels;
    constexpr int64_t kTile = 256;
    parallel_for((pixels + kTile - 1) / kTile, threads, [&](int64_t tile) {
      const int64_t begin = tile * kTile, end = std::min(pixels, begin + kTile);
      for (int32_t c = 0; c < io.classes; ++c)
        for (int64_t i = begin; i < end; ++i) out[c * pixels + i] = q[i * width + c];
    });
  }
}

void run(const sd_crf_params& p, const sd_crf_io& io, int threads) {
  const int64_t pixels = pixel_count(io);
  const int width = (io.classes + kLanes - 1) / kLanes * kLanes;
  Buffer<float> log_prob_buffer, q_buffer;
  float* log_prob = log_prob_buffer.reserve(size_t(pixels) * width);
  float* q = q_buffer.reserve(size_t(pixels) * width);

  // The spatial kernel depends on the image size only: one lattice serves the whole batch.
  std::unique_ptr<CpuLattice<kSpatialDims>> spatial;
  if (spatial_active(p)) {
    spatial = std::make_unique<CpuLattice<kSpatialDims>>(int32_t(pixels));
    spatial->build([&](int64_t i, float* f) { spatial_features(int(i % io.width), int(i / io.width), p, f); },
                   threads);
    spatial->compute_weights(p.spatial_weight, p.normalization, threads);
  }
  std::unique_ptr<CpuLattice<kBilateralDims>> bilateral;
  if (bilateral_active(p)) bilateral = std::make_unique<CpuLattice<kBilateralDims>>(int32_t(pixels));

  for (int32_t image = 0; image < io.batch; ++image) {
    load_log_prob(io, image, log_prob, width, threads);
    if (bilateral) {
      const ImageView view{io.image + int64_t(image) * pixels * 3, io.image_layout, io.height, io.width};
      bilateral->build(
          [&](int64_t i, float* f) { bilateral_features(int(i % io.width), int(i / io.width), view, p, f); },
          threads);
      bilateral->compute_weights(p.bilateral_weight, p.normalization, threads);
    }
    parallel_for(pixels, threads, [&](int64_t i) {
      std::copy(log_prob + i * width, log_prob + (i + 1) * width, q + i * width);
      softmax_row(q + i * width, width);
    });
    for (int32_t iteration = 0; iteration < p.iterations; ++iteration) {
      const float* spatial_blurred = nullptr;
      const float* bilateral_blurred = nullptr;
      if (spatial) {
        spatial->splat(q, width, threads);
        spatial_blurred = spatial->blur(width, threads);
      }
      if (bilateral) {
        bilateral->splat(q, width, threads);
        bilateral_blurred = bilateral->blur(width, threads);
      }
      parallel_for(pixels, threads, [&](int64_t i) {
        float* row = q + i * width;
        std::copy(log_prob + i * width, log_prob + (i + 1) * width, row);
        if (spatial) spatial->add_message(i, spatial_blurred, width, row);
        if (bilateral) bilateral->add_message(i, bilateral_blurred, width, row);
        softmax_row(row, width);
      });
    }
    write_outputs(io, image, q, width, threads);
  }
}

int thread_count(int requested) {
  if (requested > 0) return requested;
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace
}  // namespace segdeploy::densecrf

extern "C" int sd_crf_cpu(const sd_crf_params* params, const sd_crf_io* io, int num_threads) {
  return segdeploy::guarded([&] {
    segdeploy::densecrf::validate(params, io);
    if (num_threads < 0) segdeploy::fail_invalid("num_threads must be >= 0 (0: all cores), got ", num_threads);
    segdeploy::densecrf::run(*params, *io, segdeploy::densecrf::thread_count(num_threads));
  });
}
