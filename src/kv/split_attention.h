// Flash-decoding on the CPU threads, shared by every host cache format: a call with few (query token,
// kv head) work items (decode) cuts each item's key range into slices computed in parallel; each
// slice leaves a partial softmax state {max m, sum l, acc[head_dim]} per query head, and merge()
// rescales the slices to their common maximum.
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "core/thread_pool.h"

namespace qleap {

// Slices per item: enough items for about 4 per thread, none shorter than min_keys; 1 when the call
// already has at least 2 items per thread, or the keys are too few to split.
int key_splits(int n_threads, int64_t base_items, int n_keys_max, int min_keys);

class SplitPartials {
 public:
  // Room for n_items items of `heads` head states of head_dim each (grows once, then reused).
  void reserve(int64_t n_items, int heads, int head_dim);
  // Writes the state of head h of an item.
  void put(int64_t item, int h, float m, float l, const float* acc);
  // out (head_dim floats) = the normalized merge of head h over items [base, base + n_split).
  // Slices that saw no key (l == 0) are skipped. sink: the head's attention sink logit (KvShape::
  // attn_sinks), which joins the denominator; -inf: none.
  // Returns the keys' total softmax weight (1 without a sink).
  float merge(int64_t base, int n_split, int h, float* out,
              float sink = -std::numeric_limits<float>::infinity()) const;

 private:
  const float* state(int64_t item, int h) const;
  std::vector<float> buf_;
  int heads_ = 0, head_dim_ = 0;
};

// Runs fn(item) for every item in [0, n_items): on the pool, or inline when the pool has one thread,
// there is one item, or the work (in multiply-adds) is below what a dispatch costs.
void run_items(ThreadPool& pool, int64_t n_items, double work, const std::function<void(int64_t)>& fn);

}  // namespace qleap
