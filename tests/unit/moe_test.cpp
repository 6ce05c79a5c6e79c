// Mixture-of-experts: routing (softmax, top-k, renormalization), the expert cache policy
// (hysteresis, eviction order, budget), profiles, prediction recall, the converter's expert
// tensors, and the decode path (one token at a time) against the prefill path on a converted
// tiny HF MoE model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "backend/cpu/packed_weights.h"
#include "core/error.h"
#include "gguf/convert.h"
#include "gguf/gguf.h"
#include "gguf_test_util.h"
#include "model/model.h"
#include "model/moe_block.h"
#include "moe/expert_cache.h"
#include "moe/expert_profile.h"
#include "moe/routing_trace.h"
#include "moe/transfer_compression.h"
#include "runtime/session.h"

namespace qleap {
namespace {

TEST(MoeRoute, SoftmaxTopKAndRenormalization) {
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 1.5f, 2.0f};
  double z = 0;
  for (float l : logits) z += std::exp(double(l));
  std::vector<float> a = logits;
  int32_t ids[3];
  float w[3];
  moe_route(a.data(), 5, 3, false, ids, w);
  // Ties keep the lower index first.
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 4);
  EXPECT_EQ(ids[2], 3);
  EXPECT_NEAR(w[0], std::exp(2.0) / z, 1e-6);
  EXPECT_NEAR(w[2], std::exp(1.5) / z, 1e-6);
  a = logits;
  moe_route(a.data(), 5, 3, true, ids, w);
  const double s = 2 * std::exp(2.0) + std::exp(1.5);
  EXPECT_NEAR(w[0], std::exp(2.0) / s, 1e-6);
  EXPECT_NEAR(w[0] + w[1] + w[2], 1.0, 1e-6);
}

ExpertCacheConfig small_cfg(int slots, int admit, int window, Eviction ev) {
  ExpertCacheConfig c;
  c.expert_bytes = 100;
  c.n_layers = 2;
  c.n_expert = 8;
  c.budget_bytes = size_t(slots) * 100 * 2 + 99;  // the remainder is less than an expert
  c.admit_hits = admit;
  c.window = window;
  c.eviction = ev;
  return c;
}

TEST(ExpertCache, SlotsFollowTheBudget) {
  EXPECT_EQ(ExpertCache(small_cfg(3, 1, 4, Eviction::kLru)).slots_per_layer(), 3);
  ExpertCacheConfig c = small_cfg(0, 1, 4, Eviction::kLru);
  c.budget_bytes = 150;  // 75 bytes per layer: no slot
  ExpertCache z(c);
  EXPECT_EQ(z.slots_per_layer(), 0);
  EXPECT_FALSE(z.access(0, 1, 0));
  EXPECT_FALSE(z.access(0, 1, 1));
  EXPECT_FALSE(z.resident(0, 1));
  c.budget_bytes = 100000;  // more than all experts
  EXPECT_EQ(ExpertCache(c).slots_per_layer(), 8);
  c.expert_bytes = 0;
  EXPECT_THROW(ExpertCache{c}, InvalidArgument);
}

TEST(ExpertCache, HysteresisNeedsKHitsWithinTheWindow) {
  ExpertCache c(small_cfg(2, 3, 4, Eviction::kLru));
  EXPECT_FALSE(c.access(0, 5, 0));
  EXPECT_FALSE(c.access(0, 5, 1));
  EXPECT_FALSE(c.resident(0, 5));   // two hits so far
  EXPECT_FALSE(c.access(0, 5, 2));  // third hit within 4 steps: promoted, but this use missed
  EXPECT_TRUE(c.resident(0, 5));
  EXPECT_TRUE(c.access(0, 5, 3));
  EXPECT_FALSE(c.resident(1, 5));  // layers are independent
  // Hits spread wider than the window never promote.
  EXPECT_FALSE(c.access(0, 6, 10));
  EXPECT_FALSE(c.access(0, 6, 14));
  EXPECT_FALSE(c.access(0, 6, 18));
  EXPECT_FALSE(c.resident(0, 6));
  EXPECT_EQ(c.stats().promotions, 1);
  EXPECT_EQ(c.stats().bytes_moved, 100u);
  EXPECT_EQ(c.stats().hits, 1);
}

