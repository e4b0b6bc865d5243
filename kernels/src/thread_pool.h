// A minimal fork-join pool for the CPU kernels.
//
// Unlike an OpenMP loop, a loop here never waits for a thread that has not started on it: the
// calling thread works through the chunks itself and then waits only for chunks that another
// thread has claimed and not finished. On a busy machine, where a worker may not get a core
// for milliseconds, a loop then costs at most what one thread needs, never a scheduler delay
// per loop.
#ifndef SEGDEPLOY_THREAD_POOL_H
#define SEGDEPLOY_THREAD_POOL_H

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

namespace segdeploy {

// Cores this process may run on (its affinity mask where the OS has one).
inline int available_cores() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

class ThreadPool {
 public:
  explicit ThreadPool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& worker : workers_) worker.join();
  }

  int threads() const { return int(workers_.size()) + 1; }

  // Calls body(i) for every i in [0, count), spread over the pool's threads in chunks of at
  // least min_chunk indices; returns when all calls have returned.
  template <typename Body>
  void parallel_for(int64_t count, const Body& body, int64_t min_chunk = 1024) {
    if (count <= 0) return;
    const int64_t chunk = std::max(min_chunk, count / (8 * int64_t(threads())));
    if (workers_.empty() || count <= chunk) {
      for (int64_t i = 0; i < count; ++i) body(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = {&run_range<Body>, &body, count, chunk};
      next_.store(0, std::memory_order_relaxed);
      ++generation_;
    }
    wake_.notify_all();
    run_chunks(job_);
    std::unique_lock<std::mutex> lock(mutex_);
    job_.run = nullptr;  // closed: no worker joins it any more
    done_.wait(lock, [this] { return busy_workers_ == 0; });
  }

 private:
  struct Job {
    void (*run)(const void* body, int64_t begin, int64_t end) = nullptr;
    const void* body = nullptr;
    int64_t count = 0;
    int64_t chunk = 0;
  };

  template <typename Body>
  static void run_range(const void* body, int64_t begin, int64_t end) {
    const Body& call = *static_cast<const Body*>(body);
    for (int64_t i = begin; i < end; ++i) call(i);
  }

  void run_chunks(const Job& job) {
    for (;;) {
      const int64_t begin = next_.fetch_add(job.chunk, std::memory_order_relaxed);
      if (begin >= job.count) return;
      job.run(job.body, begin, std::min(job.count, begin + job.chunk));
    }
  }

  void work() {
    std::unique_lock<std::mutex> lock(mutex_);
    // From the pool's first generation, not the current one: a thread that starts after the first
    // loop was posted still joins it (the first loop after the pool's creation is usually the
    // longest, and thread creation is slow on busy machines).
    uint64_t seen = 0;
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (job_.run == nullptr) continue;  // finished before this thread got a core
      const Job job = job_;
      ++busy_workers_;
      lock.unlock();
      run_chunks(job);
      lock.lock();
      if (--busy_workers_ == 0) done_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  Job job_;
  std::atomic<int64_t> next_{0};
  uint64_t generation_ = 0;
  int busy_workers_ = 0;
  bool stop_ = false;
};

// A pool of `threads` threads kept for the process's later calls (starting threads on every call
// costs tens of microseconds, a tenth of a small convolution), held by one caller at a time: a
// caller that finds it held (another host thread is in the library) gets a pool of its own. The
// kept pools are never destroyed: worker threads outlive static destructors, and a forked child,
// which has none of them, still runs every loop on its calling thread (parallel_for never waits
// for a worker that has not joined).
class PooledThreads {
 public:
  explicit PooledThreads(int threads) {
    if (threads > 1 && threads <= kMaxKept) {
      Slot& slot = slots()[threads];
      std::lock_guard<std::mutex> lock(slot.mutex);
      if (!slot.held) {
        if (slot.pool == nullptr) slot.pool = new ThreadPool(threads);
        slot.held = true;
        kept_ = &slot;
        pool_ = slot.pool;
        return;
      }
    }
    own_ = new ThreadPool(threads);
    pool_ = own_;
  }
  PooledThreads(const PooledThreads&) = delete;
  PooledThreads& operator=(const PooledThreads&) = delete;
  ~PooledThreads() {
    if (kept_ != nullptr) {
      std::lock_guard<std::mutex> lock(kept_->mutex);
      kept_->held = false;
    }
    delete own_;
  }
  ThreadPool& pool() { return *pool_; }

 private:
  static constexpr int kMaxKept = 64;
  struct Slot {
    std::mutex mutex;
    ThreadPool* pool = nullptr;
    bool held = false;
  };
  static Slot* slots() {
    static Slot* kept = new Slot[kMaxKept + 1];
    return kept;
  }
  Slot* kept_ = nullptr;
  ThreadPool* own_ = nullptr;
  ThreadPool* pool_ = nullptr;
};

}  // namespace segdeploy

#endif
