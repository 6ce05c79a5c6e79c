// Layouts of llama.cpp's files that our converter does not write, rebuilt here from converted fixtures
// and read back with the same logits, bit for bit:
//  - per-tensor weight scales: llama.cpp's converter writes "<name>.scale" beside the NVFP4 weights of
//    ModelOpt checkpoints (their weight_scale_2, one factor per tensor or per expert of a stacked
//    tensor), and its inference multiplies the product by it. A file that holds every weight divided
//    by a power of two with that power as its scale must give the original file's logits bit for bit
//    (a power of two changes no rounding), on a dense model, a MoE with per-expert scales and a shared
//    expert, an MLA model and tied embeddings (the embedding row lookup too);
//  - qwen3next's fused ssm_in (transformers' in_proj_qkvz as it is) instead of attn_qkv + attn_gate;
//  - a fused attn_qkv (and attn_qkv.bias) for any architecture, as llama.cpp's converter writes with
//    --fuse-qkv and its loader prefers;
//  - the experts' fused ffn_gate_up_exps (and its bias, gpt-oss), as llama.cpp's converter writes with
//    --fuse-gate-up-exps, on every MoE family.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "gguf_rewrite_util.h"

namespace qleap {
namespace {

using testing::converted_fixture;
using testing::ends_with;
using testing::logits_differing;
using testing::writer_like;

// Every F32 weight matrix (2-D, or 3-D stacks) of src divided by powers of two, with "<base>.scale"
// holding them: one per 2-D tensor, one per expert of a 3-D one (shape [n] or, for `one_per_stack`,
// [1]). Returns how many scale tensors it wrote.
int write_scaled(const GgufFile& src, const std::string& out, bool one_per_stack) {
  GgufWriter w = writer_like(src);
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

TEST(WeightScale, ScaledWeightsGiveTheSameLogits) {
  int ran = 0;
  for (const char* name : {"qwen2", "llama_tied", "qwen2_moe", "deepseek_v2_lite", "gpt_oss"}) {
    testing::TempDir tmp(std::string("weight_scale_") + name);
    const std::string plain = converted_fixture(name, GgmlType::F32, tmp);
    if (plain.empty()) continue;
    for (bool one_per_stack : {false, true}) {
      ASSERT_GT(write_scaled(*GgufFile::open(plain), tmp.file("scaled.gguf"), one_per_stack), 4) << name;
      EXPECT_EQ(logits_differing(plain, tmp.file("scaled.gguf")), 0)
          << name << (one_per_stack ? " (one scale per stack)" : " (one per expert)");
    }
    ++ran;
  }
  if (ran == 0) GTEST_SKIP() << "no fixtures";
}

// A scale tensor of the wrong size or with a non-finite value is a clear error naming it.
TEST(WeightScale, BadScalesAreRefused) {
  testing::TempDir tmp("weight_scale_bad");
  const std::string plain = converted_fixture("qwen2", GgmlType::F32, tmp);
  if (plain.empty()) GTEST_SKIP() << "no fixture qwen2";
  const auto src = GgufFile::open(plain);
  for (const std::vector<float>& bad :
       {std::vector<float>{1.0f, 2.0f}, std::vector<float>{std::numeric_limits<float>::infinity()}}) {
    GgufWriter w = writer_like(*src);
    for (const GgufTensor& t : src->tensors()) w.add_tensor(t.name, t.type, t.shape, t.data);
    std::vector<uint8_t> sb(bad.size() * sizeof(float));
    std::memcpy(sb.data(), bad.data(), sb.size());
    w.add_tensor("blk.0.attn_q.scale", GgmlType::F32, {int64_t(bad.size())}, std::move(sb));
    w.write(tmp.file("bad.gguf"));
    testing::expect_load_error<FormatError>(tmp.file("bad.gguf"), "blk.0.attn_q.scale");
  }
}

// The file's attn_q / attn_k / attn_v (weights, and biases where present) joined into attn_qkv.
int write_fused_qkv(const GgufFile& src, const std::string& out) {
  GgufWriter w = writer_like(src);
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
    testing::TempDir tmp(std::string("fused_qkv_") + name);
    const std::string split = converted_fixture(name, GgmlType::Q8_0, tmp);
    if (split.empty()) continue;
    ASSERT_GT(write_fused_qkv(*GgufFile::open(split), tmp.file("fused.gguf")), 0) << name;
    int weights = 0, biases = 0;
    const auto fused = GgufFile::open(tmp.file("fused.gguf"));
    for (const GgufTensor& t : fused->tensors()) {
      ASSERT_EQ(t.name.find(".attn_q."), std::string::npos) << name << " " << t.name;
      weights += ends_with(t.name, "attn_qkv.weight") ? 1 : 0;
      biases += ends_with(t.name, "attn_qkv.bias") ? 1 : 0;
    }
    EXPECT_GT(weights, 0) << name;
    if (std::string(name) == "qwen2" || std::string(name) == "gpt_oss") {
      EXPECT_EQ(biases, weights) << name;
    }
    EXPECT_EQ(logits_differing(split, tmp.file("fused.gguf")), 0) << name;
    ++ran;
  }
  if (ran == 0) GTEST_SKIP() << "no fixtures";
}

// Every ffn_gate_exps / ffn_up_exps pair (weights, and biases where present) as one ffn_gate_up_exps
// holding, per expert, the gate rows then the up rows.
void write_fused_gate_up(const GgufFile& src, const std::string& out) {
  GgufWriter w = writer_like(src);
  for (const GgufTensor& t : src.tensors()) {
    if (t.name.find("ffn_up_exps.") != std::string::npos) continue;  // joined with its gate below
    const size_t g = t.name.find("ffn_gate_exps.");
    if (g == std::string::npos) {
      w.add_tensor(t.name, t.type, t.shape, t.data);
      continue;
    }
    std::string up_name = t.name, fused = t.name;
    up_name.replace(g, 13, "ffn_up_exps");
    fused.replace(g, 13, "ffn_gate_up_exps");
    const GgufTensor& u = src.tensor(up_name);
    ASSERT_EQ(u.shape, t.shape);
    ASSERT_EQ(u.type, t.type);
    // Weights [cols, rows, n] or biases [rows, n]: the last dimension is the expert.
    const int64_t n = t.shape.back();
    const size_t slice = size_t(t.nbytes / uint64_t(n));
    std::vector<uint8_t> bytes(2 * slice * size_t(n));
    for (int64_t e = 0; e < n; ++e) {
      std::memcpy(bytes.data() + 2 * slice * size_t(e), t.data + slice * size_t(e), slice);
      std::memcpy(bytes.data() + 2 * slice * size_t(e) + slice, u.data + slice * size_t(e), slice);
    }
    std::vector<int64_t> shape = t.shape;
    shape[shape.size() - 2] *= 2;
    w.add_tensor(fused, t.type, shape, std::move(bytes));
  }
  w.write(out);
}

TEST(FusedGateUpExpertsFile, GivesTheSameLogits) {
  int ran = 0;
  for (const char* name : {"mixtral", "qwen2_moe", "olmoe", "qwen3_moe", "deepseek_v3", "qwen3_5_moe",
                           "qwen3_next", "gpt_oss"}) {
    testing::TempDir tmp(std::string("moe_fused_") + name);
    const std::string split = converted_fixture(name, GgmlType::Q8_0, tmp);
    if (split.empty()) continue;
    write_fused_gate_up(*GgufFile::open(split), tmp.file("fused.gguf"));
    const auto f = GgufFile::open(tmp.file("fused.gguf"));
    ASSERT_EQ(f->find_tensor("blk.1.ffn_gate_exps.weight"), nullptr) << name;
    ASSERT_NE(f->find_tensor("blk.1.ffn_gate_up_exps.weight"), nullptr) << name;
    if (std::string(name) == "gpt_oss") {
      ASSERT_NE(f->find_tensor("blk.1.ffn_gate_up_exps.bias"), nullptr);
    }
    EXPECT_EQ(logits_differing(split, tmp.file("fused.gguf")), 0) << name;
    ++ran;
  }
  if (ran == 0) GTEST_SKIP() << "no MoE fixtures";
}

// A fused tensor of the wrong shape is a clear error naming it.
TEST(FusedGateUpExpertsFile, WrongShapeIsRefused) {
  testing::TempDir tmp("moe_fused_bad");
  const std::string split = converted_fixture("qwen2_moe", GgmlType::F32, tmp);
  if (split.empty()) GTEST_SKIP() << "no fixture qwen2_moe";
  const auto src = GgufFile::open(split);
  GgufWriter w = writer_like(*src);
  for (const GgufTensor& t : src->tensors()) {
    if (t.name == "blk.0.ffn_up_exps.weight") continue;
    // The gate alone under the fused name: half the rows it needs.
    w.add_tensor(t.name == "blk.0.ffn_gate_exps.weight" ? "blk.0.ffn_gate_up_exps.weight" : t.name, t.type,
                 t.shape, t.data);
  }
  w.write(tmp.file("bad.gguf"));
  testing::expect_load_error<FormatError>(tmp.file("bad.gguf"), "blk.0.ffn_gate_up_exps.weight");
}

// The file's attn_qkv / attn_gate pairs replaced by ssm_in in transformers' in_proj_qkvz order: per key
// head [q (dk), k (dk), v (r dv), z (r dv)].
void write_fused_qkvz(const GgufFile& src, const DeltaNetParams& d, const std::string& out) {
  GgufWriter w = writer_like(src);
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

// The fixture converted to `type` (tmp/<name>.gguf) and rewritten with ssm_in (tmp/fused.gguf); "" when
// the checkout has no such fixture.
std::string with_fused_ssm_in(const std::string& name, GgmlType type, const testing::TempDir& tmp) {
  const std::string split = converted_fixture(name, type, tmp);
  if (split.empty()) return "";
  write_fused_qkvz(*GgufFile::open(split), load_model(split)->hparams().delta, tmp.file("fused.gguf"));
  return tmp.file("fused.gguf");
}

TEST(DeltaNetFile, FusedSsmInGivesTheSameLogits) {
  testing::TempDir tmp("qwen3next_ssm_in");
  const std::string fused = with_fused_ssm_in("qwen3_next", GgmlType::Q8_0, tmp);
  if (fused.empty()) GTEST_SKIP() << "no fixture qwen3_next";
  const auto f = GgufFile::open(fused);
  ASSERT_NE(f->find_tensor("blk.0.ssm_in.weight"), nullptr);
  ASSERT_EQ(f->find_tensor("blk.0.attn_qkv.weight"), nullptr);
  EXPECT_EQ(logits_differing(tmp.file("qwen3_next.gguf"), fused), 0);
}

// qwen35 files order their value heads otherwise (tiled); a fused ssm_in there is refused by name.
TEST(DeltaNetFile, FusedSsmInOfAQwen35FileIsRefused) {
  testing::TempDir tmp("qwen35_ssm_in");
  const std::string fused = with_fused_ssm_in("qwen3_5", GgmlType::F32, tmp);
  if (fused.empty()) GTEST_SKIP() << "no fixture qwen3_5";
  testing::expect_load_error<Unsupported>(fused, "ssm_in");
}

// Counts a corrupt file could carry are refused before anything is sized by them (found by
// model_load_fuzz: a flipped bit in block_count asked for a 7 GB table of layers).
TEST(LoaderBounds, HugeCountsAreFormatErrors) {
  testing::TempDir tmp("loader_bounds");
  const std::string plain = converted_fixture("llama_gqa", GgmlType::Q8_0, tmp);
  if (plain.empty()) GTEST_SKIP() << "no fixture llama_gqa";
  const auto src = GgufFile::open(plain);
  const std::pair<const char*, uint64_t> cases[] = {{"llama.block_count", uint64_t(1) << 26},
                                                    {"llama.embedding_length", (uint64_t(1) << 32) + 64},
                                                    {"llama.context_length", uint64_t(1) << 40}};
  for (const auto& [key, value] : cases) {
    GgufWriter w = writer_like(*src);
    w.set_u64(key, value);
    for (const GgufTensor& t : src->tensors()) w.add_tensor(t.name, t.type, t.shape, t.data);
    w.write(tmp.file("bad.gguf"));
    testing::expect_load_error<FormatError>(tmp.file("bad.gguf"), std::string(key).substr(6));
  }
}

}  // namespace
}  // namespace qleap
