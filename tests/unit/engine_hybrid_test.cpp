// The Engine with hybrid DeltaNet models (the qwen3_5 / qwen3_5_moe / qwen3_next golden fixtures): the
// per-slot recurrent state through the slot lifecycle (prefix reuse only at a checkpoint, never from a
// state that has seen a longer prefix), rows of a decode step independent of each other, caches that
// hold only the attention layers, and the device path on the simulated device.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "gguf/convert.h"
#include "gguf_test_util.h"
#include "runtime/engine.h"
#include "runtime/generation.h"
#include "sim_device_backend.h"

namespace qleap {
namespace {

// GPT-2's byte-level alphabet as UTF-8: printable bytes stand for themselves, the others for U+0100...
std::vector<std::string> byte_chars() {
  std::vector<std::string> out;
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const int cp = keep ? b : 256 + extra++;
    out.push_back(cp < 0x80 ? std::string(1, char(cp))
                            : std::string{char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))});
  }
  return out;
}

// The fixture converted once per process (F32 weights), with a 256-byte tokenizer (TurboQuant's
// calibration pass tokenizes a fixed text).
std::shared_ptr<const Model> hybrid_model(const std::string& name) {
  static testing::TempDir dir("engine_hybrid");
  static std::map<std::string, std::shared_ptr<const Model>> models;
  auto& m = models[name];
  if (!m) {
    const std::filesystem::path src = dir.path() / name;
    std::filesystem::copy(testing::fixtures_dir() + "/" + name, src);
    nlohmann::json vocab = nlohmann::json::object();
    const std::vector<std::string> chars = byte_chars();
    for (int b = 0; b < 256; ++b) vocab[chars[size_t(b)]] = b;
    const nlohmann::json tok = {
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
        {"decoder", {{"type", "ByteLevel"}}},
        {"added_tokens", nlohmann::json::array()}};
    std::ofstream(src / "tokenizer.json") << tok.dump();
    std::ofstream(src / "tokenizer_config.json") << nlohmann::json{{"add_bos_token", false}}.dump();
    const std::string out = dir.file(name + ".gguf");
    ConvertOptions co;
    co.out_type = GgmlType::F32;
    convert_hf_to_gguf(src.string(), out, co);
    m = load_model(out);
  }
  return m;
}

std::vector<int32_t> tokens(int n, int seed) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(int32_t((i * 37 + seed * 101 + 11) % 256));
  return t;
}

EngineOptions options(const std::string& kv, int n_slots) {
  EngineOptions o;
  o.n_ctx = 256;
  o.n_threads = 2;
  o.n_batch = 32;
  o.n_slots = n_slots;
  o.kv_type = kv;
  o.kv_calibration_dir = "";
  return o;
}

std::vector<float> rows(const float* l, int n, int nv) {
  return std::vector<float>(l, l + size_t(n) * nv);
}

class HybridEngine : public ::testing::TestWithParam<std::string> {};

