// A quick measurement of the machine's sustained memory read bandwidth, the ceiling for decode
// speed on the CPU (every weight byte is read once per generated token).
#pragma once
#include <cstddef>
#include <string>

#include "core/thread_pool.h"

namespace qleap {

struct BandwidthResult {
  double read_gbps = 0;    // best probe, 1e9 bytes per second
  double median_gbps = 0;  // median probe: far below the best when other work competed
  size_t buffer_bytes = 0;
  int threads = 0;
  int probes = 0;
  // CPU time the probe's threads got per second of wall time, each thread averaged over the probes
  // (the lowest thread): near 1 on an idle machine; lower when other processes took the cores.
  double cpu_share = 1.0;
  double load_avg = 0;  // 1-minute load average before the probe (Linux), 0 when unknown
  bool busy = false;    // the machine looked busy: the figure is likely below its real capacity
  std::string note;     // why it looked busy
};

// Streams through a buffer of at least `bytes` (and at least twice the last-level cache, at most
// 1 GiB) with all pool threads, `probes` times, and reports the best pass.
BandwidthResult measure_read_bandwidth(ThreadPool& pool, size_t bytes = size_t(256) << 20, int probes = 5);

// Size of the largest CPU cache (sysfs), 0 when unknown.
size_t last_level_cache_bytes();

}  // namespace qleap
