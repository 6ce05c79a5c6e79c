#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/cpu/matmul.h"
#include "core/error.h"
#include "core/fp16.h"
#include "gguf/convert.h"
#include "gguf/gguf.h"
#include "gguf/safetensors.h"
#include "gguf_test_util.h"
#include "quant/quant.h"

namespace qleap {
namespace {

namespace fs = std::filesystem;
using testing::fixtures_dir;
using testing::TempDir;

std::shared_ptr<GgufFile> convert(const std::string& fixture, const TempDir& tmp, GgmlType type,
                                  const std::string& out = "m.gguf") {
  ConvertOptions opt;
  opt.out_type = type;
  convert_hf_to_gguf(fixtures_dir() + "/" + fixture, tmp.file(out), opt);
  return GgufFile::open(tmp.file(out));
}

std::vector<float> decode(const GgufTensor& t) {
  std::vector<float> out(static_cast<size_t>(t.n_elements()));
  const int64_t rows = t.n_elements() / t.shape[0];
  for (int64_t r = 0; r < rows; ++r) {
    dequantize_row(t.type, t.data + size_t(r) * row_size(t.type, t.shape[0]), out.data() + r * t.shape[0],
                   t.shape[0]);
  }
  return out;
}

TEST(GgufConvert, LlamaMetadataAndTensors) {
  TempDir tmp("conv_llama");
  auto f = convert("llama_gqa", tmp, GgmlType::F16);
  EXPECT_EQ(f->architecture(), "llama");
  EXPECT_EQ(f->get_string("general.name"), "llama_gqa");
  EXPECT_EQ(f->find("general.file_type")->type, GgufType::UINT32);
  EXPECT_EQ(f->get_int("general.file_type", -1), 1);
  EXPECT_EQ(f->get_int("llama.embedding_length", 0), 64);
  EXPECT_EQ(f->get_int("llama.block_count", 0), 2);
  EXPECT_EQ(f->get_int("llama.feed_forward_length", 0), 128);
  EXPECT_EQ(f->get_int("llama.attention.head_count", 0), 4);
  EXPECT_EQ(f->get_int("llama.attention.head_count_kv", 0), 2);
  EXPECT_EQ(f->get_int("llama.context_length", 0), 512);
  EXPECT_EQ(f->get_int("llama.rope.dimension_count", 0), 16);
  EXPECT_EQ(f->get_int("llama.vocab_size", 0), 256);
  EXPECT_EQ(f->find("llama.rope.freq_base")->type, GgufType::FLOAT32);
  EXPECT_FLOAT_EQ(float(f->get_float("llama.rope.freq_base", 0)), 10000.f);
  EXPECT_FLOAT_EQ(float(f->get_float("llama.attention.layer_norm_rms_epsilon", 0)), 1e-5f);
  EXPECT_FALSE(f->has("llama.attention.key_length"));
  EXPECT_FALSE(f->has("llama.rope.scaling.type"));
  EXPECT_FALSE(f->has("tokenizer.ggml.model"));  // the fixture has no tokenizer
  // 2 layers x 9 tensors + token_embd + output_norm + output.
  EXPECT_EQ(f->tensors().size(), 21u);
  EXPECT_EQ(f->tensors().front().name, "token_embd.weight");
  EXPECT_EQ(f->tensors().back().name, "output.weight");
  const GgufTensor& q = f->tensor("blk.0.attn_q.weight");
  EXPECT_EQ(q.type, GgmlType::F16);
  EXPECT_EQ(q.shape, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(f->tensor("blk.1.attn_k.weight").shape, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(f->tensor("blk.1.ffn_down.weight").shape, (std::vector<int64_t>{128, 64}));
  EXPECT_EQ(f->tensor("blk.1.ffn_norm.weight").type, GgmlType::F32);
  EXPECT_EQ(f->tensor("output_norm.weight").type, GgmlType::F32);

  // Rotary re-ordering: GGUF row 2i+j of head h is HF row j*d/2+i (d = 16 here); v is untouched.
  auto st = SafetensorsModel::open_dir(fixtures_dir() + "/llama_gqa");
  const auto hk = st.get("model.layers.1.self_attn.k_proj.weight").to_f32();
  const auto gk = decode(f->tensor("blk.1.attn_k.weight"));
  const int64_t d = 16, cols = 64;
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 0; i < d / 2; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        for (int64_t c = 0; c < cols; ++c) {
          const float want =
              fp16_to_fp32_ref(fp32_to_fp16_ref(hk[size_t(((h * d) + j * d / 2 + i) * cols + c)]));
          ASSERT_EQ(gk[size_t((h * d + 2 * i + j) * cols + c)], want)
              << h << " " << i << " " << j << " " << c;
        }
      }
    }
  }
  const auto hv = st.get("model.layers.1.self_attn.v_proj.weight").to_f32();
  const auto gv = decode(f->tensor("blk.1.attn_v.weight"));
  for (size_t i = 0; i < hv.size(); ++i) ASSERT_EQ(gv[i], fp16_to_fp32_ref(fp32_to_fp16_ref(hv[i])));
}

TEST(GgufConvert, ArchitectureSpecifics) {
  TempDir tmp("conv_arch");
  auto tied = convert("llama_tied", tmp, GgmlType::F32, "tied.gguf");
  EXPECT_EQ(tied->find_tensor("output.weight"), nullptr);
  EXPECT_EQ(tied->get_int("general.file_type", -1), 0);

  auto q2 = convert("qwen2", tmp, GgmlType::F32, "q2.gguf");
  EXPECT_EQ(q2->architecture(), "qwen2");
  EXPECT_EQ(q2->tensor("blk.0.attn_q.bias").shape, (std::vector<int64_t>{64}));
  EXPECT_EQ(q2->tensor("blk.0.attn_k.bias").type, GgmlType::F32);
  // Qwen uses NeoX rope at run time: q is stored exactly as in the checkpoint.
  auto st = SafetensorsModel::open_dir(fixtures_dir() + "/qwen2");
  const auto hq = st.get("model.layers.0.self_attn.q_proj.weight").to_f32();
  EXPECT_EQ(std::memcmp(q2->tensor("blk.0.attn_q.weight").data, hq.data(), hq.size() * 4), 0);
  const auto hb = st.get("model.layers.0.self_attn.k_proj.bias").to_f32();
  EXPECT_EQ(std::memcmp(q2->tensor("blk.0.attn_k.bias").data, hb.data(), hb.size() * 4), 0);

  auto q3 = convert("qwen3", tmp, GgmlType::F32, "q3.gguf");
  EXPECT_EQ(q3->architecture(), "qwen3");
  EXPECT_EQ(q3->get_int("qwen3.attention.key_length", 0), 32);
  EXPECT_EQ(q3->get_int("qwen3.attention.value_length", 0), 32);
  EXPECT_EQ(q3->get_int("qwen3.rope.dimension_count", 0), 32);
  EXPECT_EQ(q3->tensor("blk.1.attn_q_norm.weight").shape, (std::vector<int64_t>{32}));
  EXPECT_EQ(q3->tensor("blk.1.attn_q.weight").shape, (std::vector<int64_t>{64, 128}));
  EXPECT_EQ(q3->tensor("blk.1.attn_output.weight").shape, (std::vector<int64_t>{128, 64}));

  auto mi = convert("mistral", tmp, GgmlType::F32, "mi.gguf");
  EXPECT_EQ(mi->architecture(), "llama");

  auto lin = convert("llama_rope_linear", tmp, GgmlType::F32, "lin.gguf");
  EXPECT_EQ(lin->get_string("llama.rope.scaling.type"), "linear");
  EXPECT_FLOAT_EQ(float(lin->get_float("llama.rope.scaling.factor", 0)), 4.f);

  auto yarn = convert("llama_rope_yarn", tmp, GgmlType::F32, "yarn.gguf");
  EXPECT_EQ(yarn->get_string("llama.rope.scaling.type"), "yarn");
  EXPECT_FLOAT_EQ(float(yarn->get_float("llama.rope.scaling.factor", 0)), 4.f);
  EXPECT_EQ(yarn->get_int("llama.rope.scaling.original_context_length", 0), 128);

  auto l3 = convert("llama_rope_llama3", tmp, GgmlType::F32, "l3.gguf");
  EXPECT_FALSE(l3->has("llama.rope.scaling.type"));
  const GgufTensor& rf = l3->tensor("rope_freqs.weight");
  ASSERT_EQ(rf.shape, (std::vector<int64_t>{8}));
  std::vector<float> fac(8);
  std::memcpy(fac.data(), rf.data, 32);
  // theta 5e5, d 16, original context 64, low/high freq factors 1/4, factor 8: wavelengths below 16
  // keep factor 1, above 64 get 8, and the band between is interpolated.
  for (int i = 0; i < 8; ++i) {
    const double wavelen = 2 * M_PI * std::pow(500000.0, 2.0 * i / 16);
    if (wavelen < 16) {
      EXPECT_EQ(fac[i], 1.f) << i;
    }
    if (wavelen > 64) {
      EXPECT_EQ(fac[i], 8.f) << i;
    }
    if (wavelen >= 16 && wavelen <= 64) {
      EXPECT_GT(fac[i], 1.f);
      EXPECT_LT(fac[i], 8.f);
    }
  }
  EXPECT_EQ(fac[0], 1.f);
  EXPECT_EQ(fac[7], 8.f);
}

// Copies a fixture into dir with the given extra/changed config.json fields.
void copy_fixture(const std::string& name, const fs::path& dir, const nlohmann::json& patch = {}) {
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(fs::path(fixtures_dir()) / name)) {
    fs::copy_file(e.path(), dir / e.path().filename(), fs::copy_options::overwrite_existing);
  }
  if (!patch.is_null()) {
    std::ifstream in(dir / "config.json");
    nlohmann::json c = nlohmann::json::parse(in);
    c.merge_patch(patch);
    std::ofstream(dir / "config.json") << c.dump(1);
  }
}

