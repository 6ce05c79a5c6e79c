// deepseek2 (DeepSeek-V2/V3-style MLA + MoE) against transformers: the tiny random models deepseek_v3
// (q_lora, sigmoid routing with a selection bias and groups, routed scale, a leading dense layer, YaRN)
// and deepseek_v2_lite (q_proj, softmax greedy routing, two shared experts) of tests/golden/fixtures
// (tools/gen_golden.py, references in float64), converted by our converter and run by the Engine on the
// absorbed latent. F32 logits within 1e-4 at every position in every chunking; decode rows equal to
// prefill; F16 / Q8_0 weights close with routing changes counted; the latent in q8_0 and TurboQuant
// caches; the older fused attn_kv_b layout equal to the split one; MLA refused on a device backend.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "gguf/convert.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "golden_test_util.h"
#include "kv/kv_cache.h"
#include "kv/kv_calibration.h"
#include "model/model.h"
#include "model/moe_block.h"
#include "quant/quant.h"
#include "runtime/engine.h"
#include "sim_device_backend.h"

namespace qleap {
namespace {

using testing::convert_fixture;
using testing::Golden;
using testing::load_golden;
using testing::RoutingLog;

EngineOptions options(const std::string& kv, int n_batch = 512) {
  EngineOptions o;
  o.n_ctx = 128;
  o.n_threads = 2;
  o.n_batch = n_batch;
  o.kv_type = kv;
  o.calibrate_kv = false;  // the fixtures carry no tokenizer for the calibration text
  return o;
}

const char* const kFixtures[] = {"deepseek_v3", "deepseek_v2_lite"};

TEST(MlaGolden, F32MatchesTransformersInEveryChunking) {
  for (const char* name : kFixtures) {
    testing::TempDir tmp("mla_f32");
    auto model = load_model(convert_fixture(name, GgmlType::F32, tmp));
    const Golden g = load_golden(name);
    EXPECT_EQ(model->hparams().n_kv_heads, 1);
    EXPECT_EQ(model->hparams().head_dim, 16 + 32);  // rope + kv_lora_rank: the cached latent
    for (int n_batch : {512, 7, 1}) {
      for (size_t p = 0; p < g.prompts.size(); ++p) {
        const double e = testing::max_abs_err(
            g.logits[p], testing::prefill_logits(model, g.prompts[p], options("f32", n_batch)).data());
        std::printf("[golden] %s F32 n_batch %d prompt %zu (%zu tokens): max abs err %.3g\n", name, n_batch,
                    p, g.prompts[p].size(), e);
        EXPECT_LT(e, 1e-4) << name << " n_batch " << n_batch << " prompt " << p;
      }
    }
  }
}

// Slot 1 decodes the prompt token by token next to slot 0 decoding another sequence.
TEST(MlaGolden, DecodeEqualsPrefill) {
  for (const char* name : kFixtures) {
    testing::TempDir tmp("mla_decode");
    auto model = load_model(convert_fixture(name, GgmlType::F32, tmp));
    const std::vector<int32_t> prompt = load_golden(name).prompts[0];
    const double e = testing::decode_vs_prefill(model, prompt, options("f32"));
    const int n = int(prompt.size());
    std::printf("[golden] %s decode vs prefill over %d tokens: max abs diff %.3g\n", name, n, e);
    EXPECT_LT(e, 1e-4) << name;
  }
}

// Quantized weights or KV caches against the reference. A routing change (a near tie flipped by
// rounding) changes that token by a whole expert: such positions (routing compared with the F32 model)
// are counted, bounded and left out of the error bound; argmax must agree where the reference's top-2
// gap exceeds the bound. Bounds: about 2x the measured figures (docs/models.md). tq3 keeps each query's
// last 64 positions exact, which covers these prompts (the latent plumbing, nearly exact); tq3:w0
// quantizes every position: on these tiny random models it lands where the 4-bit block caches do
// (measured: q4_0 0.25 .. 0.58 of max |logit|, tq3:w0 0.49 .. 0.55), so its bounds only say it runs.
struct Bound {
  GgmlType type;
  const char* kv;
  double rel_tol, max_flips;
};

TEST(MlaGolden, QuantizedWeightsAndLatentCachesCloseToTransformers) {
  const Bound bounds[] = {{GgmlType::F16, "f16", 2e-2, 0.1},
                          {GgmlType::Q8_0, "f16", 0.8, 0.3},
                          {GgmlType::F32, "q8_0", 0.8, 0.3},
                          {GgmlType::F32, "tq3", 2e-2, 0.1},
                          {GgmlType::F32, "tq3:w0", 0.8, 0.8}};
  for (const char* name : kFixtures) {
    const Golden g = load_golden(name);
    testing::TempDir tmp("mla_q");
    auto f32 = load_model(convert_fixture(name, GgmlType::F32, tmp));
    auto runner = [](const std::shared_ptr<const Model>& model, const std::string& kv) -> testing::PromptRun {
      return [model, kv](const std::vector<int32_t>& prompt, RoutingLog& log) {
        return testing::prefill_logits(model, prompt, options(kv), &log);
      };
    };
    const std::vector<RoutingLog> ref_routes = testing::reference_routing(g, runner(f32, "f32"));
    for (const Bound& b : bounds) {
      auto model = b.type == GgmlType::F32 ? f32 : load_model(convert_fixture(name, b.type, tmp));
      const testing::Closeness c =
          testing::compare_to_golden(g, ref_routes, runner(model, b.kv), b.rel_tol * g.max_ref);
      testing::print_closeness(std::string(name) + " " + type_name(b.type) + " weights, kv " + b.kv, c, g);
      EXPECT_EQ(c.non_finite, 0) << name << " " << type_name(b.type) << " " << b.kv;
      EXPECT_LT(c.max_err, b.rel_tol * g.max_ref) << name << " " << type_name(b.type) << " " << b.kv;
      EXPECT_EQ(c.clear_mismatch, 0) << name << " " << type_name(b.type) << " " << b.kv;
      EXPECT_LE(c.flipped, b.max_flips * c.positions) << name << " " << type_name(b.type) << " " << b.kv;
    }
  }
}

// What the converter writes: llama.cpp's deepseek2 names and keys, kv_b split per head.
TEST(MlaConvert, FileLayout) {
  testing::TempDir tmp("mla_layout");
  const auto v3 = GgufFile::open(convert_fixture("deepseek_v3", GgmlType::F16, tmp));
  EXPECT_EQ(v3->architecture(), "deepseek2");
  for (const char* k : {"attention.q_lora_rank", "attention.kv_lora_rank", "leading_dense_block_count",
                        "expert_shared_count", "expert_weights_scale", "expert_gating_func",
                        "expert_group_count", "expert_group_used_count", "rope.scaling.yarn_log_multiplier"})
    EXPECT_NE(v3->find_arch(k), nullptr) << k;
  EXPECT_EQ(v3->find_arch("expert_gating_func")->as_int(), 2);
  EXPECT_EQ(v3->find_arch("attention.key_length")->as_int(), 32);
  EXPECT_EQ(v3->find_arch("attention.value_length")->as_int(), 24);
  EXPECT_EQ(v3->find_arch("rope.dimension_count")->as_int(), 16);
  EXPECT_EQ(v3->tensor("blk.0.attn_k_b.weight").ne(1), 4 * 32);  // heads x kv_lora_rank rows of nope
  EXPECT_EQ(v3->tensor("blk.0.attn_v_b.weight").ne(1), 4 * 24);  // heads x v rows of kv_lora_rank
  EXPECT_EQ(v3->tensor("blk.1.exp_probs_b.bias").type, GgmlType::F32);
  for (const char* t :
       {"blk.0.attn_q_a.weight", "blk.0.attn_q_a_norm.weight", "blk.0.attn_q_b.weight",
        "blk.0.attn_kv_a_mqa.weight", "blk.0.attn_kv_a_norm.weight", "blk.0.ffn_gate.weight",
        "blk.1.ffn_gate_exps.weight", "blk.1.ffn_gate_shexp.weight", "blk.1.ffn_gate_inp.weight"})
    EXPECT_NE(v3->find_tensor(t), nullptr) << t;
  EXPECT_EQ(v3->find_tensor("blk.0.attn_kv_b.weight"), nullptr);
  EXPECT_EQ(v3->find_tensor("blk.0.ffn_gate_inp.weight"), nullptr);  // the leading dense layer
  const auto v2 = GgufFile::open(convert_fixture("deepseek_v2_lite", GgmlType::F16, tmp));
  EXPECT_NE(v2->find_tensor("blk.0.attn_q.weight"), nullptr);
  EXPECT_EQ(v2->find_tensor("blk.0.attn_q_a.weight"), nullptr);
  EXPECT_EQ(v2->find_arch("expert_gating_func")->as_int(), 1);
  EXPECT_EQ(v2->find_arch("expert_group_count"), nullptr);
  EXPECT_EQ(v2->find_arch("attention.q_lora_rank"), nullptr);
}

// Files from llama.cpp's converter before the kv_b split hold attn_kv_b (per head nope key rows, then v
// value rows): rebuilt here from a split file, it must give the same logits.
TEST(MlaConvert, FusedKvBGivesTheSameLogits) {
  testing::TempDir tmp("mla_fused");
  const std::string split = convert_fixture("deepseek_v3", GgmlType::F32, tmp);
  const auto src = GgufFile::open(split);
  const int64_t H = 4, N = 16, V = 24, R = 32;
  GgufWriter w;
  for (const auto& [key, v] : src->metadata())
    if (key != "general.alignment") w.set(key, v);
  std::vector<std::vector<float>> keep;
  for (const GgufTensor& t : src->tensors()) {
    if (t.name.ends_with("attn_v_b.weight")) continue;
    if (!t.name.ends_with("attn_k_b.weight")) {
      w.add_tensor(t.name, t.type, t.shape, static_cast<const void*>(t.data));
      continue;
    }
    const std::string blk = t.name.substr(0, t.name.find("attn_k_b"));
    const float* kb = reinterpret_cast<const float*>(t.data);
    const float* vb = reinterpret_cast<const float*>(src->tensor(blk + "attn_v_b.weight").data);
    std::vector<float>& kv = keep.emplace_back(size_t(H * (N + V) * R));
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < N; ++i)
        for (int64_t r = 0; r < R; ++r) kv[size_t((h * (N + V) + i) * R + r)] = kb[(h * R + r) * N + i];
      std::copy(vb + h * V * R, vb + (h + 1) * V * R, kv.begin() + (h * (N + V) + N) * R);
    }
    w.add_tensor(blk + "attn_kv_b.weight", GgmlType::F32, {R, H * (N + V)}, kv.data());
  }
  const std::string fused = tmp.file("fused.gguf");
  w.write(fused);
  const std::vector<int32_t> prompt = load_golden("deepseek_v3").prompts[1];
  const std::vector<float> a = testing::prefill_logits(load_model(split), prompt, options("f32"));
  const std::vector<float> b = testing::prefill_logits(load_model(fused), prompt, options("f32"));
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) e = std::max(e, double(std::fabs(a[i] - b[i])));
  EXPECT_LT(e, 1e-5);
}

