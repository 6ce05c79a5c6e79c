// TQ1_0 (1.69 bits/weight): ternary weights, five per byte in base 3 as a fixed-point fraction
// (byte = ceil(value * 256 / 243)): trit k of a byte is ((byte * 3^k mod 256) * 3) >> 8. qs[0..31]
// hold weights 32k + j, qs[32..47] weights 160 + 16k + j, qh[0..3] (four trits each) weights
// 240 + 4k + j. w = d * (trit - 1).
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"

namespace qleap {

struct BlockTq1_0 {
  uint8_t qs[(kQKK - 4 * kQKK / 64) / 5];
  uint8_t qh[kQKK / 64];
  uint16_t d;
};
static_assert(sizeof(BlockTq1_0) == 54);

inline int tq1_trit(uint8_t byte, int k) {
  static constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
  return (int(uint8_t(byte * kPow3[k])) * 3) >> 8;
}

inline void dequantize_block_ref(const BlockTq1_0& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  for (int k = 0; k < 5; ++k) {
    for (int j = 0; j < 32; ++j) y[32 * k + j] = d * float(tq1_trit(b.qs[j], k) - 1);
    for (int j = 0; j < 16; ++j) y[160 + 16 * k + j] = d * float(tq1_trit(b.qs[32 + j], k) - 1);
  }
  for (int k = 0; k < 4; ++k) {
    for (int j = 0; j < 4; ++j) y[240 + 4 * k + j] = d * float(tq1_trit(b.qh[j], k) - 1);
  }
}

}  // namespace qleap
