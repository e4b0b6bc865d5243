// CUDA driver of the dense CRF. Everything is enqueued on the caller's stream, or on a side
// stream forked from it and joined back (the spatial lattice's work, see CudaCrf); the lattice size
// is known on the device only, so kernels that run over vertices read it there, and every kernel
// loops over a grid of the blocks that the GPU runs at once. The host never waits, except once
// before the iterations when the caller asks for the unary to be checked for NaN/inf.
//
// The workspace holds every array at its worst-case size (each entry its own vertex), so one
// allocation per image size serves every call; its layout is computed by Layout below.
//
// Flat image regions put thousands of pixels on one lattice vertex. So that no thread is left
// with such a vertex alone, the splat works on parts of at most kPartEntries entries and sums
// the parts of the few heavy vertices in a second, deterministic pass.
#ifndef SD_CUDA_EMULATION  // kernels/tests/cuda_emulation.h runs this file on the host, with its own CUB
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#endif
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "../src/cuda_check.h"
#include "crf_problem.h"
#include "lattice_build.h"

namespace segdeploy::densecrf {
namespace {

constexpr int kThreads = 256;
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

// Lets the next kernel on the stream start launching, then waits until the kernel before this one
// has finished and its writes are visible. Every kernel begins with it: on devices that have
// programmatic dependent launch (sm_90+), kernels are launched with it (see launch_kernel), which
// hides the gap between consecutive kernels; elsewhere it does nothing.
__device__ __forceinline__ void follow_previous_kernel() {
#if defined(SD_CUDA_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)
  cudaTriggerProgrammaticLaunchCompletion();
  cudaGridDependencySynchronize();
#endif
}

// Device arrays of one lattice and of its filtering.
template <int D>
struct DeviceLattice {
  LatticeArrays<D> arrays;
  int32_t* owner_flag;      // [entries + 1]: scan input
  int32_t* entry_index;     // [entries]: 0, 1, 2, ... (sort input)
  int32_t* sorted_vertex;   // [entries]: sort output (unused)
  int32_t* part_count;      // [entries + 1]: parts of each vertex
  int32_t* part_start;      // [entries + 1]: first part of each vertex
  int32_t* part_begin;      // [entries + 1]: each part's first entry in segment order (then the end)
  int32_t* part_target;     // [entries]: each part's vertex when it is the vertex's only part, else ~part
  int32_t* part_total;      // [1]
  int32_t* heavy_vertices;  // [entries]: vertices with more than one part
  int32_t* heavy_count;     // [2]: heavy vertices, their parts
  int32_t* chain_cursor;    // [D + 1]: per axis, the places of `sequences` taken (right after heavy_count:
                            // the lattice's counters, zeroed together at each build)
  int32_t* partial_base;    // [entries]: a heavy vertex's first row in `partial`
  float* splat_weight;      // [entries], segment order
  int32_t* splat_pixel;     // [entries], segment order
  float* slice_weight;      // [entries], entry order
  int32_t* sequences;       // [(D+1) * M]: per axis, the vertices chain after chain (see sequence_blur_kernel)
  // Class rows of the lattice in float16: the blur is bound by memory traffic, and half-size
  // rows keep the bilateral lattice of a 512x512 image (~10 MiB per buffer) in an H100's L2.
  // The arithmetic is float32; the row sums of the normalisation stay float32 throughout.
  __half* values;           // [(entries + 1) * row_width]
  __half* scratch;          // same size: the blur ping-pongs between the two
  float* partial;           // [(heavy_parts + 1) * row_width]: partial sums of heavy vertices' parts
  float* row_values;        // [entries + 1]: the row sums' splat and blur (float32)
  float* row_scratch;       // [entries + 1]
  float* pre;               // [pixels]
  float* post;              // [pixels]
  void* temp;               // CUB's scratch for the scans and the sort (each lattice its own: the
  size_t temp_bytes;        // two lattices are built concurrently)
};

// Carves the workspace; with a null base it only measures.
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <typename T>
  T* take(int64_t count) {
    offset_ = (offset_ + kAlignment - 1) / kAlignment * kAlignment;
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += size_t(count) * sizeof(T);
    return p;
  }
  size_t size() const { return offset_ + kAlignment; }  // + slack to align the base
  static constexpr size_t kAlignment = 256;

 private:
  char* base_;
  size_t offset_ = 0;
};

// Bits of the largest vertex id, for the radix sort.
int vertex_bits(int64_t entries) {
  int bits = 1;
  while ((int64_t(1) << bits) < entries) ++bits;
  return bits;
}

// Bytes of CUB scratch for a lattice's scans (of entries + 1 items) and its sort (entries pairs).
Error cub_scratch_bytes(int64_t entries, size_t& bytes) {
  size_t scan_bytes = 0, sort_bytes = 0;
  SD_RETURN_IF_ERROR(cuda_error(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<int32_t*>(nullptr),
                                                              static_cast<int32_t*>(nullptr), int(entries + 1)),
                                "cub::DeviceScan::ExclusiveSum (size query)"));
  SD_RETURN_IF_ERROR(cuda_error(
      cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<int32_t*>(nullptr),
                                      static_cast<int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
                                      static_cast<int32_t*>(nullptr), int(entries), 0, vertex_bits(entries)),
      "cub::DeviceRadixSort::SortPairs (size query)"));
  bytes = std::max(scan_bytes, sort_bytes);
  return {};
}

