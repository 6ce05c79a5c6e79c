// IQ3_XXS (3.06 bits/weight): 256 weights; 64 8-bit indices into kIq3xxsGrid (4 magnitudes each),
// then per sub-block of 32 a uint32 with four 7-bit sign indices (kIqKsigns, one per 8 weights) and
// a 4-bit scale ls in its top bits. w = d * (0.5 + ls) * 0.5 * grid * sign.
#pragma once
#include <cstdint>
#include <cstring>

#include "core/fp16.h"
#include "quant/block_common.h"
#include "quant/iq_grids.h"

namespace qleap {

struct BlockIq3Xxs {
  uint16_t d;
  uint8_t qs[kQKK / 4];
  uint8_t scales_signs[kQKK / 8];
};
static_assert(sizeof(BlockIq3Xxs) == 98);

inline void dequantize_block_ref(const BlockIq3Xxs& b, float* y) {
  const float d = fp16_to_fp32_ref(b.d);
  for (int ib = 0; ib < 8; ++ib) {
    uint32_t aux;
    std::memcpy(&aux, b.scales_signs + 4 * ib, 4);
    const float db = d * (0.5f + float(aux >> 28)) * 0.5f;
    for (int k = 0; k < 4; ++k) {
      const uint8_t signs = kIqKsigns[(aux >> (7 * k)) & 0x7F];
      for (int j = 0; j < 8; ++j) {
        const uint32_t g = kIq3xxsGrid[b.qs[8 * ib + 2 * k + j / 4]];
        const float v = db * float(uint8_t(g >> (8 * (j % 4))));
        y[32 * ib + 8 * k + j] = (signs >> j) & 1 ? -v : v;
      }
    }
  }
}

}  // namespace qleap