// The server's slot reuse (runner.cpp start()): keep what reusable_prefix allows and trim() can restore,
// prefill the rest. The slot then computes, bit for bit, what a fresh slot computes for the whole prompt.
TEST_P(HybridEngine, PrefixReuseEqualsAFreshSlot) {
  auto model = hybrid_model(GetParam());
  // tq3: TurboQuant's exact window (the last 64 positions as fp16 rows, a ring, plus 8) no longer holds
  // rows 65..127 that queries after position 128 read exactly, so restorable() says 0 and the slot
  // starts over (TurboQuantKvCache::trims_exactly), still equal to a fresh slot.
  for (const std::string kv : {"f32", "f16", "q8_0", "tq3"}) {
    const int restores = kv == "tq3" ? 0 : 128;
    Engine e(model, options(kv, 2));
    const int nv = e.n_vocab();
    const std::vector<int32_t> a = tokens(150, 1);
    std::vector<int32_t> b(a.begin(), a.begin() + 140);
    for (int32_t t : tokens(30, 2)) b.push_back(t);

    e.prefill(0, a.data(), int(a.size()));
    std::vector<int32_t> cached = a;
    for (int i = 0; i < 5; ++i) {  // a few generated tokens after the prompt
      const int slot = 0;
      const int32_t t = int32_t(7 * i + 3);
      e.decode(&slot, &t, 1);
      cached.push_back(t);
    }
    // Whole chunks of the earlier prefill only (reuse limited to it), then what the state can restore:
    // the two newest checkpoints are kept (128 and the prompt end, 150), so 128.
    const size_t want = reusable_prefix(cached, b, a.size(), e.n_batch());
    EXPECT_EQ(want, 128u);
    EXPECT_EQ(e.restorable(0, 140), restores) << kv;
    const int kept = e.trim(0, int(want));
    ASSERT_EQ(kept, restores) << kv;
    const std::vector<float> reused =
        rows(e.prefill(0, b.data() + kept, int(b.size()) - kept, true), int(b.size()) - kept, nv);
    const std::vector<float> fresh = rows(e.prefill(1, b.data(), int(b.size()), true), int(b.size()), nv);
    EXPECT_EQ(0, std::memcmp(reused.data(), fresh.data() + size_t(kept) * nv, reused.size() * sizeof(float)))
        << GetParam() << " " << kv;

    // A prefix with no checkpoint at or below it: the slot starts over, and still matches.
    EXPECT_EQ(e.restorable(0, 100), 0);
    EXPECT_EQ(e.trim(0, 100), 0);
    EXPECT_EQ(e.n_past(0), 0);
    const std::vector<float> again = rows(e.prefill(0, b.data(), int(b.size()), true), int(b.size()), nv);
    EXPECT_EQ(0, std::memcmp(again.data(), fresh.data(), again.size() * sizeof(float))) << kv;
    // Keeping everything changes nothing.
    EXPECT_EQ(e.trim(0, int(b.size())), int(b.size()));
  }
}

// A chat turn in `qleap run` (cli/run.cpp): the checkpoint at the end of the previous prompt lets the
// next turn keep it, re-evaluating the reply and the new message (equal to a fresh evaluation).
TEST_P(HybridEngine, NextTurnKeepsThePreviousPrompt) {
  auto model = hybrid_model(GetParam());
  EngineOptions o = options("f16", 2);
  o.n_batch = 512;
  Engine e(model, o);
  const int nv = e.n_vocab();
  const std::vector<int32_t> p1 = tokens(40, 3);
  e.prefill(0, p1.data(), int(p1.size()));
  std::vector<int32_t> history = p1;
  for (int i = 0; i < 6; ++i) {  // the reply, one token at a time as `qleap run` evaluates it
    const int32_t t = int32_t(i + 50);
    e.prefill(0, &t, 1);
    history.push_back(t);
  }
  std::vector<int32_t> p2 = history;
  p2.resize(p2.size() - 2);  // the reply is re-tokenized differently at its end
  for (int32_t t : tokens(9, 4)) p2.push_back(t);
  const int kept = e.trim(0, int(reusable_prefix(history, p2)));
  EXPECT_EQ(kept, 40);
  const std::vector<float> turn =
      rows(e.prefill(0, p2.data() + kept, int(p2.size()) - kept, true), int(p2.size()) - kept, nv);
  // Fresh: the same chunking (the first turn's prompt, then the rest).
  e.prefill(1, p2.data(), kept);
  const std::vector<float> fresh =
      rows(e.prefill(1, p2.data() + kept, int(p2.size()) - kept, true), int(p2.size()) - kept, nv);
  EXPECT_EQ(0, std::memcmp(turn.data(), fresh.data(), turn.size() * sizeof(float)));
}

