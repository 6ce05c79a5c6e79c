// Cross-checks against gguf-py (the reference implementation of the format):
//  - ReadsGgufPyFile: a file written by gguf-py's GGUFWriter (tools/gen_gguf_crosscheck.py) must
//    read exactly as gguf-py's GGUFReader reads it (the committed reference.json).
//  - WritesCrosscheckFiles: with QLEAP_CROSSCHECK_OUT=<dir> set, writes files for gguf-py to read
//    (tests/py/test_gguf_crosscheck.py runs this test, then compares).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "gguf/convert.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "gguf_test_util.h"

namespace qleap {
namespace {

using nlohmann::json;

bool is_signed(GgufType t) {
  return t == GgufType::INT8 || t == GgufType::INT16 || t == GgufType::INT32 || t == GgufType::INT64;
}

// Compares one of our values with gguf-py's JSON rendering (see tests/py/gguf_dump.py).
void expect_value(const std::string& key, GgufType t, const GgufValue* ours_scalar_holder, const json& ref,
                  size_t idx) {
  const GgufValue& v = *ours_scalar_holder;
  SCOPED_TRACE(key + "[" + std::to_string(idx) + "]");
  auto item_u = [&]() { return v.is_array() ? v.arr_u.at(idx) : v.u; };
  auto item_i = [&]() { return v.is_array() ? v.arr_i.at(idx) : v.i; };
  auto item_f = [&]() { return v.is_array() ? v.arr_f.at(idx) : v.f; };
  switch (t) {
    case GgufType::STRING:
      EXPECT_EQ(v.is_array() ? v.arr_s.at(idx) : v.s, ref.get<std::string>());
      break;
    case GgufType::BOOL:
      EXPECT_EQ(item_u() != 0, ref.get<bool>());
      break;
    case GgufType::FLOAT32:
    case GgufType::FLOAT64:
      EXPECT_EQ(item_f(), ref.get<double>());
      break;
    default:
      if (is_signed(t)) {
        EXPECT_EQ(item_i(), ref.get<int64_t>());
      } else {
        EXPECT_EQ(item_u(), ref.get<uint64_t>());
      }
  }
}

void expect_array(const std::string& key, const GgufValue& v, const json& ref) {
  ASSERT_TRUE(v.is_array()) << key;
  EXPECT_EQ(uint32_t(v.elem_type), ref.at("elem_type").get<uint32_t>()) << key;
  const json& items = ref.at("items");
  ASSERT_EQ(v.array_size(), items.size()) << key;
  for (size_t k = 0; k < items.size(); ++k) {
    if (v.elem_type == GgufType::ARRAY) {
      expect_array(key, v.arr_v[k], items[k]);
    } else {
      expect_value(key, v.elem_type, &v, items[k], k);
    }
  }
}

TEST(GgufCrosscheck, ReadsGgufPyFile) {
  const std::string dir = testing::source_dir() + "/tests/golden/gguf_py";
  auto f = GgufFile::open(dir + "/reference.gguf");
  std::ifstream in(dir + "/reference.json");
  ASSERT_TRUE(in) << "missing reference.json (run tools/gen_gguf_crosscheck.py)";
  const json ref = json::parse(in);

  EXPECT_EQ(f->alignment(), ref.at("alignment").get<size_t>());
  const json& kv = ref.at("metadata");
  ASSERT_EQ(f->metadata().size(), kv.size());
  for (size_t k = 0; k < kv.size(); ++k) {
    const auto& [key, v] = f->metadata()[k];
    EXPECT_EQ(key, kv[k].at("key").get<std::string>());
    EXPECT_EQ(uint32_t(v.type), kv[k].at("type").get<uint32_t>()) << key;
    if (v.is_array()) {
      expect_array(key, v, kv[k].at("value"));
    } else {
      expect_value(key, v.type, &v, kv[k].at("value"), 0);
    }
  }
  const json& ts = ref.at("tensors");
  ASSERT_EQ(f->tensors().size(), ts.size());
  for (size_t k = 0; k < ts.size(); ++k) {
    const GgufTensor& t = f->tensors()[k];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, ts[k].at("name").get<std::string>());
    EXPECT_EQ(uint32_t(t.type), ts[k].at("type").get<uint32_t>());
    EXPECT_EQ(t.shape, ts[k].at("shape").get<std::vector<int64_t>>());
    EXPECT_EQ(t.n_elements(), ts[k].at("n_elements").get<int64_t>());
    EXPECT_EQ(t.nbytes, ts[k].at("n_bytes").get<uint64_t>());
    EXPECT_EQ(f->data_offset() + t.offset, ts[k].at("data_offset").get<uint64_t>());
    EXPECT_EQ(fmt::format("{:016x}", testing::fnv1a64(t.data, t.nbytes)),
              ts[k].at("fnv1a64").get<std::string>());
  }
}

// Our value as gguf-py's dump renders it.
json to_json(const GgufValue& v) {
  if (!v.is_array()) {
    switch (v.type) {
      case GgufType::STRING:
        return v.s;
      case GgufType::BOOL:
        return v.u != 0;
      case GgufType::FLOAT32:
      case GgufType::FLOAT64:
        return v.f;
      default:
        return is_signed(v.type) ? json(v.i) : json(v.u);
    }
  }
  json items = json::array();
  for (size_t k = 0; k < v.array_size(); ++k) {
    switch (v.elem_type) {
      case GgufType::ARRAY:
        items.push_back(to_json(v.arr_v[k]));
        break;
      case GgufType::STRING:
        items.push_back(v.arr_s[k]);
        break;
      case GgufType::BOOL:
        items.push_back(v.arr_u[k] != 0);
        break;
      case GgufType::FLOAT32:
      case GgufType::FLOAT64:
        items.push_back(v.arr_f[k]);
        break;
      default:
        items.push_back(is_signed(v.elem_type) ? json(v.arr_i[k]) : json(v.arr_u[k]));
    }
  }
  return json{{"elem_type", uint32_t(v.elem_type)}, {"items", items}};
}

GgufValue arr(GgufType et) {
  GgufValue a;
  a.type = GgufType::ARRAY;
  a.elem_type = et;
  return a;
}

TEST(GgufCrosscheck, WritesCrosscheckFiles) {
  const char* out_env = std::getenv("QLEAP_CROSSCHECK_OUT");
  if (!out_env || !*out_env)
    GTEST_SKIP() << "set QLEAP_CROSSCHECK_OUT=<dir> (tests/py/test_gguf_crosscheck.py does)";
  const std::filesystem::path out(out_env);
  std::filesystem::create_directories(out);

  GgufWriter w;
  w.set_string("general.architecture", "crosscheck");
  w.set_alignment(128);
  w.set_u8("t.u8", 250);
  w.set_i8("t.i8", -120);
  w.set_u16("t.u16", 65000);
  w.set_i16("t.i16", -32000);
  w.set_u32("t.u32", 4000000000u);
  w.set_i32("t.i32", -2000000000);
  w.set_u64("t.u64", 18000000000000000000ull);
  w.set_i64("t.i64", -9000000000000000000ll);
  w.set_f32("t.f32", 3.14159f);
  w.set_f64("t.f64", -2.718281828459045);
  w.set_bool("t.bool", true);
  w.set_bool("t.bool_false", false);
  w.set_string("t.str", "hello GGUF \xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80");
  w.set_array_string("t.arr_str", {"a", "",
                                   "\xc3\xbc"
                                   "ber"});
  w.set_array_i32("t.arr_i32", {1, -2, 3});
  w.set_array_u32("t.arr_u32", {0, 4000000000u});
  w.set_array_f32("t.arr_f32", {0.5f, -1.25f, 1e-7f});
  GgufValue a = arr(GgufType::UINT8);
  a.arr_u = {0, 1, 255};
  w.set("t.arr_u8", a);
  a = arr(GgufType::INT16);
  a.arr_i = {-5, 0, 7};
  w.set("t.arr_i16", a);
  a = arr(GgufType::UINT64);
  a.arr_u = {1, 9223372036854775813ull};
  w.set("t.arr_u64", a);
  a = arr(GgufType::INT64);
  a.arr_i = {-(int64_t(1) << 62), 3};
  w.set("t.arr_i64", a);
  a = arr(GgufType::FLOAT64);
  a.arr_f = {0.1, -1e300};
  w.set("t.arr_f64", a);
  a = arr(GgufType::BOOL);
  a.arr_u = {1, 0, 1};
  w.set("t.arr_bool", a);
  GgufValue nested = arr(GgufType::ARRAY);
  for (int k = 0; k < 3; ++k) {
    GgufValue inner = arr(GgufType::INT32);
    for (int j = 0; j <= k; ++j) inner.arr_i.push_back(k * 10 + j);
    nested.arr_v.push_back(inner);
  }
  w.set("t.nested_i32", nested);
  GgufValue nested_s = arr(GgufType::ARRAY);
  GgufValue s1 = arr(GgufType::STRING);
  s1.arr_s = {"x", "yz"};
  nested_s.arr_v = {s1, s1};
  w.set("t.nested_str", nested_s);

  std::vector<float> f32(8 * 3);
  for (size_t i = 0; i < f32.size(); ++i) f32[i] = float(i) * 0.25f - 2.f;
  std::vector<uint16_t> f16(6 * 4);
  for (size_t i = 0; i < f16.size(); ++i) f16[i] = uint16_t(0x3c00 + i);
  std::vector<uint8_t> q8(3 * 34), q4k(2 * 144), i8(9 * 2);
  for (size_t i = 0; i < q8.size(); ++i) q8[i] = uint8_t(i * 13);
  for (size_t i = 0; i < q4k.size(); ++i) q4k[i] = uint8_t(i * 7 + 1);
  for (size_t i = 0; i < i8.size(); ++i) i8[i] = uint8_t(i * 29);
  w.add_tensor("f32_2d", GgmlType::F32, {8, 3}, f32.data());
  w.add_tensor("f32_3d", GgmlType::F32, {2, 3, 4}, f32.data());
  w.add_tensor("f16_2d", GgmlType::F16, {6, 4}, f16.data());
  w.add_tensor("q8_0_2d", GgmlType::Q8_0, {32, 3}, q8.data());
  w.add_tensor("q4_k_2d", GgmlType::Q4_K, {256, 2}, q4k.data());
  w.add_tensor("i8_2d", GgmlType::I8, {9, 2}, i8.data());
  w.add_tensor("bf16_1d", GgmlType::BF16, {5}, f16.data());
  w.write((out / "writer.gguf").string());

  json expected;
  expected["alignment"] = w.alignment();
  json md = json::array();
  for (const auto& [key, v] : w.metadata()) {
    md.push_back(json{{"key", key}, {"type", uint32_t(v.type)}, {"value", to_json(v)}});
  }
  expected["metadata"] = md;
  // Tensor contents are checked against what the test handed the writer, not re-read by our reader.
  struct Src {
    const char* name;
    GgmlType type;
    std::vector<int64_t> shape;
    const void* data;
    size_t nbytes;
  };
  const std::vector<Src> srcs = {{"f32_2d", GgmlType::F32, {8, 3}, f32.data(), 96},
                                 {"f32_3d", GgmlType::F32, {2, 3, 4}, f32.data(), 96},
                                 {"f16_2d", GgmlType::F16, {6, 4}, f16.data(), 48},
                                 {"q8_0_2d", GgmlType::Q8_0, {32, 3}, q8.data(), q8.size()},
                                 {"q4_k_2d", GgmlType::Q4_K, {256, 2}, q4k.data(), q4k.size()},
                                 {"i8_2d", GgmlType::I8, {9, 2}, i8.data(), i8.size()},
                                 {"bf16_1d", GgmlType::BF16, {5}, f16.data(), 10}};
  json ts = json::array();
  for (const auto& s : srcs) {
    ts.push_back(json{{"name", s.name},
                      {"type", uint32_t(s.type)},
                      {"shape", s.shape},
                      {"n_bytes", s.nbytes},
                      {"fnv1a64", fmt::format("{:016x}", testing::fnv1a64(static_cast<const uint8_t*>(s.data),
                                                                          s.nbytes))}});
  }
  expected["tensors"] = ts;
  std::ofstream((out / "writer_expected.json").string()) << expected.dump(1);

  // Converted fixtures, for the Python checks against the safetensors weights.
  for (const auto& e : std::filesystem::directory_iterator(testing::fixtures_dir())) {
    if (!e.is_directory()) continue;
    const std::string name = e.path().filename().string();
    ConvertOptions opt;
    opt.out_type = GgmlType::F32;
    convert_hf_to_gguf(e.path().string(), (out / ("converted_" + name + ".gguf")).string(), opt);
  }
  ConvertOptions half;
  half.out_type = GgmlType::F16;
  convert_hf_to_gguf(testing::fixtures_dir() + "/llama_gqa", (out / "converted_llama_gqa_f16.gguf").string(),
                     half);
  // A real model re-encoded, for gguf-py to compare with the original.
  const std::string stories = testing::stories_model();
  requantize_gguf(stories, (out / "stories260K_f16.gguf").string(), GgmlType::F16);
  std::ofstream((out / "stories260K_source.txt").string()) << stories;
}

}  // namespace
}  // namespace qleap

namespace qleap {
namespace {

// Converts QLEAP_CONVERT_IN (an HF directory) to QLEAP_CONVERT_OUT with QLEAP_CONVERT_TYPE
// (default F32), for Python tests that need our converter on their own inputs.
TEST(GgufCrosscheck, ConvertDirFromEnv) {
  const char* in = std::getenv("QLEAP_CONVERT_IN");
  const char* out = std::getenv("QLEAP_CONVERT_OUT");
  if (!in || !out) GTEST_SKIP() << "set QLEAP_CONVERT_IN and QLEAP_CONVERT_OUT";
  ConvertOptions opt;
  opt.out_type = GgmlType::F32;
  if (const char* t = std::getenv("QLEAP_CONVERT_TYPE")) {
    const auto type = type_from_name(t);
    ASSERT_TRUE(type.has_value()) << t;
    opt.out_type = *type;
  }
  convert_hf_to_gguf(in, out, opt);
}

}  // namespace
}  // namespace qleap
