// CUDA driver of the fused bilinear upsample + argmax (the C ABI's sd_upsample_argmax_cuda): one
// kernel, enqueued on the caller's stream; the host never waits and the full-resolution scores
// are never written.
//
// Each thread owns one output column x and kRows consecutive output rows. Along x its two taps
// and weights are fixed; for each class it interpolates along x the low-resolution rows its
// output rows need (each such row once: consecutive output rows mostly share their two source
// rows, so at x8 a thread reads 2 rows per class, mostly, instead of 4 taps per pixel), interpolates
// those along y per output row and keeps a running maximum per row in registers. A warp's 32
// threads are 32 consecutive columns of the same rows, so their loads of a row are contiguous
// (a sector or two per warp-wide load) and the row bookkeeping is the same for the whole warp.
// The low-resolution planes are small enough to stay in L2 (2.5 MB for 19 classes at 128x256),
// so the kernel's cost is mostly those loads and the interpolation arithmetic.
//
// kRows (1, 2 or 4) is the largest that still gives the GPU at least two waves of blocks, so
// that small outputs keep every processor busy; a block's 256 threads cover columns_per_block
// columns (the smallest power of two >= the output width, 32 to 256) times 256 /
// columns_per_block row groups, so that a narrow output does not leave most of a block idle.
//
// kernels/tests/upsample_argmax_cuda_emulated.cpp compiles this file for the host after
// kernels/tests/cuda_emulation.h, which runs the kernel there.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "../src/cuda_check.h"
#include "../src/cuda_launch.cuh"
#include "segdeploy/upsample_argmax.h"
#include "upsample_argmax_common.h"

namespace segdeploy::head {
namespace {

constexpr int kMaxRows = 4;  // output rows per thread at most

// What every thread of a launch needs: the shapes, the coordinate transform, and how the grid's
// blocks map onto (image, row tile, column tile).
struct Launch {
  sd_upsample_argmax_io io;     // the call's shapes and coordinate transform (its pointers unused)
  int32_t columns_per_block;    // threads of a block along x
  int32_t rows_per_block;       // output rows a block covers: 256 / columns_per_block groups of kRows
  int32_t column_tiles, row_tiles;
};

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }

// The source rows of a thread's output rows (upsample_argmax_common.h's taps): row r blends the
// rows at offsets top[r] and top[r] + in_width into a plane, or top[r] alone where the tap is
// clamped (`single` bit r). `reuse` bit r: row r has the same rows as row r - 1; `shift` bit r:
// its top row is row r - 1's bottom row. (Bit masks and one offset per row save registers.)
template <int kRows>
struct RowTaps {
  int32_t top[kRows];
  float top_weight[kRows], bottom_weight[kRows];
  uint32_t single = 0, reuse = 0, shift = 0;
};

// At least 3 blocks (24 warps) per processor to hide the loads' latency: the 4-row variant's 78
// registers fit (85 at most). (An 8-row variant needs 128, or spills at 64: not worth it.)
#if defined(__CUDACC__)
#define SD_UPSAMPLE_ARGMAX_BOUNDS __launch_bounds__(kThreads, 3)
#else
#define SD_UPSAMPLE_ARGMAX_BOUNDS
#endif

template <typename T, typename Label, int kRows>
__global__ void SD_UPSAMPLE_ARGMAX_BOUNDS
    upsample_argmax_kernel(const T* __restrict__ scores, Label* __restrict__ labels, Launch p) {
  follow_previous_kernel();
  const int32_t block = int32_t(blockIdx.x);
  const int32_t column_tile = block % p.column_tiles;
  const int32_t row_tile = (block / p.column_tiles) % p.row_tiles;
  const int32_t image = block / p.column_tiles / p.row_tiles;
  const int32_t lane_x = int32_t(threadIdx.x) % p.columns_per_block;
  const int32_t group = int32_t(threadIdx.x) / p.columns_per_block;
  const sd_upsample_argmax_io& io = p.io;
  const int32_t x = column_tile * p.columns_per_block + lane_x;
  const int32_t first_row = row_tile * p.rows_per_block + group * kRows;
  if (x >= io.out_width || first_row >= io.out_height) return;

  const LinearTap column = column_tap(io, x);
  RowTaps<kRows> taps;
  LinearTap previous{};
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    // Rows past the output's end repeat its last row: their result is not stored.
    const LinearTap row = row_tap(io, min(first_row + r, io.out_height - 1));
    taps.top[r] = row.first * io.in_width;
    taps.top_weight[r] = row.first_weight;
    taps.bottom_weight[r] = row.second_weight;
    if (row.second == row.first) taps.single |= 1u << r;
    if (r > 0 && row.first == previous.first && row.second == previous.second) taps.reuse |= 1u << r;
    if (r > 0 && row.first == previous.second) taps.shift |= 1u << r;
    previous = row;
  }

