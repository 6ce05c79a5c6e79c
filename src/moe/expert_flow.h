// ExpertFlow: runs a MoE model's routed experts with a cache of experts in a fast tier (the GPU in
// deployment; moe/expert_tier.h). Attention and dense weights stay where the session puts them;
// per MoE layer and forward:
//   1. experts selected by the router that the tier holds, and whose upload has landed, are queued
//      on the tier; a resident expert whose copy is still in flight counts as a miss (the critical
//      path never waits for a copy);
//   2. meanwhile the misses are computed on the CPU thread pool, from the weights in RAM;
//   3. sync, then the expert outputs are summed with the routing weights in the CPU path's order;
//   4. the ExpertCache policy is told about every selection; each promotion it decides becomes an
//      asynchronous upload into the slot of the expert it evicted;
//   5. with prefetch, the next MoE layer's router applied to this layer's residual stream predicts
//      the next layer's experts, which are prefetched (also asynchronous uploads).
// Results equal the plain CPU path bit for bit when the tier computes like the CPU (HostExpertTier):
// every expert sees the same rows in the same grouping, and the sums run in the same order.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/moe_block.h"
#include "moe/expert_cache.h"
#include "moe/expert_profile.h"
#include "moe/expert_tier.h"

namespace qleap {

struct ExpertFlowConfig {
  size_t budget_bytes = 0;  // fast-tier bytes for experts, all MoE layers together
  bool dynamic = true;      // false: static placement (the seed, never changed)
  int admit_hits = 2;       // hysteresis (ExpertCacheConfig)
  int window = 32;
  Eviction eviction = Eviction::kLru;
  bool prefetch = false;                // next-layer prediction + prefetch
  const ExpertProfile* seed = nullptr;  // each layer starts with the profile's hottest experts
  std::string tier = "host";            // make_expert_tier kind
  int max_rows = 0;                     // rows per forward (n_batch * k); 0: 512 * k
  // Tests and upper-bound measurements: before each layer, wait for the uploads in flight, so
  // that every policy hit is computed on the tier (as if copies were instantaneous).
  bool wait_uploads = false;
};

struct ExpertFlowStats {
  int64_t tokens = 0;
  int64_t tier_computed = 0;                   // (token, expert) selections computed on the tier
  int64_t cpu_computed = 0;                    // ... on the CPU, including in_flight
  int64_t in_flight = 0;                       // resident by policy, but the upload had not landed
  int64_t predicted = 0, predicted_found = 0;  // prefetch predictions checked against the routing
  uint64_t upload_bytes = 0;                   // uploads landed since the stats were reset
  int64_t uploads = 0;
  uint64_t seed_bytes = 0;  // uploads of the initial (profile) placement
  double hit_rate() const {
    const int64_t all = tier_computed + cpu_computed;
    return all > 0 ? double(tier_computed) / double(all) : 0.0;
  }
  double recall() const { return predicted > 0 ? double(predicted_found) / double(predicted) : -1.0; }
};

// The cache-policy config a flow runs: the flow's policy fields with the experts' shape and size.
ExpertCacheConfig expert_cache_config(const ExpertFlowConfig& c, const ExpertSet& s);

class ExpertFlow : public MoeExecutor {
 public:
  // Builds the policy and the tier and uploads the seed placement (waiting for it: this is load
  // time). Throws InvalidArgument (no MoE layers, a profile of another shape, bad sizes) or
  // Unsupported (the tier cannot be made).
  ExpertFlow(const Model& model, const ExpertFlowConfig& cfg);
  ~ExpertFlow() override;

  void run_experts(const MoeWeights& w, int il, const LayerCtx& ctx, const float* xn, const int32_t* ids,
                   const float* wts, float* out) override;

  const ExpertCache& cache() const { return cache_; }
  ExpertTier& tier() { return *tier_; }
  const ExpertSet& experts() const { return set_; }
  int slots_per_layer() const { return cache_.slots_per_layer(); }
  ExpertFlowStats stats() const;
  // Clears the flow's and the cache's counters (the placement stays).
  void reset_stats();

 private:
  int& slot_of(int li, int e) { return slot_of_[size_t(li) * size_t(set_.n_expert) + size_t(e)]; }
  int& expert_in(int li, int s) { return expert_in_[size_t(li) * size_t(slots_) + size_t(s)]; }
  // After the policy changed layer li (e was admitted), frees the slots of evicted experts and
  // uploads e into one.
  void place(int li, int e);

  const Model& model_;
  ExpertFlowConfig cfg_;
  ExpertSet set_;
  ExpertCache cache_;
  int slots_ = 0;
  std::unique_ptr<ExpertTier> tier_;
  std::vector<int> li_of_layer_;  // model layer -> MoE layer index
  std::vector<int> slot_of_;      // [li][expert] -> slot, -1
  std::vector<int> expert_in_;    // [li][slot] -> expert, -1
  int64_t next_step_ = 0, base_ = 0;
  ExpertFlowStats st_;
  uint64_t bytes_base_ = 0;
  int64_t uploads_base_ = 0;

  // Per-forward scratch (grow-only).
  std::vector<int> tier_slot_, miss_, start_, fill_;
  std::vector<int32_t> rows_;
  std::vector<float> xg_, y_, g_, u_;
  std::vector<float> pxn_, plog_;
  std::vector<int32_t> pred_;
  int pred_layer_ = -1, pred_m_ = 0;
};

}  // namespace qleap
