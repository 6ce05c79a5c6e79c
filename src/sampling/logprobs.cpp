#include "sampling/logprobs.h"

#include <algorithm>
#include <cmath>

namespace qleap {

LogprobEntry token_logprobs(const float* logits, int n_vocab, int32_t chosen, int top_n) {
  LogprobEntry e;
  e.token = chosen;
  if (n_vocab <= 0) return e;
  float mx = -INFINITY;
  for (int i = 0; i < n_vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0;
  for (int i = 0; i < n_vocab; ++i) {
    if (std::isfinite(logits[i])) sum += std::exp(double(logits[i]) - double(mx));
  }
  const double log_z = double(mx) + std::log(sum);
  auto lp = [&](int i) { return float(double(logits[i]) - log_z); };
  if (chosen >= 0 && chosen < n_vocab) e.logprob = lp(chosen);
  const int k = std::clamp(top_n, 0, n_vocab);
  if (k == 0) return e;
  // Heap of the k best so far, the worst of them on top.
  auto better = [](const TokenLogprob& a, const TokenLogprob& b) {
    return a.logprob > b.logprob || (a.logprob == b.logprob && a.token < b.token);
  };
  std::vector<TokenLogprob> heap;
  heap.reserve(size_t(k));
  for (int i = 0; i < n_vocab; ++i) {
    const TokenLogprob t{i, logits[i]};
    if (int(heap.size()) < k) {
      heap.push_back(t);
      std::push_heap(heap.begin(), heap.end(), better);
    } else if (better(t, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), better);
      heap.back() = t;
      std::push_heap(heap.begin(), heap.end(), better);
    }
  }
  std::sort(heap.begin(), heap.end(), better);
  for (auto& t : heap) t.logprob = lp(t.token);
  e.top = std::move(heap);
  return e;
}

}  // namespace qleap
