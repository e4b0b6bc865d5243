// The host side of cuda_emulation.h: blocks' threads as coroutines, and the CUDA runtime calls of
// the dense CRF's driver acting on host memory.
#include "cuda_emulation.h"

#include <ucontext.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace segdeploy::emulation {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "CUDA emulation: %s\n", what);
  std::abort();
}

namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxBlockThreads = 1024;
constexpr size_t kStackBytes = 256 * 1024;

enum class ThreadState { kRunnable, kAtShuffle, kAtBarrier, kFinished };

// One block: its threads run in turn, each until it reaches a shuffle or a barrier, or ends.
struct Block {
  ucontext_t scheduler;
  ucontext_t threads[kMaxBlockThreads];
  std::unique_ptr<char[]> stacks[kMaxBlockThreads];
  ThreadState state[kMaxBlockThreads];
  uint32_t posted[kMaxBlockThreads];     // what each thread passed to the shuffle it waits at
  uint32_t delivered[kMaxBlockThreads];  // the same, once its whole warp has arrived
  const std::function<void()>* thread = nullptr;
  int size = 0;
  bool met = false;  // a thread reached a shuffle or a barrier
};

thread_local Block* current_block = nullptr;
thread_local int current_thread = 0;

void run_thread() {
  (*current_block->thread)();
  current_block->state[current_thread] = ThreadState::kFinished;
}  // returns to the scheduler through uc_link

// Runs a warp until each of its threads has finished or waits at a barrier: a warp runs ahead of
// the others as far as it may, so that a missing barrier shows as a wrong result.
void run_warp(Block& block, int first) {
  ThreadState* const state = block.state + first;
  for (;;) {
    for (int t = first; t < first + kWarpSize; ++t) {
      if (block.state[t] != ThreadState::kRunnable) continue;
      current_block = &block;
      current_thread = t;
      threadIdx = {unsigned(t), 0, 0};
      if (swapcontext(&block.scheduler, &block.threads[t]) != 0) fail("swapcontext failed");
    }
    const int arrived = int(std::count(state, state + kWarpSize, ThreadState::kAtShuffle));
    if (arrived == 0) return;
    if (arrived != kWarpSize) fail("a shuffle that only part of the warp reached (divergent warp)");
    std::memcpy(block.delivered + first, block.posted + first, kWarpSize * sizeof(uint32_t));
    std::fill(state, state + kWarpSize, ThreadState::kRunnable);
  }
}

void run_block(Block& block) {
  for (int t = 0; t < block.size; ++t) {
    if (!block.stacks[t]) block.stacks[t] = std::make_unique<char[]>(kStackBytes);
    if (getcontext(&block.threads[t]) != 0) fail("getcontext failed");
    block.threads[t].uc_stack.ss_sp = block.stacks[t].get();
    block.threads[t].uc_stack.ss_size = kStackBytes;
    block.threads[t].uc_link = &block.scheduler;
    makecontext(&block.threads[t], run_thread, 0);
    block.state[t] = ThreadState::kRunnable;
  }
  for (;;) {
    for (int first = 0; first < block.size; first += kWarpSize) run_warp(block, first);
    const auto at = [&](ThreadState state) { return int(std::count(block.state, block.state + block.size, state)); };
    if (at(ThreadState::kFinished) == block.size) return;
    if (at(ThreadState::kAtBarrier) != block.size) fail("a barrier that only part of the block reached");
    std::fill(block.state, block.state + block.size, ThreadState::kRunnable);
  }
}

// Where the current thread waits for the rest of its warp or block.
void wait(ThreadState state) {
  if (current_block == nullptr) fail("a shuffle or barrier in a kernel whose first block to run reached none");
  current_block->met = true;
  current_block->state[current_thread] = state;
  if (swapcontext(&current_block->threads[current_thread], &current_block->scheduler) != 0) fail("swapcontext failed");
}

}  // namespace

uint32_t exchange(uint32_t bits, int lane_mask) {
  if (lane_mask < 0 || lane_mask >= kWarpSize) fail("shuffle lane mask out of range");
  const int thread = current_thread;
  if (current_block != nullptr) current_block->posted[thread] = bits;
  wait(ThreadState::kAtShuffle);
  return current_block->delivered[thread ^ lane_mask];
}

void barrier() { wait(ThreadState::kAtBarrier); }

thread_local uint64_t waits = 0;
uint64_t dependency_waits() { return waits; }

