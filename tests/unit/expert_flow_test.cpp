// ExpertFlow on the CPU with HostExpertTier: logits equal the plain CPU path bit for bit for
// static, dynamic and prefetch placement at budgets from 0 to every expert (prefill chunks grouped
// by expert, and single-token decode both pair by pair and grouped); uploads are asynchronous (a
// promoted expert whose copy has not landed is computed on the CPU, results unchanged); the
// policy statistics and the bytes actually uploaded equal simulate_cache() on the routing trace
// of the same run; gpt-oss's biased, clamped experts too. The CUDA tier's test needs a device and skips
// without one.
#include "moe/expert_flow.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "backend/cuda/cuda_api.h"
#include "core/error.h"
#include "gguf/convert.h"
#include "gguf_test_util.h"
#include "model/model.h"
#include "moe/expert_cache.h"
#include "moe/expert_profile.h"
#include "moe/host_expert_tier.h"
#include "moe/routing_trace.h"
#include "runtime/session.h"

namespace qleap {
namespace {

const std::vector<int32_t> kPrompt = {3, 17, 250, 9, 9,  120, 64, 1, 200, 33,
                                      5, 77, 140, 2, 99, 31,  8,  8, 210, 4};
const std::vector<int32_t> kDecode = {12, 250, 7, 7, 61, 190, 3, 44, 18, 101, 230, 6};

// Tiny HF MoE fixtures converted to Q8_0 (quantized activations, multi-row kernel tiles).
std::shared_ptr<const Model> fixture_model(const std::string& name) {
  static std::map<std::string, std::shared_ptr<const Model>> cache;
  if (auto it = cache.find(name); it != cache.end()) return it->second;
  const auto dir = std::filesystem::path(testing::fixtures_dir()) / name;
  if (!std::filesystem::exists(dir / "config.json")) return nullptr;
  static testing::TempDir tmp("expert_flow");
  ConvertOptions opt;
  opt.out_type = GgmlType::Q8_0;
  convert_hf_to_gguf(dir.string(), tmp.file(name + ".gguf"), opt);
  return cache[name] = load_model(tmp.file(name + ".gguf"));
}

#define FIXTURE_OR_SKIP(var, name) \
  auto var = fixture_model(name);  \
  if (!var) GTEST_SKIP() << "no golden fixture " << name;

// Prefill kPrompt in chunks of 8 (grouped by expert), then decode kDecode one token at a time;
// every row's logits. The experts stay in GGUF layout (repack_experts: false, in every session over
// these shared models): the tiers compute from GGUF-layout copies, and the CPU path they are compared
// with bit for bit must run the same kernels.
std::vector<float> run_logits(const std::shared_ptr<const Model>& model, int threads, MoeExecutor* ex,
                              MoeObserver* obs = nullptr) {
  SessionOptions so;
  so.kv_type = "f32";
  so.n_threads = threads;
  so.n_batch = 8;
  so.n_ctx = 64;
  so.repack_experts = false;
  Session s(model, so);
  s.set_moe_executor(ex);
  s.set_moe_observer(obs);
  std::vector<float> out = s.eval(kPrompt, true);
  for (int32_t t : kDecode) {
    const auto& l = s.eval({t});
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}

// Every token alone (the order simulate_cache replays).
std::vector<float> run_decode_only(const std::shared_ptr<const Model>& model, MoeExecutor* ex,
                                   MoeObserver* obs) {
  SessionOptions so;
  so.kv_type = "f32";
  so.n_threads = 2;
  so.n_ctx = 64;
  so.repack_experts = false;
  Session s(model, so);
  s.set_moe_executor(ex);
  s.set_moe_observer(obs);
  std::vector<float> out;
  for (const auto* v : {&kPrompt, &kDecode}) {
    for (int32_t t : *v) {
      const auto& l = s.eval({t});
      out.insert(out.end(), l.begin(), l.end());
    }
  }
  return out;
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

ExpertProfile profile_of(const std::shared_ptr<const Model>& model) {
  RoutingRecorder rec(*model, false);
  run_logits(model, 1, nullptr, &rec);
  return build_profile(rec.trace());
}

// The policy rules the runtime relies on: a promotion never evicts an expert the same step uses
// (it was just computed from its slot), so each admission is exactly one upload.
TEST(ExpertCachePolicy, NoEvictionOfAnExpertInUseThisStep) {
  ExpertCacheConfig c;
  c.expert_bytes = 100;
  c.n_layers = 1;
  c.n_expert = 8;
  c.budget_bytes = 200;  // 2 slots
  c.admit_hits = 1;
  c.window = 8;
  ExpertCache cache(c);
  cache.seed(0, {0, 1});
  EXPECT_TRUE(cache.access(0, 0, 0));  // 0 recent, 1 the LRU resident
  const int32_t tok[2] = {5, 1};       // 5 misses first; its promotion must not take 1's slot
  EXPECT_EQ(cache.access_token(0, tok, 2, 1), 1);
  EXPECT_EQ(cache.residents(0), (std::vector<int>{1, 5}));
  EXPECT_EQ(cache.stats().evictions, 1);

  c.budget_bytes = 100;  // 1 slot, a token with two new experts: the second cannot evict the first
  ExpertCache one(c);
  const int32_t two[2] = {5, 6};
  EXPECT_EQ(one.access_token(0, two, 2, 0), 0);
  EXPECT_EQ(one.residents(0), (std::vector<int>{5}));
  EXPECT_EQ(one.stats().promotions, 1);
  EXPECT_EQ(one.stats().bytes_moved, 100u);
  EXPECT_TRUE(one.prefetch(0, 3, 1));   // 5 is not in use at step 1: evicted
  EXPECT_FALSE(one.prefetch(0, 4, 1));  // 3 is this step's prefetch: kept
  EXPECT_EQ(one.residents(0), (std::vector<int>{3}));
  EXPECT_EQ(one.stats().prefetches, 1);
}

TEST(ExpertFlow, LogitsEqualTheCpuPathForEveryModeAndBudget) {
  // gpt_oss: experts with gate / up / down biases and the clamped SwiGLU (ExpertSet::act, biases in
  // the slots).
  for (const char* name : {"qwen3_moe", "qwen2_moe", "gpt_oss"}) {
    FIXTURE_OR_SKIP(model, name);
    const ExpertSet set = expert_set_of(*model);
    const ExpertProfile prof = profile_of(model);
    const size_t one = set.expert_bytes * size_t(set.n_moe());
    for (int threads : {1, 2}) {
      const std::vector<float> ref = run_logits(model, threads, nullptr);
      for (size_t budget : {size_t(0), one, 3 * one, one * size_t(set.n_expert)}) {
        for (int mode = 0; mode < 4; ++mode) {  // static, dynamic LRU, dynamic LFU, seeded + prefetch
          for (bool wait : {false, true}) {
            ExpertFlowConfig cfg;
            cfg.budget_bytes = budget;
            cfg.dynamic = mode != 0;
            cfg.admit_hits = 1;
            cfg.eviction = mode == 2 ? Eviction::kLfu : Eviction::kLru;
            cfg.prefetch = mode == 3;
            cfg.seed = mode == 0 || mode == 3 ? &prof : nullptr;
            cfg.wait_uploads = wait;
            ExpertFlow flow(*model, cfg);
            const std::vector<float> got = run_logits(model, threads, &flow);
            EXPECT_TRUE(bit_equal(got, ref)) << name << " threads " << threads << " budget " << budget
                                             << " mode " << mode << " wait " << wait;
            const ExpertFlowStats st = flow.stats();
            EXPECT_EQ(st.tokens, int64_t(kPrompt.size() + kDecode.size()));
            EXPECT_EQ(st.tier_computed + st.cpu_computed,
                      st.tokens * set.n_moe() * model->hparams().n_expert_used);
            if (budget == 0) {
              EXPECT_EQ(st.tier_computed, 0);
            }
            // With every expert resident (seeded) and copies awaited, everything runs on the tier.
            if (budget == one * size_t(set.n_expert) && cfg.seed != nullptr && wait) {
              EXPECT_EQ(st.cpu_computed, 0) << name << " mode " << mode;
            }
            if (budget > 0 && wait && mode != 0) {
              EXPECT_GT(st.tier_computed, 0) << name << " mode " << mode;
            }
          }
        }
      }
    }
  }
}

TEST(ExpertFlow, UploadsAreAsynchronousAndInFlightExpertsRunOnTheCpu) {
  FIXTURE_OR_SKIP(model, "qwen3_moe");
  const ExpertSet set = expert_set_of(*model);
  const std::vector<float> ref = run_logits(model, 2, nullptr);
  ExpertFlowConfig cfg;
  cfg.budget_bytes = set.expert_bytes * size_t(set.n_moe()) * size_t(set.n_expert);
  cfg.admit_hits = 1;
  ExpertFlow flow(*model, cfg);
  auto& tier = dynamic_cast<HostExpertTier&>(flow.tier());
  tier.hold_uploads(true);  // the copy engine stalls: promotions stay in flight
  const std::vector<float> held = run_logits(model, 2, &flow);
  EXPECT_TRUE(bit_equal(held, ref));
  ExpertFlowStats st = flow.stats();
  EXPECT_EQ(st.tier_computed, 0);
  EXPECT_GT(st.in_flight, 0);  // the policy said resident, the copy had not landed: CPU
  EXPECT_EQ(st.uploads, 0);
  EXPECT_GT(flow.cache().stats().promotions, 0);
  EXPECT_FALSE(tier.ready(0, 0));
  tier.hold_uploads(false);
  tier.wait_uploads();
  EXPECT_TRUE(tier.ready(0, 0));
  EXPECT_EQ(flow.stats().uploads, flow.cache().stats().promotions);
  flow.reset_stats();
  const std::vector<float> after = run_logits(model, 2, &flow);
  EXPECT_TRUE(bit_equal(after, ref));
  st = flow.stats();
  EXPECT_GT(st.tier_computed, 0);
  EXPECT_EQ(st.tier_computed + st.cpu_computed, st.tokens * set.n_moe() * model->hparams().n_expert_used);
}

TEST(ExpertFlow, StatisticsMatchTheCacheSimulationOfTheSameTrace) {
  // gpt_oss: experts with gate / up / down biases and the clamped SwiGLU (ExpertSet::act, biases in
  // the slots).
  for (const char* name : {"qwen3_moe", "qwen2_moe", "gpt_oss"}) {
    FIXTURE_OR_SKIP(model, name);
    const ExpertSet set = expert_set_of(*model);
    const ExpertProfile prof = profile_of(model);
    const size_t one = set.expert_bytes * size_t(set.n_moe());
    const std::vector<float> ref = run_decode_only(model, nullptr, nullptr);
    for (size_t budget : {one, 2 * one, 5 * one}) {
      for (int mode = 0; mode < 4; ++mode) {
        ExpertFlowConfig cfg;
        cfg.budget_bytes = budget;
        cfg.dynamic = mode != 0;
        cfg.admit_hits = mode == 1 ? 2 : 1;
        cfg.window = 8;
        cfg.eviction = mode == 2 ? Eviction::kLfu : Eviction::kLru;
        cfg.prefetch = mode == 3;
        cfg.seed = mode == 0 || mode == 3 ? &prof : nullptr;
        cfg.wait_uploads = true;  // every policy hit is then a tier hit
        ExpertFlow flow(*model, cfg);
        RoutingRecorder rec(*model, true);
        const std::vector<float> got = run_decode_only(model, &flow, &rec);
        EXPECT_TRUE(bit_equal(got, ref)) << name << " mode " << mode;
        flow.tier().wait_uploads();

        const ExpertCacheConfig cc = expert_cache_config(cfg, set);
        const CacheSimResult sim = simulate_cache(rec.trace(), cc, cfg.seed, cfg.prefetch, 0, "sim");
        const ExpertCacheStats& a = flow.cache().stats();
        const ExpertFlowStats fs = flow.stats();
        SCOPED_TRACE(std::string(name) + " budget " + std::to_string(budget) + " mode " +
                     std::to_string(mode));
        EXPECT_EQ(a.hits, sim.stats.hits);
        EXPECT_EQ(a.misses, sim.stats.misses);
        EXPECT_EQ(a.promotions, sim.stats.promotions);
        EXPECT_EQ(a.evictions, sim.stats.evictions);
        EXPECT_EQ(a.prefetches, sim.stats.prefetches);
        EXPECT_EQ(a.prefetch_used, sim.stats.prefetch_used);
        EXPECT_EQ(a.bytes_moved, sim.stats.bytes_moved);
        EXPECT_EQ(fs.tier_computed, sim.stats.hits);
        EXPECT_EQ(fs.cpu_computed, sim.stats.misses);
        EXPECT_EQ(fs.upload_bytes, sim.stats.bytes_moved);  // bytes really copied = bytes simulated
        EXPECT_EQ(fs.uploads, a.promotions + a.prefetches);
        if (cfg.seed != nullptr) {
          EXPECT_GT(fs.seed_bytes, 0u);
        }
        if (cfg.prefetch) {
          EXPECT_DOUBLE_EQ(fs.recall(), prediction_recall(rec.trace()));
        }
      }
    }
  }
}

TEST(ExpertFlow, RejectsBadConfigurations) {
  FIXTURE_OR_SKIP(model, "qwen3_moe");
  ExpertProfile bad;
  bad.n_expert = 3;
  bad.layers.resize(1);
  ExpertFlowConfig cfg;
  cfg.seed = &bad;
  EXPECT_THROW({ ExpertFlow f(*model, cfg); }, InvalidArgument);
  cfg.seed = nullptr;
  cfg.tier = "tpu";
  EXPECT_THROW({ ExpertFlow f(*model, cfg); }, InvalidArgument);
  if (cuda::device_count() == 0) {
    cfg.tier = "cuda";
    EXPECT_THROW({ ExpertFlow f(*model, cfg); }, Unsupported);
  }
  auto dense = load_model(testing::stories_model());
  cfg.tier = "host";
  EXPECT_THROW({ ExpertFlow f(*dense, cfg); }, InvalidArgument);  // no MoE layers
}

// The device tier computes with the GPU kernels (f16 GEMM for several rows), so logits agree with
// the CPU within a tolerance, not bit for bit.
TEST(CudaExpertTier, LogitsCloseToTheCpuPath) {
  if (cuda::device_count() == 0)
    GTEST_SKIP() << "no CUDA device (the CUDA expert tier runs on a GPU machine)";
  for (const char* name : {"qwen3_moe", "gpt_oss"}) {
    FIXTURE_OR_SKIP(model, name);
    const ExpertSet set = expert_set_of(*model);
    const std::vector<float> ref = run_logits(model, 2, nullptr);
    for (bool prefetch : {false, true}) {
      ExpertFlowConfig cfg;
      cfg.tier = "cuda";
      cfg.budget_bytes = set.expert_bytes * size_t(set.n_moe()) * 4;
      cfg.admit_hits = 1;
      cfg.prefetch = prefetch;
      cfg.wait_uploads = true;
      ExpertFlow flow(*model, cfg);
      const std::vector<float> got = run_logits(model, 2, &flow);
      ASSERT_EQ(got.size(), ref.size());
      double max_err = 0, max_ref = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        max_err = std::max(max_err, double(std::fabs(got[i] - ref[i])));
        max_ref = std::max(max_ref, double(std::fabs(ref[i])));
      }
      EXPECT_LT(max_err, 2e-2 * std::max(1.0, max_ref));
      EXPECT_GT(flow.stats().tier_computed, 0);
      EXPECT_GT(flow.stats().upload_bytes, 0u);
    }
  }
}

}  // namespace
}  // namespace qleap