TEST(GgufConvert, RejectsUnsupportedInput) {
  TempDir tmp("conv_bad");
  copy_fixture("llama_gqa", tmp.path() / "gemma", {{"model_type", "gemma"}});
  try {
    convert_hf_to_gguf((tmp.path() / "gemma").string(), tmp.file("x.gguf"), {});
    FAIL() << "expected Unsupported";
  } catch (const Unsupported& e) {
    EXPECT_NE(std::string(e.what()).find("llama, mistral, mixtral, qwen2, qwen3"), std::string::npos)
        << e.what();
  }
  copy_fixture("llama_gqa", tmp.path() / "rope", {{"rope_parameters", {{"rope_type", "longrope"}}}});
  EXPECT_THROW(convert_hf_to_gguf((tmp.path() / "rope").string(), tmp.file("x.gguf"), {}), Unsupported);
  copy_fixture("llama_gqa", tmp.path() / "nohidden", {{"hidden_size", nullptr}});
  EXPECT_THROW(convert_hf_to_gguf((tmp.path() / "nohidden").string(), tmp.file("x.gguf"), {}), FormatError);
  EXPECT_THROW(convert_hf_to_gguf((tmp.path() / "missing").string(), tmp.file("x.gguf"), {}), IoError);
  if (!can_quantize(GgmlType::IQ2_XXS)) {
    ConvertOptions opt;
    opt.out_type = GgmlType::IQ2_XXS;
    EXPECT_THROW(convert_hf_to_gguf(fixtures_dir() + "/llama_gqa", tmp.file("x.gguf"), opt), Unsupported);
  }
  EXPECT_FALSE(fs::exists(tmp.file("x.gguf")));
}

