// CUDA driver of the depthwise convolution (the C ABI's sd_depthwise_conv_cuda): one kernel with the
// bias and activation fused, enqueued on the caller's stream; the host never waits.
//
// A block computes one output tile of one (image, channel) plane: tile_columns output columns (32
// or 64, one per thread along x, so that a warp's loads and stores are contiguous) times
// tile_rows output rows (256 / tile_columns row groups of rows_per_thread rows each). It first
// stages the input window that the tile's taps read, the tile's inputs plus the dilated halo
// ((tile - 1) * stride + (kernel - 1) * dilation + 1 along each axis), clipped to the image,
// into shared memory as float32 (float16 input is read as aligned half2 pairs), then each thread
// convolves its outputs from there, the weights of the 3x3 and 5x5 fast paths in registers; taps
// outside the window are zero padding and skipped. The window is clipped rather than zero-filled
// so that a large dilation on a small map (ASPP's rate 12 and up on 32 x 32) stages the image,
// not mostly padding; a window that does not fit the block's kTileCapacity floats of shared
// memory (a large dilation on a large map) is read from global memory directly instead (the
// unstaged variant). Each output sums its taps in float32 in the CPU driver's order (row by row,
// left to right), then adds the bias and applies the activation.
//
// rows_per_thread (8, 4, 2 or 1) is the largest that still gives the GPU two waves of blocks,
// so that small layers keep every processor busy.
//
// kernels/tests/depthwise_conv_cuda_emulated.cpp compiles this file for the host after
// kernels/tests/cuda_emulation.h, which runs the kernel there.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "../src/cuda_check.h"
#include "../src/cuda_launch.cuh"
#include "depthwise_conv_common.h"
#include "segdeploy/depthwise_conv.h"

