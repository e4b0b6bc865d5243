// CUDA driver of the dense CRF (the C ABI's sd_crf_cuda): everything is enqueued on the
// caller's stream, or on a side stream forked from it and joined back (the spatial lattice's work,
// see CudaCrf), and replayed from a CUDA graph when the same call comes again. The host never
// waits, except once before the iterations when the caller asks for the unary to be checked for
// NaN/inf.
//
// Its parts: the kernels (densecrf_cuda_kernels.cuh), the workspace layout
// (densecrf_cuda_workspace.h), launches, streams and profiling (../src/cuda_launch.cuh) and the
// graph cache (cuda_graph_cache.h). They form this one translation unit, which
// kernels/tests/densecrf_cuda_emulated.cpp compiles for the host after cuda_emulation.h.
#ifndef SD_CUDA_EMULATION  // kernels/tests/cuda_emulation.h runs this file on the host, with its own CUB
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#endif

#include <algorithm>
#include <cstdint>
#include <utility>

#include "../src/cuda_check.h"
#include "../src/cuda_launch.cuh"
#include "crf_problem.h"
#include "cuda_graph_cache.h"
#include "densecrf_cuda_kernels.cuh"
#include "densecrf_cuda_workspace.h"

namespace segdeploy::densecrf {
namespace {

template <int D>
const char* lattice_name() {
  return D == kSpatialDims ? "spatial" : "bilateral";
}

#define SD_LAUNCH(kernel, grid, stream, ...)                                                            \
  SD_RETURN_IF_ERROR(cuda_error(launch_kernel(traits_.programmatic_launch, kernel, grid, stream, __VA_ARGS__), \
                                #kernel))

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
    size_t bytes = lattice.scan_temp_bytes;
    return cuda_error(cub::DeviceScan::ExclusiveSum(lattice.scan_temp, bytes, in, out, items, stream), "cub::DeviceScan");
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
    size_t sort_bytes = lattice.sort_temp_bytes;
    SD_RETURN_IF_ERROR(cuda_error(
        cub::DeviceRadixSort::SortPairs(lattice.sort_temp, sort_bytes, L.entry_vertex, lattice.sorted_vertex,
                                        lattice.entry_index, L.segment_entry, entries, 0, vertex_bits(entries), stream),
        "cub::DeviceRadixSort::SortPairs"));
    SD_LAUNCH(clear_lower_neighbors_kernel<D>, blocks_for(entries), stream, L);
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
  using namespace segdeploy;  // the launch helpers (cuda_launch.cuh)
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
    SD_RETURN_IF_ERROR(device_traits(key.device, reinterpret_cast<const void*>(find_bad_unary_kernel), &traits));
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