TEST(GgufConvert, WritesByteLevelBpeTokenizer) {
  TempDir tmp("conv_tok");
  const fs::path dir = tmp.path() / "m";
  copy_fixture("llama_gqa", dir);
  nlohmann::json tok = {
      {"model",
       {{"type", "BPE"},
        {"vocab",
         {{"a", 0},
          {"b", 1},
          {"ab", 2},
          {"\xc4\xa0"
           "a",
           3}}},
        {"merges", nlohmann::json::array({"a b", nlohmann::json::array({"\xc4\xa0", "a"})})}}},
      {"added_tokens",
       {{{"id", 4}, {"content", "<|endoftext|>"}, {"special", true}},
        {{"id", 6}, {"content", "<extra>"}, {"special", false}}}}};
  std::ofstream(dir / "tokenizer.json") << tok.dump();
  std::ofstream(dir / "tokenizer_config.json")
      << nlohmann::json{{"chat_template", "{{ messages }}"}, {"add_bos_token", false}}.dump();
  std::vector<std::string> log;
  ConvertOptions opt;
  opt.progress = [&](const std::string& m, double) { log.push_back(m); };
  convert_hf_to_gguf(dir.string(), tmp.file("t.gguf"), opt);
  EXPECT_FALSE(log.empty());
  auto f = GgufFile::open(tmp.file("t.gguf"));
  EXPECT_EQ(f->get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f->get_string("tokenizer.ggml.pre"), "default");
  const auto& toks = f->find("tokenizer.ggml.tokens")->arr_s;
  ASSERT_EQ(toks.size(), 256u);  // padded to the model's vocab_size
  EXPECT_EQ(toks[2], "ab");
  EXPECT_EQ(toks[3],
            "\xc4\xa0"
            "a");
  EXPECT_EQ(toks[4], "<|endoftext|>");
  EXPECT_EQ(toks[5], "[PAD5]");
  EXPECT_EQ(toks[6], "<extra>");
  const auto& types = f->find("tokenizer.ggml.token_type")->arr_i;
  EXPECT_EQ(types[0], 1);
  EXPECT_EQ(types[4], 3);
  EXPECT_EQ(types[5], 5);
  EXPECT_EQ(types[6], 4);
  EXPECT_EQ(f->find("tokenizer.ggml.merges")->arr_s, (std::vector<std::string>{"a b", "\xc4\xa0 a"}));
  EXPECT_EQ(f->get_int("tokenizer.ggml.bos_token_id", -1), 1);
  EXPECT_EQ(f->get_int("tokenizer.ggml.eos_token_id", -1), 2);
  EXPECT_EQ(f->get_string("tokenizer.chat_template"), "{{ messages }}");
  ASSERT_NE(f->find("tokenizer.ggml.add_bos_token"), nullptr);
  EXPECT_EQ(f->find("tokenizer.ggml.add_bos_token")->type, GgufType::BOOL);
  EXPECT_FALSE(f->get_bool("tokenizer.ggml.add_bos_token", true));
  EXPECT_FALSE(f->has("tokenizer.ggml.add_eos_token"));
}

