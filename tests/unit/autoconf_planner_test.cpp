#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "autoconf/planner.h"
#include "core/error.h"
#include "gguf/gguf.h"
#include "model_test_util.h"

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
  // 32 layers x 2 (K, V) x 8 heads x 128 x 2 bytes = 128 KiB for f16, 68 KiB for q8_0 (34/32 bytes/elem).
  m.kv_bytes_per_token = {{"f16", 131072}, {"q8_0", 69632}, {"tq4", 36864}};
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
  m.kv_bytes_per_token = {{"f16", 65536}, {"q8_0", 34816}, {"tq4", 18432}};
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

TEST(AutoconfPlanner, Q8KvChosenWhenItPutsMoreLayersOnTheGpu) {
  // Long context: f16 KV for 32k tokens is 4 GiB, which pushes layers off a 10 GiB GPU.
  PlanRequest req;
  req.n_ctx = 32768;
  const Plan p = make_plan(with_gpu(cpu_machine(64), 10), dense_7b(), req);
  EXPECT_EQ(p.kv_type, "q8_0");
  const Plan f16 = make_plan(with_gpu(cpu_machine(64), 10), dense_7b(), PlanRequest{32768, "f16"});
  EXPECT_GT(p.gpu_layers, f16.gpu_layers);
}

TEST(AutoconfPlanner, LowRamFallsBackToSmallerKvThenContext) {
  ModelInfo m = dense_7b();
  // 7 GiB available: weights 6.4 GiB + f16 KV at 4096 (512 MiB) + headroom do not fit; q8_0 does.
  HardwareInfo hw = cpu_machine(8);
  hw.ram_available = 7 * kGiB + 600 * kMiB;
  const Plan p = make_plan(hw, m, PlanRequest{});
  EXPECT_TRUE(p.fits);
  EXPECT_NE(p.kv_type, "f16");
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
  EXPECT_LT(m.kv_bytes("q8_0"), m.kv_bytes("f16"));
  const Plan p = make_plan(cpu_machine(4), m, PlanRequest{});
  EXPECT_TRUE(p.fits);
  EXPECT_EQ(p.n_ctx, std::min(4096, m.n_ctx_train));
  const SessionOptions so = to_session_options(p);
  EXPECT_EQ(so.n_ctx, p.n_ctx);
  EXPECT_EQ(so.kv_type, p.kv_type);
}

}  // namespace
}  // namespace qleap
