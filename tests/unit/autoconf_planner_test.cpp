#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "autoconf/planner.h"
#include "core/error.h"
#include "gguf/convert.h"
#include "gguf/gguf.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "model_test_util.h"
#include "runtime/engine.h"

namespace qleap {
namespace {

constexpr uint64_t kMiB = uint64_t(1) << 20;
constexpr uint64_t kGiB = uint64_t(1) << 30;

HardwareInfo cpu_machine(uint64_t ram_gib, int cores = 8) {
  HardwareInfo hw;
  hw.cpu_model = "Synthetic CPU";
  hw.physical_cores = cores;
  hw.logical_cpus = cores * 2;
  hw.isa = "avx2";
  hw.ram_total = ram_gib * kGiB;
  hw.ram_available = ram_gib * kGiB;
  hw.mem_bw_gbps = 50;
  return hw;
}

HardwareInfo with_gpu(HardwareInfo hw, uint64_t vram_gib, bool supported = true) {
  GpuInfo g;
  g.vendor = "nvidia";
  g.name = "Synthetic GPU";
  g.vram_total = vram_gib * kGiB;
  g.vram_free = vram_gib * kGiB;
  g.cc_major = supported ? 9 : 7;
  g.supported = supported;
  if (!supported) g.note = "compute capability below 8.0";
  hw.gpus.push_back(g);
  return hw;
}

// A dense 32-layer 7B-class model: ~200 MiB per layer, 128 KiB/token of f16 KV.
ModelInfo dense_7b() {
  ModelInfo m;
  m.name = "dense-7b";
  m.arch = "llama";
  m.n_layers = 32;
  m.n_ctx_train = 8192;
  m.n_embd = 4096;
  m.n_ff = 14336;
  m.n_vocab = 32000;
  m.n_heads = 32;
  m.n_kv_heads = 8;
  m.head_dim = 128;
  m.layer_bytes.assign(32, 200 * kMiB);
  m.layer_expert_bytes.assign(32, 0);
  m.token_embd_bytes = 70 * kMiB;
  m.output_bytes = 100 * kMiB;
  // 32 layers x 2 (K, V) x 8 heads x 128 x 2 bytes = 128 KiB for f16, 68 KiB for q8_0 (34/32 bytes/elem),
  // TurboQuant records of 66 (tq4) and 50 (tq3) bytes per head vector, plus 8 MiB of exact rows.
  m.kv_bytes_per_token = {{"f16", 131072}, {"q8_0", 69632}, {"tq4", 33792}, {"tq3", 25600}};
  m.kv_fixed_bytes = {{"tq4", 8 * kMiB}, {"tq3", 8 * kMiB}};
  return m;
}

// A 16-layer MoE: 64 experts, 8 used; 50 MiB dense + 600 MiB experts per layer.
ModelInfo moe_model() {
  ModelInfo m = dense_7b();
  m.name = "moe";
  m.n_layers = 16;
  m.n_experts = 64;
  m.n_experts_used = 8;
  m.n_ff = 1024;
  m.layer_bytes.assign(16, 50 * kMiB);
  m.layer_expert_bytes.assign(16, 600 * kMiB);
  m.kv_bytes_per_token = {{"f16", 65536}, {"q8_0", 34816}, {"tq4", 16896}, {"tq3", 12800}};
  return m;
}

TEST(AutoconfPlanner, NoGpuRunsOnCpuWithF16AndDefaultContext) {
  const Plan p = make_plan(cpu_machine(32), dense_7b(), PlanRequest{});
  EXPECT_EQ(p.gpu_layers, 0);
  EXPECT_EQ(p.gpu_index, -1);
  EXPECT_EQ(p.kv_type, "f16");
  EXPECT_EQ(p.n_ctx, 4096);
  EXPECT_EQ(p.threads, 8);
  EXPECT_EQ(p.batch, 512);
  EXPECT_TRUE(p.fits);
  EXPECT_EQ(p.kv_bytes, uint64_t(131072) * 4096);
  // Weights (32 x 200 + 70 + 100 MiB) and KV must all be counted in RAM.
  EXPECT_GT(p.ram_bytes, (32 * 200 + 170) * kMiB + p.kv_bytes);
  EXPECT_GT(p.est_cpu_tok_s, 0);
  EXPECT_FALSE(p.reasons.empty());
}

TEST(AutoconfPlanner, UnsupportedGpuIsReportedButNotUsed) {
  const Plan p = make_plan(with_gpu(cpu_machine(32), 24, false), dense_7b(), PlanRequest{});
  EXPECT_EQ(p.gpu_layers, 0);
  bool mentioned = false;
  for (const auto& r : p.reasons) mentioned |= r.find("not usable") != std::string::npos;
  EXPECT_TRUE(mentioned);
}

TEST(AutoconfPlanner, LargeGpuTakesEveryLayerAndTheOutput) {
  const Plan p = make_plan(with_gpu(cpu_machine(32), 24), dense_7b(), PlanRequest{});
  EXPECT_EQ(p.gpu_layers, 32);
  EXPECT_TRUE(p.output_on_gpu);
  EXPECT_EQ(p.kv_type, "f16");
  EXPECT_LE(p.vram_bytes, p.vram_budget);
  // Only the embedding table and runtime stay in RAM.
  EXPECT_LT(p.ram_bytes, 1 * kGiB);
  EXPECT_EQ(p.est_cpu_tok_s, 0);
}

TEST(AutoconfPlanner, SmallGpuTakesAPrefixThatFits) {
  const Plan p = make_plan(with_gpu(cpu_machine(32), 4), dense_7b(), PlanRequest{});
  EXPECT_GT(p.gpu_layers, 0);
  EXPECT_LT(p.gpu_layers, 32);
  EXPECT_FALSE(p.output_on_gpu);
  EXPECT_LE(p.vram_bytes, p.vram_budget);
  // One more layer would not fit: each costs its weights plus its share of the KV cache.
  const uint64_t per_layer = 200 * kMiB + p.kv_bytes / 32;
  EXPECT_GT(p.vram_bytes + per_layer, p.vram_budget);
}

TEST(AutoconfPlanner, F16KeptWhenItFitsEvenWithFewerLayersOnTheGpu) {
  // Long context: f16 KV for 32k tokens is 4 GiB, which pushes layers off a 10 GiB GPU; it still fits
  // in RAM, and the near-lossless type wins (the GPU caches hold f16 only).
  PlanRequest req;
  req.n_ctx = 32768;
  const Plan p = make_plan(with_gpu(cpu_machine(64), 10), dense_7b(), req);
  EXPECT_TRUE(p.fits);
  EXPECT_EQ(p.kv_type, "f16");
  const Plan tq = make_plan(with_gpu(cpu_machine(64), 10), dense_7b(), PlanRequest{32768, "tq4"});
  EXPECT_GT(tq.gpu_layers, p.gpu_layers);
}

// A CPU machine whose budget (available - max(512 MiB, total / 10)) is `budget`.
HardwareInfo cpu_budget(uint64_t budget) {
  HardwareInfo hw = cpu_machine(16);
  hw.ram_available = budget + hw.ram_total / 10;
  return hw;
}

TEST(AutoconfPlanner, TurboQuantChosenWhenF16DoesNotFitTheContextAndSlots) {
  const ModelInfo m = dense_7b();
  PlanRequest req;
  req.n_ctx = 32768;
  req.parallel = 4;
  req.batch = 512;  // (a smaller batch would otherwise make room for f16 first)
  // Each slot: f16 4 GiB, tq4 1.03 GiB + 8 MiB, tq3 0.78 GiB + 8 MiB.
  const uint64_t f16_ram = cpu_ram_bytes(m, "f16", 32768, 512, 4);
  const uint64_t tq4_ram = cpu_ram_bytes(m, "tq4", 32768, 512, 4);
  const uint64_t tq3_ram = cpu_ram_bytes(m, "tq3", 32768, 512, 4);
  EXPECT_EQ(f16_ram - tq4_ram, 4 * (uint64_t(131072 - 33792) * 32768 - 8 * kMiB));
  ASSERT_LT(tq3_ram, tq4_ram);

  // Room for f16: f16.
  Plan p = make_plan(cpu_budget(f16_ram), m, req);
  EXPECT_TRUE(p.fits);
  EXPECT_EQ(p.kv_type, "f16");
  EXPECT_EQ(p.kv_bytes, 4 * uint64_t(131072) * 32768);

  // One byte short for f16: tq4, and the reason names what f16 would have needed.
  p = make_plan(cpu_budget(f16_ram - 1), m, req);
  EXPECT_TRUE(p.fits);
  EXPECT_EQ(p.kv_type, "tq4");
  EXPECT_EQ(p.n_ctx, 32768);
  EXPECT_EQ(p.kv_bytes, 4 * (uint64_t(33792) * 32768 + 8 * kMiB));
  EXPECT_EQ(p.ram_bytes, tq4_ram);
  std::string why;
  for (const auto& r : p.reasons)
    if (r.rfind("KV f16 would need", 0) == 0) why = r;
  EXPECT_NE(why.find("KV f16 would need 16.00 GiB for 32768 x 4 slots"), std::string::npos) << why;
  EXPECT_NE(why.find("using tq4: 4.16 GiB"), std::string::npos) << why;

  // Not even tq4: tq3.
  p = make_plan(cpu_budget(tq4_ram - 1), m, req);
  EXPECT_TRUE(p.fits);
  EXPECT_EQ(p.kv_type, "tq3");
  // Not even tq3: no fit, the smallest type, said so.
  p = make_plan(cpu_budget(tq3_ram - 1), m, req);
  EXPECT_FALSE(p.fits);
  EXPECT_EQ(p.kv_type, "tq3");

  // The user's type is kept whatever it costs.
  req.kv_type = "f16";
  p = make_plan(cpu_budget(tq4_ram), m, req);
  EXPECT_EQ(p.kv_type, "f16");
  EXPECT_FALSE(p.fits);
}

TEST(AutoconfPlanner, DefaultContextKeptWithTurboQuantBeforeItIsReduced) {
  // No --ctx: the default 4096 with a compressed cache beats a shorter context with f16.
  ModelInfo m = dense_7b();
  const uint64_t f16_ram = cpu_ram_bytes(m, "f16", 4096, 512, 8);
  const Plan p = make_plan(cpu_budget(f16_ram - 1), m, PlanRequest{0, "", kGpuLayersAuto, 0, 512, 8});
  EXPECT_TRUE(p.fits);
  EXPECT_EQ(p.n_ctx, 4096);
  EXPECT_EQ(p.kv_type, "tq4");
}

TEST(AutoconfPlanner, MaxContextInBudgetIsTheLastContextThatFits) {
  const ModelInfo m = dense_7b();
  for (const char* t : {"f16", "tq4", "tq3"})
    for (int slots : {1, 3}) {
      const uint64_t budget = cpu_ram_bytes(m, t, 20000, 256, slots) + 5;
      const int n = max_context_in_budget(m, t, budget, 256, slots);
      EXPECT_EQ(n, 20000) << t;
      EXPECT_LE(cpu_ram_bytes(m, t, n, 256, slots), budget);
      EXPECT_GT(cpu_ram_bytes(m, t, n + 1, 256, slots), budget);
    }
  // Weights alone over budget: nothing fits.
  EXPECT_EQ(max_context_in_budget(m, "f16", m.weight_bytes(), 512), 0);
  // tq3 holds more than 5x f16's context in the same KV budget (records + 8 MiB of exact rows).
  const uint64_t b = cpu_ram_bytes(m, "f16", 8192, 512);
  EXPECT_GT(max_context_in_budget(m, "tq3", b, 512), 5 * 8192);
  EXPECT_THROW(max_context_in_budget(m, "nope", b, 512), InvalidArgument);
}

TEST(AutoconfPlanner, LowRamFallsBackToSmallerKvThenContext) {
  ModelInfo m = dense_7b();
  // 7 GiB available: weights 6.4 GiB + f16 KV at 4096 (512 MiB) + headroom do not fit; tq4 does.
  HardwareInfo hw = cpu_machine(8);
  hw.ram_available = 7 * kGiB + 600 * kMiB;
  const Plan p = make_plan(hw, m, PlanRequest{});
  EXPECT_TRUE(p.fits);
  EXPECT_EQ(p.kv_type, "tq4");
  EXPECT_EQ(p.n_ctx, 4096);
  EXPECT_LE(p.ram_bytes, p.ram_budget);

  // Far too little RAM: still a plan, flagged as not fitting, with the reason.
  HardwareInfo tiny = cpu_machine(2);
  const Plan q = make_plan(tiny, m, PlanRequest{});
  EXPECT_FALSE(q.fits);
  bool said = false;
  for (const auto& r : q.reasons) said |= r.find("does NOT fit") != std::string::npos;
  EXPECT_TRUE(said);
}

TEST(AutoconfPlanner, ContextIsReducedOnlyWhenNotRequested) {
  ModelInfo m = dense_7b();
  m.kv_bytes_per_token = {{"f16", 131072 * 16}};  // a huge KV per token
  HardwareInfo hw = cpu_machine(16);
  const Plan p = make_plan(hw, m, PlanRequest{});
  EXPECT_TRUE(p.fits);
  EXPECT_LT(p.n_ctx, 4096);
  PlanRequest req;
  req.n_ctx = 4096;
  const Plan q = make_plan(hw, m, req);
  EXPECT_EQ(q.n_ctx, 4096);
  EXPECT_FALSE(q.fits);
}

TEST(AutoconfPlanner, MoeExpertsGoToRamWhenTheGpuCannotHoldThem) {
  // 16 x 600 MiB = 9.4 GiB of experts, 0.8 GiB dense: an 8 GiB GPU holds the dense part only.
  const Plan p = make_plan(with_gpu(cpu_machine(32), 8), moe_model(), PlanRequest{});
  EXPECT_EQ(p.gpu_layers, 16);
  EXPECT_FALSE(p.experts_on_gpu);
  EXPECT_GT(p.ram_bytes, 16 * 600 * kMiB);
  // Decode reads only 8 of 64 experts from RAM.
  EXPECT_LT(p.cpu_bytes_per_token, 16 * 600 * kMiB / 4);
  bool said = false;
  for (const auto& r : p.reasons) said |= r.find("experts in RAM") != std::string::npos;
  EXPECT_TRUE(said);
}

TEST(AutoconfPlanner, MoeAllOnGpuWhenItFits) {
  const Plan p = make_plan(with_gpu(cpu_machine(32), 24), moe_model(), PlanRequest{});
  EXPECT_EQ(p.gpu_layers, 16);
  EXPECT_TRUE(p.experts_on_gpu);
  EXPECT_LT(p.ram_bytes, 1 * kGiB);
}

TEST(AutoconfPlanner, RequestsAreHonoured) {
  PlanRequest req;
  req.threads = 3;
  req.batch = 64;
  req.kv_type = "q8_0";
  req.gpu_layers = 5;
  const Plan p = make_plan(with_gpu(cpu_machine(32), 24), dense_7b(), req);
  EXPECT_EQ(p.threads, 3);
  EXPECT_EQ(p.batch, 64);
  EXPECT_EQ(p.kv_type, "q8_0");
  EXPECT_EQ(p.gpu_layers, 5);
  req.gpu_layers = 0;
  EXPECT_EQ(make_plan(with_gpu(cpu_machine(32), 24), dense_7b(), req).gpu_layers, 0);
  req.kv_type = "nope";
  EXPECT_THROW(make_plan(cpu_machine(32), dense_7b(), req), InvalidArgument);
}

TEST(AutoconfPlanner, RealModelInfoUsesTheCacheImplementations) {
  const std::filesystem::path path = testing::stories_path();
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  auto f = GgufFile::open(path.string());
  const ModelInfo m = model_info_from_gguf(*f);
  EXPECT_EQ(m.n_layers, 5);
  EXPECT_FALSE(m.is_moe());
  // Every tensor is accounted for exactly once.
  EXPECT_EQ(m.weight_bytes(), f->tensor_bytes());
  // f16 K+V: layers x 2 x kv_dim x 2 bytes.
  EXPECT_EQ(m.kv_bytes("f16"), uint64_t(m.n_layers) * 2 * m.n_kv_heads * m.head_dim * 2);
  EXPECT_LT(m.kv_bytes("tq4"), m.kv_bytes("f16"));
  EXPECT_LT(m.kv_bytes("tq3"), m.kv_bytes("tq4"));
  const Plan p = make_plan(cpu_machine(4), m, PlanRequest{});
  EXPECT_TRUE(p.fits);
  EXPECT_EQ(p.n_ctx, std::min(4096, m.n_ctx_train));
  const SessionOptions so = to_session_options(p);
  EXPECT_EQ(so.n_ctx, p.n_ctx);
  EXPECT_EQ(so.kv_type, p.kv_type);
}

// The planner's KV bytes are the caches' own allocation: bytes per position x n_ctx + fixed rows
// (TurboQuant's exact sink and window, sliding-window rings), for every context it plans.
TEST(AutoconfPlanner, KvBytesAreTheCachesAllocation) {
  auto f = GgufFile::open(testing::stories_path());
  HParams hp = read_hparams(*f);
  const std::vector<std::string> types = {"f16", "q8_0",     "q4_0r",        "tq4",
                                          "tq3", "tq3:w128", "tq3:sink4:w0", "k4v3"};
  for (int swa : {0, 1, 2}) {
    if (swa) {
      // The same model with sliding-window layers (1 of 2 local, or all as in phi3, window 300):
      // rings are fixed bytes.
      hp.n_swa = 300;
      hp.swa_layers.assign(size_t(hp.n_layers), false);
      for (int il = 0; il < hp.n_layers; il += swa == 1 ? 2 : 1) hp.swa_layers[size_t(il)] = true;
    }
    ModelInfo m = dense_7b();
    m.kv_bytes_per_token.clear();
    m.kv_fixed_bytes.clear();
    add_kv_sizes(m, hp, types);
    ASSERT_TRUE(m.kv_unavailable.empty());
    for (const auto& t : types) {
      const bool tq = t.rfind("tq", 0) == 0 || t[0] == 'k';
      if (tq || swa) {
        EXPECT_GT(m.kv_fixed(t), 0u) << t;
      } else {
        EXPECT_EQ(m.kv_fixed(t), 0u) << t;
      }
      for (int n : {1024, 3000, 8192, 20000}) {
        const auto cache = make_kv_cache(t, kv_shape_of(hp, n, 512));
        EXPECT_EQ(m.kv_cache_bytes(t, n), cache->allocated_bytes()) << t << " at " << n << " swa " << swa;
        EXPECT_EQ(m.kv_bytes(t), cache->bytes_per_token()) << t;
      }
      EXPECT_TRUE(m.has_kv(t));
      if (swa == 2) {
        EXPECT_EQ(m.kv_bytes(t), 0u) << t;  // every layer a ring: nothing per position
      }
    }
  }
}

// A hybrid model's DeltaNet layers keep a recurrent state (and its checkpoints) per slot: the plan
// counts it as fixed bytes, and the total is what the Engine allocates.
TEST(AutoconfPlanner, RecurrentStateIsCountedPerSlot) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("qleap_planner_hybrid_" + std::to_string(::getpid()) + ".gguf");
  ConvertOptions co;
  co.out_type = GgmlType::F32;
  convert_hf_to_gguf(
      (std::filesystem::path(testing::source_dir()) / "tests/golden/fixtures/qwen3_5").string(),
      path.string(), co);
  auto f = GgufFile::open(path.string());
  const ModelInfo m = model_info_from_gguf(*f, {"f16", "q8_0"});
  EXPECT_GT(m.recurrent_state_bytes, 0u);
  auto model = load_model(path.string());  // the mapping outlives the file's name
  std::filesystem::remove(path);
  for (const std::string kv : {"f16", "q8_0"}) {
    EXPECT_GE(m.kv_fixed(kv), m.recurrent_state_bytes) << kv;
    for (int slots : {1, 3}) {
      EngineOptions o;
      o.n_ctx = 300;
      o.n_slots = slots;
      o.kv_type = kv;
      Engine e(model, o);
      EXPECT_EQ(m.kv_cache_bytes(kv, 300) * uint64_t(slots), e.kv_usage().allocated_bytes)
          << kv << " x " << slots;
    }
  }
}

// MLA (deepseek2) caches its latent once (KvShape::values_are_keys): the plan counts what the Engine
// allocates, not keys and values, for the float, block and TurboQuant caches.
TEST(AutoconfPlanner, MlaLatentIsCountedOnce) {
  const auto path =
      std::filesystem::temp_directory_path() / ("qleap_planner_mla_" + std::to_string(::getpid()) + ".gguf");
  ConvertOptions co;
  co.out_type = GgmlType::F32;
  convert_hf_to_gguf(
      (std::filesystem::path(testing::source_dir()) / "tests/golden/fixtures/deepseek_v3").string(),
      path.string(), co);
  auto f = GgufFile::open(path.string());
  const std::vector<std::string> types = {"f32", "f16", "q8_0", "q4_0", "tq3"};
  const ModelInfo m = model_info_from_gguf(*f, types);
  auto model = load_model(path.string());  // the mapping outlives the file's name
  std::filesystem::remove(path);
  const HParams& hp = model->hparams();
  ASSERT_TRUE(hp.is_mla());
  // f16: one latent row (rope + kv_lora_rank values) per layer and token.
  EXPECT_EQ(m.kv_bytes("f16"), uint64_t(hp.n_layers) * uint64_t(hp.head_dim) * 2);
  for (const std::string& kv : types) {
    for (int slots : {1, 2}) {
      EngineOptions o;
      o.n_ctx = 300;
      o.n_slots = slots;
      o.kv_type = kv;
      o.calibrate_kv = false;  // sizes only (the fixture has no tokenizer for the calibration text)
      Engine e(model, o);
      EXPECT_EQ(m.kv_cache_bytes(kv, 300) * uint64_t(slots), e.kv_usage().allocated_bytes)
          << kv << " x " << slots;
    }
  }
}

// Only f16 caches live on the device: a TurboQuant (or q8_0) cache of GPU layers stays in host memory,
// so the plan counts it as RAM, not VRAM.
TEST(AutoconfPlanner, NonF16KvOfGpuLayersIsCountedInRam) {
  PlanRequest req;
  req.n_ctx = 8192;
  req.parallel = 2;
  req.batch = 512;
  req.gpu_layers = kGpuLayersAll;
  req.kv_type = "f16";
  const HardwareInfo hw = with_gpu(cpu_machine(64), 80);
  const Plan f16 = make_plan(hw, dense_7b(), req);
  for (const std::string kv : {"tq3", "q8_0"}) {
    req.kv_type = kv;
    const Plan p = make_plan(hw, dense_7b(), req);
    ASSERT_EQ(p.gpu_layers, f16.gpu_layers) << kv;
    EXPECT_GT(p.kv_bytes, 0u);
    EXPECT_EQ(p.vram_bytes, f16.vram_bytes - f16.kv_bytes) << kv;
    EXPECT_EQ(p.ram_bytes, f16.ram_bytes + p.kv_bytes) << kv;
  }
}

}  // namespace
}  // namespace qleap