// A heavy vertex has n > kPartEntries entries in ceil(n / kPartEntries) < 2n / kPartEntries parts.
int64_t max_heavy_parts(int64_t entries) { return 2 * entries / kPartEntries; }

template <int D>
Error carve_lattice(Carver& carver, int32_t pixels, int32_t classes, DeviceLattice<D>& out) {
  const int64_t entries = int64_t(pixels) * (D + 1);
  const uint32_t table_size = table_size_for(entries);
  LatticeArrays<D>& L = out.arrays;
  L.pixels = pixels;
  L.entries = int32_t(entries);
  L.table_mask = table_size - 1;
  L.keys = carver.take<int32_t>(entries * D);
  L.barycentric = carver.take<float>(entries);
  L.table = carver.take<TableSlot>(table_size);  // sized for every entry: it cannot overflow
  L.entry_slot = carver.take<int32_t>(entries);
  L.owner_rank = carver.take<int32_t>(entries + 1);
  L.entry_vertex = carver.take<int32_t>(entries);
  L.vertex_keys = carver.take<int32_t>(entries * D);
  L.vertex_size = carver.take<int32_t>(entries + 1);
  L.segment_start = carver.take<int32_t>(entries + 1);
  L.segment_entry = carver.take<int32_t>(entries);
  L.neighbor_stride = int32_t(entries);
  L.neighbors = carver.take<int32_t>(entries * 2 * (D + 1));
  L.vertex_count = carver.take<int32_t>(1);
  out.owner_flag = carver.take<int32_t>(entries + 1);
  out.entry_index = carver.take<int32_t>(entries);
  out.sorted_vertex = carver.take<int32_t>(entries);
  out.part_count = carver.take<int32_t>(entries + 1);
  out.part_start = carver.take<int32_t>(entries + 1);
  out.part_begin = carver.take<int32_t>(entries + 1);
  out.part_target = carver.take<int32_t>(entries);
  out.part_total = carver.take<int32_t>(1);
  out.heavy_vertices = carver.take<int32_t>(entries);
  out.heavy_count = carver.take<int32_t>(2 + D + 1);
  out.chain_cursor = out.heavy_count + 2;
  out.partial_base = carver.take<int32_t>(entries);
  out.splat_weight = carver.take<float>(entries);
  out.splat_pixel = carver.take<int32_t>(entries);
  out.slice_weight = carver.take<float>(entries);
  out.sequences = carver.take<int32_t>(entries * (D + 1));
  out.values = carver.take<__half>((entries + 1) * row_width(classes));
  out.scratch = carver.take<__half>((entries + 1) * row_width(classes));
  out.partial = carver.take<float>((max_heavy_parts(entries) + 1) * row_width(classes));
  out.row_values = carver.take<float>(entries + 1);
  out.row_scratch = carver.take<float>(entries + 1);
  out.pre = carver.take<float>(pixels);
  out.post = carver.take<float>(pixels);
  SD_RETURN_IF_ERROR(cub_scratch_bytes(entries, out.temp_bytes));
  out.temp = carver.take<char>(int64_t(out.temp_bytes));
  return {};
}

struct Layout {
  float* log_prob;  // [pixels][row_width(classes)]
  __half* q;        // [pixels][row_width(classes)]: the splat's input, zeros past the classes
  unsigned long long* first_bad;
  DeviceLattice<kSpatialDims> spatial;
  DeviceLattice<kBilateralDims> bilateral;
  size_t bytes = 0;

  Error carve(void* workspace, int32_t classes, int32_t height, int32_t width) {
    char* base = static_cast<char*>(workspace);
    if (base != nullptr) {
      const uintptr_t misalignment = reinterpret_cast<uintptr_t>(base) % Carver::kAlignment;
      if (misalignment != 0) base += Carver::kAlignment - misalignment;
    }
    Carver carver(base);
    const int32_t pixels = height * width;
    log_prob = carver.take<float>(int64_t(pixels) * row_width(classes));
    q = carver.take<__half>(int64_t(pixels) * row_width(classes));
    first_bad = carver.take<unsigned long long>(1);
    SD_RETURN_IF_ERROR(carve_lattice(carver, pixels, classes, spatial));
    SD_RETURN_IF_ERROR(carve_lattice(carver, pixels, classes, bilateral));
    bytes = carver.size();
    return {};
  }
};

