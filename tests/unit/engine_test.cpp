// The Engine (runtime/engine.h). Continuous batching: a decode step of several slots must give each
// slot exactly (bit for bit) the logits it gets alone and the same as a Session, so that concurrent
// greedy requests produce the same text as sequential ones.
#include "runtime/engine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "backend/cpu/matmul.h"
#include "backend/cpu/packed_weights.h"
#include "core/error.h"
#include "gguf/convert.h"
#include "model_test_util.h"
#include "quant/quant.h"
#include "runtime/session.h"
#include "sim_device_backend.h"

namespace qleap {
namespace {

void check_model(const std::string& path, int n_threads) {
  auto model = load_model(path);
  EngineOptions opt;
  opt.n_ctx = 64;
  opt.n_threads = n_threads;
  opt.n_slots = 4;
  Engine bd(model, opt);
  Engine single(model, opt);
  const int nv = bd.n_vocab();
  const std::vector<std::vector<int32_t>> prompts = {{1, 5, 9, 13}, {1, 7}, {1, 2, 3, 4, 5, 6, 7}, {1, 30}};
  for (int s = 0; s < 4; ++s) {
    bd.prefill(s, prompts[size_t(s)].data(), int(prompts[size_t(s)].size()));
    single.prefill(s, prompts[size_t(s)].data(), int(prompts[size_t(s)].size()));
  }
  // Reference: a Session fed the same tokens one at a time after the same prefill.
  SessionOptions so;
  so.n_ctx = 64;
  so.n_threads = n_threads;
  for (int step = 0; step < 3; ++step) {
    const int slots[4] = {2, 0, 3, 1};
    const int32_t toks[4] = {int32_t(10 + step), int32_t(20 + step), int32_t(30 + step), int32_t(40 + step)};
    const float* batched = bd.decode(slots, toks, 4);
    std::vector<float> b(batched, batched + size_t(4) * nv);
    for (int i = 0; i < 4; ++i) {
      const float* alone = single.decode(&slots[i], &toks[i], 1);
      ASSERT_EQ(0, std::memcmp(alone, b.data() + size_t(i) * nv, sizeof(float) * size_t(nv)))
          << "slot " << slots[i] << " step " << step;
    }
  }
  for (int s = 0; s < 4; ++s) EXPECT_EQ(bd.n_past(s), int(prompts[size_t(s)].size()) + 3);

  // Session agreement for slot 0 (same kernels; prefill then single-token steps).
  Session sess(model, so);
  sess.eval(prompts[0]);
  for (int step = 0; step < 3; ++step) sess.eval({int32_t(20 + step)});
  const float* last = single.decode(std::vector<int>{0}.data(), std::vector<int32_t>{50}.data(), 1);
  const auto& ref = sess.eval({50});
  for (int j = 0; j < nv; ++j) ASSERT_EQ(ref[size_t(j)], last[j]) << j;

  // Errors instead of crashes.
  const int dup[2] = {1, 1};
  const int32_t t2[2] = {1, 1};
  EXPECT_THROW(bd.decode(dup, t2, 2), InvalidArgument);
  const int32_t bad = -1;
  EXPECT_THROW(bd.prefill(0, &bad, 1), InvalidArgument);

  // Embeddings are unit vectors and do not depend on the slot's previous contents.
  auto e1 = bd.embed(0, {1, 5, 9});
  auto e2 = bd.embed(1, {1, 5, 9});
  EXPECT_EQ(e1, e2);
  double n2 = 0;
  for (float v : e1) n2 += double(v) * v;
  EXPECT_NEAR(n2, 1.0, 1e-4);
}

TEST(Engine, RowsIndependentOfBatchStories) {
  check_model(testing::stories_path(), 2);
}

TEST(Engine, RowsIndependentOfBatchSmolLM) {
  const std::string p = testing::default_model_path();
  if (p.empty()) GTEST_SKIP() << "$QLEAP_DEFAULT_MODEL (SmolLM2-135M-Instruct.Q4_1.gguf) not set";
  check_model(p, 2);
}

}  // namespace
}  // namespace qleap

