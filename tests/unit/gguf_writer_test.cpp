#include "gguf/gguf_writer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "gguf/gguf.h"
#include "gguf_test_util.h"

namespace qleap {
namespace {

using testing::TempDir;

GgufValue int_array(GgufType et, std::vector<int64_t> v) {
  GgufValue a;
  a.type = GgufType::ARRAY;
  a.elem_type = et;
  a.arr_i = std::move(v);
  return a;
}

TEST(GgufWriter, RoundTripsEveryMetadataType) {
  TempDir dir("writer_meta");
  GgufWriter w;
  w.set_u8("u8", 200);
  w.set_i8("i8", -100);
  w.set_u16("u16", 60000);
  w.set_i16("i16", -30000);
  w.set_u32("u32", 4000000000u);
  w.set_i32("i32", -2000000000);
  w.set_u64("u64", 18000000000000000000ull);
  w.set_i64("i64", -9000000000000000000ll);
  w.set_f32("f32", 1.5f);
  w.set_f64("f64", -2.718281828459045);
  w.set_bool("bool", true);
  w.set_string("str", std::string("h\0llo", 5));
  w.set_string("empty", "");
  w.set_array_string("arr_str", {"a", "", "xyz"});
  w.set_array_i32("arr_i32", {-1, 2, -3});
  w.set_array_u32("arr_u32", {7, 4000000000u});
  w.set_array_f32("arr_f32", {0.25f, -8.5f});
  GgufValue u8s;
  u8s.type = GgufType::ARRAY;
  u8s.elem_type = GgufType::UINT8;
  u8s.arr_u = {0, 255, 3};
  w.set("arr_u8", u8s);
  GgufValue bools = u8s;
  bools.elem_type = GgufType::BOOL;
  bools.arr_u = {1, 0};
  w.set("arr_bool", bools);
  GgufValue f64s;
  f64s.type = GgufType::ARRAY;
  f64s.elem_type = GgufType::FLOAT64;
  f64s.arr_f = {1e300, -0.1};
  w.set("arr_f64", f64s);
  w.set("arr_i8", int_array(GgufType::INT8, {-128, 127}));
  w.set("arr_i64", int_array(GgufType::INT64, {-(int64_t(1) << 62), 5}));
  GgufValue nested;
  nested.type = GgufType::ARRAY;
  nested.elem_type = GgufType::ARRAY;
  nested.arr_v = {int_array(GgufType::INT16, {1, -2}), int_array(GgufType::INT16, {}),
                  int_array(GgufType::INT16, {3})};
  w.set("nested", nested);
  GgufValue empty_arr;
  empty_arr.type = GgufType::ARRAY;
  empty_arr.elem_type = GgufType::STRING;
  w.set("empty_arr", empty_arr);
  w.set_u32("u32", 4000000001u);  // replaces in place, keeps the position
  w.write(dir.file("m.gguf"));

  auto f = GgufFile::open(dir.file("m.gguf"));
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->metadata().size(), w.metadata().size());
  EXPECT_EQ(f->metadata()[4].first, "u32");
  EXPECT_EQ(f->find("u8")->type, GgufType::UINT8);
  EXPECT_EQ(f->find("u8")->u, 200u);
  EXPECT_EQ(f->find("i8")->i, -100);
  EXPECT_EQ(f->find("u16")->u, 60000u);
  EXPECT_EQ(f->find("i16")->i, -30000);
  EXPECT_EQ(f->find("u32")->u, 4000000001u);
  EXPECT_EQ(f->find("i32")->i, -2000000000);
  EXPECT_EQ(f->find("u64")->u, 18000000000000000000ull);
  EXPECT_EQ(f->find("i64")->i, -9000000000000000000ll);
  EXPECT_EQ(f->find("f32")->type, GgufType::FLOAT32);
  EXPECT_EQ(f->find("f32")->f, 1.5);
  EXPECT_EQ(f->find("f64")->f, -2.718281828459045);
  EXPECT_TRUE(f->get_bool("bool", false));
  EXPECT_EQ(f->get_string("str"), std::string("h\0llo", 5));
  EXPECT_EQ(f->get_string("empty", "x"), "");
  EXPECT_EQ(f->find("arr_str")->arr_s, (std::vector<std::string>{"a", "", "xyz"}));
  EXPECT_EQ(f->find("arr_i32")->elem_type, GgufType::INT32);
  EXPECT_EQ(f->find("arr_i32")->arr_i, (std::vector<int64_t>{-1, 2, -3}));
  EXPECT_EQ(f->find("arr_u32")->arr_u, (std::vector<uint64_t>{7, 4000000000u}));
  EXPECT_EQ(f->find("arr_f32")->arr_f, (std::vector<double>{0.25, -8.5}));
  EXPECT_EQ(f->find("arr_u8")->arr_u, (std::vector<uint64_t>{0, 255, 3}));
  EXPECT_EQ(f->find("arr_bool")->elem_type, GgufType::BOOL);
  EXPECT_EQ(f->find("arr_bool")->arr_u, (std::vector<uint64_t>{1, 0}));
  EXPECT_EQ(f->find("arr_f64")->arr_f, (std::vector<double>{1e300, -0.1}));
  EXPECT_EQ(f->find("arr_i8")->arr_i, (std::vector<int64_t>{-128, 127}));
  EXPECT_EQ(f->find("arr_i64")->arr_i, (std::vector<int64_t>{-(int64_t(1) << 62), 5}));
  const GgufValue* n = f->find("nested");
  ASSERT_EQ(n->arr_v.size(), 3u);
  EXPECT_EQ(n->arr_v[0].elem_type, GgufType::INT16);
  EXPECT_EQ(n->arr_v[0].arr_i, (std::vector<int64_t>{1, -2}));
  EXPECT_EQ(n->arr_v[1].array_size(), 0u);
  EXPECT_EQ(n->arr_v[2].arr_i, (std::vector<int64_t>{3}));
  EXPECT_EQ(f->find("empty_arr")->array_size(), 0u);
  EXPECT_TRUE(f->tensors().empty());
}

TEST(GgufWriter, RoundTripsTensorsWithAlignment) {
  TempDir dir("writer_tensors");
  for (uint32_t align : {32u, 8u, 64u, 256u}) {
    GgufWriter w;
    w.set_alignment(align);
    std::vector<float> a(3 * 5);
    for (size_t i = 0; i < a.size(); ++i) a[i] = float(i) * 0.5f - 3;
    std::vector<uint8_t> q(2 * 34);
    for (size_t i = 0; i < q.size(); ++i) q[i] = uint8_t(i * 7);
    std::vector<uint8_t> odd(7 * 2);  // 14 bytes: forces padding before the next tensor
    for (size_t i = 0; i < odd.size(); ++i) odd[i] = uint8_t(100 + i);
    w.add_tensor("a", GgmlType::F32, {5, 3}, a.data());
    w.add_tensor("odd", GgmlType::F16, {7}, odd);  // owned copy
    w.add_tensor("q", GgmlType::Q8_0, {32, 2}, q.data());
    int produced = 0;
    w.add_tensor("lazy", GgmlType::I32, {2, 2, 2}, [&](uint8_t* dst, size_t n) {
      ++produced;
      ASSERT_EQ(n, 32u);
      for (int32_t i = 0; i < 8; ++i) std::memcpy(dst + 4 * i, &i, 4);
    });
    const std::string path = dir.file("t" + std::to_string(align) + ".gguf");
    w.write(path);
    EXPECT_EQ(produced, 1);

    auto f = GgufFile::open(path);
    EXPECT_EQ(f->alignment(), align);
    EXPECT_EQ(f->has("general.alignment"), align != 32);
    ASSERT_EQ(f->tensors().size(), 4u);
    EXPECT_EQ(f->data_offset() % align, 0u);
    for (const auto& t : f->tensors()) {
      EXPECT_EQ(t.offset % align, 0u) << t.name;
    }
    const GgufTensor& ta = f->tensor("a");
    EXPECT_EQ(ta.shape, (std::vector<int64_t>{5, 3}));
    EXPECT_EQ(ta.type, GgmlType::F32);
    EXPECT_EQ(std::memcmp(ta.data, a.data(), a.size() * 4), 0);
    EXPECT_EQ(std::memcmp(f->tensor("odd").data, odd.data(), odd.size()), 0);
    EXPECT_EQ(f->tensor("q").type, GgmlType::Q8_0);
    EXPECT_EQ(f->tensor("q").nbytes, q.size());
    EXPECT_EQ(std::memcmp(f->tensor("q").data, q.data(), q.size()), 0);
    const GgufTensor& tl = f->tensor("lazy");
    EXPECT_EQ(tl.shape, (std::vector<int64_t>{2, 2, 2}));
    for (int32_t i = 0; i < 8; ++i) {
      int32_t v;
      std::memcpy(&v, tl.data + 4 * i, 4);
      EXPECT_EQ(v, i);
    }
    // The file ends padded to the alignment, as gguf-py writes it.
    EXPECT_EQ(f->file_size() % align, 0u);
  }
}

TEST(GgufWriter, RejectsInvalidInput) {
  GgufWriter w;
  std::vector<float> x(64);
  EXPECT_THROW(w.add_tensor("bad_block", GgmlType::Q4_0, {48, 1}, x.data()), InvalidArgument);
  EXPECT_THROW(w.add_tensor("zero", GgmlType::F32, {0}, x.data()), InvalidArgument);
  EXPECT_THROW(w.add_tensor("five_d", GgmlType::F32, {1, 1, 1, 1, 1}, x.data()), InvalidArgument);
  EXPECT_THROW(w.add_tensor("unknown", GgmlType(77), {4}, x.data()), InvalidArgument);
  EXPECT_THROW(w.add_tensor("short", GgmlType::F32, {4}, std::vector<uint8_t>(8)), InvalidArgument);
  EXPECT_EQ(w.n_tensors(), 0u);
  w.add_tensor("x", GgmlType::F32, {64}, x.data());
  EXPECT_THROW(w.add_tensor("x", GgmlType::F32, {64}, x.data()), InvalidArgument);
  EXPECT_THROW(w.set_alignment(24), InvalidArgument);
  GgufValue wrong;
  wrong.type = GgufType::ARRAY;
  wrong.elem_type = GgufType::INT32;
  wrong.arr_u = {1, 2};  // signed elements must live in arr_i
  EXPECT_THROW(w.set("wrong", wrong), InvalidArgument);
  EXPECT_THROW(w.write("/nonexistent_dir_qleap/x.gguf"), IoError);
}

TEST(GgufWriter, FailedProducerLeavesNoFile) {
  TempDir dir("writer_fail");
  GgufWriter w;
  w.add_tensor("x", GgmlType::F32, {4}, [](uint8_t*, size_t) { throw Unsupported("boom"); });
  EXPECT_THROW(w.write(dir.file("x.gguf")), Unsupported);
  EXPECT_FALSE(std::filesystem::exists(dir.file("x.gguf")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("x.gguf.tmp")));
}

}  // namespace
}  // namespace qleap
