#include "moe/routing_trace.h"

#include <fmt/format.h>

#include <algorithm>

#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "core/error.h"

namespace qleap {

void RoutingTrace::push_token(const std::vector<int32_t>& token_ids, const std::vector<int32_t>& token_pred) {
  const size_t n = size_t(n_moe()) * size_t(k);
  if (token_ids.size() != n || (!token_pred.empty() && token_pred.size() != n)) {
    throw InvalidArgument(
        fmt::format("push_token: {} ids for {} MoE layers x {} experts", token_ids.size(), n_moe(), k));
  }
  ids.insert(ids.end(), token_ids.begin(), token_ids.end());
  weights.insert(weights.end(), n, 1.0f / float(std::max(k, 1)));
  if (token_pred.empty()) {
    predicted.insert(predicted.end(), n, -1);
  } else {
    predicted.insert(predicted.end(), token_pred.begin(), token_pred.end());
  }
  ++n_tokens;
}

RoutingTrace make_trace_for(const Model& model) {
  RoutingTrace t;
  const HParams& hp = model.hparams();
  t.n_expert = hp.n_expert;
  t.k = hp.n_expert_used;
  const auto& layers = model.weights().layers;
  for (int il = 0; il < int(layers.size()); ++il) {
    const LayerWeights& w = layers[size_t(il)];
    if (!w.is_moe()) continue;
    t.moe_layers.push_back(il);
    const MoeWeights& m = w.moe;
    t.expert_bytes = std::max(t.expert_bytes, m.gate[0].row_bytes * size_t(m.gate[0].rows) +
                                                  m.up[0].row_bytes * size_t(m.up[0].rows) +
                                                  m.down[0].row_bytes * size_t(m.down[0].rows));
  }
  return t;
}

double prediction_recall(const RoutingTrace& t) {
  int64_t found = 0, total = 0;
  for (int64_t tok = 0; tok < t.n_tokens; ++tok) {
    for (int li = 0; li < t.n_moe(); ++li) {
      const int32_t* p = t.predicted_at(tok, li);
      if (t.k == 0 || p[0] < 0) continue;
      const int32_t* a = t.at(tok, li);
      for (int j = 0; j < t.k; ++j) found += std::find(p, p + t.k, a[j]) != p + t.k;
      total += t.k;
    }
  }
  return total == 0 ? -1.0 : double(found) / double(total);
}

RoutingRecorder::RoutingRecorder(const Model& model, bool predict)
    : model_(model), predict_(predict), t_(make_trace_for(model)) {
  if (t_.moe_layers.empty()) throw InvalidArgument("the model has no mixture-of-experts layers");
  li_of_layer_.assign(model.weights().layers.size(), -1);
  for (int li = 0; li < t_.n_moe(); ++li) li_of_layer_[size_t(t_.moe_layers[size_t(li)])] = li;
}

void RoutingRecorder::on_routing(int il, int /*pos0*/, int m, int k, const int32_t* ids, const float* weights,
                                 const float* x, const float* /*xn*/) {
  const int li = li_of_layer_.at(size_t(il));
  if (li < 0 || k != t_.k) return;
  const size_t per_tok = size_t(t_.n_moe()) * size_t(k);
  if (li == 0) {
    chunk_base_ = t_.n_tokens;
    t_.n_tokens += m;
    t_.ids.resize(size_t(t_.n_tokens) * per_tok, -1);
    t_.weights.resize(size_t(t_.n_tokens) * per_tok, 0.0f);
    t_.predicted.resize(size_t(t_.n_tokens) * per_tok, -1);
  }
  for (int t = 0; t < m; ++t) {
    const size_t o = t_.index(chunk_base_ + t, li);
    std::copy(ids + size_t(t) * k, ids + size_t(t + 1) * k, t_.ids.begin() + std::ptrdiff_t(o));
    std::copy(weights + size_t(t) * k, weights + size_t(t + 1) * k, t_.weights.begin() + std::ptrdiff_t(o));
  }
  if (!predict_ || li + 1 >= t_.n_moe()) return;
  const LayerWeights& next = model_.weights().layers[size_t(t_.moe_layers[size_t(li + 1)])];
  pred_.resize(size_t(m) * k);
  predict_experts(next, model_.hparams(), x, m, k, pool_, xn_, logits_, pred_.data());
  for (int t = 0; t < m; ++t) {
    std::copy(pred_.begin() + std::ptrdiff_t(t) * k, pred_.begin() + std::ptrdiff_t(t + 1) * k,
              t_.predicted.begin() + std::ptrdiff_t(t_.index(chunk_base_ + t, li + 1)));
  }
}

void predict_experts(const LayerWeights& next, const HParams& hp, const float* x, int m, int k,
                     ThreadPool& pool, std::vector<float>& xn, std::vector<float>& logits, int32_t* pred) {
  const int n = hp.n_embd, ne = next.moe.n_expert();
  xn.resize(size_t(m) * n);
  logits.resize(size_t(m) * ne + size_t(k));
  for (int t = 0; t < m; ++t)
    rms_norm(x + size_t(t) * n, next.ffn_norm.data(), xn.data() + size_t(t) * n, n, hp.rms_eps);
  matmul(next.moe.router, xn.data(), m, logits.data(), pool);
  float* w = logits.data() + size_t(m) * ne;  // the weights are not needed
  const float* bias = next.moe.probs_bias.empty() ? nullptr : next.moe.probs_bias.data();
  for (int t = 0; t < m; ++t) {
    // The same selection rule as the forward's (DeepSeek's bias and groups), so a prediction is a guess
    // about the next layer's input only.
    if (hp.routing_grouped() || bias != nullptr) {
      moe_route_grouped(logits.data() + size_t(t) * ne, ne, k, hp, bias, pred + size_t(t) * k, w);
    } else {
      moe_route(logits.data() + size_t(t) * ne, ne, k, false, pred + size_t(t) * k, w);
    }
  }
}

}  // namespace qleap