// Continuous batching: each row of a decode step gets exactly the logits it gets alone, so greedy text
// under concurrency equals sequential text.
TEST_P(HybridEngine, DecodeRowsIndependentOfTheBatch) {
  auto model = hybrid_model(GetParam());
  Engine batched(model, options("f16", 3)), alone(model, options("f16", 3));
  const int nv = batched.n_vocab();
  for (int s = 0; s < 3; ++s) {
    const std::vector<int32_t> p = tokens(20 + 31 * s, s);
    batched.prefill(s, p.data(), int(p.size()));
    alone.prefill(s, p.data(), int(p.size()));
  }
  for (int step = 0; step < 4; ++step) {
    const int slots[3] = {2, 0, 1};
    const int32_t toks[3] = {int32_t(10 + step), int32_t(90 + step), int32_t(200 + step)};
    const std::vector<float> b = rows(batched.decode(slots, toks, 3), 3, nv);
    for (int i = 0; i < 3; ++i) {
      const float* a = alone.decode(&slots[i], &toks[i], 1);
      ASSERT_EQ(0, std::memcmp(a, b.data() + size_t(i) * nv, sizeof(float) * size_t(nv)))
          << "slot " << slots[i] << " step " << step;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HybridEngine, ::testing::Values("qwen3_5", "qwen3_5_moe", "qwen3_next"));

// The KV caches hold the attention layers only (2 of the 4); the DeltaNet state is fixed-size.
TEST(HybridEngineMemory, CachesHoldOnlyAttentionLayers) {
  auto model = hybrid_model("qwen3_5");
  Engine e(model, options("f16", 1));
  ASSERT_NE(e.host_kv(0), nullptr);
  EXPECT_EQ(e.host_kv(0)->shape().n_layers, 2);
  const HParams& hp = model->hparams();
  const KvUsage u = e.kv_usage();
  EXPECT_EQ(u.bytes_per_token, size_t(2) * 2 * hp.kv_dim() * 2);  // 2 layers, K and V, f16
  // conv state 3 x (2*32 + 64) and 4 heads of 16 x 16 per DeltaNet layer, state plus 2 checkpoints.
  const size_t state = size_t(2) * (3 * 128 + 4 * 16 * 16) * sizeof(float);
  EXPECT_EQ(u.fixed_bytes, 3 * state);
  Engine tq(model, options("tq3", 1));
  EXPECT_TRUE(tq.kv_usage().calibrated);
}

// ---- the device path (simulated device: CPU kernels behind the Backend table) ----

struct DeviceRun {
  std::vector<float> prefill;
  std::vector<int32_t> greedy;
  int delta_calls = 0;
};

DeviceRun run_on(const std::shared_ptr<const Model>& model, int gpu_layers) {
  static ThreadPool sim_pool(2);
  testing::SimDeviceBackend* sim = nullptr;
  EngineOptions o = options("f16", 2);
  o.gpu_layers = gpu_layers;
  if (gpu_layers != 0) {
    o.make_device_backend = [&sim]() {
      auto b = std::make_unique<testing::SimDeviceBackend>(sim_pool);
      sim = b.get();
      return b;
    };
  }
  Engine e(model, o);
  const std::vector<int32_t> p = tokens(70, 5);
  DeviceRun r;
  r.prefill = rows(e.prefill(0, p.data(), int(p.size()), true), int(p.size()), e.n_vocab());
  const float* last = r.prefill.data() + (p.size() - 1) * size_t(e.n_vocab());
  std::vector<float> l(last, last + e.n_vocab());
  for (int i = 0; i < 8; ++i) {
    const int32_t t = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
    r.greedy.push_back(t);
    const int slot = 0;
    const float* out = e.decode(&slot, &t, 1);
    l.assign(out, out + e.n_vocab());
  }
  // A trim to a checkpoint restores the device-resident state through upload().
  EXPECT_EQ(e.trim(0, int(p.size())), int(p.size()));
  if (sim) r.delta_calls = sim->delta_net_calls;
  return r;
}

TEST(HybridEngineDevice, OffloadedLayersGiveTheCpuResultBitForBit) {
  auto model = hybrid_model("qwen3_5");
  const DeviceRun cpu = run_on(model, 0);
  for (int ngl : {1, 2, -1}) {  // the last layer (attention), + a DeltaNet layer, all and the head
    const DeviceRun dev = run_on(model, ngl);
    EXPECT_EQ(0, std::memcmp(cpu.prefill.data(), dev.prefill.data(), cpu.prefill.size() * sizeof(float)))
        << "ngl " << ngl;
    EXPECT_EQ(cpu.greedy, dev.greedy) << "ngl " << ngl;
    EXPECT_EQ(dev.delta_calls > 0, ngl != 1) << "ngl " << ngl;
  }
}

TEST(HybridEngineDevice, MoeLayersOnADeviceAreRefused) {
  static ThreadPool sim_pool(1);
  EngineOptions o = options("f16", 1);
  o.gpu_layers = 1;
  o.make_device_backend = [] { return std::make_unique<testing::SimDeviceBackend>(sim_pool); };
  EXPECT_THROW({ Engine e(hybrid_model("qwen3_next"), o); }, Unsupported);
}

}  // namespace
}  // namespace qleap