namespace qleap {
namespace {

// RowExactMatmul: with the guard, a multi-row matmul gives every row bit for bit what a call with
// that row alone gives, for every weight format with a SIMD kernel.
TEST(Engine, RowExactMatmulMatchesSingleRows) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  ThreadPool pool(2);
  const int64_t rows = 300, cols = 512;
  const int m = 7;
  std::vector<float> x(size_t(m * cols));
  for (auto& v : x) v = u(rng);
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1,
                     GgmlType::Q5_1, GgmlType::Q4_K, GgmlType::Q6_K}) {
    std::vector<float> f(size_t(rows * cols));
    for (auto& v : f) v = u(rng);
    std::vector<uint8_t> w(row_size(t, cols) * size_t(rows));
    quantize_row_ref(t, f.data(), w.data(), rows * cols);
    WeightView wv{t, w.data(), cols, rows, row_size(t, cols)};
    std::vector<float> alone(size_t(m * rows)), batched(size_t(m * rows));
    for (int i = 0; i < m; ++i)
      matmul(wv, x.data() + size_t(i) * cols, 1, alone.data() + size_t(i) * rows, pool);
    {
      const RowExactMatmul exact;
      matmul(wv, x.data(), m, batched.data(), pool);
    }
    EXPECT_EQ(0, std::memcmp(alone.data(), batched.data(), alone.size() * sizeof(float))) << type_name(t);
  }
}

// ---- layers on a (simulated) device: the driver's device path ----

struct RunResult {
  std::vector<float> prefill;  // every row's logits
  std::vector<int32_t> greedy;
};

// Prefill 24 tokens (all logits), then 16 greedy steps.
RunResult run(const std::shared_ptr<const Model>& model, const std::string& kv, int gpu_layers,
              testing::SimDeviceBackend** sim_out = nullptr) {
  static ThreadPool sim_pool(1);
  EngineOptions o;
  o.n_ctx = 64;
  o.n_threads = 1;
  o.n_batch = 16;
  o.kv_type = kv;
  o.gpu_layers = gpu_layers;
  if (gpu_layers != 0) {
    o.make_device_backend = [sim_out]() {
      auto b = std::make_unique<testing::SimDeviceBackend>(sim_pool);
      if (sim_out) *sim_out = b.get();
      return b;
    };
  }
  Engine e(model, o);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 24; ++i) prompt.push_back(int32_t(1 + (i * 37) % 500));
  RunResult r;
  const float* l = e.prefill(0, prompt.data(), int(prompt.size()), true);
  r.prefill.assign(l, l + prompt.size() * size_t(e.n_vocab()));
  const float* last = l + (prompt.size() - 1) * size_t(e.n_vocab());
  for (int step = 0; step < 16; ++step) {
    const int32_t t = int32_t(std::max_element(last, last + e.n_vocab()) - last);
    r.greedy.push_back(t);
    last = e.prefill(0, &t, 1);
  }
  return r;
}

// The same ops on the same kernels: offloading any number of layers (and the head, with all of them)
// must not change a bit, for the plain f16 cache and for TurboQuant (kept in host memory for the
// device layers and calibrated per segment).
TEST(EngineDevicePath, OffloadedLayersGiveTheCpuResultBitForBit) {
  auto model = load_model(testing::stories_path());
  for (const std::string kv : {"f16", "tq3", "q8_0"}) {
    const RunResult cpu = run(model, kv, 0);
    for (int ngl : {1, 3, -1}) {
      testing::SimDeviceBackend* sim = nullptr;
      const RunResult dev = run(model, kv, ngl, &sim);
      ASSERT_NE(sim, nullptr);
      EXPECT_FALSE(sim->prepared.empty());
      EXPECT_GT(sim->downloads, 0) << "results must come back through download()";
      ASSERT_EQ(cpu.prefill.size(), dev.prefill.size());
      EXPECT_EQ(0, std::memcmp(cpu.prefill.data(), dev.prefill.data(), cpu.prefill.size() * sizeof(float)))
          << kv << " ngl " << ngl;
      EXPECT_EQ(cpu.greedy, dev.greedy) << kv << " ngl " << ngl;
    }
  }
}