TEST(ExpertCache, LruEvictsTheLeastRecentlyUsed) {
  ExpertCache c(small_cfg(2, 1, 8, Eviction::kLru));
  c.access(0, 1, 0);  // promoted (admit after 1 hit)
  c.access(0, 2, 1);
  c.access(0, 1, 2);  // 1 is now more recent than 2
  c.access(0, 3, 3);  // evicts 2
  EXPECT_EQ(c.residents(0), (std::vector<int>{1, 3}));
  EXPECT_EQ(c.stats().evictions, 1);
}

TEST(ExpertCache, LfuEvictsTheLeastFrequentlyUsed) {
  ExpertCache c(small_cfg(2, 1, 8, Eviction::kLfu));
  c.access(0, 1, 0);
  c.access(0, 1, 1);
  c.access(0, 1, 2);  // 1 used 3 times
  c.access(0, 2, 3);  // 2 used once, most recently
  c.access(0, 3, 4);  // LFU evicts 2 (LRU would evict 1)
  EXPECT_EQ(c.residents(0), (std::vector<int>{1, 3}));
}

TEST(ExpertCache, StaticSeedNeverChangesAndPrefetchBypassesHysteresis) {
  ExpertCacheConfig cfg = small_cfg(2, 1, 8, Eviction::kLru);
  cfg.dynamic = false;
  ExpertCache s(cfg);
  s.seed(0, {4, 7, 1});  // only the first two fit
  EXPECT_EQ(s.residents(0), (std::vector<int>{4, 7}));
  for (int t = 0; t < 5; ++t) s.access(0, 2, t);
  EXPECT_EQ(s.residents(0), (std::vector<int>{4, 7}));
  EXPECT_EQ(s.stats().bytes_moved, 0u);

  ExpertCache d(small_cfg(2, 5, 8, Eviction::kLru));
  EXPECT_TRUE(d.prefetch(0, 6, 0));
  EXPECT_FALSE(d.prefetch(0, 6, 0));  // already resident
  EXPECT_TRUE(d.access(0, 6, 0));
  EXPECT_EQ(d.stats().prefetches, 1);
  EXPECT_EQ(d.stats().prefetch_used, 1);
}

RoutingTrace tiny_trace() {
  RoutingTrace t;
  t.moe_layers = {0, 2};
  t.n_expert = 4;
  t.k = 2;
  t.expert_bytes = 10;
  // token: layer0 {a,b}, layer1 {c,d}; predictions for layer 1 only.
  t.push_token({0, 1, 2, 3}, {-1, -1, 2, 0});
  t.push_token({0, 2, 2, 3}, {-1, -1, 1, 3});
  t.push_token({3, 2, 1, 3}, {-1, -1, 1, 3});
  return t;
}

TEST(RoutingTrace, PredictionRecall) {
  // Layer 1 actual {2,3},{2,3},{1,3}; predicted {2,0},{1,3},{1,3}: 1 + 1 + 2 of 6.
  EXPECT_NEAR(prediction_recall(tiny_trace()), 4.0 / 6.0, 1e-12);
  RoutingTrace none = tiny_trace();
  std::fill(none.predicted.begin(), none.predicted.end(), -1);
  EXPECT_EQ(prediction_recall(none), -1.0);
  EXPECT_THROW(none.push_token({1, 2}), InvalidArgument);
}

