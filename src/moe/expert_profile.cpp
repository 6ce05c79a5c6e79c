#include "moe/expert_profile.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/error.h"
#include "core/file_io.h"
#include "core/json_int.h"

namespace qleap {

std::vector<int> LayerProfile::hottest() const {
  std::vector<int> order(counts.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return counts[size_t(a)] > counts[size_t(b)]; });
  return order;
}

ExpertProfile build_profile(const RoutingTrace& t, const std::string& model_name) {
  return build_profile(t, 0, t.n_tokens, model_name);
}

ExpertProfile build_profile(const RoutingTrace& t, int64_t begin, int64_t end,
                            const std::string& model_name) {
  if (begin < 0 || end > t.n_tokens || begin > end) {
    throw InvalidArgument(
        fmt::format("profile range [{}, {}) outside the trace's {} tokens", begin, end, t.n_tokens));
  }
  ExpertProfile p;
  p.model = model_name;
  p.n_expert = t.n_expert;
  p.k = t.k;
  p.n_tokens = end - begin;
  p.expert_bytes = t.expert_bytes;
  const size_t ne = size_t(t.n_expert);
  for (int li = 0; li < t.n_moe(); ++li) {
    LayerProfile lp;
    lp.layer = t.moe_layers[size_t(li)];
    lp.counts.assign(ne, 0);
    lp.weight_sum.assign(ne, 0.0);
    lp.coactivation.assign(ne * ne, 0);
    int64_t reused = 0, reuse_total = 0;
    for (int64_t tok = begin; tok < end; ++tok) {
      const int32_t* a = t.at(tok, li);
      const float* w = t.weights.data() + t.index(tok, li);
      for (int j = 0; j < t.k; ++j) {
        lp.counts[size_t(a[j])]++;
        lp.weight_sum[size_t(a[j])] += w[j];
        for (int i = 0; i < t.k; ++i) lp.coactivation[size_t(a[j]) * ne + size_t(a[i])]++;
      }
      if (tok > begin) {
        const int32_t* prev = t.at(tok - 1, li);
        for (int j = 0; j < t.k; ++j) reused += std::find(prev, prev + t.k, a[j]) != prev + t.k;
        reuse_total += t.k;
      }
    }
    const double total = double(std::accumulate(lp.counts.begin(), lp.counts.end(), int64_t(0)));
    for (int64_t c : lp.counts) {
      if (c > 0) lp.entropy_bits -= double(c) / total * std::log2(double(c) / total);
    }
    lp.reuse_rate = reuse_total > 0 ? double(reused) / double(reuse_total) : 0.0;
    p.layers.push_back(std::move(lp));
  }
  // Recall over the same token range.
  int64_t found = 0, n = 0;
  for (int64_t tok = begin; tok < end; ++tok) {
    for (int li = 0; li < t.n_moe(); ++li) {
      const int32_t* pr = t.predicted_at(tok, li);
      if (t.k == 0 || pr[0] < 0) continue;
      const int32_t* a = t.at(tok, li);
      for (int j = 0; j < t.k; ++j) found += std::find(pr, pr + t.k, a[j]) != pr + t.k;
      n += t.k;
    }
  }
  p.prediction_recall = n > 0 ? double(found) / double(n) : -1.0;
  return p;
}

std::string profile_to_json(const ExpertProfile& p) {
  nlohmann::json j;
  j["format"] = "qleap-expert-profile-1";
  j["model"] = p.model;
  j["n_expert"] = p.n_expert;
  j["experts_per_token"] = p.k;
  j["n_tokens"] = p.n_tokens;
  j["expert_bytes"] = p.expert_bytes;
  if (p.prediction_recall >= 0) j["prediction_recall"] = p.prediction_recall;
  j["layers"] = nlohmann::json::array();
  for (const LayerProfile& l : p.layers) {
    j["layers"].push_back({{"layer", l.layer},
                           {"counts", l.counts},
                           {"weight_sum", l.weight_sum},
                           {"coactivation", l.coactivation},
                           {"entropy_bits", l.entropy_bits},
                           {"reuse_rate", l.reuse_rate}});
  }
  return j.dump();
}

