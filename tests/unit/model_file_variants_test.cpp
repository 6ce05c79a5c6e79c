// Layouts of llama.cpp's files that our converter does not write, rebuilt here from converted fixtures
// and read back with the same logits (the fused expert gate/up is in moe_test.cpp):
//  - per-tensor weight scales: llama.cpp's converter writes "<name>.scale" beside the NVFP4 weights of
//    ModelOpt checkpoints (their weight_scale_2, one factor per tensor or per expert of a stacked
//    tensor), and its inference multiplies the product by it. A file that holds every weight divided
//    by a power of two with that power as its scale must give the original file's logits bit for bit
//    (a power of two changes no rounding), on a dense model, a MoE with per-expert scales and a shared
//    expert, an MLA model and tied embeddings (the embedding row lookup too);
//  - qwen3next's fused ssm_in (transformers' in_proj_qkvz as it is) instead of attn_qkv + attn_gate;
//  - a fused attn_qkv (and attn_qkv.bias) for any architecture, as llama.cpp's converter writes with
//    --fuse-qkv and its loader prefers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "gguf/convert.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "gguf_test_util.h"
#include "model/model.h"
#include "runtime/session.h"

namespace qleap {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Every F32 weight matrix (2-D, or 3-D stacks) of src divided by powers of two, with "<base>.scale"
// holding them: one per 2-D tensor, one per expert of a 3-D one (shape [n] or, for `one_per_stack`,
// [1]). Returns how many scale tensors it wrote.
int write_scaled(const GgufFile& src, const std::string& out, bool one_per_stack) {
  GgufWriter w;
  w.set_alignment(uint32_t(src.alignment()));
  for (const auto& [k, v] : src.metadata())
    if (k != "general.alignment") w.set(k, v);
  int k = 0, written = 0;
  for (const GgufTensor& t : src.tensors()) {
    if (t.type != GgmlType::F32 || t.shape.size() < 2 || !ends_with(t.name, ".weight")) {
      w.add_tensor(t.name, t.type, t.shape, t.data);
      continue;
    }
    const int64_t n = t.shape.size() == 3 && !one_per_stack ? t.ne(2) : 1;
    const size_t per = size_t(t.n_elements() / n);
    std::vector<float> scales(static_cast<size_t>(n));
    std::vector<uint8_t> bytes(t.nbytes);
    std::memcpy(bytes.data(), t.data, t.nbytes);
    auto* v = reinterpret_cast<float*>(bytes.data());
    for (int64_t e = 0; e < n; ++e) {
      const int p = (k++ % 5) - 2;  // 1/4 ... 4, 1 included
      scales[size_t(e)] = std::ldexp(1.0f, p);
      for (size_t i = 0; i < per; ++i) v[size_t(e) * per + i] = std::ldexp(v[size_t(e) * per + i], -p);
    }
    w.add_tensor(t.name, t.type, t.shape, std::move(bytes));
    std::vector<uint8_t> sb(scales.size() * sizeof(float));
    std::memcpy(sb.data(), scales.data(), sb.size());
    w.add_tensor(t.name.substr(0, t.name.size() - 7) + ".scale", GgmlType::F32, {n}, std::move(sb));
    ++written;
  }
  w.write(out);
  return written;
}

std::vector<float> logits(const std::string& path) {
  auto model = load_model(path);
  SessionOptions so;
  so.kv_type = "f32";
  so.n_threads = 2;
  Session s(model, so);
  std::vector<float> all = s.eval({3, 17, 250, 9, 9, 120, 64, 1, 200, 33}, true);
  const std::vector<float> step = s.eval({42});
  all.insert(all.end(), step.begin(), step.end());
  return all;
}

TEST(WeightScale, ScaledWeightsGiveTheSameLogits) {
  int ran = 0;
  for (const char* name : {"qwen2", "llama_tied", "qwen2_moe", "deepseek_v2_lite", "gpt_oss"}) {
    const auto dir = std::filesystem::path(testing::fixtures_dir()) / name;
    if (!std::filesystem::exists(dir / "config.json")) continue;
    testing::TempDir tmp(std::string("weight_scale_") + name);
    ConvertOptions opt;
    opt.out_type = GgmlType::F32;
    convert_hf_to_gguf(dir.string(), tmp.file("plain.gguf"), opt);
    const std::vector<float> want = logits(tmp.file("plain.gguf"));
    for (bool one_per_stack : {false, true}) {
      {
        const auto src = GgufFile::open(tmp.file("plain.gguf"));
        ASSERT_GT(write_scaled(*src, tmp.file("scaled.gguf"), one_per_stack), 4) << name;
      }
      const std::vector<float> got = logits(tmp.file("scaled.gguf"));
      ASSERT_EQ(got.size(), want.size()) << name;
      size_t differ = 0;
      for (size_t i = 0; i < got.size(); ++i) differ += got[i] != want[i] ? 1 : 0;
      EXPECT_EQ(differ, 0u) << name << (one_per_stack ? " (one scale per stack)" : " (one per expert)");
    }
    ++ran;
  }
  if (ran == 0) GTEST_SKIP() << "no fixtures";
}

// A scale tensor of the wrong size or with a non-finite value is a clear error naming it.
TEST(WeightScale, BadScalesAreRefused) {
  const auto dir = std::filesystem::path(testing::fixtures_dir()) / "qwen2";
  if (!std::filesystem::exists(dir / "config.json")) GTEST_SKIP() << "no fixture at " << dir;
  testing::TempDir tmp("weight_scale_bad");
  ConvertOptions opt;
  opt.out_type = GgmlType::F32;
  convert_hf_to_gguf(dir.string(), tmp.file("plain.gguf"), opt);
  const auto src = GgufFile::open(tmp.file("plain.gguf"));
  for (const std::vector<float>& bad :
       {std::vector<float>{1.0f, 2.0f}, std::vector<float>{std::numeric_limits<float>::infinity()}}) {
    GgufWriter w;
    for (const auto& [k, v] : src->metadata()) w.set(k, v);
    for (const GgufTensor& t : src->tensors()) w.add_tensor(t.name, t.type, t.shape, t.data);
    std::vector<uint8_t> sb(bad.size() * sizeof(float));
    std::memcpy(sb.data(), bad.data(), sb.size());
    w.add_tensor("blk.0.attn_q.scale", GgmlType::F32, {int64_t(bad.size())}, std::move(sb));
    w.write(tmp.file("bad.gguf"));
    try {
      load_model(tmp.file("bad.gguf"));
      FAIL() << "loaded a bad scale of " << bad.size() << " values";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("blk.0.attn_q.scale"), std::string::npos) << e.what();
    }
  }
}

