// Random weight rows for kernel tests: arbitrary quant bytes (every bit pattern) with sane fp16
// scales, so that each kernel meets all the codes a real file can hold. Shared by the CPU and CUDA
// kernel tests.
#pragma once
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/fp16.h"
#include "quant/quant.h"

namespace qleap::testing_util {

// Byte offsets of fp16 scale fields per block (random bytes there could be NaN/inf).
inline std::vector<int> fp16_fields(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0:
    case GgmlType::Q5_0:
    case GgmlType::Q8_0:
    case GgmlType::IQ4_NL:
    case GgmlType::IQ2_XXS:
    case GgmlType::IQ2_XS:
    case GgmlType::IQ2_S:
    case GgmlType::IQ3_XXS:
    case GgmlType::IQ3_S:
    case GgmlType::IQ1_S:
    case GgmlType::IQ4_XS:
      return {0};
    case GgmlType::TQ1_0:
      return {52};
    case GgmlType::TQ2_0:
      return {64};
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      return {0, 2};
    case GgmlType::Q2_K:
      return {80, 82};
    case GgmlType::Q3_K:
      return {108};
    case GgmlType::Q6_K:
      return {208};
    default:
      return {};
  }
}

// Random weights: arbitrary quant bytes (every bit pattern, including Q8_0's -128) with sane scales.
inline std::vector<uint8_t> random_weights(GgmlType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  const size_t rb = row_size(t, cols);
  std::vector<uint8_t> w(rb * size_t(rows));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  if (t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16) {
    std::vector<float> f(size_t(rows * cols));
    for (auto& v : f) v = u(rng);
    quantize_row_ref(t, f.data(), w.data(), rows * cols);
    return w;
  }
  for (auto& b : w) b = uint8_t(rng() & 0xFF);
  const size_t ts = type_traits(t).type_size;
  for (size_t off = 0; off < w.size(); off += ts) {
    for (int f : fp16_fields(t)) {
      const uint16_t h = fp32_to_fp16_ref(u(rng) * 0.05f);
      std::memcpy(&w[off + size_t(f)], &h, 2);
    }
    if (t == GgmlType::IQ1_M) {
      // The fp16 scale is spread over the top nibbles of the four scale words (bytes 48..55).
      const uint16_t h = fp32_to_fp16_ref(u(rng) * 0.05f);
      for (int i = 0; i < 4; ++i) {
        uint8_t& hi = w[off + 48 + size_t(2 * i) + 1];
        hi = uint8_t((hi & 0x0F) | (((h >> (4 * i)) & 0xF) << 4));
      }
    }
    // MXFP4's exponent byte: keep the scale near 2^-6 (every exponent is in the decode fixtures).
    if (t == GgmlType::MXFP4) w[off] = uint8_t(118 + rng() % 8);
  }
  return w;
}

// The scalar reference's rows of a rows x cols matrix of type t: what every kernel is checked against.
inline std::vector<std::vector<float>> dequantized_rows(GgmlType t, const uint8_t* w, int64_t rows,
                                                        int64_t cols) {
  std::vector<std::vector<float>> out(size_t(rows), std::vector<float>(static_cast<size_t>(cols)));
  const size_t rb = row_size(t, cols);
  for (int64_t r = 0; r < rows; ++r) dequantize_row_ref(t, w + size_t(r) * rb, out[size_t(r)].data(), cols);
  return out;
}

}  // namespace qleap::testing_util
