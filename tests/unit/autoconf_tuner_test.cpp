#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "autoconf/tuner.h"
#include "model_test_util.h"

namespace qleap {
namespace {

namespace fs = std::filesystem;

fs::path temp_file(const std::string& name) {
  return fs::temp_directory_path() / ("qleap_tuner_" + std::to_string(::getpid()) + "_" + name);
}

TEST(AutoconfTuner, StoreRoundTripKeepsOtherEntries) {
  const fs::path store = temp_file("store.json");
  fs::remove(store);
  const TuneKey a{"model-a", "machine-1"}, b{"model-b", "machine-1"};
  EXPECT_FALSE(load_tuned(store.string(), a).has_value());
  TunedEntry e;
  e.settings = {3, 128, "q8_0"};
  e.pp_tok_s = 100;
  e.tg_tok_s = 20;
  e.baseline.settings = {4, 512, "f16"};
  e.baseline.tg_tok_s = 15;
  e.model_path = "/x/a.gguf";
  save_tuned(store.string(), a, e);
  e.settings = {1, 64, "f16"};
  save_tuned(store.string(), b, e);
  // Replacing a's entry leaves b's alone.
  e.settings = {2, 256, "f16"};
  save_tuned(store.string(), a, e);
  const auto ra = load_tuned(store.string(), a);
  const auto rb = load_tuned(store.string(), b);
  ASSERT_TRUE(ra && rb);
  EXPECT_EQ(ra->settings.threads, 2);
  EXPECT_EQ(ra->settings.batch, 256);
  EXPECT_EQ(rb->settings.threads, 1);
  EXPECT_EQ(rb->settings.kv_type, "f16");
  EXPECT_EQ(ra->baseline.settings.threads, 4);
  EXPECT_DOUBLE_EQ(ra->baseline.tg_tok_s, 15);
  EXPECT_FALSE(load_tuned(store.string(), TuneKey{"model-a", "machine-2"}).has_value());
  fs::remove(store);
}

TEST(AutoconfTuner, CorruptStoreIsIgnoredAndRewritten) {
  const fs::path store = temp_file("corrupt.json");
  std::ofstream(store) << "{not json";
  const TuneKey k{"m", "h"};
  EXPECT_FALSE(load_tuned(store.string(), k).has_value());
  TunedEntry e;
  e.settings = {2, 512, "f16"};
  save_tuned(store.string(), k, e);
  EXPECT_TRUE(load_tuned(store.string(), k).has_value());
  fs::remove(store);
}

TEST(AutoconfTuner, MachineBandwidthKeepsTheHighestAndSurvivesTuneEntries) {
  const fs::path store = temp_file("bw.json");
  fs::remove(store);
  EXPECT_FALSE(load_machine_bandwidth(store.string(), "machine-1").has_value());
  save_machine_bandwidth(store.string(), "machine-1", RememberedBandwidth{20.0, "t1"});
  save_machine_bandwidth(store.string(), "machine-1",
                         RememberedBandwidth{12.0, "t2"});  // a busy probe: lower
  save_machine_bandwidth(store.string(), "machine-2", RememberedBandwidth{7.0, "t3"});
  TunedEntry e;
  e.settings = {2, 512, "f16"};
  save_tuned(store.string(), TuneKey{"m", "machine-1"}, e);  // rewrites the file: machines stay
  const auto a = load_machine_bandwidth(store.string(), "machine-1");
  const auto b = load_machine_bandwidth(store.string(), "machine-2");
  ASSERT_TRUE(a && b);
  EXPECT_DOUBLE_EQ(a->gbps, 20.0);
  EXPECT_EQ(a->measured_at, "t1");
  EXPECT_DOUBLE_EQ(b->gbps, 7.0);
  EXPECT_TRUE(load_tuned(store.string(), TuneKey{"m", "machine-1"}).has_value());
  save_machine_bandwidth(store.string(), "machine-1", RememberedBandwidth{25.0, "t4"});
  EXPECT_DOUBLE_EQ(load_machine_bandwidth(store.string(), "machine-1")->gbps, 25.0);
  EXPECT_TRUE(load_tuned(store.string(), TuneKey{"m", "machine-1"}).has_value());
  // A machines entry of the wrong shape reads as absent.
  std::ofstream(store) << R"({"entries": [], "machines": {"machine-1": {"mem_bw_gbps": "fast"}}})";
  EXPECT_FALSE(load_machine_bandwidth(store.string(), "machine-1").has_value());
  fs::remove(store);
}

TEST(AutoconfTuner, ModelIdentityFollowsTheBytes) {
  const fs::path f1 = temp_file("m1.gguf"), f2 = temp_file("m2.gguf");
  std::ofstream(f1) << "GGUF-same-content";
  std::ofstream(f2) << "GGUF-same-content";
  EXPECT_EQ(model_identity(f1.string()), model_identity(f2.string()));
  std::ofstream(f2) << "GGUF-other-content";
  EXPECT_NE(model_identity(f1.string()), model_identity(f2.string()));
  fs::remove(f1);
  fs::remove(f2);
}

TEST(AutoconfTuner, MachineIdentityIgnoresUnsupportedGpus) {
  HardwareInfo hw;
  hw.cpu_model = "X";
  hw.physical_cores = 4;
  hw.isa = "avx2";
  const std::string base = machine_identity(hw);
  GpuInfo amd;
  amd.vendor = "amd";
  amd.name = "R";
  hw.gpus.push_back(amd);
  EXPECT_EQ(machine_identity(hw), base);
  GpuInfo nv;
  nv.vendor = "nvidia";
  nv.name = "H100";
  nv.supported = true;
  hw.gpus.push_back(nv);
  EXPECT_NE(machine_identity(hw), base);
}

TEST(AutoconfTuner, ThreadCandidates) {
  EXPECT_EQ(thread_candidates(4, 4), (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(thread_candidates(2, 4), (std::vector<int>{1, 2, 4}));
  EXPECT_EQ(thread_candidates(32, 64), (std::vector<int>{8, 16, 24, 31, 32, 64}));
  EXPECT_EQ(thread_candidates(0, 0), (std::vector<int>{1}));
}

TEST(AutoconfTuner, TuneOnStoriesMeasuresAndKeepsTheBaselineWhenNothingIsBetter) {
  const fs::path path = testing::stories_path();
  ASSERT_TRUE(fs::exists(path)) << path;
  auto model = load_model(path.string());
  HardwareInfo hw;
  hw.physical_cores = 1;
  hw.logical_cpus = 1;
  TuneOptions o;
  o.n_prompt = 16;
  o.n_gen = 4;
  o.reps = 1;
  o.min_seconds = 0;
  o.batches = {8, 512};
  o.kv_types = {"f16"};
  const TuneResult r = tune(model, hw, TuneSettings{1, 512, "f16"}, o);
  // Baseline, then batch 8 (threads 1 and f16 are the baseline's own values, not re-measured).
  ASSERT_EQ(r.all.size(), 2u);
  for (const auto& m : r.all) {
    EXPECT_GT(m.pp_tok_s, 0);
    EXPECT_GT(m.tg_tok_s, 0);
    EXPECT_GT(m.seconds, 0);
  }
  EXPECT_LE(r.best.seconds, r.baseline.seconds);
}

}  // namespace
}  // namespace qleap
