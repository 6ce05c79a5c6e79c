#include "core/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <string>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace qleap {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

constexpr int kSpinIterations = 1 << 15;
constexpr int kCallerSpins = 1 << 12;

// Spin briefly (workers usually finish within microseconds of each other), then yield: when the
// machine is oversubscribed a descheduled worker needs this core to finish its share.
void wait_for_zero(const std::atomic<int>& n) {
  for (int spin = 0; n.load(std::memory_order_seq_cst) != 0; ++spin) {
    if (spin < kCallerSpins) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  workers_.reserve(n_threads_ - 1);
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_main(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_main(int ith) {
  uint32_t seen = 0;
  for (;;) {
    uint32_t g = generation_.load(std::memory_order_acquire);
    for (int spin = 0; g == seen && spin < kSpinIterations; ++spin) {
      cpu_relax();
      g = generation_.load(std::memory_order_acquire);
    }
    while (g == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      g = generation_.load(std::memory_order_acquire);
    }
    seen = g;
    if (stop_.load()) return;
    if (g & 1u) {
      // run_shared(): join only while the caller is still inside the job. Entering (active_) before
      // checking the open generation pairs with the caller's close-then-wait (both seq_cst), so the
      // caller either waits for this worker or this worker sees the job closed and leaves the job
      // pointer, which may already belong to a later job, untouched.
      active_.fetch_add(1, std::memory_order_seq_cst);
      if (open_generation_.load(std::memory_order_seq_cst) == g) (*shared_job_)(ith);
      active_.fetch_sub(1, std::memory_order_release);
    } else {
      (*job_)(ith, n_threads_);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
  if (n_threads_ == 1) {
    fn(0, 1);
    return;
  }
  job_ = &fn;
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  publish(false);
  fn(0, n_threads_);
  wait_for_zero(pending_);
  job_ = nullptr;
}

uint32_t ThreadPool::publish(bool shared) {
  // Generations alternate parity by kind (odd: run_shared), so a worker knows which job pointer a
  // generation belongs to without reading anything the caller may be rewriting.
  uint32_t g = generation_.load(std::memory_order_relaxed) + 1;
  if (bool(g & 1u) != shared) ++g;
  if (shared) open_generation_.store(g, std::memory_order_seq_cst);
  generation_.store(g, std::memory_order_release);
  generation_.notify_all();
  return g;
}

void ThreadPool::run_shared(const std::function<void(int)>& fn) {
  if (n_threads_ == 1) {
    fn(0);
    return;
  }
  shared_job_ = &fn;
  publish(true);
  fn(0);
  // Close the job to late joiners, then wait for those inside (they are running: they hold work).
  open_generation_.store(0, std::memory_order_seq_cst);
  wait_for_zero(active_);
  shared_job_ = nullptr;
}

void ThreadPool::parallel_for(int64_t n, int64_t grain,
                              const std::function<void(int64_t, int64_t, int)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (n_threads_ == 1 || n <= grain) {
    fn(0, n, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  run_shared([&](int ith) {
    for (;;) {
      const int64_t b = next.fetch_add(grain, std::memory_order_relaxed);
      if (b >= n) break;
      fn(b, std::min(n, b + grain), ith);
    }
  });
}

int default_thread_count() {
  cpu_set_t set;
  int allowed = 0;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) allowed = CPU_COUNT(&set);
  if (allowed <= 0) allowed = int(std::max(1u, std::thread::hardware_concurrency()));
  // Count distinct (physical id, core id) pairs: SMT siblings share a core's load ports and
  // memory bandwidth, so one thread per core is the better default for bandwidth-bound decode.
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  std::set<std::pair<int, int>> cores;
  int phys = 0;
  while (std::getline(in, line)) {
    if (line.rfind("physical id", 0) == 0) phys = std::stoi(line.substr(line.find(':') + 1));
    if (line.rfind("core id", 0) == 0) cores.insert({phys, std::stoi(line.substr(line.find(':') + 1))});
  }
  const int physical = cores.empty() ? allowed : int(cores.size());
  return std::max(1, std::min(allowed, physical));
}

}  // namespace qleap
