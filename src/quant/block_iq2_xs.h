// IQ2_XS (2.31 bits/weight): 256 weights; 32 uint16 codes, each a 9-bit index into kIq2xsGrid (8
// magnitudes) and a 7-bit sign index into kIqKsigns; a 4-bit scale per 16 weights (scales[i] low
// nibble: weights 32i..32i+15, high nibble: the next 16). w = d * (0.5 + ls) * 0.25 * grid * sign.
#pragma once
#include <cstdint>

#include "core/fp16.h"
#include "quant/block_common.h"
#include "quant/iq_grids.h"

namespace qleap {

struct BlockIq2Xs {
  uint16_t d;
  uint16_t qs[kQKK / 8];
  uint8_t scales[kQKK / 32];
};
static_assert(sizeof(BlockIq2Xs) == 74);

inline void dequantize_block_ref(const BlockIq2Xs& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  for (int l = 0; l < 32; ++l) {
    const int ls = (b.scales[l / 4] >> (4 * ((l / 2) % 2))) & 0xF;
    const float db = d * (0.5f + float(ls)) * 0.25f;
    const uint64_t g = kIq2xsGrid[b.qs[l] & 511];
    const uint8_t signs = kIqKsigns[b.qs[l] >> 9];
    for (int j = 0; j < 8; ++j) {
      const float v = db * float(uint8_t(g >> (8 * j)));
      y[8 * l + j] = (signs >> j) & 1 ? -v : v;
    }
  }
}

}  // namespace qleap
