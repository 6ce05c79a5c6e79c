#include "quant/ggml_type.h"

#include <array>
#include <cctype>
#include <string>

namespace qleap {
namespace {

constexpr size_t kMaxType = 42;

std::array<TypeTraits, kMaxType> make_table() {
  std::array<TypeTraits, kMaxType> t{};
  auto set = [&](GgmlType id, const char* name, int64_t bs, size_t ts, bool compute) {
    t[size_t(id)] = TypeTraits{name, bs, ts, compute};
  };
  set(GgmlType::F32, "F32", 1, 4, true);
  set(GgmlType::F16, "F16", 1, 2, true);
  set(GgmlType::Q4_0, "Q4_0", 32, 18, true);
  set(GgmlType::Q4_1, "Q4_1", 32, 20, true);
  set(GgmlType::Q5_0, "Q5_0", 32, 22, true);
  set(GgmlType::Q5_1, "Q5_1", 32, 24, true);
  set(GgmlType::Q8_0, "Q8_0", 32, 34, true);
  set(GgmlType::Q8_1, "Q8_1", 32, 36, false);
  set(GgmlType::Q2_K, "Q2_K", 256, 84, true);
  set(GgmlType::Q3_K, "Q3_K", 256, 110, true);
  set(GgmlType::Q4_K, "Q4_K", 256, 144, true);
  set(GgmlType::Q5_K, "Q5_K", 256, 176, true);
  set(GgmlType::Q6_K, "Q6_K", 256, 210, true);
  set(GgmlType::Q8_K, "Q8_K", 256, 292, false);
  set(GgmlType::IQ2_XXS, "IQ2_XXS", 256, 66, true);
  set(GgmlType::IQ2_XS, "IQ2_XS", 256, 74, true);
  set(GgmlType::IQ3_XXS, "IQ3_XXS", 256, 98, true);
  set(GgmlType::IQ1_S, "IQ1_S", 256, 50, true);
  set(GgmlType::IQ4_NL, "IQ4_NL", 32, 18, true);
  set(GgmlType::IQ3_S, "IQ3_S", 256, 110, true);
  set(GgmlType::IQ2_S, "IQ2_S", 256, 82, true);
  set(GgmlType::IQ4_XS, "IQ4_XS", 256, 136, true);
  // Integer and F64 tensors decode to float (an I32 weight is unusual but legal).
  set(GgmlType::I8, "I8", 1, 1, true);
  set(GgmlType::I16, "I16", 1, 2, true);
  set(GgmlType::I32, "I32", 1, 4, true);
  set(GgmlType::I64, "I64", 1, 8, true);
  set(GgmlType::F64, "F64", 1, 8, true);
  set(GgmlType::IQ1_M, "IQ1_M", 256, 56, true);
  set(GgmlType::BF16, "BF16", 1, 2, true);
  set(GgmlType::TQ1_0, "TQ1_0", 256, 54, true);
  set(GgmlType::TQ2_0, "TQ2_0", 256, 66, true);
  set(GgmlType::MXFP4, "MXFP4", 32, 17, true);
  set(GgmlType::NVFP4, "NVFP4", 64, 36, true);
  // Known to gguf 0.19 by size but without a decoder there: readable as a file, not computable.
  set(GgmlType::Q1_0, "Q1_0", 128, 18, false);
  return t;
}

const std::array<TypeTraits, kMaxType>& table() {
  static const auto t = make_table();
  return t;
}

}  // namespace

const TypeTraits& type_traits(GgmlType t) {
  static const TypeTraits unknown{};
  const auto id = size_t(t);
  return id < kMaxType ? table()[id] : unknown;
}

const char* type_name(GgmlType t) {
  const char* n = type_traits(t).name;
  return n != nullptr ? n : "UNKNOWN";
}

std::optional<GgmlType> type_from_name(std::string_view name) {
  std::string up(name);
  for (auto& c : up) c = char(std::toupper(static_cast<unsigned char>(c)));
  for (size_t i = 0; i < kMaxType; ++i) {
    if (table()[i].name != nullptr && up == table()[i].name) return GgmlType(i);
  }
  return std::nullopt;
}

double bits_per_weight(GgmlType t) {
  const auto& tr = type_traits(t);
  return tr.block_size > 0 ? 8.0 * double(tr.type_size) / double(tr.block_size) : 0.0;
}

size_t row_size(GgmlType t, int64_t n) {
  const auto& tr = type_traits(t);
  if (tr.block_size == 0) return 0;
  return size_t(n / tr.block_size) * tr.type_size;
}

}  // namespace qleap
