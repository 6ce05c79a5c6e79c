#include "autoconf/memory_bandwidth.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "core/timer.h"

namespace qleap {

BandwidthResult measure_read_bandwidth(ThreadPool& pool, size_t bytes, int reps) {
  const size_t n = bytes / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
  // First touch from the worker threads so pages are placed where they will be read.
  pool.parallel_for(int64_t(n), 1 << 16, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) buf[i] = uint64_t(i) * 0x9e3779b97f4a7c15ull;
  });
  std::vector<uint64_t> sinks(size_t(pool.size()) * 8, 0);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    Stopwatch sw;
    pool.run([&](int ith, int nth) {
      const size_t b = n * size_t(ith) / size_t(nth), e = n * size_t(ith + 1) / size_t(nth);
      // Four independent accumulators keep the loop load-bound rather than latency-bound; the
      // compiler vectorises the xors.
      uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      size_t i = b;
      for (; i + 4 <= e; i += 4) {
        a0 ^= buf[i];
        a1 ^= buf[i + 1];
        a2 ^= buf[i + 2];
        a3 ^= buf[i + 3];
      }
      for (; i < e; ++i) a0 ^= buf[i];
      sinks[size_t(ith) * 8] = a0 ^ a1 ^ a2 ^ a3;
    });
    const double s = sw.elapsed();
    best = std::max(best, double(n * sizeof(uint64_t)) / s / 1e9);
  }
  // Make the reads observable so they cannot be optimised away.
  volatile uint64_t keep = 0;
  for (auto v : sinks) keep = keep ^ v;
  (void)keep;
  return BandwidthResult{best, n * sizeof(uint64_t), pool.size()};
}

}  // namespace qleap
