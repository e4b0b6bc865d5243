// How the CUDA kernels are launched: the block size, programmatic dependent launch (the host's
// launch_kernel and the kernels' follow_previous_kernel), the device traits that size grids, a
// side stream for work that runs beside the caller's, and the per-phase GPU time profile.
// CUDA code only (it declares device functions); kernels/tests/cuda_emulation.h runs it on the host.
#ifndef SEGDEPLOY_CUDA_LAUNCH_CUH
#define SEGDEPLOY_CUDA_LAUNCH_CUH

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "cuda_check.h"

namespace segdeploy {
namespace {  // for the CUDA translation units that include it (the kernels' device code is theirs)

constexpr int kThreads = 256;  // threads per block of every kernel

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

// What a driver needs to know of the device it runs on.
struct DeviceTraits {
  int resident_blocks = 1;           // blocks of kThreads that it runs at once (when registers allow)
  bool programmatic_launch = false;  // kernels may launch while the one before them finishes (sm_90+)
};

// `kernel_code`: any of the caller's kernels (all are compiled for the same architectures).
Error query_device_traits(int device, const void* kernel_code, DeviceTraits* traits) {
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
  SD_RETURN_IF_ERROR(cuda_error(cudaFuncGetAttributes(&kernel, kernel_code), "cudaFuncGetAttributes"));
  traits->resident_blocks = std::max(1, processors * (threads_per_processor / kThreads));
  traits->programmatic_launch = major >= 9 && kernel.ptxVersion >= 90;
  return {};
}

// The traits of `device`, queried at its first call only: they do not change.
Error device_traits(int device, const void* kernel_code, DeviceTraits* traits) {
  static std::mutex mutex;
  static std::map<int, DeviceTraits> known;
  std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(device);
  if (found != known.end()) {
    *traits = found->second;
    return {};
  }
  SD_RETURN_IF_ERROR(query_device_traits(device, kernel_code, traits));
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

}  // namespace
}  // namespace segdeploy

#endif