// Splits a checkpoint into two shards (with BF16 for one of them) and checks the conversion reads
// every tensor from the right shard.
TEST(GgufConvert, ShardedBf16Checkpoint) {
  TempDir tmp("conv_shard");
  const fs::path dir = tmp.path() / "m";
  fs::create_directories(dir);
  fs::copy_file(fs::path(fixtures_dir()) / "llama_gqa" / "config.json", dir / "config.json");
  auto st = SafetensorsModel::open_dir(fixtures_dir() + "/llama_gqa");
  nlohmann::json wm;
  for (int shard = 0; shard < 2; ++shard) {
    nlohmann::json h = nlohmann::json::object();
    std::vector<uint8_t> data;
    const auto names = st.names();
    for (size_t k = 0; k < names.size(); ++k) {
      if (int(k % 2) != shard) continue;
      const SafeTensor& t = st.get(names[k]);
      const auto f = t.to_f32();
      const size_t off = data.size();
      if (shard == 1) {
        for (float x : f) {
          const uint16_t b = fp32_to_bf16(x);
          data.insert(data.end(), reinterpret_cast<const uint8_t*>(&b),
                      reinterpret_cast<const uint8_t*>(&b) + 2);
        }
      } else {
        data.insert(data.end(), reinterpret_cast<const uint8_t*>(f.data()),
                    reinterpret_cast<const uint8_t*>(f.data() + f.size()));
      }
      h[names[k]] = {
          {"dtype", shard == 1 ? "BF16" : "F32"}, {"shape", t.shape}, {"data_offsets", {off, data.size()}}};
      wm[names[k]] = fmt::format("model-{}.safetensors", shard);
    }
    const std::string js = h.dump();
    std::ofstream out(dir / fmt::format("model-{}.safetensors", shard), std::ios::binary);
    const uint64_t n = js.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << js;
    out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
  }
  std::ofstream(dir / "model.safetensors.index.json") << nlohmann::json{{"weight_map", wm}}.dump();

  ConvertOptions opt;
  opt.out_type = GgmlType::F32;
  convert_hf_to_gguf(dir.string(), tmp.file("sharded.gguf"), opt);
  auto sharded = GgufFile::open(tmp.file("sharded.gguf"));
  auto single = convert("llama_gqa", tmp, GgmlType::F32, "single.gguf");
  ASSERT_EQ(sharded->tensors().size(), single->tensors().size());
  int n_bf16 = 0;
  for (const auto& t : single->tensors()) {
    const GgufTensor& s = sharded->tensor(t.name);
    ASSERT_EQ(s.nbytes, t.nbytes);
    const auto a = decode(s), b = decode(t);
    bool all_equal = true;
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_TRUE(a[i] == b[i] || a[i] == bf16_to_fp32(fp32_to_bf16(b[i]))) << t.name << " " << i;
      all_equal = all_equal && a[i] == b[i];
    }
    n_bf16 += !all_equal;
  }
  EXPECT_GT(n_bf16, 5);  // about half the tensors went through BF16
}

