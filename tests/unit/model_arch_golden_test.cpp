// gemma3, gemma2 and phi3 over the single forward, against transformers: the tiny random models of
// tests/golden/fixtures (tools/gen_golden.py; prompts of 24 and 19 tokens cross every sliding window of
// 8 or 10 positions) converted by our converter and run by the Engine. F32 logits within 1e-4 of
// transformers at every position, in one prefill, in chunks that make the windowed layers' rings wrap,
// and decoded token by token; argmax kept with F16 / Q8_0 weights; concurrent decode rows equal to
// single ones; layers on the simulated device equal to the CPU bit for bit; trims that a ring can or
// cannot honour.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "gguf/convert.h"
#include "gguf/gguf_writer.h"
#include "gguf_test_util.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "runtime/session.h"
#include "sim_device_backend.h"

namespace qleap {
namespace {

using Rows = std::vector<std::vector<float>>;  // [position][vocab]

struct Golden {
  std::vector<std::vector<int32_t>> prompts, short_prompts;
  std::vector<Rows> logits, short_logits;
};

Golden load_golden(const std::string& name) {
  std::ifstream in(std::filesystem::path(testing::fixtures_dir()) / name / "golden.json");
  const auto j = nlohmann::json::parse(in);
  Golden g;
  g.prompts = j.at("prompts").get<std::vector<std::vector<int32_t>>>();
  g.logits = j.at("logits").get<std::vector<Rows>>();
  if (j.contains("short_prompts")) {
    g.short_prompts = j.at("short_prompts").get<std::vector<std::vector<int32_t>>>();
    g.short_logits = j.at("short_logits").get<std::vector<Rows>>();
  }
  return g;
}

// The fixture converted to `type` (once per process).
std::shared_ptr<const Model> fixture_model(const std::string& name, GgmlType type) {
  static std::map<std::pair<std::string, GgmlType>, std::shared_ptr<const Model>> cache;
  auto& m = cache[{name, type}];
  if (!m) {
    testing::TempDir tmp("arch_" + name + "_" + type_name(type));
    ConvertOptions opt;
    opt.out_type = type;
    convert_hf_to_gguf((std::filesystem::path(testing::fixtures_dir()) / name).string(), tmp.file("m.gguf"),
                       opt);
    m = load_model(tmp.file("m.gguf"));  // the mapping outlives the file's name
  }
  return m;
}

double max_abs_err(const float* got, const Rows& ref) {
  double e = 0;
  for (size_t p = 0; p < ref.size(); ++p)
    for (size_t v = 0; v < ref[p].size(); ++v)
      e = std::max(e, double(std::fabs(got[p * ref[p].size() + v] - ref[p][v])));
  return e;
}

const char* const kFixtures[] = {"gemma3", "gemma2", "phi3_longrope", "phi3_swa"};

class ArchGolden : public ::testing::TestWithParam<const char*> {};

// One prefill, and chunks of 7 and 3 (rings of window + chunk - 1 positions wrap several times).
TEST_P(ArchGolden, F32MatchesTransformersAtEveryPosition) {
  const Golden g = load_golden(GetParam());
  auto model = fixture_model(GetParam(), GgmlType::F32);
  for (int n_batch : {512, 7, 3}) {
    SessionOptions so;
    so.kv_type = "f32";
    so.n_threads = 2;
    so.n_batch = n_batch;
    for (size_t p = 0; p < g.prompts.size(); ++p) {
      Session s(model, so);
      const std::vector<float>& got = s.eval(g.prompts[p], /*all_logits=*/true);
      ASSERT_EQ(got.size(), g.logits[p].size() * size_t(model->n_vocab()));
      const double err = max_abs_err(got.data(), g.logits[p]);
      std::printf("[arch] %s F32 n_batch %d prompt %zu: max abs err %.3g\n", GetParam(), n_batch, p, err);
      EXPECT_LE(err, 1e-4) << GetParam() << " n_batch " << n_batch << " prompt " << p;
    }
  }
}

// Decode steps (one row of the batched decode path per token) give the prefill's logits.
TEST_P(ArchGolden, DecodeTokenByTokenEqualsPrefill) {
  const Golden g = load_golden(GetParam());
  auto model = fixture_model(GetParam(), GgmlType::F32);
  EngineOptions o;
  o.kv_type = "f32";
  o.n_threads = 2;
  o.n_slots = 2;
  o.n_batch = 4;
  Engine e(model, o);
  const std::vector<int32_t>& prompt = g.prompts[0];
  const int nv = e.n_vocab();
  const float* pf = e.prefill(0, prompt.data(), int(prompt.size()), true);
  const std::vector<float> prefill(pf, pf + prompt.size() * size_t(nv));
  std::vector<float> decoded(prefill.size());
  const int slot = 1;
  for (size_t t = 0; t < prompt.size(); ++t) {
    const float* l = t == 0 ? e.prefill(slot, prompt.data(), 1) : e.decode(&slot, &prompt[t], 1);
    std::copy(l, l + nv, decoded.begin() + long(t * size_t(nv)));
  }
  double diff = 0;
  for (size_t i = 0; i < prefill.size(); ++i)
    diff = std::max(diff, double(std::fabs(prefill[i] - decoded[i])));
  const double err = max_abs_err(decoded.data(), g.logits[0]);
  std::printf("[arch] %s decode vs prefill max diff %.3g, decode vs transformers %.3g\n", GetParam(), diff,
              err);
  // Prefill attends through the tiled kernel (kv/flash_prefill) where a layer has no window, decode
  // through the per-query path: the sums run in another order (measured up to 2.2e-5 on phi3_longrope).
  EXPECT_LE(diff, 5e-5);
  EXPECT_LE(err, 1e-4);
}

// F16 / Q8_0 weights (f16 cache): the argmax of every position agrees with transformers wherever the
// reference's top-2 gap is more than twice the logit error the format makes on this model.
TEST_P(ArchGolden, QuantizedWeightsKeepTheArgmax) {
  const Golden g = load_golden(GetParam());
  for (GgmlType type : {GgmlType::F16, GgmlType::Q8_0}) {
    auto model = fixture_model(GetParam(), type);
    SessionOptions so;
    so.n_threads = 2;
    int mismatch = 0, close = 0, positions = 0;
    double err = 0;
    std::vector<std::vector<float>> got;
    for (size_t p = 0; p < g.prompts.size(); ++p) {
      Session s(model, so);
      got.push_back(s.eval(g.prompts[p], true));
      err = std::max(err, max_abs_err(got.back().data(), g.logits[p]));
    }
    for (size_t p = 0; p < g.prompts.size(); ++p) {
      const size_t nv = g.logits[p][0].size();
      for (size_t pos = 0; pos < g.logits[p].size(); ++pos) {
        const std::vector<float>& ref = g.logits[p][pos];
        const float* row = got[p].data() + pos * nv;
        std::vector<float> sorted = ref;
        std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
        const bool same =
            std::max_element(ref.begin(), ref.end()) - ref.begin() == std::max_element(row, row + nv) - row;
        ++positions;
        if (!same) (sorted[0] - sorted[1] > 2 * err ? mismatch : close) += 1;
      }
    }
    std::printf("[arch] %s %s: max abs err %.3g, argmax differs at %d (+%d within 2x err) of %d positions\n",
                GetParam(), type_name(type), err, mismatch, close, positions);
    EXPECT_EQ(mismatch, 0) << type_name(type);
    EXPECT_LE(close, positions / 10) << type_name(type);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ArchGolden, ::testing::ValuesIn(kFixtures),
                         [](const ::testing::TestParamInfo<const char*>& i) { return std::string(i.param); });

// LongRoPE: within the original context (16 here) the short factors apply, beyond it the long ones
// (llama.cpp's choice by context size; transformers' by sequence length, the same for these prompts).
TEST(ArchGoldenPhi3, ShortFactorsWithinTheOriginalContext) {
  const Golden g = load_golden("phi3_longrope");
  ASSERT_FALSE(g.short_prompts.empty());
  auto model = fixture_model("phi3_longrope", GgmlType::F32);
  for (int n_ctx : {16, 512}) {
    SessionOptions so;
    so.kv_type = "f32";
    so.n_ctx = n_ctx;
    for (size_t p = 0; p < g.short_prompts.size(); ++p) {
      Session s(model, so);
      const double err = max_abs_err(s.eval(g.short_prompts[p], true).data(), g.short_logits[p]);
      if (n_ctx == 16) {
        EXPECT_LE(err, 1e-4) << "prompt " << p;
      } else {
        EXPECT_GT(err, 1e-2) << "the long factors must change the logits (prompt " << p << ")";
      }
    }
  }
}

// ---- the Engine with windowed layers ----

std::vector<int32_t> tokens(int n, int mul) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(int32_t((3 + i * mul) % 256));
  return t;
}

// Three slots at different positions decode together: each row equals the slot decoded alone, bit for
// bit (sequences run past the 8-position windows and wrap their rings).
TEST(ArchWindowEngine, ConcurrentDecodeEqualsAlone) {
  for (const char* name : {"gemma3", "gemma2", "phi3_swa"}) {
    auto model = fixture_model(name, GgmlType::F16);
    for (const std::string kv : {"f16", "tq3"}) {
      EngineOptions o;
      o.n_ctx = 64;
      o.n_threads = 2;
      o.n_slots = 3;
      o.n_batch = 4;
      o.kv_type = kv;
      o.calibrate_kv = false;  // the fixtures carry no tokenizer for the calibration text
      Engine together(model, o), alone(model, o);
      const std::vector<std::vector<int32_t>> prompts = {tokens(13, 7), tokens(5, 11), tokens(9, 5)};
      for (int s = 0; s < 3; ++s) {
        together.prefill(s, prompts[size_t(s)].data(), int(prompts[size_t(s)].size()));
        alone.prefill(s, prompts[size_t(s)].data(), int(prompts[size_t(s)].size()));
      }
      const int nv = together.n_vocab();
      for (int step = 0; step < 14; ++step) {
        const int slots[3] = {2, 0, 1};
        const int32_t toks[3] = {int32_t(step * 3 % 256), int32_t(step * 5 % 256), int32_t(step * 7 % 256)};
        const float* b = together.decode(slots, toks, 3);
        const std::vector<float> batched(b, b + size_t(3) * nv);
        for (int i = 0; i < 3; ++i) {
          const float* a = alone.decode(&slots[i], &toks[i], 1);
          ASSERT_EQ(0, std::memcmp(a, batched.data() + size_t(i) * nv, sizeof(float) * size_t(nv)))
              << name << " " << kv << " slot " << slots[i] << " step " << step;
        }
      }
    }
  }
}

struct RunResult {
  std::vector<float> prefill;
  std::vector<int32_t> greedy;
  int gelu_calls = 0, swa_rope_preps = 0;  // on the simulated device
};

RunResult run(const std::shared_ptr<const Model>& model, const std::string& kv, int gpu_layers) {
  static ThreadPool sim_pool(1);
  EngineOptions o;
  o.n_ctx = 64;
  o.n_threads = 1;
  o.n_batch = 5;
  o.kv_type = kv;
  o.calibrate_kv = false;  // the fixtures carry no tokenizer for the calibration text
  o.gpu_layers = gpu_layers;
  testing::SimDeviceBackend* dev = nullptr;
  if (gpu_layers != 0) {
    o.make_device_backend = [&dev] {
      auto b = std::make_unique<testing::SimDeviceBackend>(sim_pool);
      dev = b.get();
      return b;
    };
  }
  Engine e(model, o);
  const std::vector<int32_t> prompt = tokens(21, 13);
  RunResult r;
  const float* l = e.prefill(0, prompt.data(), int(prompt.size()), true);
  r.prefill.assign(l, l + prompt.size() * size_t(e.n_vocab()));
  const float* last = l + (prompt.size() - 1) * size_t(e.n_vocab());
  for (int step = 0; step < 16; ++step) {
    const int32_t t = int32_t(std::max_element(last, last + e.n_vocab()) - last);
    r.greedy.push_back(t);
    last = e.prefill(0, &t, 1);
  }
  if (dev != nullptr) {
    r.gelu_calls = dev->gelu_calls;
    r.swa_rope_preps = dev->swa_rope_preps;
  }
  return r;
}

// Any number of layers on the simulated device (and the head with all of them): the CPU's result bit
// for bit, for the f16 cache, q8_0 and TurboQuant on the windowed layers too.
TEST(ArchWindowEngine, PartialOffloadGivesTheCpuResultBitForBit) {
  for (const char* name : {"gemma3", "gemma2", "phi3_longrope", "phi3_swa"}) {
    auto model = fixture_model(name, GgmlType::Q8_0);
    for (const std::string kv : {"f16", "q8_0", "tq3"}) {
      const RunResult cpu = run(model, kv, 0);
      for (int ngl : {1, 2, -1}) {
        const RunResult dev = run(model, kv, ngl);
        ASSERT_EQ(cpu.prefill.size(), dev.prefill.size());
        EXPECT_EQ(0, std::memcmp(cpu.prefill.data(), dev.prefill.data(), cpu.prefill.size() * sizeof(float)))
            << name << " " << kv << " ngl " << ngl;
        EXPECT_EQ(cpu.greedy, dev.greedy) << name << " " << kv << " ngl " << ngl;
        // The new ops ran on the device: GeGLU (gemma), the local layers' RoPE table (gemma3: the last
        // layer, the first on the device, is a local one).
        const std::string arch = name;
        EXPECT_EQ(dev.gelu_calls > 0, arch.starts_with("gemma")) << name << " ngl " << ngl;
        EXPECT_EQ(dev.swa_rope_preps > 0, arch == "gemma3") << name << " ngl " << ngl;
      }
    }
  }
}

// A trim the rings can honour keeps the prefix (continuing equals a fresh prefill of it in the same
// chunks); one they cannot (its window was overwritten) starts the slot over and says so.
TEST(ArchWindowEngine, TrimKeepsOnlyWhatTheRingsHold) {
  auto model = fixture_model("gemma3", GgmlType::F16);
  const std::vector<int32_t> prompt = tokens(30, 9), more = {5, 77, 130};
  for (const std::string kv : {"f16", "tq3"}) {
    EngineOptions o;
    o.n_ctx = 64;
    o.n_threads = 1;
    o.n_batch = 4;  // rings of 8 + 4 - 1 positions
    o.kv_type = kv;
    o.calibrate_kv = false;  // the fixtures carry no tokenizer for the calibration text
    Engine a(model, o), b(model, o);
    a.prefill(0, prompt.data(), 30);
    EXPECT_EQ(a.trim(0, 28), 28) << kv;
    const float* la = a.prefill(0, more.data(), 3);
    const std::vector<float> ra(la, la + a.n_vocab());
    b.prefill(0, prompt.data(), 28);
    const float* lb = b.prefill(0, more.data(), 3);
    EXPECT_EQ(0, std::memcmp(ra.data(), lb, ra.size() * sizeof(float))) << kv;
    EXPECT_EQ(a.trim(0, 12), 0) << kv;  // positions 5..11 are long gone from the rings
    EXPECT_EQ(a.n_past(0), 0);
    EXPECT_THROW(a.trim(0, 5), InvalidArgument);
  }
}

// Windowed layers cost a constant, not a per-position amount: only the global layer of the three
// grows with the context.
TEST(ArchWindowEngine, WindowedLayersHoldARing) {
  auto model = fixture_model("gemma3", GgmlType::F16);
  ASSERT_EQ(model->hparams().window(0), 8);
  ASSERT_EQ(model->hparams().window(1), 0);
  EngineOptions o;
  o.n_ctx = 512;
  o.n_batch = 16;
  Engine e(model, o);
  const KvUsage u = e.kv_usage();
  const size_t kv_dim = size_t(model->hparams().kv_dim());
  EXPECT_EQ(u.bytes_per_token, 2 * 2 * kv_dim);               // K and V of one layer, f16
  EXPECT_EQ(u.fixed_bytes, 2 * size_t(2 * 2 * kv_dim) * 23);  // two rings of 8 + 16 - 1 positions
}

// ---- errors ----

TEST(ArchErrors, UnknownArchitectureListsTheSupportedOnes) {
  GgufWriter w;
  w.set_string("general.architecture", "mamba");
  testing::TempDir tmp("arch_unknown");
  w.write(tmp.file("m.gguf"));
  try {
    load_model(tmp.file("m.gguf"));
    FAIL() << "an unknown architecture loaded";
  } catch (const Unsupported& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'mamba'"), std::string::npos) << msg;
    for (const char* a : {"llama", "qwen3moe", "gemma2", "gemma3", "phi3"})
      EXPECT_NE(msg.find(a), std::string::npos) << a << " missing from: " << msg;
  }
}

// A GGUF that carries a vision tower next to the text model is refused, naming the tensor; so is a
// multimodal HF checkpoint.
TEST(ArchErrors, VisionTowersAreRefusedClearly) {
  testing::TempDir tmp("arch_vision");
  ConvertOptions co;
  co.out_type = GgmlType::F32;
  convert_hf_to_gguf((std::filesystem::path(testing::fixtures_dir()) / "gemma3").string(), tmp.file("t.gguf"),
                     co);
  {
    const auto src = GgufFile::open(tmp.file("t.gguf"));
    GgufWriter w;
    for (const auto& [k, v] : src->metadata())
      if (k != "general.alignment") w.set(k, v);
    for (const GgufTensor& t : src->tensors())
      w.add_tensor(t.name, t.type, t.shape, static_cast<const void*>(t.data));
    const std::vector<float> patch(64, 0.5f);
    w.add_tensor("v.patch_embd.weight", GgmlType::F32, {64}, patch.data());
    w.write(tmp.file("mm.gguf"));
  }
  try {
    load_model(tmp.file("mm.gguf"));
    FAIL() << "a vision tower was accepted";
  } catch (const Unsupported& e) {
    EXPECT_NE(std::string(e.what()).find("v.patch_embd.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("text model only"), std::string::npos) << e.what();
  }
  // The HF side: model_type gemma3 (image-text-to-text) with a vision_config.
  const auto dir = tmp.path() / "mm_hf";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << R"({"model_type": "gemma3", "text_config": {}, "vision_config": {}})";
  try {
    convert_hf_to_gguf(dir.string(), tmp.file("x.gguf"), co);
    FAIL() << "a multimodal checkpoint converted";
  } catch (const Unsupported& e) {
    EXPECT_NE(std::string(e.what()).find("multimodal"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qleap
