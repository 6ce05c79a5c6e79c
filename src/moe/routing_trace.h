// Routing trace: which experts every token selected at every MoE layer of a run (and, optionally,
// which experts the next MoE layer's router predicted from the previous layer's hidden state).
// Recorded on the CPU forward pass by RoutingRecorder; profiles, cache simulations and prediction
// recall are computed from it.
#pragma once
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "model/model.h"
#include "model/moe_block.h"

namespace qleap {

struct RoutingTrace {
  std::vector<int> moe_layers;  // model layer ids that have experts, ascending
  int n_expert = 0;
  int k = 0;                // experts per token
  size_t expert_bytes = 0;  // bytes of one expert's gate + up + down weights (largest layer)
  int64_t n_tokens = 0;
  // [token][moe layer index][slot], n_tokens * n_moe() * k entries each.
  std::vector<int32_t> ids;
  std::vector<float> weights;
  std::vector<int32_t> predicted;  // -1: no prediction (first MoE layer, or prediction off)

  int n_moe() const { return int(moe_layers.size()); }
  size_t index(int64_t token, int li) const {
    return (size_t(token) * size_t(n_moe()) + size_t(li)) * size_t(k);
  }
  const int32_t* at(int64_t token, int li) const { return ids.data() + index(token, li); }
  const int32_t* predicted_at(int64_t token, int li) const { return predicted.data() + index(token, li); }
  // Appends one token's routing at every MoE layer (ids: n_moe * k); tests and tools.
  void push_token(const std::vector<int32_t>& token_ids, const std::vector<int32_t>& token_pred = {});
};

// Fills an empty trace's shape from a model (moe_layers, n_expert, k, expert_bytes).
RoutingTrace make_trace_for(const Model& model);

// Fraction of actual (token, layer) expert selections that the prediction contained, over the
// (token, layer) pairs that have a prediction; -1 when none has.
double prediction_recall(const RoutingTrace& t);

// The next-layer predictor: applies MoE layer `next`'s FFN norm and router to x (m rows of the
// residual stream entering the previous MoE layer's FFN) and writes each row's top k experts to
// pred (m x k, not renormalized). xn / logits are grow-only scratch.
void predict_experts(const LayerWeights& next, const HParams& hp, const float* x, int m, int k,
                     ThreadPool& pool, std::vector<float>& xn, std::vector<float>& logits, int32_t* pred);

// Records routing from a Session (Session::set_moe_observer). With predict, at each MoE layer l it
// also applies the next MoE layer's FFN norm and router to layer l's residual stream (x entering
// l's FFN) and stores that top-k as the next layer's prediction: one router matmul per layer.
class RoutingRecorder : public MoeObserver {
 public:
  RoutingRecorder(const Model& model, bool predict);
  void on_routing(int il, int pos0, int m, int k, const int32_t* ids, const float* weights, const float* x,
                  const float* xn) override;
  const RoutingTrace& trace() const { return t_; }

 private:
  const Model& model_;
  bool predict_;
  RoutingTrace t_;
  std::vector<int> li_of_layer_;  // model layer -> MoE layer index, -1 for dense layers
  int64_t chunk_base_ = 0;        // first trace token of the chunk being recorded
  ThreadPool pool_{1};
  std::vector<float> xn_, logits_;
  std::vector<int32_t> pred_;
};

}  // namespace qleap