TEST(GgufConvert, RequantizeRoundTrip) {
  TempDir tmp("conv_requant");
  auto f32 = convert("qwen2", tmp, GgmlType::F32, "f32.gguf");
  std::vector<std::string> log;
  requantize_gguf(tmp.file("f32.gguf"), tmp.file("f16.gguf"), GgmlType::F16,
                  [&](const std::string& m, double) { log.push_back(m); });
  EXPECT_FALSE(log.empty());
  auto f16 = GgufFile::open(tmp.file("f16.gguf"));
  EXPECT_EQ(f16->get_int("general.file_type", -1), 1);
  ASSERT_EQ(f16->metadata().size(), f32->metadata().size());
  for (const auto& [k, v] : f32->metadata()) {
    if (k == "general.file_type") continue;
    ASSERT_NE(f16->find(k), nullptr) << k;
    EXPECT_EQ(f16->find(k)->to_display(), v.to_display()) << k;
  }
  ASSERT_EQ(f16->tensors().size(), f32->tensors().size());
  for (const auto& t : f32->tensors()) {
    const GgufTensor& h = f16->tensor(t.name);
    EXPECT_EQ(h.shape, t.shape);
    if (t.shape.size() == 1) {
      EXPECT_EQ(h.type, GgmlType::F32) << t.name;
      EXPECT_EQ(std::memcmp(h.data, t.data, t.nbytes), 0) << t.name;
      continue;
    }
    EXPECT_EQ(h.type, GgmlType::F16) << t.name;
    const auto a = decode(t), b = decode(h);
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(b[i], fp16_to_fp32_ref(fp32_to_fp16_ref(a[i]))) << t.name;
  }
  // Back to F32: exactly the F16 values.
  requantize_gguf(tmp.file("f16.gguf"), tmp.file("back.gguf"), GgmlType::F32);
  auto back = GgufFile::open(tmp.file("back.gguf"));
  EXPECT_EQ(back->get_int("general.file_type", -1), 0);
  const auto a = decode(f16->tensor("blk.1.ffn_up.weight"));
  const auto b = decode(back->tensor("blk.1.ffn_up.weight"));
  EXPECT_EQ(a, b);
  EXPECT_EQ(back->tensor("blk.1.ffn_up.weight").type, GgmlType::F32);
}

