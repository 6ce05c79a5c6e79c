#include "server/metrics.h"

namespace qleap::server {

void RateWindow::expire(std::chrono::steady_clock::time_point now) {
  const auto limit = now - std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                               std::chrono::duration<double>(window_s_));
  while (!ev_.empty() && ev_.front().first < limit) {
    sum_ -= ev_.front().second;
    ev_.pop_front();
  }
}

void RateWindow::add(uint64_t n) {
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lk(mu_);
  expire(now);
  // Events within 100 ms share an entry: at most 10 per second of window, whatever the load (one
  // entry per generated token grew to tens of thousands under load).
  if (!ev_.empty() && now - ev_.back().first < std::chrono::milliseconds(100)) {
    ev_.back().second += n;
  } else {
    ev_.emplace_back(now, n);
  }
  sum_ += n;
}

double RateWindow::rate() {
  std::lock_guard<std::mutex> lk(mu_);
  expire(std::chrono::steady_clock::now());
  return double(sum_) / window_s_;
}

}  // namespace qleap::server
