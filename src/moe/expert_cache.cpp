#include "moe/expert_cache.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"

namespace qleap {

ExpertCache::ExpertCache(const ExpertCacheConfig& cfg) : cfg_(cfg) {
  if (cfg.expert_bytes == 0 || cfg.n_layers <= 0 || cfg.n_expert <= 0 || cfg.admit_hits <= 0 ||
      cfg.window <= 0) {
    throw InvalidArgument(
        fmt::format("expert cache: bad config (expert bytes {}, layers {}, experts {}, admit {}, window {})",
                    cfg.expert_bytes, cfg.n_layers, cfg.n_expert, cfg.admit_hits, cfg.window));
  }
  const size_t per_layer = cfg.budget_bytes / size_t(cfg.n_layers);
  slots_ = int(std::min<size_t>(size_t(cfg.n_expert), per_layer / cfg.expert_bytes));
  layers_.resize(size_t(cfg.n_layers));
  for (Layer& l : layers_) {
    l.resident.assign(size_t(cfg.n_expert), 0);
    l.prefetched.assign(size_t(cfg.n_expert), 0);
    l.last_use.assign(size_t(cfg.n_expert), -1);
    l.freq.assign(size_t(cfg.n_expert), 0);
    l.recent.resize(size_t(cfg.n_expert));
  }
}

ExpertCache::Layer& ExpertCache::layer(int il) {
  if (il < 0 || il >= cfg_.n_layers)
    throw InvalidArgument(fmt::format("expert cache: layer {} out of range", il));
  return layers_[size_t(il)];
}
const ExpertCache::Layer& ExpertCache::layer(int il) const {
  return const_cast<ExpertCache*>(this)->layer(il);
}

bool ExpertCache::resident(int il, int e) const {
  const Layer& l = layer(il);
  if (e < 0 || e >= cfg_.n_expert)
    throw InvalidArgument(fmt::format("expert cache: expert {} out of range", e));
  return l.resident[size_t(e)] != 0;
}

std::vector<int> ExpertCache::residents(int il) const {
  const Layer& l = layer(il);
  std::vector<int> out;
  for (int e = 0; e < cfg_.n_expert; ++e) {
    if (l.resident[size_t(e)]) out.push_back(e);
  }
  return out;
}

void ExpertCache::seed(int il, const std::vector<int>& experts) {
  Layer& l = layer(il);
  for (int e : experts) {
    if (l.n_resident >= slots_) break;
    if (e < 0 || e >= cfg_.n_expert)
      throw InvalidArgument(fmt::format("expert cache: expert {} out of range", e));
    if (l.resident[size_t(e)]) continue;
    l.resident[size_t(e)] = 1;
    ++l.n_resident;
  }
}

// Evicts when full, then marks `expert` resident. An expert used at step `now` is never evicted:
// it was just computed from its slot (or is this step's prefetch), so when every resident is in
// use the promotion waits for a later step. A runtime then uploads exactly what the policy admits.
void ExpertCache::admit(Layer& l, int expert, int64_t now) {
  if (slots_ == 0) return;
  if (l.n_resident >= slots_) {
    int victim = -1;
    auto worse = [&](int a, int b) {  // a is a better victim than b
      const bool a_now = l.last_use[size_t(a)] == now, b_now = l.last_use[size_t(b)] == now;
      if (a_now != b_now) return !a_now;
      if (cfg_.eviction == Eviction::kLfu && l.freq[size_t(a)] != l.freq[size_t(b)])
        return l.freq[size_t(a)] < l.freq[size_t(b)];
      return l.last_use[size_t(a)] < l.last_use[size_t(b)];
    };
    for (int e = 0; e < cfg_.n_expert; ++e) {
      if (l.resident[size_t(e)] && (victim < 0 || worse(e, victim))) victim = e;
    }
    if (l.last_use[size_t(victim)] == now) return;
    l.resident[size_t(victim)] = 0;
    l.prefetched[size_t(victim)] = 0;
    --l.n_resident;
    ++st_.evictions;
  }
  l.resident[size_t(expert)] = 1;
  ++l.n_resident;
  st_.bytes_moved += cfg_.expert_bytes;
}

bool ExpertCache::access(int il, int e, int64_t now) {
  Layer& l = layer(il);
  if (e < 0 || e >= cfg_.n_expert)
    throw InvalidArgument(fmt::format("expert cache: expert {} out of range", e));
  const size_t i = size_t(e);
  ++l.freq[i];
  std::deque<int64_t>& r = l.recent[i];
  r.push_back(now);
  while (!r.empty() && r.front() <= now - cfg_.window) r.pop_front();
  const bool hit = l.resident[i] != 0;
  if (hit) {
    ++st_.hits;
    if (l.prefetched[i]) {
      ++st_.prefetch_used;
      l.prefetched[i] = 0;
    }
  } else {
    ++st_.misses;
    if (cfg_.dynamic && int(r.size()) >= cfg_.admit_hits) {
      admit(l, e, now);
      if (l.resident[i]) ++st_.promotions;
    }
  }
  l.last_use[i] = now;
  return hit;
}

int ExpertCache::access_token(int il, const int32_t* experts, int k, int64_t now) {
  Layer& l = layer(il);
  for (int j = 0; j < k; ++j) {
    const int e = experts[j];
    if (e >= 0 && e < cfg_.n_expert && l.resident[size_t(e)]) l.last_use[size_t(e)] = now;
  }
  int hits = 0;
  for (int j = 0; j < k; ++j) hits += access(il, experts[j], now);
  return hits;
}

bool ExpertCache::prefetch(int il, int e, int64_t now) {
  Layer& l = layer(il);
  if (e < 0 || e >= cfg_.n_expert)
    throw InvalidArgument(fmt::format("expert cache: expert {} out of range", e));
  if (l.resident[size_t(e)] || slots_ == 0) return false;
  admit(l, e, now);
  if (!l.resident[size_t(e)]) return false;
  // A prefetched expert counts as used now so that the next prefetches of this step keep it.
  l.last_use[size_t(e)] = now;
  l.prefetched[size_t(e)] = 1;
  ++st_.prefetches;
  return true;
}

const char* eviction_name(Eviction e) {
  return e == Eviction::kLru ? "lru" : "lfu";
}

Eviction parse_eviction(const std::string& s) {
  if (s == "lru") return Eviction::kLru;
  if (s == "lfu") return Eviction::kLfu;
  throw InvalidArgument(fmt::format("eviction '{}' (expected lru or lfu)", s));
}

CacheSimResult simulate_cache(const RoutingTrace& t, const ExpertCacheConfig& cfg, const ExpertProfile* seed,
                              bool prefetch, int64_t warmup, const std::string& name) {
  ExpertCache cache(cfg);
  if (seed != nullptr) {
    if (int(seed->layers.size()) != t.n_moe() || seed->n_expert != t.n_expert) {
      throw InvalidArgument(fmt::format("profile has {} layers x {} experts, the trace {} x {}",
                                        seed->layers.size(), seed->n_expert, t.n_moe(), t.n_expert));
    }
    for (int li = 0; li < t.n_moe(); ++li) cache.seed(li, seed->layers[size_t(li)].hottest());
  }
  warmup = std::clamp<int64_t>(warmup, 0, t.n_tokens);
  for (int64_t tok = 0; tok < t.n_tokens; ++tok) {
    if (tok == warmup) cache.reset_stats();
    for (int li = 0; li < t.n_moe(); ++li) {
      if (prefetch) {
        const int32_t* p = t.predicted_at(tok, li);
        for (int j = 0; j < t.k && p[0] >= 0; ++j) cache.prefetch(li, p[j], tok);
      }
      cache.access_token(li, t.at(tok, li), t.k, tok);
    }
  }
  CacheSimResult r;
  r.policy = name;
  r.stats = cache.stats();
  r.tokens = t.n_tokens - warmup;
  return r;
}

}  // namespace qleap
