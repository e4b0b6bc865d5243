// The device memory of the CUDA dense CRF: one workspace holds every array at its worst-case
// size (each entry its own vertex: a noise image with the default parameters comes within 2% of
// it), so one allocation per image size serves every call, whatever the image; its layout is
// computed by Layout below. Arrays that are never live at the same time share memory (see
// carve_lattice).
#ifndef SEGDEPLOY_DENSECRF_CUDA_WORKSPACE_H
#define SEGDEPLOY_DENSECRF_CUDA_WORKSPACE_H

#ifndef SD_CUDA_EMULATION  // kernels/tests/cuda_emulation.h brings its own CUB
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#endif

#include <algorithm>
#include <climits>

#include "densecrf_cuda_kernels.cuh"

namespace segdeploy::densecrf {
namespace {  // for densecrf_cuda.cu, the one translation unit that includes it

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
  void* scan_temp;          // CUB's scratch for the scans (each lattice its own: the two lattices
  size_t scan_temp_bytes;   // are built concurrently)
  void* sort_temp;          // and for the sort, much the larger: in memory the hashing no longer needs
  size_t sort_temp_bytes;
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
  // Where the next array goes; rewinding there again carves a second set of arrays over the
  // same memory (for arrays that are never live at the same time).
  size_t offset() const { return offset_; }
  void rewind(size_t offset) { offset_ = offset; }
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
Error cub_scratch_bytes(int64_t entries, size_t& scan_bytes, size_t& sort_bytes) {
  scan_bytes = sort_bytes = 0;
  SD_RETURN_IF_ERROR(cuda_error(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<int32_t*>(nullptr),
                                                              static_cast<int32_t*>(nullptr), int(entries + 1)),
                                "cub::DeviceScan::ExclusiveSum (size query)"));
  SD_RETURN_IF_ERROR(cuda_error(
      cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<int32_t*>(nullptr),
                                      static_cast<int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
                                      static_cast<int32_t*>(nullptr), int(entries), 0, vertex_bits(entries)),
      "cub::DeviceRadixSort::SortPairs (size query)"));
  return {};
}

// A heavy vertex has n > kPartEntries entries in ceil(n / kPartEntries) < 2n / kPartEntries parts.
int64_t max_heavy_parts(int64_t entries) { return 2 * entries / kPartEntries; }

// The lattice's arrays in two groups. Those the filter reads in every iteration are carved
// first. The build's scratch (keys, hash table, neighbours, sort and scan buffers, the row sums'
// splat and blur, the normalisation) follows, its arrays of different phases in the same memory,
// and it is dead once weights_kernel has run, so the filter's value rows (`values`, `scratch`)
// share that memory too: the region takes the largest of these. The layout is the same for every
// image of a shape, so graph replay (video) never sees it change.
template <int D>
Error carve_lattice(Carver& carver, int32_t pixels, int32_t classes, DeviceLattice<D>& out) {
  const int64_t entries = int64_t(pixels) * (D + 1);
  const uint32_t table_size = table_size_for(entries);
  LatticeArrays<D>& L = out.arrays;
  L.pixels = pixels;
  L.entries = int32_t(entries);
  L.table_mask = table_size - 1;
  L.neighbor_stride = int32_t(entries);
  // Read by every filter: the slice's, the splat's and the blur's arrays.
  L.entry_vertex = carver.take<int32_t>(entries);
  L.vertex_count = carver.take<int32_t>(1);
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
  out.partial = carver.take<float>((max_heavy_parts(entries) + 1) * row_width(classes));
  // The build's scratch, by phase (the steps of prepare_lattice). Each array's first and last
  // use is noted: arrays of different phases share memory.
  const size_t scratch_region = carver.offset();
  L.barycentric = carver.take<float>(entries);         // embed .. weights
  SD_RETURN_IF_ERROR(cub_scratch_bytes(entries, out.scan_temp_bytes, out.sort_temp_bytes));
  out.scan_temp = carver.take<char>(int64_t(out.scan_temp_bytes));  // every scan
  L.segment_start = carver.take<int32_t>(entries + 1);  // vertex-size scan .. part_kernel
  L.segment_entry = carver.take<int32_t>(entries);      // sort .. splat_order
  const size_t phases = carver.offset();
  // Hashing and numbering (embed .. relabel), then the scan of the vertex sizes and the sort.
  L.table = carver.take<TableSlot>(table_size);  // .. neighbors_kernel; sized for every entry: cannot overflow
  L.vertex_keys = carver.take<int32_t>(entries * D);  // assign .. neighbors_kernel
  const size_t hashed = carver.offset();
  L.vertex_size = carver.take<int32_t>(entries + 1);  // owner_flag .. vertex-size scan
  out.sorted_vertex = L.vertex_size;                  // the sort's unused output, once the sizes are scanned
  out.entry_index = carver.take<int32_t>(entries);    // owner_flag .. sort
  const size_t hashing_only = carver.offset();
  L.keys = carver.take<int32_t>(entries * D);         // embed .. assign
  L.entry_slot = carver.take<int32_t>(entries);       // insert .. assign
  L.owner_rank = carver.take<int32_t>(entries + 1);   // owner scan .. relabel
  out.owner_flag = carver.take<int32_t>(entries + 1);  // owner_flag .. owner scan
  size_t scratch_end = carver.offset();
  // The sort's scratch, over the keys and ranks (their last use, relabel, comes before the sort).
  carver.rewind(hashing_only);
  out.sort_temp = carver.take<char>(int64_t(out.sort_temp_bytes));  // sort
  scratch_end = std::max(scratch_end, carver.offset());
  // The neighbours and chains (after the sort), over the sizes, the sort's input, keys and ranks.
  carver.rewind(hashed);
  L.neighbors = carver.take<int32_t>(entries * 2 * (D + 1));  // clear_lower_neighbors .. sequence_kernel
  scratch_end = std::max(scratch_end, carver.offset());
  // Parts and normalisation (after the chains), over the hash table and what follows it.
  carver.rewind(phases);
  out.part_count = carver.take<int32_t>(entries + 1);  // part_count .. part scan
  out.row_values = carver.take<float>(entries + 1);    // the row sums' splat .. normalization
  out.row_scratch = carver.take<float>(entries + 1);
  out.pre = carver.take<float>(pixels);  // splat_order (ones) .. weights
  out.post = carver.take<float>(pixels);
  scratch_end = std::max(scratch_end, carver.offset());
  // The filter's value rows (after weights_kernel), over all of it.
  carver.rewind(scratch_region);
  out.values = carver.take<__half>((entries + 1) * row_width(classes));
  out.scratch = carver.take<__half>((entries + 1) * row_width(classes));
  carver.rewind(std::max(scratch_end, carver.offset()));
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

}  // namespace
}  // namespace segdeploy::densecrf

#endif
