// The host side of cuda_emulation.h: warps as coroutines, and the CUDA runtime calls of the
// dense CRF's driver acting on host memory.
#include "cuda_emulation.h"

#include <ucontext.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace segdeploy::emulation {
namespace {

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 256 * 1024;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "CUDA emulation: %s\n", what);
  std::abort();
}

// One warp: its lanes run in turn, each until it reaches a shuffle or ends.
struct Warp {
  ucontext_t scheduler;
  ucontext_t lanes[kWarpSize];
  std::unique_ptr<char[]> stacks[kWarpSize];
  bool waiting[kWarpSize];
  bool finished[kWarpSize];
  uint32_t posted[kWarpSize];     // what each lane passed to the shuffle it waits at
  uint32_t delivered[kWarpSize];  // the same, once every lane has arrived
  const std::function<void()>* thread = nullptr;
  unsigned first_thread = 0;  // threadIdx.x of lane 0
  bool shuffled = false;      // a lane reached a shuffle
};

thread_local Warp* current_warp = nullptr;
thread_local int current_lane = 0;

void run_lane() {
  (*current_warp->thread)();
  current_warp->finished[current_lane] = true;
}  // returns to the scheduler through uc_link

void run_warp(Warp& warp) {
  for (int lane = 0; lane < kWarpSize; ++lane) {
    if (!warp.stacks[lane]) warp.stacks[lane] = std::make_unique<char[]>(kStackBytes);
    if (getcontext(&warp.lanes[lane]) != 0) fail("getcontext failed");
    warp.lanes[lane].uc_stack.ss_sp = warp.stacks[lane].get();
    warp.lanes[lane].uc_stack.ss_size = kStackBytes;
    warp.lanes[lane].uc_link = &warp.scheduler;
    makecontext(&warp.lanes[lane], run_lane, 0);
    warp.finished[lane] = false;
  }
  for (;;) {
    int waiting = 0, finished = 0;
    for (int lane = 0; lane < kWarpSize; ++lane) {
      if (warp.finished[lane]) continue;
      current_warp = &warp;
      current_lane = lane;
      threadIdx = {warp.first_thread + unsigned(lane), 0, 0};
      warp.waiting[lane] = false;
      if (swapcontext(&warp.scheduler, &warp.lanes[lane]) != 0) fail("swapcontext failed");
    }
    for (int lane = 0; lane < kWarpSize; ++lane) {
      waiting += warp.waiting[lane];
      finished += warp.finished[lane];
    }
    if (finished == kWarpSize) return;
    if (waiting != kWarpSize) fail("a shuffle that only part of the warp reached (divergent warp)");
    std::memcpy(warp.delivered, warp.posted, sizeof warp.posted);
  }
}

}  // namespace

uint32_t exchange(uint32_t bits, int lane_mask) {
  if (current_warp == nullptr) fail("a shuffle in a kernel whose first warp did not shuffle");
  Warp& warp = *current_warp;
  const int lane = current_lane;
  if (lane_mask < 0 || lane_mask >= kWarpSize) fail("shuffle lane mask out of range");
  warp.shuffled = true;
  warp.posted[lane] = bits;
  warp.waiting[lane] = true;
  if (swapcontext(&warp.lanes[lane], &warp.scheduler) != 0) fail("swapcontext failed");
  return warp.delivered[lane ^ lane_mask];
}

// Warps run as coroutines only in kernels that shuffle: a kernel whose first warp reaches no
// shuffle runs its other threads as plain calls (a coroutine switch costs a system call).
void run_grid(int blocks, int threads_per_block, const std::function<void()>& thread) {
  if (blocks < 1 || threads_per_block < 1 || threads_per_block % kWarpSize != 0) fail("bad launch configuration");
  static thread_local Warp warp;
  gridDim = dim3(unsigned(blocks));
  blockDim = dim3(unsigned(threads_per_block));
  warp.thread = &thread;
  warp.shuffled = false;
  for (int block = 0; block < blocks; ++block) {
    blockIdx = {unsigned(block), 0, 0};
    for (int first = 0; first < threads_per_block; first += kWarpSize) {
      const bool first_warp = block == 0 && first == 0;
      if (first_warp || warp.shuffled) {
        warp.first_thread = unsigned(first);
        run_warp(warp);
        continue;
      }
      current_warp = nullptr;
      for (int lane = 0; lane < kWarpSize; ++lane) {
        threadIdx = {unsigned(first + lane), 0, 0};
        thread();
      }
    }
  }
}

}  // namespace segdeploy::emulation

// Streams and graphs: a graph is the list of operations recorded while its stream was captured.
struct CUgraph_st {
  std::vector<std::function<void()>> operations;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> operations;
};
struct CUstream_st {
  CUgraph_st* capturing = nullptr;
};

void segdeploy::emulation::enqueue(cudaStream_t stream, std::function<void()> operation) {
  if (stream != nullptr && stream->capturing != nullptr) stream->capturing->operations.push_back(std::move(operation));
  else operation();
}

// ---- the CUDA runtime calls of the driver and of src/cuda_runtime.cpp, on host memory -------

struct CUevent_st {
  std::chrono::steady_clock::time_point recorded;
};

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char* cudaGetErrorName(cudaError_t error) { return error == cudaSuccess ? "cudaSuccess" : "cudaError"; }
const char* cudaGetErrorString(cudaError_t error) { return error == cudaSuccess ? "no error" : "emulated CUDA error"; }

// New memory is all ones bits (NaN as float, -1 as int) so that a read before any write shows.
cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  const size_t rounded = (bytes + 255) / 256 * 256;
  *pointer = std::aligned_alloc(256, rounded);
  if (*pointer == nullptr) return cudaErrorMemoryAllocation;
  std::memset(*pointer, 0xff, rounded);
  return cudaSuccess;
}
cudaError_t cudaFree(void* pointer) {
  std::free(pointer);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, cudaMemcpyKind) {
  std::memcpy(destination, source, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* destination, const void* source, size_t bytes, cudaMemcpyKind, cudaStream_t stream) {
  segdeploy::emulation::enqueue(stream, [=] { std::memcpy(destination, source, bytes); });
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t stream) {
  segdeploy::emulation::enqueue(stream, [=] { std::memset(pointer, value, bytes); });
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  return stream != nullptr && stream->capturing != nullptr ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  *stream = new CUstream_st{};
  return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode) {
  if (stream == nullptr) return cudaErrorStreamCaptureUnsupported;  // the legacy default stream
  if (stream->capturing != nullptr) return cudaErrorIllegalState;
  stream->capturing = new CUgraph_st{};
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  *status = stream != nullptr && stream->capturing != nullptr ? cudaStreamCaptureStatusActive
                                                              : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  if (stream == nullptr || stream->capturing == nullptr) return cudaErrorIllegalState;
  *graph = stream->capturing;
  stream->capturing = nullptr;
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* executable, cudaGraph_t graph, unsigned long long) {
  *executable = new CUgraphExec_st{graph->operations};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t executable, cudaStream_t stream) {
  for (const auto& operation : executable->operations) segdeploy::emulation::enqueue(stream, operation);
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t executable) {
  delete executable;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new CUevent_st{};
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  event->recorded = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* milliseconds, cudaEvent_t start, cudaEvent_t end) {
  *milliseconds = std::chrono::duration<float, std::milli>(end->recorded - start->recorded).count();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}

}  // extern "C"