// DeepSeek routing by hand: V3's sigmoid scores with group-limited selection (a group scored by its best
// two) and a selection bias that does not enter the weights; V2's softmax with groups scored by their best.
TEST(MoeRouteGrouped, DeepSeekRules) {
  const float logits[8] = {3, -3, 1, 1, 0.5f, 0.5f, -1, -1};
  const auto sig = [](float x) { return 1.0f / (1.0f + std::exp(-x)); };
  HParams hp;
  hp.expert_gating = ExpertGating::kSigmoid;
  hp.n_expert_group = 4;
  hp.n_expert_group_used = 2;
  hp.expert_weights_norm = true;
  hp.expert_weights_scale = 2.5f;
  float l[8], w[2];
  int32_t ids[2];
  // Group sums 1.0, 1.46, 1.25, 0.54: groups 1 and 2 compete; expert 0, the best alone, does not.
  std::copy(logits, logits + 8, l);
  moe_route_grouped(l, 8, 2, hp, nullptr, ids, w);
  EXPECT_EQ(ids[0], 2);
  EXPECT_EQ(ids[1], 3);  // a tie: lower index first
  EXPECT_NEAR(w[0], 1.25f, 1e-6);
  EXPECT_NEAR(w[1], 1.25f, 1e-6);
  const float bias[8] = {0, 0, 0, 0, 0.2f, 0, 0, 0};
  std::copy(logits, logits + 8, l);
  moe_route_grouped(l, 8, 2, hp, bias, ids, w);
  EXPECT_EQ(ids[0], 4);
  EXPECT_EQ(ids[1], 2);
  const float s4 = sig(0.5f), s2 = sig(1.0f);
  EXPECT_NEAR(w[0], 2.5f * s4 / (s4 + s2), 1e-6);  // the bias chose, the scores weigh
  EXPECT_NEAR(w[1], 2.5f * s2 / (s4 + s2), 1e-6);
  // Softmax, best-of-group: groups 0 (3) and 1 (1) compete.
  hp.expert_gating = ExpertGating::kSoftmax;
  hp.expert_weights_norm = false;
  hp.expert_weights_scale = 1.0f;
  std::copy(logits, logits + 8, l);
  moe_route_grouped(l, 8, 2, hp, nullptr, ids, w);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 2);
  double z = 0;
  for (float x : logits) z += std::exp(double(x));
  EXPECT_NEAR(w[0], std::exp(3.0) / z, 1e-6);
  EXPECT_NEAR(w[1], std::exp(1.0) / z, 1e-6);
}

