// Replays repeated dense CRF calls from CUDA graphs (GraphCache), keyed by everything that a
// call's kernels depend on (CallKey).
#ifndef SEGDEPLOY_CUDA_GRAPH_CACHE_H
#define SEGDEPLOY_CUDA_GRAPH_CACHE_H

#include <algorithm>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <utility>

#include "../src/cuda_launch.cuh"
#include "segdeploy/densecrf.h"

namespace segdeploy::densecrf {
namespace {  // for densecrf_cuda.cu, the one translation unit that includes it

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
    // cudaGraphInstantiate's parameters differ between CUDA 11 and 12; these are the same since 11.4.
    if (!captured || cudaGraphInstantiateWithFlags(&executable, graph, 0) != cudaSuccess) executable = nullptr;
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

#endif
