// Tensor element types as numbered in the GGUF format (ggml_type). Block sizes and byte sizes are
// part of the file format; each supported format has its own header with the block struct.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace qleap {

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
  NVFP4 = 40,
  Q1_0 = 41,
};

struct TypeTraits {
  const char* name = nullptr;  // nullptr: id not known to this build
  int64_t block_size = 0;      // elements per block
  size_t type_size = 0;        // bytes per block
  bool can_compute = false;    // the engine can dequantize / multiply it
};

// Traits for any id read from a file; unknown ids return traits with name == nullptr.
const TypeTraits& type_traits(GgmlType t);
inline const TypeTraits& type_traits(uint32_t id) {
  return type_traits(GgmlType(id));
}
const char* type_name(GgmlType t);                              // "Q4_K", or "UNKNOWN" for unknown ids
std::optional<GgmlType> type_from_name(std::string_view name);  // case-insensitive
// Bytes of a row of n elements; n must be a multiple of the block size.
size_t row_size(GgmlType t, int64_t n);
// Storage bits per weight of the format (block bytes * 8 / block elements); 0 for unknown ids.
double bits_per_weight(GgmlType t);

}  // namespace qleap
