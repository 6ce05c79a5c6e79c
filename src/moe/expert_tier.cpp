#include "moe/expert_tier.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "moe/host_expert_tier.h"

namespace qleap {

ExpertSet expert_set_of(const Model& model) {
  ExpertSet s;
  const auto& layers = model.weights().layers;
  s.n_embd = model.hparams().n_embd;
  s.act = expert_activation_of(model.hparams());
  for (int il = 0; il < int(layers.size()); ++il) {
    const LayerWeights& w = layers[size_t(il)];
    if (!w.is_moe()) continue;
    const MoeWeights& m = w.moe;
    s.moe_layers.push_back(il);
    s.layers.push_back(&m);
    s.n_expert = std::max(s.n_expert, m.n_expert());
    s.n_ff = std::max(s.n_ff, int(m.gate[0].rows));
    const bool biased = !m.gate_b.empty() || !m.up_b.empty() || !m.down_b.empty();
    s.biases = s.biases || biased;
    const size_t bias_bytes = biased ? (2 * size_t(m.gate[0].rows) + size_t(s.n_embd)) * sizeof(float) : 0;
    s.expert_bytes = std::max(s.expert_bytes, m.gate[0].row_bytes * size_t(m.gate[0].rows) +
                                                  m.up[0].row_bytes * size_t(m.up[0].rows) +
                                                  m.down[0].row_bytes * size_t(m.down[0].rows) + bias_bytes);
  }
  if (s.moe_layers.empty()) throw InvalidArgument("the model has no mixture-of-experts layers");
  return s;
}

#ifndef QLEAP_HAVE_CUDA
// Without nvcc moe/cuda_expert_tier.cu is not compiled.
std::unique_ptr<ExpertTier> make_cuda_expert_tier(const ExpertSet&, int, int) {
  throw Unsupported("--expert-tier cuda: this build has no CUDA backend (configure with nvcc installed)");
}
#endif

std::unique_ptr<ExpertTier> make_expert_tier(const std::string& kind, const ExpertSet& set,
                                             int slots_per_layer, int max_rows) {
  if (kind == "host") return std::make_unique<HostExpertTier>(set, slots_per_layer);
  if (kind == "cuda") return make_cuda_expert_tier(set, slots_per_layer, max_rows);
  throw InvalidArgument(fmt::format("expert tier '{}' (expected host or cuda)", kind));
}

}  // namespace qleap