// Only a single sequence's decode step is offered for recording, keyed by slot and head.
TEST(EngineDevicePath, OnlySingleSequenceDecodeIsCaptured) {
  auto model = load_model(testing::stories_path());
  static ThreadPool sim_pool(1);
  testing::SimDeviceBackend* sim = nullptr;
  EngineOptions o;
  o.n_ctx = 64;
  o.n_threads = 1;
  o.n_slots = 2;
  o.gpu_layers = -1;
  o.make_device_backend = [&sim]() {
    auto b = std::make_unique<testing::SimDeviceBackend>(sim_pool);
    sim = b.get();
    return b;
  };
  Engine e(model, o);
  const std::vector<int32_t> p = {1, 5, 9, 13};
  e.prefill(0, p.data(), 4);
  e.prefill(1, p.data(), 4);
  // The simulated device keeps its cache in host memory (no device kernels): nothing is capturable.
  EXPECT_EQ(sim->captured_runs, 0);
  const int32_t t = 7;
  e.prefill(0, &t, 1);
  EXPECT_EQ(sim->captured_runs, 0);
  const int slots[2] = {0, 1};
  const int32_t toks[2] = {3, 4};
  e.decode(slots, toks, 2);
  EXPECT_EQ(sim->captured_runs, 0);
  EXPECT_EQ(e.describe_backends(), "simdev: layers 0-4 + head");
}

// MoE layers have no device path yet: placing one on a device is refused with a message that says
// what to do, never run wrongly.
TEST(EngineDevicePath, MoeLayersOnADeviceAreRefusedClearly) {
  const auto dir = std::filesystem::path(testing::source_dir()) / "tests/golden/fixtures/mixtral";
  ASSERT_TRUE(std::filesystem::exists(dir / "config.json"));
  const auto out =
      std::filesystem::temp_directory_path() / ("qleap_engine_moe_" + std::to_string(::getpid()) + ".gguf");
  ConvertOptions co;
  co.out_type = GgmlType::F32;
  convert_hf_to_gguf(dir.string(), out.string(), co);
  auto model = load_model(out.string());
  std::filesystem::remove(out);
  ASSERT_EQ(model->arch(), "llama");  // Mixtral is llama with expert tensors
  static ThreadPool sim_pool(1);
  EngineOptions o;
  o.n_ctx = 32;
  o.gpu_layers = 1;
  o.make_device_backend = [] { return std::make_unique<testing::SimDeviceBackend>(sim_pool); };
  try {
    Engine e(model, o);
    FAIL() << "a MoE layer was placed on a device";
  } catch (const Unsupported& err) {
    EXPECT_NE(std::string(err.what()).find("MoE layers run on the CPU"), std::string::npos) << err.what();
    EXPECT_NE(std::string(err.what()).find("--expert-tier cuda"), std::string::npos) << err.what();
  }
  o.gpu_layers = 0;
  EXPECT_NO_THROW({ Engine e(model, o); });
}

// Layers placed on a device keep no repacked host copy (it would double the RAM a GPU user needs);
// the layers and head left on the CPU are repacked once, however many engines share the model.
TEST(EngineDevicePath, OnlyHostLayersAreRepacked) {
  if (!repack_enabled()) GTEST_SKIP() << "repacking is off at this ISA level";
  const auto dir = std::filesystem::path(testing::source_dir()) / "tests/golden/fixtures/qwen2";
  const auto out =
      std::filesystem::temp_directory_path() / ("qleap_engine_pack_" + std::to_string(::getpid()) + ".gguf");
  ConvertOptions co;
  co.out_type = GgmlType::Q8_0;
  convert_hf_to_gguf(dir.string(), out.string(), co);
  auto model = load_model(out.string());
  std::filesystem::remove(out);
  const int n_layers = model->hparams().n_layers;
  ASSERT_GE(n_layers, 2);
  EXPECT_EQ(model->prepared().matrices(), 0) << "nothing is repacked before an engine needs it";
  const ModelWeights& w = model->weights();
  static ThreadPool sim_pool(1);
  EngineOptions o;
  o.n_ctx = 32;
  o.make_device_backend = [] { return std::make_unique<testing::SimDeviceBackend>(sim_pool); };
  o.gpu_layers = -1;
  { Engine e(model, o); }
  EXPECT_EQ(model->prepared().matrices(), 0);
  o.gpu_layers = n_layers - 1;  // layer 0 on the CPU, the rest and the head on the device
  { Engine e(model, o); }
  EXPECT_NE(w.layers[0].wq.packed, nullptr);
  for (int il = 1; il < n_layers; ++il) EXPECT_EQ(w.layers[size_t(il)].wq.packed, nullptr) << il;
  const int after_one = model->prepared().matrices();
  EXPECT_GT(after_one, 0);
  o.gpu_layers = 0;
  o.make_device_backend = nullptr;
  { Engine e(model, o); }
  for (int il = 0; il < n_layers; ++il) EXPECT_NE(w.layers[size_t(il)].wq.packed, nullptr) << il;
  const int all = model->prepared().matrices();
  { Engine e(model, o); }
  EXPECT_EQ(model->prepared().matrices(), all) << "a second engine repacks nothing again";
  EXPECT_GT(all, after_one);
}

