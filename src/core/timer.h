#pragma once
#include <chrono>

namespace qleap {

inline double now_seconds() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

struct Stopwatch {
  double start = now_seconds();
  double elapsed() const { return now_seconds() - start; }
  void reset() { start = now_seconds(); }
};

}  // namespace qleap
