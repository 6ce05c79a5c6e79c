#include "cli/bench_moe.h"

#include <fmt/format.h>

#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "backend/cuda/cuda_api.h"
#include "core/cpu_features.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/timer.h"
#include "model/model.h"
#include "moe/expert_cache.h"
#include "moe/expert_flow.h"
#include "moe/expert_profile.h"
#include "moe/routing_trace.h"
#include "moe/transfer_compression.h"
#include "quant/ggml_type.h"
#include "runtime/kv_calibrate.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace qleap::cli {
namespace {

std::vector<int32_t> bench_tokens(const Model& model, const MoeBenchOptions& mo, int n) {
  std::vector<int32_t> ids;
  if (!mo.text.empty()) {
    ids = Tokenizer::from_gguf(model.file()).encode(read_file(mo.text), false, false);
    if (int(ids.size()) < n) {
      throw InvalidArgument(fmt::format("'{}' has {} tokens, the bench needs {}", mo.text, ids.size(), n));
    }
    ids.resize(size_t(n));
    return ids;
  }
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> pick(0, model.n_vocab() - 1);
  for (int i = 0; i < n; ++i) ids.push_back(pick(rng));
  return ids;
}

// Prefill of the first n_prompt tokens, then the rest one at a time; returns {pp tok/s, tg tok/s}.
std::pair<double, double> run_once(Session& s, const std::vector<int32_t>& ids, int n_prompt) {
  s.reset();
  Stopwatch sw;
  s.eval(std::vector<int32_t>(ids.begin(), ids.begin() + n_prompt));
  const double pp = n_prompt / sw.elapsed();
  Stopwatch sw2;
  for (size_t i = size_t(n_prompt); i < ids.size(); ++i) s.eval({ids[i]});
  const double tg = double(ids.size() - size_t(n_prompt)) / sw2.elapsed();
  return {pp, tg};
}

struct TierRun {
  std::string policy;
  ExpertFlowStats st;
  double tg = 0;
};

// Runs the bench tokens with an ExpertFlow attached: prefill (not counted, it warms the cache),
// then the decode tokens, timed and counted.
TierRun run_with_flow(Session& s, const Model& model, const ExpertFlowConfig& fc,
                      const std::vector<int32_t>& ids, int n_prompt, const std::string& name) {
  ExpertFlow flow(model, fc);
  s.set_moe_executor(&flow);
  s.reset();
  s.eval(std::vector<int32_t>(ids.begin(), ids.begin() + n_prompt));
  flow.tier().wait_uploads();
  flow.reset_stats();
  Stopwatch sw;
  for (size_t i = size_t(n_prompt); i < ids.size(); ++i) s.eval({ids[i]});
  TierRun r;
  r.tg = double(ids.size() - size_t(n_prompt)) / sw.elapsed();
  flow.tier().wait_uploads();
  s.set_moe_executor(nullptr);
  r.policy = name;
  r.st = flow.stats();
  return r;
}

}  // namespace