ExpertProfile profile_from_json(const std::string& text) {
  try {
    const auto j = nlohmann::json::parse(text);
    if (j.value("format", "") != "qleap-expert-profile-1") throw FormatError("not a qleap expert profile");
    ExpertProfile p;
    p.model = j.value("model", "");
    p.n_expert = json_integer<int>(j.at("n_expert"), "expert profile: n_expert");
    p.k = json_integer<int>(j.at("experts_per_token"), "expert profile: experts_per_token");
    p.n_tokens = json_integer<int64_t>(j.at("n_tokens"), "expert profile: n_tokens");
    p.expert_bytes = j.contains("expert_bytes")
                         ? json_integer<size_t>(j["expert_bytes"], "expert profile: expert_bytes")
                         : 0;
    p.prediction_recall = j.value("prediction_recall", -1.0);
    if (p.n_expert <= 0 || p.k <= 0 || p.k > p.n_expert)
      throw FormatError("expert profile: bad n_expert / k");
    for (const auto& l : j.at("layers")) {
      LayerProfile lp;
      lp.layer = json_integer<int>(l.at("layer"), "expert profile: layer");
      lp.counts = json_integers<int64_t>(l.at("counts"), "expert profile: counts");
      lp.weight_sum = l.value("weight_sum", std::vector<double>(lp.counts.size(), 0.0));
      if (l.contains("coactivation"))
        lp.coactivation = json_integers<int64_t>(l["coactivation"], "expert profile: coactivation");
      lp.entropy_bits = l.value("entropy_bits", 0.0);
      lp.reuse_rate = l.value("reuse_rate", 0.0);
      if (int(lp.counts.size()) != p.n_expert) throw FormatError("expert profile: counts size != n_expert");
      p.layers.push_back(std::move(lp));
    }
    return p;
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("expert profile: {}", e.what()));
  }
}

ExpertProfile load_profile(const std::string& path) {
  return profile_from_json(read_file(path));
}

void save_profile(const ExpertProfile& p, const std::string& path) {
  std::ofstream out(path);
  if (!out) throw IoError(fmt::format("cannot write '{}'", path));
  out << profile_to_json(p) << "\n";
  if (!out) throw IoError(fmt::format("error writing '{}'", path));
}

std::string profile_summary(const ExpertProfile& p, int top_n) {
  std::string s =
      fmt::format("{} tokens, {} MoE layers, {} experts, {} per token; uniform entropy {:.2f} bits\n",
                  p.n_tokens, p.layers.size(), p.n_expert, p.k, std::log2(double(p.n_expert)));
  s += fmt::format("{:>5} {:>8} {:>7} {:>10}  top experts (share of selections)\n", "layer", "entropy",
                   "reuse", "top-half");
  double ent = 0, reuse = 0, half = 0;
  for (const LayerProfile& l : p.layers) {
    const double total = double(std::accumulate(l.counts.begin(), l.counts.end(), int64_t(0)));
    const std::vector<int> hot = l.hottest();
    double top_half = 0;  // share of selections served by the hottest half of the experts
    for (size_t i = 0; i < hot.size() / 2; ++i) top_half += double(l.counts[size_t(hot[i])]);
    top_half = total > 0 ? top_half / total : 0;
    std::string tops;
    for (int i = 0; i < std::min<int>(top_n, int(hot.size())); ++i) {
      tops += fmt::format("{}{}:{:.1f}%", i ? " " : "", hot[size_t(i)],
                          total > 0 ? 100.0 * double(l.counts[size_t(hot[size_t(i)])]) / total : 0.0);
    }
    s += fmt::format("{:>5} {:>8.2f} {:>6.1f}% {:>9.1f}%  {}\n", l.layer, l.entropy_bits, 100 * l.reuse_rate,
                     100 * top_half, tops);
    ent += l.entropy_bits;
    reuse += l.reuse_rate;
    half += top_half;
  }
  if (!p.layers.empty()) {
    const double n = double(p.layers.size());
    s += fmt::format("mean: entropy {:.2f} bits, token-to-token reuse {:.1f}%, hottest half serves {:.1f}%\n",
                     ent / n, 100 * reuse / n, 100 * half / n);
  }
  if (p.prediction_recall >= 0) {
    s += fmt::format("next-layer prediction recall (layer l+1 router on layer l's hidden state): {:.1f}%\n",
                     100 * p.prediction_recall);
  }
  return s;
}

}  // namespace qleap