namespace segdeploy::conv {
namespace {

// Shared memory of a block's staged input window, in floats: 16 KiB, so that a processor holds
// as many blocks as its threads allow (4 on Turing's 64 KiB, 8 on Hopper).
constexpr int32_t kTileCapacity = 4096;
constexpr int32_t kMaxRowsPerThread = 8;

// What every thread of a launch needs: the shapes, and how the grid's blocks map onto (plane, row
// tile, column tile).
struct Launch {
  sd_depthwise_conv_io io;  // the call's shapes and activation (its pointers unused)
  int32_t tile_columns;     // output columns of a block, one per thread of a row group
  int32_t tile_rows;        // output rows of a block: (kThreads / tile_columns) * rows per thread
  int32_t column_tiles, row_tiles;
};

// The input rows (or columns) that output rows [first, last] read, clipped to [0, length).
struct Window {
  int32_t begin, count;
};

__host__ __device__ __forceinline__ Window input_window(int32_t first, int32_t last, int32_t stride,
                                                        int32_t dilation, int32_t pad, int32_t kernel,
                                                        int32_t length) {
  const int32_t start = first * stride - pad, end = last * stride - pad + (kernel - 1) * dilation + 1;
  const int32_t begin = start > 0 ? start : 0;
  return {begin, (end < length ? end : length) > begin ? (end < length ? end : length) - begin : 0};
}

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void store(float* p, float value) { *p = value; }
__device__ __forceinline__ void store(__half* p, float value) { *p = __float2half_rn(value); }

// One window row of `count` inputs from `from` into `to`, by the 32 lanes of a warp.
__device__ __forceinline__ void stage_row(const float* from, float* to, int32_t count, int32_t lane) {
  for (int32_t i = lane; i < count; i += 32) to[i] = from[i];
}
// Float16: pairs at 4-byte-aligned addresses as one half2 load, the odd ends alone.
__device__ __forceinline__ void stage_row(const __half* from, float* to, int32_t count, int32_t lane) {
  const int32_t lead = int32_t((reinterpret_cast<uintptr_t>(from) >> 1) & 1u);  // from[-lead] is aligned
  for (int32_t i = 2 * lane - lead; i < count; i += 64) {
    if (i >= 0 && i + 1 < count) {
      const float2 pair = __half22float2(*reinterpret_cast<const __half2*>(from + i));
      to[i] = pair.x;
      to[i + 1] = pair.y;
    } else {
      if (i >= 0) to[i] = __half2float(from[i]);
      if (i + 1 < count) to[i + 1] = __half2float(from[i + 1]);
    }
  }
}

// At least 5 blocks (40 warps) per processor, to hide the loads' latency: 48 registers, which the
// 5x5 variants need (at 6 blocks, 40, they spill). Turing holds 4 (1024 threads).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 750
#define SD_DEPTHWISE_CONV_BOUNDS __launch_bounds__(kThreads, 4)
#elif defined(__CUDACC__)
#define SD_DEPTHWISE_CONV_BOUNDS __launch_bounds__(kThreads, 5)
#else
#define SD_DEPTHWISE_CONV_BOUNDS
#endif

// kKernel: 3 or 5 for a square kernel of that size (unrolled, weights in registers), 0 for any
// kernel_height x kernel_width up to 7. kStaged: the input window goes through shared memory.
template <typename T, int kKernel, bool kStaged>
__global__ void SD_DEPTHWISE_CONV_BOUNDS depthwise_conv_kernel(const T* __restrict__ input,
                                                               const T* __restrict__ weight,
                                                               const T* __restrict__ bias, T* __restrict__ output,
                                                               Launch p) {
  follow_previous_kernel();
  const sd_depthwise_conv_io& io = p.io;
  const int32_t kernel_height = kKernel > 0 ? kKernel : io.kernel_height;
  const int32_t kernel_width = kKernel > 0 ? kKernel : io.kernel_width;
  const int32_t block = int32_t(blockIdx.x);
  const int32_t column_tile = block % p.column_tiles;
  const int32_t row_tile = (block / p.column_tiles) % p.row_tiles;
  const int32_t plane = block / p.column_tiles / p.row_tiles;  // image * channels + channel
  const int32_t channel = plane % io.channels;
  const int32_t groups = kThreads / p.tile_columns;
  const int32_t group = int32_t(threadIdx.x) / p.tile_columns;
  const int32_t first_column = column_tile * p.tile_columns;
  const int32_t x = first_column + int32_t(threadIdx.x) % p.tile_columns;
  const int32_t first_row = row_tile * p.tile_rows;
  const int32_t last_row = min(first_row + p.tile_rows, io.out_height) - 1;
  const T* source = input + int64_t(plane) * io.in_height * io.in_width;

  const T* filter = weight + int64_t(channel) * kernel_height * kernel_width;
  float taps[kKernel > 0 ? kKernel * kKernel : 1];
  if constexpr (kKernel > 0) {
#pragma unroll
    for (int i = 0; i < kKernel * kKernel; ++i) taps[i] = load(filter + i);
  }
  const float offset = bias != nullptr ? load(bias + channel) : 0.0f;

  // Convolves this thread's outputs, reading input (r, c) of the image at from[(r - row0) * pitch
  // + c - column0].
  const auto convolve = [&](const auto* from, int32_t pitch, int32_t row0, int32_t column0) {
    if (x >= io.out_width) return;
    const int32_t left = x * io.stride_width - io.pad_left;  // the image column of tap column 0
    uint32_t inside = 0;                                     // bit j: tap column j is in the image
    for (int32_t j = 0; j < kernel_width; ++j) {
      const int32_t column = left + j * io.dilation_width;
      if (column >= 0 && column < io.in_width) inside |= 1u << j;
    }
    T* out = output + int64_t(plane) * io.out_height * io.out_width + x;
    for (int32_t y = first_row + group; y <= last_row; y += groups) {
      const int32_t top = y * io.stride_height - io.pad_top;
      float sum = 0.0f;
      const auto add_row = [&](int32_t i, auto weight_of) {
        const int32_t row = top + i * io.dilation_height;
        if (row < 0 || row >= io.in_height) return;
        const int32_t line = (row - row0) * pitch + (left - column0);  // tap (i, 0), perhaps outside
        if constexpr (kKernel > 0) {
#pragma unroll
          for (int32_t j = 0; j < kKernel; ++j)
            if (inside >> j & 1u) sum = fmaf(weight_of(j), load(from + (line + j * io.dilation_width)), sum);
        } else {
          for (int32_t j = 0; j < kernel_width; ++j)
            if (inside >> j & 1u) sum = fmaf(weight_of(j), load(from + (line + j * io.dilation_width)), sum);
        }
      };
      if constexpr (kKernel > 0) {
#pragma unroll
        for (int32_t i = 0; i < kKernel; ++i) add_row(i, [&](int32_t j) { return taps[i * kKernel + j]; });
      } else {
        for (int32_t i = 0; i < kernel_height; ++i)
          add_row(i, [&](int32_t j) { return load(filter + i * kernel_width + j); });
      }
      store(out + int64_t(y) * io.out_width, activate(sum + offset, io.activation));
    }
  };

  if constexpr (kStaged) {
    __shared__ float window[kTileCapacity];
    const int32_t last_column = min(first_column + p.tile_columns, io.out_width) - 1;
    const Window rows = input_window(first_row, last_row, io.stride_height, io.dilation_height, io.pad_top,
                                     kernel_height, io.in_height);
    const Window columns = input_window(first_column, last_column, io.stride_width, io.dilation_width, io.pad_left,
                                        kernel_width, io.in_width);
    const int32_t warp = int32_t(threadIdx.x) / 32, lane = int32_t(threadIdx.x) % 32;
    for (int32_t r = warp; r < rows.count; r += kThreads / 32)
      stage_row(source + int64_t(rows.begin + r) * io.in_width + columns.begin, window + r * columns.count,
                columns.count, lane);
    __syncthreads();
    const float* staged = window;
    convolve(staged, columns.count, rows.begin, columns.begin);
  } else {
    convolve(source, io.in_width, 0, 0);
  }
}

template <typename T, int kKernel, bool kStaged>
Error launch_typed(bool programmatic, int blocks, cudaStream_t stream, const sd_depthwise_conv_io& io,
                   const Launch& p) {
  return cuda_error(launch_kernel(programmatic, depthwise_conv_kernel<T, kKernel, kStaged>, blocks, stream,
                                  static_cast<const T*>(io.input), static_cast<const T*>(io.weight),
                                  static_cast<const T*>(io.bias), static_cast<T*>(io.output), p),
                    "depthwise_conv_kernel");
}

template <typename T, bool kStaged>
Error launch_kernel_size(bool programmatic, int blocks, cudaStream_t stream, const sd_depthwise_conv_io& io,
                         const Launch& p) {
  const bool square = io.kernel_height == io.kernel_width;
  if (square && io.kernel_height == 3) return launch_typed<T, 3, kStaged>(programmatic, blocks, stream, io, p);
  if (square && io.kernel_height == 5) return launch_typed<T, 5, kStaged>(programmatic, blocks, stream, io, p);
  return launch_typed<T, 0, kStaged>(programmatic, blocks, stream, io, p);
}

template <typename T>
Error launch_dtype(bool staged, bool programmatic, int blocks, cudaStream_t stream, const sd_depthwise_conv_io& io,
                   const Launch& p) {
  if (staged) return launch_kernel_size<T, true>(programmatic, blocks, stream, io, p);
  return launch_kernel_size<T, false>(programmatic, blocks, stream, io, p);
}

// The floats of the largest input window of a block of tile_rows x tile_columns outputs.
int64_t window_floats(const sd_depthwise_conv_io& io, int32_t tile_rows, int32_t tile_columns) {
  const int64_t rows = std::min<int64_t>(
      io.in_height, int64_t(tile_rows - 1) * io.stride_height + int64_t(io.kernel_height - 1) * io.dilation_height + 1);
  const int64_t columns = std::min<int64_t>(
      io.in_width, int64_t(tile_columns - 1) * io.stride_width + int64_t(io.kernel_width - 1) * io.dilation_width + 1);
  return rows * columns;
}

int64_t blocks_of(const sd_depthwise_conv_io& io, Launch* p) {
  p->column_tiles = (io.out_width + p->tile_columns - 1) / p->tile_columns;
  p->row_tiles = (io.out_height + p->tile_rows - 1) / p->tile_rows;
  return int64_t(io.batch) * io.channels * p->row_tiles * p->column_tiles;
}

}  // namespace
}  // namespace segdeploy::conv

