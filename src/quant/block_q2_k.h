// Q2_K: 256 weights in 16 groups of 16. scales[g] = 4-bit scale | 4-bit min << 4; 2-bit quants;
// w = d * sc * q - dmin * m. Element h*128 + j*32 + l reads bits 2j of qs[h*32 + l].
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"

namespace qleap {

struct BlockQ2_K {
  uint8_t scales[kQKK / 16];
  uint8_t qs[kQKK / 4];
  uint16_t d;
  uint16_t dmin;
};
static_assert(sizeof(BlockQ2_K) == 84);

inline void dequantize_block_ref(const BlockQ2_K& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  const float dmin = fp16_to_fp32_ref(b.dmin);
  for (int e = 0; e < kQKK; ++e) {
    const int h = e / 128, j = (e / 32) % 4, l = e % 32;
    const int q = (b.qs[h * 32 + l] >> (2 * j)) & 3;
    const uint8_t sc = b.scales[e / 16];
    const float dl = d * float(sc & 0xF);
    const float ml = dmin * float(sc >> 4);
    y[e] = dl * float(q) - ml;
  }
}

}  // namespace qleap