// Checks sizes that the int32 indexing of the kernels can take.
Error check_size(int32_t classes, int32_t height, int32_t width) {
  if (classes < 1 || height < 1 || width < 1)
    return invalid("classes, height and width must all be >= 1, got classes=", classes, " height=", height,
                   " width=", width);
  const int64_t rows = int64_t(height) * width * (kBilateralDims + 1) + 1;
  if (rows * std::max(row_width(classes), kBilateralDims + 1) > INT32_MAX)
    return invalid("an image of ", height, "x", width, " pixels with ", classes,
                   " classes is too large for the CUDA dense CRF (at most ", INT32_MAX,
                   " = pixels x 6 x max(classes, 6)); run it on the CPU or in tiles");
  return {};
}

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
// Also marks each new vertex as having no lower neighbours (M) for neighbors_kernel to link.
__global__ void assign_kernel(LatticeArrays<D> L) {
  follow_previous_kernel();
  // The scan ran over entries + 1 flags (the last one 0), so its last value is M.
  const int32_t vertices = L.owner_rank[L.entries];
  SD_GRID_STRIDE(entry, L.entries) {
    assign_vertex<D>(L, entry);
    const int32_t vertex = L.owner_rank[entry];
    if (L.owner_rank[entry + 1] == vertex) continue;  // the entry does not own its key
    for (int axis = 0; axis <= D; ++axis) L.neighbors[(int64_t(axis) * L.neighbor_stride + vertex) * 2] = vertices;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) *L.vertex_count = vertices;
}

template <int D>
__global__ void relabel_kernel(LatticeArrays<D> L) {
  follow_previous_kernel();
  SD_GRID_STRIDE(slot, int32_t(L.table_mask) + 1) relabel_slot<D>(L, uint32_t(slot));
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

// ---- host orchestration ----------------------------------------------------------------------

// SD_CRF_PROFILE=1 prints the GPU time of each phase to stderr (for tuning), summed over the
// images and iterations of the call: an event is recorded on the stream after each phase, and
// the call waits for the last one before it returns. Off, it records nothing.
bool profiling() { return std::getenv("SD_CRF_PROFILE") != nullptr; }

class PhaseProfile {
 public:
  explicit PhaseProfile(cudaStream_t stream) : on_(profiling()), stream_(stream) {}
  PhaseProfile(const PhaseProfile&) = delete;
  PhaseProfile& operator=(const PhaseProfile&) = delete;
  ~PhaseProfile() {
    for (const Mark& mark : marks_) cudaEventDestroy(mark.event);
  }

  // Records the end of phase `subject` + `step` (the first mark, "start", opens the call); the
  // name is only composed when profiling.
  Error mark(const char* subject, const char* step = "") {
    if (!on_) return {};
    cudaEvent_t event;
    SD_RETURN_IF_ERROR(cuda_error(cudaEventCreate(&event), "cudaEventCreate"));
    marks_.push_back({std::string(subject) + step, event});
    return cuda_error(cudaEventRecord(event, stream_), "cudaEventRecord");
  }

  Error print() const {
    if (!on_ || marks_.empty()) return {};
    SD_RETURN_IF_ERROR(cuda_error(cudaEventSynchronize(marks_.back().event), "cudaEventSynchronize"));
    std::vector<std::pair<std::string, float>> totals;  // in order of first appearance
    for (size_t i = 1; i < marks_.size(); ++i) {
      float milliseconds = 0.0f;
      SD_RETURN_IF_ERROR(cuda_error(cudaEventElapsedTime(&milliseconds, marks_[i - 1].event, marks_[i].event),
                                    "cudaEventElapsedTime"));
      auto total = std::find_if(totals.begin(), totals.end(), [&](const auto& t) { return t.first == marks_[i].phase; });
      if (total == totals.end()) totals.emplace_back(marks_[i].phase, milliseconds);
      else total->second += milliseconds;
    }
    float sum = 0.0f;
    for (const auto& [phase, milliseconds] : totals) {
      std::fprintf(stderr, "  %-38s %8.3f ms\n", phase.c_str(), milliseconds);
      sum += milliseconds;
    }
    std::fprintf(stderr, "  %-38s %8.3f ms\n", "total (CUDA)", sum);
    return {};
  }

 private:
  struct Mark {
    std::string phase;
    cudaEvent_t event;
  };
  bool on_;
  cudaStream_t stream_;
  std::vector<Mark> marks_;
};

template <int D>
const char* lattice_name() {
  return D == kSpatialDims ? "spatial" : "bilateral";
}

// What the driver needs to know of the device it runs on.
struct DeviceTraits {
  int resident_blocks = 1;           // blocks of kThreads that it runs at once (when registers allow)
  bool programmatic_launch = false;  // kernels may launch while the one before them finishes (sm_90+)
};

Error query_device_traits(int device, DeviceTraits* traits) {
  const auto get = [device](cudaDeviceAttr attribute, int* value) {
    return cuda_error(cudaDeviceGetAttribute(value, attribute, device), "cudaDeviceGetAttribute");
  };
  int processors = 0, threads_per_processor = 0, major = 0;
  SD_RETURN_IF_ERROR(get(cudaDevAttrMultiProcessorCount, &processors));
  SD_RETURN_IF_ERROR(get(cudaDevAttrMaxThreadsPerMultiProcessor, &threads_per_processor));
  SD_RETURN_IF_ERROR(get(cudaDevAttrComputeCapabilityMajor, &major));
  // Only kernels compiled for sm_90 or later wait in follow_previous_kernel: code that the driver
  // compiles from older PTX for a newer device must be launched in plain stream order.
  cudaFuncAttributes kernel{};
  SD_RETURN_IF_ERROR(cuda_error(cudaFuncGetAttributes(&kernel, reinterpret_cast<const void*>(find_bad_unary_kernel)),
                                "cudaFuncGetAttributes"));
  traits->resident_blocks = std::max(1, processors * (threads_per_processor / kThreads));
  traits->programmatic_launch = major >= 9 && kernel.ptxVersion >= 90;
  return {};
}

// The traits of `device`, queried at its first call only: they do not change.
Error device_traits(int device, DeviceTraits* traits) {
  static std::mutex mutex;
  static std::map<int, DeviceTraits> known;
  std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(device);
  if (found != known.end()) {
    *traits = found->second;
    return {};
  }
  SD_RETURN_IF_ERROR(query_device_traits(device, traits));
  known.emplace(device, *traits);
  return {};
}

// kernel<<<blocks, kThreads, 0, stream>>>(arguments...), programmatic when asked: the kernel may
// then start while the kernel before it on the stream finishes (its follow_previous_kernel waits).
template <typename... Parameters, typename... Arguments>
cudaError_t launch_kernel(bool programmatic, void (*kernel)(Parameters...), int blocks, cudaStream_t stream,
                          const Arguments&... arguments) {
#if defined(SD_CUDA_EMULATION)
  segdeploy::emulation::launch(stream, blocks, kThreads, programmatic, kernel, arguments...);
  return cudaSuccess;
#elif CUDART_VERSION >= 12000
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(unsigned(blocks));
  config.blockDim = dim3(unsigned(kThreads));
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = programmatic ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, arguments...);
#else  // CUDA 11 (JetPack 5): no programmatic launch
  (void)programmatic;
  kernel<<<blocks, kThreads, 0, stream>>>(arguments...);
  return cudaGetLastError();
#endif
}

