// Expert activation profile of a run (`qleap profile`): per MoE layer, how often each expert was
// selected, which experts are selected together, how often a token reuses the previous token's
// experts, and the entropy of the activation distribution. Written as JSON; read back to seed the
// expert cache (--expert-profile).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "moe/routing_trace.h"

namespace qleap {

struct LayerProfile {
  int layer = 0;                      // model layer id
  std::vector<int64_t> counts;        // selections per expert
  std::vector<double> weight_sum;     // summed routing weight per expert
  std::vector<int64_t> coactivation;  // n_expert x n_expert: tokens selecting both (diagonal = counts)
  double entropy_bits = 0;            // of counts / sum(counts); uniform = log2(n_expert)
  double reuse_rate = 0;              // share of a token's experts also selected by the previous token
  // Experts by descending count (ties: lower id first).
  std::vector<int> hottest() const;
};

struct ExpertProfile {
  std::string model;
  int n_expert = 0;
  int k = 0;
  int64_t n_tokens = 0;
  size_t expert_bytes = 0;
  double prediction_recall = -1;  // -1: not measured
  std::vector<LayerProfile> layers;
};

ExpertProfile build_profile(const RoutingTrace& t, const std::string& model_name = "");
// Profile of trace tokens [begin, end) only.
ExpertProfile build_profile(const RoutingTrace& t, int64_t begin, int64_t end, const std::string& model_name);

std::string profile_to_json(const ExpertProfile& p);
// Throws FormatError on malformed input, IoError when the file cannot be read.
ExpertProfile profile_from_json(const std::string& text);
ExpertProfile load_profile(const std::string& path);
void save_profile(const ExpertProfile& p, const std::string& path);

// Human summary: per layer the top experts with their share, entropy, reuse; and the totals.
std::string profile_summary(const ExpertProfile& p, int top_n = 8);

}  // namespace qleap