extern "C" int sd_depthwise_conv_cuda(const sd_depthwise_conv_io* io, void* stream) {
  using namespace segdeploy;  // the launch helpers (cuda_launch.cuh)
  using namespace segdeploy::conv;
  return segdeploy::report([&]() -> segdeploy::Error {
    // Through the C ABI: depthwise_conv_common.h declares validate() for host-only compilation,
    // and nvcc's device pass parses this host function too.
    if (const int status = sd_depthwise_conv_validate(io); status != SD_OK)
      return segdeploy::Error(sd_status(status), sd_last_error());
    // Every tap coordinate lies in the padded input: 32-bit arithmetic holds them all.
    const int64_t padded_height = int64_t(io->in_height) + io->pad_top + io->pad_bottom;
    const int64_t padded_width = int64_t(io->in_width) + io->pad_left + io->pad_right;
    if (int64_t(io->in_height) * io->in_width > INT32_MAX || int64_t(io->out_height) * io->out_width > INT32_MAX ||
        padded_height > INT32_MAX / 2 || padded_width > INT32_MAX / 2)
      return segdeploy::invalid("a plane of ", io->in_height, " x ", io->in_width, " inputs (padded ", padded_height,
                                " x ", padded_width, ") or ", io->out_height, " x ", io->out_width,
                                " outputs is too large for the CUDA kernel's 32-bit offsets");
    int device = 0;
    SD_RETURN_IF_ERROR(cuda_error(cudaGetDevice(&device), "cudaGetDevice"));
    DeviceTraits traits;
    SD_RETURN_IF_ERROR(
        device_traits(device, reinterpret_cast<const void*>(depthwise_conv_kernel<float, 3, true>), &traits));

    Launch p{};
    p.io = *io;
    p.tile_columns = io->out_width > 32 ? 64 : 32;
    const int32_t groups = kThreads / p.tile_columns;
    // The most rows per thread that still fills the GPU twice over and whose window fits in
    // shared memory (if one row per thread's does: else the unstaged variant, any rows).
    const bool can_stage = window_floats(*io, groups, p.tile_columns) <= kTileCapacity;
    int64_t blocks = 0;
    for (int32_t rows = kMaxRowsPerThread;; rows /= 2) {
      p.tile_rows = groups * rows;
      blocks = blocks_of(*io, &p);
      const bool fits = window_floats(*io, p.tile_rows, p.tile_columns) <= kTileCapacity;
      if (rows == 1 || ((fits || !can_stage) && blocks >= 2 * int64_t(traits.resident_blocks))) break;
    }
    const bool staged = can_stage && window_floats(*io, p.tile_rows, p.tile_columns) <= kTileCapacity;
    if (blocks > int64_t(INT32_MAX))
      return segdeploy::invalid("the output of ", io->batch, " x ", io->channels, " planes of ", io->out_height,
                                " x ", io->out_width, " is too large for one launch");
    const cudaStream_t on = static_cast<cudaStream_t>(stream);
    const int grid = int(blocks);
    if (io->dtype == SD_DTYPE_FLOAT16)
      return launch_dtype<__half>(staged, traits.programmatic_launch, grid, on, *io, p);
    return launch_dtype<float>(staged, traits.programmatic_launch, grid, on, *io, p);
  });
}