void bench_moe_command(const CommonOptions& common, int n_prompt, int n_gen, int reps, bool json,
                       const MoeBenchOptions& mo) {
  if (!mo.experts.cache.empty() && mo.experts.cache != "auto") parse_byte_size(mo.experts.cache);
  const std::string path = resolve_model(common.model);
  auto model = load_model(path);
  const HParams& hp = model->hparams();
  if (hp.n_expert == 0) throw InvalidArgument(fmt::format("'{}' is not a mixture-of-experts model", path));
  if (n_prompt <= 0 || n_gen <= 0) throw InvalidArgument("bench --moe needs -p > 0 and -n > 0");
  if (!(mo.budget_frac >= 0 && mo.budget_frac <= 1)) throw InvalidArgument("--moe-budget must be in [0, 1]");
  SessionOptions so{common.ctx, common.threads, common.kv, std::max(common.batch, n_prompt)};
  so.kv_calibration_dir = default_kv_calibration_dir();  // calibrate once per model file
  if (so.n_ctx == 0) so.n_ctx = n_prompt + n_gen + 16;
  Session session(model, so);
  const std::vector<int32_t> ids = bench_tokens(*model, mo, n_prompt + n_gen);

  // (a) measured: all experts in RAM, computed on the CPU.
  run_once(session, std::vector<int32_t>(ids.begin(), ids.begin() + std::min(n_prompt, 16) + 1),
           std::min(n_prompt, 16));  // warm-up
  double pp = 0, tg = 0;
  for (int r = 0; r < reps; ++r) {
    auto [a, b] = run_once(session, ids, n_prompt);
    pp += a / reps;
    tg += b / reps;
  }
  // The same tokens once more with the recorder attached (routing does not depend on timing).
  RoutingRecorder rec(*model, true);
  session.set_moe_observer(&rec);
  run_once(session, ids, n_prompt);
  session.set_moe_observer(nullptr);
  const RoutingTrace& t = rec.trace();

  const uint64_t all_expert_bytes = uint64_t(t.expert_bytes) * uint64_t(t.n_expert) * uint64_t(t.n_moe());
  ExpertCacheConfig cfg;
  cfg.budget_bytes = size_t(double(all_expert_bytes) * mo.budget_frac);
  const bool measure_tier = !mo.experts.cache.empty() || mo.experts.tier_given;
  if (!mo.experts.cache.empty())
    cfg.budget_bytes = resolve_expert_budget(mo.experts.cache, mo.experts.tier, expert_set_of(*model));
  cfg.expert_bytes = t.expert_bytes;
  cfg.n_layers = t.n_moe();
  cfg.n_expert = t.n_expert;
  cfg.admit_hits = mo.admit_hits;
  cfg.window = mo.window;
  // The first half of the tokens warms the caches (and profiles for the static policy); the second
  // half is counted.
  const int64_t warm = t.n_tokens / 2;
  const ExpertProfile prof = mo.profile.empty() ? build_profile(t, 0, warm, path) : load_profile(mo.profile);
  const ExpertProfile counted = build_profile(t, warm, t.n_tokens, path);

  std::vector<CacheSimResult> res;
  ExpertCacheConfig c = cfg;
  c.dynamic = false;
  res.push_back(simulate_cache(t, c, &prof, false, warm, "(b) static: profile's hottest"));
  c.dynamic = true;
  c.eviction = Eviction::kLru;
  res.push_back(simulate_cache(t, c, nullptr, false, warm, "(c) dynamic, hysteresis, LRU"));
  c.eviction = Eviction::kLfu;
  res.push_back(simulate_cache(t, c, nullptr, false, warm, "(c) dynamic, hysteresis, LFU"));
  c.eviction = Eviction::kLru;
  res.push_back(simulate_cache(t, c, &prof, true, warm, "(d) seeded + dynamic LRU + prefetch"));

  // (b)-(d) for real with the ExpertFlow runtime on the chosen tier.
  std::vector<TierRun> tier_runs;
  std::string tier_note;
  if (measure_tier) {
    if (mo.experts.tier == "cuda" && cuda::device_count() == 0) {
      tier_note =
          "no CUDA device: the cuda tier was not measured (--expert-tier host runs the runtime on the CPU)";
    } else {
      ExpertFlowConfig fc;
      fc.budget_bytes = cfg.budget_bytes;
      fc.tier = mo.experts.tier;
      fc.admit_hits = mo.admit_hits;
      fc.window = mo.window;
      fc.max_rows = session.n_batch() * std::max(1, t.k);
      fc.dynamic = false;
      fc.seed = &prof;
      tier_runs.push_back(run_with_flow(session, *model, fc, ids, n_prompt, "(b) static: profile's hottest"));
      fc.dynamic = true;
      fc.seed = nullptr;
      tier_runs.push_back(run_with_flow(session, *model, fc, ids, n_prompt, "(c) dynamic, hysteresis, LRU"));
      fc.seed = &prof;
      fc.prefetch = true;
      tier_runs.push_back(
          run_with_flow(session, *model, fc, ids, n_prompt, "(d) seeded + dynamic LRU + prefetch"));
      if (mo.experts.tier == "host") {
        tier_note =
            "host tier: the cached experts are copies in RAM computed on the same CPU; this checks the "
            "runtime (hits, uploads, overlap), its tok/s is not a GPU speedup";
      }
    }
  }

  nlohmann::json out;
  out["model"] = path;
  out["threads"] = session.pool().size();
  out["isa"] = isa_name(isa_level());
  out["routing"] = mo.text.empty() ? "random token ids" : mo.text;
  out["measured_cpu"] = {{"pp_tps", pp}, {"tg_tps", tg}, {"n_prompt", n_prompt}, {"n_gen", n_gen}};
  out["experts"] = {{"layers", t.n_moe()},
                    {"per_layer", t.n_expert},
                    {"per_token", t.k},
                    {"expert_bytes", t.expert_bytes},
                    {"all_bytes", all_expert_bytes},
                    {"budget_bytes", cfg.budget_bytes},
                    {"slots_per_layer", ExpertCache(cfg).slots_per_layer()}};
  out["prediction_recall"] = counted.prediction_recall;
  double reuse = 0;
  for (const auto& l : counted.layers) reuse += l.reuse_rate / double(counted.layers.size());
  out["reuse_rate"] = reuse;
  out["simulated_tokens"] = t.n_tokens - warm;
  const double cpu_bytes_all = double(t.k) * double(t.n_moe()) * double(t.expert_bytes);
  for (const CacheSimResult& r : res) {
    out["simulated"].push_back(
        {{"policy", r.policy},
         {"hit_rate", r.stats.hit_rate()},
         {"pcie_bytes_per_token", r.bytes_per_token()},
         {"cpu_expert_bytes_per_token", double(r.stats.misses) * double(t.expert_bytes) / double(r.tokens)},
         {"promotions", r.stats.promotions},
         {"prefetches", r.stats.prefetches},
         {"prefetch_used", r.stats.prefetch_used}});
  }
  if (measure_tier) {
    nlohmann::json mt;
    mt["tier"] = mo.experts.tier;
    mt["note"] = tier_note;
    mt["counted_tokens"] = n_gen;
    mt["budget_bytes"] = cfg.budget_bytes;
    for (const TierRun& r : tier_runs) {
      mt["policies"].push_back({{"policy", r.policy},
                                {"hit_rate", r.st.hit_rate()},
                                {"in_flight", r.st.in_flight},
                                {"prediction_recall", r.st.recall()},
                                {"upload_bytes_per_token", double(r.st.upload_bytes) / double(n_gen)},
                                {"uploads", r.st.uploads},
                                {"seed_bytes", r.st.seed_bytes},
                                {"tg_tps", r.tg}});
    }
    out["measured_tier"] = mt;
  }
  if (json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  fmt::print("model: {} ({} threads, {})\n", path, session.pool().size(), isa_name(isa_level()));
  fmt::print("experts: {} MoE layers x {} experts, {} per token, {} each; all experts {}\n", t.n_moe(),
             t.n_expert, t.k, human_bytes(double(t.expert_bytes)), human_bytes(double(all_expert_bytes)));
  fmt::print("tokens: {} ({})\n", n_prompt + n_gen, mo.text.empty() ? "random ids" : mo.text);
  fmt::print(
      "\n(a) MEASURED, all experts on the CPU: pp{} {:.2f} tok/s, tg{} {:.2f} tok/s; expert bytes read per "
      "token {}\n",
      n_prompt, pp, n_gen, tg, human_bytes(cpu_bytes_all));
  fmt::print(
      "\nSIMULATED policies (no GPU in this run: hit rates and would-be PCIe traffic from the routing trace "
      "of "
      "the run above;\nbudget {:.0f}% of expert bytes = {} = {} slots per layer; warm-up {} tokens, counted "
      "{})\n",
      100 * mo.budget_frac, human_bytes(double(cfg.budget_bytes)), ExpertCache(cfg).slots_per_layer(), warm,
      t.n_tokens - warm);
  fmt::print("{:<38} {:>8} {:>14} {:>14} {:>10}\n", "policy", "hit rate", "PCIe B/token", "CPU B/token",
             "prefetch");
  fmt::print("{:<38} {:>7.1f}% {:>14} {:>14} {:>10}\n", "(a) all experts on CPU", 0.0, "0",
             human_bytes(cpu_bytes_all), "-");
  for (const CacheSimResult& r : res) {
    const std::string pf =
        r.stats.prefetches > 0
            ? fmt::format("{:.0f}% used", 100.0 * double(r.stats.prefetch_used) / double(r.stats.prefetches))
            : "-";
    fmt::print("{:<38} {:>7.1f}% {:>14} {:>14} {:>10}\n", r.policy, 100 * r.stats.hit_rate(),
               human_bytes(r.bytes_per_token()),
               human_bytes(double(r.stats.misses) * double(t.expert_bytes) / double(r.tokens)), pf);
  }
  fmt::print("\nnext-layer prediction recall: {:.1f}%   token-to-token expert reuse: {:.1f}%\n",
             100 * counted.prediction_recall, 100 * reuse);
  if (measure_tier) {
    fmt::print(
        "\nMEASURED with the ExpertFlow runtime, tier '{}' (same budget; prefill warms the cache, the {} "
        "decode tokens are counted):\n",
        mo.experts.tier, n_gen);
    if (!tier_note.empty()) fmt::print("note: {}\n", tier_note);
    if (!tier_runs.empty()) {
      fmt::print("{:<38} {:>8} {:>10} {:>8} {:>16} {:>10}\n", "policy", "hit rate", "in flight", "recall",
                 "uploaded B/token", "tg tok/s");
    }
    for (const TierRun& r : tier_runs) {
      fmt::print("{:<38} {:>7.1f}% {:>10} {:>8} {:>16} {:>10.2f}\n", r.policy, 100 * r.st.hit_rate(),
                 r.st.in_flight,
                 r.st.recall() < 0 ? std::string("-") : fmt::format("{:.1f}%", 100 * r.st.recall()),
                 human_bytes(double(r.st.upload_bytes) / double(n_gen)), r.tg);
    }
  }
}

}  // namespace qleap::cli

