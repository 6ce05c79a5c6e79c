#include "cli/expert_options.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iostream>

#include "backend/cuda/cuda_api.h"
#include "cli/common.h"
#include "core/error.h"

namespace qleap::cli {

void add_expert_flow_options(CLI::App& cmd, ExpertFlowCliOptions& o, bool with_profile) {
  cmd.add_option("--expert-cache", o.cache,
                 "MoE: keep a cache of experts in fast memory within this budget (bytes, e.g. 8G, or auto); "
                 "misses run on the CPU, promotions and next-layer prefetches are copied asynchronously");
  if (with_profile)
    cmd.add_option("--expert-profile", o.profile,
                   "MoE: expert profile (qleap profile) seeding the expert cache");
  cmd.add_option("--expert-tier", o.tier,
                 "MoE: where --expert-cache holds experts: cuda (GPU memory), or host (RAM slots: runs the "
                 "expert-cache runtime on a CPU-only machine for testing; no speedup)")
      ->check(CLI::IsMember({"host", "cuda"}))
      ->capture_default_str()
      ->each([&o](const std::string&) { o.tier_given = true; });
}

size_t parse_byte_size(const std::string& text) {
  std::string s;
  for (char c : text)
    if (!std::isspace(static_cast<unsigned char>(c))) s += c;
  const auto bad = [&] {
    return InvalidArgument(fmt::format(
        "--expert-cache: expected a byte count such as 4294967296, 512M, 8G or auto, got '{}'", text));
  };
  if (s.empty()) throw bad();
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    throw bad();
  }
  std::string suf = s.substr(used);
  std::transform(suf.begin(), suf.end(), suf.begin(), [](unsigned char c) { return char(std::toupper(c)); });
  double mul = 1;
  if (suf.empty() || suf == "B") {
    mul = 1;
  } else {
    const char u = suf[0];
    const std::string rest = suf.substr(1);
    if (rest != "" && rest != "B" && rest != "IB") throw bad();
    const std::string units = "KMGT";
    const size_t p = units.find(u);
    if (p == std::string::npos) throw bad();
    mul = std::pow(1024.0, double(p + 1));
  }
  const double bytes = v * mul;
  if (!(bytes >= 0) || !std::isfinite(bytes) || bytes > 1e18) throw bad();
  return size_t(bytes);
}

size_t resolve_expert_budget(const std::string& spec, const std::string& tier, const ExpertSet& set) {
  const size_t all = set.expert_bytes * size_t(set.n_expert) * size_t(set.n_moe());
  size_t b = 0;
  if (spec == "auto") {
    if (tier == "cuda") {
      const auto devs = cuda::devices();
      const size_t free = devs.empty() ? 0 : devs[0].free_bytes;
      const size_t reserve = size_t(1) << 30;
      b = free > reserve ? size_t(double(free - reserve) * 0.9) : 0;
    } else {
      b = all / 2;
    }
  } else {
    b = parse_byte_size(spec);
  }
  return std::min(b, all);
}

void check_expert_flow_options(const ExpertFlowCliOptions& o) {
  if (o.cache.empty()) {
    if (!o.profile.empty())
      throw InvalidArgument("--expert-profile needs --expert-cache (the cache it seeds)");
    if (o.tier_given) throw InvalidArgument("--expert-tier needs --expert-cache");
    return;
  }
  if (o.cache != "auto") parse_byte_size(o.cache);
  if (!o.profile.empty()) load_profile(o.profile);
}

std::unique_ptr<ExpertFlow> make_cli_expert_flow(const ExpertFlowCliOptions& o, const Model& model,
                                                 int n_batch, bool quiet,
                                                 std::unique_ptr<ExpertProfile>& profile_out) {
  check_expert_flow_options(o);
  if (o.cache.empty()) return nullptr;
  if (model.hparams().n_expert == 0)
    throw InvalidArgument("--expert-cache: the model is not a mixture-of-experts model");
  if (!o.profile.empty()) profile_out = std::make_unique<ExpertProfile>(load_profile(o.profile));
  if (o.tier == "cuda" && cuda::device_count() == 0) {
    if (!quiet) {
      std::cerr << fmt::format(
          "note: --expert-cache: no CUDA device{}; every expert runs on the CPU "
          "(--expert-tier host exercises the runtime without a GPU)\n",
          cuda::compiled() ? "" : " (this build has no CUDA backend)");
    }
    return nullptr;
  }
  const ExpertSet set = expert_set_of(model);
  ExpertFlowConfig cfg;
  cfg.budget_bytes = resolve_expert_budget(o.cache, o.tier, set);
  cfg.tier = o.tier;
  cfg.prefetch = true;
  cfg.seed = profile_out.get();
  cfg.max_rows = std::max(1, n_batch) * std::max(1, model.hparams().n_expert_used);
  auto flow = std::make_unique<ExpertFlow>(model, cfg);
  if (!quiet) std::cerr << "[" << describe_expert_flow(*flow, cfg) << "]\n";
  return flow;
}

std::string describe_expert_flow(const ExpertFlow& f, const ExpertFlowConfig& cfg) {
  const ExpertSet& s = f.experts();
  return fmt::format(
      "expert cache: tier {}, budget {}, {} of {} experts per layer x {} MoE layers ({} each){}{}{}",
      cfg.tier, human_bytes(double(cfg.budget_bytes)), f.slots_per_layer(), s.n_expert, s.n_moe(),
      human_bytes(double(s.expert_bytes)), cfg.dynamic ? ", dynamic" : ", static",
      cfg.prefetch ? " + prefetch" : "", cfg.seed ? ", seeded from profile" : "");
}

}  // namespace qleap::cli
