// Expert cache policy: which experts of each MoE layer live in fast (GPU) memory. Slots per layer
// come from a byte budget; a missed expert is promoted only after k hits within a window of W
// steps (hysteresis, so one-off experts do not churn the cache); the victim is the least recently
// or least frequently used resident. It can be seeded from a profile and told to prefetch.
//
// This object only decides; it moves no bytes. The CUDA backend will act on its decisions
// (async copies on a separate stream); until then simulate_cache() replays a recorded routing
// trace through it to measure hit rates and the bytes a PCIe link would carry.
#pragma once
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "moe/expert_profile.h"
#include "moe/routing_trace.h"

namespace qleap {

enum class Eviction { kLru, kLfu };

struct ExpertCacheConfig {
  size_t budget_bytes = 0;  // fast memory for experts, all layers together
  size_t expert_bytes = 0;  // one expert (gate + up + down)
  int n_layers = 0;         // MoE layers
  int n_expert = 0;         // experts per layer
  bool dynamic = true;      // false: static placement, never admits or evicts after seeding
  int admit_hits = 2;       // hysteresis: hits within `window` steps needed before promotion
  int window = 32;
  Eviction eviction = Eviction::kLru;
};

struct ExpertCacheStats {
  int64_t hits = 0, misses = 0;
  int64_t promotions = 0, evictions = 0, prefetches = 0;
  int64_t prefetch_used = 0;  // prefetched experts that were then selected before eviction
  uint64_t bytes_moved = 0;   // promotions + prefetches (seeding excluded)
  double hit_rate() const { return hits + misses > 0 ? double(hits) / double(hits + misses) : 0.0; }
};

class ExpertCache {
 public:
  // Throws InvalidArgument on non-positive sizes. A budget below one expert per layer gives 0 slots
  // (every access misses).
  explicit ExpertCache(const ExpertCacheConfig& cfg);

  int slots_per_layer() const { return slots_; }
  // Makes `experts` resident in order until the layer's slots are full (no bytes counted).
  void seed(int layer, const std::vector<int>& experts);
  // One selection of (layer, expert) at step `now` (steps never decrease). Returns whether it was
  // resident. A miss of a dynamic cache promotes the expert once it has admit_hits accesses within
  // the window.
  bool access(int layer, int expert, int64_t now);
  // One token's k selections at a layer: the resident ones are marked used at `now` first, so that
  // a promotion among them never evicts an expert the same token selected (a runtime computes the
  // token's hits before it promotes anything). Returns the number of hits.
  int access_token(int layer, const int32_t* experts, int k, int64_t now);
  // Makes the expert resident ahead of use (bypassing hysteresis); returns whether it was copied.
  bool prefetch(int layer, int expert, int64_t now);
  bool resident(int layer, int expert) const;
  std::vector<int> residents(int layer) const;
  const ExpertCacheStats& stats() const { return st_; }
  void reset_stats() { st_ = {}; }

 private:
  struct Layer {
    std::vector<char> resident, prefetched;
    std::vector<int64_t> last_use, freq;
    std::vector<std::deque<int64_t>> recent;  // access steps within the window
    int n_resident = 0;
  };
  void admit(Layer& l, int expert, int64_t now);
  Layer& layer(int il);
  const Layer& layer(int il) const;

  ExpertCacheConfig cfg_;
  int slots_ = 0;
  std::vector<Layer> layers_;
  ExpertCacheStats st_;
};

const char* eviction_name(Eviction e);
Eviction parse_eviction(const std::string& s);  // "lru" | "lfu"; InvalidArgument otherwise

struct CacheSimResult {
  std::string policy;
  ExpertCacheStats stats;
  int64_t tokens = 0;  // tokens counted (after warm-up)
  double bytes_per_token() const { return tokens > 0 ? double(stats.bytes_moved) / double(tokens) : 0.0; }
};

// Replays trace tokens through a cache: tokens [0, warmup) only warm it, [warmup, n_tokens) are
// counted. seed (optional): each layer starts with its hottest experts. prefetch: before each MoE
// layer but the first, the trace's predicted experts are prefetched (assumes the copy finishes
// before the layer runs, i.e. an upper bound for prefetch).
CacheSimResult simulate_cache(const RoutingTrace& t, const ExpertCacheConfig& cfg, const ExpertProfile* seed,
                              bool prefetch, int64_t warmup, const std::string& name);

}  // namespace qleap