// Threads run as coroutines only in kernels that meet: a kernel whose first block to run reaches no
// shuffle or barrier runs its other blocks' threads as plain calls (a coroutine switch costs a
// system call).
void run_grid(int blocks, int threads_per_block, const std::function<void()>& thread) {
  if (blocks < 1 || threads_per_block < 1 || threads_per_block > kMaxBlockThreads ||
      threads_per_block % kWarpSize != 0)
    fail("bad launch configuration");
  static thread_local std::unique_ptr<Block> allocated;
  if (!allocated) allocated = std::make_unique<Block>();
  Block& block = *allocated;
  gridDim = dim3(unsigned(blocks));
  blockDim = dim3(unsigned(threads_per_block));
  block.thread = &thread;
  block.size = threads_per_block;
  block.met = false;
  for (int b = blocks - 1; b >= 0; --b) {  // the last block first: a GPU runs blocks in any order
    blockIdx = {unsigned(b), 0, 0};
    if (b == blocks - 1 || block.met) {
      run_block(block);
      continue;
    }
    current_block = nullptr;
    for (int t = 0; t < threads_per_block; ++t) {
      threadIdx = {unsigned(t), 0, 0};
      thread();
    }
  }
}

}  // namespace segdeploy::emulation

void cudaGridDependencySynchronize() { ++segdeploy::emulation::waits; }

// Streams run their work lazily, in an order a GPU might choose where the program leaves it open,
// so that a missing dependency between streams shows as a wrong result. Work runs when something
// waits for it (a synchronisation, cudaMemcpy for the legacy stream, cudaFree for all), one
// operation at a time, always the most recently enqueued one that may run: the first of a stream
// that is not waiting for another. So a join left out runs the consumer before the producer, and a
// fork left out runs the forked work before what it should have waited for.
//
// A graph is the list of operations recorded, in the order they were enqueued, while its stream
// was captured and on the other streams that joined the capture by waiting for an event recorded
// in it (a fork); each of those must be waited for in turn (a join) before the capture ends, or
// the capture fails as CUDA's does. A graph's operations replay in that recorded order.
struct CUgraph_st {
  std::vector<std::function<void()>> operations;
  std::vector<cudaStream_t> forked;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> operations;
};
struct CUstream_st {
  struct Pending {
    std::function<void()> run;  // or, when null, a wait for `source`'s first `issued` operations
    cudaStream_t source;
    size_t issued;
    uint64_t order;  // when it was enqueued, over all streams
  };
  std::deque<Pending> pending;
  size_t issued = 0, done = 0;  // operations enqueued and run (outside captures)
  bool waiting = false;         // in a wait: its next operation may not run yet
  CUgraph_st* capturing = nullptr;
  uint64_t capture_id = 0;      // which capture `capturing` is
  size_t captured = 0;          // operations recorded in that capture
  size_t captured_waited = 0;   // how many of them another stream of the capture waited for
};
struct CUevent_st {
  std::chrono::steady_clock::time_point recorded;
  cudaStream_t stream = nullptr;  // where it was last recorded (legacy stream: its emulation)
  size_t issued = 0;              // the work there that it follows
  uint64_t capture_id = 0;        // that stream's capture then, or 0
  size_t captured = 0;            // the operations recorded in that capture then
};

namespace {

uint64_t next_order = 0;
uint64_t next_capture_id = 1;
CUstream_st legacy_stream;
std::vector<cudaStream_t> streams{&legacy_stream};  // every stream, for cudaFree

cudaStream_t resolve(cudaStream_t stream) { return stream != nullptr ? stream : &legacy_stream; }

// Runs the most recently enqueued operation that may run; false when none may.
bool run_one() {
  cudaStream_t latest = nullptr;
  for (cudaStream_t stream : streams)
    if (!stream->waiting && !stream->pending.empty() &&
        (latest == nullptr || stream->pending.front().order > latest->pending.front().order))
      latest = stream;
  if (latest == nullptr) return false;
  CUstream_st::Pending next = std::move(latest->pending.front());
  latest->pending.pop_front();
  if (next.run) {
    next.run();
  } else {
    latest->waiting = true;
    while (next.source->done < next.issued)
      if (!run_one()) segdeploy::emulation::fail("streams wait for each other");
    latest->waiting = false;
  }
  ++latest->done;
  return true;
}

void run_until(cudaStream_t stream, size_t issued) {
  while (stream->done < issued)
    if (!run_one()) segdeploy::emulation::fail("streams wait for each other");
}

void run_everything() {
  while (run_one()) {
  }
}

}  // namespace

void segdeploy::emulation::enqueue(cudaStream_t stream, std::function<void()> operation) {
  stream = resolve(stream);
  if (stream->capturing != nullptr) {
    stream->capturing->operations.push_back(std::move(operation));
    ++stream->captured;
  } else {
    stream->pending.push_back({std::move(operation), nullptr, 0, next_order++});
    ++stream->issued;
  }
}