// ---- the KV cache lifecycle through the Engine ----

std::vector<float> decode_after(Engine& e, int slot, const std::vector<int32_t>& prompt) {
  e.prefill(slot, prompt.data(), int(prompt.size()));
  const int32_t t = 42;
  const float* l = e.prefill(slot, &t, 1);
  return std::vector<float>(l, l + e.n_vocab());
}

// A slot that starts a new conversation (reset) computes exactly what a fresh engine computes: no
// statistics of the previous conversation survive, for every cache type. The calibration does not
// depend on the first prompt either: a 2-token first prompt leaves the cache calibrated.
TEST(EngineLifecycle, ResetSlotEqualsAFreshEngine) {
  auto model = load_model(testing::stories_path());
  const std::vector<int32_t> first = {1, 300}, conv1 = {1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110},
                             conv2 = {1, 400, 401, 402, 403, 5, 6, 7, 8, 9, 10};
  for (const std::string kv : {"f16", "q4_0", "tq3", "tq4:w8"}) {
    EngineOptions o;
    o.n_ctx = 64;
    o.n_threads = 1;
    o.kv_type = kv;
    Engine reused(model, o);
    reused.prefill(0, first.data(), int(first.size()));
    EXPECT_EQ(reused.kv_usage().calibrated, kv.rfind("tq", 0) == 0) << kv;
    reused.reset(0);
    decode_after(reused, 0, conv1);
    reused.reset(0);
    const std::vector<float> a = decode_after(reused, 0, conv2);
    Engine fresh(model, o);
    const std::vector<float> b = decode_after(fresh, 0, conv2);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << kv;
  }
}

// trim(n) keeps a prefix: continuing after it equals computing that prefix afresh (in the same prefill
// chunks, so the rows are computed alike). TurboQuant keeps the exact window rows of the kept
// positions and drops those of the forgotten ones, so it is bit-exact too.
TEST(EngineLifecycle, TrimThenContinueEqualsFreshPrefix) {
  auto model = load_model(testing::stories_path());
  std::vector<int32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back(int32_t(1 + (i * 53) % 500));
  const std::vector<int32_t> more = {9, 99, 199};
  for (const std::string kv : {"f16", "q8_0", "tq3:w8", "tq3"}) {
    EngineOptions o;
    o.n_ctx = 64;
    o.n_threads = 1;
    o.n_batch = 20;
    o.kv_type = kv;
    Engine a(model, o);
    a.prefill(0, prompt.data(), 40);
    a.trim(0, 20);
    EXPECT_EQ(a.n_past(0), 20);
    const float* la = a.prefill(0, more.data(), 3);
    const std::vector<float> ra(la, la + a.n_vocab());
    Engine b(model, o);
    b.prefill(0, prompt.data(), 20);
    const float* lb = b.prefill(0, more.data(), 3);
    EXPECT_EQ(0, std::memcmp(ra.data(), lb, ra.size() * sizeof(float))) << kv;
    EXPECT_THROW(a.trim(0, 100), InvalidArgument);
  }
}

}  // namespace
}  // namespace qleap