namespace qleap::cli {

void bench_compress_command(const CommonOptions& common, bool json) {
  const std::string path = resolve_model(common.model);
  const auto f = GgufFile::open(path);
  if (available_codecs().empty()) throw Unsupported("this build has neither zstd nor lz4");
  // FFN weights: the experts (3-D, compressed one expert slice at a time) or, in a dense model, the
  // FFN matrices (one tensor at a time) as a proxy with the same block formats.
  std::vector<uint8_t> all;
  size_t chunk = 0, n_tensors = 0;
  std::map<std::string, int> types;
  for (const GgufTensor& t : f->tensors()) {
    const bool ffn = t.name.find(".ffn_") != std::string::npos && t.name.find("norm") == std::string::npos &&
                     t.name.find("gate_inp") == std::string::npos && t.shape.size() >= 2;
    if (!ffn) continue;
    const size_t c = t.shape.size() == 3 ? size_t(t.nbytes / uint64_t(t.ne(2))) : size_t(t.nbytes);
    chunk = chunk == 0 ? c : std::min(chunk, c);
    all.insert(all.end(), t.data, t.data + t.nbytes);
    ++types[type_name(t.type)];
    ++n_tensors;
  }
  if (all.empty()) throw InvalidArgument(fmt::format("'{}' has no FFN weight tensors", path));
  const auto res = measure_compression(all.data(), all.size(), chunk);
  nlohmann::json out;
  out["model"] = path;
  out["tensors"] = n_tensors;
  out["types"] = types;
  out["bytes"] = all.size();
  out["chunk_bytes"] = chunk;
  for (const auto& r : res) {
    out["codecs"].push_back({{"codec", r.codec},
                             {"ratio", r.ratio()},
                             {"compress_mbps", r.compress_mbps},
                             {"decompress_gbps_1thread", r.decompress_gbps}});
  }
  if (json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::string ty;
  for (const auto& [k, v] : types) ty += fmt::format("{}{} x{}", ty.empty() ? "" : ", ", k, v);
  fmt::print("model: {}\nFFN weights: {} tensors ({}), {}, compressed in chunks of {}\n", path, n_tensors, ty,
             human_bytes(double(all.size())), human_bytes(double(chunk)));
  fmt::print("{:<10} {:>7} {:>10} {:>22}  {}\n", "codec", "ratio", "saved", "decompress (1 thread)",
             "compress");
  for (const auto& r : res) {
    fmt::print("{:<10} {:>7.3f} {:>9.1f}% {:>17.2f} GB/s  {:.0f} MB/s\n", r.codec, r.ratio(),
               100 * (1 - 1 / r.ratio()), r.decompress_gbps, r.compress_mbps);
  }
}

}  // namespace qleap::cli