TEST(ExpertProfile, CountsReuseEntropyAndJsonRoundTrip) {
  const ExpertProfile p = build_profile(tiny_trace(), "tiny");
  ASSERT_EQ(p.layers.size(), 2u);
  EXPECT_EQ(p.layers[0].counts, (std::vector<int64_t>{2, 1, 2, 1}));
  EXPECT_EQ(p.layers[1].counts, (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(p.layers[1].layer, 2);
  // Layer 0: token 1 reuses 0 of {0,1}; token 2 reuses 2 of {0,2}: 2 of 4.
  EXPECT_NEAR(p.layers[0].reuse_rate, 0.5, 1e-12);
  EXPECT_NEAR(p.layers[1].reuse_rate, 3.0 / 4.0, 1e-12);
  const double e1 =
      -(1 / 6.0 * std::log2(1 / 6.0) + 2 / 6.0 * std::log2(2 / 6.0) + 3 / 6.0 * std::log2(3 / 6.0));
  EXPECT_NEAR(p.layers[1].entropy_bits, e1, 1e-12);
  EXPECT_EQ(p.layers[0].coactivation[0 * 4 + 1], 1);  // {0,1} together once
  EXPECT_EQ(p.layers[0].coactivation[0 * 4 + 2], 1);
  EXPECT_EQ(p.layers[0].coactivation[2 * 4 + 2], 2);
  EXPECT_EQ(p.layers[1].hottest(), (std::vector<int>{3, 2, 1, 0}));
  EXPECT_NEAR(p.prediction_recall, 4.0 / 6.0, 1e-12);

  const ExpertProfile q = profile_from_json(profile_to_json(p));
  EXPECT_EQ(q.model, "tiny");
  EXPECT_EQ(q.n_tokens, 3);
  EXPECT_EQ(q.layers[1].counts, p.layers[1].counts);
  EXPECT_NEAR(q.layers[0].reuse_rate, 0.5, 1e-12);
  EXPECT_THROW(profile_from_json("{\"format\":\"other\"}"), FormatError);
  EXPECT_THROW(profile_from_json("not json"), FormatError);
  EXPECT_THROW(profile_from_json(R"({"format":"qleap-expert-profile-1","n_expert":4,"experts_per_token":2,
      "n_tokens":1,"layers":[{"layer":0,"counts":[1,2]}]})"),
               FormatError);
  // Numbers that are not integers in range: a clear FormatError, not a cast of a double (undefined
  // behaviour for 1e30 or a literal past 2^64).
  for (const char* bad :
       {R"("n_expert":1e30,"experts_per_token":2,"n_tokens":1,"layers":[])",
        R"("n_expert":4,"experts_per_token":2.5,"n_tokens":1,"layers":[])",
        R"("n_expert":4,"experts_per_token":2,"n_tokens":29999999999999999994,"layers":[])",
        R"("n_expert":4,"experts_per_token":2,"n_tokens":1,"layers":[{"layer":0,"counts":[1,2,3,4e40]}])",
        R"("n_expert":4,"experts_per_token":2,"n_tokens":1,"layers":[{"layer":-1e99,"counts":[1,2,3,4]}])",
        R"("n_expert":4,"experts_per_token":2,"n_tokens":1,"expert_bytes":-5,"layers":[])"}) {
    EXPECT_THROW(profile_from_json(std::string(R"({"format":"qleap-expert-profile-1",)") + bad + "}"),
                 FormatError)
        << bad;
  }
  EXPECT_FALSE(profile_summary(p).empty());
}

TEST(ExpertCacheSim, StaticSeedFromProfileAndWarmup) {
  const RoutingTrace t = tiny_trace();
  const ExpertProfile p = build_profile(t);
  ExpertCacheConfig cfg;
  cfg.expert_bytes = 10;
  cfg.n_layers = 2;
  cfg.n_expert = 4;
  cfg.budget_bytes = 2 * 2 * 10;  // 2 slots per layer
  cfg.dynamic = false;
  const CacheSimResult r = simulate_cache(t, cfg, &p, false, 1, "static");
  // Hottest: layer 0 {0,2}, layer 1 {3,2}. Counted tokens 1, 2: layer 0 {0,2} 2 hits, {3,2} 1 hit;
  // layer 1 {2,3} 2 hits, {1,3} 1 hit: 6 of 8.
  EXPECT_EQ(r.tokens, 2);
  EXPECT_EQ(r.stats.hits, 6);
  EXPECT_EQ(r.stats.misses, 2);
  EXPECT_EQ(r.bytes_per_token(), 0.0);
  ExpertProfile bad = p;
  bad.layers.pop_back();
  EXPECT_THROW(simulate_cache(t, cfg, &bad, false, 0, "bad"), InvalidArgument);
}

std::filesystem::path golden_fixture(const std::string& name) {
  return std::filesystem::path(testing::fixtures_dir()) / name;
}

TEST(MoeModel, ConverterStacksExpertsAndWritesMetadata) {
  const auto dir = golden_fixture("mixtral");
  if (!std::filesystem::exists(dir / "config.json")) GTEST_SKIP() << "no fixture at " << dir;
  testing::TempDir tmp("moe_convert");
  ConvertOptions opt;
  opt.out_type = GgmlType::Q8_0;
  convert_hf_to_gguf(dir.string(), tmp.file("m.gguf"), opt);
  const auto f = GgufFile::open(tmp.file("m.gguf"));
  EXPECT_EQ(f->architecture(), "llama");
  EXPECT_EQ(f->find_arch("expert_count")->as_int(), 8);
  EXPECT_EQ(f->find_arch("expert_used_count")->as_int(), 2);
  EXPECT_TRUE(f->find_arch("expert_weights_norm")->as_bool());
  const GgufTensor& g = f->tensor("blk.1.ffn_gate_exps.weight");
  EXPECT_EQ(g.shape, (std::vector<int64_t>{64, 48, 8}));
  EXPECT_EQ(g.type, GgmlType::Q8_0);
  EXPECT_EQ(f->tensor("blk.1.ffn_down_exps.weight").shape, (std::vector<int64_t>{48, 64, 8}));
  EXPECT_EQ(f->tensor("blk.0.ffn_gate_inp.weight").type, GgmlType::F32);  // routers stay F32
  auto model = load_model(tmp.file("m.gguf"));
  EXPECT_TRUE(model->weights().layers[0].is_moe());
  EXPECT_EQ(model->weights().layers[0].moe.n_expert(), 8);
}

// Decode (one token per forward, no expert grouping) must give the prefill's logits and routing.
TEST(MoeModel, DecodeMatchesPrefillAndRecorderSeesEveryToken) {
  for (const char* name : {"qwen2_moe", "olmoe"}) {
    const auto dir = golden_fixture(name);
    if (!std::filesystem::exists(dir / "config.json")) GTEST_SKIP() << "no fixture at " << dir;
    testing::TempDir tmp(std::string("moe_decode_") + name);
    ConvertOptions opt;
    opt.out_type = GgmlType::F32;
    convert_hf_to_gguf(dir.string(), tmp.file("m.gguf"), opt);
    auto model = load_model(tmp.file("m.gguf"));
    SessionOptions so;
    so.kv_type = "f32";
    so.n_threads = 2;
    const std::vector<int32_t> prompt = {3, 17, 250, 9, 9, 120, 64, 1, 200, 33};
    Session a(model, so);
    RoutingRecorder ra(*model, true);
    a.set_moe_observer(&ra);
    const std::vector<float> all = a.eval(prompt, true);
    Session b(model, so);
    RoutingRecorder rb(*model, false);
    b.set_moe_observer(&rb);
    const int nv = model->n_vocab();
    double max_err = 0;
    for (size_t i = 0; i < prompt.size(); ++i) {
      const std::vector<float>& l = b.eval({prompt[i]});
      for (int v = 0; v < nv; ++v)
        max_err = std::max(max_err, double(std::fabs(l[size_t(v)] - all[i * nv + size_t(v)])));
    }
    EXPECT_LT(max_err, 1e-4) << name;
    ASSERT_EQ(ra.trace().n_tokens, int64_t(prompt.size()));
    ASSERT_EQ(rb.trace().n_tokens, int64_t(prompt.size()));
    EXPECT_EQ(ra.trace().ids, rb.trace().ids) << name;
    for (int32_t id : ra.trace().ids) EXPECT_TRUE(id >= 0 && id < 8);
    const double recall = prediction_recall(ra.trace());
    EXPECT_GE(recall, 0.0);
    EXPECT_LE(recall, 1.0);
  }
}

// A CPU run repacks the routed experts too (when they fit in half the RAM, as these do): their views
// point at the interleaved copy, and the logits match a run on the GGUF layout within the int8
// activation rounding both paths share. A dense model has no experts to fit.
TEST(MoeModel, ExpertsAreRepackedForTheCpu) {
  const auto dir = golden_fixture("qwen2_moe");
  if (!std::filesystem::exists(dir / "config.json")) GTEST_SKIP() << "no fixture at " << dir;
  if (!repack_enabled()) GTEST_SKIP() << "no AVX2: repacking stays off";
  testing::TempDir tmp("moe_repack");
  ConvertOptions opt;
  opt.out_type = GgmlType::Q8_0;
  convert_hf_to_gguf(dir.string(), tmp.file("m.gguf"), opt);
  SessionOptions so;
  so.kv_type = "f32";
  so.n_threads = 2;
  const std::vector<int32_t> prompt = {3, 17, 250, 9, 9, 120, 64, 1, 200, 33};
  set_repack_enabled(false);
  auto plain = load_model(tmp.file("m.gguf"));
  Session a(plain, so);
  const std::vector<float> ref = a.eval(prompt, true);
  set_repack_enabled(true);
  EXPECT_EQ(plain->weights().layers[0].moe.gate[0].packed, nullptr);

  auto model = load_model(tmp.file("m.gguf"));
  ASSERT_TRUE(model->experts_fit_host_memory());
  Session b(model, so);
  const MoeWeights& mw = model->weights().layers[0].moe;
  for (const auto* vs : {&mw.gate, &mw.up, &mw.down})
    for (const WeightView& v : *vs) EXPECT_NE(v.packed, nullptr);
  EXPECT_NE(model->prepared().describe().find("Q8_0"), std::string::npos);
  const std::vector<float> got = b.eval(prompt, true);
  ASSERT_EQ(got.size(), ref.size());
  double max_err = 0, max_ref = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    max_err = std::max(max_err, double(std::fabs(got[i] - ref[i])));
    max_ref = std::max(max_ref, double(std::fabs(ref[i])));
  }
  EXPECT_LT(max_err, 2e-3 * max_ref + 1e-4);
  // Decode (one token at a time: the repacked experts' decode kernels) gives the same argmax.
  Session c(model, so);
  const int nv = model->n_vocab();
  for (size_t i = 0; i < prompt.size(); ++i) {
    const std::vector<float>& l = c.eval({prompt[i]});
    const auto am = [&](const float* p) { return std::max_element(p, p + nv) - p; };
    EXPECT_EQ(am(l.data()), am(got.data() + i * size_t(nv))) << "token " << i;
  }
}

}  // namespace
}  // namespace qleap

namespace qleap {
namespace {

TEST(TransferCompression, RoundTripsAndMeasuresRatio) {
  if (available_codecs().empty()) GTEST_SKIP() << "built without zstd and lz4";
  // Highly repetitive bytes compress; the ratio must show it. The round trip is checked inside.
  std::vector<uint8_t> data(200000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = uint8_t((i / 7) % 5);
  const auto res = measure_compression(data.data(), data.size(), 65536);
  ASSERT_EQ(res.size(), available_codecs().size());
  for (const auto& r : res) {
    EXPECT_EQ(r.in_bytes, data.size());
    EXPECT_GT(r.ratio(), 5.0) << r.codec;
    EXPECT_GT(r.decompress_gbps, 0.0);
  }
  EXPECT_THROW(measure_compression(data.data(), 0, 10), InvalidArgument);
}

}  // namespace
}  // namespace qleap
