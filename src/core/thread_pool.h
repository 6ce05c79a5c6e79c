// A persistent worker pool tuned for the decode loop: dispatches are frequent (one per matmul) and
// short, so workers spin briefly before sleeping on a futex (std::atomic::wait) between jobs.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace qleap {

class ThreadPool {
 public:
  // n_threads counts the calling thread: ThreadPool(1) runs everything inline.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(ith, nth) once on each of the nth threads (the caller is ith == 0); returns when all
  // have finished. Not reentrant: fn must not call run() on the same pool.
  void run(const std::function<void(int ith, int nth)>& fn);

  // Runs fn(ith) on the caller (ith == 0) and on each worker that picks the job up before the
  // caller's fn returns; a worker that wakes later skips it. For jobs whose threads take their work
  // from a shared counter, so that whoever runs finishes all of it: the caller then waits only for
  // workers that are actually working, never for one the OS has not scheduled yet (on an
  // oversubscribed machine that wait is a whole time slice, for every dispatch).
  void run_shared(const std::function<void(int ith)>& fn);

  // Hands out [0, n) in chunks of `grain` to the threads dynamically (atomic counter, run_shared),
  // which absorbs uneven per-chunk cost, hyperthread noise and workers that are not scheduled.
  void parallel_for(int64_t n, int64_t grain,
                    const std::function<void(int64_t begin, int64_t end, int ith)>& fn);

 private:
  void worker_main(int ith);
  uint32_t publish(bool shared);

  int n_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int, int)>* job_ = nullptr;    // run(): every thread must run it
  const std::function<void(int)>* shared_job_ = nullptr;  // run_shared(): late workers skip it
  alignas(64) std::atomic<uint32_t> generation_{0};
  alignas(64) std::atomic<int> pending_{0};
  // run_shared(): the generation still open to joiners (0: none) and the workers inside it.
  alignas(64) std::atomic<uint32_t> open_generation_{0};
  alignas(64) std::atomic<int> active_{0};
  std::atomic<bool> stop_{false};
};

// Sensible default: physical cores available to this process.
int default_thread_count();

}  // namespace qleap
