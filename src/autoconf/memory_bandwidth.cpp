#include "autoconf/memory_bandwidth.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <vector>

#include "core/timer.h"

namespace qleap {
namespace {

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

double load_average() {
  std::ifstream in("/proc/loadavg");
  double l = 0;
  return (in >> l) ? l : 0.0;
}

// "32K", "2048K", "300M" (sysfs cache size) -> bytes.
size_t parse_cache_size(const std::string& s) {
  size_t n = 0, i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') n = n * 10 + size_t(s[i++] - '0');
  if (i < s.size() && (s[i] == 'K' || s[i] == 'k')) return n << 10;
  if (i < s.size() && (s[i] == 'M' || s[i] == 'm')) return n << 20;
  return n;
}

}  // namespace

size_t last_level_cache_bytes() {
  size_t best = 0;
  for (int i = 0; i < 8; ++i) {
    std::ifstream in(fmt::format("/sys/devices/system/cpu/cpu0/cache/index{}/size", i));
    std::string s;
    if (in >> s) best = std::max(best, parse_cache_size(s));
  }
  return best;
}

BandwidthResult measure_read_bandwidth(ThreadPool& pool, size_t bytes, int probes) {
  BandwidthResult res;
  res.load_avg = load_average();
  // Beyond the last-level cache, or the probe measures the cache (some VMs report hundreds of MiB).
  bytes = std::max(bytes, std::min(size_t(1) << 30, 2 * last_level_cache_bytes()));
  const size_t n = bytes / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
  // First touch from the worker threads so pages are placed where they will be read.
  pool.parallel_for(int64_t(n), 1 << 16, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) buf[i] = uint64_t(i) * 0x9e3779b97f4a7c15ull;
  });
  const int nth = pool.size();
  std::vector<uint64_t> sinks(size_t(nth) * 8, 0);
  std::vector<double> share_sum(size_t(nth) * 8, 0.0);
  std::vector<double> rates;
  probes = std::max(1, probes);
  for (int r = 0; r < probes; ++r) {
    Stopwatch sw;
    pool.run([&](int ith, int nth_) {
      const double c0 = thread_cpu_seconds();
      Stopwatch tw;
      const size_t b = n * size_t(ith) / size_t(nth_), e = n * size_t(ith + 1) / size_t(nth_);
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
      const double wall = tw.elapsed();
      if (wall > 0) share_sum[size_t(ith) * 8] += std::min(1.0, (thread_cpu_seconds() - c0) / wall);
    });
    rates.push_back(double(n * sizeof(uint64_t)) / sw.elapsed() / 1e9);
  }
  // Make the reads observable so they cannot be optimised away.
  volatile uint64_t keep = 0;
  for (auto v : sinks) keep = keep ^ v;
  (void)keep;

  std::sort(rates.begin(), rates.end());
  res.read_gbps = rates.back();
  res.median_gbps = rates[rates.size() / 2];
  res.buffer_bytes = n * sizeof(uint64_t);
  res.threads = nth;
  res.probes = probes;
  res.cpu_share = 1.0;
  for (int t = 0; t < nth; ++t) res.cpu_share = std::min(res.cpu_share, share_sum[size_t(t) * 8] / probes);
  std::vector<std::string> why;
  if (res.cpu_share < 0.9)
    why.push_back(
        fmt::format("the probe's threads got {:.0f}% of their wall time on a CPU", 100 * res.cpu_share));
  if (res.load_avg >= double(nth))
    why.push_back(fmt::format("load average {:.1f} with {} threads probing", res.load_avg, nth));
  if (res.read_gbps > 1.5 * res.median_gbps)
    why.push_back(fmt::format("probes spread from {:.1f} to {:.1f} GB/s", rates.front(), res.read_gbps));
  res.busy = !why.empty();
  for (size_t i = 0; i < why.size(); ++i) res.note += (i ? "; " : "") + why[i];
  return res;
}

}  // namespace qleap
