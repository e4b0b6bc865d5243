// CUDA on the host, for tests: the CUDA driver of the dense CRF (densecrf_cuda.cu), compiled as
// C++ after this header, runs on the CPU one emulated thread at a time, so that machines without
// a GPU (CI among them) check the kernels' logic and, under AddressSanitizer, their indexing.
//
// Each block's threads are coroutines that meet at every shuffle, as a warp does, and at every
// __syncthreads, as the block does; each warp runs ahead of the others as far as it may, so that
// a missing barrier gives a wrong result; __shared__ variables are per host thread; blocks run
// one at a time, the last first. The CUDA
// runtime calls act on host memory (cuda_emulation.cpp); streams run their work lazily, in an
// order that turns a missing dependency between streams into a wrong result; the two CUB
// algorithms that the driver uses run sequentially. Emulation finds wrong results, out-of-bounds
// accesses, missing barriers and stream dependencies, not races between threads and not speed.
#ifndef SEGDEPLOY_CUDA_EMULATION_H
#define SEGDEPLOY_CUDA_EMULATION_H

#define SD_CUDA_EMULATION 1

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <vector>

// The execution-space keywords mean nothing on the host (the headers above make them attributes
// that GCC does not know).
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#define __global__
#define __device__
#define __host__
// A block runs on one host thread, alone until it ends: a static variable is its shared memory.
#define __shared__ static thread_local

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

namespace segdeploy::emulation {

// Queues `operation` on `stream`, or records it when the stream is being captured into a graph
// (what CUDA does with the work enqueued on a stream, one emulated operation at a time).
void enqueue(cudaStream_t stream, std::function<void()> operation);

// Runs `thread` once per thread of a grid of `blocks` x `threads_per_block` (a multiple of 32),
// with threadIdx, blockIdx, blockDim and gridDim set as a kernel sees them.
void run_grid(int blocks, int threads_per_block, const std::function<void()>& thread);

// Calls of cudaGridDependencySynchronize by the emulated threads of this host thread so far.
uint64_t dependency_waits();
[[noreturn]] void fail(const char* what);

// kernel<<<blocks, threads_per_block, 0, stream>>>(arguments...): the arguments are converted to
// the kernel's parameter types and copied at the launch, as CUDA does. A programmatic launch
// (one that may overlap the kernel before it) needs every thread to call
// cudaGridDependencySynchronize, or the emulation fails.
template <typename... Parameters, typename... Arguments>
void launch(cudaStream_t stream, int blocks, int threads_per_block, bool programmatic, void (*kernel)(Parameters...),
            const Arguments&... arguments) {
  std::tuple<std::decay_t<Parameters>...> copied(arguments...);
  enqueue(stream, [=] {
    const uint64_t before = dependency_waits();
    run_grid(blocks, threads_per_block, [&] { std::apply(kernel, copied); });
    if (programmatic && dependency_waits() - before != uint64_t(blocks) * uint64_t(threads_per_block))
      fail("a kernel launched programmatically whose threads did not all call cudaGridDependencySynchronize");
  });
}

// The value that lane (this lane ^ lane_mask) passed to the same shuffle; every lane of the
// warp must reach it (the kernels shuffle with the full mask only).
uint32_t exchange(uint32_t bits, int lane_mask);

// Waits until every thread of the block has reached it.
void barrier();

template <typename T>
T shuffle_xor(T value, int lane_mask) {
  static_assert(sizeof(T) == sizeof(uint32_t), "32-bit shuffles only");
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  bits = exchange(bits, lane_mask);
  std::memcpy(&value, &bits, sizeof bits);
  return value;
}

}  // namespace segdeploy::emulation

// CUDA graphs launched so far: lets the tests check that a call was replayed from a graph (a
// failed capture falls back to running the call directly, with the same results).
extern "C" __attribute__((visibility("default"))) int sd_emulated_graph_launches(void);

inline void __syncthreads() { segdeploy::emulation::barrier(); }

// Programmatic dependent launch: kernels run one after another here, so the trigger does nothing
// and the wait is only counted.
inline void cudaTriggerProgrammaticLaunchCompletion() {}
void cudaGridDependencySynchronize();

inline float __shfl_xor_sync(unsigned, float value, int lane_mask) {
  return segdeploy::emulation::shuffle_xor(value, lane_mask);
}
inline int __shfl_xor_sync(unsigned, int value, int lane_mask) {
  return segdeploy::emulation::shuffle_xor(value, lane_mask);
}

// One emulated thread runs at a time, so the atomics are plain read-modify-writes.
inline int atomicAdd(int* address, int value) {
  const int old = *address;
  *address = old + value;
  return old;
}
inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  *address = std::min(old, value);
  return old;
}

inline int min(int a, int b) { return a < b ? a : b; }

// The subset of CUB that densecrf_cuda.cu calls, with CUB's signatures and semantics.
namespace cub {

struct DeviceScan {
  template <typename T>
  static cudaError_t ExclusiveSum(void* temp, size_t& temp_bytes, const T* in, T* out, int count,
                                  cudaStream_t stream = nullptr) {
    if (temp == nullptr) {
      temp_bytes = 1;
      return cudaSuccess;
    }
    segdeploy::emulation::enqueue(stream, [=] {
      T sum = 0;
      for (int i = 0; i < count; ++i) {
        const T value = in[i];
        out[i] = sum;
        sum += value;
      }
    });
    return cudaSuccess;
  }
};

struct DeviceRadixSort {
  // A stable sort of (key, value) pairs by the key bits [begin_bit, end_bit).
  template <typename Key, typename Value>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const Key* keys_in, Key* keys_out,
                               const Value* values_in, Value* values_out, int count, int begin_bit = 0,
                               int end_bit = int(sizeof(Key) * 8), cudaStream_t stream = nullptr) {
    if (temp == nullptr) {
      temp_bytes = 1;
      return cudaSuccess;
    }
    segdeploy::emulation::enqueue(stream, [=] {
      using Bits = std::make_unsigned_t<Key>;
      const int width = end_bit - begin_bit;
      const Bits mask = width >= int(sizeof(Bits) * 8) ? Bits(~Bits(0)) : Bits((Bits(1) << width) - 1);
      auto sort_key = [&](int i) { return Bits(Bits(keys_in[i]) >> begin_bit) & mask; };
      std::vector<int> order(count);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return sort_key(a) < sort_key(b); });
      for (int i = 0; i < count; ++i) {
        keys_out[i] = keys_in[order[i]];
        values_out[i] = values_in[order[i]];
      }
    });
    return cudaSuccess;
  }
};

}  // namespace cub

#endif