#define SD_LAUNCH(kernel, grid, stream, ...)                                                            \
  SD_RETURN_IF_ERROR(cuda_error(launch_kernel(traits_.programmatic_launch, kernel, grid, stream, __VA_ARGS__), \
                                #kernel))

// A second stream and two events, one set per host thread and device (a stream serves one graph
// capture at a time), created outside any capture and released when the thread ends.
struct SideStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t fork = nullptr;  // the caller's stream hands over to the side stream
  cudaEvent_t join = nullptr;  // and back

  SideStream() = default;
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
  ~SideStream() {  // errors ignored: at process exit CUDA may be unloading
    if (fork != nullptr) cudaEventDestroy(fork);
    if (join != nullptr) cudaEventDestroy(join);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

Error side_stream(int device, const SideStream** out) {
  thread_local std::map<int, SideStream> per_device;
  SideStream& side = per_device[device];
  if (side.fork == nullptr)
    SD_RETURN_IF_ERROR(cuda_error(cudaEventCreateWithFlags(&side.fork, cudaEventDisableTiming), "cudaEventCreate"));
  if (side.join == nullptr)
    SD_RETURN_IF_ERROR(cuda_error(cudaEventCreateWithFlags(&side.join, cudaEventDisableTiming), "cudaEventCreate"));
  if (side.stream == nullptr)
    SD_RETURN_IF_ERROR(
        cuda_error(cudaStreamCreateWithFlags(&side.stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags"));
  *out = &side;
  return {};
}

// The spatial lattice's work (its build, then its filter in each iteration) needs nothing of the
// bilateral lattice's, so with a side stream it runs there, beside the bilateral work on the
// caller's stream: each iteration forks after the softmax that makes q and joins before the
// slice that reads both filters (in a captured graph, two parallel branches). Without one,
// everything runs on the caller's stream in the same order.
class CudaCrf {
 public:
  CudaCrf(const sd_crf_params& params, const sd_crf_io& io, Layout& layout, const DeviceTraits& traits,
          cudaStream_t stream, const SideStream* side = nullptr)
      : p_(params),
        io_(io),
        w_(layout),
        traits_(traits),
        stream_(stream),
        side_(side),
        pixels_(int32_t(pixel_count(io))) {}

  Error check_unary_on_host() {
    SD_RETURN_IF_ERROR(memset(w_.first_bad, 0xff, sizeof(unsigned long long), stream_));
    const int64_t count = int64_t(io_.batch) * io_.classes * pixels_;
    SD_LAUNCH(find_bad_unary_kernel, blocks_for(count), stream_, io_.unary, io_.unary_dtype, io_.unary_kind, count,
              w_.first_bad);
    unsigned long long first_bad = kNoBadValue;
    SD_RETURN_IF_ERROR(cuda_error(
        cudaMemcpyAsync(&first_bad, w_.first_bad, sizeof first_bad, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync"));
    SD_RETURN_IF_ERROR(cuda_error(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"));
    if (first_bad == kNoBadValue) return {};
    const int64_t image_size = int64_t(io_.classes) * pixels_;
    const int64_t image = int64_t(first_bad) / image_size, in_image = int64_t(first_bad) % image_size;
    const bool probabilities = io_.unary_kind == SD_CRF_UNARY_PROBABILITIES;
    return invalid("unary[", image, ", ", in_image / pixels_, ", ", (in_image % pixels_) / io_.width, ", ",
                   in_image % io_.width, "] is NaN or infinite", probabilities ? " or negative" : "",
                   "; the unary must be finite", probabilities ? " and >= 0 for probabilities" : "");
  }

  Error run() {
    SD_RETURN_IF_ERROR(profile_.mark("start"));
    SD_RETURN_IF_ERROR(run_images());
    return profile_.print();
  }

 private:
  Error run_images() {
    const bool spatial = spatial_active(p_), bilateral = bilateral_active(p_);
    const bool forked = spatial && bilateral && side_ != nullptr;
    const cudaStream_t side = forked ? side_->stream : stream_;
    if (spatial) {
      SD_RETURN_IF_ERROR(hand_over(forked, stream_, side));  // after the caller's earlier work
      SD_RETURN_IF_ERROR(prepare_lattice(w_.spatial, ImageView{nullptr, io_.image_layout, io_.height, io_.width},
                                         p_.spatial_weight, side));
    }
    for (int32_t image = 0; image < io_.batch; ++image) {
      const int64_t image_values = int64_t(io_.classes) * pixels_;
      SD_RETURN_IF_ERROR(memset(w_.first_bad, 0xff, sizeof(unsigned long long), stream_));
      SD_LAUNCH(load_log_prob_kernel, blocks_for((int64_t(pixels_) + kTilePixels - 1) / kTilePixels * kThreads), stream_, io_.unary, io_.unary_dtype, io_.unary_kind,
                image * image_values, io_.classes, pixels_, w_.log_prob, w_.first_bad);
      SD_RETURN_IF_ERROR(profile_.mark("unary load"));
      if (bilateral) {
        const ImageView view{io_.image + int64_t(image) * pixels_ * 3, io_.image_layout, io_.height, io_.width};
        SD_RETURN_IF_ERROR(prepare_lattice(w_.bilateral, view, p_.bilateral_weight, stream_));
      }
      Outputs outputs;
      outputs.probabilities = io_.probabilities ? io_.probabilities + image * image_values : nullptr;
      outputs.labels = io_.labels ? io_.labels + int64_t(image) * pixels_ : nullptr;
      outputs.first_bad = w_.first_bad;
      SD_RETURN_IF_ERROR(slice_softmax({}, {}, p_.iterations == 0 ? outputs : Outputs{}));
      for (int32_t iteration = 0; iteration < p_.iterations; ++iteration) {
        SliceSource<kSpatialDims> spatial_source;
        SliceSource<kBilateralDims> bilateral_source;
        if (spatial) {
          SD_RETURN_IF_ERROR(hand_over(forked, stream_, side));  // q is ready
          SD_RETURN_IF_ERROR(filter(w_.spatial, spatial_source, side));
        }
        if (bilateral) SD_RETURN_IF_ERROR(filter(w_.bilateral, bilateral_source, stream_));
        SD_RETURN_IF_ERROR(hand_over(forked, side, stream_));  // both filters are done
        SD_RETURN_IF_ERROR(
            slice_softmax(spatial_source, bilateral_source, iteration + 1 == p_.iterations ? outputs : Outputs{}));
      }
    }
    return hand_over(forked, side, stream_);  // the caller's later work waits for the side stream
  }

  // Makes `to`'s later work wait for `from`'s work so far (nothing unless forked).
  Error hand_over(bool forked, cudaStream_t from, cudaStream_t to) {
    if (!forked) return {};
    const cudaEvent_t event = from == stream_ ? side_->fork : side_->join;
    SD_RETURN_IF_ERROR(cuda_error(cudaEventRecord(event, from), "cudaEventRecord"));
    return cuda_error(cudaStreamWaitEvent(to, event, 0), "cudaStreamWaitEvent");
  }

  static Error memset(void* pointer, int value, size_t bytes, cudaStream_t stream) {
    return cuda_error(cudaMemsetAsync(pointer, value, bytes, stream), "cudaMemsetAsync");
  }

  template <int D>
  static Error scan(DeviceLattice<D>& lattice, const int32_t* in, int32_t* out, int32_t items, cudaStream_t stream) {
    size_t bytes = lattice.temp_bytes;
    return cuda_error(cub::DeviceScan::ExclusiveSum(lattice.temp, bytes, in, out, items, stream), "cub::DeviceScan");
  }

  // Builds the lattice of the kernel and its weights (the steps of lattice_build.h).
  template <int D>
  Error prepare_lattice(DeviceLattice<D>& lattice, const ImageView& image, float potts_weight, cudaStream_t stream) {
    const LatticeArrays<D>& L = lattice.arrays;
    const int32_t entries = L.entries, slots = int32_t(L.table_mask) + 1;
    const char* name = lattice_name<D>();
    SD_LAUNCH(embed_kernel<D>, blocks_for(pixels_), stream, L, LatticeScale<D>(), image, p_);
    SD_RETURN_IF_ERROR(profile_.mark(name, " build: embed"));
    SD_RETURN_IF_ERROR(memset(L.table, 0xff, size_t(slots) * sizeof(TableSlot), stream));
    SD_LAUNCH(insert_kernel<D>, blocks_for(entries), stream, L);
    SD_LAUNCH(owner_flag_kernel<D>, blocks_for(entries), stream, L, lattice.owner_flag, lattice.entry_index,
              lattice.heavy_count);  // and chain_cursor
    SD_RETURN_IF_ERROR(scan(lattice, lattice.owner_flag, L.owner_rank, entries + 1, stream));
    SD_LAUNCH(assign_kernel<D>, blocks_for(entries), stream, L);
    SD_LAUNCH(relabel_kernel<D>, blocks_for(slots), stream, L);
    SD_RETURN_IF_ERROR(profile_.mark(name, " build: hash, number"));
    SD_RETURN_IF_ERROR(scan(lattice, L.vertex_size, L.segment_start, entries + 1, stream));
    // Entries grouped by vertex, in entry order within a vertex: a stable sort by vertex.
    size_t sort_bytes = lattice.temp_bytes;
    SD_RETURN_IF_ERROR(cuda_error(
        cub::DeviceRadixSort::SortPairs(lattice.temp, sort_bytes, L.entry_vertex, lattice.sorted_vertex,
                                        lattice.entry_index, L.segment_entry, entries, 0, vertex_bits(entries), stream),
        "cub::DeviceRadixSort::SortPairs"));
    SD_LAUNCH(neighbors_kernel<D>, blocks_for(entries), stream, L);
    const int64_t axis_entries = int64_t(entries) * (D + 1);  // below 2^31: check_size
    SD_LAUNCH(sequence_kernel<D>, blocks_for(axis_entries), stream, L, lattice.chain_cursor, lattice.sequences);
    SD_RETURN_IF_ERROR(profile_.mark(name, " build: sort, neighbours, chains"));

    SD_LAUNCH(part_count_kernel<D>, blocks_for(entries), stream, L, lattice.part_count, lattice.heavy_vertices,
              lattice.heavy_count, lattice.partial_base);
    SD_RETURN_IF_ERROR(scan(lattice, lattice.part_count, lattice.part_start, entries + 1, stream));
    SD_LAUNCH(part_kernel<D>, blocks_for(entries), stream, L, lattice.part_start, lattice.partial_base,
              lattice.part_begin, lattice.part_target, lattice.part_total);

    SD_LAUNCH(splat_order_kernel<D>, blocks_for(entries), stream, L, lattice.splat_weight, lattice.splat_pixel,
              lattice.pre);
    const float* row_sum = nullptr;
    SD_RETURN_IF_ERROR(splat(lattice, static_cast<const float*>(lattice.pre), 1, lattice.row_values, stream));
    SD_RETURN_IF_ERROR(blur(lattice, 1, lattice.row_values, lattice.row_scratch, &row_sum, stream));
    SD_LAUNCH(normalization_kernel<D>, blocks_for(pixels_), stream, L, row_sum, p_.normalization, lattice.pre,
              lattice.post);
    SD_LAUNCH(weights_kernel<D>, blocks_for(entries), stream, L, lattice.pre, lattice.post, potts_weight,
              lattice.splat_weight, lattice.splat_pixel, lattice.slice_weight);
    return profile_.mark(name, " build: parts, normalisation");
  }

  // Splats rows of `width` Ts (q) into rows of `width` Ts (the values).
  template <int D, typename T>
  Error splat(DeviceLattice<D>& lattice, const T* q, int32_t width, T* values, cudaStream_t stream) {
    const LatticeArrays<D>& L = lattice.arrays;
    const int64_t items = (int64_t(L.entries) + 1) * width;
    // A heavy vertex has more than kPartEntries entries: the grid need not cover more of them.
    const int64_t heavy_items = (int64_t(L.entries) / (kPartEntries + 1) + 1) * width;
    const Parts parts{lattice.part_total,   lattice.part_begin,     lattice.part_target, lattice.part_start,
                      lattice.partial_base, lattice.heavy_vertices, lattice.heavy_count};
    const auto partial = reinterpret_cast<typename Float32Of<T>::type*>(lattice.partial);
    SD_LAUNCH(part_splat_kernel<T>, blocks_for(items), stream, parts, lattice.splat_weight, lattice.splat_pixel, q,
              width, values, partial);
    SD_LAUNCH(heavy_splat_kernel<T>, blocks_for(heavy_items), stream, parts, partial, width, values);
    return {};
  }

  // Blurs rows of `width` items along every axis, ping-ponging between `values` and `scratch`;
  // *result is the buffer holding the result.
  template <int D, typename T>
  Error blur(DeviceLattice<D>& lattice, int32_t width, T* values, T* scratch, const T** result,
                    cudaStream_t stream) {
    const LatticeArrays<D>& L = lattice.arrays;
    const int64_t items = (int64_t(L.entries) + kSequenceSegment - 1) / kSequenceSegment * width;
    T* source = values;
    T* target = scratch;
    for (int axis = 0; axis <= D; ++axis) {
      SD_LAUNCH(sequence_blur_kernel<T>, blocks_for(items), stream, L.vertex_count, lattice.sequences, axis, source,
                width, target);
      std::swap(source, target);
    }
    *result = source;
    return {};
  }

  template <int D>
  Error filter(DeviceLattice<D>& lattice, SliceSource<D>& source, cudaStream_t stream) {
    source.entry_vertex = lattice.arrays.entry_vertex;
    source.slice_weight = lattice.slice_weight;
    const char* name = lattice_name<D>();
    const int32_t width = row_width(io_.classes);
    const auto values = reinterpret_cast<__half2*>(lattice.values);
    SD_RETURN_IF_ERROR(splat(lattice, reinterpret_cast<const __half2*>(w_.q), width / 2, values, stream));
    SD_RETURN_IF_ERROR(profile_.mark(name, " splat"));
    const __half2* blurred = nullptr;
    SD_RETURN_IF_ERROR(blur(lattice, width / 2, values, reinterpret_cast<__half2*>(lattice.scratch), &blurred, stream));
    source.blurred = blurred;
    return profile_.mark(name, " blur");
  }

  Error slice_softmax(const SliceSource<kSpatialDims>& spatial, const SliceSource<kBilateralDims>& bilateral,
                      const Outputs& outputs) {
    const int blocks = blocks_for((int64_t(pixels_) + kPixelsPerBlock - 1) / kPixelsPerBlock * kThreads);
    const int pairs_per_lane = (row_width(io_.classes) / 2 + kLanesPerPixel - 1) / kLanesPerPixel;
    static_assert(kMaxCudaClasses <= 2 * kLanesPerPixel * 8, "slice_softmax_kernel<8> covers every class count");
    const auto slice_kernel = pairs_per_lane <= 1   ? slice_softmax_kernel<1>
                              : pairs_per_lane <= 2 ? slice_softmax_kernel<2>
                              : pairs_per_lane <= 4 ? slice_softmax_kernel<4>
                                                    : slice_softmax_kernel<8>;
    SD_LAUNCH(slice_kernel, blocks, stream_, w_.log_prob, spatial, bilateral, io_.classes, pixels_, w_.q, outputs);
    return profile_.mark(spatial.entry_vertex || bilateral.entry_vertex ? "slice, softmax" : "first softmax");
  }

  // Blocks for a grid-stride kernel over `items`: at most what the GPU holds at once. Most
  // kernels run over the lattice's vertices, whose number only the device knows, on a grid sized
  // for the worst case: larger, most of its blocks would only start and exit.
  int blocks_for(int64_t items) const {
    return int(std::max<int64_t>(1, std::min<int64_t>((items + kThreads - 1) / kThreads, traits_.resident_blocks)));
  }

  const sd_crf_params& p_;
  const sd_crf_io& io_;
  Layout& w_;
  DeviceTraits traits_;
  cudaStream_t stream_;
  const SideStream* side_;
  int32_t pixels_;
  PhaseProfile profile_{stream_};
};

// ---- CUDA graphs ------------------------------------------------------------------------------

// What a call's kernels depend on: calls that agree on all of it enqueue the same work.
struct CallKey {
  int device;
  sd_crf_params params;
  sd_crf_io io;
  const void* workspace;
  size_t workspace_bytes;

  bool operator==(const CallKey& o) const {
    const sd_crf_params &p = params, &q = o.params;
    const sd_crf_io &a = io, &b = o.io;
    return device == o.device && workspace == o.workspace && workspace_bytes == o.workspace_bytes &&
           p.spatial_weight == q.spatial_weight && p.spatial_theta == q.spatial_theta &&
           p.bilateral_weight == q.bilateral_weight && p.bilateral_theta_xy == q.bilateral_theta_xy &&
           p.bilateral_theta_rgb == q.bilateral_theta_rgb && p.iterations == q.iterations &&
           p.normalization == q.normalization && a.unary == b.unary && a.unary_dtype == b.unary_dtype &&
           a.unary_kind == b.unary_kind && a.image == b.image && a.image_layout == b.image_layout &&
           a.batch == b.batch && a.classes == b.classes && a.height == b.height && a.width == b.width &&
           a.probabilities == b.probabilities && a.labels == b.labels;
  }
};

// A call enqueues a few hundred kernels. When the same call comes again (a video's frames into
// the same buffers), its work is captured into a CUDA graph on a stream of the library's own and
// replayed on the caller's stream as one launch. Calls seen once run directly, so callers whose
// buffers move never pay for a capture; if capturing fails, the call runs directly too.
class GraphCache {
 public:
  using Enqueue = std::function<Error(cudaStream_t)>;

  Error run(const CallKey& key, cudaStream_t stream, const Enqueue& enqueue) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (const cudaGraphExec_t* graph = find(key)) return cuda_error(cudaGraphLaunch(*graph, stream), "cudaGraphLaunch");
    if (!seen_before(key)) return enqueue(stream);
    cudaGraphExec_t graph = capture(key.device, enqueue);
    if (graph == nullptr) return enqueue(stream);
    graphs_.emplace_front(key, graph);
    if (graphs_.size() > kGraphs) {
      cudaGraphExecDestroy(graphs_.back().second);
      graphs_.pop_back();
    }
    return cuda_error(cudaGraphLaunch(graph, stream), "cudaGraphLaunch");
  }

 private:
  static constexpr size_t kGraphs = 8;  // distinct calls kept, the most recent first

  const cudaGraphExec_t* find(const CallKey& key) {
    for (auto entry = graphs_.begin(); entry != graphs_.end(); ++entry)
      if (entry->first == key) {
        graphs_.splice(graphs_.begin(), graphs_, entry);
        return &graphs_.front().second;
      }
    return nullptr;
  }

  bool seen_before(const CallKey& key) {
    const bool seen = std::find(seen_.begin(), seen_.end(), key) != seen_.end();
    if (!seen) {
      seen_.push_front(key);
      if (seen_.size() > kGraphs) seen_.pop_back();
    }
    return seen;
  }

  // The call's work as an executable graph, or null (errors cleared) when it cannot be captured.
  cudaGraphExec_t capture(int device, const Enqueue& enqueue) {
    cudaStream_t& stream = capture_streams_[device];
    if (stream == nullptr && cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
      stream = nullptr;
      cudaGetLastError();
      return nullptr;
    }
    if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    const bool enqueued = !enqueue(stream);
    cudaGraph_t graph = nullptr;
    const bool captured = cudaStreamEndCapture(stream, &graph) == cudaSuccess && enqueued;
    cudaGraphExec_t executable = nullptr;
    if (!captured || cudaGraphInstantiate(&executable, graph, 0) != cudaSuccess) executable = nullptr;
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();
    return executable;
  }

  std::mutex mutex_;
  std::list<std::pair<CallKey, cudaGraphExec_t>> graphs_;
  std::list<CallKey> seen_;
  std::map<int, cudaStream_t> capture_streams_;  // per device
};

// Whether the call may go through a graph: not while profiling (the profile waits for its
// events), nor when the caller's stream is being captured (the caller's graph takes the kernels).
bool graphs_allowed(cudaStream_t stream) {
  if (profiling()) return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return status == cudaStreamCaptureStatusNone;
}

GraphCache& graph_cache() {
  static GraphCache* cache = new GraphCache;  // never destroyed: CUDA may be gone at exit
  return *cache;
}

}  // namespace
}  // namespace segdeploy::densecrf

extern "C" int sd_crf_cuda_workspace_bytes(int32_t classes, int32_t height, int32_t width, size_t* bytes) {
  using namespace segdeploy::densecrf;
  return segdeploy::report([&]() -> segdeploy::Error {
    if (bytes == nullptr) return segdeploy::invalid("bytes must not be NULL");
    SD_RETURN_IF_ERROR(check_size(classes, height, width));
    Layout layout;
    SD_RETURN_IF_ERROR(layout.carve(nullptr, classes, height, width));
    *bytes = layout.bytes;
    return {};
  });
}

extern "C" int sd_crf_cuda(const sd_crf_params* params, const sd_crf_io* io, void* workspace, size_t workspace_bytes,
                           int check_finite, void* stream) {
  using namespace segdeploy::densecrf;
  return segdeploy::report([&]() -> segdeploy::Error {
    SD_RETURN_IF_ERROR(validate(params, io));
    if (io->classes > kMaxCudaClasses)
      return segdeploy::invalid("the CUDA dense CRF takes at most ", kMaxCudaClasses, " classes, got ", io->classes);
    SD_RETURN_IF_ERROR(check_size(io->classes, io->height, io->width));
    if (workspace == nullptr) return segdeploy::invalid("workspace must not be NULL");
    Layout layout;
    SD_RETURN_IF_ERROR(layout.carve(workspace, io->classes, io->height, io->width));
    if (workspace_bytes < layout.bytes)
      return segdeploy::invalid("workspace of ", workspace_bytes, " bytes is too small: sd_crf_cuda_workspace_bytes says ",
                                layout.bytes);
    const cudaStream_t caller_stream = static_cast<cudaStream_t>(stream);
    CallKey key{0, *params, *io, workspace, workspace_bytes};
    SD_RETURN_IF_ERROR(segdeploy::cuda_error(cudaGetDevice(&key.device), "cudaGetDevice"));
    DeviceTraits traits;
    SD_RETURN_IF_ERROR(device_traits(key.device, &traits));
    if (check_finite) SD_RETURN_IF_ERROR(CudaCrf(*params, *io, layout, traits, caller_stream).check_unary_on_host());
    // While profiling, and on a stream that the caller is capturing, the kernels go on that stream
    // alone, in order (nothing is created during the caller's capture).
    if (!graphs_allowed(caller_stream)) return CudaCrf(*params, *io, layout, traits, caller_stream).run();
    const SideStream* side = nullptr;
    SD_RETURN_IF_ERROR(side_stream(key.device, &side));
    const auto enqueue = [&](cudaStream_t on) { return CudaCrf(*params, *io, layout, traits, on, side).run(); };
    return graph_cache().run(key, caller_stream, enqueue);
  });
}