// The file's attn_q / attn_k / attn_v (weights, and biases where present) joined into attn_qkv.
int write_fused_qkv(const GgufFile& src, const std::string& out) {
  GgufWriter w;
  w.set_alignment(uint32_t(src.alignment()));
  for (const auto& [k, v] : src.metadata())
    if (k != "general.alignment") w.set(k, v);
  int fused = 0;
  for (const GgufTensor& t : src.tensors()) {
    const size_t at = t.name.find(".attn_q.");
    if (at == std::string::npos) {
      if (t.name.find(".attn_k.") != std::string::npos || t.name.find(".attn_v.") != std::string::npos)
        continue;  // joined with their q below
      w.add_tensor(t.name, t.type, t.shape, t.data);
      continue;
    }
    std::string k = t.name, v = t.name, qkv = t.name;
    k.replace(at, 8, ".attn_k.");
    v.replace(at, 8, ".attn_v.");
    qkv.replace(at, 8, ".attn_qkv.");
    const GgufTensor& tk = src.tensor(k);
    const GgufTensor& tv = src.tensor(v);
    std::vector<uint8_t> bytes(t.data, t.data + t.nbytes);
    bytes.insert(bytes.end(), tk.data, tk.data + tk.nbytes);
    bytes.insert(bytes.end(), tv.data, tv.data + tv.nbytes);
    std::vector<int64_t> shape = t.shape;
    shape.back() += tk.shape.back() + tv.shape.back();
    w.add_tensor(qkv, t.type, shape, std::move(bytes));
    ++fused;
  }
  w.write(out);
  return fused;
}

TEST(FusedQkvFile, GivesTheSameLogits) {
  int ran = 0;
  for (const char* name :
       {"llama_gqa", "qwen2", "qwen3", "gemma3", "gemma2", "olmoe", "gpt_oss", "qwen3_5"}) {
    const auto dir = std::filesystem::path(testing::fixtures_dir()) / name;
    if (!std::filesystem::exists(dir / "config.json")) continue;
    testing::TempDir tmp(std::string("fused_qkv_") + name);
    ConvertOptions opt;
    opt.out_type = GgmlType::Q8_0;
    convert_hf_to_gguf(dir.string(), tmp.file("split.gguf"), opt);
    {
      const auto src = GgufFile::open(tmp.file("split.gguf"));
      ASSERT_GT(write_fused_qkv(*src, tmp.file("fused.gguf")), 0) << name;
    }
    const auto fused = GgufFile::open(tmp.file("fused.gguf"));
    int weights = 0, biases = 0;
    for (const GgufTensor& t : fused->tensors()) {
      ASSERT_EQ(t.name.find(".attn_q."), std::string::npos) << name << " " << t.name;
      weights += ends_with(t.name, "attn_qkv.weight") ? 1 : 0;
      biases += ends_with(t.name, "attn_qkv.bias") ? 1 : 0;
    }
    EXPECT_GT(weights, 0) << name;
    if (std::string(name) == "qwen2" || std::string(name) == "gpt_oss") {
      EXPECT_EQ(biases, weights) << name;
    }
    const std::vector<float> want = logits(tmp.file("split.gguf")), got = logits(tmp.file("fused.gguf"));
    ASSERT_EQ(got.size(), want.size()) << name;
    size_t differ = 0;
    for (size_t i = 0; i < got.size(); ++i) differ += got[i] != want[i] ? 1 : 0;
    EXPECT_EQ(differ, 0u) << name;
    ++ran;
  }
  if (ran == 0) GTEST_SKIP() << "no fixtures";
}

