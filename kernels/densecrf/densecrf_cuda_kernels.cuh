// The device kernels of the CUDA dense CRF (densecrf_cuda.cu enqueues them): the unary's
// check and load, the lattice build (the steps of lattice_build.h, one kernel each), the splat,
// the blur, the normalisation and the slice + softmax. Every kernel begins with
// follow_previous_kernel and loops over a grid of at most the blocks that the GPU runs at once;
// the lattice size is known on the device only, so kernels that run over vertices read it there.
//
// Flat image regions put thousands of pixels on one lattice vertex. So that no thread is left
// with such a vertex alone, the splat works on parts of at most kPartEntries entries and sums
// the parts of the few heavy vertices in a second, deterministic pass.
#ifndef SEGDEPLOY_DENSECRF_CUDA_KERNELS_CUH
#define SEGDEPLOY_DENSECRF_CUDA_KERNELS_CUH

#include <cuda_fp16.h>

#include <climits>

#include "../src/cuda_launch.cuh"
#include "crf_problem.h"
#include "lattice_build.h"

namespace segdeploy::densecrf {
namespace {  // for densecrf_cuda.cu, the one translation unit that includes it

constexpr int32_t kPartEntries = 64;
constexpr unsigned long long kNoBadValue = ULLONG_MAX;

// 32-byte sectors that a row of `bytes` (a multiple of 4) touches on average, times 32, over the
// places where it can start: the kernels gather rows one at a time, and memory moves in sectors.
SD_HOST_DEVICE int32_t sectors_x32(int32_t bytes) {
  const int32_t alignment = bytes & -bytes;  // the rows' starts are this far apart modulo 32
  return bytes + 32 - (alignment < 32 ? alignment : 32);
}

// Class rows (of the lattice, q and log_prob) hold an even number of values, so that kernels move
// them in pairs, padded with zeros further where that touches fewer sectors per float16 row: for
// 21 classes 24 values (48 bytes, 2 sectors) rather than 22 (44 bytes, 2.25 on average).
SD_HOST_DEVICE int32_t row_width(int32_t classes) {
  int32_t best = (classes + 1) / 2 * 2;
  for (int32_t width = best + 2; width <= (best + 15) / 16 * 16; width += 2)
    if (sectors_x32(2 * width) < sectors_x32(2 * best)) best = width;
  return best;
}

// Indices fit in int32: sd_crf_cuda checks that (entries + 1) * classes does.
#define SD_GRID_STRIDE(index, count) \
  for (int32_t index = blockIdx.x * blockDim.x + threadIdx.x; index < (count); index += gridDim.x * blockDim.x)

// ---- unary ---------------------------------------------------------------------------------

__global__ void find_bad_unary_kernel(const void* unary, int32_t dtype, int32_t kind, int64_t count,
                                      unsigned long long* first_bad) {
  follow_previous_kernel();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    if (!unary_value_ok(load_unary(unary, dtype, i), kind)) atomicMin(first_bad, static_cast<unsigned long long>(i));
}

// One image's planar (classes, pixels) input to pixel-major log-probability rows of even width
// (a zero after odd class counts), a tile of pixels at a time through shared memory, so that the
// reads (a class's pixels) and the writes (the pixels' rows) are both contiguous.
constexpr int32_t kTilePixels = 32;

__global__ void load_log_prob_kernel(const void* unary, int32_t dtype, int32_t kind, int64_t base, int32_t classes,
                                     int32_t pixels, float* log_prob, unsigned long long* first_bad) {
  follow_previous_kernel();
  __shared__ float tile[kMaxCudaClasses][kTilePixels + 1];  // + 1: a pixel's classes fall in distinct banks
  const int32_t width = row_width(classes), tiles = (pixels + kTilePixels - 1) / kTilePixels;
  for (int32_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int32_t first = t * kTilePixels, count = min(kTilePixels, pixels - first);
    for (int32_t i = threadIdx.x; i < classes * kTilePixels; i += blockDim.x) {
      const int32_t c = i / kTilePixels, p = i % kTilePixels;
      if (p >= count) continue;
      const int64_t index = base + int64_t(c) * pixels + first + p;
      const float value = load_unary(unary, dtype, index);
      if (!unary_value_ok(value, kind)) atomicMin(first_bad, static_cast<unsigned long long>(index));
      tile[c][p] = log_prob_from_unary(value, kind);
    }
    __syncthreads();
    for (int32_t i = threadIdx.x; i < count * width; i += blockDim.x) {
      const int32_t p = i / width, c = i % width;
      log_prob[int64_t(first) * width + i] = c < classes ? tile[c][p] : 0.0f;
    }
    __syncthreads();  // before the next tile overwrites this one
  }
}

// ---- lattice construction (the steps of lattice_build.h, one kernel each) -------------------

template <int D>
__global__ void embed_kernel(LatticeArrays<D> L, LatticeScale<D> scale, ImageView image, sd_crf_params params) {
  follow_previous_kernel();
  SD_GRID_STRIDE(pixel, L.pixels) {
    const int x = pixel % image.width, y = pixel / image.width;
    float feature[D];
    if constexpr (D == kSpatialDims) {
      spatial_features(x, y, params, feature);
    } else {
      bilateral_features(x, y, image, params, feature);
    }
    embed_pixel<D>(L, pixel, feature, scale);
  }
}

template <int D>
__global__ void insert_kernel(LatticeArrays<D> L) {
  follow_previous_kernel();
  SD_GRID_STRIDE(entry, L.entries) insert_entry<D>(L, entry);
}

template <int D>
// Also zeroes what later steps count into: the vertex sizes and the lattice's counters.
__global__ void owner_flag_kernel(LatticeArrays<D> L, int32_t* flags, int32_t* entry_index, int32_t* counters) {
  follow_previous_kernel();
  SD_GRID_STRIDE(entry, L.entries + 1) {
    flags[entry] = entry < L.entries ? owns_key<D>(L, entry) : 0;
    if (entry < L.entries) entry_index[entry] = entry;
    L.vertex_size[entry] = 0;
  }
  if (blockIdx.x == 0 && threadIdx.x < 2 + D + 1) counters[threadIdx.x] = 0;  // heavy_count, chain_cursor
}

template <int D>
__global__ void assign_kernel(LatticeArrays<D> L) {
  follow_previous_kernel();
  SD_GRID_STRIDE(entry, L.entries) assign_vertex<D>(L, entry);
  // The scan ran over entries + 1 flags (the last one 0), so its last value is M.
  if (blockIdx.x == 0 && threadIdx.x == 0) *L.vertex_count = L.owner_rank[L.entries];
}

template <int D>
__global__ void relabel_kernel(LatticeArrays<D> L) {
  follow_previous_kernel();
  SD_GRID_STRIDE(slot, int32_t(L.table_mask) + 1) relabel_slot<D>(L, uint32_t(slot));
}

// Marks every vertex as having no lower neighbours (M) for neighbors_kernel to link. A kernel of
// its own, after the sort: the neighbours' memory is the hashing's keys and scans until then
// (densecrf_cuda_workspace.h).
template <int D>
__global__ void clear_lower_neighbors_kernel(LatticeArrays<D> L) {
  follow_previous_kernel();
  const int32_t vertices = *L.vertex_count;
  SD_GRID_STRIDE(v, vertices) {
    for (int axis = 0; axis <= D; ++axis) L.neighbors[(int64_t(axis) * L.neighbor_stride + v) * 2] = vertices;
  }
}

template <int D>
__global__ void neighbors_kernel(LatticeArrays<D> L) {
  follow_previous_kernel();
  const int32_t vertices = *L.vertex_count;
  SD_GRID_STRIDE(v, vertices) link_neighbors<D>(L, v, vertices);
}

// Along each axis the vertices fall into chains, the lines of the lattice in that direction (a
// vertex without neighbours along it is a chain of one). Listed chain after chain in `sequences`,
// each vertex flagged kLinked when the one before it in the list is its lower neighbour, a blur
// pass becomes a stencil over a list: sequence_blur_kernel.
constexpr int32_t kLinked = INT32_MIN;

template <int D>
__device__ const int2* axis_neighbors(const LatticeArrays<D>& L, int axis) {
  return reinterpret_cast<const int2*>(L.neighbors + int64_t(axis) * L.neighbor_stride * 2);
}

// Lists each chain: its first vertex walks it to count it, takes that many places in the axis's
// part of `sequences` (axis a's chains fill [a * M, (a + 1) * M), in whatever order the chains
// come: a vertex's blur depends on its neighbours only) and walks it again to write it there.
template <int D>
__global__ void sequence_kernel(LatticeArrays<D> L, int32_t* chain_cursor, int32_t* sequences) {
  follow_previous_kernel();
  const int32_t vertices = *L.vertex_count;
  SD_GRID_STRIDE(i, (D + 1) * vertices) {
    const int axis = i / vertices;
    const int32_t first = i % vertices;
    const int2* around = axis_neighbors(L, axis);
    if (around[first].x != vertices) continue;  // not a chain's first vertex
    int32_t length = 0;
    for (int32_t v = first; v != vertices; v = around[v].y) ++length;
    int32_t* out = sequences + int64_t(axis) * vertices + atomicAdd(&chain_cursor[axis], length);
    *out++ = first;
    for (int32_t v = around[first].y; v != vertices; v = around[v].y) *out++ = v | kLinked;
  }
}

// Splits every vertex's segment into parts of at most kPartEntries entries; lists the heavy ones.
template <int D>
__global__ void part_count_kernel(LatticeArrays<D> L, int32_t* part_count, int32_t* heavy_vertices,
                                  int32_t* heavy_count, int32_t* partial_base) {
  follow_previous_kernel();
  const int32_t vertices = *L.vertex_count;
  SD_GRID_STRIDE(v, L.entries + 1) {  // zero past M, for the scan
    const int32_t parts =
        v < vertices ? (L.segment_start[v + 1] - L.segment_start[v] + kPartEntries - 1) / kPartEntries : 0;
    part_count[v] = parts;
    if (parts == 1) continue;
    heavy_vertices[atomicAdd(&heavy_count[0], 1)] = v;
    partial_base[v] = atomicAdd(&heavy_count[1], parts);  // any place: the sums do not change
  }
}

template <int D>
__global__ void part_kernel(LatticeArrays<D> L, const int32_t* part_start, const int32_t* partial_base,
                            int32_t* part_begin, int32_t* part_target, int32_t* part_total) {
  follow_previous_kernel();
  const int32_t vertices = *L.vertex_count;
  SD_GRID_STRIDE(v, vertices) {
    const int32_t first = part_start[v], end = part_start[v + 1];
    for (int32_t part = first; part < end; ++part) {
      part_begin[part] = L.segment_start[v] + (part - first) * kPartEntries;
      part_target[part] = end - first == 1 ? v : ~(partial_base[v] + part - first);
    }
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *part_total = part_start[vertices];
    part_begin[part_start[vertices]] = L.segment_start[vertices];
  }
}

// ---- filtering -----------------------------------------------------------------------------

// Also fills `ones` (a value per pixel): their filtering gives the normalisation.
template <int D>
__global__ void splat_order_kernel(LatticeArrays<D> L, float* splat_weight, int32_t* splat_pixel, float* ones) {
  follow_previous_kernel();
  SD_GRID_STRIDE(k, L.entries) {
    const int32_t entry = L.segment_entry[k];
    splat_weight[k] = L.barycentric[entry];
    splat_pixel[k] = entry / (D + 1);
    if (k < L.pixels) ones[k] = 1.0f;
  }
}

struct Parts {
  const int32_t* total;
  const int32_t* begin;         // per part
  const int32_t* target;        // per part
  const int32_t* start;         // per vertex
  const int32_t* partial_base;  // per vertex
  const int32_t* heavy;
  const int32_t* heavy_count;
};

// Values stored as T in float32, for arithmetic: floats (the row sums) as they are, float16 pairs
// (class values) as float2.
template <typename T>
struct Float32Of {
  using type = float;
};
template <>
struct Float32Of<__half2> {
  using type = float2;
};
__device__ __forceinline__ float widened(float value) { return value; }
__device__ __forceinline__ float2 widened(__half2 value) { return __half22float2(value); }
__device__ __forceinline__ float stored(float sum) { return sum; }
__device__ __forceinline__ __half2 stored(float2 sum) { return __floats2half2_rn(sum.x, sum.y); }

__device__ __forceinline__ void add_weighted(float& sum, float weight, float value) { sum += weight * value; }
__device__ __forceinline__ void add_weighted(float2& sum, float weight, float2 value) {
  sum.x += weight * value.x;
  sum.y += weight * value.y;
}
__device__ __forceinline__ void add_weighted(float2& sum, float weight, __half2 value) {
  add_weighted(sum, weight, widened(value));
}

// Σ over one part's entries of splat weight × q[pixel][c]: the vertex's value when it has one
// part, else a partial sum for heavy_splat_kernel. Rows of q and of the values are `width` Ts.
template <typename T>
__global__ void part_splat_kernel(Parts parts, const float* __restrict__ splat_weight,
                                  const int32_t* __restrict__ splat_pixel, const T* __restrict__ q, int32_t width,
                                  T* __restrict__ values, typename Float32Of<T>::type* __restrict__ partial) {
  follow_previous_kernel();
  const int32_t total = *parts.total;
  SD_GRID_STRIDE(i, total * width) {
    const int32_t part = i / width, c = i % width;
    const int32_t begin = parts.begin[part], end = parts.begin[part + 1], target = parts.target[part];
    typename Float32Of<T>::type sum{};
    for (int32_t k = begin; k < end; ++k) add_weighted(sum, splat_weight[k], q[int64_t(splat_pixel[k]) * width + c]);
    if (target >= 0) values[int64_t(target) * width + c] = stored(sum);
    else partial[int64_t(~target) * width + c] = sum;
  }
}

template <typename T>
__global__ void heavy_splat_kernel(Parts parts, const typename Float32Of<T>::type* __restrict__ partial, int32_t width,
                                   T* __restrict__ values) {
  follow_previous_kernel();
  const int32_t heavy = *parts.heavy_count;
  SD_GRID_STRIDE(i, heavy * width) {
    const int32_t v = parts.heavy[i / width], c = i % width;
    const int32_t base = parts.partial_base[v], count = parts.start[v + 1] - parts.start[v];
    typename Float32Of<T>::type sum{};
    for (int32_t k = 0; k < count; ++k) add_weighted(sum, 1.0f, partial[int64_t(base + k) * width + c]);
    values[int64_t(v) * width + c] = stored(sum);
  }
}

// One blur step of a value from its neighbours'.
__device__ __forceinline__ float blend(float self, float lower, float upper) { return self + 0.5f * (lower + upper); }
__device__ __forceinline__ float2 blend(float2 self, float2 lower, float2 upper) {
  return make_float2(blend(self.x, lower.x, upper.x), blend(self.y, lower.y, upper.y));
}

// One blur pass along an axis, from `source` into `target`, over rows of `width` Ts (floats for
// the row sums, float16 pairs for the class values). Each thread takes kSequenceSegment places of
// the axis's sequence and one column: along a chain a vertex's lower neighbour is the place before
// it and its upper one the place after (zero at a chain's ends), so the thread reads each row of
// its places once, and the rows just outside when they are linked to its first or last place.
// All places, then all rows, are loaded before any is used, so that their latencies overlap.
constexpr int32_t kSequenceSegment = 8;

template <typename T>
__global__ void sequence_blur_kernel(const int32_t* __restrict__ vertex_count, const int32_t* __restrict__ sequences,
                                     int axis, const T* __restrict__ source, int32_t width, T* __restrict__ target) {
  follow_previous_kernel();
  constexpr int kPlaces = kSequenceSegment + 2;  // with the one before and the one after
  const int32_t vertices = *vertex_count;
  const int32_t* sequence = sequences + int64_t(axis) * vertices;
  const int32_t segments = (vertices + kSequenceSegment - 1) / kSequenceSegment;
  using Value = typename Float32Of<T>::type;
  const Value zero{};
  SD_GRID_STRIDE(i, segments * width) {
    const int32_t c = i % width, before = i / width * kSequenceSegment - 1;
    const int32_t count = min(kSequenceSegment, vertices - before - 1);
    int32_t code[kPlaces];  // places before .. before + kPlaces - 1; 0 (not linked) outside the list
#pragma unroll
    for (int j = 0; j < kPlaces; ++j) code[j] = before + j >= 0 && before + j < vertices ? sequence[before + j] : 0;
    Value value[kPlaces];
#pragma unroll
    for (int j = 0; j < kPlaces; ++j) {
      const bool outer_linked = (j == 0 && (code[1] & kLinked)) || (j == count + 1 && (code[j] & kLinked));
      const bool needed = (j >= 1 && j <= count) || outer_linked;
      value[j] = needed ? widened(source[int64_t(code[j] & ~kLinked) * width + c]) : zero;
    }
#pragma unroll
    for (int j = 1; j <= kSequenceSegment; ++j) {
      if (j > count) break;
      const Value lower = code[j] & kLinked ? value[j - 1] : zero;
      const Value upper = code[j + 1] & kLinked ? value[j + 1] : zero;
      target[int64_t(code[j] & ~kLinked) * width + c] = stored(blend(value[j], lower, upper));
    }
  }
}

template <int D>
__global__ void normalization_kernel(LatticeArrays<D> L, const float* __restrict__ row_sum, int32_t normalization,
                                     float* pre, float* post) {
  follow_previous_kernel();
  const float scale = slice_scale<D>();
  SD_GRID_STRIDE(pixel, L.pixels) {
    float sum = 0.0f;
    for (int r = 0; r <= D; ++r) {
      const int32_t entry = pixel * (D + 1) + r;
      sum += L.barycentric[entry] * row_sum[L.entry_vertex[entry]] * scale;
    }
    normalization_factors(sum, normalization, pre + pixel, post + pixel);
  }
}

template <int D>
__global__ void weights_kernel(LatticeArrays<D> L, const float* pre, const float* post, float potts_weight,
                               float* splat_weight, const int32_t* splat_pixel, float* slice_weight) {
  follow_previous_kernel();
  const float scale = slice_scale<D>();
  SD_GRID_STRIDE(k, L.entries) {
    splat_weight[k] *= pre[splat_pixel[k]];
    slice_weight[k] = L.barycentric[k] * scale * post[k / (D + 1)] * potts_weight;
  }
}

// ---- slice + softmax: 16 lanes per pixel, two pixels per warp ------------------------------
// Rows of q and of the lattices are float16 pairs; lane l of a pixel holds its class pairs l,
// l + 16, ... and works in float32.

constexpr int kLanesPerPixel = 16;
constexpr int kPixelsPerBlock = kThreads / kLanesPerPixel;

template <int D>
struct SliceSource {
  const int32_t* entry_vertex = nullptr;  // null: the kernel is off
  const float* slice_weight = nullptr;
  const __half2* blurred = nullptr;  // rows of row_width(classes) / 2 pairs
};

struct Outputs {
  float* probabilities = nullptr;  // this image's planes, or null
  int32_t* labels = nullptr;       // this image's labels, or null
  const unsigned long long* first_bad = nullptr;  // set on the last pass only
};

// Reductions over the 16 lanes of one pixel (the whole warp shuffles, each half on its own).
__device__ float pixel_max(float value) {
  for (int offset = kLanesPerPixel / 2; offset > 0; offset /= 2)
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

__device__ float pixel_sum(float value) {
  for (int offset = kLanesPerPixel / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

template <int kPairs, int D>
__device__ void add_message(const SliceSource<D>& source, int32_t pixel, int32_t pairs, int lane,
                            float2 (&logit)[kPairs]) {
  if (source.entry_vertex == nullptr) return;
  for (int r = 0; r <= D; ++r) {
    const int32_t entry = pixel * (D + 1) + r;
    const float w = source.slice_weight[entry];
    const __half2* row = source.blurred + int64_t(source.entry_vertex[entry]) * pairs;
#pragma unroll
    for (int k = 0; k < kPairs; ++k) {
      const int j = lane + kLanesPerPixel * k;
      if (j < pairs) add_weighted(logit[k], w, row[j]);
    }
  }
}

// log_prob and q: rows of row_width(classes), zero past the classes. Each block takes
// kPixelsPerBlock pixels at a time. The final probabilities are planar (a pixel's classes
// `pixels` apart), so they are gathered in shared memory and written a class at a time.
template <int kPairs>
__global__ void slice_softmax_kernel(const float* __restrict__ log_prob, SliceSource<kSpatialDims> spatial,
                                     SliceSource<kBilateralDims> bilateral, int32_t classes, int32_t pixels,
                                     __half* __restrict__ q, Outputs outputs) {
  follow_previous_kernel();
  __shared__ float staged[2 * kLanesPerPixel * kPairs][kPixelsPerBlock + 1];  // + 1: lanes in distinct banks
  const int lane = threadIdx.x % kLanesPerPixel, place = threadIdx.x / kLanesPerPixel;
  const int32_t pairs = row_width(classes) / 2;
  const bool final_pass = outputs.first_bad != nullptr;
  const bool bad_image = final_pass && *outputs.first_bad != kNoBadValue;
  const bool staging = final_pass && outputs.probabilities != nullptr;
  // The loop is the same for the whole block (its shuffles need every lane of a warp, its
  // barriers every thread); pixels past the end compute on zeros and store nothing.
  for (int32_t first = blockIdx.x * kPixelsPerBlock; first < pixels; first += gridDim.x * kPixelsPerBlock) {
    const int32_t pixel = first + place;
    const bool real = pixel < pixels;
    float2 logit[kPairs];
#pragma unroll
    for (int k = 0; k < kPairs; ++k) {
      const int j = lane + kLanesPerPixel * k;
      logit[k] = real && j < pairs ? reinterpret_cast<const float2*>(log_prob)[int64_t(pixel) * pairs + j]
                                   : make_float2(0.0f, 0.0f);
    }
    if (real) {
      add_message(spatial, pixel, pairs, lane, logit);
      add_message(bilateral, pixel, pairs, lane, logit);
    }
    // Classes past the last (the padding of odd counts, pairs past the row) get no probability.
#pragma unroll
    for (int k = 0; k < kPairs; ++k) {
      const int c = 2 * (lane + kLanesPerPixel * k);
      if (c >= classes) logit[k].x = -INFINITY;
      if (c + 1 >= classes) logit[k].y = -INFINITY;
    }
    float largest = -INFINITY;
#pragma unroll
    for (int k = 0; k < kPairs; ++k) largest = fmaxf(largest, fmaxf(logit[k].x, logit[k].y));
    largest = pixel_max(largest);
    float total = 0.0f;
#pragma unroll
    for (int k = 0; k < kPairs; ++k) {
      logit[k] = make_float2(expf(logit[k].x - largest), expf(logit[k].y - largest));
      total += logit[k].x + logit[k].y;
    }
    const float inverse = 1.0f / pixel_sum(total);
    float best = -1.0f;
    int best_class = 0;
#pragma unroll
    for (int k = 0; k < kPairs; ++k) {
      const int j = lane + kLanesPerPixel * k;
      if (!real || j >= pairs) continue;
      const float2 probability = make_float2(logit[k].x * inverse, logit[k].y * inverse);
      if (!final_pass)  // the next splat's input
        reinterpret_cast<__half2*>(q)[int64_t(pixel) * pairs + j] = __floats2half2_rn(probability.x, probability.y);
      for (int half = 0; half < 2; ++half) {
        const int c = 2 * j + half;
        const float value = half == 0 ? probability.x : probability.y;
        if (c >= classes) continue;
        if (staging) staged[c][place] = bad_image ? NAN : value;
        if (value > best) {
          best = value;
          best_class = c;
        }
      }
    }
    if (final_pass && outputs.labels != nullptr) {
      // Arg max over the pixel's lanes, the lowest class winning ties (as numpy's argmax).
      for (int offset = kLanesPerPixel / 2; offset > 0; offset /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, best, offset);
        const int other_class = __shfl_xor_sync(0xffffffffu, best_class, offset);
        if (other > best || (other == best && other_class < best_class)) {
          best = other;
          best_class = other_class;
        }
      }
      if (real && lane == 0) outputs.labels[pixel] = bad_image ? -1 : best_class;
    }
    if (!staging) continue;
    __syncthreads();
    for (int32_t i = threadIdx.x; i < classes * kPixelsPerBlock; i += blockDim.x) {
      const int32_t c = i / kPixelsPerBlock, p = i % kPixelsPerBlock;
      if (first + p < pixels) outputs.probabilities[int64_t(c) * pixels + first + p] = staged[c][p];
    }
    __syncthreads();  // before the next pixels overwrite these
  }
}

}  // namespace
}  // namespace segdeploy::densecrf

#endif