TEST(GgufConvert, RequantizesRealModel) {
  const std::string src = testing::stories_model();
  TempDir tmp("conv_real");
  requantize_gguf(src, tmp.file("s16.gguf"), GgmlType::F16);
  auto a = GgufFile::open(src);
  auto b = GgufFile::open(tmp.file("s16.gguf"));
  EXPECT_EQ(b->architecture(), "llama");
  EXPECT_EQ(b->get_int("general.file_type", -1), 1);
  EXPECT_EQ(b->find("tokenizer.ggml.tokens")->arr_s, a->find("tokenizer.ggml.tokens")->arr_s);
  ASSERT_EQ(b->tensors().size(), a->tensors().size());
  int n_f16 = 0;
  for (const auto& t : a->tensors()) {
    const GgufTensor& u = b->tensor(t.name);
    EXPECT_EQ(u.shape, t.shape);
    n_f16 += u.type == GgmlType::F16;
    EXPECT_EQ(u.type, t.shape.size() == 2 ? GgmlType::F16 : t.type) << t.name;
    const auto x = decode(t), y = decode(u);
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(y[i], t.shape.size() == 2 ? fp16_to_fp32_ref(fp32_to_fp16_ref(x[i])) : x[i]) << t.name;
    }
  }
  EXPECT_GT(n_f16, 10);
}

// Block formats: exercised once an encoder for them is linked in (quant branch).
TEST(GgufConvert, BlockTypesAndF16Fallback) {
  TempDir tmp("conv_blocks");
  int tried = 0;
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K, GgmlType::Q6_K,
                     GgmlType::TQ1_0, GgmlType::TQ2_0, GgmlType::MXFP4, GgmlType::NVFP4, GgmlType::IQ4_XS}) {
    if (!can_quantize(t)) continue;
    ++tried;
    const std::string out = std::string("m_") + type_name(t) + ".gguf";
    auto f = convert("llama_gqa", tmp, t, out);
    const int64_t bs = type_traits(t).block_size;
    for (const auto& tensor : f->tensors()) {
      if (tensor.shape.size() == 1) {
        EXPECT_EQ(tensor.type, GgmlType::F32);
      } else {
        // IQ4_XS rows that are no whole number of 256-weight blocks fall back to IQ4_NL.
        const GgmlType fallback =
            t == GgmlType::IQ4_XS && tensor.shape[0] % 32 == 0 ? GgmlType::IQ4_NL : GgmlType::F16;
        EXPECT_EQ(tensor.type, tensor.shape[0] % bs == 0 ? t : fallback) << tensor.name;
      }
    }
    EXPECT_EQ(f->get_int("general.file_type", -1), file_type_for(t));
    // Requantizing to the same type from F32 gives identical bytes.
    convert("llama_gqa", tmp, GgmlType::F32, "f32.gguf");
    requantize_gguf(tmp.file("f32.gguf"), tmp.file("rq.gguf"), t);
    auto rq = GgufFile::open(tmp.file("rq.gguf"));
    for (const auto& tensor : f->tensors()) {
      const GgufTensor& r = rq->tensor(tensor.name);
      EXPECT_EQ(r.type, tensor.type) << tensor.name;
      ASSERT_EQ(r.nbytes, tensor.nbytes);
      EXPECT_EQ(std::memcmp(r.data, tensor.data, r.nbytes), 0) << tensor.name;
    }
  }
  if (tried == 0) GTEST_SKIP() << "no block-format encoder in this build yet";
}

}  // namespace
}  // namespace qleap