  float best[kRows];
  int32_t label[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    best[r] = -INFINITY;
    label[r] = 0;
  }
  const int64_t plane = int64_t(io.in_height) * io.in_width;
  const T* source = scores + int64_t(image) * io.classes * plane;  // class c's plane
  // One class at a time: unrolling the class loop would multiply the live registers.
#pragma unroll 1
  for (int32_t c = 0; c < io.classes; ++c, source += plane) {
    const auto along_x = [&](int32_t row) {
      return blend(column.first_weight, load(source + row + column.first), column.second_weight,
                   load(source + row + column.second));
    };
    float top = 0.0f, bottom = 0.0f;  // row r's two source rows interpolated along x
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r == 0 || !(taps.reuse >> r & 1u)) {
        top = r > 0 && (taps.shift >> r & 1u) ? bottom : along_x(taps.top[r]);
        bottom = taps.single >> r & 1u ? top : along_x(taps.top[r] + io.in_width);
      }
      const float value = blend(taps.top_weight[r], top, taps.bottom_weight[r], bottom);
      if (value > best[r]) {  // the first maximum wins; NaN never does
        best[r] = value;
        label[r] = c;
      }
    }
  }
  Label* out = labels + (int64_t(image) * io.out_height + first_row) * io.out_width + x;
#pragma unroll
  for (int r = 0; r < kRows; ++r)
    if (first_row + r < io.out_height) out[int64_t(r) * io.out_width] = Label(label[r]);
}

using KernelFunction = void (*)(const void*, void*, Launch);

template <typename T, typename Label, int kRows>
Error launch_typed(bool programmatic, int blocks, cudaStream_t stream, const void* scores, void* labels,
                   const Launch& p) {
  return cuda_error(launch_kernel(programmatic, upsample_argmax_kernel<T, Label, kRows>, blocks, stream,
                                  static_cast<const T*>(scores), static_cast<Label*>(labels), p),
                    "upsample_argmax_kernel");
}

template <typename T, typename Label>
Error launch_rows(int rows, bool programmatic, int blocks, cudaStream_t stream, const void* scores, void* labels,
                  const Launch& p) {
  switch (rows) {
    case 1: return launch_typed<T, Label, 1>(programmatic, blocks, stream, scores, labels, p);
    case 2: return launch_typed<T, Label, 2>(programmatic, blocks, stream, scores, labels, p);
    default: return launch_typed<T, Label, kMaxRows>(programmatic, blocks, stream, scores, labels, p);
  }
}

}  // namespace
}  // namespace segdeploy::head

extern "C" int sd_upsample_argmax_cuda(const sd_upsample_argmax_io* io, void* stream) {
  using namespace segdeploy;  // the launch helpers (cuda_launch.cuh)
  using namespace segdeploy::head;
  return segdeploy::report([&]() -> segdeploy::Error {
    // Through the C ABI: upsample_argmax_common.h declares validate() for host-only compilation,
    // and nvcc's device pass parses this host function too.
    if (const int status = sd_upsample_argmax_validate(io); status != SD_OK)
      return segdeploy::Error(sd_status(status), sd_last_error());
    const int64_t out_pixels = int64_t(io->batch) * io->out_height * io->out_width;
    if (int64_t(io->in_height) * io->in_width > INT32_MAX)
      return segdeploy::invalid("a plane of ", io->in_height, " x ", io->in_width,
                                " scores is too large for the CUDA kernel's 32-bit offsets");
    int device = 0;
    SD_RETURN_IF_ERROR(cuda_error(cudaGetDevice(&device), "cudaGetDevice"));
    DeviceTraits traits;
    SD_RETURN_IF_ERROR(device_traits(
        device, reinterpret_cast<const void*>(upsample_argmax_kernel<float, int32_t, 1>), &traits));

    Launch p{};
    p.io = *io;
    p.columns_per_block = 32;
    while (p.columns_per_block < io->out_width && p.columns_per_block < kThreads) p.columns_per_block *= 2;
    p.column_tiles = (io->out_width + p.columns_per_block - 1) / p.columns_per_block;
    const int32_t row_groups = kThreads / p.columns_per_block;
    // The most rows per thread that still fills the GPU twice over.
    int rows = kMaxRows;
    for (;; rows /= 2) {
      p.rows_per_block = row_groups * rows;
      p.row_tiles = (io->out_height + p.rows_per_block - 1) / p.rows_per_block;
      const int64_t blocks = int64_t(io->batch) * p.row_tiles * p.column_tiles;
      if (rows == 1 || blocks >= 2 * int64_t(traits.resident_blocks)) break;
    }
    const int64_t blocks = int64_t(io->batch) * p.row_tiles * p.column_tiles;
    if (blocks > int64_t(INT32_MAX))
      return segdeploy::invalid("the output of ", out_pixels, " pixels is too large for one launch");
    const bool programmatic = traits.programmatic_launch;
    const bool half = io->scores_dtype == SD_DTYPE_FLOAT16;
    const bool bytes = io->labels_dtype == SD_LABELS_UINT8;
    const cudaStream_t on = static_cast<cudaStream_t>(stream);
    const int grid = int(blocks);
    if (half && bytes) return launch_rows<__half, uint8_t>(rows, programmatic, grid, on, io->scores, io->labels, p);
    if (half) return launch_rows<__half, int32_t>(rows, programmatic, grid, on, io->scores, io->labels, p);
    if (bytes) return launch_rows<float, uint8_t>(rows, programmatic, grid, on, io->scores, io->labels, p);
    return launch_rows<float, int32_t>(rows, programmatic, grid, on, io->scores, io->labels, p);
  });
}
