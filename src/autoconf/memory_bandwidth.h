// A quick measurement of the machine's sustained memory read bandwidth, the ceiling for decode
// speed on the CPU (every weight byte is read once per generated token).
#pragma once
#include <cstddef>

#include "core/thread_pool.h"

namespace qleap {

struct BandwidthResult {
  double read_gbps = 0;  // best of the repetitions, 1e9 bytes per second
  size_t buffer_bytes = 0;
  int threads = 0;
};

// Streams through a buffer of `bytes` (default 256 MiB, well beyond any cache) with all pool
// threads, `reps` times, and reports the best pass.
BandwidthResult measure_read_bandwidth(ThreadPool& pool, size_t bytes = size_t(256) << 20, int reps = 5);

}  // namespace qleap