// KvShape::values_are_keys: the float and block caches keep one set of rows (half the bytes) and attend
// exactly as a cache that stored the same rows as keys and values. TurboQuant keeps one record per
// position too (its value path reads the key records: MlaKvCache.TurboQuantReadsValuesFromKeyRecords); with
// every position exact (the default window covers these 61) it attends as the two-record cache.
TEST(MlaKvCache, ValuesAreKeysKeepsOneCopy) {
  KvShape s;
  s.n_layers = 2;
  s.n_ctx = 80;
  s.n_heads = 4;
  s.n_kv_heads = 1;
  s.head_dim = 48;
  KvShape shared = s;
  shared.values_are_keys = true;
  std::vector<float> k(size_t(70) * 48), q(size_t(70) * 4 * 48);
  for (size_t i = 0; i < k.size(); ++i) k[i] = float(std::sin(0.37 * double(i)));
  for (size_t i = 0; i < q.size(); ++i) q[i] = float(std::cos(0.11 * double(i)));
  ThreadPool pool(2);
  for (const std::string type : {"f32", "f16", "q8_0", "q4_0", "q8_0r", "tq3"}) {
    auto a = make_kv_cache(type, s), b = make_kv_cache(type, shared);
    for (auto* c : {a.get(), b.get()}) {
      c->store(1, 0, 60, k.data(), k.data());  // a prefill (the tiled kernel for f32 / f16)
      c->store(1, 60, 1, k.data() + 60 * 48, k.data() + 60 * 48);
    }
    std::vector<float> oa(size_t(60) * 4 * 48), ob(oa.size());
    a->attend(1, 0, 60, q.data(), oa.data(), 0.2f, pool);
    b->attend(1, 0, 60, q.data(), ob.data(), 0.2f, pool);
    // tq3: the exact rows of the shared cache are fp16 in the key's rotated basis, the two-record
    // cache's in the value's, so the two agree to fp16 rounding, not bit for bit.
    const double tol = type == "tq3" ? 5e-3 : 0.0;
    auto max_diff = [](const std::vector<float>& x, const std::vector<float>& y, size_t n) {
      double e = 0;
      for (size_t i = 0; i < n; ++i) e = std::max(e, std::fabs(double(x[i]) - double(y[i])));
      return e;
    };
    EXPECT_LE(max_diff(oa, ob, oa.size()), tol) << type << " prefill";
    a->attend(1, 60, 1, q.data(), oa.data(), 0.2f, pool);
    b->attend(1, 60, 1, q.data(), ob.data(), 0.2f, pool);
    EXPECT_LE(max_diff(oa, ob, 4 * 48), tol) << type << " decode";
    if (type == "tq3") {
      // Only key records: 3-bit codes of 48 values plus the record's norm.
      EXPECT_LT(2 * b->bytes_per_token(), a->bytes_per_token() + 16) << type;
      EXPECT_LT(b->bytes_per_token(), a->bytes_per_token()) << type;
    } else {
      EXPECT_EQ(2 * b->bytes_per_token(), a->bytes_per_token()) << type;
    }
  }
}