// ---- the CUDA runtime calls of the driver and of src/cuda_runtime.cpp, on host memory -------

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }

// The kernels count as compiled for compute capability 9.0, as the device is.
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, const void*) {
  *attributes = cudaFuncAttributes{};
  attributes->ptxVersion = attributes->binaryVersion = 90;
  return cudaSuccess;
}

// A small device (two processors of 1024 threads), so that grid-stride loops go round many times,
// of compute capability 9.0, so that kernels are launched programmatically.
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  switch (attribute) {
    case cudaDevAttrMultiProcessorCount: *value = 2; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 1024; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}
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
  run_everything();  // as CUDA's, it waits for the device
  std::free(pointer);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, cudaMemcpyKind) {
  run_until(&legacy_stream, legacy_stream.issued);  // it waits for the legacy stream only
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
  stream = resolve(stream);
  if (stream->capturing != nullptr) return cudaErrorStreamCaptureUnsupported;
  run_until(stream, stream->issued);
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  *stream = new CUstream_st{};
  streams.push_back(*stream);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr || stream->capturing != nullptr) return cudaErrorInvalidResourceHandle;
  run_until(stream, stream->issued);  // CUDA finishes its work first
  streams.erase(std::find(streams.begin(), streams.end(), stream));
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode) {
  if (stream == nullptr) return cudaErrorStreamCaptureUnsupported;  // the legacy default stream
  if (stream->capturing != nullptr) return cudaErrorIllegalState;
  run_until(stream, stream->issued);  // earlier work is not part of the capture
  stream->capturing = new CUgraph_st{};
  stream->capture_id = next_capture_id++;
  stream->captured = stream->captured_waited = 0;
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  *status = stream != nullptr && stream->capturing != nullptr ? cudaStreamCaptureStatusActive
                                                              : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  if (stream == nullptr || stream->capturing == nullptr) return cudaErrorIllegalState;
  CUgraph_st* captured = stream->capturing;
  bool joined = true;
  for (cudaStream_t forked : captured->forked) {
    joined = joined && forked->captured_waited == forked->captured;
    forked->capturing = nullptr;
  }
  stream->capturing = nullptr;
  if (!joined) {
    delete captured;
    return cudaErrorStreamCaptureUnjoined;
  }
  *graph = captured;
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t* executable, cudaGraph_t graph, unsigned long long) {
  *executable = new CUgraphExec_st{graph->operations};
  return cudaSuccess;
}
namespace {
int graph_launches = 0;
}
int sd_emulated_graph_launches(void) { return graph_launches; }

cudaError_t cudaGraphLaunch(cudaGraphExec_t executable, cudaStream_t stream) {
  ++graph_launches;
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
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) { return cudaEventCreate(event); }
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  stream = resolve(stream);
  event->stream = stream;
  event->capture_id = stream->capturing != nullptr ? stream->capture_id : 0;
  event->captured = stream->captured;
  if (stream->capturing == nullptr) segdeploy::emulation::enqueue(stream, [event] { event->recorded = std::chrono::steady_clock::now(); });
  event->issued = stream->issued;
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  stream = resolve(stream);
  const cudaStream_t source = event->stream;
  if (source == nullptr) return cudaSuccess;  // never recorded
  const bool captured = event->capture_id != 0 && source->capturing != nullptr && source->capture_id == event->capture_id;
  const uint64_t waiting_capture = stream->capturing != nullptr ? stream->capture_id : 0;
  if (!captured) {
    if (waiting_capture != 0) return cudaErrorStreamCaptureIsolation;
    stream->pending.push_back({nullptr, source, event->issued, next_order++});
    ++stream->issued;
    return cudaSuccess;
  }
  if (waiting_capture == 0) {  // a fork: the stream joins the capture
    if (stream == &legacy_stream) return cudaErrorStreamCaptureImplicit;
    run_until(stream, stream->issued);  // its earlier work is not part of the capture
    stream->capturing = source->capturing;
    stream->capture_id = source->capture_id;
    stream->captured = stream->captured_waited = 0;
    source->capturing->forked.push_back(stream);
  } else if (waiting_capture != event->capture_id) {
    return cudaErrorStreamCaptureIsolation;
  }
  source->captured_waited = std::max(source->captured_waited, event->captured);
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (event->stream != nullptr && event->capture_id == 0) run_until(event->stream, event->issued);
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* milliseconds, cudaEvent_t start, cudaEvent_t end) {
  *milliseconds = std::chrono::duration<float, std::milli>(end->recorded - start->recorded).count();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  cudaEventSynchronize(event);  // its record still pending would write to it
  delete event;
  return cudaSuccess;
}

}  // extern "C"
