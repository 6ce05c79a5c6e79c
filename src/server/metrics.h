// Server-wide counters for /metrics, /api/qleap/status and the web UI.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>

namespace qleap::server {

// Events of the last window_s seconds; rate() = their sum / window_s.
class RateWindow {
 public:
  explicit RateWindow(double window_s = 10.0) : window_s_(window_s) {}
  void add(uint64_t n);
  double rate();

 private:
  void expire(std::chrono::steady_clock::time_point now);
  double window_s_;
  std::mutex mu_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, uint64_t>> ev_;
  uint64_t sum_ = 0;
};

struct Metrics {
  std::atomic<uint64_t> requests_total{0};
  std::atomic<uint64_t> requests_failed_total{0};
  std::atomic<uint64_t> requests_rejected_total{0};   // 503: queue full
  std::atomic<uint64_t> requests_cancelled_total{0};  // client went away
  std::atomic<uint64_t> tokens_generated_total{0};
  std::atomic<uint64_t> tokens_prompt_total{0};
  std::atomic<uint64_t> model_loads_total{0};
  std::atomic<uint64_t> model_unloads_total{0};
  RateWindow gen_rate;
  RateWindow prompt_rate;
  void generated(uint64_t n) {
    tokens_generated_total += n;
    gen_rate.add(n);
  }
  void prompted(uint64_t n) {
    tokens_prompt_total += n;
    prompt_rate.add(n);
  }
};

}  // namespace qleap::server