// TurboQuant with values_are_keys against float attention (values = keys, double precision), every
// position a record (w0): prefill in chunks of 64 through the tiled path, then decode split across
// threads. The latent has a large offset on a quarter of its channels, as real latents do, so a cache
// that decoded the value from the key record without the keys' centering and channel scales would be
// off by about that offset. The shared cache must be about as accurate as the two-record one.
TEST(MlaKvCache, TurboQuantReadsValuesFromKeyRecords) {
  const int n = 300, hd = 48, nh = 4;
  KvShape s;
  s.n_layers = 1;
  s.n_ctx = n;
  s.n_heads = nh;
  s.n_kv_heads = 1;
  s.head_dim = hd;
  KvShape shared = s;
  shared.values_are_keys = true;
  std::vector<float> k(size_t(n) * hd), q(size_t(n) * nh * hd);
  uint64_t st = 12345;
  auto rnd = [&] {
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    return float(double(st >> 11) / double(1ull << 53) - 0.5);
  };
  for (size_t i = 0; i < k.size(); ++i) k[i] = 2.0f * rnd() + (i % hd < size_t(hd) / 4 ? 3.0f : 0.0f);
  for (float& x : q) x = 2.0f * rnd();
  const float scale = 0.25f;
  std::vector<double> ref(q.size());
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nh; ++h) {
      const float* qh = &q[(size_t(t) * nh + size_t(h)) * hd];
      std::vector<double> w(size_t(t) + 1);
      double mx = -1e300, z = 0;
      for (int j = 0; j <= t; ++j) {
        double d = 0;
        for (int i = 0; i < hd; ++i) d += double(qh[i]) * k[size_t(j) * hd + size_t(i)];
        w[size_t(j)] = d * scale;
        mx = std::max(mx, w[size_t(j)]);
      }
      for (double& x : w) z += (x = std::exp(x - mx));
      double* o = &ref[(size_t(t) * nh + size_t(h)) * hd];
      for (int j = 0; j <= t; ++j)
        for (int i = 0; i < hd; ++i) o[i] += w[size_t(j)] / z * k[size_t(j) * hd + size_t(i)];
    }
  KvCalibrationRecorder rec(shared);
  ThreadPool pool(4);
  rec.store(0, 0, n, k.data(), k.data());
  std::vector<float> scratch(q.size());
  rec.attend(0, 0, n, q.data(), scratch.data(), scale, pool);
  const KvCalibration cal = rec.result();
  auto run = [&](KvCache& kv) {
    std::vector<float> out(q.size());
    const size_t row = size_t(nh) * hd;
    for (int pos = 0; pos < n; pos += pos < 256 ? 64 : 1) {
      const int m = pos < 256 ? 64 : 1;
      kv.store(0, pos, m, k.data() + size_t(pos) * hd, k.data() + size_t(pos) * hd);
      kv.attend(0, pos, m, q.data() + size_t(pos) * row, out.data() + size_t(pos) * row, scale, pool);
    }
    double e = 0;
    for (size_t i = 0; i < out.size(); ++i) e = std::max(e, std::fabs(double(out[i]) - ref[i]));
    return e;
  };
  for (const std::string type : {"tq4:w0", "tq3:w0"}) {
    for (bool calibrated : {false, true}) {
      auto two = make_kv_cache(type, s), one = make_kv_cache(type, shared);
      for (auto* c : {two.get(), one.get()}) {
        c->set_pool(&pool);
        if (calibrated) c->calibrate(cal);
      }
      const double e_two = run(*two), e_one = run(*one);
      std::printf(
          "[mla] %s%s vs float attention: one record %.3g (%zu B/token), two records %.3g (%zu B/token)\n",
          type.c_str(), calibrated ? " calibrated" : "", e_one, one->bytes_per_token(), e_two,
          two->bytes_per_token());
      EXPECT_LT(2 * one->bytes_per_token(), two->bytes_per_token() + 16) << type;
      EXPECT_LT(e_one, 1.5 * e_two + 0.05) << type << " calibrated " << calibrated;
      EXPECT_LT(e_one, 1.0) << type << " calibrated " << calibrated;
    }
  }
}

// No device kernel takes MLA yet: a layer placed on a device backend is refused with a clear message.
TEST(MlaEngine, DeviceLayersAreRefused) {
  testing::TempDir tmp("mla_dev");
  auto model = load_model(convert_fixture("deepseek_v2_lite", GgmlType::F32, tmp));
  static ThreadPool sim_pool(1);
  EngineOptions o = options("f16");
  o.gpu_layers = 1;
  o.make_device_backend = [] { return std::make_unique<testing::SimDeviceBackend>(sim_pool); };
  try {
    Engine e(model, o);
    const int32_t t = 1;
    e.prefill(0, &t, 1);
    FAIL() << "MLA layer ran on a device backend";
  } catch (const Unsupported& e) {
    // The last layer, a MoE layer, is refused first (the MoE message); MLA layers without experts say MLA.
    EXPECT_NE(std::string(e.what()).find("CPU only"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qleap
