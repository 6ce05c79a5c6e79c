#include "moe/expert_flow.h"

#include <fmt/format.h>

#include <algorithm>

#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "core/error.h"
#include "moe/routing_trace.h"

namespace qleap {

ExpertCacheConfig expert_cache_config(const ExpertFlowConfig& c, const ExpertSet& s) {
  ExpertCacheConfig cc;
  cc.budget_bytes = c.budget_bytes;
  cc.expert_bytes = s.expert_bytes;
  cc.n_layers = s.n_moe();
  cc.n_expert = s.n_expert;
  cc.dynamic = c.dynamic;
  cc.admit_hits = c.admit_hits;
  cc.window = c.window;
  cc.eviction = c.eviction;
  return cc;
}

ExpertFlow::ExpertFlow(const Model& model, const ExpertFlowConfig& cfg)
    : model_(model), cfg_(cfg), set_(expert_set_of(model)), cache_(expert_cache_config(cfg, set_)) {
  slots_ = cache_.slots_per_layer();
  const int k = std::max(1, model.hparams().n_expert_used);
  const int max_rows = cfg.max_rows > 0 ? cfg.max_rows : 512 * k;
  tier_ = make_expert_tier(cfg.tier, set_, slots_, max_rows);
  li_of_layer_.assign(model.weights().layers.size(), -1);
  for (int li = 0; li < set_.n_moe(); ++li) li_of_layer_[size_t(set_.moe_layers[size_t(li)])] = li;
  slot_of_.assign(size_t(set_.n_moe()) * size_t(set_.n_expert), -1);
  expert_in_.assign(size_t(set_.n_moe()) * size_t(slots_), -1);
  if (cfg.seed != nullptr) {
    const ExpertProfile& p = *cfg.seed;
    if (int(p.layers.size()) != set_.n_moe() || p.n_expert != set_.n_expert) {
      throw InvalidArgument(fmt::format("expert profile has {} MoE layers x {} experts, the model {} x {}",
                                        p.layers.size(), p.n_expert, set_.n_moe(), set_.n_expert));
    }
    for (int li = 0; li < set_.n_moe(); ++li) {
      cache_.seed(li, p.layers[size_t(li)].hottest());
      for (int e : cache_.residents(li)) place(li, e);
    }
    tier_->wait_uploads();
  }
  st_.seed_bytes = tier_->bytes_uploaded();
  bytes_base_ = tier_->bytes_uploaded();
  uploads_base_ = tier_->uploads_done();
}

ExpertFlow::~ExpertFlow() {
  // Computes reference caller-owned buffers; uploads read the model, which outlives us.
  tier_->sync();
}

void ExpertFlow::place(int li, int e) {
  if (!cache_.resident(li, e) || slot_of(li, e) >= 0) return;
  int free = -1;
  for (int s = 0; s < slots_; ++s) {
    int& x = expert_in(li, s);
    if (x >= 0 && !cache_.resident(li, x)) {
      slot_of(li, x) = -1;
      x = -1;
    }
    if (x < 0 && free < 0) free = s;
  }
  if (free < 0) throw InvalidArgument("expert flow: the policy holds more experts than the tier has slots");
  expert_in(li, free) = e;
  slot_of(li, e) = free;
  tier_->upload(li, e, free);
}

void ExpertFlow::run_experts(const MoeWeights& w, int il, const LayerCtx& ctx, const float* xn,
                             const int32_t* ids, const float* wts, float* out) {
  const int li = il >= 0 && il < int(li_of_layer_.size()) ? li_of_layer_[size_t(il)] : -1;
  if (li < 0) throw InvalidArgument(fmt::format("expert flow: layer {} has no experts", il));
  const HParams& hp = ctx.hp;
  const int m = ctx.m, k = hp.n_expert_used, n = hp.n_embd, ne = w.n_expert(), mk = m * k;
  const int nf = int(w.gate[0].rows);
  const ExpertActivation& act = set_.act;
  if (li == 0) {
    base_ = next_step_;
    next_step_ += m;
    st_.tokens += m;
  }
  if (cfg_.wait_uploads) tier_->wait_uploads();
  if (pred_layer_ == li && pred_m_ == m) {
    for (int t = 0; t < m; ++t) {
      const int32_t* p = pred_.data() + size_t(t) * k;
      for (int j = 0; j < k; ++j) st_.predicted_found += std::find(p, p + k, ids[t * k + j]) != p + k;
    }
    st_.predicted += mk;
  }
  pred_layer_ = -1;

  // Where each selected expert runs: its slot when resident and landed, else -1 (the CPU).
  tier_slot_.assign(size_t(ne), -1);
  for (int i = 0; i < mk; ++i) {
    const int e = ids[i], s = slot_of(li, e);
    if (s >= 0 && tier_slot_[size_t(e)] < 0 && tier_->ready(li, s)) tier_slot_[size_t(e)] = s;
    if (tier_slot_[size_t(e)] >= 0) {
      ++st_.tier_computed;
    } else {
      ++st_.cpu_computed;
      st_.in_flight += s >= 0;
    }
  }

  y_.resize(size_t(mk) * n);
  float* y = y_.data();
  std::fill(out, out + size_t(m) * n, 0.0f);
  if (moe_pairwise(m, k, ctx.pool.size())) {
    // As the CPU path: every (token, expert) pair alone, summed in pair order.
    miss_.clear();
    for (int i = 0; i < mk; ++i) {
      const int s = tier_slot_[size_t(ids[i])];
      if (s >= 0) {
        tier_->compute(li, s, xn + size_t(i / k) * n, 1, y + size_t(i) * n);
      } else {
        miss_.push_back(i);
      }
    }
    g_.resize(size_t(mk) * nf);
    u_.resize(size_t(mk) * nf);
    if (!miss_.empty()) {
      ctx.pool.parallel_for(int64_t(miss_.size()), 1, [&](int64_t b, int64_t e, int) {
        thread_local ThreadPool solo(1);
        for (int64_t j = b; j < e; ++j) {
          const int i = miss_[size_t(j)], t = i / k, ex = ids[i];
          float* gi = g_.data() + size_t(i) * nf;
          float* ui = u_.data() + size_t(i) * nf;
          matmul(w.gate[size_t(ex)], xn + size_t(t) * n, 1, gi, solo);
          matmul(w.up[size_t(ex)], xn + size_t(t) * n, 1, ui, solo);
          expert_glu(act, expert_gate_bias(w, ex, nf), expert_up_bias(w, ex, nf), gi, ui, nf, 1);
          matmul(w.down[size_t(ex)], gi, 1, y + size_t(i) * n, solo);
          add_rows_bias(y + size_t(i) * n, expert_down_bias(w, ex, n), n, 1);
        }
      });
    }
    tier_->sync();
    for (int i = 0; i < mk; ++i) axpy_f32(wts[i], y + size_t(i) * n, out + size_t(i / k) * n, n);
  } else {
    // As the CPU path: rows grouped by expert, summed in ascending expert order.
    start_.assign(size_t(ne) + 1, 0);
    for (int i = 0; i < mk; ++i) ++start_[size_t(ids[i]) + 1];
    for (int e = 0; e < ne; ++e) start_[size_t(e) + 1] += start_[size_t(e)];
    fill_.assign(start_.begin(), start_.end() - 1);
    rows_.resize(size_t(mk));
    for (int i = 0; i < mk; ++i) rows_[size_t(fill_[size_t(ids[i])]++)] = i;
    xg_.resize(size_t(mk) * n);
    const auto gather = [&](int e) {
      const int b = start_[size_t(e)], cnt = start_[size_t(e) + 1] - b;
      for (int i = 0; i < cnt; ++i) {
        const int t = rows_[size_t(b + i)] / k;
        std::copy(xn + size_t(t) * n, xn + size_t(t + 1) * n, xg_.data() + size_t(b + i) * n);
      }
      return xg_.data() + size_t(b) * n;
    };
    // Tier work first, so that it runs while the CPU computes the misses.
    for (int e = 0; e < ne; ++e) {
      const int b = start_[size_t(e)], cnt = start_[size_t(e) + 1] - b;
      if (cnt == 0 || tier_slot_[size_t(e)] < 0) continue;
      tier_->compute(li, tier_slot_[size_t(e)], gather(e), cnt, y + size_t(b) * n);
    }
    g_.resize(size_t(m) * nf);
    u_.resize(size_t(m) * nf);
    for (int e = 0; e < ne; ++e) {
      const int b = start_[size_t(e)], cnt = start_[size_t(e) + 1] - b;
      if (cnt == 0 || tier_slot_[size_t(e)] >= 0) continue;
      const float* xin = gather(e);
      matmul(w.gate[size_t(e)], xin, cnt, g_.data(), ctx.pool);
      matmul(w.up[size_t(e)], xin, cnt, u_.data(), ctx.pool);
      expert_glu(act, expert_gate_bias(w, e, nf), expert_up_bias(w, e, nf), g_.data(), u_.data(), nf, cnt);
      matmul(w.down[size_t(e)], g_.data(), cnt, y + size_t(b) * n, ctx.pool);
      add_rows_bias(y + size_t(b) * n, expert_down_bias(w, e, n), n, cnt);
    }
    tier_->sync();
    for (int e = 0; e < ne; ++e) {
      for (int i = start_[size_t(e)]; i < start_[size_t(e) + 1]; ++i) {
        const int r = rows_[size_t(i)];
        axpy_f32(wts[r], y + size_t(i) * n, out + size_t(r / k) * n, n);
      }
    }
  }

  // The policy sees the selections token by token, as simulate_cache replays a trace; every
  // promotion becomes an upload now, off the critical path (the next use of the slot checks it).
  // Within a token a promotion never evicts another of its experts (access_token), so at most one
  // expert is evicted per promotion and uploads match the policy's bytes one for one.
  for (int t = 0; t < m; ++t) {
    const int32_t* tid = ids + size_t(t) * k;
    if (cache_.access_token(li, tid, k, base_ + t) == k) continue;
    for (int j = 0; j < k; ++j) place(li, tid[j]);
  }
  if (cfg_.prefetch && li + 1 < set_.n_moe()) {
    const LayerWeights& next = model_.weights().layers[size_t(set_.moe_layers[size_t(li + 1)])];
    pred_.resize(size_t(mk));
    predict_experts(next, hp, ctx.a.x.get(), m, k, ctx.pool, pxn_, plog_, pred_.data());
    for (int t = 0; t < m; ++t) {
      for (int j = 0; j < k; ++j) {
        const int e = pred_[size_t(t * k + j)];
        if (cache_.prefetch(li + 1, e, base_ + t)) place(li + 1, e);
      }
    }
    pred_layer_ = li + 1;
    pred_m_ = m;
  }
}

ExpertFlowStats ExpertFlow::stats() const {
  ExpertFlowStats s = st_;
  s.upload_bytes = tier_->bytes_uploaded() - bytes_base_;
  s.uploads = tier_->uploads_done() - uploads_base_;
  return s;
}

void ExpertFlow::reset_stats() {
  const uint64_t seed = st_.seed_bytes;
  st_ = {};
  st_.seed_bytes = seed;
  bytes_base_ = tier_->bytes_uploaded();
  uploads_base_ = tier_->uploads_done();
  cache_.reset_stats();
}

}  // namespace qleap
