#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fp16.h"
#include "gguf/safetensors.h"
#include "gguf_test_util.h"

namespace qleap {
namespace {

using testing::TempDir;

struct StEntry {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// Builds a safetensors image; `pad` adds spaces after the JSON so data starts unaligned.
std::vector<uint8_t> build(const std::vector<StEntry>& es, size_t pad = 0, const nlohmann::json& extra = {}) {
  nlohmann::json h = nlohmann::json::object();
  size_t off = 0;
  for (const auto& e : es) {
    h[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {off, off + e.bytes.size()}}};
    off += e.bytes.size();
  }
  if (!extra.is_null()) h.update(extra);
  std::string js = h.dump() + std::string(pad, ' ');
  std::string all(8, '\0');
  const uint64_t n = js.size();
  std::memcpy(all.data(), &n, 8);
  all += js;
  for (const auto& e : es) all.append(e.bytes.begin(), e.bytes.end());
  return std::vector<uint8_t>(all.begin(), all.end());
}

template <typename T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

void save(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

TEST(GgufSafetensors, DecodesF32F16Bf16) {
  const std::vector<float> f = {1.5f, -2.25f, 3e-3f, 65504.f, -0.f, 7.f};
  std::vector<uint16_t> h, bf;
  for (float x : f) {
    h.push_back(fp32_to_fp16_ref(x));
    bf.push_back(fp32_to_bf16(x));
  }
  const auto img = build({{"a", "F32", {2, 3}, bytes_of(f)},
                          {"b", "F16", {6}, bytes_of(h)},
                          {"c", "BF16", {3, 2}, bytes_of(bf)},
                          {"d", "I64", {2}, std::vector<uint8_t>(16)}},
                         /*pad=*/3, {{"__metadata__", {{"format", "pt"}}}});
  auto st = SafetensorsFile::parse(img.data(), img.size());
  ASSERT_EQ(st->tensors().size(), 4u);
  EXPECT_EQ(st->metadata().at("format"), "pt");
  const SafeTensor& a = *st->find("a");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.ggml_type(), GgmlType::F32);
  EXPECT_EQ(a.to_f32(), f);
  const auto hb = st->find("b")->to_f32();
  const auto cb = st->find("c")->to_f32();
  for (size_t i = 0; i < f.size(); ++i) {
    EXPECT_EQ(hb[i], fp16_to_fp32_ref(h[i]));
    EXPECT_EQ(cb[i], bf16_to_fp32(bf[i]));
  }
  float part[2];
  st->find("a")->to_f32(part, 3, 2);
  EXPECT_EQ(part[0], f[3]);
  EXPECT_EQ(part[1], f[4]);
  EXPECT_THROW(st->find("a")->to_f32(part, 5, 2), InvalidArgument);
  EXPECT_THROW(st->find("d")->ggml_type(), Unsupported);
  EXPECT_THROW(st->find("d")->to_f32(), Unsupported);
  EXPECT_EQ(st->find("missing"), nullptr);
}

TEST(GgufSafetensors, RejectsCorruptFiles) {
  const std::vector<float> f = {1, 2, 3, 4};
  auto expect_format_error = [](const std::vector<uint8_t>& img, const char* what) {
    EXPECT_THROW(SafetensorsFile::parse(img.data(), img.size()), FormatError) << what;
  };
  auto good = build({{"a", "F32", {4}, bytes_of(f)}});
  ASSERT_NO_THROW(SafetensorsFile::parse(good.data(), good.size()));
  expect_format_error(std::vector<uint8_t>(good.begin(), good.begin() + 5), "short");
  expect_format_error(std::vector<uint8_t>(good.begin(), good.end() - 1), "truncated data");
  auto huge = good;
  huge[7] = 0x7f;  // header length far beyond the file
  expect_format_error(huge, "header length");
  auto bad_json = good;
  bad_json[8] = '[';
  expect_format_error(bad_json, "json");
  expect_format_error(build({{"a", "F32", {5}, bytes_of(f)}}), "size mismatch");
  expect_format_error(build({{"a", "F32", {-4}, bytes_of(f)}}), "negative dim");
  expect_format_error(build({{"a", "Q9", {4}, bytes_of(f)}}), "dtype");
  nlohmann::json bad_offsets = {{"b", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {12, 8}}}}};
  expect_format_error(build({{"a", "F32", {4}, bytes_of(f)}}, 0, bad_offsets), "reversed offsets");
  nlohmann::json missing = {{"b", {{"dtype", "F32"}, {"shape", {1}}}}};
  expect_format_error(build({{"a", "F32", {4}, bytes_of(f)}}, 0, missing), "no offsets");
  nlohmann::json wrong_type = {{"b", {{"dtype", 3}, {"shape", {1}}, {"data_offsets", {0, 4}}}}};
  expect_format_error(build({{"a", "F32", {4}, bytes_of(f)}}, 0, wrong_type), "dtype not a string");
  // Numbers that are not non-negative 64-bit integers: nlohmann keeps them as doubles (a literal past
  // 2^64) or signed, and converting those is undefined or wraps (tests/fuzz/regressions).
  for (const nlohmann::json& offs :
       {nlohmann::json{0, 1.5}, nlohmann::json::parse("[0, 29999999999999999994]"), nlohmann::json{-4, 0},
        nlohmann::json{0, "4"}}) {
    nlohmann::json e = {{"b", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", offs}}}};
    expect_format_error(build({{"a", "F32", {4}, bytes_of(f)}}, 0, e), offs.dump().c_str());
  }
  nlohmann::json float_dim = {{"b", {{"dtype", "F32"}, {"shape", {1e30}}, {"data_offsets", {0, 4}}}}};
  expect_format_error(build({{"a", "F32", {4}, bytes_of(f)}}, 0, float_dim), "float dimension");
}

TEST(GgufSafetensors, OpensShardedCheckpoints) {
  TempDir dir("st_shards");
  const std::vector<float> f = {1, 2, 3, 4};
  save(dir.file("model-00001-of-00002.safetensors"), build({{"x", "F32", {4}, bytes_of(f)}}));
  save(dir.file("model-00002-of-00002.safetensors"),
       build({{"y", "F32", {2, 2}, bytes_of(f)}, {"z", "F32", {1}, bytes_of(std::vector<float>{9})}}));
  nlohmann::json idx = {{"metadata", {{"total_size", 36}}},
                        {"weight_map",
                         {{"x", "model-00001-of-00002.safetensors"},
                          {"y", "model-00002-of-00002.safetensors"},
                          {"z", "model-00002-of-00002.safetensors"}}}};
  std::ofstream(dir.file("model.safetensors.index.json")) << idx.dump();
  auto m = SafetensorsModel::open_dir(dir.path().string());
  EXPECT_EQ(m.names(), (std::vector<std::string>{"x", "y", "z"}));
  EXPECT_EQ(m.get("z").to_f32(), std::vector<float>{9});
  EXPECT_EQ(m.get("y").shape, (std::vector<int64_t>{2, 2}));
  EXPECT_THROW(m.get("w"), FormatError);

  // The same tensor in two shards is ambiguous.
  save(dir.file("model-00001-of-00002.safetensors"), build({{"z", "F32", {4}, bytes_of(f)}}));
  EXPECT_THROW(SafetensorsModel::open_dir(dir.path().string()), FormatError);
  // A shard outside the directory is refused.
  idx["weight_map"]["x"] = "../evil.safetensors";
  std::ofstream(dir.file("model.safetensors.index.json")) << idx.dump();
  EXPECT_THROW(SafetensorsModel::open_dir(dir.path().string()), FormatError);
  TempDir empty("st_empty");
  EXPECT_THROW(SafetensorsModel::open_dir(empty.path().string()), IoError);
}

}  // namespace
}  // namespace qleap