// The file's attn_qkv / attn_gate pairs replaced by ssm_in in transformers' in_proj_qkvz order: per key
// head [q (dk), k (dk), v (r dv), z (r dv)].
void write_fused_qkvz(const GgufFile& src, const DeltaNetParams& d, const std::string& out) {
  GgufWriter w;
  w.set_alignment(uint32_t(src.alignment()));
  for (const auto& [k, v] : src.metadata())
    if (k != "general.alignment") w.set(k, v);
  const int64_t nk = d.n_k_heads, dk = d.head_k_dim, rv = int64_t(d.n_v_heads / d.n_k_heads) * d.head_v_dim;
  for (const GgufTensor& t : src.tensors()) {
    if (ends_with(t.name, ".attn_gate.weight")) continue;
    if (!ends_with(t.name, ".attn_qkv.weight")) {
      w.add_tensor(t.name, t.type, t.shape, t.data);
      continue;
    }
    const std::string blk = t.name.substr(0, t.name.size() - std::string("attn_qkv.weight").size());
    const GgufTensor& z = src.tensor(blk + "attn_gate.weight");
    const size_t rb = size_t(t.nbytes / uint64_t(t.ne(1)));
    std::vector<uint8_t> bytes;
    const auto rows = [&](const GgufTensor& from, int64_t r0, int64_t n) {
      bytes.insert(bytes.end(), from.data + rb * size_t(r0), from.data + rb * size_t(r0 + n));
    };
    for (int64_t g = 0; g < nk; ++g) {
      rows(t, g * dk, dk);                // q of key head g
      rows(t, nk * dk + g * dk, dk);      // k
      rows(t, 2 * nk * dk + g * rv, rv);  // its r value heads
      rows(z, g * rv, rv);                // and their gates
    }
    const int64_t n_rows = int64_t(bytes.size() / rb);
    w.add_tensor(blk + "ssm_in.weight", t.type, {t.ne(0), n_rows}, std::move(bytes));
  }
  w.write(out);
}

TEST(DeltaNetFile, FusedSsmInGivesTheSameLogits) {
  const auto dir = std::filesystem::path(testing::fixtures_dir()) / "qwen3_next";
  if (!std::filesystem::exists(dir / "config.json")) GTEST_SKIP() << "no fixture at " << dir;
  testing::TempDir tmp("qwen3next_ssm_in");
  ConvertOptions opt;
  opt.out_type = GgmlType::Q8_0;
  convert_hf_to_gguf(dir.string(), tmp.file("split.gguf"), opt);
  {
    const auto src = GgufFile::open(tmp.file("split.gguf"));
    write_fused_qkvz(*src, load_model(tmp.file("split.gguf"))->hparams().delta, tmp.file("fused.gguf"));
  }
  const auto fused = GgufFile::open(tmp.file("fused.gguf"));
  ASSERT_NE(fused->find_tensor("blk.0.ssm_in.weight"), nullptr);
  ASSERT_EQ(fused->find_tensor("blk.0.attn_qkv.weight"), nullptr);
  const std::vector<float> want = logits(tmp.file("split.gguf")), got = logits(tmp.file("fused.gguf"));
  ASSERT_EQ(got.size(), want.size());
  size_t differ = 0;
  for (size_t i = 0; i < got.size(); ++i) differ += got[i] != want[i] ? 1 : 0;
  EXPECT_EQ(differ, 0u);
}

// qwen35 files order their value heads otherwise (tiled); a fused ssm_in there is refused by name.
TEST(DeltaNetFile, FusedSsmInOfAQwen35FileIsRefused) {
  const auto dir = std::filesystem::path(testing::fixtures_dir()) / "qwen3_5";
  if (!std::filesystem::exists(dir / "config.json")) GTEST_SKIP() << "no fixture at " << dir;
  testing::TempDir tmp("qwen35_ssm_in");
  ConvertOptions opt;
  opt.out_type = GgmlType::F32;
  convert_hf_to_gguf(dir.string(), tmp.file("split.gguf"), opt);
  {
    const auto src = GgufFile::open(tmp.file("split.gguf"));
    write_fused_qkvz(*src, load_model(tmp.file("split.gguf"))->hparams().delta, tmp.file("fused.gguf"));
  }
  try {
    load_model(tmp.file("fused.gguf"));
    FAIL() << "loaded a qwen35 file with ssm_in";
  } catch (const Unsupported& e) {
    EXPECT_NE(std::string(e.what()).find("ssm_in"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qleap
