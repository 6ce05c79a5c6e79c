// Guided chunking over a thread pool, for short decode dispatches.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>

#include "core/thread_pool.h"

namespace qleap {

// Like ThreadPool::parallel_for, but the chunks shrink as the range drains: each is about
// remaining / threads items, rounded up to a multiple of `grain` (so chunks start at multiples of
// grain), down to one grain at the end. Long contiguous chunks while the range is full, so the
// threads finish within about one grain of each other with a few claims: a decode dispatch on a
// small model lasts microseconds, and waiting on a fixed-size last chunk (parallel_for's) cost a
// measurable share of it. The chunk bounds are fixed before the dispatch, so a claim is one atomic
// increment (the counter's cache line moves between cores once per claim). fn(begin, end, ith).
template <class F>
void parallel_for_guided(ThreadPool& pool, int64_t n, int64_t grain, const F& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (pool.size() == 1 || n <= grain) {
    fn(int64_t{0}, n, 0);
    return;
  }
  constexpr int kMaxChunks = 256;
  // Reached through one pointer, so that std::function keeps the lambda inline (no allocation).
  struct State {
    std::atomic<int> next{0};
    int n_chunks = 0;
    const F* fn;
    int64_t bound[kMaxChunks + 1];
  } st;
  st.fn = &fn;
  const int64_t div = pool.size();
  int64_t b = 0;
  st.bound[0] = 0;
  while (b < n) {
    const int64_t want = std::max(grain, (n - b + div - 1) / div);
    // The last slot takes whatever is left (only with very many threads on a very long range).
    b = st.n_chunks + 1 == kMaxChunks ? n : std::min(n, b + (want + grain - 1) / grain * grain);
    st.bound[++st.n_chunks] = b;
  }
  State* sp = &st;
  pool.run_shared([sp](int ith) {
    State& s = *sp;
    for (int c; (c = s.next.fetch_add(1, std::memory_order_relaxed)) < s.n_chunks;)
      (*s.fn)(s.bound[c], s.bound[c + 1], ith);
  });
}

}  // namespace qleap
