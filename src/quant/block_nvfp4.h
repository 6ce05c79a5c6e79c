// NVFP4 (4.5 bits/weight): 64 E2M1 weights in four groups of 16, each group with an unsigned E4M3
// scale. Group s: bytes qs[8s..8s+7], low nibbles weights 16s..16s+7, high nibbles the next 8.
// w = ue4m3(d[s]) * e2m1(q) = ue4m3(d[s]) / 2 * kFp4Values[q].
#pragma once
#include <array>
#include <cstdint>

#include "quant/iq_grids.h"

namespace qleap {

constexpr int kQKNv = 64;

struct BlockNvfp4 {
  uint8_t d[4];
  uint8_t qs[kQKNv / 2];
};
static_assert(sizeof(BlockNvfp4) == 36);

// Unsigned E4M3 (bias 7; 0 and 0x7F read as zero; the top bit is not part of the value) times 1/2,
// the factor that goes with the doubled kFp4Values. Every result is exact in float.
constexpr float ue4m3_to_fp32_half(uint8_t x) {
  if (x == 0 || x == 0x7F) return 0.0f;
  const int exp = (x >> 3) & 0xF, man = x & 7;
  float v;
  if (exp == 0) {
    v = float(man) * (1.0f / 512.0f);
  } else {
    v = (1.0f + float(man) / 8.0f) * float(1 << exp) * (1.0f / 128.0f);
  }
  return v * 0.5f;
}

// ue4m3_to_fp32_half of every byte, for the SIMD kernels' table lookups.
constexpr std::array<float, 256> make_ue4m3_table() {
  std::array<float, 256> t{};
  for (int i = 0; i < 256; ++i) t[size_t(i)] = ue4m3_to_fp32_half(uint8_t(i));
  return t;
}
alignas(64) inline constexpr std::array<float, 256> kUe4m3Half = make_ue4m3_table();

inline void dequantize_block_ref(const BlockNvfp4& b, float* y) {
  for (int s = 0; s < 4; ++s) {
    const float d = ue4m3_to_fp32_half(b.d[s]);
    for (int j = 0; j < 8; ++j) {
      const uint8_t q = b.qs[8 * s + j];
      y[16 * s + j] = d * float(kFp4Values[q & 0xF]);
      y[16 * s + 8 + j] = d * float(kFp4Values[q >> 4]);
    }
  }
}

}  // namespace qleap
